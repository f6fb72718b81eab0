"""The pipeline runner: the numbered notebooks, in order, through papermill, as one MLflow run tree.

pipeline run (parent)            params, git commit, package versions
  01_use_case (child)            each notebook logs to its own child run,
  02_data_preparation (child)    and the executed notebook is attached to it
  ...

On-demand notebooks (06_monitoring, 07_experiment) are numbered like the others, so `check` and `fix`
keep their parameters in sync, but the pipeline never runs them: their own command (`monitor`,
`experiment`) does, each as a top-level MLflow run of its own, by `run_on_demand`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import papermill
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from . import params as P
from . import recovery, tracking
from .kernels import WarmKernels
from .project import (
    FINISHED,
    HANDOFF,
    RUN_DIR_ENV,
    RUNNER_PID_ENV,
    completed,
    latest_handoff,
    project_root,
    record_completed,
)

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
KERNEL = "python3"  # the interpreter running this command, so notebooks see the same packages
KERNEL_ARGUMENTS = [
    # Quiet the kernel's start-up warning about TCP on loopback; errors still show.
    "--IPKernelApp.log_level=ERROR",
    # The kernel (and its joblib workers) die with this process, however it ends (kernel_guard.py).
    f"--IPKernelApp.exec_lines=from {__package__}.kernel_guard import watch_parent as _w; _w(); del _w",
    # ...and only the guard watches the parent: ipykernel's own poller would race it and end the
    # kernel alone (os._exit), orphaning its workers. It skips parent 1, which never goes away.
    "--IPKernelApp.parent_handle=1",
]
PARENT_RUN_ENV = "PIPELINE_PARENT_RUN_ID"
RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
ON_DEMAND = ("06_monitoring", "07_experiment")  # run by their own command, never the pipeline
# Set for the notebooks the runner executes: nobody watches an executed notebook's progress bars.
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


class PipelineError(RuntimeError):
    """A notebook failed; the message names it, the cell, the error and the executed copy."""


@dataclass
class Plan:
    """What a pipeline run will do, fully checked before the first notebook starts."""

    notebooks: list[Path]
    values: dict[Path, dict[str, Any]]
    tree: dict[str, Any]
    smoke: bool = False
    # Notebooks a partial run runs too, each with the settings that brought it in.
    brought_in: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Outcome:
    run_id: str
    run_dir: Path
    executed: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def discover(notebook_dir: Path, on_demand: bool = False) -> list[Path]:
    """The numbered notebooks the pipeline runs, in the order their numbers give; with `on_demand`,
    also those their own command runs (`check` and `fix` look at every notebook)."""
    found = sorted(notebook_dir.glob(NOTEBOOK_PATTERN))
    return found if on_demand else [n for n in found if n.stem not in ON_DEMAND]


def on_demand_notebook(stem: str) -> Path:
    """An on-demand notebook by name, e.g. `06_monitoring`."""
    return project_root() / "notebooks" / f"{stem}.ipynb"


def select(notebooks: list[Path], only: list[str] | None = None, start: str | None = None):
    """Part of the pipeline: `--only 02 03` or `--from 03` (a number or a file name)."""

    def matches(notebook: Path, wanted: str) -> bool:
        return (
            notebook.stem == wanted
            or notebook.name == wanted
            or notebook.stem[:2] == wanted.zfill(2)
        )

    def find(wanted: str) -> Path:
        for notebook in notebooks:
            if matches(notebook, wanted):
                return notebook
        names = ", ".join(n.stem for n in notebooks)
        raise P.ParamsError(f"no notebook matches {wanted!r}; the notebooks are: {names}")

    if only:
        return [find(wanted) for wanted in only]
    if start:
        return notebooks[notebooks.index(find(start)) :]
    return notebooks


def plan(
    param_files: list[Path] | None = None,
    sets: list[str] | None = None,
    smoke: bool = False,
    only: list[str] | None = None,
    start: str | None = None,
    notebooks: list[Path] | None = None,
) -> Plan:
    """Resolve and check every notebook's parameters; raises ParamsError listing every problem.

    `notebooks` names them outright (an on-demand notebook); else the pipeline's, or part of it."""
    root = project_root()
    base = P.load_yaml(root / P.PARAMS_FILE)
    tree, raw_sets = P.resolve(base, param_files or [], sets or [], smoke=smoke)
    brought_in = {}
    if notebooks is None:
        everything = discover(root / "notebooks")
        notebooks = select(everything, only, start)
        overrides, _ = P.resolve(base, param_files or [], sets or [])  # the smoke settings aside
        brought_in = _declaring(everything, notebooks, tree, P.changed_keys(base, overrides))
        notebooks = [n for n in everything if n in notebooks or n.stem in brought_in]
    values, problems = {}, []
    for notebook in notebooks:
        try:
            declared = P.read_notebook_params(notebook)
            values[notebook] = P.notebook_values(tree, declared, raw_sets)
        except P.ParamsError as error:
            problems.append(str(error))
    if problems:
        raise P.ParamsError("\n".join(problems))
    return Plan(notebooks, values, tree, smoke, brought_in)


