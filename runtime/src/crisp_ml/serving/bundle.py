"""A serving bundle: the model folder exported from the registry, plus a manifest.

    <bundle>/manifest.json    provenance (model name, version, run id, git commit, data digest,
                              model card) and the version's integrity record (integrity.py): the
                              SHA-256 of every file under model/, signed when a key was set
    <bundle>/model/           MLmodel, model.skops, input_example.json ... as MLflow saved them

The export copies the record from the registry; it never hashes whatever happens to be on disk. The
server checks every file against it before it loads anything and refuses to start when one
differs, a file is missing or an unlisted file appears (and, with MODEL_SIGNING_KEY set, when the
record's signature is not the key's). No MLflow here: this module runs in the image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .integrity import IntegrityError, Record

MANIFEST = "manifest.json"
MODEL_DIR = "model"
MANIFEST_FORMAT = 2  # 2: the registry's record; 1 held hashes made at export time


def write_manifest(
    bundle: Path, model: dict[str, Any], record: Record, model_card: str | None = None
) -> dict:
    """Write manifest.json: the provenance fields in `model` and the version's record."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model,
        "model_card": model_card,
        "record": json.loads(record.to_json()),
    }
    (Path(bundle) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read_manifest(bundle: Path) -> dict:
    path = Path(bundle) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise IntegrityError(
            f"no manifest at {path}: export the model with the project's CLI"
        ) from None
    except (OSError, ValueError) as error:
        raise IntegrityError(f"unreadable manifest {path}: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise IntegrityError(
            f"{path}: manifest format {found!r} is not {MANIFEST_FORMAT}; export the model again"
        )
    return manifest


def record(manifest: dict) -> Record:
    return Record.from_json(json.dumps(manifest.get("record")), "the bundle's manifest")


def verify(bundle: Path, env: Mapping[str, str] | None = None) -> dict:
    """The manifest, once every model file matches its record; IntegrityError naming each file."""
    manifest = read_manifest(bundle)
    record(manifest).verify(Path(bundle) / MODEL_DIR, env)
    return manifest


@dataclass(frozen=True)
class Provenance:
    """Where the served model came from, as the manifest records it."""

    name: str = "unknown"
    version: str = "unknown"
    run_id: str = "unknown"
    git_commit: str = "unknown"
    data_digest: str = "unknown"

    @classmethod
    def from_manifest(cls, manifest: dict) -> Provenance:
        model = manifest.get("model") or {}
        fields = cls.__dataclass_fields__
        return cls(**{key: str(model[key]) for key in fields if model.get(key) not in (None, "")})
