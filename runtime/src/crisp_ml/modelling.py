"""Modelling: cross-validated search of a candidate's pipeline, picking the best, and logging it
with its signature and requirements.

The search scales with the data by design, not by luck:

- a row budget (`SearchSettings.search_rows`): on more training rows, the settings are compared on a
  sample of that many (stratified for classification), and the best one is then refit on every row;
- a time budget (`SearchSettings.max_seconds`): a candidate's search stops before a setting that
  would likely end past it, keeps the best of the settings tried, and says so;
- a size note (`report_model_size`): the chosen model's serialized size, logged as `model_size_mb`,
  with a warning naming the settings to change above a limit.
"""

from __future__ import annotations

import platform
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import skops.io
from mlflow.models import infer_signature
from sklearn.base import clone
from sklearn.model_selection import KFold, ParameterSampler, StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline

from .use_case import METRICS

# What the served model needs to load, pinned to this environment (MLflow's own guess takes ~6 s).
SERVING_PACKAGES = ("scikit-learn", "pandas", "numpy", "scipy", "skops")


class SearchBudgetWarning(UserWarning):
    """A candidate's search stopped at its time budget, before trying every setting."""


class ModelSizeWarning(UserWarning):
    """The chosen model is larger than the documented limit."""


@dataclass
class CandidateResult:
    name: str
    model: Pipeline
    cv_mean: float  # in the metric's own sign (an MAE is positive)
    cv_std: float
    best_params: dict
    seconds: float = 0.0  # the search and the refit, wall time
    search_rows: int = 0  # the rows the settings were compared on (all, or the row budget's sample)
    settings_tried: int = 0
    settings_planned: int = 0


def scorer_for(metric_name: str, y: pd.Series) -> str:
    scorer = METRICS[metric_name].scorer
    if scorer == "roc_auc_ovr" and y.nunique() == 2:
        return "roc_auc"  # binary: the positive class's probability
    return scorer


def folds(task: str, n_folds: int, seed: int):
    splitter = StratifiedKFold if task == "classification" else KFold
    return splitter(n_splits=n_folds, shuffle=True, random_state=seed)


@dataclass(frozen=True)
class SearchSettings:
    n_folds: int
    n_iter: int  # settings tried per candidate
    seed: int
    n_jobs: int = 1  # parallel fits; starting workers costs seconds, worth it on larger data only
    search_rows: int = 0  # compare settings on a sample of this many rows if more; 0: all rows
    max_seconds: float = 0.0  # a candidate's search stops before passing this; 0: no limit


def search_sample(
    X: pd.DataFrame, y: pd.Series, rows: int, task: str, seed: int, min_per_class: int = 0
) -> tuple[pd.DataFrame, pd.Series]:
    """At most about `rows` rows to compare settings on: all of them when there are no more, else a
    seeded random sample, stratified for classification (each class keeps its share, and at least
    `min_per_class` rows, or all it has, so every fold still holds it)."""
    if rows <= 0 or len(y) <= rows:
        return X, y
    rng = np.random.default_rng(seed)
    if task != "classification":
        take = rng.choice(len(y), size=rows, replace=False)
    else:
        labels = y.to_numpy()
        members = {label: np.flatnonzero(labels == label) for label in pd.unique(labels)}
        quotas = class_quotas({k: len(v) for k, v in members.items()}, rows, min_per_class)
        take = np.concatenate([rng.choice(members[k], quotas[k], replace=False) for k in members])
    take = np.sort(take)  # the data's own order, so folds do not depend on the class order
    return X.iloc[take], y.iloc[take]


def class_quotas(counts: dict[Any, int], rows: int, min_per_class: int) -> dict[Any, int]:
    """Rows to draw of each class for a sample of about `rows`: a class too rare for its share to
    reach `min_per_class` gets that many (or all it has), the others share the rest in proportion
    to their counts, each keeping at least one row."""
    total = sum(counts.values())
    floors = {k: min(min_per_class, n) for k, n in counts.items()}
    raised = {k for k, n in counts.items() if rows * n / total < floors[k]}
    left = rows - sum(floors[k] for k in raised)
    common = sum(n for k, n in counts.items() if k not in raised) or 1
    return {
        k: floors[k] if k in raised else min(n, max(1, round(left * n / common)))
        for k, n in counts.items()
    }


