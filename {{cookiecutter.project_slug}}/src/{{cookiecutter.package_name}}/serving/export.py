"""Export a registered model version as a serving bundle (MLflow is here; the server has none).

`export_bundle()` downloads a registered version (the `champion` by default) and writes the manifest
the server verifies: the SHA-256 of every file, and where the model came from, read from MLflow:

    name, version, run_id   the registered version and the run that logged it
    git_commit, data_digest the version's tags (05_deployment sets them), else the `git_commit` tag
                            of the model's run or pipeline run and the digest of the training set
                            logged as a dataset input in the same pipeline run
    model_card              the version's `model_card` tag (05_deployment), else a `model_card.md`
                            artifact of its run or pipeline run, else the version's description
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from ..project import project_root
from ..tracking import MODEL_NAME
from ..tracking import client as tracking_client
from . import bundle as bundle_files

CHAMPION = "champion"
IMAGE_TAG = "image"  # model-version tag holding the image built from it
MODEL_CARD_FILES = ("model_card.md", "model_card.json")


class RegistryError(RuntimeError):
    """The registry cannot give what was asked for; the message says what to do."""


def model_version(version: str | int | None = None, name: str = MODEL_NAME) -> ModelVersion:
    """A registered version: the one given, or the one the `champion` alias points at."""
    client = tracking_client()
    try:
        if version is None:
            return client.get_model_version_by_alias(name, CHAMPION)
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        wanted = (
            f"version {version}" if version is not None else f"a version with alias '{CHAMPION}'"
        )
        raise RegistryError(
            f"registered model '{name}' has no {wanted} in {mlflow.get_tracking_uri()}. "
            "Run the pipeline (05_deployment registers the champion) or pass --version N."
        ) from error


def default_bundle_dir(version: str) -> Path:
    return project_root() / "build" / "serving" / str(version)


def export_bundle(version: str | int | None = None, dest: Path | None = None) -> tuple[Path, dict]:
    """Download a registered version into `dest` (build/serving/<version>/) with its manifest."""
    mv = model_version(version)
    dest = Path(dest) if dest else default_bundle_dir(mv.version)
    staging = Path(tempfile.mkdtemp(prefix="bundle-", dir=_parent(dest)))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{mv.name}/{mv.version}",
            dst_path=str(staging / bundle_files.MODEL_DIR),
        )
        manifest = bundle_files.write_manifest(staging, provenance(mv), model_card(mv))
        if dest.exists():
            shutil.rmtree(dest)
        staging.replace(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest, manifest


def _parent(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.parent


def provenance(mv: ModelVersion) -> dict[str, Any]:
    client = tracking_client()
    runs = _related_runs(mv.run_id)
    tags: dict[str, str] = {}
    for run in reversed(runs):  # the model's own run wins over its pipeline run
        tags.update(run.data.tags)
    tags.update({k: v for k, v in (mv.tags or {}).items() if v})  # the version's own tags win
    return {
        "name": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "aliases": sorted(client.get_model_version(mv.name, mv.version).aliases or []),
        "git_commit": tags.get("git_commit", "unknown"),
        "git_dirty": tags.get("git_dirty", "unknown"),
        "data_digest": _training_digest(runs, mv),
        "registered_at": mv.creation_timestamp,
        "tracking_uri": mlflow.get_tracking_uri(),
    }


def _related_runs(run_id: str | None) -> list:
    """The model's run, its pipeline (parent) run, and the parent's other children."""
    if not run_id:
        return []
    client = tracking_client()
    run = client.get_run(run_id)
    runs = [run]
    if parent_id := run.data.tags.get("mlflow.parentRunId"):
        parent = client.get_run(parent_id)
        siblings = client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
        )
        runs += [parent, *(s for s in siblings if s.info.run_id != run_id)]
    return runs


def _training_digest(runs: list, mv: ModelVersion) -> str:
    if digest := (mv.tags or {}).get("data_digest"):
        return digest
    for run in runs:
        for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
            context = {t.key: t.value for t in dataset_input.tags}.get("mlflow.data.context")
            if context in ("training", "train"):
                return dataset_input.dataset.digest
    return "unknown"


def model_card(mv: ModelVersion) -> str | None:
    if card := (mv.tags or {}).get("model_card"):
        return card
    client = tracking_client()
    for run in _related_runs(mv.run_id)[:2]:  # the model's run, then its pipeline run
        names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
        for name in MODEL_CARD_FILES:
            if name in names:
                with tempfile.TemporaryDirectory() as folder:
                    path = client.download_artifacts(run.info.run_id, name, folder)
                    return Path(path).read_text()
    return mv.description or None


def record_image(version: str, tag: str, name: str = MODEL_NAME) -> None:
    """Note on the model version which image serves it."""
    tracking_client().set_model_version_tag(name, str(version), IMAGE_TAG, tag)
