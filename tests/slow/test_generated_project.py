"""A generated project passes its own gates and runs its pipeline: the product, proven end to end."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from ports import free_port
from sklearn.datasets import load_wine

pytestmark = pytest.mark.slow


def test_project_passes_its_own_check(project):
    done = project.make("check")
    assert done.stdout.count("ok  ") == 6 and "FAIL" not in done.stdout, done.stdout


def test_project_passes_its_own_tests(project):
    done = project.make("test", "-q")
    assert re.search(r"\d+ passed", done.stdout), done.stdout
    assert "failed" not in done.stdout


def test_setup_leaves_a_clean_first_commit_a_commit_hook_and_the_kernel_in_the_venv(project):
    first_commit = project.run("git", "show", "--name-only", "--format=", "HEAD").stdout.split()
    assert "uv.lock" in first_commit, "a fresh project's runs are not 'uncommitted changes'"
    assert project.run("git", "rev-list", "--count", "HEAD").stdout.strip() == "1"
    assert (project.root / ".git" / "hooks" / "pre-commit").is_file()
    spec = project.root / ".venv" / "share" / "jupyter" / "kernels" / project.slug / "kernel.json"
    notebook = json.loads((project.root / "notebooks" / "01_use_case.ipynb").read_text())
    # JupyterLab writes the registered display name into every notebook it saves: the same one
    # nbdev-clean writes, so opening and saving a notebook changes nothing.
    assert (
        json.loads(spec.read_text())["display_name"]
        == notebook["metadata"]["kernelspec"]["display_name"]
    )


def test_the_commit_hook_strips_outputs_and_stops_the_commit(project):
    notebook = project.root / "notebooks" / "02_data_preparation.ipynb"
    clean = notebook.read_text()
    content = json.loads(clean)
    cell = next(c for c in content["cells"] if c["cell_type"] == "code")
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["/home/me/data\n"]}]
    cell["execution_count"] = 1
    notebook.write_text(json.dumps(content, indent=1))
    identity = ["-c", "user.name=Test", "-c", "user.email=test@localhost"]
    try:
        project.run("git", "add", str(notebook))
        committed = project.run("git", *identity, "commit", "-m", "outputs", check=False)
        assert committed.returncode != 0, "the hook changed the notebook: the commit stops"
        assert notebook.read_text() == clean, "only the outputs were new: the notebook is as before"
        assert project.run("git", "rev-list", "--count", "HEAD").stdout.strip() == "1"
    finally:
        project.run("git", "reset", "--quiet", "--", str(notebook))
        notebook.write_text(clean)


def test_make_help_lists_every_target(project):
    done = project.make("help")
    targets = "setup lab pipeline check fix test image serve monitor clean"
    for target in targets.split():
        assert f"make {target}" in done.stdout


def test_smoke_pipeline_leaves_the_run_tree(smoked_project):
    tree = smoked_project.mlflow_query(
        """
        parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
        parent = sorted(parents, key=lambda r: r.info.start_time)[0]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        def artifacts(run, path=""):
            return [a.path for a in client.list_artifacts(run.info.run_id, path)]
        by_name = {r.data.tags["mlflow.runName"]: r for r in children}
        modelling = by_name["03_modelling"]
        candidates = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == modelling.info.run_id]
        prep = by_name["02_data_preparation"]
        print(json.dumps({
            "parent_status": parent.info.status,
            "parent_tags": parent.data.tags,
            "parent_params": sorted(parent.data.params),
            "parent_artifacts": artifacts(parent),
            "children": {n: r.info.status for n, r in by_name.items()},
            "notebooks": {n: artifacts(r, "notebook") for n, r in by_name.items()},
            "use_case": artifacts(by_name["01_use_case"]),
            "inputs": [(d.dataset.name, d.dataset.digest) for d in prep.inputs.dataset_inputs],
            "prep_artifacts": artifacts(prep),
            "candidates": {r.data.tags["mlflow.runName"]: sorted(r.data.metrics) for r in candidates},
            "models": sorted((m.name, "compiled_from" in m.tags)
                             for m in mlflow.search_logged_models([experiment_id], output_format="list")
                             if m.source_run_id == modelling.info.run_id),
        }))
        """
    )
    assert tree["parent_status"] == "FINISHED"
    assert tree["parent_tags"]["smoke"] == "true"
    assert re.fullmatch(r"[0-9a-f]{40}", tree["parent_tags"]["git_commit"])
    assert tree["parent_tags"]["version.mlflow"] == "3.17.2"
    assert {"data.path", "data.target", "modelling.cv_folds", "use_case.metric"} <= set(
        tree["parent_params"]
    )
    assert {"params.yaml", "environment.txt"} <= set(tree["parent_artifacts"])
    notebooks = smoked_project.python_json(
        """
        import json
        from pathlib import Path
        from crisp_ml.pipeline import discover
        print(json.dumps([n.stem for n in discover(Path("notebooks"))]))
        """
    )
    assert notebooks[0] == "01_use_case" and "06_monitoring" not in notebooks  # run by `monitor`
    assert sorted(tree["children"]) == notebooks
    assert set(tree["children"].values()) == {"FINISHED"}
    for name, files in tree["notebooks"].items():
        assert files == [f"notebook/{name}.html", f"notebook/{name}.ipynb"]  # the page renders
    assert "use_case.json" in tree["use_case"]
    assert sorted(name for name, _ in tree["inputs"]) == ["test", "train"]
    assert all(re.fullmatch(r"[0-9a-f]+", digest) for _, digest in tree["inputs"])
    assert {"data_quality.csv", "data_quality.png", "schema.yaml"} <= set(tree["prep_artifacts"])
    assert sorted(tree["candidates"]) == [
        "baseline",
        "hist_gradient_boosting",
        "linear",
        "random_forest",
    ]
    assert all(any(m.startswith("cv_") for m in metrics) for metrics in tree["candidates"].values())
    # 03's model, and 05's copy of it compiled to ONNX (model.onnx beside the same files)
    assert tree["models"] == [["model", False], ["model", True]]
    executed = sorted((smoked_project.root / "runs").glob("*/03_modelling.ipynb"))
    assert executed, "executed notebooks are kept on disk in a per-run folder"
    assert any(cell.get("outputs") for cell in json.loads(executed[0].read_text())["cells"])


def test_unknown_key_stops_before_anything_runs(project):
    done = project.cli("pipeline", "--smoke", "--set", "data.tset_size=0.3", check=False)
    assert done.returncode == 1
    assert "unknown parameter `data.tset_size`. Did you mean `data.test_size`?" in done.stderr
    assert "Running" not in done.stdout


def test_wrong_type_names_key_notebook_and_type(project):
    done = project.cli("pipeline", "--set", "modelling.cv_folds=many", check=False)
    assert done.returncode == 1
    assert "`modelling.cv_folds` = 'many' does not fit" in done.stderr
    assert "03_modelling.ipynb, which expects `int`" in done.stderr


def test_params_file_overrides_are_checked_too(project, tmp_path):
    overrides = tmp_path / "typo.yaml"
    overrides.write_text("modelling:\n  n_itre: 3\n")
    done = project.cli("params", "--params", str(overrides), check=False)
    assert done.returncode == 1 and "unknown parameter `modelling.n_itre`" in done.stderr


def test_values_with_spaces_pass_through_make_intact(project):
    # What a shell passes for ARGS='--set "use_case.segments=[...]"': one argument, inner quotes kept
    segments = {"classification": "[mean texture, mean radius]", "regression": "[age, sex]"}
    shown = project.make("params", f'--set "use_case.segments={segments[project.options["task"]]}"')
    first, second = segments[project.options["task"]].strip("[]").split(", ")
    assert f"  segments:\n  - {first}\n  - {second}\n" in shown.stdout
    wrong = project.make("params", '--set "data.id_column=patient id"', check=False)
    assert wrong.returncode != 0
    assert "`data.id_column`: column 'patient id' is not in the data" in wrong.stderr


PREFLIGHT = "cannot work with this data; nothing was run"  # checked before the run starts
DATA_PREPARATION = "02_data_preparation.ipynb failed in cell"


def bad_files(folder) -> dict[str, tuple[str, list[str], str, str]]:
    """Each bad input: (file, extra --set values, where it stops, the message naming the check and
    the column). What can be seen before the run (a missing column, an unreadable file, too few
    rows) stops it before it starts; the rest stops in 02."""
    good = pd.DataFrame(
        {"x": np.arange(60.0), "colour": ["red", "blue"] * 30, "y": ["a", "b", "c"] * 20}
    )
    cases = {
        "no_target": (good.drop(columns="y"), [], PREFLIGHT,
                      "`data.target`: column 'y' is not in the data"),
        "single_class": (good.assign(y="a"), [], DATA_PREPARATION,
                         "data check 'class count' failed: column 'y'"),
        "empty_column": (good.assign(blank=np.nan), [], DATA_PREPARATION,
                         "data check 'missing values' failed: column 'blank'"),
        "too_few_rows": (good.head(6).assign(y=["a", "b"] * 3), ["data.min_rows_per_class=1"],
                         PREFLIGHT, "`modelling.cv_folds` = 5 needs at least 10 rows"),
        "wrong_type": (good.assign(x=np.resize(["twelve", "nine"], 60), n=np.arange(60)), [], DATA_PREPARATION,
                       "data check 'schema' failed: column 'x'"),
    }  # fmt: skip
    files = {}
    for name, (data, sets, stage, message) in cases.items():
        path = folder / f"{name}.csv"
        data.to_csv(path, index=False)
        files[name] = (str(path), sets, stage, message)
    (folder / "empty.csv").write_text("")
    files["empty_file"] = (
        str(folder / "empty.csv"),
        [],
        PREFLIGHT,
        "`data.path`: data check 'readable file' failed",
    )
    (folder / "garbage.parquet").write_bytes(b"not parquet at all")
    files["unreadable"] = (
        str(folder / "garbage.parquet"),
        [],
        PREFLIGHT,
        "`data.path`: data check 'readable file' failed",
    )
    return files


@pytest.fixture(scope="module")
def schema_for_bad_data(tmp_path_factory):
    """An explicit schema saying x is a number, so text in x is a wrong type."""
    folder = tmp_path_factory.mktemp("bad-data")
    (folder / "schema.yaml").write_text(
        "schema_type: dataframe\napi: pandas\ncoerce: true\ncolumns:\n"
        "  x: {dtype: float64, nullable: true}\n  y: {dtype: str, nullable: false}\n"
    )
    return folder


@pytest.mark.xdist_group("own-data")
@pytest.mark.parametrize(
    "case",
    [
        "no_target",
        "single_class",
        "empty_column",
        "too_few_rows",
        "wrong_type",
        "empty_file",
        "unreadable",
    ],
)
def test_bad_data_stops_before_the_run_or_in_data_preparation_naming_check_and_column(
    project_factory, schema_for_bad_data, case
):
    project = project_factory(task="classification", project_name="Own Data")
    path, sets, stage, message = bad_files(schema_for_bad_data)[case]
    overrides = [f"data.path={path}", "data.target=y", f"data.schema={schema_for_bad_data / 'schema.yaml'}",
                 "use_case.segments=[]", "use_case.positive_class=", *sets]  # fmt: skip
    done = project.cli(
        "pipeline", "--only", "02", *[a for s in overrides for a in ("--set", s)], check=False
    )
    assert done.returncode == 1, done.stdout
    assert stage in done.stderr and message in done.stderr
    if stage == PREFLIGHT:
        assert "Running" not in done.stdout
        return
    assert "Executed notebook, with the failed cell marked:" in done.stderr
    statuses = project.mlflow_query(
        """
        latest = max((r for r in runs if r.data.tags.get("kind") == "pipeline"), key=lambda r: r.info.start_time)
        children = {r.data.tags["mlflow.runName"]: r.info.status for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == latest.info.run_id}
        print(json.dumps([latest.info.status, children]))
        """
    )
    # 01 runs too: the run changes use_case settings, which 01 declares and hands on
    assert statuses == ["FAILED", {"01_use_case": "FINISHED", "02_data_preparation": "FAILED"}]


def mixed_csv(path) -> None:
    """Numeric and categorical columns, missing values, a string multiclass target."""
    wine = load_wine(as_frame=True)
    data = wine.frame.rename(columns={"target": "cultivar"})
    data["cultivar"] = np.array(["barbera", "grignolino", "nebbiolo"])[wine.target]
    rng = np.random.default_rng(0)
    data["vineyard"] = rng.choice(["north", "south", "east", None], len(data))
    data["id"] = np.arange(len(data))
    data.loc[rng.choice(len(data), 20, replace=False), "alcohol"] = np.nan
    data.to_csv(path, index=False)


@pytest.mark.xdist_group("own-data")
def test_pipeline_runs_on_a_mixed_multiclass_csv(project_factory):
    project = project_factory(task="classification", project_name="Own Data")
    mixed_csv(project.root / "data" / "wine.csv")
    sets = [
        "data.path=data/wine.csv", "data.target=cultivar", "data.id_column=id",
        "data.schema=build/wine-schema.yaml", "use_case.segments=[vineyard]",
        "use_case.positive_class=nebbiolo", "use_case.metric=f1", "use_case.threshold=0.8",
        "deployment.build_image=false",  # the image is built and tested on the smoked projects
    ]  # fmt: skip
    done = project.cli("pipeline", "--smoke", *[a for s in sets for a in ("--set", s)])
    assert "Pipeline finished" in done.stdout
    assert (project.root / "build" / "wine-schema.yaml").is_file(), "a missing schema is inferred"


@pytest.mark.xdist_group("regression")
def test_same_parameters_give_the_same_scores(project_factory):
    # The same project as the other regression tests (see conftest).
    project = project_factory(task="regression", project_name="Slow Regressor")
    started = int(time.time() * 1000)
    for _ in range(2):
        project.cli("pipeline", "--smoke", "--only", "01", "02", "03", "--set", "data.seed=11")
    scores = project.mlflow_query(
        f"""
        modelling = [r for r in runs if r.data.tags.get("mlflow.runName") == "03_modelling"
                     and r.info.start_time >= {started}]
        # every score, not the timings (search_seconds)
        print(json.dumps([{{k: v for k, v in r.data.metrics.items() if not k.endswith("_seconds")}}
                          for r in modelling]))
        """
    )
    assert len(scores) == 2 and scores[0] == scores[1] and scores[0]


def test_from_continues_with_what_the_last_run_handed_on(smoked_project):
    # The image is built and checked on the smoked run already; this is about the hand-over.
    done = smoked_project.cli(
        "pipeline", "--smoke", "--from", "03", "--set", "deployment.build_image=false"
    )
    assert "Continuing from" in done.stdout
    assert "[1/" in done.stdout and "03_modelling" in done.stdout
    assert "01_use_case" not in done.stdout.split("Continuing from")[1]


def test_tracking_uri_from_the_environment_wins(project, tmp_path):
    store = tmp_path / "elsewhere.db"
    project.cli("pipeline", "--only", "01", env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    assert store.is_file() and store.stat().st_size > 0


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_lab_serves_the_notebooks_with_the_project_kernel(project):
    port, token = free_port(), "slow-lane-token"
    command = [
        str(project.root / ".venv" / "bin" / project.slug), "lab", "--no-browser",
        f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
    ]  # fmt: skip
    server = subprocess.Popen(
        command,
        cwd=project.root,
        env=project.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, specs = get_json(f"{base}/api/kernelspecs?token={token}")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "JupyterLab did not answer within 60 s"
                time.sleep(0.5)
        assert status == 200 and project.slug in specs["kernelspecs"]
        _, listing = get_json(f"{base}/api/contents/notebooks?token={token}")
        assert "01_use_case.ipynb" in {item["name"] for item in listing["content"]}
        with pytest.raises(urllib.error.HTTPError) as refused:
            get_json(f"{base}/api/contents/notebooks")
        assert refused.value.code == 403
    finally:
        server.terminate()
        server.wait(timeout=30)
    left = subprocess.run(
        ["pgrep", "-f", f"ServerApp.port={port}"], capture_output=True, text=True, check=False
    )
    assert left.stdout == "", "stopping `lab` stops JupyterLab: it runs in the command's place"


# What a user cannot act on: Python warnings, MLflow's logged warnings, tqdm's missing widgets.
WARNING_SIGNS = re.compile(r"Warning\b|WARNING|IProgress not found")


def stderr_warnings(notebooks) -> dict[str, list[str]]:
    """Each executed notebook's stderr outputs that read as warnings."""
    found = {}
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        texts = [
            "".join(output["text"])
            for cell in cells
            for output in cell.get("outputs", [])
            if output.get("name") == "stderr"
        ]
        if warned := [text for text in texts if WARNING_SIGNS.search(text)]:
            found[path.name] = warned
    return found


