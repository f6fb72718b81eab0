"""MLflow set-up shared by the runner, the notebooks and the serving commands."""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import mlflow
import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from .project import continued_from, project_root, settings

OWNER_HOST, OWNER_PID, OWNER_STARTED = "process.host", "process.pid", "process.started"
# What made a run: the runner tags its runs `pipeline` (and their notebooks `notebook`), a notebook
# opened in JupyterLab tags its own `interactive`, under one `interactive-session` run per kernel.
KIND = "kind"
INTERACTIVE, SESSION = "interactive", "interactive-session"
# Tells MLflow 3's UI this experiment is model training, not GenAI (its navigation follows it). The
# UI's own GenAI/ML switch follows the link instead (`workflowType`): `ui` prints one to the runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
KEY_PACKAGES = ("mlflow", "scikit-learn", "pandas", "numpy", "papermill", "nbdev", "skops")


def local_tracking_uri() -> str:
    """An absolute SQLite URI, so a notebook run from another folder finds the same store."""
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def once_more_on_a_dataset_race(log: Callable[[], object]) -> None:
    """Log dataset inputs, trying once more if another run stored the same dataset meanwhile.

    The tracking store looks a dataset up, then inserts it: two pipelines logging the same rows
    at the same moment (a team on one server) can both miss it, and the later insert fails on the
    unique key. By then the other run's row is committed, so the second try finds and links it.
    """
    try:
        log()
    except MlflowException as error:
        if "INSERT INTO datasets" not in str(error):
            raise
        log()


def experiment_name() -> str:
    return settings().name


def model_name() -> str:
    """The project's registered model."""
    return settings().model_name


ENV_FILE = ".env"  # the team server's settings (see .env.example); git ignores it
# How long a client keeps retrying a server that does not answer: MLflow's own defaults (7 retries,
# backoff factor 2, 120 s timeout) make a stopped server look like a hung pipeline for minutes.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def read_env_file(path: Path | None = None) -> dict[str, str]:
    """KEY=VALUE lines of .env (comments, blank lines and `export ` allowed; quotes stripped)."""
    path = path or project_root() / ENV_FILE
    values = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip().removeprefix("export ").strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key] = value
    return values


