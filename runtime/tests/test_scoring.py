"""Batch scoring with the local engine, on a temporary store: a small pipeline (numbers, an integer
count, a categorical string) registered for each task as 03 and 05 register one, then scored from
CSV and Parquet, in chunks, and compared with what the serving app's /invocations answers for the
same rows. Each problem the job checks before scoring is planted once; a failure mid-way leaves no
output and no leftover; the MLflow run and the prediction log are read back.
"""

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skops.io
from fastapi.testclient import TestClient
from mlflow.models import infer_signature

from crisp_ml import cli, monitoring, scoring
from crisp_ml.registry import register
from crisp_ml.scoring import Request, ScoringError, tables
from crisp_ml.serving import export
from crisp_ml.serving.app import create_app
from crisp_ml.serving.integrity import RECORD_TAG, IntegrityError, sha256_file
from crisp_ml.serving.settings import Settings

NAME = "demo-ml-project"  # model_name in the test settings (conftest.SETTINGS)
FEATURES = ["size", "weight", "count", "colour"]

from .toy_models import pipeline, training_data


def register_version(client, task: str, alias: str | None = "champion") -> str:
    """A version as 03 logs and 05 registers it: skops, signature, example, integrity record."""
    X, labels, values = training_data()
    fitted = pipeline(task).fit(X, labels if task == "classification" else values)
    example = X.head(5)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            fitted, name="model", signature=infer_signature(example, fitted.predict(example)),
            input_example=example, pip_requirements=["scikit-learn"], metadata={"task": task},
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(fitted)),
        )  # fmt: skip
    record = export.seal(info.model_uri, fitted, X)
    version = str(register(client, info.model_uri, record, {}, "card", "run-1").version)
    if alias:
        client.set_registered_model_alias(NAME, alias, version)
    return version


@pytest.fixture(params=["classification", "regression"])
def task(request) -> str:
    return request.param


@pytest.fixture
def champion(client, task) -> str:
    return register_version(client, task)


def batch(n: int = 57, seed: int = 1) -> pd.DataFrame:
    X, _, _ = training_data(n, seed)
    X.insert(0, "customer", [f"c{i:04d}" for i in range(n)])
    X["note"] = "ignored"  # a column the model does not take is left alone
    X.loc[3, "size"] = np.nan  # a missing value goes to the imputer, as in a request
    X.loc[5, "colour"] = None
    return X


def run(tmp_path, source, output="out.parquet", **options) -> scoring.Outcome:
    options.setdefault("id_column", "customer")
    return scoring.score(
        Request(input=source, output=tmp_path / output, **options), echo=lambda line: None
    )