def test_the_pipelines_notebooks_carry_no_warnings_and_the_card_no_placeholder(smoked_project):
    runs = [p for p in (smoked_project.root / "runs").glob("2*") if (p / "FINISHED").is_file()]
    executed = sorted(path for run in runs for path in run.glob("0*.ipynb"))
    assert {path.stem for path in executed} >= {"01_use_case", "05_deployment"}
    assert stderr_warnings(executed) == {}
    cards = [run / "model_card.md" for run in runs if (run / "model_card.md").is_file()]
    cards = [card.read_text() for card in cards]
    assert cards and all("TODO" not in card and "## Limitations" in card for card in cards)


@pytest.fixture(scope="module")
def opened_in_jupyterlab(project_factory, tmp_path_factory):
    """04 and 05 run after a smoke pipeline as JupyterLab runs them: each in a kernel of its own
    (the project's, named in the notebook), with none of the runner's environment."""
    project = project_factory(task="classification", project_name="Lab Session")
    project.cli("pipeline", "--smoke", "--set", "deployment.build_image=false")
    folder = tmp_path_factory.mktemp("opened")
    for name in ("04_evaluation", "05_deployment"):
        project.run(
            str(project.root / ".venv" / "bin" / "papermill"), f"notebooks/{name}.ipynb",
            str(folder / f"{name}.ipynb"), "--cwd", "notebooks",
            "-y", "deployment_build_image: false", "--no-progress-bar",
        )  # fmt: skip
    return project, folder


