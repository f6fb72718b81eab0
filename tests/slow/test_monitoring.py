"""Monitoring of a generated project, run for real.

On the smoked project of each task: `serve` with the prediction log on, the champion's test set sent
as traffic, then `make monitor` judges the logged rows ok (exit 0). The documented drift demo writes
a shifted batch, which `monitor` judges retrain (exit 4); a batch with a missing and an unknown
column is an error (exit 1) naming both. Each verdict is an MLflow run linked to the model version.
With the run folder gone, the training data comes from the copy 02 logged with its MLflow run.
"""

from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXIT = {"ok": 0, "error": 1, "warn": 3, "retrain": 4}  # the generated README's table
MAX_REQUESTS = 500  # the test set of a smoke run has 40 rows; a bound, whatever it holds


def champion_test_rows(project) -> list[dict]:
    """The champion's held-out test rows, inputs only, as the monitoring reference finds them."""
    return project.python_json(
        """
        import json
        from crisp_ml.monitoring import monitored_version, reference_sets
        from crisp_ml.tracking import client
        mlflow_client = client()
        test = reference_sets(mlflow_client, monitored_version(mlflow_client)).test
        target = "diagnosis" if "diagnosis" in test.columns else "progression"
        print(json.dumps(test.drop(columns=[target]).to_dict(orient="records")))
        """
    )