def _declaring(
    everything: list[Path], chosen: list[Path], tree: dict[str, Any], changed: set[str]
) -> dict[str, list[str]]:
    """The skipped earlier notebooks that declare a setting `--set` or `--params` changes, with
    those settings. Each parameter is declared by the one notebook that uses it and handed on from
    there (01 hands on the use case), so `--from 04 --set use_case.threshold=0.9` must run 01 too
    for 04 to see it."""
    keys = P.parameter_keys(tree)
    found = {}
    for notebook in everything:
        if notebook in chosen or notebook.name > chosen[-1].name:
            continue
        declared = {keys.get(param.name) for param in P.read_notebook_params(notebook)}
        reached = [k for k in sorted(changed) if _under_any(k, declared - {None})]
        if reached:
            found[notebook.stem] = reached
    return found


def _under_any(key: str, prefixes: set[str]) -> bool:
    return any(key == prefix or key.startswith(f"{prefix}.") for prefix in prefixes)


def run(the_plan: Plan, echo=print) -> Outcome:
    """Execute the plan; raises PipelineError when a notebook fails (its runs marked FAILED), and
    KeyboardInterrupt on Ctrl+C or SIGTERM (its runs marked KILLED, its kernels and their workers
    killed). Runs that an earlier pipeline, killed outright, left RUNNING are marked first.

    A tracking server that does not answer stops the run before it starts; one lost during the run
    stops it at the next MLflow call with a PipelineError that says so (the runs then stay RUNNING
    on the server until a later pipeline or `doctor` marks them), instead of MLflow's retries and
    traceback.
    """
    if problem := tracking.server_problem():
        raise PipelineError(f"Nothing was run: {problem}")
    _repair_first(echo)
    retries = os.environ.get(RETRIES_ENV)
    os.environ[RUNNER_PID_ENV] = str(os.getpid())  # failpoints aimed at the runner fire only here
    try:
        with _sigterm_as_interrupt():
            return _run_tree(the_plan, echo)
    except Exception as error:
        if (problem := tracking.server_problem()) is None:
            raise
        cause = next((e for e in _chain(error) if isinstance(e, PipelineError)), error)
        first_line = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise PipelineError(
            f"The pipeline stopped: {problem}\n"
            f"  What failed: {first_line[:500]}\n"
            "  What was logged before that is on the server; this run and the notebook it was in "
            "could not be marked FAILED and show as RUNNING there until a later pipeline, or "
            "`doctor`, marks them. Run the pipeline again once the server answers."
        ) from None
    finally:
        if retries is None:
            os.environ.pop(RETRIES_ENV, None)
        else:
            os.environ[RETRIES_ENV] = retries


