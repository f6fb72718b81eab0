"""Where things live: the project root, the run folder notebooks share, and what one phase hands on."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "PIPELINE_RUN_DIR"  # set by the pipeline runner for the notebooks it executes
RUNNER_PID_ENV = "PIPELINE_RUNNER_PID"  # the runner's process id, for the kernels it starts
FAILPOINT_ENV = "PIPELINE_FAILPOINT"  # tests only: where to crash on purpose (see `failpoint`)
INTERACTIVE = "interactive"  # the run folder of notebooks opened in JupyterLab


def project_root(start: Path | None = None) -> Path:
    """The folder holding params.yaml, found from `start` (the working directory) upwards."""
    if env_root := os.environ.get("PROJECT_ROOT"):
        return Path(env_root).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    raise ProjectNotFound(
        f"no project here: neither {here} nor a folder above it holds params.yaml and "
        "pyproject.toml. Run this in a generated project, or set PROJECT_ROOT to one."
    )


class ProjectNotFound(RuntimeError):
    """The runtime was asked about a project, outside any project."""


@dataclass(frozen=True)
class ProjectSettings:
    """What the runtime needs to know about the project using it: the `[tool.crisp-ml]` table of
    its pyproject.toml (written at generation), plus its name, authors and license."""

    name: str  # the project's distribution name: its command, and its MLflow experiment
    package: str  # the team's own package, exported from the notebooks
    model_name: str  # its registered model
    image_name: str  # its serving image
    kernel_name: str  # the Jupyter kernel every notebook's metadata names
    tracking: str = "local"  # "local": a SQLite store in the project; "server": a team server
    tracking_uri: str | None = None  # the team server's URI (MLFLOW_TRACKING_URI overrides it)
    author: str = ""
    license: str = ""


SETTINGS_KEYS = ("package", "model_name", "image_name", "kernel_name", "tracking", "tracking_uri")
REQUIRED_KEYS = SETTINGS_KEYS[:4]


@functools.cache
def _settings_of(root: Path) -> ProjectSettings:
    path = root / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ProjectNotFound(f"{path} cannot be read: {error}") from None
    table = data.get("tool", {}).get("crisp-ml")
    project = data.get("project", {})
    problems = _settings_problems(table, project)
    if problems:
        raise ProjectNotFound(f"{path}: " + "; ".join(problems))
    authors = project.get("authors") or [{}]
    return ProjectSettings(
        name=project["name"],
        author=str(authors[0].get("name", "")),
        license=str(project.get("license", "")),
        **table,
    )


def _settings_problems(table: Any, project: dict) -> list[str]:
    if not isinstance(table, dict):
        return ["no [tool.crisp-ml] table: the runtime needs it (see the template's docs)"]
    problems = [f"[tool.crisp-ml] {key} is missing" for key in REQUIRED_KEYS if key not in table]
    problems += [
        f"[tool.crisp-ml] has an unknown key `{key}`; the keys are {', '.join(SETTINGS_KEYS)}"
        for key in table
        if key not in SETTINGS_KEYS
    ]
    problems += [
        f"[tool.crisp-ml] {key} must be text"
        for key, value in table.items()
        if key in SETTINGS_KEYS and not isinstance(value, str)
    ]
    if table.get("tracking", "local") not in ("local", "server"):
        problems.append(
            f"[tool.crisp-ml] tracking must be local or server, not {table['tracking']!r}"
        )
    elif table.get("tracking") == "server" and not table.get("tracking_uri"):
        problems.append(
            "[tool.crisp-ml] tracking = server needs tracking_uri, the server's address"
        )
    if not isinstance(project.get("name"), str):
        problems.append("[project] name is missing")
    return problems


def settings() -> ProjectSettings:
    """This project's settings, read once from its pyproject.toml."""
    return _settings_of(project_root())


