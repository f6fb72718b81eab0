"""The hardening review's attacks and crashes, replayed on a generated project for real.

One classification project of its own (its registry is bent here, so no other test shares it),
with a champion from a smoke run. The attacks go through the project's own commands: a model file
in the artifact store that asks to trust a callable (with the registry's record rewritten to match,
as someone with write access to both could), a model file changed in place, and a YAML alias bomb.
The crashes are real: SIGTERM and SIGKILL to a running pipeline, and SIGKILL at the points between
two registry writes (the runtime's failpoints, `PIPELINE_FAILPOINT`).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

RUNTIME_TESTS = Path(__file__).resolve().parents[2] / "runtime" / "tests"  # attacks live there

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hardening")]

NO_IMAGE = ["--set", "deployment.build_image=false"]  # images are tested on the smoked projects
# Types a crafted MLmodel asks skops to trust, each with a model.skops calling it (the project's
# tests/test_integrity.py builds them, and proves each one runs its code when trusted).
ATTACKS = ["builtins.exec", "builtins.eval", "os.system", "subprocess.Popen", "pandas.read_pickle",
           "numpy.load", "builtins.__import__", "builtins.getattr"]  # fmt: skip


@pytest.fixture(scope="module")
def hardened(project_factory):
    project = project_factory(task="classification", project_name="Hard Cases")
    project.cli("pipeline", "--smoke", *NO_IMAGE)
    return project


def registry(project) -> dict:
    return project.mlflow_query(
        """
        versions = client.search_model_versions(f"name='{MODEL_NAME}'")
        aliases = client.get_registered_model(MODEL_NAME).aliases if versions else {}
        history = client.get_registered_model(MODEL_NAME).tags.get("champion_history", "[]")
        print(json.dumps({
            "aliases": {alias: str(version) for alias, version in aliases.items()},
            "decisions": {str(v.version): v.tags.get("decision") for v in versions},
            "history": json.loads(history),
        }))
        """
    )


def champion_files(project) -> Path:
    """The champion's folder in the project's artifact store (mlruns/...)."""
    uri = project.mlflow_query(
        """
        version = client.get_model_version_by_alias(MODEL_NAME, "champion")
        print(json.dumps(client.get_model_version_download_uri(MODEL_NAME, version.version)))
        """
    )
    return Path(uri.removeprefix("file://"))


@contextmanager
def restored(project, folder: Path):
    """Put the champion's files and record back afterwards: other tests here use them."""
    saved = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    record = project.mlflow_query(
        """
        version = client.get_model_version_by_alias(MODEL_NAME, "champion")
        print(json.dumps([version.version, version.tags["model_files"]]))
        """
    )
    try:
        yield
    finally:
        for name, content in saved.items():
            (folder / name).write_bytes(content)
        rewrite_record(project, *record)


def rewrite_record(project, version: str, record: str) -> None:
    project.mlflow_query(
        f"""
        client.set_model_version_tag(MODEL_NAME, {version!r}, "model_files", {record!r})
        print("null")
        """
    )


def graft_attack(project, folder: Path, trusted: str, marker: Path) -> None:
    """Replace the champion's model.skops with the attack, make MLmodel trust its type, and
    rewrite the registry's record to match the new files (no signing key is set here)."""
    project.python_json(
        f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(RUNTIME_TESTS)!r})
        from test_integrity import attacks
        from crisp_ml.serving.integrity import Record
        from crisp_ml.tracking import client, model_name
        folder, marker = Path({str(folder)!r}), Path({str(marker)!r})
        (folder / "model.skops").write_bytes(attacks(marker)[{trusted!r}])
        mlmodel = folder / "MLmodel"
        mlmodel.write_text(mlmodel.read_text().replace(
            "skops_trusted_types:", "skops_trusted_types:\\n    - {trusted}"))
        registry, name = client(), model_name()
        version = registry.get_model_version_by_alias(name, "champion")
        forged = Record.of(folder, name).to_json()
        registry.set_model_version_tag(name, version.version, "model_files", forged)
        print("null")
        """
    )


@pytest.mark.parametrize("trusted", ATTACKS)
def test_serve_refuses_a_stored_model_that_trusts_a_callable_and_runs_nothing(
    hardened, tmp_path, trusted
):
    folder = champion_files(hardened)
    marker = tmp_path / "marker"
    with restored(hardened, folder):
        graft_attack(hardened, folder, trusted, marker)
        done = hardened.cli("serve", "--port", "0", check=False, timeout=120)
        time.sleep(0.5)  # a Popen'ed child would have touched the marker by now
    assert done.returncode != 0, done.stdout
    assert trusted in done.stderr and "refusing to load it" in done.stderr
    assert not marker.exists()


def test_monitoring_and_the_image_refuse_it_too(hardened, tmp_path):
    """Every reader of a registered model loads it the same way: 06's champion, the image."""
    folder = champion_files(hardened)
    marker, batch = tmp_path / "marker", tmp_path / "batch.csv"
    hardened.cli("monitor", "--shifted-batch", str(batch))  # reads the data, not the model
    with restored(hardened, folder):
        graft_attack(hardened, folder, "builtins.exec", marker)
        monitored = hardened.cli(
            "monitor", "--set", f"monitoring.current_path={batch}", check=False
        )
        staged = hardened.cli("image", "--no-build", check=False)
    assert monitored.returncode == 1 and "builtins.exec" in monitored.stderr
    assert staged.returncode == 1 and "builtins.exec" in staged.stderr
    assert not marker.exists()