def planned_settings(space: dict, n_iter: int, seed: int) -> list[dict]:
    """The settings a search tries, in the order scikit-learn's RandomizedSearchCV draws them
    (parameters of the pipeline's `model` step); one empty setting for a candidate without a space."""
    grid = {f"model__{param}": values for param, values in (space or {}).items()}
    if not grid:
        return [{}]
    size = int(np.prod([len(values) for values in grid.values()]))
    return list(ParameterSampler(grid, n_iter=min(n_iter, size), random_state=seed))


def tune(
    name: str, pipeline: Pipeline, task: str, X: pd.DataFrame, y: pd.Series, metric: str,
    space: dict, settings: SearchSettings,
) -> CandidateResult:  # fmt: skip
    """Random search over `space` (parameter -> values of the pipeline's `model` step), then the
    best setting refit on every row of `X`; a candidate without a space is scored as is.

    Settings are compared by cross-validation on `search_sample` (the row budget). Before each
    setting, the search stops when the average time per setting so far says it would end after
    `settings.max_seconds`, keeping the best of those tried (`SearchBudgetWarning` says so)."""
    started = time.perf_counter()
    scoring, cv = scorer_for(metric, y), folds(task, settings.n_folds, settings.seed)
    X_search, y_search = search_sample(
        X, y, settings.search_rows, task, settings.seed, min_per_class=settings.n_folds
    )
    planned = planned_settings(space, settings.n_iter, settings.seed)
    tried: list[tuple[dict, np.ndarray]] = []
    for setting in planned:
        elapsed = time.perf_counter() - started
        if tried and settings.max_seconds:
            expected_end = elapsed * (len(tried) + 1) / len(tried)
            if expected_end > settings.max_seconds:
                note = _budget_note(name, len(tried), len(planned), elapsed, settings.max_seconds)
                warnings.warn(note, SearchBudgetWarning, stacklevel=2)
                break
        scores = cross_validate(
            clone(pipeline).set_params(**setting), X_search, y_search, scoring=scoring, cv=cv,
            n_jobs=settings.n_jobs, error_score="raise",
        )["test_score"]  # fmt: skip
        tried.append((setting, scores))
    # The first best, as RandomizedSearchCV ranks ties; a setting scored NaN ranks last.
    setting, scores = max(tried, key=lambda pair: np.nan_to_num(pair[1].mean(), nan=-np.inf))
    best = clone(pipeline).set_params(**setting).fit(X, y)
    best_params = {k.removeprefix("model__"): v for k, v in setting.items()}
    result = _result(name, best, scores, metric, best_params)
    result.seconds = time.perf_counter() - started
    result.search_rows = len(y_search)
    result.settings_tried, result.settings_planned = len(tried), len(planned)
    return result


def _budget_note(name: str, tried: int, planned: int, elapsed: float, limit: float) -> str:
    return (
        f"{name}: search stopped after {tried} of {planned} settings in {elapsed:.0f} s (the next "
        f"would likely end past modelling.max_search_seconds = {limit:g}); the best of those is "
        "used. To try every setting, raise modelling.max_search_seconds (0: no limit), or lower "
        "modelling.search_rows, modelling.n_iter or modelling.cv_folds."
    )


def _result(name, model, scores, metric, best_params) -> CandidateResult:
    values = np.array([METRICS[metric].from_score(s) for s in scores])
    return CandidateResult(name, model, float(values.mean()), float(values.std()), best_params)


