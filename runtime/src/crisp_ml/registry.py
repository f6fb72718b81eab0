"""Registry moves: registering a version, champion and challenger, the champion's history and
rollback."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import params as P
from .evaluation import metric_value, positive_label, predict
from .project import failpoint
from .recovery import DECISION_TAG, PENDING, REGISTERED_BY_TAG
from .serving.export import download_verified, load_version
from .serving.integrity import RECORD_TAG, Record
from .tracking import client as tracking_client
from .tracking import model_name
from .use_case import METRICS

CHAMPION = "champion"  # the version in service
CHALLENGER = (
    "challenger"  # a newer version that passed the gate but has not (yet) beaten the champion
)
HISTORY_TAG = "champion_history"  # registered-model tag: the champions' versions, oldest first
HISTORY_LENGTH = 100  # entries kept, so the tag stays within every store's size limit
DESCRIPTION_LIMIT = 5000  # characters a version description may hold in SQL stores
CARD_TAG_LIMIT = 100_000  # characters MLflow allows in a model-version tag
HEADLINE_METRICS = {
    "classification": ("roc_auc", "accuracy", "balanced_accuracy", "f1", "log_loss"),
    "regression": ("mae", "rmse", "r2", "mape"),
}


class RegistryError(RuntimeError):
    """A registry action that cannot be done; says why and what to do instead."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_by_alias(
    client: MlflowClient, alias: str, name: str | None = None
) -> ModelVersion | None:
    """The version holding `alias`, or None when the alias (or the model) does not exist."""
    name = name or model_name()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


def champion_now(client: MlflowClient, name: str | None = None) -> str:
    """The champion's version number, or "" while there is none."""
    name = name or model_name()
    current = version_by_alias(client, CHAMPION, name)
    return "" if current is None else str(current.version)


def version_tags(
    handoff: dict[str, Any],
    test_metrics: dict[str, float],
    task: str,
    metric: str,
    git: dict[str, str],
    pipeline_run_id: str | None,
    smoke: bool,
    card: str,
) -> dict[str, str]:
    """The lineage, headline metrics and model card of a new version, as registry tags."""
    headline = dict.fromkeys([metric, *HEADLINE_METRICS[task]])
    tags = {
        "gate": "passed",
        "candidate": handoff.get("best_candidate", ""),
        "modelling_run_id": handoff.get("modelling_run_id", ""),
        "evaluation_run_id": handoff.get("evaluation_run_id", ""),
        "pipeline_run_id": pipeline_run_id or "",
        # Registered by a pipeline run, or by 05 opened in JupyterLab: runs are tagged alike.
        "kind": "pipeline" if pipeline_run_id else "interactive",
        "data_path": str(handoff.get("data_path", "")),
        "data_digest": handoff.get("train_digest", ""),  # what the model was trained on
        "train_digest": handoff.get("train_digest", ""),
        "test_digest": handoff.get("test_digest", ""),
        "git_commit": git.get("git_commit", "unknown"),
        "git_dirty": git.get("git_dirty", ""),
        "metric": metric,
        "smoke": str(smoke).lower(),
        "model_card": card[:CARD_TAG_LIMIT],  # the serving bundle reads the card from here
    }
    for name in headline:
        if name in test_metrics and not math.isnan(test_metrics[name]):
            tags[f"test_{name}"] = f"{test_metrics[name]:.6g}"
    return {key: str(value) for key, value in tags.items()}


def trained_params(client: MlflowClient, version: ModelVersion) -> dict[str, Any]:
    """The parameters of the pipeline run that registered `version` (its params.yaml artifact):
    the use case it was held to, its target and id column, as they were then."""
    label = f"{version.name} version {version.version}"
    run_id = version.tags.get("pipeline_run_id", "")
    if not run_id:
        raise RegistryError(
            f"{label} was not registered by a pipeline run, so its parameters are unknown; "
            "register one with `make pipeline`"
        )
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run_id, P.PARAMS_FILE, scratch)
        except (MlflowException, OSError) as error:
            raise RegistryError(
                f"the parameters of {label}'s pipeline run {run_id} cannot be read ({error}); "
                "run the pipeline to register a version whose run is at hand"
            ) from None
        return P.load_yaml(Path(path))


