"""Where things live: the project root, the run folder notebooks share, and what one phase hands on."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

PROJECT_NAME = "{{ cookiecutter.project_slug }}"
RUN_DIR_ENV = "PIPELINE_RUN_DIR"  # set by the pipeline runner for the notebooks it executes
RUNNER_PID_ENV = "PIPELINE_RUNNER_PID"  # the runner's process id, for the kernels it starts
FAILPOINT_ENV = "PIPELINE_FAILPOINT"  # tests only: where to crash on purpose (see `failpoint`)


def project_root(start: Path | None = None) -> Path:
    """The folder holding params.yaml, found from `start` (the working directory) upwards."""
    if env_root := os.environ.get("PROJECT_ROOT"):
        return Path(env_root).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    # An installed package outside its checkout (a container) still knows its own tree.
    return Path(__file__).resolve().parents[2]


def run_dir() -> Path:
    """The folder where this pipeline run's notebooks leave data for the next ones.

    The runner gives each run its own folder; a notebook opened in JupyterLab uses runs/interactive.
    """
    folder = Path(os.environ.get(RUN_DIR_ENV) or project_root() / "runs" / "interactive")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


HANDOFF = "handoff.json"
FINISHED = "FINISHED"  # written into a run folder once every notebook of the run has succeeded


def _handoff_file() -> Path:
    return run_dir() / HANDOFF


def latest_handoff(exclude: Path | None = None) -> Path | None:
    """The newest finished pipeline run's handoff file (run folders are named by start time). A
    failed or killed run's handoff lacks what its later notebooks would have added: never used."""
    runs = project_root() / "runs"
    found = sorted(
        p
        for p in runs.glob(f"*/{HANDOFF}")
        if p.parent != exclude and (p.parent / FINISHED).is_file()
    )
    return found[-1] if found else None


def hand_on(**values: Any) -> None:
    """Record values a later phase needs (a data path, a run id, a model URI)."""
    path = _handoff_file()
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update(values)
    path.write_text(json.dumps(known, indent=2, default=str))


def handed_on(key: str, producer: str) -> Any:
    """A value an earlier phase recorded, or a clear error naming the notebook to run first.

    In JupyterLab, values not yet made in this session come from the newest pipeline run.
    """
    path = _handoff_file()
    if not path.exists() and RUN_DIR_ENV not in os.environ and (newest := latest_handoff()):
        path = newest
    known = json.loads(path.read_text()) if path.exists() else {}
    if key not in known:
        raise RuntimeError(
            f"'{key}' is missing from {path}: it is written by {producer}. "
            f"Run {producer} first (or the whole pipeline)."
        )
    return known[key]


def failpoint(name: str) -> None:
    """A crash on purpose, for the tests of what a crash leaves behind (tests/test_recovery.py and
    the slow lane): when PIPELINE_FAILPOINT is `name`, this process is killed here, as a power cut
    would; when it is `name:pipeline`, the pipeline runner that started this kernel goes first.
    Unset, as it always is outside those tests, this does nothing."""
    point, _, whom = os.environ.get(FAILPOINT_ENV, "").partition(":")
    if point != name:
        return
    if whom == "pipeline" and (runner := os.environ.get(RUNNER_PID_ENV)):
        os.kill(int(runner), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
