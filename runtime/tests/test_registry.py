"""The registry: registering versions, champion or challenger, and rollback, on a temporary store."""

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from crisp_ml.recovery import DECISION_TAG, PENDING, REGISTERED_BY_TAG
from crisp_ml.registry import (
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    RegistryError,
    champion_history,
    decide,
    describe,
    keep,
    promote,
    reconciled_history,
    register,
    registry_overview,
    rollback,
    score_version,
    trained_params,
    version_by_alias,
    version_tags,
)
from crisp_ml.serving.export import seal
from crisp_ml.serving.integrity import RECORD_TAG, IntegrityError

NAME = "demo-ml-project"  # model_name in the test settings (conftest.SETTINGS)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    y = pd.Series(np.where(X["a"] + 0.3 * rng.normal(size=60) > 0, "yes", "no"), name="y")
    return X, y


def log_model(model, X, y) -> str:
    """As 03_modelling logs a model: in skops format, with its integrity record."""
    fitted = model.fit(X, y)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            fitted, name="model", pip_requirements=["scikit-learn"],
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(fitted)),
        )  # fmt: skip
    return info.model_uri, seal(info.model_uri, fitted, X)


def new_version(client, data, model=None) -> str:
    X, y = data
    uri, record = log_model(model or LogisticRegression(), X, y)
    return str(register(client, uri, record, {"candidate": "linear"}, "a card", "run-5").version)


def test_a_new_version_is_pending_with_its_record_and_moves_no_alias(client, data):
    version = new_version(client, data)
    registered = client.get_model_version(NAME, version)
    assert registered.tags["candidate"] == "linear"
    assert (
        registered.tags[DECISION_TAG] == PENDING and registered.tags[REGISTERED_BY_TAG] == "run-5"
    )
    assert json.loads(registered.tags[RECORD_TAG])["files"]["model.skops"]
    assert registered.description == "a card"
    assert version_by_alias(client, CHALLENGER) is None
    assert version_by_alias(client, CHAMPION) is None


def test_a_model_changed_since_it_was_logged_is_not_registered(client, data):
    X, y = data
    uri, record = log_model(LogisticRegression(), X, y)
    stored = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    target = client.get_logged_model(uri.removeprefix("models:/")).artifact_location[7:]
    (Path(target) / "input_example.json").write_text("[]")  # a file the record never saw
    with pytest.raises(IntegrityError, match=r"input_example\.json: present but not recorded"):
        register(client, uri, record, {}, "a card", "run-5")
    assert stored and client.search_model_versions(f"name='{NAME}'") == []


def test_a_version_kept_becomes_the_challenger(client, data):
    first, second = (new_version(client, data) for _ in range(2))
    promote(client, first, "first")
    keep(client, second)
    assert str(version_by_alias(client, CHALLENGER).version) == second
    assert str(version_by_alias(client, CHAMPION).version) == first


def test_a_long_card_is_shortened_with_a_pointer_to_the_full_one():
    text = describe("x" * 6000, "run-4")
    assert len(text) <= 5000 and text.endswith("`model_card.md` of run run-4)")
    assert describe("short", "run-4") == "short"


def test_the_first_version_becomes_champion_and_stops_being_challenger(client, data):
    version = new_version(client, data)
    move = promote(client, version, "first")
    assert (move.from_version, move.to_version) == (None, version)
    assert str(version_by_alias(client, CHAMPION).version) == version
    assert version_by_alias(client, CHALLENGER) is None
    assert champion_history(client) == [version]
    overview = registry_overview(client)
    assert overview.loc[0, "aliases"] == CHAMPION


def test_decisions_need_a_strictly_better_score_in_the_metric_direction():
    assert decide("roc_auc", "2", 0.9).promote  # no champion yet
    assert decide("roc_auc", "2", 0.91, "1", 0.90).promote
    assert not decide("roc_auc", "2", 0.90, "1", 0.90).promote  # a tie keeps the champion
    assert not decide("mae", "2", 45.0, "1", 40.0).promote  # a larger error is worse
    assert decide("mae", "2", 39.0, "1", 40.0).promote
    kept = decide("roc_auc", "2", 0.8, "1", 0.9)
    assert "does not beat champion version 1" in kept.reason
    broken = decide("roc_auc", "2", 0.8, "1", None, champion_error="ValueError: columns missing")
    assert broken.promote and "cannot be scored" in broken.reason
    assert decide("roc_auc", "2", 0.8, "1", math.nan).promote


def test_only_a_pipeline_run_promotes():
    # 05 opened in JupyterLab registers a version that no pipeline run traces or monitors.
    better = decide("roc_auc", "2", 0.99, "1", 0.50, from_pipeline=False)
    assert not better.promote and "JupyterLab" in better.reason
    assert not decide("roc_auc", "1", 0.9, from_pipeline=False).promote, "not even the first"


def test_smoke_models_never_replace_a_full_data_champion_and_always_yield_to_one():
    assert not decide("roc_auc", "2", 0.99, "1", 0.90, challenger_smoke=True).promote
    assert decide("roc_auc", "2", 0.80, "1", 0.90, champion_smoke=True).promote
    both = decide("roc_auc", "2", 0.80, "1", 0.90, challenger_smoke=True, champion_smoke=True)
    assert not both.promote  # two trials: the better one wins