def describe(card: str, evaluation_run_id: str) -> str:
    """The model card as a version description, cut to fit with a pointer to the full card."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    pointer = f"\n\n... (shortened; the full card is `model_card.md` of run {evaluation_run_id})"
    return card[: DESCRIPTION_LIMIT - len(pointer)] + pointer


def register(
    client: MlflowClient,
    model_uri: str,
    record: Record,
    tags: dict[str, str],
    description: str,
    run_id: str,
    name: str | None = None,
) -> ModelVersion:
    """A new version of `name` from `model_uri`, once its files match the record 03 made, carrying
    that record. It is `pending` and moves no alias: `promote` or `keep` decides, and a run killed
    before that leaves every alias where it was (`doctor` settles the version)."""
    name = name or model_name()
    with tempfile.TemporaryDirectory() as folder:
        download_verified(model_uri, record, Path(folder) / "model")
    sealed = {
        **tags,
        RECORD_TAG: record.to_json(),
        DECISION_TAG: PENDING,
        REGISTERED_BY_TAG: run_id,
    }
    registered = mlflow.register_model(model_uri, name, tags=sealed)
    client.update_model_version(name, registered.version, description=description)
    failpoint("registered")
    return client.get_model_version(name, registered.version)


PROMOTED, KEPT = "promoted", "kept champion"  # a version's decision tag, once settled


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    challenger_version: str
    challenger_score: float
    champion_version: str | None = None
    champion_score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": PROMOTED if self.promote else KEPT,
            "reason": self.reason,
            "metric": self.metric,
            "challenger_version": self.challenger_version,
            "challenger_score": self.challenger_score,
            "champion_version": self.champion_version,
            "champion_score": self.champion_score,
        }


def score_version(
    version: ModelVersion,
    X: pd.DataFrame,
    y: pd.Series,
    task: str,
    metric: str,
    positive_class: str,
) -> float:
    """A registered version's `metric` on (X, y), computed as 04 computes it."""
    model = load_version(version)  # checked against its integrity record first
    preds = predict(model, X, y, task)
    positive = positive_label(preds.classes, positive_class) if task == "classification" else None
    return metric_value(metric, preds, positive)


def decide(
    metric: str,
    challenger_version: str,
    challenger_score: float,
    champion_version: str | None = None,
    champion_score: float | None = None,
    champion_error: str | None = None,
    challenger_smoke: bool = False,
    champion_smoke: bool = False,
    from_pipeline: bool = True,
) -> Decision:
    """Whether the challenger takes the champion alias, and why.

    A smoke run's model (a small sample, a tiny search: CI's check that the pipeline works) never
    replaces a champion trained on the full data, and a full-data model always replaces a smoke
    champion; otherwise the challenger must be strictly better. Only a pipeline run promotes: a
    version registered from JupyterLab has no pipeline run to trace or monitor it by."""
    facts = {
        "metric": metric,
        "challenger_version": str(challenger_version),
        "challenger_score": challenger_score,
        "champion_version": None if champion_version is None else str(champion_version),
        "champion_score": champion_score,
    }
    new = f"version {challenger_version} ({metric} {challenger_score:.4g})"
    if not from_pipeline:
        reason = f"{new} was registered from JupyterLab: only `make pipeline` promotes a version"
        return Decision(False, reason, **facts)
    if champion_version is None:
        return Decision(True, f"no champion yet: {new} takes the alias", **facts)
    old = f"champion version {champion_version}"
    if challenger_smoke and not champion_smoke:
        reason = f"{new} comes from a smoke run and never replaces {old}, trained on the full data"
        return Decision(False, reason, **facts)
    if champion_smoke and not challenger_smoke:
        reason = f"{new}, trained on the full data, replaces {old} from a smoke run"
        return Decision(True, reason, **facts)
    if champion_error or champion_score is None or math.isnan(champion_score):
        why = champion_error or f"its {metric} is undefined"
        reason = f"{old} cannot be scored on this test set ({why}); {new} replaces it"
        return Decision(True, reason, **facts)
    old = f"{old} ({metric} {champion_score:.4g})"
    if METRICS[metric].better(challenger_score, champion_score):
        return Decision(True, f"{new} beats {old} on the same test set", **facts)
    reason = f"{new} does not beat {old} on the same test set; the champion stays"
    return Decision(False, reason, **facts)


@dataclass(frozen=True)
class Move:
    name: str
    from_version: str | None
    to_version: str
    reason: str

    def __str__(self) -> str:
        before = f"version {self.from_version}" if self.from_version else "no champion"
        return f"{self.name}: champion moved from {before} to version {self.to_version} ({self.reason})"


def champion_history(client: MlflowClient, name: str | None = None) -> list[str]:
    """The versions that held champion, oldest first (the last is the current one)."""
    name = name or model_name()
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
    except (ValueError, TypeError):
        return []  # edited by hand beyond reading: start afresh