def test_a_model_file_changed_in_the_store_is_refused_naming_it(hardened):
    """The review's tamper: the stored model.skops changed and the record left as it was."""
    folder = champion_files(hardened)
    with restored(hardened, folder):
        skops_file = folder / "model.skops"
        skops_file.write_bytes(skops_file.read_bytes() + b"\0")
        done = hardened.cli("serve", "--port", "0", check=False, timeout=120)
        staged = hardened.cli("image", "--no-build", check=False)
    for refused in (done, staged):
        assert refused.returncode == 1
        assert "model.skops: SHA-256" in refused.stderr and "integrity record" in refused.stderr


def test_a_yaml_alias_bomb_stops_before_anything_runs(hardened, tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 14)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    done = hardened.cli("pipeline", "--params", str(bomb), check=False, timeout=60)
    assert done.returncode == 1 and "YAML aliases" in done.stderr
    assert "Running" not in done.stdout


@pytest.mark.parametrize(
    ("setting", "message"),
    [("data.test_size=-0.2", "strictly between 0 and 1"), ("modelling.cv_folds=1", "at least 2")],
)
def test_ranges_stop_the_pipeline_before_the_first_notebook(hardened, setting, message):
    done = hardened.cli("pipeline", "--set", setting, check=False, timeout=60)
    assert done.returncode == 1 and message in done.stderr
    assert "Running" not in done.stdout


# --- killed runs --------------------------------------------------------------------------------


def processes_with(marker: str) -> list[int]:
    """Processes whose environment holds `marker`: the pipeline's kernels and their workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile, or not ours to read
    return found


def start_pipeline(project, marker: str, *args: str) -> subprocess.Popen:
    command = [str(project.root / ".venv" / "bin" / project.slug), "pipeline", "--smoke", *args]
    return subprocess.Popen(
        command, cwd=project.root, env=project.env({"HARDENING_PROBE": marker}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl+C as a terminal delivers it: a test suite started as a background job inherits
        # SIGINT ignored, and so would the pipeline, which then runs on past the signal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no lock between fork and exec
    )  # fmt: skip


def wait_for_workers(marker: str, pipeline: subprocess.Popen, timeout: float = 240) -> None:
    """Until 03's parallel search runs: joblib workers beside the kernel."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert pipeline.poll() is None, pipeline.communicate()
        workers = [pid for pid in processes_with(marker) if _is_worker(pid)]
        if workers:
            return
        time.sleep(0.2)
    pytest.fail("03's joblib workers never started")


