"""The team server's settings: .env beneath the environment, the database URI, auth, a dead server;
and the migration of a local history, cut at every step and finished by the next one."""

import hashlib
import importlib.machinery
import importlib.util
import shutil
import socket
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, ViewType
from mlflow.exceptions import RestException

from crisp_ml import project, tracking, tracking_server

# In the template, its name holds the condition that keeps it out of projects without a server.
SERVE_SCRIPT = next(
    (
        Path(__file__).resolve().parents[2] / "{{cookiecutter.project_slug}}" / "tracking-server"
    ).glob("*serve.py*")
)


@pytest.fixture(autouse=True)
def server_project(isolated_project):
    """A project generated with tracking=server."""
    settings = isolated_project / "pyproject.toml"
    server = 'tracking = "server"\ntracking_uri = "http://127.0.0.1:5000"'
    settings.write_text(settings.read_text().replace('tracking = "local"', server))
    project._settings_of.cache_clear()
    return isolated_project


def load_serve():
    """tracking-server/serve.py, which lives in the project (and the template), not the runtime."""
    loader = importlib.machinery.SourceFileLoader("serve", str(SERVE_SCRIPT))
    spec = importlib.util.spec_from_loader("serve", loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_env_file_is_read_beneath_the_environment(isolated_project, monkeypatch):
    (isolated_project / ".env").write_text(
        "# comment\nexport POSTGRES_DB=team\nPOSTGRES_PASSWORD='p w'\nMLFLOW_PORT=6000\nEMPTY=\n"
    )
    monkeypatch.setenv("MLFLOW_PORT", "7000")
    monkeypatch.delenv("POSTGRES_DB", raising=False)
    values = tracking.read_env_file()
    assert values == {
        "POSTGRES_DB": "team",
        "POSTGRES_PASSWORD": "p w",
        "MLFLOW_PORT": "6000",
        "EMPTY": "",
    }
    settings = tracking_server.settings()
    assert settings["MLFLOW_PORT"] == "7000", "the environment wins"
    assert settings["POSTGRES_DB"] == "team"
    assert tracking_server.server_url(settings) == "http://127.0.0.1:7000"


def test_database_uri_quotes_any_password():
    serve = load_serve()
    env = {"POSTGRES_USER": "ml flow", "POSTGRES_PASSWORD": "p@ss:/%w", "POSTGRES_HOST": "db"}
    assert serve.backend_store_uri(env) == "postgresql://ml%20flow:p%40ss%3A%2F%25w@db:5432/mlflow"
    assert "%%" in serve.auth_config(env, serve.backend_store_uri(env)), "configparser-safe"
    command = serve.server_command({**env, "MLFLOW_AUTH": "true"})
    assert "--serve-artifacts" in command
    assert command[-2:] == ["--app-name", "basic-auth"]
    assert "--app-name" not in serve.server_command(env)


def test_a_server_that_does_not_answer_is_named():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    problem = tracking.server_problem(f"http://127.0.0.1:{port}", timeout=2)
    assert problem and f"127.0.0.1:{port} does not answer" in problem
    assert tracking.server_problem("sqlite:///somewhere.db") is None


# ---------------------------------------------------------------- migrate, cut and finished


def store(uri: str) -> MlflowClient:
    """A client of the store at `uri`, made the global one too: MLflow's SQL registry looks the
    logged model of a `models:/m-...` version up there (a server looks it up in its own)."""
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri, uri)


