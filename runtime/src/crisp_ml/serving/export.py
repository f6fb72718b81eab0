"""Models out of the registry, checked: the serving bundle, and models loaded in this process.

MLflow is here; the server has none. Every model file that comes back from the artifact store is
checked against the version's integrity record (integrity.py, the tag `model_files` that
05_deployment sets) before anything reads it, and loaded only through `model.load`, which refuses a
model that asks to trust types this project's pipelines never hold.

`export_bundle()` downloads a registered version (the `champion` by default) and writes the manifest
the server verifies: the version's record, and where the model came from, read from MLflow:

    name, version, run_id   the registered version and the run that logged it
    git_commit, data_digest the version's tags (05_deployment sets them), else the `git_commit` tag
                            of the model's run or pipeline run and the digest of the training set
                            logged as a dataset input in the same pipeline run
    model_card              the version's `model_card` tag (05_deployment), else a `model_card.md`
                            artifact of its run or pipeline run, else the version's description

No local path (tracking URI, artifact location) goes into the manifest: `/metadata` shows it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from ..project import project_root
from ..tracking import client as tracking_client
from ..tracking import model_name
from . import bundle as bundle_files
from . import model as served
from .integrity import RECORD_TAG, IntegrityError, Record

CHAMPION, CHALLENGER = "champion", "challenger"
IMAGE_TAG = "image"  # model-version tag holding the image built from it
MODEL_CARD_FILES = ("model_card.md", "model_card.json")


class RegistryError(RuntimeError):
    """The registry cannot give what was asked for; the message says what to do."""


def model_version(version: str | int | None = None, name: str | None = None) -> ModelVersion:
    """A registered version: the one given (a number, or an alias such as `challenger`), or the
    one the `champion` alias points at."""
    name = name or model_name()
    client = tracking_client()
    alias = CHAMPION if version is None else None
    if version is not None and not str(version).strip().isdigit():
        alias = str(version).strip()
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, str(version).strip())
    except MlflowException as error:
        wanted = f"version {version}" if alias is None else f"a version with alias '{alias}'"
        fix = (
            "Run the pipeline (05_deployment registers the champion) or pass --version N."
            if alias in (None, CHAMPION)
            else f"Set the alias (the pipeline sets '{CHALLENGER}' on a version that passed its "
            "gate without beating the champion) or name a version number."
        )
        raise RegistryError(
            f"registered model '{name}' has no {wanted} in {mlflow.get_tracking_uri()}. {fix}"
        ) from error


def default_bundle_dir(version: str) -> Path:
    return project_root() / "build" / "serving" / str(version)


def export_bundle(version: str | int | None = None, dest: Path | None = None) -> tuple[Path, dict]:
    """Download a registered version into `dest` (build/serving/<version>/), checked against its
    integrity record, with a manifest carrying that record."""
    mv = model_version(version)
    record = version_record(mv)
    dest = Path(dest) if dest else default_bundle_dir(mv.version)
    staging = Path(tempfile.mkdtemp(prefix="bundle-", dir=_parent(dest)))
    try:
        model_dir = staging / bundle_files.MODEL_DIR
        download_verified(f"models:/{mv.name}/{mv.version}", record, model_dir)
        manifest = bundle_files.write_manifest(staging, provenance(mv), record, model_card(mv))
        if dest.exists():
            shutil.rmtree(dest)
        staging.replace(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest, manifest


def version_record(mv: ModelVersion) -> Record:
    """The integrity record 05_deployment put on the version; refused when there is none."""
    label = f"{mv.name} version {mv.version}"
    if RECORD_TAG not in (mv.tags or {}):
        raise IntegrityError(
            f"{label} has no integrity record (tag '{RECORD_TAG}'), so its files cannot be checked "
            "and are not loaded: it was registered by hand or by an older pipeline. Run the "
            "pipeline to register a version with one."
        )
    return Record.from_json(mv.tags[RECORD_TAG], label)


def download_verified(uri: str, record: Record, dest: Path) -> Path:
    """Download the model at `uri` into `dest`, check it against `record` (IntegrityError) and
    that MLmodel trusts no type this project's pipelines never hold (ModelLoadError), so no
    bundle or image is ever made of a model the server would refuse."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files
    mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))
    record.verify(dest)
    served.trusted_types(served.read_mlmodel(dest))
    return dest


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="model-") as folder:
        yield Path(folder) / "model"


def load_checked(uri: str, record: Record) -> Any:
    """The estimator at `uri`, once its files match `record` and its types are this project's."""
    with _scratch() as folder:
        return served.load_estimator(download_verified(uri, record, folder))[0]


def load_version(mv: ModelVersion) -> Any:
    """A registered version's estimator, checked against the version's own record."""
    return load_checked(f"models:/{mv.name}/{mv.version}", version_record(mv))


def seal(model_uri: str, trained: Any, X: Any, name: str | None = None) -> Record:
    """The integrity record of a model just logged: its stored files, once the stored model has
    loaded safely and predicted exactly as the trained one does on `X` (a file changed on its way
    to the store is caught here, before any record vouches for it)."""
    name = name or model_name()
    with _scratch() as folder:
        mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder))
        record = Record.of(folder, name)
        stored = served.load_estimator(folder)[0]
        same = np.array_equal(np.asarray(stored.predict(X)), np.asarray(trained.predict(X)))
        if same and hasattr(trained, "predict_proba"):
            same = np.array_equal(stored.predict_proba(X), trained.predict_proba(X))
        if not same:
            raise IntegrityError(
                f"the model stored at {model_uri} does not predict as the model just trained: "
                "it was changed on its way to the artifact store; no record is made for it"
            )
    return record


def compile_for_serving(
    model_uri: str, record: Record, X: Any, task: str, client: Any = None
) -> tuple[str, Record, Any]:
    """The logged model compiled to ONNX when it answers as scikit-learn does on `X` (the test
    set): a copy of the logged model with `model.onnx` beside its checked files, its URI and the
    record of all of them. When it does not compile, the logged model as it was, and why not
    (`Compiled.reason`). A new logged model, never an added file: versions registered from the
    same run keep the files their own records vouch for."""
    from ..compiling import compile_for_serving as compile_model

    with _scratch() as folder:
        download_verified(model_uri, record, folder)
        trained = served.load_estimator(folder)[0]
        columns = served.signature_columns(served.read_mlmodel(folder))
        compiled = compile_model(trained, X, task, columns)
        if compiled.onnx is None:
            return model_uri, record, compiled
        (folder / served.ONNX_FILE).write_bytes(compiled.onnx)
        client = client or tracking_client()
        source = client.get_logged_model(model_uri.removeprefix("models:/"))
        copy = client.create_logged_model(
            source.experiment_id, name=source.name, source_run_id=source.source_run_id,
            tags={**source.tags, "compiled_from": source.model_id}, params=source.params,
            model_type=source.model_type,
        )  # fmt: skip
        client.log_model_artifacts(copy.model_id, str(folder))
        client.finalize_logged_model(copy.model_id, "READY")
        return f"models:/{copy.model_id}", Record.of(folder, record.model_name), compiled


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
        "aliases": sorted(client.get_model_version(mv.name, mv.version).aliases or []),
        "git_commit": tags.get("git_commit", "unknown"),
        "git_dirty": tags.get("git_dirty", "unknown"),
        "data_digest": _training_digest(runs, mv),
        "registered_at": mv.creation_timestamp,
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


def record_image(version: str, tag: str, name: str | None = None, key: str = IMAGE_TAG) -> None:
    """Note on the model version which image serves it."""
    name = name or model_name()
    tracking_client().set_model_version_tag(name, str(version), key, tag)
