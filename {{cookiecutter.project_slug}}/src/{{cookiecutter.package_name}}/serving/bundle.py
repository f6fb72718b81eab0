"""A serving bundle: the model folder exported from the registry, plus a manifest.

    <bundle>/manifest.json    provenance (model name, version, run id, git commit, data digest,
                              model card) and the SHA-256 of every file under model/
    <bundle>/model/           MLmodel, model.skops, input_example.json ... as MLflow saved them

The server recomputes every hash before it loads anything and refuses to start when one differs,
a file is missing or an unlisted file appears. No MLflow here: this module runs in the image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MODEL_DIR = "model"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


class IntegrityError(RuntimeError):
    """The bundle on disk is not the one its manifest describes."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(bundle: Path) -> dict[str, Path]:
    """Every file under model/, keyed by its path relative to the bundle (POSIX separators)."""
    root = bundle / MODEL_DIR
    return {
        path.relative_to(bundle).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def write_manifest(bundle: Path, model: dict[str, Any], model_card: str | None = None) -> dict:
    """Hash every model file and write manifest.json; `model` holds the provenance fields."""
    bundle = Path(bundle)
    files = _model_files(bundle)
    if not files:
        raise IntegrityError(f"{bundle / MODEL_DIR} holds no files to serve")
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model,
        "model_card": model_card,
        "files": {name: sha256_file(path) for name, path in files.items()},
    }
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
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
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"{path} has no 'files' table")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"{path}: manifest format {manifest.get('format')!r} is not supported")
    return manifest


def integrity_problems(bundle: Path, manifest: dict) -> list[str]:
    """Every difference between the files on disk and the manifest, as readable sentences."""
    bundle = Path(bundle)
    expected: dict[str, str] = manifest["files"]
    present = _model_files(bundle)
    problems = []
    for name, digest in expected.items():
        if name not in present:
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        found = sha256_file(present[name])
        if found != digest:
            problems.append(
                f"{name}: SHA-256 {found[:16]}… differs from the manifest's {digest[:16]}…"
            )
    problems += [
        f"{name}: present but not in the manifest" for name in present.keys() - expected.keys()
    ]
    return problems


def verify(bundle: Path) -> dict:
    """The manifest, once every model file matches it; IntegrityError naming each difference."""
    manifest = read_manifest(bundle)
    if problems := integrity_problems(bundle, manifest):
        listing = "\n  ".join(problems)
        raise IntegrityError(
            f"model files in {Path(bundle) / MODEL_DIR} fail the integrity check:\n  {listing}"
        )
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
