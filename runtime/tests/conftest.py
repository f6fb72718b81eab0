"""Shared fixtures: each test gets its own project root and MLflow store, never a real one.

The runtime reads the project it serves from `[tool.crisp-ml]` in the project's pyproject.toml;
`isolated_project` writes a minimal one. Tests that need a real project's notebooks, params.yaml
or tracking-server script use `generated_project`, the template generated once (no install).
"""

import contextlib
import importlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import mlflow
import pytest
from cookiecutter.main import cookiecutter

from crisp_ml import project, tracking

TEMPLATE = Path(__file__).resolve().parents[2]
SETTINGS = """\
[project]
name = "demo-ml-project"
authors = [{ name = "Data Science Team" }]
license = "MIT"

[tool.crisp-ml]
package = "demo_ml_project"
model_name = "demo-ml-project"
image_name = "demo-ml-project"
kernel_name = "demo-ml-project"
tracking = "local"
"""


@pytest.fixture(scope="session")
def project_settings() -> str:
    """A minimal project's pyproject.toml, for fixtures that make a project root of their own."""
    return SETTINGS


@pytest.fixture(autouse=True)
def isolated_project(tmp_path, monkeypatch):
    """Point the project root, the run folder and MLflow at a temporary folder."""
    (tmp_path / "pyproject.toml").write_text(SETTINGS)
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    monkeypatch.setenv("PIPELINE_RUN_DIR", str(tmp_path / "runs" / "test"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    project._settings_of.cache_clear()
    return tmp_path


@pytest.fixture(scope="session")
def generated_project(tmp_path_factory) -> Path:
    """The default project, generated from this checkout (files only: nothing installed)."""
    out = tmp_path_factory.mktemp("generated")
    return Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(out),
                             extra_context={"git_init": False}))  # fmt: skip


@contextlib.contextmanager
def project_module(project: Path, name: str) -> Iterator[ModuleType]:
    """A module of the generated project's own package (exported from its notebooks)."""
    sys.path.insert(0, str(project / "src"))
    try:
        yield importlib.import_module(f"demo_ml_project.{name}")
    finally:
        sys.path.remove(str(project / "src"))


@pytest.fixture(scope="session")
def modelling(generated_project):
    """The generated project's own `modelling` module: its preprocessing and candidates."""
    with project_module(generated_project, "modelling") as module:
        yield module


@pytest.fixture(scope="session")
def project_data(generated_project):
    """The generated project's own `data` module: its `clean`, exported from notebook 02."""
    with project_module(generated_project, "data") as module:
        yield module


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