def test_a_registered_version_is_scored_like_the_evaluation(client, data):
    X, y = data
    version = client.get_model_version(NAME, new_version(client, data, DummyClassifier()))
    assert score_version(version, X, y, "classification", "roc_auc", "yes") == pytest.approx(0.5)
    assert score_version(version, X, y, "classification", "accuracy", "") == pytest.approx(
        max(y.value_counts(normalize=True))
    )


def test_rollback_walks_back_through_the_champions(client, data):
    first, second, third = (new_version(client, data) for _ in range(3))
    for version in (first, second, third):
        promote(client, version, "better")
    move = rollback()
    assert (move.from_version, move.to_version) == (third, second)
    assert str(version_by_alias(client, CHAMPION).version) == second
    assert rollback().to_version == first
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback()
    assert client.get_model_version(NAME, third).tags["rolled_back_at"]


def test_rollback_to_a_version_is_a_move_a_later_rollback_undoes(client, data):
    first, second = (new_version(client, data) for _ in range(2))
    promote(client, first, "first")
    move = rollback(to=second)
    assert (move.from_version, move.to_version) == (first, second)
    assert champion_history(client) == [first, second]
    assert rollback().to_version == first
    with pytest.raises(RegistryError, match="has no version 99"):
        rollback(to="99")
    with pytest.raises(RegistryError, match="already the champion"):
        rollback(to=first)


def test_a_champion_set_by_hand_joins_the_history(client, data):
    first, second = (new_version(client, data) for _ in range(2))
    promote(client, first, "first")
    client.set_registered_model_alias(NAME, CHAMPION, second)  # e.g. in the MLflow UI
    assert rollback().to_version == first


class CrashBeforeTheAliasMoves(RuntimeError):
    pass


def crash_between_history_and_alias(monkeypatch, client):
    """The client dies when it would move the champion alias: the history is written already."""

    def crash(name, alias, version):
        raise CrashBeforeTheAliasMoves(f"killed before {alias} moved to {version}")

    monkeypatch.setattr(client, "set_registered_model_alias", crash)


def test_a_promotion_cut_before_the_alias_moved_never_counts(client, data, monkeypatch):
    first, second = (new_version(client, data) for _ in range(2))
    promote(client, first, "first")
    with monkeypatch.context() as patched:
        crash_between_history_and_alias(patched, client)
        with pytest.raises(CrashBeforeTheAliasMoves):
            promote(client, second, "better")
    assert champion_history(client) == [first, second], "the history was written first"
    history, current = reconciled_history(client)
    assert (history, str(current.version)) == ([first], first)
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(client=client)  # never to `second`, which never held the alias


def test_a_rollback_cut_before_the_alias_moved_can_be_run_again(client, data, monkeypatch):
    """The review's crash: champion_history written, the alias not moved, and `rollback` then
    moved *forward*, to a version that never was champion."""
    first, second, third = (new_version(client, data) for _ in range(3))
    promote(client, first, "first")
    promote(client, third, "better")
    with monkeypatch.context() as patched:
        crash_between_history_and_alias(patched, client)
        with pytest.raises(CrashBeforeTheAliasMoves):
            rollback(client=client)
    move = rollback(client=client)
    assert (move.from_version, move.to_version) == (third, first)
    assert second not in champion_history(client)


def test_a_history_naming_a_move_that_never_happened_is_cut_back(client, data):
    first, second = (new_version(client, data) for _ in range(2))
    promote(client, first, "first")
    client.set_registered_model_tag(NAME, HISTORY_TAG, json.dumps([first, second]))
    assert reconciled_history(client)[0] == [first]
    client.delete_registered_model_alias(NAME, CHAMPION)
    assert reconciled_history(client) == ([], None), "no champion: nothing on record is certain"


def test_rollback_without_a_champion_says_so(client):
    with pytest.raises(RegistryError, match="has no champion"):
        rollback()


@pytest.mark.parametrize(
    ("pipeline_run_id", "kind"), [("run-1", "pipeline"), (None, "interactive")]
)
def test_a_version_says_whether_a_pipeline_run_or_a_notebook_in_jupyterlab_registered_it(
    pipeline_run_id, kind
):
    git = {"git_commit": "abc", "git_dirty": "false"}
    tags = version_tags({}, {}, "classification", "roc_auc", git, pipeline_run_id, True, "card")
    expected = (kind, pipeline_run_id or "", "true")
    assert (tags["kind"], tags["pipeline_run_id"], tags["smoke"]) == expected


def test_a_versions_parameters_are_those_its_pipeline_run_logged(client, data):
    with mlflow.start_run() as pipeline_run:  # as the runner logs them on the parent run
        mlflow.log_dict({"task": "classification", "data": {"target": "y"}}, "params.yaml")
    version = new_version(client, data)
    with pytest.raises(RegistryError, match="not registered by a pipeline run"):
        trained_params(client, client.get_model_version(NAME, version))
    client.set_model_version_tag(NAME, version, "pipeline_run_id", pipeline_run.info.run_id)
    trained = trained_params(client, client.get_model_version(NAME, version))
    assert trained == {"task": "classification", "data": {"target": "y"}}
    with mlflow.start_run() as bare_run:  # a run that logged no parameters
        pass
    client.set_model_version_tag(NAME, version, "pipeline_run_id", bare_run.info.run_id)
    with pytest.raises(RegistryError, match=r"parameters of .* cannot be read"):
        trained_params(client, client.get_model_version(NAME, version))
