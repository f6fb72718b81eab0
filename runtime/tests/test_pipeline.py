"""The runner's choices: which notebooks, in which order, with which checked parameters; what a
notebook opened in JupyterLab does instead; what the runner leaves in MLflow."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import nbformat
import pytest
from mlflow.exceptions import MlflowException

from crisp_ml import params as P
from crisp_ml import pipeline, recovery, tracking
from crisp_ml.params import ParamsError
from crisp_ml.project import (
    FINISHED,
    HANDOFF,
    RUN_DIR_ENV,
    hand_on,
    handed_on,
    latest_handoff,
    record_completed,
)


@pytest.fixture
def notebooks(tmp_path):
    names = ["03_modelling.ipynb", "01_use_case.ipynb", "02_data_preparation.ipynb", "notes.ipynb"]
    for name in names:
        (tmp_path / name).write_text("{}")
    return pipeline.discover(tmp_path)


def test_numbered_notebooks_run_in_number_order(notebooks):
    assert [n.stem for n in notebooks] == ["01_use_case", "02_data_preparation", "03_modelling"]


def test_only_and_from_accept_numbers_and_names(notebooks):
    assert [n.stem for n in pipeline.select(notebooks, only=["3", "01_use_case"])] == [
        "03_modelling",
        "01_use_case",
    ]
    assert [n.stem for n in pipeline.select(notebooks, start="02")] == [
        "02_data_preparation",
        "03_modelling",
    ]


def test_unknown_notebook_lists_the_real_ones(notebooks):
    with pytest.raises(ParamsError, match=r"no notebook matches '09'.*01_use_case"):
        pipeline.select(notebooks, only=["09"])


def test_plan_checks_every_notebook_before_running(generated_project, monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(generated_project))
    plan = pipeline.plan(sets=["data.seed=7"], smoke=True)
    assert [n.stem for n in plan.notebooks] == [
        n.stem for n in pipeline.discover(generated_project / "notebooks")
    ]
    data_prep = next(n for n in plan.notebooks if n.stem.startswith("02"))
    assert plan.values[data_prep]["data_seed"] == 7
    assert plan.values[data_prep]["data_sample_rows"] > 0  # from the smoke settings
    with pytest.raises(
        ParamsError, match=r"`data.seed` = 'seven' does not fit 02_data_preparation"
    ):
        pipeline.plan(sets=["data.seed=seven"])


def stems(plan: pipeline.Plan) -> list[str]:
    return [n.stem[:2] for n in plan.notebooks]


def test_a_partial_run_also_runs_the_notebook_that_declares_a_changed_setting(
    generated_project, monkeypatch, tmp_path
):
    monkeypatch.setenv("PROJECT_ROOT", str(generated_project))
    # 01 declares the use case and hands it on: 04 sees the new threshold only if 01 runs again
    plan = pipeline.plan(sets=["use_case.threshold=0.9"], start="04")
    assert stems(plan) == ["01", "04", "05"]
    assert plan.brought_in == {"01_use_case": ["use_case.threshold"]}
    nested = pipeline.plan(
        sets=["use_case.fairness_limits.equalized_odds_difference=0.3"], start="4"
    )
    assert nested.brought_in == {
        "01_use_case": ["use_case.fairness_limits.equalized_odds_difference"]
    }
    changes = tmp_path / "seed.yaml"
    changes.write_text("data:\n  seed: 7\n")
    assert stems(pipeline.plan([changes], only=["03"])) == ["02", "03"]
    # what --smoke changes, a setting a later notebook declares, or an unchanged value: no one more
    assert stems(pipeline.plan(smoke=True, start="04")) == ["04", "05"]
    assert stems(pipeline.plan(sets=["deployment.build_image=false"], only=["03"])) == ["03"]
    assert stems(pipeline.plan(sets=["data.seed=42"], start="03")) == ["03", "04", "05"]


def test_each_parameter_is_declared_by_one_notebook(generated_project):
    declared: dict[str, list[str]] = {}
    for notebook in pipeline.discover(generated_project / "notebooks", on_demand=True):
        for param in P.read_notebook_params(notebook):
            declared.setdefault(param.name, []).append(notebook.stem)
    assert {name: where for name, where in declared.items() if len(where) > 1} == {}


# --- a notebook opened in JupyterLab ------------------------------------------------------------


@pytest.fixture
def interactive(isolated_project, monkeypatch):
    """A kernel JupyterLab started: no run, run folder or parent run from the runner."""
    for name in ("MLFLOW_RUN_ID", RUN_DIR_ENV, pipeline.PARENT_RUN_ENV):
        monkeypatch.delenv(name, raising=False)
    yield isolated_project
    while mlflow.active_run():
        mlflow.end_run()


def runs_of_kind(kind: str) -> list:
    client = tracking.client()
    return client.search_runs([tracking.configure()], f"tags.kind = '{kind}'")


def test_interactive_runs_are_marked_and_grouped_under_their_kernels_session(interactive):
    for phase in ("01_use_case", "02_data_preparation"):
        tracking.start_phase_run(phase)
        mlflow.end_run()
    runs = sorted(runs_of_kind("interactive"), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in runs] == [
        "01_use_case (interactive)",
        "02_data_preparation (interactive)",
    ]
    (session,) = runs_of_kind("interactive-session")
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {session.info.run_id}
    assert session.info.run_name.startswith("interactive-session-")
    assert session.info.status == "RUNNING", "open while its kernel lives"
    owner = tracking.owner_tags()
    assert {key: session.data.tags[key] for key in owner} == owner


def test_a_kernel_that_exits_closes_its_session_and_a_second_try_ends_the_first(interactive):
    kernel = (
        "from crisp_ml.tracking import start_phase_run\n"
        "start_phase_run('03_modelling')\n"
        "start_phase_run('03_modelling')  # the first try stopped at an error, before end_run\n"
    )
    subprocess.run([sys.executable, "-c", kernel], check=True)
    tries = sorted(r.info.status for r in runs_of_kind("interactive"))
    assert tries == ["FAILED", "FINISHED"]  # MLflow ends the active run when the process exits
    assert [r.info.status for r in runs_of_kind("interactive-session")] == ["FINISHED"]


def test_the_session_of_a_killed_kernel_is_marked_killed_and_a_living_one_left_alone(interactive):
    killed = (
        "import os, signal\n"
        "from crisp_ml.tracking import start_phase_run\n"
        "start_phase_run('04_evaluation')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", killed], check=False)
    alive = tracking.start_phase_run("04_evaluation").info.run_id
    repairs = recovery.repair()
    statuses = {r.info.run_id: r.info.status for r in runs_of_kind("interactive")}
    assert statuses.pop(alive) == "RUNNING"
    assert list(statuses.values()) == ["KILLED"]
    sessions = sorted(r.info.status for r in runs_of_kind("interactive-session"))
    assert sessions == ["KILLED", "RUNNING"] and len(repairs.killed) == 2


def finished_run(root: Path, name: str, **values) -> Path:
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    (folder / HANDOFF).write_text(json.dumps(values))
    (folder / FINISHED).write_text("run\n")
    return folder


def test_in_jupyterlab_a_notebook_reads_the_newest_pipeline_run_and_what_came_after(interactive):
    finished_run(interactive, "20260101-000000-aaaaaaaa", train_path="old", model_uri="old")
    hand_on(model_uri="mine")  # 03 run in JupyterLab after that pipeline run
    assert handed_on("train_path", "02") == "old" and handed_on("model_uri", "03") == "mine"
    finished_run(interactive, "20260102-000000-bbbbbbbb", train_path="new", model_uri="new")
    assert handed_on("model_uri", "03") == "new", "a newer pipeline run wins over older work"
    hand_on(gate_passed=True)  # 04 in JupyterLab; then 05 reads both
    assert handed_on("train_path", "02") == "new" and handed_on("gate_passed", "04") is True
    tracking.start_phase_run("05_deployment")
    (run,) = runs_of_kind("interactive")
    assert run.data.tags["continues_from"] == str(interactive / "runs" / "20260102-000000-bbbbbbbb")


PHASES = ["01_use_case", "02_data_preparation", "03_modelling", "04_evaluation", "05_deployment"]


def test_a_partial_run_continues_from_the_newest_run_that_completed_what_it_needs(
    isolated_project,
):
    finished = finished_run(isolated_project, "20260101-000000-aaaaaaaa", model_uri="finished")
    record_completed(finished, *PHASES)
    failed_in_04 = isolated_project / "runs" / "20260102-000000-bbbbbbbb"
    failed_in_04.mkdir()
    (failed_in_04 / HANDOFF).write_text(json.dumps({"model_uri": "newer"}))
    record_completed(failed_in_04, *PHASES[:3])
    # --from 04 after the run that failed in 04: its 01-03 outputs are the newest there are
    assert latest_handoff(needs=PHASES[:3]).parent == failed_in_04
    assert latest_handoff(needs=PHASES[:4]).parent == finished  # --from 05 needs a 04 too
    assert latest_handoff().parent == finished, "JupyterLab continues finished runs only"


def test_a_partial_run_continues_from_a_run_that_completed_every_notebook_it_skips(
    generated_project, isolated_project, monkeypatch
):
    only_01_02 = finished_run(isolated_project, "20260102-000000-bbbbbbbb", train_path="new")
    record_completed(only_01_02, *PHASES[:2])
    everything = finished_run(isolated_project, "20260101-000000-aaaaaaaa", model_uri="model")
    record_completed(everything, *PHASES)
    notebooks = pipeline.discover(generated_project / "notebooks")
    the_plan = pipeline.Plan([notebooks[0], *notebooks[3:]], {}, {})  # 01 brought in before 04
    monkeypatch.setattr(pipeline, "discover", lambda folder: notebooks)
    this_run = isolated_project / "runs" / "20260103-000000-cccccccc"
    this_run.mkdir()
    with mlflow.start_run():
        pipeline._continue_from_latest(the_plan, this_run, echo=lambda *a, **k: None)
    handed = json.loads((this_run / HANDOFF).read_text())
    assert handed["model_uri"] == "model", "02 and 03 are skipped: the run that did them both"


# --- what the runner leaves in MLflow -----------------------------------------------------------


def test_the_experiment_opens_on_training_runs_in_mlflows_ui(isolated_project, monkeypatch):
    client = mlflow.MlflowClient(tracking.tracking_uri())
    location = (isolated_project / "mlruns").as_uri()
    made_before = client.create_experiment(tracking.experiment_name(), artifact_location=location)
    assert tracking.configure() == made_before  # an experiment made without the tag gets it
    monkeypatch.setattr(tracking, "experiment_name", lambda: "made-now")
    for experiment_id in (made_before, tracking.configure()):
        tags = client.get_experiment(experiment_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_executed_notebook_is_logged_as_a_web_page_too(isolated_project):
    executed = isolated_project / "01_use_case.ipynb"
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('hello')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    notebook.cells = [nbformat.v4.new_markdown_cell("# Use case"), cell]
    nbformat.write(notebook, executed)
    client = tracking.client()
    run_id = client.create_run(tracking.configure()).info.run_id
    pipeline._finish(client, run_id, executed, "FINISHED")
    logged = sorted(a.path for a in client.list_artifacts(run_id, "notebook"))
    assert logged == ["notebook/01_use_case.html", "notebook/01_use_case.ipynb"]
    page = executed.with_suffix(".html").read_text()
    assert "<html" in page and "hello" in page


def test_a_store_that_refuses_the_repairs_does_not_stop_the_pipeline(monkeypatch):
    def refuse(*args):
        raise MlflowException("PERMISSION_DENIED: not allowed to update runs")

    monkeypatch.setattr(pipeline.recovery, "repair", refuse)
    said = []
    pipeline._repair_first(said.append)
    assert "not allowed to update runs" in said[0] and "`doctor`" in said[0]
