"""Batch scoring in a generated project, run for real, for each task.

On the smoked project: the champion's test rows, with an id column, as CSV and Parquet. `make
score` (local engine, in chunks) must answer as the running server's /invocations answers for the
same rows; the job is an MLflow run; its prediction log is one 06 judges. The Spark engine (pyspark
from the runtime's `spark` extra, Java from the system) must give the same rows on `local[2]`, and
for classification on a standalone cluster of one master and two workers on loopback, started and
stopped here (how rows travel to executors does not depend on the task). A missing column is
refused before scoring; a job killed mid-way leaves nothing under the output's name.

Spark tests are skipped, loudly, only where Java is missing or pyspark cannot be installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ports import free_port

pytestmark = pytest.mark.slow

ID = "visit"


def loud_skip(message: str) -> None:
    print(f"\n{'!' * 80}\n{message}\n{'!' * 80}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def batch(smoked_project, tmp_path_factory) -> dict:
    """The champion's test rows with an id, as CSV and Parquet, and what /invocations answers."""
    project = smoked_project
    folder = tmp_path_factory.mktemp("scoring")
    split = project.python_json(
        """
        import json
        from crisp_ml.monitoring import monitored_version, reference_sets
        from crisp_ml.tracking import client
        mlflow_client = client()
        test = reference_sets(mlflow_client, monitored_version(mlflow_client)).test
        target = "diagnosis" if "diagnosis" in test.columns else "progression"
        print(json.dumps(test.drop(columns=[target]).to_dict(orient="split")))
        """
    )
    rows = pd.DataFrame(split["data"], columns=split["columns"])
    rows.insert(0, ID, [f"v{i:04d}" for i in range(len(rows))])
    rows.to_csv(folder / "batch.csv", index=False)
    rows.to_parquet(folder / "batch.parquet")
    with project.serving() as url:
        answer = invocations(url, rows.drop(columns=ID))
    return {"project": project, "folder": folder, "rows": rows, "answer": answer}


