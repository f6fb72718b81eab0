"""What a killed run leaves behind is found and finished: runs left RUNNING by a process that is
gone, and registrations that never recorded their decision. On a temporary store, with real
processes (a child started and killed here stands for a pipeline killed outright)."""

import socket
import subprocess
import sys

import mlflow
import pytest

from crisp_ml import recovery, tracking
from crisp_ml.registry import CHALLENGER, CHAMPION, champion_history, version_by_alias

NAME = "demo-ml-project"  # model_name in the test settings (conftest.SETTINGS)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that ran and is gone."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def run_of(client, owner: dict[str, str] | None, parent: str | None = None) -> str:
    tags = dict(owner or {})
    if parent:
        tags["mlflow.parentRunId"] = parent
    return client.create_run(tracking.configure(), tags=tags).info.run_id


def status(client, run_id: str) -> str:
    return client.get_run(run_id).info.status


def test_runs_of_a_dead_process_are_marked_killed_with_everything_under_them(client, dead_pid):
    owner = {**tracking.owner_tags(), tracking.OWNER_PID: str(dead_pid)}
    pipeline = run_of(client, owner)
    notebook = run_of(client, owner, parent=pipeline)
    candidate = run_of(client, None, parent=notebook)  # opened in the kernel: no owner of its own
    repairs = recovery.repair(client)
    assert {status(client, r) for r in (pipeline, notebook, candidate)} == {"KILLED"}
    assert set(repairs.killed) == {pipeline, notebook, candidate}


def test_runs_of_a_living_process_or_another_host_are_left_alone(client):
    mine = run_of(client, tracking.owner_tags())
    elsewhere = run_of(
        client, {**tracking.owner_tags(), tracking.OWNER_HOST: "not-" + socket.gethostname()}
    )
    repairs = recovery.repair(client)
    assert status(client, mine) == status(client, elsewhere) == "RUNNING"
    assert repairs.elsewhere == [elsewhere] and not repairs.killed


def test_a_reused_pid_does_not_keep_a_dead_run_alive(client):
    """The pid now belongs to another process (this one): the start time tells them apart."""
    owner = {**tracking.owner_tags(), tracking.OWNER_STARTED: "1.00"}
    run = run_of(client, owner)
    recovery.repair(client)
    assert status(client, run) == "KILLED"


def registered(client, run_id: str) -> str:
    """A version registered by `run_id`, decision pending, as 05_deployment leaves it."""
    with mlflow.start_run():
        mlflow.log_text("not a model", "model/MLmodel")
        uri = f"{mlflow.get_artifact_uri()}/model"
    tags = {recovery.DECISION_TAG: recovery.PENDING, recovery.REGISTERED_BY_TAG: run_id}
    return str(mlflow.register_model(uri, NAME, tags=tags).version)


def decision(client, version: str) -> str:
    return client.get_model_version(NAME, version).tags[recovery.DECISION_TAG]


def test_a_registration_whose_run_died_before_deciding_is_abandoned_aliases_untouched(
    client, dead_pid
):
    owner = {**tracking.owner_tags(), tracking.OWNER_PID: str(dead_pid)}
    champion = registered(client, run_of(client, tracking.owner_tags()))
    client.set_registered_model_alias(NAME, CHAMPION, champion)
    client.set_model_version_tag(NAME, champion, recovery.DECISION_TAG, "promoted")
    orphan = registered(client, run_of(client, owner))
    repairs = recovery.repair(client)
    assert repairs.settled == {orphan: recovery.ABANDONED}
    assert decision(client, orphan) == recovery.ABANDONED
    assert str(version_by_alias(client, CHAMPION).version) == champion
    assert version_by_alias(client, CHALLENGER) is None


def test_a_registration_whose_alias_had_moved_is_completed(client, dead_pid):
    owner = {**tracking.owner_tags(), tracking.OWNER_PID: str(dead_pid)}
    promoted, kept = (registered(client, run_of(client, owner)) for _ in range(2))
    client.set_registered_model_alias(NAME, CHAMPION, promoted)  # cut right after the move
    client.set_registered_model_alias(NAME, CHALLENGER, kept)
    recovery.repair(client)
    assert decision(client, promoted) == "promoted" and champion_history(client) == [promoted]
    assert decision(client, kept) == "kept champion"


def test_a_completed_promotion_leaves_no_older_challenger(client, dead_pid):
    owner = {**tracking.owner_tags(), tracking.OWNER_PID: str(dead_pid)}
    older = registered(client, run_of(client, tracking.owner_tags()))
    client.set_registered_model_alias(NAME, CHALLENGER, older)
    client.set_model_version_tag(NAME, older, recovery.DECISION_TAG, "kept champion")
    promoted = registered(client, run_of(client, owner))
    client.set_registered_model_alias(NAME, CHAMPION, promoted)  # cut before challenger went
    recovery.repair(client)
    assert decision(client, promoted) == "promoted"
    assert version_by_alias(client, CHALLENGER) is None, "the registry as `promote` leaves it"


def test_a_registration_in_progress_is_left_alone(client):
    alive = registered(client, run_of(client, tracking.owner_tags()))
    assert recovery.repair(client).settled == {}
    assert decision(client, alive) == recovery.PENDING