def test_notebooks_run_in_jupyterlab_are_told_apart_and_read_the_pipelines_outputs(
    opened_in_jupyterlab,
):
    project, folder = opened_in_jupyterlab
    state = project.mlflow_query(
        """
        pipeline = next(r for r in runs if r.data.tags.get("kind") == "pipeline")
        by_id = {r.info.run_id: r for r in runs}
        mine = [r for r in runs if r.data.tags.get("kind") == "interactive"]
        versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        print(json.dumps({
            "interactive": sorted(
                [r.info.run_name, r.info.status, r.data.tags.get("continues_from", ""),
                 by_id[r.data.tags["mlflow.parentRunId"]].data.tags.get("kind"),
                 by_id[r.data.tags["mlflow.parentRunId"]].info.status] for r in mine
            ),
            "run_dir": pipeline.data.tags["run_dir"],
            "versions": {v.version: {k: v.tags.get(k) for k in ("smoke", "kind", "pipeline_run_id")}
                         for v in versions},
            "champion_run": champion.tags.get("pipeline_run_id"),
            "pipeline": pipeline.info.run_id,
        }))
        """
    )
    run_dir = state["run_dir"]
    assert state["interactive"] == [
        ["04_evaluation (interactive)", "FINISHED", run_dir, "interactive-session", "FINISHED"],
        ["05_deployment (interactive)", "FINISHED", run_dir, "interactive-session", "FINISHED"],
    ], "tagged, named, grouped, and closed with their kernels"
    # 05 registered the smoke pipeline's model: a smoke model, not a pipeline run's registration,
    # so it cannot replace the champion the pipeline registered.
    assert sorted(state["versions"].values(), key=lambda v: v["pipeline_run_id"]) == [
        {"smoke": "true", "kind": "interactive", "pipeline_run_id": ""},
        {"smoke": "true", "kind": "pipeline", "pipeline_run_id": state["pipeline"]},
    ]
    assert state["champion_run"] == state["pipeline"]
    assert "marked KILLED: 0 run(s)" in project.cli("doctor").stdout, "no session left open"
    assert stderr_warnings(sorted(folder.glob("*.ipynb"))) == {}, "no warm kernel hides them"