def log_candidate(result: CandidateResult, metric: str) -> None:
    """One nested run per candidate, under this notebook's run."""
    with mlflow.start_run(run_name=result.name, nested=True):
        mlflow.set_tag("candidate", result.name)
        mlflow.log_params(result.best_params)
        mlflow.log_metrics({f"cv_{metric}_mean": result.cv_mean, f"cv_{metric}_std": result.cv_std})
        mlflow.log_metrics(search_metrics(result))
        mlflow.set_tag(
            "search_stopped", str(result.settings_tried < result.settings_planned).lower()
        )


def search_metrics(result: CandidateResult) -> dict[str, float]:
    """What the search cost: its time, the rows it compared settings on, the settings it tried."""
    return {
        "search_seconds": round(result.seconds, 1),
        "search_rows": result.search_rows,
        "settings_tried": result.settings_tried,
    }


def pick_best(results: list[CandidateResult], metric: str) -> CandidateResult:
    best = results[0]
    for result in results[1:]:
        if METRICS[metric].better(result.cv_mean, best.cv_mean):
            best = result
    return best


# Estimator parameters that bound a model's size, and which way shrinks it: named, for those the
# estimator has, in the warning about a large model.
SHRINK = {
    "n_estimators": "fewer n_estimators",
    "max_leaf_nodes": "a smaller max_leaf_nodes",
    "max_depth": "a smaller max_depth",
    "min_samples_leaf": "a larger min_samples_leaf",
    "max_iter": "a smaller max_iter",
}


def model_size_mb(model: Any) -> float:
    """The model's size as the registry stores it: skops bytes, in MB (10^6 bytes)."""
    return len(skops.io.dumps(model)) / 1e6


def size_note(result: CandidateResult, size_mb: float, limit_mb: float) -> str | None:
    """A warning naming the settings that shrink the model, or None within `limit_mb` (0: none)."""
    if not limit_mb or size_mb <= limit_mb:
        return None
    model = result.model.named_steps.get("model") if hasattr(result.model, "named_steps") else None
    params = model.get_params() if model is not None else {}
    levers = [way for param, way in SHRINK.items() if param in params]
    how = (
        f"cap it in modelling.search_space.{result.name}: {', '.join(levers)}"
        if levers
        else f"give {result.name} fewer features (a high-cardinality column one-hot encoded?)"
    )
    return (
        f"{result.name}: the model is {size_mb:.0f} MB (skops), above modelling.max_model_mb = "
        f"{limit_mb:g}. The server holds it in memory (more while loading) and the image carries "
        f"it. To make it smaller, {how}; or raise modelling.max_model_mb if the size is intended."
    )


def report_model_size(result: CandidateResult, limit_mb: float) -> float:
    """Measures the chosen model, logs `model_size_mb` to the active run and warns
    (`ModelSizeWarning`) above `limit_mb`; returns the size in MB for the notebook to show."""
    size = model_size_mb(result.model)
    mlflow.log_metric("model_size_mb", round(size, 3))
    note = size_note(result, size, limit_mb)
    if note:
        warnings.warn(note, ModelSizeWarning, stacklevel=2)
    return size


def pinned_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in SERVING_PACKAGES]


def model_environment() -> dict[str, Any]:
    """The model's conda.yaml, written out: left to MLflow, it pins the pip of this environment,
    and warns "Failed to resolve installed pip version" in the venvs uv makes, which have none."""
    python, pip = platform.python_version(), pinned_requirements()  # MLflow adds itself to pip
    return {"name": "mlflow-env", "channels": ["conda-forge"],
            "dependencies": [f"python={python}", "pip", {"pip": pip}]}  # fmt: skip


def log_model(result: CandidateResult, X: pd.DataFrame, task: str):
    """The chosen pipeline with its signature, an input example and explicit requirements."""
    example = X.head(5)
    output = result.model.predict(example)
    return mlflow.sklearn.log_model(
        result.model,
        name="model",
        signature=infer_signature(example, output),
        input_example=example,
        conda_env=model_environment(),  # its pip list becomes requirements.txt
        metadata={"task": task, "candidate": result.name},
        # skops loads only the types it is told to trust; these are the types of the pipeline just
        # trained here, recorded with the model so loading trusts nothing else.
        skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(result.model)),
    )
