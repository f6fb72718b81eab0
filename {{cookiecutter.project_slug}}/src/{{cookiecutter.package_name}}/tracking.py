"""MLflow set-up shared by the runner, the notebooks and the serving commands."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from .project import PROJECT_NAME, project_root

EXPERIMENT_NAME = PROJECT_NAME
MODEL_NAME = "{{ cookiecutter.__model_name }}"
{%- if cookiecutter.tracking == 'server' %}
# The team's shared tracking server; MLFLOW_TRACKING_URI (in the environment or .env) overrides it.
DEFAULT_TRACKING_URI = "{{ cookiecutter.tracking_server_uri }}"
{%- else %}
# None: a SQLite store in the project (see local_tracking_uri); MLFLOW_TRACKING_URI overrides it.
DEFAULT_TRACKING_URI = None
{%- endif %}
KEY_PACKAGES = ("mlflow", "scikit-learn", "pandas", "numpy", "papermill", "nbdev", "skops")


def local_tracking_uri() -> str:
    """An absolute SQLite URI, so a notebook run from another folder finds the same store."""
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI or local_tracking_uri()


def configure() -> str:
    """Point MLflow at the project's store and experiment; returns the experiment id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # kernels started from here inherit it
    experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    elif uri.startswith("sqlite:"):
        # Artifacts next to the store, whatever the working directory is.
        location = (project_root() / "mlruns").as_uri()
        experiment_id = mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=location)
    else:
        experiment_id = mlflow.create_experiment(EXPERIMENT_NAME)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def client() -> MlflowClient:
    configure()
    return MlflowClient()


def start_phase_run(phase: str) -> mlflow.ActiveRun:
    """The MLflow run a notebook logs to.

    Under the pipeline the runner made this notebook's run (a child of the pipeline's run) and passes
    its id in MLFLOW_RUN_ID; opened in JupyterLab, the notebook gets a run of its own.
    """
    configure()
    # Taken out of the environment: MLflow would otherwise resume this run for every nested run.
    if run_id := os.environ.pop("MLFLOW_RUN_ID", None):
        return mlflow.start_run(run_id=run_id)
    return mlflow.start_run(run_name=phase, tags=git_tags())


def git_tags() -> dict[str, str]:
    """The commit the code came from, and whether uncommitted changes were in play."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=project_root(), capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain")) if commit else False
    except FileNotFoundError:  # git is not installed
        commit, dirty = "", False
    return {"git_commit": commit or "unknown", "git_dirty": str(dirty).lower()}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment_lines() -> str:
    """Every installed distribution with its version, as a requirements-style listing."""
    dists = sorted({(d.metadata["Name"], d.version) for d in metadata.distributions()})
    return "\n".join(f"{name}=={version}" for name, version in dists) + "\n"


def artifact_root() -> Path:
    return project_root() / "mlruns"
