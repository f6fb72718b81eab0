"""Warm kernels: each notebook's kernel starts, and imports what the notebook imports, while the
notebook before it runs.

Run by papermill, every notebook pays for a fresh kernel and for importing MLflow, scikit-learn,
pandas and the rest again (3 to 5 s on two cores) before its first real cell. The pipeline's
notebooks run one after another, so the runner starts the next notebook's kernel before the
current notebook runs, and asks it to import the modules that notebook's code cells import; it does
so on the other core meanwhile. Only the modules are imported (into `sys.modules`): the notebook's
namespace stays empty, and its own `import` lines run as written, now instantly.

A kernel is shut down at once when its notebook is done: its work is on disk and in MLflow, and a
graceful shutdown spends another 1 to 3 s tearing down those modules. A kernel that fails to warm up
is dropped, and papermill starts a fresh one as usual.
"""

from __future__ import annotations

import ast
import json
import queue
import time
from pathlib import Path
from typing import Self

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync

WARM_UP_SECONDS = 300  # longer than any import; a kernel still busy then is replaced by a fresh one

# Runs in the kernel inside exec() with its own globals, so the notebook's namespace stays empty.
# A module that fails here fails again in the notebook's own cell, with its traceback there.
_IMPORT_ALL = """
import importlib
for name in modules:
    try:
        importlib.import_module(name)
    except Exception:
        pass
"""
_SET_ENVIRONMENT = "import os\nos.environ.update(values)"


def imported_modules(notebook: Path) -> list[str]:
    """The absolute module names the notebook's code cells import, in order of appearance."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    found: list[str] = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:  # IPython magics and shell escapes are not Python
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append(node.module)
    return list(dict.fromkeys(found))


def _in_fresh_globals(source: str, **names) -> str:
    """Code for the kernel that runs `source` with `names` as its only globals."""
    return f"exec({source!r}, {names!r})"


class _Manager(AsyncKernelManager):
    """A kernel manager that remembers the clients papermill makes, to close them at shutdown."""

    def client(self, **kwargs):
        made = super().client(**kwargs)
        self.made_clients = [*getattr(self, "made_clients", []), made]
        return made


class WarmKernel:
    """A kernel started for one notebook, importing that notebook's modules in the background."""

    def __init__(self, notebook: Path, kernel_name: str, extra_arguments: list[str]):
        self.notebook = notebook
        self.manager = _Manager(kernel_name=kernel_name)
        run_sync(self.manager.start_kernel)(
            cwd=str(notebook.parent), extra_arguments=extra_arguments
        )
        # A client of our own: its requests queue in the kernel until it has booted.
        self.client = self.manager.blocking_client()
        self.client.start_channels(iopub=False, stdin=False, hb=False, control=False)
        modules = imported_modules(notebook)
        self.client.execute(
            _in_fresh_globals(_IMPORT_ALL, modules=modules), silent=True, store_history=False
        )

    def hand_over(self, environment: dict[str, str]) -> AsyncKernelManager | None:
        """The manager to give papermill, once the imports are done and `environment` is set in
        the kernel (it was started before the notebook's MLflow run existed); None if the kernel
        did not get there, after shutting it down."""
        request = self.client.execute(
            _in_fresh_globals(_SET_ENVIRONMENT, values=environment),
            silent=True,
            store_history=False,
        )
        ready = self._reply_ok(request)
        self.client.stop_channels()
        if ready:
            return self.manager
        self.shutdown()
        return None

    def _reply_ok(self, request: str) -> bool:
        deadline = time.monotonic() + WARM_UP_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            if not run_sync(self.manager.is_alive)():
                return False
            try:
                reply = self.client.get_shell_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == request:
                return reply["content"]["status"] == "ok"
        return False

    def shutdown(self) -> None:
        """Kill the kernel now and close every client of it."""
        if self.client.channels_running:
            self.client.stop_channels()
        for client in getattr(self.manager, "made_clients", []):
            client.stop_channels()
        if self.manager.has_kernel:
            run_sync(self.manager.shutdown_kernel)(now=True)


class WarmKernels:
    """One kernel ahead of the notebooks: `prepare` the next, `take` the current one's manager.

    Use as a context manager, so kernels that were never taken are shut down however the run ends.
    """

    def __init__(self, kernel_name: str, extra_arguments: list[str]):
        self.kernel_name = kernel_name
        self.extra_arguments = extra_arguments
        self._waiting: dict[Path, WarmKernel] = {}
        self._taken: list[WarmKernel] = []

    def prepare(self, notebook: Path) -> None:
        if notebook not in self._waiting:
            self._waiting[notebook] = WarmKernel(notebook, self.kernel_name, self.extra_arguments)

    def take(self, notebook: Path, environment: dict[str, str]) -> AsyncKernelManager | None:
        """The notebook's warm kernel with `environment` set, or None (papermill starts one)."""
        kernel = self._waiting.pop(notebook, None)
        if kernel is None:
            return None
        manager = kernel.hand_over(environment)
        if manager is not None:
            self._taken.append(kernel)
        return manager

    def release(self, manager: AsyncKernelManager | None) -> None:
        """Shut down a taken kernel once its notebook has run (or failed)."""
        for kernel in [k for k in self._taken if k.manager is manager]:
            self._taken.remove(kernel)
            kernel.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        for kernel in [*self._waiting.values(), *self._taken]:
            kernel.shutdown()
        self._waiting.clear()
        self._taken.clear()
