"""Shared fixtures: each test gets its own project root and MLflow store, never the real ones."""

import pytest


@pytest.fixture(autouse=True)
def isolated_project(tmp_path, monkeypatch):
    """Point the project root, the run folder and MLflow at a temporary folder."""
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    monkeypatch.setenv("PIPELINE_RUN_DIR", str(tmp_path / "runs" / "test"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path
