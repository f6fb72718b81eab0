"""Modelling: preprocessing by column type, candidates, the cross-validated search, the log."""

import logging

import mlflow
import numpy as np
import pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

from crisp_ml import tracking
from crisp_ml.modelling import SearchSettings, log_model, pick_best, scorer_for, tune


def mixed_frame(rows: int = 120, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "income": rng.normal(50, 10, rows),
            "colour": rng.choice(["red", "green", "blue"], rows),
        }
    )
    X.loc[::7, "income"] = np.nan
    X.loc[::11, "colour"] = None
    y = pd.Series(np.where(X["income"].fillna(50) > 50, "high", "low"), name="y")
    return X, y


def pipeline_for(name: str, task: str) -> Pipeline:
    """A candidate as a project's 03 makes one: features, then the estimator as step `model`."""
    features = make_column_transformer(
        (SimpleImputer(strategy="median"), ["income"]),
        (make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder()), ["colour"]),
    )
    estimators = {
        ("baseline", "classification"): DummyClassifier(strategy="prior"),
        ("baseline", "regression"): DummyRegressor(),
        ("linear", "classification"): LogisticRegression(max_iter=2000),
        ("linear", "regression"): Ridge(),
    }
    return Pipeline([("features", features), ("model", estimators[name, task])])


def search(name, task, X, y, metric, space, settings):
    return tune(name, pipeline_for(name, task), task, X, y, metric, space, settings)


def test_binary_roc_auc_uses_the_binary_scorer():
    assert scorer_for("roc_auc", pd.Series(["a", "b"])) == "roc_auc"
    assert scorer_for("roc_auc", pd.Series(["a", "b", "c"])) == "roc_auc_ovr"


def test_search_is_reproducible_and_beats_the_baseline():
    X, y = mixed_frame()
    space = {"C": [0.1, 1.0, 10.0]}
    settings = SearchSettings(n_folds=3, n_iter=2, seed=0)
    first = search("linear", "classification", X, y, "roc_auc", space, settings)
    again = search("linear", "classification", X, y, "roc_auc", space, settings)
    baseline = search("baseline", "classification", X, y, "roc_auc", {}, settings)
    assert first.cv_mean == again.cv_mean and first.best_params == again.best_params
    assert first.cv_mean > baseline.cv_mean + 0.2


def test_errors_are_positive_and_lower_is_better():
    X, _ = mixed_frame()
    y = X["income"].fillna(50) * 2
    results = [
        search(name, "regression", X, y, "mae", {}, SearchSettings(3, 1, seed=0))
        for name in ("baseline", "linear")
    ]
    assert all(r.cv_mean > 0 for r in results)
    assert pick_best(results, "mae").name == "linear"


def test_the_model_is_logged_with_its_environment_stated_and_no_warning():
    """Left to guess, MLflow pins the training environment's pip in conda.yaml and warns "Failed to
    resolve installed pip version" where there is none, as in the venvs uv makes."""
    X, y = mixed_frame()
    result = search("linear", "classification", X, y, "roc_auc", {}, SearchSettings(3, 1, seed=0))
    warned: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warned.append
    logging.getLogger("mlflow").addHandler(handler)
    tracking.configure()
    try:
        with mlflow.start_run():
            info = log_model(result, X, "classification")
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    assert [record.getMessage() for record in warned] == []
    requirements = mlflow.pyfunc.get_model_dependencies(info.model_uri)
    with open(requirements) as file:
        assert any(line.startswith("scikit-learn==") for line in file)