def invocations(version: str, rows: pd.DataFrame, folder: Path) -> dict:
    """What the serving app answers for these rows: /invocations, probabilities for classifiers."""
    bundle, _ = export.export_bundle(version, folder)
    with TestClient(create_app(bundle, Settings())) as client:
        values = rows[FEATURES].astype(object).where(rows[FEATURES].notna(), None)
        # json.dumps writes every float exactly (DataFrame.to_json keeps 10 digits)
        body = {"dataframe_split": {"columns": FEATURES, "data": values.to_numpy().tolist()}}
        classification = client.get("/metadata").json()["task"] == "classification"
        if classification:
            body["params"] = {"probabilities": True}
        answer = client.post("/invocations", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def assert_same_as_invocations(scored: pd.DataFrame, rows: pd.DataFrame, answer: dict, version):
    assert scored["customer"].tolist() == rows["customer"].tolist()
    assert (scored["model_version"] == version).all()
    if isinstance(answer["predictions"][0], float):
        np.testing.assert_allclose(scored["prediction"], answer["predictions"], rtol=1e-12)
    else:
        assert scored["prediction"].tolist() == answer["predictions"]
    for label in answer.get("probabilities", [{}])[0]:
        expected = [row[label] for row in answer["probabilities"]]
        np.testing.assert_allclose(scored[f"probability_{label}"], expected, rtol=1e-12)


# --- same answers as the server -------------------------------------------------------------------


def test_a_csv_scored_in_chunks_gives_the_answers_of_invocations(tmp_path, task, champion):
    rows = batch()
    rows.to_csv(tmp_path / "batch.csv", index=False)
    outcome = run(tmp_path, tmp_path / "batch.csv", chunk_rows=10)
    scored = pd.read_parquet(outcome.output)
    assert outcome.rows == len(rows) == len(scored)
    probabilities = [c for c in scored.columns if c.startswith("probability_")]
    assert probabilities == (["probability_no", "probability_yes"] if task == "classification"
                             else [])  # fmt: skip
    assert list(scored.columns) == ["customer", "prediction", *probabilities, "model_version"]
    assert_same_as_invocations(scored, rows, invocations(champion, rows, tmp_path / "b"), champion)


def test_a_parquet_folder_scored_to_csv_gives_the_same_rows(tmp_path, task, champion):
    rows = batch(80)
    folder = tmp_path / "parts"
    folder.mkdir()
    rows.iloc[:30].to_parquet(folder / "part-0.parquet")
    rows.iloc[30:].to_parquet(folder / "part-1.parquet")
    (folder / "_SUCCESS").touch()  # a Spark output folder reads as input
    outcome = run(tmp_path, folder, output="scores.csv", chunk_rows=16)
    scored = pd.read_csv(outcome.output, dtype={"customer": str, "model_version": str})
    assert_same_as_invocations(scored, rows, invocations(champion, rows, tmp_path / "b"), champion)


def test_a_folder_output_has_its_part_file_and_success_marker(tmp_path, champion):
    batch().to_parquet(tmp_path / "batch.parquet")
    outcome = run(tmp_path, tmp_path / "batch.parquet", output="scores")
    assert sorted(p.name for p in outcome.output.iterdir()) == ["_SUCCESS", "part-00000.parquet"]
    assert len(pd.read_parquet(outcome.output)) == 57


def test_without_an_id_column_rows_carry_their_row_number(tmp_path, champion):
    batch().drop(columns="customer").to_csv(tmp_path / "batch.csv", index=False)
    scored = pd.read_parquet(run(tmp_path, tmp_path / "batch.csv", id_column="").output)
    assert scored["row"].tolist() == list(range(57))


def test_chunk_size_does_not_change_the_predictions(tmp_path, champion):
    batch(200).to_parquet(tmp_path / "batch.parquet")
    one = pd.read_parquet(run(tmp_path, tmp_path / "batch.parquet", "one.parquet").output)
    many = pd.read_parquet(
        run(tmp_path, tmp_path / "batch.parquet", "many.parquet", chunk_rows=7).output
    )
    pd.testing.assert_frame_equal(one, many)


def test_memory_holds_one_chunk_at_a_time(tmp_path, champion, monkeypatch):
    batch(300).to_csv(tmp_path / "batch.csv", index=False)
    seen = []
    predict_chunk = scoring.predict_chunk

    def spy(model, chunk, *args):
        seen.append(chunk.num_rows)
        return predict_chunk(model, chunk, *args)

    monkeypatch.setattr(scoring, "predict_chunk", spy)
    run(tmp_path, tmp_path / "batch.csv", chunk_rows=64)
    assert seen == [64, 64, 64, 64, 44]


# --- which version ---------------------------------------------------------------------------------


def test_a_version_or_an_alias_can_be_named(tmp_path, client, champion, task):
    other = register_version(client, task, alias="challenger")
    batch().to_parquet(tmp_path / "batch.parquet")
    by_alias = run(tmp_path, tmp_path / "batch.parquet", "a.parquet", alias="challenger")
    by_number = run(tmp_path, tmp_path / "batch.parquet", "n.parquet", version=champion)
    assert (by_alias.model_version, by_number.model_version) == (other, champion)
    assert set(pd.read_parquet(by_alias.output)["model_version"]) == {other}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"version": "99"}, "no version 99"),
        ({"alias": "nightly"}, "no version with alias 'nightly'"),
    ],
)
def test_an_unknown_version_or_alias_names_the_versions_held(tmp_path, champion, options, expected):
    batch().to_parquet(tmp_path / "batch.parquet")
    with pytest.raises(ScoringError, match=expected) as raised:
        run(tmp_path, tmp_path / "batch.parquet", **options)
    assert f"versions held: {champion} [champion]" in str(raised.value)


def test_without_a_champion_the_error_says_to_run_the_pipeline(tmp_path, client, task):
    batch().to_parquet(tmp_path / "batch.parquet")
    with pytest.raises(ScoringError, match="Run the pipeline"):
        run(tmp_path, tmp_path / "batch.parquet")


