"""Integrity records: the SHA-256 of every file of a model, made while the files were trusted.

03_modelling makes the record right after it logged the model (and checked that the stored model
predicts exactly as the trained one); 05_deployment checks the stored files against it and puts it
on the registered version as the tag `model_files`. Every later reader (evaluation, the registry's
champion scoring, monitoring, `serve`, the image export and the server itself) checks the files
against that record before any byte of the model is deserialised, and refuses a difference naming
the file. The image's manifest carries the record as it is, never hashes of whatever is on disk.

With MODEL_SIGNING_KEY set (a secret of at least 16 characters, kept out of the registry), the
record also carries an HMAC of the model's name and its files. Where the key is set, a record
without a valid HMAC is refused: someone who can rewrite the registry's tags or a bundle's manifest
cannot forge one. Without the key, the record protects against changed or swapped files in the
artifact store or a bundle, not against someone who can also rewrite the record (see the README,
"Model integrity"). No MLflow here: this module runs in the serving image.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RECORD_TAG = "model_files"  # model-version tag holding the record as JSON
SIGNING_KEY_ENV = "MODEL_SIGNING_KEY"
MIN_KEY_LENGTH = 16
# MLflow writes this into every folder it downloads from `models:/<name>/<version>` (the name and
# version, overwriting any stored copy); nothing reads it to load the model.
DOWNLOAD_BOOKKEEPING = frozenset({"registered_model_meta"})
_CHUNK = 1 << 20


class IntegrityError(RuntimeError):
    """Model files that differ from their record, or a record that cannot be trusted."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file under `folder`, keyed by its POSIX path relative to it (but
    MLflow's download bookkeeping)."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in DOWNLOAD_BOOKKEEPING
    }


def signing_key(env: Mapping[str, str] | None = None) -> bytes | None:
    raw = (os.environ if env is None else env).get(SIGNING_KEY_ENV, "")
    if raw and len(raw) < MIN_KEY_LENGTH:
        raise IntegrityError(f"{SIGNING_KEY_ENV} is shorter than {MIN_KEY_LENGTH} characters")
    return raw.encode() if raw else None


def _signature(key: bytes, model_name: str, files: dict[str, str]) -> str:
    message = json.dumps({"model": model_name, "files": files}, sort_keys=True).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Record:
    """What a model's files were when they were trusted, optionally signed."""

    model_name: str
    files: dict[str, str]
    hmac: str | None = None

    @classmethod
    def of(cls, folder: Path, model_name: str, env: Mapping[str, str] | None = None) -> Record:
        """The record of the files now in `folder`, signed when MODEL_SIGNING_KEY is set."""
        files = digests(folder)
        if not files:
            raise IntegrityError(f"{folder} holds no model files")
        key = signing_key(env)
        return cls(model_name, files, _signature(key, model_name, files) if key else None)

    def to_json(self) -> str:
        return json.dumps({"model": self.model_name, "files": self.files, "hmac": self.hmac})

    @classmethod
    def from_json(cls, text: str | None, where: str) -> Record:
        try:
            data = json.loads(text or "")
            files = data["files"]
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
                raise TypeError("file digests must be strings")
            return cls(str(data["model"]), dict(files), data.get("hmac") or None)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise IntegrityError(
                f"the integrity record of {where} is unreadable: {error}"
            ) from None

    def check_signature(self, env: Mapping[str, str] | None = None) -> None:
        """With MODEL_SIGNING_KEY set, refuse a record it did not sign; without it, do nothing."""
        key = signing_key(env)
        if key is None:
            return
        if self.hmac is None:
            raise IntegrityError(
                f"the integrity record of {self.model_name} is not signed, and {SIGNING_KEY_ENV} "
                "is set: only records made with the key are trusted here. Register the model "
                f"again with {SIGNING_KEY_ENV} set."
            )
        if not hmac.compare_digest(self.hmac, _signature(key, self.model_name, self.files)):
            raise IntegrityError(
                f"the integrity record of {self.model_name} has a signature that "
                f"{SIGNING_KEY_ENV} did not make: the record or its files list was changed"
            )

    def problems(self, folder: Path) -> list[str]:
        """Every difference between the files in `folder` and the record, one sentence each."""
        present = digests(folder)
        found = []
        for name, digest in self.files.items():
            if name not in present:
                found.append(f"{name}: recorded but missing")
            elif present[name] != digest:
                found.append(
                    f"{name}: SHA-256 {present[name][:16]}… differs from the record's {digest[:16]}…"
                )
        found += [
            f"{name}: present but not recorded" for name in present.keys() - self.files.keys()
        ]
        return found

    def verify(self, folder: Path, env: Mapping[str, str] | None = None) -> None:
        """Refuse files that differ from the record, or a record the signing key did not make."""
        self.check_signature(env)
        if problems := self.problems(folder):
            listing = "\n  ".join(problems)
            raise IntegrityError(
                f"the model files in {folder} differ from the integrity record made when "
                f"{self.model_name} was logged; refusing to load them:\n  {listing}"
            )