def send(url: str, rows: list[dict]) -> int:
    """One request per row, each with its own request id, as a client would send them."""
    for number, row in enumerate(rows[:MAX_REQUESTS]):
        request = urllib.request.Request(
            f"{url}/predict", data=json.dumps({"rows": [row]}).encode(), method="POST",
            headers={"Content-Type": "application/json", "X-Request-ID": f"slow-{number}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    return min(len(rows), MAX_REQUESTS)


def monitoring_runs(project) -> dict:
    """The monitoring runs, oldest first, and the champion's tags."""
    return project.mlflow_query(
        """
        found = sorted(
            (r for r in runs if r.data.tags.get("kind") == "monitoring"),
            key=lambda r: r.info.start_time,
        )
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        print(json.dumps({
            "runs": [
                {"tags": r.data.tags, "status": r.info.status, "metrics": r.data.metrics,
                 "artifacts": [a.path for a in client.list_artifacts(r.info.run_id)]}
                for r in found
            ],
            "champion": {"version": str(champion.version), "tags": champion.tags},
        }))
        """
    )


@pytest.fixture(scope="module")
def judged(smoked_project):
    """The smoked project after served traffic and the shifted demo batch were each judged."""
    project = smoked_project
    log = project.root / "logs" / "predictions.jsonl"
    log.parent.mkdir(exist_ok=True)
    log.unlink(missing_ok=True)
    rows = champion_test_rows(project)
    with project.serving(env={"PREDICTION_LOG": str(log)}) as url:
        sent = send(url, rows)
    logged = log.read_text().splitlines()
    unshifted = project.make("monitor", check=False)
    project.cli("monitor", "--shifted-batch", "data/shifted.csv")
    shifted = project.cli(
        "monitor", "--set", "monitoring.current_path=data/shifted.csv", check=False
    )
    return {"sent": sent, "logged": logged, "unshifted": unshifted, "shifted": shifted,
            "project": project}  # fmt: skip


def outputs(done) -> str:
    return f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"


def test_served_traffic_lands_in_the_prediction_log(judged):
    assert judged["sent"] > 0
    assert len(judged["logged"]) == judged["sent"], "one line per predicted row"
    first = json.loads(judged["logged"][0])
    assert first["request_id"] == "slow-0" and first["inputs"] and "prediction" in first


def test_make_monitor_judges_unshifted_traffic_ok(judged):
    done = judged["unshifted"]
    assert done.returncode == EXIT["ok"], outputs(done)
    assert "Verdict: ok" in done.stdout
    assert "exit status 0 (ok)" in done.stdout


def test_the_shifted_demo_batch_is_judged_retrain(judged):
    done = judged["shifted"]
    assert done.returncode == EXIT["retrain"], outputs(done)
    assert "Verdict: retrain" in done.stdout
    assert "features shifted majorly" in done.stdout
    assert "exit status 4 (retrain)" in done.stdout


def test_each_verdict_is_a_run_linked_to_the_model_version(judged):
    state = monitoring_runs(judged["project"])
    ok, retrain = state["runs"][-2:]
    champion = state["champion"]
    for run, verdict in ((ok, "ok"), (retrain, "retrain")):
        assert run["status"] == "FINISHED"
        assert run["tags"]["verdict"] == verdict
        assert run["tags"]["model_version"] == champion["version"]
        assert {"verdict.json", "drift.csv", "prediction_drift.png"} <= set(run["artifacts"])
        assert run["metrics"]["exit_code"] == EXIT[verdict]
    assert "drift.png" in retrain["artifacts"], "the shifted features' distributions"
    assert retrain["metrics"]["features_shifted_major"] > 0
    assert ok["tags"]["monitoring.source"].startswith("prediction log")
    assert champion["tags"]["monitoring_verdict"] == "retrain"
    assert champion["tags"]["monitoring_run_id"]


def test_a_batch_that_does_not_fit_the_model_is_a_clear_error(judged):
    project = judged["project"]
    with (project.root / "data" / "shifted.csv").open() as file:
        rows = list(csv.DictReader(file))
    dropped = next(iter(rows[0]))
    kept = [{**{k: v for k, v in row.items() if k != dropped}, "extra": "1"} for row in rows]
    with (project.root / "data" / "bad.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    done = project.cli("monitor", "--set", "monitoring.current_path=data/bad.csv", check=False)
    assert done.returncode == EXIT["error"], outputs(done)
    assert f"missing columns ['{dropped}']" in done.stderr
    assert "unknown columns ['extra']" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_reference_is_downloaded_when_the_run_folder_is_gone(judged):
    """As on a machine that did not train the model, or after `make clean`."""
    project = judged["project"]
    run_dir = project.mlflow_query(
        """
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        print(json.dumps(client.get_run(champion.tags["pipeline_run_id"]).data.tags["run_dir"]))
        """
    )
    data = Path(run_dir) / "data"
    hidden = data.with_name("data-hidden")
    data.rename(hidden)
    try:
        done = project.cli(
            "monitor", "--set", "monitoring.current_path=data/shifted.csv", check=False
        )
    finally:
        hidden.rename(data)
    assert done.returncode == EXIT["retrain"], outputs(done)
    newest = monitoring_runs(project)["runs"][-1]
    assert "/runs/monitoring/reference/" in newest["tags"]["monitoring.reference"]


def test_retrain_flag_runs_the_pipeline_when_the_verdict_says_so(judged):
    """`monitor --retrain` on the shifted batch: the verdict is still the exit status, and a new
    pipeline run (smoke, no image: both are tested elsewhere) follows it."""
    project = judged["project"]
    if project.options["task"] != "classification":
        pytest.skip("the same code path for both tasks; run once to keep the slow lane short")
    before = pipeline_runs(project)
    done = project.cli(
        "monitor", "--retrain", "--smoke", "--set", "monitoring.current_path=data/shifted.csv",
        "--set", "deployment.build_image=false", check=False,
    )  # fmt: skip
    assert done.returncode == EXIT["retrain"], outputs(done)
    assert "Retraining (--retrain): running the pipeline" in done.stdout
    assert "Pipeline finished" in done.stdout
    after = pipeline_runs(project)
    assert len(after) == len(before) + 1 and after[-1] == "FINISHED"


def pipeline_runs(project) -> list[str]:
    """Statuses of the pipeline runs, oldest first."""
    return project.mlflow_query(
        """
        found = sorted((r for r in runs if r.data.tags.get("kind") == "pipeline"),
                       key=lambda r: r.info.start_time)
        print(json.dumps([r.info.status for r in found]))
        """
    )