def _is_worker(pid: int) -> bool:
    try:
        return b"loky" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait_until_gone(marker: str, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def runs_of_newest_pipeline(project) -> dict:
    return project.mlflow_query(
        """
        parent = max((r for r in runs if r.data.tags.get("kind") == "pipeline"),
                     key=lambda r: r.info.start_time)
        ids = {parent.info.run_id}
        changed = True
        while changed:  # every run under it, nested ones too
            found = {r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") in ids}
            changed = not found <= ids
            ids |= found
        print(json.dumps({
            "parent": parent.info.status,
            "all": sorted(r.info.status for r in runs if r.info.run_id in ids),
        }))
        """
    )


PARALLEL_SEARCH = ["--set", "modelling.n_jobs=2", "--set", "modelling.n_iter=4", *NO_IMAGE]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_pipeline_marks_its_runs_killed_and_leaves_no_process(hardened, stop):
    marker = uuid.uuid4().hex
    pipeline = start_pipeline(hardened, marker, *PARALLEL_SEARCH)
    wait_for_workers(marker, pipeline)
    pipeline.send_signal(stop)
    _, stderr = pipeline.communicate(timeout=120)
    assert pipeline.returncode == 130, stderr
    assert wait_until_gone(marker) == [], "the kernel and its workers die with the pipeline"
    runs = runs_of_newest_pipeline(hardened)
    assert runs["parent"] == "KILLED" and "RUNNING" not in runs["all"], runs


def test_a_pipeline_killed_outright_leaves_no_process_and_doctor_marks_its_runs(hardened):
    marker = uuid.uuid4().hex
    pipeline = start_pipeline(hardened, marker, *PARALLEL_SEARCH)
    wait_for_workers(marker, pipeline)
    pipeline.kill()
    pipeline.communicate(timeout=60)
    assert wait_until_gone(marker) == [], "the kernel notices its parent is gone, kills its group"
    assert "RUNNING" in runs_of_newest_pipeline(hardened)["all"]  # nobody could mark them yet
    done = hardened.cli("doctor")
    assert re.search(r"marked KILLED: [1-9]\d* run", done.stdout), done.stdout
    runs = runs_of_newest_pipeline(hardened)
    assert runs["parent"] == "KILLED" and "RUNNING" not in runs["all"], runs


def test_a_kill_right_after_registration_leaves_every_alias_as_it_was(hardened):
    before = registry(hardened)
    killed = hardened.cli(
        "pipeline", "--smoke", "--from", "05", *NO_IMAGE, check=False,
        env={"PIPELINE_FAILPOINT": "registered:pipeline"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    after = registry(hardened)
    newest = max(after["decisions"], key=int)
    assert newest not in before["decisions"] and after["decisions"][newest] == "pending"
    assert after["aliases"] == before["aliases"], "no alias moved before the decision"
    done = hardened.cli("pipeline", "--smoke", "--only", "01")  # the next pipeline settles it
    assert f"version {newest}: registration settled as 'abandoned'" in done.stdout
    assert registry(hardened)["decisions"][newest] == "abandoned"


def test_rollback_never_moves_to_a_version_that_was_not_champion(hardened):
    """The review's crash: history written, alias not moved, then `rollback` went forward."""
    # Registering the champion's model again gives a version that stays the challenger.
    hardened.cli("pipeline", "--smoke", "--from", "05", *NO_IMAGE)
    state = registry(hardened)
    champion, challenger = state["aliases"]["champion"], state["aliases"]["challenger"]
    hardened.cli("rollback", "--to", challenger)
    crashed = hardened.cli("rollback", check=False, env={"PIPELINE_FAILPOINT": "history-written"})
    assert crashed.returncode == -signal.SIGKILL
    assert registry(hardened)["aliases"]["champion"] == challenger, "cut before the alias moved"
    moved = hardened.cli("rollback")
    assert f"champion moved from version {challenger} to version {champion}" in moved.stdout
    assert registry(hardened)["history"][-1] == champion


def test_make_doctor_is_listed_and_changes_nothing_when_all_is_well(hardened):
    assert "make doctor" in hardened.make("help").stdout
    before = registry(hardened)
    done = hardened.cli("doctor")
    assert "marked KILLED: 0 run(s)" in done.stdout
    assert registry(hardened) == before


def test_a_champion_without_an_integrity_record_is_replaced_not_a_dead_end(hardened):
    """A champion that cannot be trusted (here: no record, as one registered before records
    existed) cannot be scored: 05 says why and the new version replaces it, instead of every
    pipeline failing at 05 for good."""
    folder = champion_files(hardened)
    before = registry(hardened)["aliases"]["champion"]
    with restored(hardened, folder):
        hardened.mlflow_query(
            f"""
            client.delete_model_version_tag(MODEL_NAME, {before!r}, "model_files")
            print("null")
            """
        )
        hardened.cli("pipeline", "--smoke", "--from", "05", *NO_IMAGE)  # fails if 05 does
    state = registry(hardened)
    assert state["aliases"]["champion"] != before and "challenger" not in state["aliases"]
    assert state["decisions"][state["aliases"]["champion"]] == "promoted"