def _repair_first(echo) -> None:
    """Finish what killed runs left behind; a store that refuses (permissions on a shared server)
    is reported, and the run goes ahead: `doctor` can try again."""
    try:
        repairs = recovery.repair()
    except MlflowException as error:
        why = str(error).splitlines()[0][:200] if str(error) else error.error_code
        echo(f"warning: could not finish what earlier, killed runs left ({why}); `doctor` retries")
        return
    if repairs.killed or repairs.settled:
        echo("Finished what an earlier, killed run left behind:")
        for line in repairs.lines():
            echo(f"  {line}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler or CI stopping the job) ends the run as Ctrl+C does: cleanly, its runs
    marked KILLED, instead of the process vanishing and leaving them RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum: int, frame) -> None:
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _end_tree(experiment_id: str, run_id: str, error: BaseException) -> None:
    """Mark the run and every run under it that is still RUNNING (a candidate run the killed
    kernel left open, say): KILLED when interrupted, FAILED otherwise."""
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    if tracking.server_problem() is None:
        recovery.mark_tree(mlflow.MlflowClient(), experiment_id, run_id, status)
    with contextlib.suppress(Exception):  # the server may be gone: nothing more can be recorded
        mlflow.end_run(status)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and those it was raised while handling."""
    while error is not None:
        yield error
        error = error.__context__


def _run_tree(the_plan: Plan, echo=print) -> Outcome:
    started = time.perf_counter()
    notebooks = the_plan.notebooks
    with WarmKernels(KERNEL, KERNEL_ARGUMENTS) as kernels:
        kernels.prepare(notebooks[0])  # it boots while the parent run is set up
        experiment_id = tracking.configure()
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        tags = {**tracking.git_tags(), **tracking.owner_tags()}
        tags |= {"smoke": str(the_plan.smoke).lower(), "kind": "pipeline"}
        parent = mlflow.start_run(
            experiment_id=experiment_id, run_name=f"pipeline-{stamp}", tags=tags
        )
        run_id = parent.info.run_id
        try:
            run_dir = project_root() / "runs" / f"{stamp}-{run_id[:8]}"
            run_dir.mkdir(parents=True, exist_ok=True)
            _continue_from_latest(the_plan, run_dir, echo)
            for stem, settings in the_plan.brought_in.items():
                echo(f"{stem} runs too: it declares {', '.join(settings)}, changed for this run")
            _log_context(the_plan, run_dir)
            outcome = Outcome(run_id, run_dir)
            for number, notebook in enumerate(notebooks, start=1):
                if number < len(notebooks):  # its kernel warms up while this notebook runs
                    kernels.prepare(notebooks[number])
                echo(f"[{number}/{len(notebooks)}] {notebook.stem} ...", end=" ", flush=True)
                began = time.perf_counter()
                values = the_plan.values[notebook]
                executed = _run_notebook(notebook, values, run_dir, parent, tags, kernels)
                outcome.executed.append(executed)
                record_completed(run_dir, notebook.stem)  # a later --from may continue from here
                echo(f"done in {time.perf_counter() - began:.1f} s")
        except BaseException as error:
            _end_tree(experiment_id, run_id, error)
            raise
        mlflow.end_run("FINISHED")
        (run_dir / FINISHED).write_text(f"{run_id}\n")  # its handoff may be continued from
    outcome.seconds = time.perf_counter() - started
    return outcome


def _continue_from_latest(the_plan: Plan, run_dir: Path, echo) -> None:
    """A partial run (--only, --from) starts from the newest earlier run that completed every
    notebook it skips, finished or not (--from 04 after a run that failed in 04)."""
    everything = discover(project_root() / "notebooks")
    last = the_plan.notebooks[-1].name
    skipped = [n.stem for n in everything if n not in the_plan.notebooks and n.name < last]
    if not skipped:
        return
    if previous := latest_handoff(exclude=run_dir, needs=skipped):
        shutil.copy(previous, run_dir / HANDOFF)
        record_completed(run_dir, *sorted(completed(previous.parent)))
        mlflow.set_tag("continues_from", str(previous.parent))
        echo(f"Continuing from {previous.parent.name}")


def _log_context(the_plan: Plan, run_dir: Path) -> None:
    """What makes the run reproducible: the parameters, the packages and where the outputs are."""
    settings = P.leaves({k: v for k, v in the_plan.tree.items() if k not in P.RUNNER_SECTIONS})
    mlflow.log_params({key: P.shown(value, 500) for key, value in settings.items()})
    mlflow.log_dict(the_plan.tree, P.PARAMS_FILE)
    mlflow.log_text(tracking.environment_lines(), "environment.txt")
    mlflow.set_tags({f"version.{k}": v for k, v in tracking.package_versions().items()})
    mlflow.set_tag("run_dir", str(run_dir))


def run_on_demand(the_plan: Plan, kind: str) -> Outcome:
    """Execute an on-demand notebook as a top-level MLflow run tagged `kind`, its folder under
    runs/<kind>/ (so it is never taken for a pipeline run's handoff); raises PipelineError."""
    (notebook,) = the_plan.notebooks
    if problem := tracking.server_problem():
        raise PipelineError(f"Nothing was run: {problem}")
    _repair_first(print)
    with _sigterm_as_interrupt():
        return _run_on_demand(notebook, the_plan, kind)


def _run_on_demand(notebook: Path, the_plan: Plan, kind: str) -> Outcome:
    started = time.perf_counter()
    experiment_id = tracking.configure()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        tags={**tracking.git_tags(), **tracking.owner_tags(), MLFLOW_RUN_NAME: f"{kind}-{stamp}",
              "notebook": notebook.name, "kind": kind},
    )  # fmt: skip
    run_id = run.info.run_id
    run_dir = project_root() / "runs" / kind / f"{stamp}-{run_id[:8]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    client.log_dict(run_id, the_plan.tree, P.PARAMS_FILE)
    env = {"MLFLOW_RUN_ID": run_id, RUN_DIR_ENV: str(run_dir), **QUIET}
    executed = _execute(notebook, the_plan.values[notebook], run_dir, client, run_id, env)
    return Outcome(run_id, run_dir, [executed], time.perf_counter() - started)