def load_settings() -> None:
    """.env and the client defaults, beneath whatever the environment already sets."""
    for key, value in {**CLIENT_DEFAULTS, **read_env_file()}.items():
        if value:
            os.environ.setdefault(key, value)


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the team server a `server` project names, else the local store."""
    project = settings()
    if project.tracking == "server":
        load_settings()
    return os.environ.get("MLFLOW_TRACKING_URI") or project.tracking_uri or local_tracking_uri()


def _how_to_start() -> str:
    if settings().tracking == "server":
        return "(`make tracking-start`, or `docker compose up -d` where it runs in Docker), "
    return ""


def server_problem(uri: str | None = None, timeout: float = 5.0) -> str | None:
    """Why the tracking server cannot be used (down, refusing the credentials), or None.

    One quick request each to /health and to the API, without MLflow's retries, so the pipeline can
    say so before it starts and tell a lost server from a failing notebook. Stores that are not
    servers (SQLite) always answer None.
    """
    uri = (uri or tracking_uri()).rstrip("/")
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return None
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            response.read()
    except (OSError, ValueError) as error:  # refused, unreachable, timed out, HTTP 5xx
        reason = getattr(error, "reason", None) or error
        return (
            f"the MLflow tracking server at {uri} does not answer ({reason}). Start it "
            f"{_how_to_start()}or point MLFLOW_TRACKING_URI at one that runs."
        )
    query = urllib.parse.urlencode({"max_results": 1})
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?{query}")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            json.load(response)
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            who = f"user {user!r}" if user else "no credentials"
            return (
                f"the MLflow tracking server at {uri} refused the request ({error.code}, {who}): "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (in the environment or "
                ".env) to a user of the server."
            )
        return f"the MLflow tracking server at {uri} answered {error.code} {error.reason}."
    except (OSError, ValueError) as error:
        return f"the MLflow tracking server at {uri} does not answer its API ({error})."
    return None


def configure() -> str:
    """Point MLflow at the project's store and experiment; returns the experiment id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # kernels started from here inherit it
    experiment = mlflow.get_experiment_by_name(experiment_name())
    if experiment is not None:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag was set on creation
            MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    elif uri.startswith("sqlite:"):
        # Artifacts next to the store, whatever the working directory is.
        location = (project_root() / "mlruns").as_uri()
        experiment_id = _create_experiment(location)
    else:
        experiment_id = _create_experiment(None)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _create_experiment(location: str | None) -> str:
    """Create the experiment; if a run started at the same time created it first, use that one."""
    try:
        return mlflow.create_experiment(
            experiment_name(),
            artifact_location=location,
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    except MlflowException:
        experiment = mlflow.get_experiment_by_name(experiment_name())
        if experiment is None:
            raise
        return experiment.experiment_id


def client() -> MlflowClient:
    configure()
    return MlflowClient()


def start_phase_run(phase: str) -> mlflow.ActiveRun:
    """The MLflow run a notebook logs to.

    Under the pipeline the runner made this notebook's run (a child of the pipeline's run) and passes
    its id in MLFLOW_RUN_ID. Opened in JupyterLab, the notebook gets a run of its own, tagged
    `kind=interactive` and named `<phase> (interactive)`, under its kernel's session run.
    """
    experiment_id = configure()
    # Taken out of the environment: MLflow would otherwise resume this run for every nested run.
    if run_id := os.environ.pop("MLFLOW_RUN_ID", None):
        return mlflow.start_run(run_id=run_id)
    while mlflow.active_run():  # an earlier try of a notebook in this kernel stopped before its end
        mlflow.end_run("FAILED")
    tags = {**git_tags(), **owner_tags(), KIND: INTERACTIVE, "notebook": f"{phase}.ipynb"}
    if base := continued_from():  # the pipeline run whose outputs it reads
        tags["continues_from"] = str(base)
    return mlflow.start_run(
        run_name=f"{phase} (interactive)", parent_run_id=session_run(experiment_id), tags=tags
    )


def session_run(experiment_id: str) -> str:
    """The run grouping every notebook run of this kernel (this process): found by the owner tags
    it shares with the process, else made, and ended when the kernel exits. A kernel that is killed
    cannot end it: `doctor` (or the next pipeline) marks it KILLED, as any run of a dead process."""
    client = MlflowClient()
    owner = owner_tags()
    query = f"tags.{KIND} = '{SESSION}' and tags.`{OWNER_PID}` = '{owner[OWNER_PID]}'"
    for run in client.search_runs([experiment_id], f"{query} and attributes.status = 'RUNNING'"):
        if all(run.data.tags.get(key) == value for key, value in owner.items()):
            return run.info.run_id
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_id = client.create_run(
        experiment_id,
        tags={**owner, KIND: SESSION, MLFLOW_RUN_NAME: f"{SESSION}-{stamp}"},
    ).info.run_id
    atexit.register(_end_session, run_id, mlflow.get_tracking_uri())
    return run_id


def _end_session(run_id: str, uri: str) -> None:
    with contextlib.suppress(Exception):  # the store may be gone by then: doctor marks it later
        MlflowClient(uri).set_terminated(run_id, "FINISHED")


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """The process a run belongs to (host, pid, start time): a run left RUNNING by a process that
    is gone was killed, and `doctor` (or the next pipeline) marks it so (see recovery.py)."""
    process = psutil.Process(pid)
    return {
        OWNER_HOST: socket.gethostname(),
        OWNER_PID: str(process.pid),
        OWNER_STARTED: f"{process.create_time():.2f}",  # tells a reused pid from the owner
    }


def git_tags() -> dict[str, str]:
    """The commit the code came from, and whether uncommitted changes were in play."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=project_root(), capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain")) if commit else False
    except FileNotFoundError:  # git is not installed
        commit, dirty = "", False
    return {"git_commit": commit or "unknown", "git_dirty": str(dirty).lower()}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment_lines() -> str:
    """Every installed distribution with its version, as a requirements-style listing."""
    dists = sorted({(d.metadata["Name"], d.version) for d in metadata.distributions()})
    return "\n".join(f"{name}=={version}" for name, version in dists) + "\n"


def artifact_root() -> Path:
    return project_root() / "mlruns"
