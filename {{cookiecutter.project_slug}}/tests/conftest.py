"""Shared fixtures: each test gets its own project root and MLflow store, never the real ones."""

import shutil

import mlflow
import pytest

from {{ cookiecutter.package_name }} import tracking


@pytest.fixture(autouse=True)
def isolated_project(tmp_path, monkeypatch):
    """Point the project root, the run folder and MLflow at a temporary folder."""
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    monkeypatch.setenv("PIPELINE_RUN_DIR", str(tmp_path / "runs" / "test"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An MLflow SQLite store with its tables made once: creating them takes seconds."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def client(isolated_project, empty_store):
    """An MLflow client on this test's own store, copied from the empty one."""
    shutil.copy(empty_store, isolated_project / "mlflow.db")
    return tracking.client()  # points MLflow at this test's store