def test_a_version_whose_files_changed_is_not_loaded(tmp_path, client, champion):
    record = json.loads(client.get_model_version(NAME, champion).tags[RECORD_TAG])
    record["files"]["model.skops"] = "0" * 64
    client.set_model_version_tag(NAME, champion, RECORD_TAG, json.dumps(record))
    batch().to_parquet(tmp_path / "batch.parquet")
    with pytest.raises(IntegrityError):
        run(tmp_path, tmp_path / "batch.parquet")
    assert not (tmp_path / "out.parquet").exists()


# --- checked before scoring ------------------------------------------------------------------------


def test_missing_columns_and_a_missing_id_are_named_together(tmp_path, champion):
    batch().drop(columns=["weight", "colour"]).to_csv(tmp_path / "batch.csv", index=False)
    with pytest.raises(ScoringError) as raised:
        run(tmp_path, tmp_path / "batch.csv", id_column="account")
    message = str(raised.value)
    assert "no id column 'account'" in message and "--id-column" in message
    assert "lacks columns 'weight', 'colour'" in message


def test_a_parquet_column_of_the_wrong_type_is_refused_before_scoring(tmp_path, champion):
    rows = batch()
    rows["size"] = rows["size"].astype(str)
    rows.to_parquet(tmp_path / "batch.parquet")
    with pytest.raises(ScoringError, match=r"column 'size' holds (large_)?string values.*double"):
        run(tmp_path, tmp_path / "batch.parquet")


@pytest.mark.parametrize("kind", ["csv", "parquet", "no header"])
def test_an_empty_input_is_refused(tmp_path, champion, kind):
    empty = batch().iloc[:0]
    path = tmp_path / f"empty.{'parquet' if kind == 'parquet' else 'csv'}"
    if kind == "parquet":
        empty.to_parquet(path)
    elif kind == "csv":
        empty.to_csv(path, index=False)
    else:
        path.write_text("")
    with pytest.raises(ScoringError, match=r"holds no rows|empty, without even a header"):
        run(tmp_path, path)


def test_an_input_that_is_neither_csv_nor_parquet_is_refused(tmp_path, champion):
    (tmp_path / "batch.json").write_text("{}")
    with pytest.raises(ScoringError, match=r"a \.csv or \.parquet file is needed"):
        run(tmp_path, tmp_path / "batch.json")


def test_an_existing_output_is_replaced_only_when_asked(tmp_path, champion):
    batch().to_parquet(tmp_path / "batch.parquet")
    (tmp_path / "out.parquet").write_text("yesterday's")
    with pytest.raises(ScoringError, match="--overwrite"):
        run(tmp_path, tmp_path / "batch.parquet")
    assert (tmp_path / "out.parquet").read_text() == "yesterday's"
    run(tmp_path, tmp_path / "batch.parquet", overwrite=True)
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 57


# --- no half-written output ------------------------------------------------------------------------


def test_a_bad_value_deep_in_a_csv_leaves_no_output_and_no_leftover(tmp_path, champion):
    rows = batch(3000).astype({"size": object})
    rows.loc[2900, "size"] = "twelve"
    rows.to_csv(tmp_path / "batch.csv", index=False)
    with pytest.raises(ScoringError, match=r"CSV column 'size'.*twelve"):
        run(tmp_path, tmp_path / "batch.csv", chunk_rows=100)
    assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == []


def test_infinity_is_refused_with_its_row(tmp_path, champion):
    rows = batch()
    rows.loc[40, "weight"] = np.inf
    rows.to_parquet(tmp_path / "batch.parquet")
    with pytest.raises(ScoringError, match="'weight' holds inf in row 40"):
        run(tmp_path, tmp_path / "batch.parquet", chunk_rows=16)
    assert not any("out" in p.name for p in tmp_path.iterdir())


def test_a_job_interrupted_mid_way_leaves_nothing_that_looks_complete(
    tmp_path, champion, monkeypatch
):
    batch(200).to_parquet(tmp_path / "batch.parquet")
    predict_chunk, calls = scoring.predict_chunk, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as SIGTERM arrives (the job turns it into this)
        return predict_chunk(*args)

    monkeypatch.setattr(scoring, "predict_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tmp_path / "batch.parquet", output="scores", chunk_rows=50,
            prediction_log=tmp_path / "log.jsonl")  # fmt: skip
    assert not any(
        p.name.startswith((".scores", "scores", ".log", "log")) for p in tmp_path.iterdir()
    )
    failed = mlflow.search_runs(filter_string="tags.kind = 'scoring'", output_format="list")
    assert [r.info.status for r in failed] == ["KILLED"]


