"""Every gate of a generated project's `check` can fail: each test plants one kind of problem in a
copy of the project and expects `check` to fail on that gate, naming the file and the fix; `fix`
then mends all of them at once, except the lost `parameters` tag, which needs a person."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

# What a copy leaves behind: the venv is the original's, the rest is run output.
NOT_COPIED = shutil.ignore_patterns(".venv", ".git", "runs", "mlruns", "mlflow.db", "build", "logs")


@pytest.fixture(scope="module")
def original(project_factory):
    return project_factory(task="classification", project_name="Slow Classifier")


@pytest.fixture
def copy(original, tmp_path) -> Path:
    root = tmp_path / original.slug
    shutil.copytree(original.root, root, ignore=NOT_COPIED)
    return root


def run(original, root: Path, command: str) -> subprocess.CompletedProcess:
    """The project's CLI (the runtime's) on the copy: the copy's own package (PYTHONPATH) and
    folder (PROJECT_ROOT)."""
    code = f"from crisp_ml.cli import main; raise SystemExit(main([{command!r}]))"
    env = original.env({"PYTHONPATH": str(root / "src"), "PROJECT_ROOT": str(root)})
    return subprocess.run(
        [str(original.python), "-c", code], cwd=root, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def failed_gates(done: subprocess.CompletedProcess) -> list[str]:
    return [
        line.removeprefix("FAIL ") for line in done.stdout.splitlines() if line.startswith("FAIL")
    ]


def edit_notebook(root: Path, prefix: str, change: Callable[[dict], None]) -> None:
    (path,) = (root / "notebooks").glob(f"{prefix}_*.ipynb")
    notebook = json.loads(path.read_text())
    change(notebook)
    path.write_text(json.dumps(notebook, indent=1))


def first_code_cell(notebook: dict) -> dict:
    return next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")


def parameters_cell(notebook: dict) -> dict:
    return next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))


def unused_import(root: Path, package: str) -> None:
    (root / "src" / package / "scratch.py").write_text("import os\n")


def unformatted_code(root: Path, package: str) -> None:
    (root / "src" / package / "scratch_format.py").write_text("x=[1,2 ,3]\n")


def an_output(root: Path, package: str) -> None:
    output = {"output_type": "stream", "name": "stdout", "text": ["/home/someone/data.csv\n"]}
    edit_notebook(root, "02", lambda nb: first_code_cell(nb).update(outputs=[output]))


def an_execution_count(root: Path, package: str) -> None:
    edit_notebook(root, "03", lambda nb: first_code_cell(nb).update(execution_count=7))


def metadata_jupyterlab_adds(root: Path, package: str) -> None:
    def foreign(notebook: dict) -> None:
        notebook["metadata"]["kernelspec"]["display_name"] = "Python 3 (ipykernel)"
        notebook["metadata"]["language_info"] = {"name": "python", "version": "3.11.2"}

    edit_notebook(root, "01", foreign)


def a_hand_edit_of_an_exported_module(root: Path, package: str) -> None:
    module = root / "src" / package / "data.py"
    module.write_text(module.read_text() + "\nEDITED_BY_HAND = True\n")


def a_params_yaml_change(root: Path, package: str) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["seed"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def a_lost_parameters_tag(root: Path, package: str) -> None:
    edit_notebook(root, "02", lambda nb: parameters_cell(nb)["metadata"].pop("tags"))


# problem planted -> (the gate that fails, what its message names)
PLANTS = {
    unused_import: ("lint", "scratch.py"),
    unformatted_code: ("format", "scratch_format.py"),
    an_output: ("notebooks without outputs", "02_data_preparation.ipynb has outputs"),
    an_execution_count: ("notebooks without outputs", "03_modelling.ipynb has outputs"),
    metadata_jupyterlab_adds: ("notebooks clean", "01_use_case.ipynb is not clean"),
    a_hand_edit_of_an_exported_module: ("nbdev export in sync", "data.py is out of sync"),
    a_params_yaml_change: ("notebook parameters match params.yaml", "data_seed"),
    a_lost_parameters_tag: ("notebook parameters match params.yaml", "no cell tagged `parameters`"),
}


def test_the_copy_passes_check_as_it_is(original, copy):
    done = run(original, copy, "check")
    assert done.returncode == 0 and failed_gates(done) == [], done.stdout + done.stderr


@pytest.mark.parametrize("plant", PLANTS, ids=lambda plant: plant.__name__)
def test_each_gate_fails_on_its_problem_naming_it(original, copy, plant):
    gate, named = PLANTS[plant]
    plant(copy, original.options["package_name"])
    done = run(original, copy, "check")
    assert done.returncode == 1, done.stdout
    assert failed_gates(done) and set(failed_gates(done)) <= {gate, "notebooks clean"}, done.stdout
    assert gate in failed_gates(done), done.stdout
    assert named in done.stdout, done.stdout
    assert "fix" in done.stdout or "Tag the cell" in done.stdout, "the message says what to do"


def test_fix_mends_every_problem_a_tool_can(original, copy):
    package = original.options["package_name"]
    for plant in PLANTS:
        if plant is not a_lost_parameters_tag:
            plant(copy, package)
    assert run(original, copy, "fix").returncode == 0
    done = run(original, copy, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    (notebook,) = (copy / "notebooks").glob("02_*.ipynb")
    assert "parameters" in parameters_cell(json.loads(notebook.read_text()))["metadata"]["tags"]