def reconciled_history(
    client: MlflowClient, name: str | None = None
) -> tuple[list[str], ModelVersion | None]:
    """The history, made to end with the version that holds the alias now, and that version.

    A move writes the history before it moves the alias, so a crash between the two leaves a
    history that ends with a move that never happened: everything after the current champion's
    last entry is dropped. A champion the history lacks (set by hand) is appended. Without a
    champion, nothing on record was ever reached for certain: the history starts afresh."""
    name = name or model_name()
    history = champion_history(client, name)
    current = version_by_alias(client, CHAMPION, name)
    if current is None:
        return [], None
    now = str(current.version)
    if now in history:
        del history[len(history) - history[::-1].index(now) :]
    else:
        history.append(now)
    return history, current


def write_history(client: MlflowClient, name: str | None = None) -> list[str]:
    """Store the reconciled history (after a crash, or an alias moved by hand)."""
    name = name or model_name()
    history, _ = reconciled_history(client, name)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_LENGTH:]))
    return history


def _exists(client: MlflowClient, name: str, version: str) -> bool:
    try:
        client.get_model_version(name, version)
    except MlflowException:
        return False
    return True


def _move_champion(
    client: MlflowClient, name: str, version: str, history: list[str], reason: str
) -> None:
    """History first, then the alias: see `reconciled_history` for what a crash between leaves."""
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_LENGTH:]))
    failpoint("history-written")
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "champion_since", _now())
    client.set_model_version_tag(name, version, "champion_reason", reason[:500])


def promote(client: MlflowClient, version: str, reason: str, name: str | None = None) -> Move:
    """Give `version` the champion alias, recording the move; no version is the challenger then."""
    name = name or model_name()
    history, current = reconciled_history(client, name)
    version = str(version)
    history.append(version)
    _move_champion(client, name, version, history, reason)
    if version_by_alias(client, CHALLENGER, name) is not None:
        client.delete_registered_model_alias(name, CHALLENGER)
    return Move(name, None if current is None else str(current.version), version, reason)


def keep(client: MlflowClient, version: str, name: str | None = None) -> None:
    """The champion stays; `version` becomes the challenger."""
    name = name or model_name()
    client.set_registered_model_alias(name, CHALLENGER, str(version))


def rollback(
    to: str | None = None, client: MlflowClient | None = None, name: str | None = None
) -> Move:
    """Move `champion` back to the previous champion, or to version `to`."""
    name = name or model_name()
    client = client or tracking_client()
    history, current = reconciled_history(client, name)
    if current is None:
        raise RegistryError(
            f"model {name!r} has no champion, so there is nothing to roll back; "
            "run the pipeline to register one"
        )
    now = str(current.version)
    if to is not None:
        target = str(to)
        if not _exists(client, name, target):
            versions = sorted(
                (str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int
            )
            raise RegistryError(f"model {name!r} has no version {target}; its versions: {versions}")
        if target == now:
            raise RegistryError(f"version {target} of {name!r} is already the champion")
        history.append(target)
        reason = f"rollback --to {target} from version {now}"
    else:
        history.pop()  # the current champion
        while history and not _exists(client, name, history[-1]):
            history.pop()  # deleted since
        if not history:
            raise RegistryError(
                f"version {now} is the first champion of {name!r} on record: there is no "
                "previous champion; name one with --to VERSION"
            )
        target = history[-1]
        reason = f"rollback from version {now}"
    _move_champion(client, name, target, history, reason)
    client.set_model_version_tag(name, now, "rolled_back_at", _now())
    return Move(name, now, target, reason)


def registry_overview(client: MlflowClient, name: str | None = None) -> pd.DataFrame:
    """Every version with its aliases, candidate, gate and headline metric."""
    name = name or model_name()
    try:
        aliases = client.get_registered_model(name).aliases  # alias -> version
    except MlflowException:
        aliases = {}
    rows = []
    for version in client.search_model_versions(f"name='{name}'"):
        metric = version.tags.get("metric", "")
        held = sorted(a for a, v in aliases.items() if str(v) == str(version.version))
        rows.append(
            {
                "version": int(version.version),
                "aliases": ", ".join(held),
                "candidate": version.tags.get("candidate", ""),
                "metric": metric,
                "test": version.tags.get(f"test_{metric}", ""),
                "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC),
            }
        )
    columns = ["version", "aliases", "candidate", "metric", "test", "created"]
    return pd.DataFrame(rows, columns=columns).sort_values("version").reset_index(drop=True)