# --- what the job records ----------------------------------------------------------------------------


def test_the_mlflow_run_holds_digests_counts_timing_and_version(tmp_path, champion):
    batch().to_csv(tmp_path / "batch.csv", index=False)
    outcome = run(tmp_path, tmp_path / "batch.csv")
    logged = mlflow.get_run(outcome.run_id).data
    assert logged.tags["kind"] == "scoring" and logged.tags["model_version"] == champion
    assert logged.tags["input_digest"] == sha256_file(tmp_path / "batch.csv")
    assert logged.tags["output_digest"] == sha256_file(outcome.output)
    assert logged.metrics["rows"] == 57 and logged.metrics["seconds"] > 0
    assert logged.metrics["rows_per_second"] > 0
    assert logged.params["id_column"] == "customer" and logged.params["engine"] == "local"


def test_the_prediction_log_is_one_06_reads_as_traffic(tmp_path, champion, task):
    rows = batch()
    rows.to_parquet(tmp_path / "batch.parquet")
    log = tmp_path / "logs" / "batch.jsonl"
    run(tmp_path, tmp_path / "batch.parquet", prediction_log=log, chunk_rows=20)
    run(tmp_path, tmp_path / "batch.parquet", output="again.parquet", prediction_log=log)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2 * len(rows)
    first = lines[0]
    assert first["endpoint"] == "score" and first["model_version"] == champion
    assert first["inputs"]["customer"] == "c0000" and set(first["inputs"]) == {
        "customer",
        *FEATURES,
    }
    assert ("probabilities" in first) == (task == "classification")
    judged = monitoring.read_prediction_log(str(log), champion)
    assert len(judged) == 2 * len(rows)
    assert judged["customer"].tolist()[: len(rows)] == rows["customer"].tolist()


def test_spark_without_an_id_column_is_refused_before_spark_starts(tmp_path, champion):
    batch().to_parquet(tmp_path / "batch.parquet")
    with pytest.raises(ScoringError, match="Spark engine needs an id column"):
        run(tmp_path, tmp_path / "batch.parquet", id_column="", engine="spark")


# --- the command line --------------------------------------------------------------------------------


def test_the_command_scores_with_the_id_column_of_params(tmp_path, champion, capsys):
    (tmp_path / "params.yaml").write_text("data:\n  id_column: ''\n")
    batch().to_csv(tmp_path / "batch.csv", index=False)
    out = tmp_path / "scores.csv"
    code = cli.main(["score", str(tmp_path / "batch.csv"), "--output", str(out),
                     "--set", "data.id_column=customer"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"Scored 57 rows with {NAME} version {champion}" in printed.out
    assert pd.read_csv(out)["customer"].iloc[0] == "c0000"


def test_the_command_fails_with_the_message_and_status_1(tmp_path, champion, capsys):
    batch().drop(columns="size").to_csv(tmp_path / "batch.csv", index=False)
    code = cli.main(["score", str(tmp_path / "batch.csv"), "-o", str(tmp_path / "o.parquet"),
                     "--id-column", "customer"])  # fmt: skip
    assert code == 1
    assert "lacks column 'size'" in capsys.readouterr().err
    assert os.listdir(tmp_path).count("o.parquet") == 0


def test_a_chunk_is_converted_as_the_server_converts_a_request(champion):
    """An integer column with a gap becomes float64 with NaN, text keeps None: schema.check's."""
    from crisp_ml.serving.model import Column

    chunk = pa.record_batch({"n": pa.array([1, None, 3]), "s": pa.array(["a", None, "c"])})
    arrays = tables.to_arrays(chunk, [Column("n", "long"), Column("s", "string")], offset=0)
    assert arrays["n"].dtype == np.float64 and np.isnan(arrays["n"][1])
    assert arrays["s"].tolist() == ["a", None, "c"]
    with pytest.raises(tables.TableError, match="cannot be read as long in row 1"):
        tables.to_arrays(
            pa.record_batch({"n": pa.array([1.0, 2.5])}), [Column("n", "long")], offset=0
        )


def test_output_parquet_schema_is_fixed_by_the_model(tmp_path, champion, task):
    batch().to_csv(tmp_path / "batch.csv", index=False)
    schema = pq.read_schema(run(tmp_path, tmp_path / "batch.csv").output)
    assert schema.field("customer").type == pa.string()
    expected = pa.string() if task == "classification" else pa.float64()
    assert schema.field("prediction").type == expected