def make_history(client: MlflowClient, folder: Path) -> None:
    """A small local history: a pipeline run and its child (parameters, metric histories, a
    dataset, artifacts), a logged model of the child, a registered version of it with aliases."""
    experiment = client.create_experiment(tracking.experiment_name(), folder.as_uri())
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]})
    dataset = mlflow.data.from_pandas(frame, name="train")._to_mlflow_entity()
    inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])]
    parent = client.create_run(experiment, run_name="pipeline", tags={"kind": "pipeline"})
    child_tags = {"mlflow.parentRunId": parent.info.run_id}
    child = client.create_run(experiment, run_name="03_modelling", tags=child_tags)
    for run_id in (parent.info.run_id, child.info.run_id):
        client.log_param(run_id, "seed", "7")
        for step in range(3):
            client.log_metric(run_id, "loss", 1 / (step + 1), timestamp=1000 + step, step=step)
        client.log_inputs(run_id, datasets=inputs)
        client.log_text(run_id, "notes", "notes.txt")
        client.log_text(run_id, "{}", "notebook/03_modelling.ipynb")
        client.set_terminated(run_id)
    model = client.create_logged_model(experiment, name="model", source_run_id=child.info.run_id)
    (folder / "model").mkdir()
    (folder / "model" / "MLmodel").write_text("flavors: {}\n")
    client.log_model_artifacts(model.model_id, str(folder / "model"))
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(child.info.run_id, [LoggedModelOutput(model.model_id, 0)])
    name = tracking.model_name()
    client.create_registered_model(name)
    version = client.create_model_version(
        name, f"models:/{model.model_id}", run_id=child.info.run_id,
        tags={"pipeline_run_id": parent.info.run_id}, model_id=model.model_id,
    ).version  # fmt: skip
    client.set_registered_model_tag(name, "champion_history", f'["{version}"]')
    client.set_registered_model_alias(name, "champion", version)
    client.set_registered_model_alias(name, "challenger", version)


