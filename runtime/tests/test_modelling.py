"""Modelling: preprocessing by column type, candidates, the cross-validated search, the log."""

import logging
import time
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import make_column_transformer
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import RandomizedSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

from crisp_ml import tracking
from crisp_ml.modelling import (
    CandidateResult,
    ModelSizeWarning,
    SearchBudgetWarning,
    SearchSettings,
    folds,
    log_model,
    model_size_mb,
    pick_best,
    report_model_size,
    scorer_for,
    search_sample,
    size_note,
    tune,
)


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


def imbalanced_frame(rows: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Three classes: 85% `a`, the rest `b` but for 6 rows of `rare`."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"income": rng.normal(50, 10, rows), "colour": rng.choice(["r", "g"], rows)})
    y = pd.Series(np.where(rng.random(rows) < 0.85, "a", "b"), name="y")
    y.iloc[rng.choice(rows, 6, replace=False)] = "rare"
    return X, y


def test_the_search_sample_keeps_each_class_share_and_enough_rows_of_a_rare_one():
    X, y = imbalanced_frame()
    X_sample, y_sample = search_sample(X, y, 200, "classification", seed=0, min_per_class=5)
    assert 199 <= len(y_sample) <= 206 and X_sample.index.equals(y_sample.index)
    # Among the common classes (the rare one takes more than its share), each keeps its own: a
    # plain random sample of 200 strays by ~2.5 points.
    shares = y[y != "rare"].value_counts(normalize=True)
    sampled = y_sample[y_sample != "rare"].value_counts(normalize=True)
    for label in ("a", "b"):
        assert abs(sampled[label] - shares[label]) < 0.01, (label, sampled[label], shares[label])
    assert (y_sample == "rare").sum() == 5  # 0.6 by its share; every fold needs one
    assert search_sample(X, y, 5000, "classification", seed=0)[1].equals(y)  # under the budget
    assert len(search_sample(X, y.rank(), 300, "regression", seed=0)[1]) == 300


def test_settings_are_compared_on_the_sample_and_the_best_refit_on_every_row():
    X, y = imbalanced_frame()
    pipeline = Pipeline(
        [("features", make_column_transformer((SimpleImputer(), ["income"]))),
         ("model", KNeighborsClassifier())]
    )  # fmt: skip
    settings = SearchSettings(n_folds=3, n_iter=2, seed=0, search_rows=300)
    result = tune("knn", pipeline, "classification", X, y, "accuracy", {"n_neighbors": [5, 9]}, settings)  # fmt: skip
    assert result.search_rows < 310
    assert result.model.named_steps["model"].n_samples_fit_ == len(X)  # not the sample's 300


def test_the_search_tries_what_randomized_search_would_and_picks_the_same():
    X, y = mixed_frame(rows=300)
    space = {"C": [1e-4, 1e-3, 0.01, 1.0, 10.0]}  # the smallest predict one class: a worse accuracy
    settings = SearchSettings(n_folds=3, n_iter=4, seed=1)
    result = search("linear", "classification", X, y, "accuracy", space, settings)
    reference = RandomizedSearchCV(
        pipeline_for("linear", "classification"), {"model__C": space["C"]}, n_iter=4,
        scoring="accuracy", cv=folds("classification", 3, 1), random_state=1,
    ).fit(X, y)  # fmt: skip
    assert len(set(reference.cv_results_["mean_test_score"])) > 1  # a choice to get right
    assert result.best_params == {"C": reference.best_params_["model__C"]}
    assert result.cv_mean == pytest.approx(reference.best_score_)
    assert result.settings_tried == result.settings_planned == 4


class SlowClassifier(ClassifierMixin, BaseEstimator):
    """A prior-class model whose fit takes `delay` seconds: a planted slow search."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def fit(self, X, y):
        time.sleep(self.delay)
        self.dummy_ = DummyClassifier(strategy="prior").fit(X, y)
        self.classes_ = self.dummy_.classes_
        return self

    def predict(self, X):
        return self.dummy_.predict(X)

    def predict_proba(self, X):
        return self.dummy_.predict_proba(X)


def test_the_time_budget_stops_a_slow_search_keeps_the_best_tried_and_says_so():
    X, y = mixed_frame()
    pipeline = Pipeline([("features", pipeline_for("linear", "classification")[0]),
                         ("model", SlowClassifier())])  # fmt: skip
    space = {"delay": [0.1, 0.11, 0.12, 0.13, 0.14, 0.15]}  # each setting: 2 folds, ~0.25 s
    budget = SearchSettings(n_folds=2, n_iter=6, seed=0, max_seconds=0.6)
    with pytest.warns(SearchBudgetWarning, match="modelling.max_search_seconds"):
        stopped = tune("slow", pipeline, "classification", X, y, "accuracy", space, budget)
    assert 1 <= stopped.settings_tried < stopped.settings_planned == 6
    assert stopped.model.predict(X.head(3)).shape == (3,)  # refit: a usable model all the same
    unlimited = SearchSettings(n_folds=2, n_iter=6, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SearchBudgetWarning)
        full = tune("slow", pipeline, "classification", X, y, "accuracy", space, unlimited)
    assert full.settings_tried == 6


def planted_forest(trees: int) -> CandidateResult:
    """A forest of unpruned trees grown on noise: large on purpose (~0.1 MB a tree)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(1000, 5)), rng.choice(["a", "b"], 1000)
    forest = RandomForestClassifier(n_estimators=trees, random_state=0).fit(X, y)
    return CandidateResult("random_forest", Pipeline([("model", forest)]), 0.5, 0.0, {})


def test_a_large_model_is_flagged_with_the_settings_that_shrink_it():
    large = planted_forest(trees=30)
    size = model_size_mb(large.model)
    assert size == len(skops.io.dumps(large.model)) / 1e6 and size > 1
    note = size_note(large, size, limit_mb=1)
    assert note is not None and "modelling.search_space.random_forest" in note
    assert "n_estimators" in note and "max_leaf_nodes" in note and "modelling.max_model_mb" in note
    assert size_note(large, size, limit_mb=0) is None  # 0: no limit


def test_the_model_size_is_logged_and_warns_only_above_the_limit():
    X, y = mixed_frame()
    small = search("linear", "classification", X, y, "roc_auc", {}, SearchSettings(3, 1, seed=0))
    tracking.configure()
    with mlflow.start_run() as run, warnings.catch_warnings():
        warnings.simplefilter("error", ModelSizeWarning)
        size = report_model_size(small, limit_mb=1)
    assert 0 < size < 1
    assert mlflow.get_run(run.info.run_id).data.metrics["model_size_mb"] == round(size, 3)
    with mlflow.start_run(), pytest.warns(ModelSizeWarning, match="above modelling.max_model_mb"):
        report_model_size(planted_forest(trees=30), limit_mb=1)
