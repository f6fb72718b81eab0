"""The team's tracking server, for real: a generated `tracking=server` project against `mlflow
server` on a real PostgreSQL, with artifacts proxied by the server.

PostgreSQL runs from Debian's packages in a throwaway cluster (a temporary data folder, a free
loopback port), one per session; each server gets a database of its own. The project's own
`tracking-server start|stop` runs the main server. Checked through the server: two pipelines at
the same time (run trees, registry, aliases; the serving bundle exported from it), the server
stopped in the middle of a run (a clear failure, then a re-run that succeeds), basic auth
(no credentials, no access), the move of a local SQLite history onto a server (cut midway, then
finished), and the compose file (validated; brought up when an engine and docker-compose answer).
Without PostgreSQL binaries these tests are skipped, loudly; .ci/run installs them.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("team")]

PROJECT = {"task": "classification", "tracking": "server", "project_name": "Team Server"}
# A smoke run that never builds an image (that is test_image.py's job).
SMOKE = ("pipeline", "--smoke", "--set", "deployment.build_image=false")
WAIT = 180.0  # the longest any server may take to answer (a first start migrates its schema)
ADMIN = ("admin", "Adm1n-pass%word")


def banner(message: str) -> None:
    print(f"\n{'!' * 80}\n{message}\n{'!' * 80}")


def postgres_bindir() -> Path | None:
    """Debian's versioned folder (the newest), or wherever initdb is on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class Postgres:
    bindir: Path
    port: int
    user: str = "mlflow"

    def create_database(self, name: str) -> str:
        subprocess.run(
            [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return name

    def env(self, database: str) -> dict[str, str]:
        """The settings `tracking-server start` and serve.py read (trust auth: no password)."""
        return {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(self.port),
                "POSTGRES_USER": self.user, "POSTGRES_DB": database}  # fmt: skip


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster of its own: temporary data folder, loopback only, a free port."""
    bindir = postgres_bindir()
    if bindir is None:
        message = (
            "NO POSTGRESQL (initdb not found): tracking server tests SKIPPED. .ci/run installs it."
        )
        banner(message)
        pytest.skip(message)
    as_postgres: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="slow-postgres-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user owns the cluster
        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust",
         "-E", "UTF8", "--no-locale"],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c max_connections=200"
    started = time.monotonic()
    subprocess.run(
        [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
         "-w", "-t", "60", "-o", options, "start"],
        check=True, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    print(
        f"\nPostgreSQL {bindir.parent.name} on 127.0.0.1:{port} in {time.monotonic() - started:.1f} s"
    )
    try:
        yield Postgres(bindir, port)
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True, timeout=90, check=False,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def wait_until_answers(
    url: str, process: subprocess.Popen | None = None, timeout: float = WAIT
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return time.monotonic() - started
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"no answer from {url} within {timeout:.0f} s")


@dataclass
class Server:
    url: str
    settings: dict[str, str]

    def client_env(self, **extra: str) -> dict[str, str]:
        return {**self.settings, "MLFLOW_TRACKING_URI": self.url, **extra}


@pytest.fixture(scope="module")
def team_project(project_factory):
    return project_factory(**PROJECT)


def test_server_project_passes_its_own_check_and_tests(team_project):
    """The files `tracking=server` adds (compose helpers, serve.py) are held to the project's own
    gates, and its tests pass (the settings' own tests are the runtime's, in the fast lane)."""
    done = team_project.cli("check")
    assert done.stdout.count("ok  ") == 6 and "FAIL" not in done.stdout, done.stdout
    team_project.cli("test", "-q")


@pytest.fixture(scope="module")
def server(team_project, postgres, tmp_path_factory):
    """The main server, started and stopped with the project's own commands (no Docker)."""
    port = free_port()
    settings = {
        **postgres.env(postgres.create_database("team")),
        "MLFLOW_PORT": str(port),
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path_factory.mktemp("artifacts")),
    }
    started = time.monotonic()
    done = team_project.cli("tracking-server", "start", env=settings, timeout=WAIT + 30)
    print(f"\n{done.stdout.strip()} ({time.monotonic() - started:.1f} s)")
    the_server = Server(f"http://127.0.0.1:{port}", settings)
    try:
        yield the_server
    finally:
        team_project.cli("tracking-server", "stop", env=settings, check=False, timeout=60)


def query(project, server: Server, code: str, **env: str):
    """Python in the project's venv, against the server; `client` is an MlflowClient, and the
    project's experiment and registered model names are `EXPERIMENT_NAME` and `MODEL_NAME`."""
    prelude = """
        import json, mlflow
        from crisp_ml.tracking import configure, experiment_name, model_name
        experiment_id = configure()
        EXPERIMENT_NAME, MODEL_NAME = experiment_name(), model_name()
        client = mlflow.MlflowClient()
    """
    return project.python_json(
        textwrap.dedent(prelude) + textwrap.dedent(code), env=server.client_env(**env)
    )


RUN_TREES = """
    parents = [r for r in client.search_runs([experiment_id], "tags.kind = 'pipeline'", max_results=100)]
    trees = {}
    for parent in parents:
        children = client.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=100
        )
        trees[parent.info.run_id] = {
            "status": parent.info.status,
            "run_dir": parent.data.tags.get("run_dir"),
            "artifacts": sorted(a.path for a in client.list_artifacts(parent.info.run_id)),
            "children": {
                c.data.tags["mlflow.runName"]: {
                    "status": c.info.status,
                    "notebook": [a.path for a in client.list_artifacts(c.info.run_id, "notebook")],
                    "nested": len(client.search_runs(
                        [experiment_id], f"tags.mlflow.parentRunId = '{c.info.run_id}'"
                    )),
                }
                for c in children
            },
        }
    print(json.dumps(trees))
"""


@pytest.fixture(scope="module")
def two_runs(team_project, server):
    """Two smoke pipelines started at the same moment against the server; both must finish."""
    started = time.monotonic()
    with contextlib.ExitStack() as files:  # closed even when a pipeline outlives its wait

        def log_file():
            return files.enter_context(tempfile.TemporaryFile("w+"))

        logs = [(log_file(), log_file()) for _pipeline in range(2)]  # (stdout, stderr) of each
        processes = [
            subprocess.Popen(
                [str(team_project.root / ".venv" / "bin" / team_project.slug), *SMOKE],
                cwd=team_project.root,
                env=team_project.env(server.client_env()),
                stdout=out,
                stderr=err,
                text=True,
            )
            for out, err in logs
        ]
        outputs = []
        for process, (out, err) in zip(processes, logs, strict=True):
            process.wait(timeout=900)
            out.seek(0), err.seek(0)
            outputs.append((out.read(), err.read()))
    print(f"\ntwo concurrent smoke pipelines: {time.monotonic() - started:.1f} s")
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, f"stdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}"
    return [out for out, _ in outputs]


def test_two_pipelines_at_once_both_land_whole_and_apart(team_project, server, two_runs):
    trees = query(team_project, server, RUN_TREES)
    assert len(trees) == 2, "both pipeline runs are on the server"
    notebooks = sorted(p.stem for p in (team_project.root / "notebooks").glob("0[1-5]_*.ipynb"))
    run_dirs = set()
    for run_id, tree in trees.items():
        assert tree["status"] == "FINISHED"
        assert {"params.yaml", "environment.txt"} <= set(tree["artifacts"])
        assert sorted(tree["children"]) == notebooks, "each run has its own notebooks, no other's"
        for name, child in tree["children"].items():
            assert child["status"] == "FINISHED", name
            assert child["notebook"] == [f"notebook/{name}.html", f"notebook/{name}.ipynb"], (
                "artifacts proxied and read back"
            )
        assert tree["children"]["03_modelling"]["nested"] == 4, "baseline and three candidates"
        assert run_id[:8] in tree["run_dir"]
        run_dirs.add(tree["run_dir"])
    assert len(run_dirs) == 2
    reported = [[run_id for run_id in trees if run_id in out] for out in two_runs]
    assert sorted(r for found in reported for r in found) == sorted(trees), (
        "each reports its own run"
    )


# Runs that log the same new rows at the same moment, a few rounds of them: MLflow's store looks a
# dataset up and then inserts it, so on PostgreSQL about half of such plain `mlflow.log_input`
# calls fail on the unique key (46 of 80 measured); the runtime's `log_dataset_input` must link all.
SAME_DATA_AT_ONCE = """
    import threading
    import numpy as np, pandas as pd
    from crisp_ml.data import log_dataset_input

    race_experiment = mlflow.create_experiment("same-data-at-once")
    failures, runs = [], []
    for round_ in range(8):
        frame = pd.DataFrame({"x": np.arange(50.0) + round_, "y": np.arange(50.0)})
        dataset = mlflow.data.from_pandas(frame, name="train")  # new rows, a new digest
        barrier = threading.Barrier(4)

        def log_at_once():
            with mlflow.start_run(experiment_id=race_experiment) as run:
                runs.append(run.info.run_id)
                barrier.wait()
                try:
                    log_dataset_input(dataset, "training")
                except Exception as error:
                    failures.append(str(error)[:300])

        threads = [threading.Thread(target=log_at_once) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    linked = [len(client.get_run(run_id).inputs.dataset_inputs) for run_id in runs]
    print(json.dumps({"failures": failures, "linked": linked}))
"""


def test_runs_logging_the_same_data_at_once_all_link_it(team_project, server):
    result = query(team_project, server, SAME_DATA_AT_ONCE)
    assert result["failures"] == [], result["failures"][0]
    assert result["linked"] == [1] * 32, "every run has its dataset input"


def test_registry_and_aliases_read_back_through_the_server(team_project, server, two_runs):
    registry = query(
        team_project, server,
        """
        versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
        model = client.get_registered_model(MODEL_NAME)
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
        print(json.dumps({
            "versions": {v.version: v.tags.get("pipeline_run_id") for v in versions},
            "sources": [v.source for v in versions],
            "aliases": model.aliases,
            "champion": champion.version,
            "loaded": type(loaded).__name__,
        }))
        """,
    )  # fmt: skip
    pipelines = set(query(team_project, server, RUN_TREES))
    assert len(registry["versions"]) == 2, "each run registered its own version, none lost"
    assert set(registry["versions"].values()) == pipelines, "each version names its own run"
    assert all(source.startswith("models:/m-") for source in registry["sources"])
    assert registry["aliases"]["champion"] == registry["champion"]
    assert str(registry["champion"]) in {str(v) for v in registry["versions"]}
    assert registry["loaded"] == "PyFuncModel", "the champion loads from the server's artifacts"
    # The serving bundle (what `make serve` and `make image` start from) comes through the server.
    done = team_project.cli("image", "--no-build", env=server.client_env())
    assert "Staged" in done.stdout
    assert (team_project.root / "build" / "image" / "bundle").is_dir()


def test_server_stopped_mid_run_fails_clearly_and_a_rerun_succeeds(team_project, server, two_runs):
    before = set((team_project.root / "runs").glob("*"))
    # Cut while 02 runs; 03 keeps the run going for seconds after that, since a warm kernel takes
    # 02 through in a few seconds, sooner than `tracking-server stop` stops the server.
    command = [str(team_project.root / ".venv" / "bin" / team_project.slug), *SMOKE,
               "--only", "01", "02", "03"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=team_project.root, env=team_project.env(server.client_env()),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any(
            (d / "02_data_preparation.ipynb").exists()
            for d in set(team_project.root.glob("runs/*")) - before
        ):
            assert process.poll() is None and time.monotonic() < deadline, "02 never started"
            time.sleep(0.2)
        team_project.cli("tracking-server", "stop", env=server.settings, timeout=60)
        stopped = time.monotonic()
        out, err = process.communicate(timeout=180)
        took = time.monotonic() - stopped
    finally:
        if process.poll() is None:
            process.kill()
    print(f"\nthe pipeline failed {took:.1f} s after the server stopped")
    assert process.returncode == 1, f"stdout:\n{out}\nstderr:\n{err}"
    assert "The pipeline stopped: the MLflow tracking server at" in err
    assert f"{server.url} does not answer" in err
    assert "show as RUNNING there until a later pipeline, or `doctor`, marks them." in err
    assert "Run the pipeline again once the server answers." in err
    assert "Traceback" not in err
    assert took < 120, "MLflow's retries are bounded"

    team_project.cli("tracking-server", "start", env=server.settings, timeout=WAIT + 30)
    assert team_project.cli("tracking-server", "status", env=server.settings).returncode == 0
    done = team_project.cli(*command[1:], env=server.client_env())
    assert "Pipeline finished" in done.stdout
    statuses = query(
        team_project, server,
        """
        runs = client.search_runs([experiment_id], "tags.kind = 'pipeline'", max_results=100,
                                  order_by=["attributes.start_time DESC"])
        print(json.dumps([r.info.status for r in runs[:2]]))
        """,
    )  # fmt: skip
    assert statuses == ["FINISHED", "KILLED"], (
        "the re-run finished, and first marked the cut run, whose process is gone"
    )


def test_a_stopped_server_stops_the_pipeline_before_anything_runs(team_project, postgres):
    url = f"http://127.0.0.1:{free_port()}"
    done = team_project.cli(*SMOKE, env={"MLFLOW_TRACKING_URI": url}, check=False, timeout=60)
    assert done.returncode == 1
    assert f"Nothing was run: the MLflow tracking server at {url} does not answer" in done.stderr
    assert "[1/" not in done.stdout


@pytest.fixture(scope="module")
def auth_server(team_project, postgres, tmp_path_factory):
    """A second server with MLflow's basic-auth app on, run by serve.py as compose runs it."""
    port = free_port()
    settings = {
        **postgres.env(postgres.create_database("team_auth")),
        "MLFLOW_PORT": str(port), "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path_factory.mktemp("auth-artifacts")),
        "MLFLOW_AUTH": "true", "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
    }  # fmt: skip
    log = open(tmp_path_factory.mktemp("auth-log") / "server.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [str(team_project.python), str(team_project.root / "tracking-server" / "serve.py")],
        env=team_project.env(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"\nbasic-auth server answered in {wait_until_answers(url, process):.1f} s")
        yield Server(url, settings)
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)
        log.close()
        # serve.py's auth config (it holds the database URI): one per port, removed with the server.
        Path(tempfile.gettempdir(), f"mlflow-basic-auth-{os.getuid()}-{port}.ini").unlink(
            missing_ok=True
        )


def api(url: str, credentials: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=5")
    if credentials:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_with_auth_on_requests_without_credentials_are_refused(team_project, auth_server):
    assert api(auth_server.url) == 401
    assert api(auth_server.url, (ADMIN[0], "wrong")) == 401
    assert api(auth_server.url, ADMIN) == 200
    done = team_project.cli(
        *SMOKE, env={"MLFLOW_TRACKING_URI": auth_server.url}, check=False, timeout=60
    )
    assert done.returncode == 1
    assert "refused the request (401, no credentials)" in done.stderr
    assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in done.stderr


REGISTER_LATEST_AS_CHAMPION = """
    import json, mlflow
    from crisp_ml.tracking import configure, model_name
    experiment_id = configure()
    MODEL_NAME = model_name()
    client = mlflow.MlflowClient()
    models = client.search_logged_models([experiment_id], max_results=1,
                                         order_by=[{"field_name": "creation_time", "ascending": False}])
    version = mlflow.register_model(models[0].model_uri, MODEL_NAME).version
    client.set_registered_model_alias(MODEL_NAME, "champion", version)
    print(json.dumps(version))
"""

# Everything a migration carries over, ids replaced by names; each thing listed as often as the
# store holds it (deleted runs too), so a copy made twice, or left partial, shows.
HISTORY = """
    import json, mlflow, pathlib, tempfile
    from mlflow.entities import ViewType
    from crisp_ml.tracking import experiment_name, model_name
    EXPERIMENT_NAME, MODEL_NAME = experiment_name(), model_name()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    models = client.search_logged_models([experiment.experiment_id])
    names = {r.info.run_id: r.data.tags.get("mlflow.runName") for r in runs}
    names.update({m.model_id: m.name for m in models})
    def shown(tags):
        return sorted((k, names.get(v, v)) for k, v in tags.items() if not k.startswith("migration."))
    def artifacts(list_artifacts, path=None):
        out = []
        for item in list_artifacts(path):
            out += artifacts(list_artifacts, item.path) if item.is_dir else [item.path]
        return out
    def metrics(run):
        return sorted((m.key, m.step, m.timestamp, m.value)
                      for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key))
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    print(json.dumps({
        "runs": sorted([names[r.info.run_id], r.info.status, r.info.lifecycle_stage, r.info.start_time,
                        shown(r.data.tags), sorted(r.data.params.items()), metrics(r),
                        sorted([d.dataset.name, d.dataset.digest, shown({t.key: t.value for t in d.tags})]
                               for d in r.inputs.dataset_inputs),
                        sorted(names.get(o.model_id, "?") for o in r.outputs.model_outputs),
                        sorted(artifacts(lambda path: client.list_artifacts(r.info.run_id, path)))]
                       for r in runs),
        "logged_models": sorted([m.name, str(m.status), names.get(m.source_run_id), shown(m.tags),
                                 sorted(m.params.items()),
                                 sorted(artifacts(lambda path: client.list_logged_model_artifacts(m.model_id, path)))]
                                for m in models),
        "versions": sorted([str(v.version), names.get(v.run_id),  # a number here, a string there
                            names.get(v.model_id or v.source.removeprefix("models:/")), shown(v.tags)]
                           for v in versions),
        "aliases": {a: str(v) for a, v in client.get_registered_model(MODEL_NAME).aliases.items()},
        "champion_run": names[champion.run_id],
        "model_files": sorted(p.name for p in pathlib.Path(mlflow.artifacts.download_artifacts(
            f"models:/{MODEL_NAME}@champion", dst_path=tempfile.mkdtemp())).iterdir()),
    }, default=str))
"""

# Where the local store keeps the files of a run and of the champion's logged model.
LOCAL_FOLDERS = """
    import json, mlflow
    from crisp_ml.tracking import configure, model_name
    experiment_id = configure()
    client = mlflow.MlflowClient()
    run = client.search_runs([experiment_id], "tags.mlflow.runName = '{run_name}'")[0]
    champion = client.get_model_version_by_alias(model_name(), "champion")
    model = client.get_logged_model(champion.model_id or champion.source.removeprefix("models:/"))
    print(json.dumps({{"run": run.info.artifact_uri, "model": model.artifact_location}}))
"""


@pytest.fixture(scope="module")
def local_history(team_project):
    """The project's local SQLite store after a smoke run of 01-03, its latest model registered as
    champion; returns the environment that points the project at it."""
    local = {"MLFLOW_TRACKING_URI": f"sqlite:///{team_project.root / 'mlflow.db'}"}
    team_project.cli(*SMOKE, "--only", "01", "02", "03", env=local)
    team_project.python_json(textwrap.dedent(REGISTER_LATEST_AS_CHAMPION), env=local)
    return local


@contextlib.contextmanager
def missing_file_in(folder_uri: str):
    """A file of the local store that cannot be read (a link to nothing), until the block ends."""
    planted = Path(folder_uri.removeprefix("file://")) / "cut-here.txt"
    planted.symlink_to("/nonexistent/file")
    try:
        yield
    finally:
        planted.unlink()


def test_local_sqlite_history_moves_to_the_server_and_a_cut_move_is_finished(
    team_project, auth_server, local_history
):
    """`tracking-server migrate`: a local store's run tree, logged models, versions and aliases,
    read back from the server (one with auth on, so the copy goes through the credentials).
    A file of the source that cannot be read cuts the move twice, inside a run and then inside
    the champion's logged model: each time the command fails naming what it was copying; run
    again once the file is fixed, it finishes each partial copy and copies nothing twice."""
    history = textwrap.dedent(HISTORY)
    before = team_project.python_json(history, env=local_history)
    folders = LOCAL_FOLDERS.format(run_name="02_data_preparation")
    folders = team_project.python_json(textwrap.dedent(folders), env=local_history)
    creds = {"MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1]}
    env = {**local_history, **creds, "MLFLOW_TRACKING_URI": auth_server.url}

    def migrate(check: bool = True):
        started = time.monotonic()
        done = team_project.cli("tracking-server", "migrate", env=env, check=check)
        print(f"\nmigrate ({time.monotonic() - started:.1f} s):\n{done.stdout}{done.stderr[-600:]}")
        return done

    with missing_file_in(folders["model"]):
        with missing_file_in(folders["run"]):
            cut = migrate(check=False)
        assert cut.returncode == 1
        assert "the migration stopped while copying run 02_data_preparation" in cut.stderr
        assert "run it again: it finishes the cut copy and copies nothing twice" in cut.stderr
        cut = migrate(check=False)
        assert cut.returncode == 1
        assert "(finished a cut copy)" in cut.stdout
        assert "the migration stopped while copying logged model" in cut.stderr
    done = migrate()
    assert "(0 copied now" in done.stdout and "aliases champion@1" in done.stdout
    after = team_project.python_json(history, env=auth_server.client_env(**creds))
    assert before["runs"] and after == before, "each run, model and version once, whole"
    again = migrate()
    assert "(0 copied now" in again.stdout, "a second migration copies nothing twice"
    assert "version 1 ->" not in again.stdout and "aliases champion@1" in again.stdout


# ---------------------------------------------------------------- the compose file


def compose_tool() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        if subprocess.run([*command, "version"], capture_output=True, check=False).returncode == 0:
            return command
    return None


def test_compose_file_is_valid_and_wired_as_documented(team_project):
    root = team_project.root
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    assert set(compose["services"]) == {"db", "mlflow"}
    assert set(compose["volumes"]) == {"db-data", "artifacts"}
    db, mlflow = compose["services"]["db"], compose["services"]["mlflow"]
    for service in (db, mlflow):
        build = service["build"]
        assert (root / build["context"] / build["dockerfile"]).is_file()
        assert "BASE_IMAGE" in build["args"]
        dockerfile = (root / build["context"] / build["dockerfile"]).read_text()
        assert "ARG BASE_IMAGE=" in dockerfile and "--mount" not in dockerfile  # legacy builder
    assert db["volumes"] == ["db-data:/var/lib/postgresql/data"] and "ports" not in db
    assert mlflow["volumes"] == ["artifacts:/mlflow/artifacts"]
    assert mlflow["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert mlflow["ports"] == ["${MLFLOW_BIND:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000"]
    assert "--serve-artifacts" in (root / "tracking-server" / "serve.py").read_text()
    example = (root / ".env.example").read_text()
    assert all(
        f"{key}=" in example for key in ("POSTGRES_PASSWORD", "MLFLOW_AUTH", "MLFLOW_TRACKING_URI")
    )
    assert ".env" in (root / ".gitignore").read_text().splitlines()
    tool = compose_tool()
    if tool is None:
        banner(
            "NO COMPOSE TOOL (docker compose / docker-compose): compose.yaml checked as YAML only"
        )
        return
    done = subprocess.run(
        [*tool, "config", "-q"], cwd=root, env={**os.environ, "POSTGRES_PASSWORD": "x"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    missing = subprocess.run(
        [*tool, "config", "-q"], cwd=root, env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD in .env" in missing.stderr


def test_compose_stack_comes_up_and_keeps_runs_and_artifacts(team_project, docker_base_image):
    """Built from BASE_IMAGE and brought up as a user would (`up -d --build`); a run with an
    artifact goes in through the published port, lands in PostgreSQL and the artifacts volume, and
    comes back; then containers, volumes and images are removed."""
    tool = compose_tool()
    if tool is None:
        message = "NO COMPOSE TOOL (docker compose or docker-compose): compose stack NOT brought up. .ci/run installs docker-compose."
        banner(message)
        pytest.skip(message)
    port = free_port()
    name = f"slowlane{os.getpid()}"
    env = {**os.environ, "BASE_IMAGE": docker_base_image, "POSTGRES_PASSWORD": "s3cret p@ss:/%",
           "MLFLOW_PORT": str(port), "COMPOSE_PROJECT_NAME": name}  # fmt: skip

    def compose(*args: str, timeout: float = 120, check: bool = True):
        done = subprocess.run(
            [*tool, *args], cwd=team_project.root, env=env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            logs = subprocess.run([*tool, "logs", "--tail", "40"], cwd=team_project.root, env=env,
                                  capture_output=True, text=True, check=False).stdout  # fmt: skip
            pytest.fail(
                f"`compose {' '.join(args)}` exited {done.returncode}:\n{done.stderr[-3000:]}\n{logs[-4000:]}"
            )
        return done

    started = time.monotonic()
    try:
        compose("up", "-d", "--build", timeout=1500)
        built = time.monotonic() - started
        answered = wait_until_answers(f"http://127.0.0.1:{port}", timeout=240)
        print(f"\ncompose: built and started in {built:.0f} s, answered {answered:.0f} s later")
        url = f"http://127.0.0.1:{port}"
        code = """
            import json, mlflow, tempfile, pathlib
            client = mlflow.MlflowClient()
            experiment = client.create_experiment("compose-check")
            run = client.create_run(experiment)
            client.log_param(run.info.run_id, "where", "compose")
            folder = pathlib.Path(tempfile.mkdtemp())
            (folder / "hello.txt").write_text("kept in the artifacts volume")
            client.log_artifact(run.info.run_id, str(folder / "hello.txt"))
            client.set_terminated(run.info.run_id)
            back = client.download_artifacts(run.info.run_id, "hello.txt")
            print(json.dumps({"run": run.info.run_id, "text": pathlib.Path(back).read_text(),
                              "location": client.get_experiment(experiment).artifact_location}))
        """
        first = team_project.python_json(code, env={"MLFLOW_TRACKING_URI": url})
        assert first["text"] == "kept in the artifacts volume"
        assert first["location"].startswith("mlflow-artifacts:"), "artifacts proxied by the server"
        stored = compose("exec", "-T", "mlflow", "find", "/mlflow/artifacts", "-name", "hello.txt")
        assert f"/{first['run']}/artifacts/hello.txt" in stored.stdout, "in the artifacts volume"
        query_runs = "psql -U mlflow -d mlflow -tAc 'SELECT run_uuid FROM runs'"
        rows = compose("exec", "-T", "db", "sh", "-c", query_runs)
        assert rows.stdout.split() == [first["run"]], "the run is in PostgreSQL"
    finally:
        compose("down", "-v", "--rmi", "all", timeout=300, check=False)