def history(client: MlflowClient) -> dict:
    """What a migration carries over, ids replaced by names. Each thing is listed as often as the
    store holds it (deleted runs too), so a copy made twice, or left partial, shows."""
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    models = client.search_logged_models([experiment.experiment_id])
    names = {run.info.run_id: run.info.run_name for run in runs}
    names.update({model.model_id: model.name for model in models})

    def files(run_id, path=""):
        found = []
        for item in client.list_artifacts(run_id, path):
            found += files(run_id, item.path) if item.is_dir else [item.path]
        return found

    def shown(tags):
        return sorted((k, names.get(v, v)) for k, v in tags.items() if not k.startswith("migrat"))

    def run_row(run):
        run_id = run.info.run_id
        return [
            run.info.run_name, run.info.status, run.info.lifecycle_stage, shown(run.data.tags),
            sorted(run.data.params.items()), sorted(files(run_id)),
            [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")],
            [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs],
            sorted(names.get(o.model_id, "?") for o in run.outputs.model_outputs),
        ]  # fmt: skip

    def model_row(model):
        folder = Path(model.artifact_location.removeprefix("file://"))
        return [
            model.name, str(model.status), names[model.source_run_id], shown(model.tags),
            sorted(path.name for path in folder.iterdir()),
        ]  # fmt: skip

    versions = client.search_model_versions(f"name = '{tracking.model_name()}'")
    registered = client.get_registered_model(tracking.model_name())
    return {
        "runs": sorted(run_row(run) for run in runs),
        "models": sorted(model_row(model) for model in models),
        "versions": sorted([v.version, names[v.run_id], shown(v.tags)] for v in versions),
        "aliases": registered.aliases,
        "tags": registered.tags,
    }


class Cut(Exception):
    """The migration died here: a killed process, a lost server."""


class CutClient:
    """An MlflowClient whose `cut_at`-th write never reaches the store (0: none is cut)."""

    WRITES = ("create_", "log_", "set_", "delete_", "finalize_")

    def __init__(self, client: MlflowClient, cut_at: int = 0):
        self.client, self.cut_at, self.writes = client, cut_at, 0

    def __getattr__(self, name):
        method = getattr(self.client, name)
        if not name.startswith(self.WRITES):
            return method

        def write(*args, **kwargs):
            self.writes += 1
            if self.writes == self.cut_at:
                raise Cut(f"cut before write {self.writes}: {name}")
            return method(*args, **kwargs)

        return write


class FailingOnce(CutClient):
    """An MlflowClient whose first call of `method` raises `error`."""

    def __init__(self, client: MlflowClient, method: str, error: Exception):
        super().__init__(client)
        self.method, self.error, self.failed = method, error, False

    def __getattr__(self, name):
        if name == self.method and not self.failed:
            self.failed = True
            raise self.error
        return super().__getattr__(name)


@pytest.fixture(scope="module")
def source_store(tmp_path_factory, project_settings):
    """The local history, made once; the migrations only read it."""
    folder = tmp_path_factory.mktemp("source")
    (folder / "pyproject.toml").write_text(project_settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROJECT_ROOT", str(folder))  # the test settings name the experiment
        patch.setenv("MLFLOW_TRACKING_URI", "")  # restored after: store() sets it
        make_history(store(f"sqlite:///{folder / 'mlflow.db'}"), folder / "artifacts")
        MlflowClient(f"sqlite:///{folder / 'empty.db'}").search_experiments()  # an empty store
    return folder


@pytest.fixture
def stores(source_store, tmp_path, monkeypatch):
    """The source's client and a maker of empty targets (a copy of an empty database: fast)."""

    def target(name: str) -> MlflowClient:
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(source_store / "empty.db", folder / "mlflow.db")
        monkeypatch.chdir(folder)  # the store's default artifact root, ./mlruns, goes in there
        return store(f"sqlite:///{folder / 'mlflow.db'}")

    source = f"sqlite:///{source_store / 'mlflow.db'}"
    return MlflowClient(source, source), target


def quiet(*_):
    pass


def test_a_migration_cut_at_any_write_is_finished_by_the_next_and_nothing_doubles(stores):
    source, target = stores
    expected = history(source)
    before = hashlib.sha256(Path(source.tracking_uri.removeprefix("sqlite:///")).read_bytes())
    uncut = CutClient(target("uncut"))
    tracking_server.copy_history(source, uncut, quiet)
    assert history(uncut.client) == expected
    again = tracking_server.copy_history(source, uncut.client, quiet)
    assert again.copied_runs == 0 and history(uncut.client) == expected, "nothing copied twice"
    for cut_at in range(1, uncut.writes + 1):
        dst = target(f"cut-{cut_at}")
        with pytest.raises(Cut):
            tracking_server.copy_history(source, CutClient(dst, cut_at), quiet)
        done = tracking_server.copy_history(source, dst, quiet)
        assert history(dst) == expected, f"cut before write {cut_at}"
        assert done.aliases == {tracking.model_name(): {"champion": "1", "challenger": "1"}}
    after = hashlib.sha256(Path(source.tracking_uri.removeprefix("sqlite:///")).read_bytes())
    assert after.digest() == before.digest(), "the source is only read"


# What a tracking server on PostgreSQL answers when two runs insert the same dataset at once.
LOST_RACE = {
    "error_code": "BAD_REQUEST",
    "message": "(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "
    '"dataset_pk"\n[SQL: INSERT INTO datasets (dataset_uuid, experiment_id, name, digest) ...]',
}


def test_a_dataset_a_pipeline_inserts_at_the_same_moment_is_linked_on_a_second_try(stores):
    source, target = stores
    dst = FailingOnce(target("race"), "log_inputs", RestException(LOST_RACE))
    tracking_server.copy_history(source, dst, quiet)
    assert dst.failed and history(dst.client) == history(source)


def test_a_failed_step_names_what_was_cut_and_the_rerun_finishes_it(stores):
    source, target = stores
    dst = FailingOnce(target("failing"), "log_artifacts", OSError("No space left on device"))
    with pytest.raises(tracking_server.TrackingServerError) as failed:
        tracking_server.copy_history(source, dst, quiet)
    message = str(failed.value)
    assert "while copying run pipeline: OSError: No space left on device" in message
    assert "run it again: it finishes the cut copy and copies nothing twice" in message
    done = tracking_server.copy_history(source, dst.client, quiet)
    assert (done.copied_runs, done.finished_runs) == (2, 1)
    assert "2 copied now, 1 of them finishing a cut copy" in str(done)
    assert history(dst.client) == history(source)
