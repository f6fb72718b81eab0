"""Finish what a killed run left behind: runs RUNNING for ever, and a registration without its decision.

A pipeline that is stopped (Ctrl+C, SIGTERM) marks its own runs KILLED on the way out. One that is
killed outright (SIGKILL, a lost machine) cannot, so every run records the process it belongs to
(tracking.owner_tags: host, pid and the process's start time; nested runs belong to their parent's
process). `repair` finds runs still RUNNING whose process on this host is gone and marks them KILLED
with their descendants. Runs of other hosts are reported, never touched: only their host can tell.

05_deployment registers a version with `decision=pending` and moves no alias until it has decided.
A version still pending after its run ended is settled here: completed where its alias already
moved (promoted, or kept as challenger), else marked `abandoned` with every alias left where it was.

`repair` runs before every pipeline, and on demand as `<project> doctor`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import psutil
from mlflow.entities import Run, RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from . import tracking
from .tracking import OWNER_HOST, OWNER_PID, OWNER_STARTED

PENDING, ABANDONED = "pending", "abandoned"
DECISION_TAG = "decision"
REGISTERED_BY_TAG = "registered_by_run"  # the 05_deployment run that registered a version


@dataclass
class Repairs:
    killed: list[str] = field(default_factory=list)  # run ids marked KILLED
    settled: dict[str, str] = field(default_factory=dict)  # version -> decision now recorded
    elsewhere: list[str] = field(default_factory=list)  # runs of other hosts, left alone

    def lines(self) -> list[str]:
        found = [f"marked KILLED: {len(self.killed)} run(s) left RUNNING by a process that is gone"]
        found += [f"version {v}: registration settled as '{d}'" for v, d in self.settled.items()]
        found += [
            f"run {run}: RUNNING on another host; only that host can tell whether it is alive"
            for run in self.elsewhere
        ]
        return found


def owner_state(tags: dict[str, str]) -> str:
    """`alive`, `gone`, `elsewhere` (another host) or `unknown` (no owner recorded)."""
    if OWNER_PID not in tags:
        return "unknown"
    if tags.get(OWNER_HOST) != socket.gethostname():
        return "elsewhere"
    try:
        process = psutil.Process(int(tags[OWNER_PID]))
        same = f"{process.create_time():.2f}" == tags.get(OWNER_STARTED)
    except (psutil.Error, ValueError):
        return "gone"
    return "alive" if same else "gone"  # another process has the pid now


def _owner(run: Run, by_id: dict[str, Run], client: MlflowClient) -> Run:
    """The run whose process `run` belongs to: itself, or the nearest ancestor that recorded one."""
    seen = set()
    while OWNER_PID not in run.data.tags and (parent := run.data.tags.get(MLFLOW_PARENT_RUN_ID)):
        if parent in seen:
            break
        seen.add(parent)
        run = by_id.get(parent) or client.get_run(parent)
    return run


def running_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    return client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000)


def stale_runs(client: MlflowClient, experiment_id: str, repairs: Repairs) -> list[Run]:
    """Runs RUNNING whose owning process on this host is gone."""
    running = running_runs(client, experiment_id)
    by_id = {run.info.run_id: run for run in running}
    stale = []
    for run in running:
        state = owner_state(_owner(run, by_id, client).data.tags)
        if state == "gone":
            stale.append(run)
        elif state == "elsewhere":
            repairs.elsewhere.append(run.info.run_id)
    return stale


def mark_tree(client: MlflowClient, experiment_id: str, root_id: str, status: str) -> list[str]:
    """End `root_id` and every descendant still RUNNING with `status`; returns their ids."""
    running = {run.info.run_id: run for run in running_runs(client, experiment_id)}

    def under_root(run: Run) -> bool:
        seen = set()
        while run is not None and run.info.run_id not in seen:
            if run.info.run_id == root_id:
                return True
            seen.add(run.info.run_id)
            parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID)
            run = running.get(parent) if parent else None
        return False

    ended = [run_id for run_id, run in running.items() if under_root(run)]
    for run_id in ended:
        client.set_terminated(run_id, status=status)
    return ended


def _run_over(client: MlflowClient, run_id: str) -> bool:
    """Whether a run has ended, or was left RUNNING by a process that is gone."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return True  # deleted: nobody will come back to finish its work
    if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
        return True
    return owner_state(_owner(run, {}, client).data.tags) == "gone"


def pending_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    try:
        versions = client.search_model_versions(f"name = '{name}'", max_results=10000)
    except MlflowException:
        return []
    return [v for v in versions if (v.tags or {}).get(DECISION_TAG) == PENDING]


def settle(client: MlflowClient, version: ModelVersion) -> str:
    """Complete or roll back a registration whose run ended before it recorded a decision."""
    from .registry import CHALLENGER, CHAMPION, version_by_alias, write_history

    number = str(version.version)
    champion = version_by_alias(client, CHAMPION, version.name)
    challenger = version_by_alias(client, CHALLENGER, version.name)
    if champion is not None and str(champion.version) == number:
        write_history(client, version.name)  # the alias moved; make the record follow it
        if challenger is not None and int(challenger.version) < int(number):
            client.delete_registered_model_alias(version.name, CHALLENGER)  # as `promote` does
        decision = "promoted"
    elif challenger is not None and str(challenger.version) == number:
        decision = "kept champion"
    else:
        decision = ABANDONED  # no alias moved: the registry is as it was before this run
    client.set_model_version_tag(version.name, number, DECISION_TAG, decision)
    client.set_model_version_tag(
        version.name, number, "decision_reason",
        "settled by `doctor`: the run that registered it ended before it decided",
    )  # fmt: skip
    return decision


def repair(client: MlflowClient | None = None) -> Repairs:
    """Mark stale runs KILLED and settle pending registrations; changes nothing that is alive."""
    client = client or tracking.client()
    experiment_id = tracking.configure()
    repairs = Repairs()
    for run in stale_runs(client, experiment_id, repairs):
        if run.info.run_id not in repairs.killed:
            repairs.killed += mark_tree(client, experiment_id, run.info.run_id, "KILLED")
    for version in pending_versions(client, tracking.model_name()):
        owner = (version.tags or {}).get(REGISTERED_BY_TAG, "")
        if not owner or _run_over(client, owner):
            repairs.settled[str(version.version)] = settle(client, version)
    return repairs
