"""Modelling: cross-validated search of a candidate's pipeline, picking the best, and logging it
with its signature and requirements."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import skops.io
from mlflow.models import infer_signature
from sklearn.model_selection import KFold, RandomizedSearchCV, StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline

from .use_case import METRICS

# What the served model needs to load, pinned to this environment (MLflow's own guess takes ~6 s).
SERVING_PACKAGES = ("scikit-learn", "pandas", "numpy", "scipy", "skops")


@dataclass
class CandidateResult:
    name: str
    model: Pipeline
    cv_mean: float  # in the metric's own sign (an MAE is positive)
    cv_std: float
    best_params: dict


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


def tune(
    name: str, pipeline: Pipeline, task: str, X: pd.DataFrame, y: pd.Series, metric: str,
    space: dict, settings: SearchSettings,
) -> CandidateResult:  # fmt: skip
    """Random search over `space` (parameter -> values of the pipeline's `model` step); a candidate
    without a space is scored as is."""
    n_folds, n_iter, seed = settings.n_folds, settings.n_iter, settings.seed
    scoring, cv = scorer_for(metric, y), folds(task, n_folds, seed)
    grid = {f"model__{param}": values for param, values in (space or {}).items()}
    if not grid:
        scores = cross_validate(pipeline, X, y, scoring=scoring, cv=cv)["test_score"]
        best = pipeline.fit(X, y)
        return _result(name, best, scores, metric, {})
    size = int(np.prod([len(values) for values in grid.values()]))
    search = RandomizedSearchCV(
        pipeline, grid, n_iter=min(n_iter, size), scoring=scoring, cv=cv, random_state=seed,
        n_jobs=settings.n_jobs, error_score="raise",
    )  # fmt: skip
    search.fit(X, y)
    scores = np.array(
        [search.cv_results_[f"split{i}_test_score"][search.best_index_] for i in range(n_folds)]
    )
    best_params = {k.removeprefix("model__"): v for k, v in search.best_params_.items()}
    return _result(name, search.best_estimator_, scores, metric, best_params)


def _result(name, model, scores, metric, best_params) -> CandidateResult:
    values = np.array([METRICS[metric].from_score(s) for s in scores])
    return CandidateResult(name, model, float(values.mean()), float(values.std()), best_params)


def log_candidate(result: CandidateResult, metric: str) -> None:
    """One nested run per candidate, under this notebook's run."""
    with mlflow.start_run(run_name=result.name, nested=True):
        mlflow.set_tag("candidate", result.name)
        mlflow.log_params(result.best_params)
        mlflow.log_metrics({f"cv_{metric}_mean": result.cv_mean, f"cv_{metric}_std": result.cv_std})


def pick_best(results: list[CandidateResult], metric: str) -> CandidateResult:
    best = results[0]
    for result in results[1:]:
        if METRICS[metric].better(result.cv_mean, best.cv_mean):
            best = result
    return best


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