def resolve_path(path: str) -> Path:
    """A path from params.yaml: relative ones are relative to the project root."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else project_root() / candidate


def run_dir() -> Path:
    """The folder where this pipeline run's notebooks leave data for the next ones.

    The runner gives each run its own folder; a notebook opened in JupyterLab uses runs/interactive.
    """
    folder = Path(os.environ.get(RUN_DIR_ENV) or project_root() / "runs" / INTERACTIVE)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


HANDOFF = "handoff.json"
FINISHED = "FINISHED"  # written into a run folder once every notebook of the run has succeeded
COMPLETED = (
    "COMPLETED"  # in a run folder: each notebook whose outputs its handoff holds, a line each
)
BASE = "CONTINUES_FROM"  # in runs/interactive: the pipeline run folder its handoff started from


def _handoff_file() -> Path:
    continued_from()
    return run_dir() / HANDOFF


def continued_from() -> Path | None:
    """In JupyterLab, the finished pipeline run folder whose handoff runs/interactive continues
    (brought up to date first, see `catch_up`); None under the runner or before any pipeline run."""
    if RUN_DIR_ENV in os.environ:
        return None
    base = catch_up(run_dir() / HANDOFF)
    return base.parent if base else None


def catch_up(path: Path) -> Path | None:
    """Start the interactive handoff `path` afresh from the newest finished pipeline run's, when
    that run is newer than the one it started from; returns that run's handoff.

    So in JupyterLab, 04 reads what the newest pipeline run made, and 05 then reads that as well as
    what 04 added; values a notebook made here since that pipeline run win, older ones do not."""
    newest = latest_handoff()
    if newest is None:
        return None
    base = path.parent / BASE
    if not (path.is_file() and base.is_file() and base.read_text().strip() == newest.parent.name):
        shutil.copy(newest, path)
        base.write_text(f"{newest.parent.name}\n")
    return newest


def latest_handoff(exclude: Path | None = None, needs: Iterable[str] | None = None) -> Path | None:
    """The newest pipeline run's handoff file (run folders are named by start time) holding what
    the notebooks in `needs` hand on; without `needs`, the newest finished run's. A failed or
    killed run's handoff holds only what its completed notebooks added."""

    def usable(folder: Path) -> bool:
        if needs is None:
            return (folder / FINISHED).is_file()
        return set(needs) <= completed(folder)

    runs = project_root() / "runs"
    found = sorted(p for p in runs.glob(f"*/{HANDOFF}") if p.parent != exclude and usable(p.parent))
    return found[-1] if found else None


def completed(folder: Path) -> set[str]:
    """The notebooks (stems) whose outputs the run folder's handoff holds."""
    path = folder / COMPLETED
    return set(path.read_text().split()) if path.is_file() else set()


def record_completed(folder: Path, *notebooks: str) -> None:
    with (folder / COMPLETED).open("a") as record:
        record.writelines(f"{stem}\n" for stem in notebooks)


def hand_on(**values: Any) -> None:
    """Record values a later phase needs (a data path, a run id, a model URI)."""
    path = _handoff_file()
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update(values)
    path.write_text(json.dumps(known, indent=2, default=str))


def handed_on(key: str, producer: str) -> Any:
    """A value an earlier phase recorded, or a clear error naming the notebook to run first.

    In JupyterLab, values not made here since the newest pipeline run come from that run.
    """
    path = _handoff_file()
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


def write_run_file(record: dict[str, Any], folder: Path, name: str) -> Path:
    """`record` as `name` (JSON) in a run's folder: what an on-demand command turns into its exit
    status (experiment.json here, verdict.json for monitoring, whose pair has the same shape)."""
    path = Path(folder) / name
    path.write_text(json.dumps(record, indent=2))
    return path


def read_run_file(folder: Path, name: str, error: type[Exception], kind: str) -> dict[str, Any]:
    """The record `write_run_file` left; `error` naming the `kind` of run when it left none."""
    path = Path(folder) / name
    if not path.is_file():
        raise error(f"the {kind} run left no {name} in {folder}")
    return json.loads(path.read_text())
