"""Warm kernels: started ahead, importing what their notebook imports, and handed over clean."""

import json
import subprocess

import nbformat
import papermill
import pytest

from crisp_ml.kernels import WarmKernels, imported_modules
from crisp_ml.pipeline import KERNEL, KERNEL_ARGUMENTS


def write_notebook(path, *sources: str):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    notebook.metadata["kernelspec"] = {
        "name": KERNEL,
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, path)
    return path


def test_imported_modules_are_the_absolute_imports_of_code_cells(tmp_path):
    notebook = write_notebook(
        tmp_path / "01_x.ipynb",
        "import json\nimport os.path as p\nfrom collections import abc",
        "%matplotlib inline",  # not Python: skipped, not an error
        "def f():\n    import csv\nfrom . import sibling\nimport json",
    )
    assert imported_modules(notebook) == ["json", "os.path", "collections", "csv"]


# What the notebook sees: the warm-up's module is already imported, its own namespace is empty,
# the environment is the one handed over, and its first cell is execution 1.
PROBE = """
import json, os, sys
print(json.dumps({
    "preloaded": "colorsys" in sys.modules,
    "names": sorted(n for n in globals() if not n.startswith("_") and n not in
                    ("In", "Out", "get_ipython", "exit", "quit", "open", "json", "os", "sys")),
    "run_id": os.environ.get("MLFLOW_RUN_ID"),
    "cwd": os.getcwd(),
}))
"""


def output_of(executed) -> dict:
    return json.loads(executed.cells[-1].outputs[0]["text"])


def test_a_warm_kernel_is_handed_over_with_its_modules_and_environment(tmp_path):
    notebook = write_notebook(tmp_path / "01_probe.ipynb", "import colorsys", PROBE)
    with WarmKernels(KERNEL, KERNEL_ARGUMENTS) as kernels:
        kernels.prepare(notebook)
        manager = kernels.take(notebook, {"MLFLOW_RUN_ID": "run-123"})
        assert manager is not None and manager.has_kernel
        pid = manager.provisioner.pid
        # Run the notebook without its import cell, to see what the warm-up left behind.
        write_notebook(notebook, PROBE)
        executed = papermill.execute_notebook(
            notebook, tmp_path / "out.ipynb", kernel_name=KERNEL, km=manager, progress_bar=False
        )
        kernels.release(manager)
    seen = output_of(executed)
    assert seen == {"preloaded": True, "names": [], "run_id": "run-123", "cwd": str(tmp_path)}
    assert executed.cells[-1].execution_count == 1
    alive = subprocess.run(["kill", "-0", str(pid)], capture_output=True, check=False)
    assert alive.returncode != 0, "a released kernel is gone"


def test_kernels_never_taken_are_shut_down(tmp_path):
    notebook = write_notebook(tmp_path / "02_unused.ipynb", "x = 1")
    with WarmKernels(KERNEL, KERNEL_ARGUMENTS) as kernels:
        kernels.prepare(notebook)
        (waiting,) = kernels._waiting.values()
    assert not waiting.manager.has_kernel


def test_a_kernel_that_dies_while_warming_is_replaced_by_none(tmp_path):
    notebook = write_notebook(tmp_path / "03_dies.ipynb", "import os")
    with WarmKernels(KERNEL, KERNEL_ARGUMENTS) as kernels:
        kernels.prepare(notebook)
        (waiting,) = kernels._waiting.values()
        subprocess.run(["kill", "-9", str(waiting.manager.provisioner.pid)], check=True)
        assert kernels.take(notebook, {}) is None  # papermill then starts a kernel of its own


def test_a_failing_cell_still_fails_in_a_warm_kernel(tmp_path):
    notebook = write_notebook(tmp_path / "04_fails.ipynb", "raise ValueError('boom')")
    with WarmKernels(KERNEL, KERNEL_ARGUMENTS) as kernels:
        kernels.prepare(notebook)
        manager = kernels.take(notebook, {})
        with pytest.raises(papermill.PapermillExecutionError, match="boom"):
            papermill.execute_notebook(
                notebook, tmp_path / "out.ipynb", kernel_name=KERNEL, km=manager, progress_bar=False
            )
        kernels.release(manager)


def test_only_the_guard_watches_the_parent(tmp_path):
    # ipykernel's parent poller ends the kernel alone when the parent dies, racing kernel_guard,
    # which ends the kernel's whole group: the race left 03's joblib workers running.
    notebook = write_notebook(
        tmp_path / "01_poller.ipynb",
        "from ipykernel.kernelapp import IPKernelApp\nprint(IPKernelApp.instance().poller is None)",
    )
    executed = papermill.execute_notebook(
        notebook, tmp_path / "out.ipynb", kernel_name=KERNEL, progress_bar=False,
        extra_arguments=KERNEL_ARGUMENTS,
    )  # fmt: skip
    assert executed.cells[-1].outputs[0]["text"].strip() == "True"