def invocations(url: str, rows: pd.DataFrame) -> dict:
    values = rows.astype(object).where(rows.notna(), None).to_numpy().tolist()
    body = {"dataframe_split": {"columns": list(rows.columns), "data": values}}
    request = urllib.request.Request(
        f"{url}/invocations?probabilities=true", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        if b"regression model has no probabilities" not in error.read():
            raise
    request.full_url = f"{url}/invocations"
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def read_output(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype={ID: str, "model_version": str})
    else:
        frame = pd.read_parquet(path)
    return frame.sort_values(ID).reset_index(drop=True)


def assert_answers(scored: pd.DataFrame, batch: dict) -> None:
    """The rows /invocations answered, by id, whatever order the engine wrote them in."""
    rows, answer = batch["rows"], batch["answer"]
    assert scored[ID].tolist() == sorted(rows[ID])
    order = np.argsort(rows[ID].to_numpy())
    predictions = np.asarray(answer["predictions"], dtype=object)[order]
    if isinstance(answer["predictions"][0], float):
        np.testing.assert_allclose(scored["prediction"].astype(float), predictions.astype(float),
                                   rtol=1e-9)  # fmt: skip
    else:
        assert scored["prediction"].astype(str).tolist() == [str(p) for p in predictions]
    for label in (answer.get("probabilities") or [{}])[0]:
        expected = np.array([row[label] for row in answer["probabilities"]])[order]
        np.testing.assert_allclose(scored[f"probability_{label}"], expected, rtol=1e-9)
    assert scored["model_version"].astype(str).nunique() == 1


# --- the local engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_scored(batch) -> dict:
    project, folder = batch["project"], batch["folder"]
    log = folder / "batch.jsonl"
    done = project.make(
        "score",
        f"{folder / 'batch.csv'} --output {folder / 'local.parquet'} --id-column {ID} "
        f"--chunk-rows 7 --prediction-log {log}",
    )
    return {**batch, "done": done, "log": log}


def test_make_score_answers_as_invocations_for_the_same_rows(local_scored):
    assert_answers(read_output(local_scored["folder"] / "local.parquet"), local_scored)
    rows = len(local_scored["rows"])
    assert f"Scored {rows} rows" in local_scored["done"].stdout


def test_a_parquet_input_scored_to_csv_gives_the_same_rows(local_scored):
    project, folder = local_scored["project"], local_scored["folder"]
    project.cli("score", str(folder / "batch.parquet"), "-o", str(folder / "local.csv"),
                "--id-column", ID)  # fmt: skip
    assert_answers(read_output(folder / "local.csv"), local_scored)


def test_the_job_is_an_mlflow_run_with_digests_rows_and_version(local_scored):
    found = local_scored["project"].mlflow_query(
        """
        scoring = [r for r in runs if r.data.tags.get("kind") == "scoring"]
        first = min(scoring, key=lambda r: r.info.start_time)
        print(json.dumps({"tags": first.data.tags, "metrics": first.data.metrics,
                          "status": first.info.status}))
        """
    )
    assert found["status"] == "FINISHED"
    assert found["metrics"]["rows"] == len(local_scored["rows"])
    assert found["metrics"]["rows_per_second"] > 0
    digest = __import__("hashlib").sha256((local_scored["folder"] / "batch.csv").read_bytes())
    assert found["tags"]["input_digest"] == digest.hexdigest()
    assert len(found["tags"]["output_digest"]) == 64 and found["tags"]["model_version"]


def test_06_judges_the_batch_from_its_prediction_log(local_scored):
    project, log = local_scored["project"], local_scored["log"]
    assert len(log.read_text().splitlines()) == len(local_scored["rows"])
    done = project.cli(
        "monitor", "--set", f"monitoring.prediction_log={log}", "--set",
        f"monitoring.id_column={ID}", check=False,
    )  # fmt: skip
    # the champion's own test rows: no drift, as when they are served (test_monitoring.py)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Verdict: ok" in done.stdout


def test_a_missing_column_is_refused_before_scoring(batch):
    project, folder = batch["project"], batch["folder"]
    dropped = batch["rows"].columns[3]
    batch["rows"].drop(columns=dropped).to_csv(folder / "short.csv", index=False)
    done = project.cli("score", str(folder / "short.csv"), "-o", str(folder / "short.parquet"),
                       "--id-column", ID, check=False)  # fmt: skip
    assert done.returncode == 1
    assert f"lacks column '{dropped}'" in done.stderr
    assert not (folder / "short.parquet").exists()


def test_a_job_killed_mid_way_leaves_nothing_under_the_output_name(batch):
    project, folder = batch["project"], batch["folder"]
    big = pd.concat([batch["rows"]] * 2500, ignore_index=True)  # ~100k rows
    big[ID] = [f"r{i}" for i in range(len(big))]
    big.to_parquet(folder / "big.parquet")
    output = folder / "killed.parquet"
    command = [str(project.root / ".venv" / "bin" / project.slug), "score",
               str(folder / "big.parquet"), "-o", str(output), "--id-column", ID,
               "--chunk-rows", "200"]  # fmt: skip
    job = subprocess.Popen(command, cwd=project.root, env=project.env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(folder.glob(".killed.parquet.partial-*")):
            assert job.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "the job never started writing"
            time.sleep(0.05)
        time.sleep(0.5)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(timeout=60)
    assert not output.exists()
    leftovers = [p.name for p in folder.iterdir() if "killed" in p.name]
    assert leftovers and all(".partial-" in name and name.startswith(".") for name in leftovers)
    project.cli(*command[1:])  # a leftover does not stand in the next job's way
    assert len(pd.read_parquet(output)) == len(big)


# --- the Spark engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark_ready(batch) -> dict:
    """The project with the runtime's `spark` extra installed, or a loud skip saying what lacks."""
    project = batch["project"]
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        loud_skip("NO JAVA: Spark scoring tests SKIPPED. `.ci/run` installs default-jre-headless.")
    wheel = next((project.root / "vendor").glob("*.whl"))
    done = subprocess.run(
        ["uv", "pip", "install", "--python", str(project.python), f"{wheel}[spark]"],
        cwd=project.root, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        loud_skip(f"PYSPARK NOT INSTALLABLE: Spark scoring tests SKIPPED.\n{done.stderr[-1500:]}")
    return batch


def spark_score(batch: dict, source: str, output: str, *extra: str) -> Path:
    project, folder = batch["project"], batch["folder"]
    project.cli("score", str(folder / source), "-o", str(folder / output), "--id-column", ID,
                "--engine", "spark", *extra, timeout=900)  # fmt: skip
    return folder / output


def test_spark_local_2_gives_the_rows_of_invocations(spark_ready):
    out = spark_score(spark_ready, "batch.csv", "spark-local", "--spark-master", "local[2]")
    assert (out / "_SUCCESS").is_file()
    assert_answers(read_output_folder(out), spark_ready)
    single = spark_score(spark_ready, "batch.parquet", "spark-local.csv", "--spark-master",
                         "local[2]")  # fmt: skip
    assert_answers(read_output(single), spark_ready)


def read_output_folder(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder).sort_values(ID).reset_index(drop=True)


@pytest.fixture(scope="module")
def spark_cluster(spark_ready, tmp_path_factory) -> Iterator[str]:
    """A standalone Spark cluster on loopback: one master, two one-core workers; all stopped."""
    project = spark_ready["project"]
    home = Path(project.python_json("import json, os, pyspark; "
                                    "print(json.dumps(os.path.dirname(pyspark.__file__)))"))  # fmt: skip
    logs = tmp_path_factory.mktemp("spark-cluster")
    env = project.env({"SPARK_HOME": str(home), "SPARK_LOG_DIR": str(logs),
                       "PYSPARK_PYTHON": str(project.python)})  # fmt: skip
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    processes = []

    def start(name: str, *args: str) -> subprocess.Popen:
        with (logs / f"{name}.log").open("w") as sink:
            process = subprocess.Popen(
                [str(home / "bin" / "spark-class"), *args], env=env, stdout=sink,
                stderr=subprocess.STDOUT, start_new_session=True,  # its own group: killed whole
            )  # fmt: skip
        processes.append(process)
        return process

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
              "--port", str(port), "--webui-port", str(free_port()))  # fmt: skip
        wait_for(logs / "master.log", "I have been elected leader", processes)
        for n in (1, 2):
            start(f"worker{n}", "org.apache.spark.deploy.worker.Worker", url, "--host",
                  "127.0.0.1", "--cores", "1", "--memory", "1g", "--webui-port",
                  str(free_port()), "--work-dir", str(logs / f"work{n}"))  # fmt: skip
        for n in (1, 2):
            wait_for(logs / f"worker{n}.log", "Successfully registered with master", processes)
        yield url
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for(log: Path, text: str, processes: list, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while text not in (log.read_text() if log.exists() else ""):
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            pytest.fail(f"{log.name} never said {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def test_a_standalone_cluster_gives_the_rows_of_invocations(spark_ready, request):
    """Executors in other processes score what local[2] scores in one: the task changes the
    rows (tested above for both), not how they travel, so it runs once."""
    if spark_ready["project"].options["task"] != "classification":
        pytest.skip("the same code path for both tasks; run once to keep the slow lane short")
    cluster = request.getfixturevalue("spark_cluster")  # started only where the test runs
    out = spark_score(spark_ready, "batch.parquet", "spark-cluster", "--spark-master",
                      cluster, "--spark-conf", "spark.driver.host=127.0.0.1",
                      "--spark-conf", "spark.executor.memory=512m")  # fmt: skip
    assert (out / "_SUCCESS").is_file()
    assert_answers(read_output_folder(out), spark_ready)
