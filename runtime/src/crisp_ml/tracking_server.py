"""The team's tracking server without Docker, and moving a local store's history onto a server.

    <project> tracking-server start     `mlflow server` on a local PostgreSQL, in the background
    <project> tracking-server status    is it running, does it answer
    <project> tracking-server stop      stop what `start` started
    <project> tracking-server migrate   copy the local SQLite store's runs and models to the server

Settings come from the environment over `.env` (see .env.example). `start` runs
tracking-server/serve.py, the script the compose file's `mlflow` service runs in its container.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import tracking
from .project import project_root

STATE_DIR = ".tracking-server"  # pid file and log of the server `start` started (git-ignored)
SOURCE_RUN_TAG = "migration.source_run_id"  # on each run copied whole: the run it came from
SOURCE_MODEL_TAG = "migration.source_model_id"  # on each logged model copied whole
# On a run or logged model while it is copied, until the tag above replaces it: what a cut
# migration left partial, for the next one to finish.
PARTIAL_TAG = "migration.partial_copy_of"
SOURCE_VERSION_TAG = "migration.source_version"  # on each copied model version
START_TIMEOUT = 120.0  # a first start against an empty database migrates its schema (~30 s)
STOP_TIMEOUT = 30.0


class TrackingServerError(RuntimeError):
    """The server cannot be started, stopped or migrated to; the message says why."""


# ---------------------------------------------------------------- settings


def settings() -> dict[str, str]:
    """The environment over .env, with the host-side defaults `start` needs."""
    env = {**tracking.read_env_file(), **os.environ}
    env.setdefault("MLFLOW_HOST", env.get("MLFLOW_BIND") or "127.0.0.1")
    env.setdefault("MLFLOW_PORT", "5000")
    env.setdefault("MLFLOW_ARTIFACTS_DESTINATION", str(project_root() / "mlartifacts"))
    return env


def server_url(env: dict[str, str]) -> str:
    host = env["MLFLOW_HOST"]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{env['MLFLOW_PORT']}"


def _state(name: str) -> Path:
    folder = project_root() / STATE_DIR
    folder.mkdir(exist_ok=True)
    return folder / name


# ---------------------------------------------------------------- start, status, stop


def _alive(pid: int) -> bool:
    """Whether `pid` is a live mlflow server (not a zombie, not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        try:  # no /proc (macOS): the pid alone
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return state != "Z" and (b"mlflow" in cmdline or b"serve.py" in cmdline)


def running_pid() -> int | None:
    path = _state("server.pid")
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if _alive(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _log_tail(lines: int = 25) -> str:
    try:
        text = _state("server.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start(timeout: float = START_TIMEOUT, echo=print) -> str:
    """Start `mlflow server` in the background and wait until it answers; returns its URL."""
    env = settings()
    url = server_url(env)
    if pid := running_pid():
        echo(f"Already running (pid {pid}) on {url}")
        return url
    if _answers(url):
        raise TrackingServerError(f"something already answers on {url}: stop it or set MLFLOW_PORT")
    host, port = env.get("POSTGRES_HOST") or "127.0.0.1", int(env.get("POSTGRES_PORT") or 5432)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as error:
        raise TrackingServerError(
            f"no PostgreSQL answers on {host}:{port} ({error}). Start it (Debian/Ubuntu: "
            "`apt-get install postgresql`, then create the user and database of .env), or run "
            "the server in Docker: `docker compose up -d --build`."
        ) from None
    Path(env["MLFLOW_ARTIFACTS_DESTINATION"]).mkdir(parents=True, exist_ok=True)
    script = project_root() / "tracking-server" / "serve.py"
    with _state("server.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(script)], env=env, cwd=project_root(), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # outlives this command
        )  # fmt: skip
    _state("server.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _state("server.pid").unlink(missing_ok=True)
            raise TrackingServerError(
                f"the server exited with status {process.returncode}; its log "
                f"({_state('server.log')}) ends:\n{_log_tail()}"
            )
        if _answers(url):
            echo(f"MLflow tracking server on {url} (pid {process.pid}, log {_state('server.log')})")
            return url
        time.sleep(0.5)
    stop(echo=lambda *_: None)
    raise TrackingServerError(
        f"the server did not answer on {url} within {timeout:.0f} s:\n{_log_tail()}"
    )


def status(echo=print) -> int:
    """0 when the server started here runs and answers, 1 otherwise."""
    env = settings()
    url = server_url(env)
    pid = running_pid()
    problem = tracking.server_problem(url)
    echo(
        f"{'running (pid ' + str(pid) + ')' if pid else 'not started here'}; {url}: {problem or 'answers'}"
    )
    return 0 if pid and not problem else 1


def stop(timeout: float = STOP_TIMEOUT, echo=print) -> None:
    """Stop the server `start` started (its workers too): SIGTERM, then SIGKILL after `timeout`."""
    pid = running_pid()
    if pid is None:
        echo("No tracking server started here is running.")
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if not _alive(pid):
            break
    _state("server.pid").unlink(missing_ok=True)
    echo(f"Stopped the tracking server (pid {pid}).")


# ---------------------------------------------------------------- migrate


@dataclass
class Migration:
    source: str
    target: str
    runs: dict[str, str] = field(default_factory=dict)  # source run id -> target run id
    copied_runs: int = 0
    finished_runs: int = 0  # of the copied ones: copies a cut migration had left partial
    models: dict[str, str] = field(default_factory=dict)  # source logged model id -> target id
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> {src: dst}
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    copying: str = ""  # what is being copied now, for the message when the migration is cut

    def __str__(self) -> str:
        now = f"{self.copied_runs} copied now"
        if self.finished_runs:
            now += f", {self.finished_runs} of them finishing a cut copy"
        lines = [
            f"Migrated {self.source} -> {self.target}:",
            f"  runs: {len(self.runs)} ({now}, the rest copied before)",
            f"  logged models: {len(self.models)}",
        ]
        for name, versions in self.versions.items():
            pairs = ", ".join(f"{s}->{d}" for s, d in versions.items())
            aliases = ", ".join(f"{a}@{v}" for a, v in self.aliases.get(name, {}).items())
            lines.append(f"  model {name}: versions {pairs or '-'}; aliases {aliases or '-'}")
        return "\n".join(lines)


def migrate(source: str | None = None, target: str | None = None, echo=print) -> Migration:
    """Copy the project's experiment and registered models from a local store to a tracking
    server (see `copy_history`). The source is only read."""
    source = source or tracking.local_tracking_uri()
    target = (target or tracking.tracking_uri()).rstrip("/")
    if source.startswith("sqlite:///") and not Path(source.removeprefix("sqlite:///")).is_file():
        raise TrackingServerError(f"no local store at {source.removeprefix('sqlite:///')}")
    if not target.startswith(("http://", "https://")):
        raise TrackingServerError(
            f"the target must be a tracking server (http:// or https://), not {target}"
        )
    if problem := tracking.server_problem(target):
        raise TrackingServerError(problem)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one line per run
    from mlflow import MlflowClient

    src = MlflowClient(tracking_uri=source, registry_uri=source)
    dst = MlflowClient(tracking_uri=target, registry_uri=target)
    return copy_history(src, dst, echo)


def copy_history(src, dst, echo=print) -> Migration:
    """Copy the experiment (runs with their parameters, metric histories, tags, datasets and
    artifacts; logged models) and the registered models (versions, tags, aliases) from the
    `src` client's store to the `dst` client's, through MLflow's client API.

    A run or logged model is tagged with the one it came from only once all of it is copied, so
    running it again copies only what is new and finishes what a cut migration left partial
    (marked with PARTIAL_TAG); no copy is made twice. The source is only read.
    """
    from mlflow.exceptions import MlflowException

    done = Migration(src.tracking_uri, dst.tracking_uri, copying="the experiment")
    experiment = src.get_experiment_by_name(tracking.experiment_name())
    if experiment is None:
        raise TrackingServerError(f"no experiment {tracking.experiment_name()!r} in {done.source}")
    with tempfile.TemporaryDirectory(prefix="mlflow-migrate-") as folder:
        try:
            experiments = experiment.experiment_id, _target_experiment(dst, experiment)
            _copy_runs(src, dst, *experiments, Path(folder), done, echo)
            _copy_logged_models(src, dst, *experiments, Path(folder), done)
            _copy_registry(src, dst, done, echo)
        except (MlflowException, OSError) as error:  # OSError: files, connections
            raise TrackingServerError(
                f"the migration stopped while copying {done.copying}: {type(error).__name__}: "
                f"{error}\nWhat was copied is kept. Fix the cause and run it again: it finishes "
                "the cut copy and copies nothing twice."
            ) from error
    return done


def _target_experiment(dst, experiment) -> str:
    found = dst.get_experiment_by_name(experiment.name)
    if found is not None:
        return found.experiment_id
    # The server's default artifact root (its proxied store), not the local folder.
    return dst.create_experiment(experiment.name, tags=experiment.tags)


def _in_parent_order(runs: list) -> list:
    """Parents before their children, so a child's parent id can be mapped."""
    by_id = {run.info.run_id: run for run in runs}

    def depth(run) -> int:
        level, parent = 0, run.data.tags.get("mlflow.parentRunId")
        while parent in by_id and level < 100:
            level, parent = level + 1, by_id[parent].data.tags.get("mlflow.parentRunId")
        return level

    return sorted(runs, key=lambda run: (depth(run), run.info.start_time or 0))


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _copies(items, source_tag: str) -> tuple[dict[str, str], dict[str, str]]:
    """Source id -> target id of the whole copies among `items` (target id, tags, active), and of
    the active ones a cut migration left partial."""
    whole, partial = {}, {}
    for target_id, tags, active in items:
        if origin := tags.get(source_tag):
            whole[origin] = target_id
        elif active and (origin := tags.get(PARTIAL_TAG)):
            partial[origin] = target_id
    return whole, partial


def _copy_runs(src, dst, src_experiment: str, dst_experiment: str, scratch: Path, done, echo):
    from mlflow.entities import ViewType

    done.copying = "the runs"
    copies = dst.search_runs([dst_experiment], run_view_type=ViewType.ALL, max_results=50000)
    whole, partial = _copies(
        ((run.info.run_id, run.data.tags, run.info.lifecycle_stage == "active") for run in copies),
        SOURCE_RUN_TAG,
    )
    done.runs.update(whole)  # a copy the team deleted on the server stays deleted
    runs = src.search_runs([src_experiment], run_view_type=ViewType.ACTIVE_ONLY, max_results=50000)
    for run in _in_parent_order(runs):
        run_id = run.info.run_id
        if run_id in done.runs:
            continue
        name, finishing = run.info.run_name or run_id, run_id in partial
        done.copying = f"run {name}"
        new_id = partial[run_id] if finishing else _create_run_copy(dst, dst_experiment, run, done)
        _fill_run(src, dst, run, new_id, scratch / run_id)
        dst.set_tag(new_id, SOURCE_RUN_TAG, run_id)  # whole: from now on it counts as copied
        dst.delete_tag(new_id, PARTIAL_TAG)
        done.runs[run_id] = new_id
        done.copied_runs += 1
        done.finished_runs += int(finishing)
        echo(f"  run {name} -> {new_id}{' (finished a cut copy)' if finishing else ''}")


def _create_run_copy(dst, dst_experiment: str, run, done) -> str:
    tags = dict(run.data.tags)
    if parent := tags.get("mlflow.parentRunId"):
        tags["mlflow.parentRunId"] = done.runs.get(parent, parent)
    tags[PARTIAL_TAG] = run.info.run_id
    return dst.create_run(dst_experiment, start_time=run.info.start_time, tags=tags).info.run_id


def _fill_run(src, dst, run, new_id: str, scratch: Path) -> None:
    """Parameters, metric histories, datasets, artifacts and status: every step can be repeated
    on a partial copy without doubling anything (the store skips what it already holds)."""
    from mlflow.entities import Metric, Param

    run_id = run.info.run_id
    params = [Param(key, value) for key, value in run.data.params.items()]
    for chunk in _chunks(params, 100):
        dst.log_batch(new_id, params=chunk)
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in run.data.metrics
        for m in src.get_metric_history(run_id, key)
    ]
    for chunk in _chunks(metrics, 1000):
        dst.log_batch(new_id, metrics=chunk)
    if run.inputs and run.inputs.dataset_inputs:
        _log_inputs(dst, new_id, list(run.inputs.dataset_inputs))
    if src.list_artifacts(run_id):
        dst.log_artifacts(new_id, src.download_artifacts(run_id, "", str(scratch)))
    if run.info.status != "RUNNING":
        dst.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)


def _log_inputs(dst, run_id: str, datasets: list) -> None:
    """`log_inputs`, tried once more when a pipeline stored the same dataset at the same moment."""
    tracking.once_more_on_a_dataset_race(lambda: dst.log_inputs(run_id, datasets=datasets))


def _copy_logged_models(src, dst, src_experiment: str, dst_experiment: str, scratch: Path, done):
    done.copying = "the logged models"
    copies = dst.search_logged_models([dst_experiment], max_results=None)
    whole, partial = _copies(
        ((model.model_id, model.tags, True) for model in copies), SOURCE_MODEL_TAG
    )
    for model in src.search_logged_models([src_experiment], max_results=None):
        if model.model_id in whole:
            done.models[model.model_id] = whole[model.model_id]
            continue
        done.copying = f"logged model '{model.name}' ({model.model_id})"
        new_id = partial.get(model.model_id) or _create_model_copy(dst, dst_experiment, model, done)
        _fill_model(src, dst, model, new_id, done.runs.get(model.source_run_id), scratch)
        dst.set_logged_model_tags(new_id, {SOURCE_MODEL_TAG: model.model_id})  # whole
        dst.delete_logged_model_tag(new_id, PARTIAL_TAG)
        done.models[model.model_id] = new_id


def _create_model_copy(dst, dst_experiment: str, model, done) -> str:
    return dst.create_logged_model(
        dst_experiment, name=model.name, source_run_id=done.runs.get(model.source_run_id),
        tags={**model.tags, PARTIAL_TAG: model.model_id}, params=model.params,
        model_type=model.model_type,
    ).model_id  # fmt: skip


def _fill_model(src, dst, model, new_id: str, run_id: str | None, scratch: Path) -> None:
    """Artifacts, status and the link from its run; each step can be repeated on a partial copy."""
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import LoggedModelOutput

    local = download_artifacts(
        artifact_uri=model.artifact_location, dst_path=str(scratch / model.model_id),
        tracking_uri=src.tracking_uri,
    )  # fmt: skip
    dst.log_model_artifacts(new_id, local)
    dst.finalize_logged_model(new_id, model.status or "READY")
    # The store adds a link each time it is asked: only when a cut came before it was made.
    if run_id and new_id not in _output_models(dst, run_id):
        dst.log_outputs(run_id, models=[LoggedModelOutput(new_id, step=0)])


def _output_models(dst, run_id: str) -> set[str]:
    outputs = dst.get_run(run_id).outputs
    return {output.model_id for output in outputs.model_outputs} if outputs else set()


def _copy_registry(src, dst, done, echo):
    from mlflow.exceptions import MlflowException

    done.copying = "the registered models"
    for listed in src.search_registered_models(max_results=1000):
        name = listed.name
        registered = src.get_registered_model(name)  # with its aliases
        versions = sorted(
            src.search_model_versions(f"name='{name}'", max_results=10000),
            key=lambda v: int(v.version),
        )
        versions = [v for v in versions if v.run_id in done.runs or _model_id(v) in done.models]
        if not versions:
            continue
        try:
            dst.get_registered_model(name)
        except MlflowException:
            dst.create_registered_model(name, description=registered.description)
        copied = {
            v.tags[SOURCE_VERSION_TAG]: str(v.version)
            for v in dst.search_model_versions(f"name='{name}'", max_results=10000)
            if SOURCE_VERSION_TAG in v.tags
        }
        for version in versions:
            if str(version.version) in copied:
                continue
            done.copying = f"version {version.version} of model {name}"
            run_id = done.runs.get(version.run_id)
            model_id = done.models.get(_model_id(version))
            if model_id:
                source = f"models:/{model_id}"
            else:  # a model logged as run artifacts (MLflow 2): the same path in the copied run
                src_root = src.get_run(version.run_id).info.artifact_uri
                relative = version.source.removeprefix(src_root).lstrip("/")
                if version.source.startswith("runs:/"):
                    relative = version.source.split("/", 2)[-1]
                source = f"{dst.get_run(run_id).info.artifact_uri}/{relative}"
            # Tags naming a copied run (evaluation_run_id, ...) name its copy.
            tags = {key: done.runs.get(value, value) for key, value in version.tags.items()}
            # One request: the version and its tags are stored together, or not at all.
            tags[SOURCE_VERSION_TAG] = str(version.version)
            new = dst.create_model_version(
                name, source, run_id=run_id, tags=tags, description=version.description,
                model_id=model_id,
            )  # fmt: skip
            copied[str(version.version)] = str(new.version)
            echo(f"  model {name} version {version.version} -> {new.version}")
        done.versions[name] = dict(copied)
        done.copying = f"the tags and aliases of model {name}"
        for key, value in registered.tags.items():
            if key in (dst.get_registered_model(name).tags or {}):
                continue  # the server's own value wins
            if key == "champion_history":  # a list of version numbers: renumber them
                value = json.dumps([copied.get(str(v), str(v)) for v in json.loads(value)])
            dst.set_registered_model_tag(name, key, value)
        taken = dst.get_registered_model(name).aliases or {}
        for alias, version in (registered.aliases or {}).items():
            mine = copied.get(str(version))
            if alias in taken and str(taken[alias]) != mine:
                # The server's champion is the team's: a local history never takes it over.
                echo(f"  alias {alias} stays on version {taken[alias]} (the server's), not {mine}")
            elif mine:
                dst.set_registered_model_alias(name, alias, mine)
                done.aliases.setdefault(name, {})[alias] = mine


def _model_id(version) -> str | None:
    """The logged model a version was registered from (MLflow 3: source `models:/m-...`)."""
    if version.model_id:
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None