def _run_notebook(
    notebook: Path, values: dict[str, Any], run_dir: Path, parent: mlflow.ActiveRun, tags: dict,
    kernels: WarmKernels,
) -> Path:  # fmt: skip
    client = mlflow.MlflowClient()
    parent_id = parent.info.run_id
    child = client.create_run(
        parent.info.experiment_id,
        tags={**tags, MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: notebook.stem,
              "notebook": notebook.name, "kind": "notebook"},
    )  # fmt: skip
    child_id = child.info.run_id
    env = {
        "MLFLOW_RUN_ID": child_id, RUN_DIR_ENV: str(run_dir), PARENT_RUN_ENV: parent_id,
        # A warm kernel started before `tracking.configure()` set this in our environment.
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), **QUIET,
    }  # fmt: skip
    return _execute(notebook, values, run_dir, client, child_id, env, kernels)


def _execute(
    notebook: Path, values: dict[str, Any], run_dir: Path, client: mlflow.MlflowClient,
    run_id: str, env: dict[str, str], kernels: WarmKernels | None = None,
) -> Path:  # fmt: skip
    """Run one notebook with papermill into `run_dir`, for the MLflow run `run_id`, in its warm
    kernel when `kernels` has one ready (see kernels.py), else in a kernel papermill starts."""
    executed = run_dir / notebook.name
    manager = kernels.take(notebook, env) if kernels else None
    try:
        with _environment(env):
            papermill.execute_notebook(
                notebook,
                executed,
                parameters=values,
                kernel_name=KERNEL,
                cwd=notebook.parent,
                progress_bar=False,
                log_output=False,
                extra_arguments=KERNEL_ARGUMENTS,
                km=manager,
                # Its work is on disk and in MLflow: a graceful shutdown only costs seconds.
                shutdown_kernel="immediate",
            )
    except papermill.PapermillExecutionError as error:
        _finish(client, run_id, executed, "FAILED")
        raise PipelineError(
            f"{notebook.name} failed in cell {error.cell_index + 1} "
            f"(execution count {error.exec_count}): {error.ename}: {error.evalue}\n"
            f"Executed notebook, with the failed cell marked: {executed}"
        ) from None
    except BaseException:
        _finish(client, run_id, executed, "KILLED")
        raise
    finally:
        if kernels:
            kernels.release(manager)
    _finish(client, run_id, executed, "FINISHED")
    return executed


def _finish(client: mlflow.MlflowClient, run_id: str, executed: Path, status: str) -> None:
    if tracking.server_problem():
        # Nothing can be recorded: the closing calls that follow fail at once, not after retries.
        os.environ[RETRIES_ENV] = "0"
        return
    if executed.exists():
        client.log_artifact(run_id, str(executed), artifact_path="notebook")
        if page := as_html(executed):
            client.log_artifact(run_id, str(page), artifact_path="notebook")
    client.set_terminated(run_id, status=status)


def as_html(executed: Path) -> Path | None:
    """The executed notebook as a web page beside it, which the MLflow UI shows rendered (an
    .ipynb it shows as JSON); None if nbconvert cannot render it: the .ipynb still says it all, and
    the notebook's own outcome must not be hidden behind a rendering error."""
    try:
        page, _ = _html_exporter().from_filename(str(executed))
    except Exception:  # noqa: BLE001 -- whatever the rendering error, the .ipynb is logged
        return None
    path = executed.with_suffix(".html")
    path.write_text(page, encoding="utf-8")
    return path


@functools.cache
def _html_exporter():
    """One exporter for the whole run: it loads its templates once (~1 s)."""
    from nbconvert import HTMLExporter  # imported here: only the runner needs it

    return HTMLExporter()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables for the kernel papermill starts (it inherits this process's environment)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
