"""The registry: registering versions, champion or challenger, and rollback, on a temporary store."""

import math
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from {{ cookiecutter.package_name }} import tracking
from {{ cookiecutter.package_name }}.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    champion_history,
    decide,
    describe,
    promote,
    register,
    registry_overview,
    rollback,
    score_version,
    version_by_alias,
)

NAME = tracking.MODEL_NAME


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An MLflow SQLite store with its tables made once: creating them takes seconds."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def client(isolated_project, empty_store):
    shutil.copy(empty_store, isolated_project / "mlflow.db")
    return tracking.client()  # points MLflow at this test's store


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    y = pd.Series(np.where(X["a"] + 0.3 * rng.normal(size=60) > 0, "yes", "no"), name="y")
    return X, y


def log_model(model, X, y) -> str:
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model.fit(X, y), name="model", pip_requirements=["scikit-learn"]
        )
    return info.model_uri


def new_version(client, data, model=None) -> str:
    X, y = data
    uri = log_model(model or LogisticRegression(), X, y)
    return str(register(client, uri, {"candidate": "linear"}, "a card").version)


def test_a_new_version_is_the_challenger_with_tags_and_description(client, data):
    version = new_version(client, data)
    registered = client.get_model_version(NAME, version)
    assert registered.tags["candidate"] == "linear"
    assert registered.description == "a card"
    assert str(version_by_alias(client, CHALLENGER).version) == version
    assert version_by_alias(client, CHAMPION) is None


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


def test_rollback_without_a_champion_says_so(client):
    with pytest.raises(RegistryError, match="has no champion"):
        rollback()
