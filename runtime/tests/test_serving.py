"""The serving app in-process, against a real model saved the way 03_modelling logs it.

A small scikit-learn pipeline (numbers, an integer count and a categorical string, with the same
preprocessing as the project's) is trained here for each task and saved with MLflow's sklearn
flavour in skops format; the app must answer as MLflow's own pyfunc does, refuse every bad request
with a JSON 4xx naming the problem, and keep answering afterwards.
"""

import errno
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from fastapi.testclient import TestClient

from crisp_ml.serving import bundle as bundle_files
from crisp_ml.serving import predlog
from crisp_ml.serving.app import create_app
from crisp_ml.serving.integrity import Record
from crisp_ml.serving.model import ModelLoadError
from crisp_ml.serving.settings import Settings

PACKAGE = "crisp_ml"  # the runtime, whose serving modules the image runs
TASKS = ["classification", "regression"]

from .toy_models import PROVENANCE, pipeline, save_bundle, training_data


@pytest.fixture(scope="module", params=TASKS)
def task(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def saved(tmp_path_factory, task):
    """(bundle folder, X, fitted pipeline): the model saved as MLflow saves it, with a manifest."""
    X, labels, values = training_data()
    model = pipeline(task).fit(X, labels if task == "classification" else values)
    return save_bundle(tmp_path_factory.mktemp(f"bundle-{task}"), model, X, task), X, model


@pytest.fixture(scope="module")
def client(saved):
    with TestClient(create_app(saved[0], Settings())) as test_client:
        yield test_client


def split(X: pd.DataFrame) -> dict:
    return {"columns": list(X.columns), "data": X.to_numpy().tolist()}


def records(X: pd.DataFrame) -> list[dict]:
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in X.to_dict("records")
    ]


def pyfunc_predictions(bundle, X: pd.DataFrame, monkeypatch) -> list:
    """What MLflow itself predicts for X with the same model folder."""
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # our own test model
    predictions = mlflow.pyfunc.load_model(str(bundle / bundle_files.MODEL_DIR)).predict(X)
    return np.asarray(predictions).tolist()


# --- endpoints -------------------------------------------------------------------------------------


def test_ping_and_health_answer_once_loaded(client):
    for path in ("/ping", "/health"):
        assert client.get(path).status_code == 200


def test_version_and_metadata_come_from_the_manifest(client, saved, task):
    version = client.get("/version").json()
    assert version["model_name"] == "test-model" and version["model_version"] == "7"
    metadata = client.get("/metadata").json()
    assert metadata["model"] == PROVENANCE
    assert metadata["task"] == task
    assert metadata["model_card"].startswith("# Test model")
    assert [c["name"] for c in metadata["signature"]] == ["size", "weight", "count", "colour"]
    assert {c["type"] for c in metadata["signature"]} == {"double", "long", "string"}
    assert set(metadata["files"]) >= {"MLmodel", "model.skops"} and metadata["signed"] is False
    assert str(saved[0]) not in json.dumps(metadata), "no local path is shown"


@pytest.mark.parametrize(
    "form", ["dataframe_split", "dataframe_records", "instances", "inputs", "inputs_columns", "csv"]
)
def test_every_request_format_answers_as_mlflow_does(client, saved, form, monkeypatch):
    bundle, X, _ = saved
    rows = X.sample(10, random_state=1)
    expected = pyfunc_predictions(bundle, rows, monkeypatch)
    if form == "csv":
        answer = client.post(
            "/invocations", content=rows.to_csv(index=False), headers={"Content-Type": "text/csv"}
        )
    else:
        payload = {
            "dataframe_split": split(rows),
            "dataframe_records": records(rows),
            "instances": records(rows),
            "inputs": records(rows),
            "inputs_columns": {c: rows[c].tolist() for c in rows.columns},
        }[form]
        key = "inputs" if form == "inputs_columns" else form
        answer = client.post("/invocations", json={key: payload})
    assert answer.status_code == 200, answer.text
    assert same(answer.json()["predictions"], expected)


def same(got: list, expected: list) -> bool:
    return got == (pytest.approx(expected) if isinstance(expected[0], float) else expected)


def test_mlflow_clients_work_unchanged(client, saved, monkeypatch):
    """The body MLflow's scoring client sends, and its parser on our answer."""
    from mlflow.deployments import PredictionsResponse
    from mlflow.utils.proto_json_utils import dump_input_data

    bundle, X, _ = saved
    rows = X.head(6)
    body = dump_input_data(rows)  # what ScoringServerClient.invoke posts
    answer = client.post("/invocations", content=body, headers=JSON_TYPE)
    assert answer.status_code == 200, answer.text
    predictions = PredictionsResponse.from_json(answer.text).get_predictions(
        predictions_format="ndarray"
    )
    assert same(predictions.tolist(), pyfunc_predictions(bundle, rows, monkeypatch))


def test_column_order_does_not_matter(client, saved):
    _, X, model = saved
    shuffled = X.head(4)[["colour", "count", "weight", "size"]]
    answer = client.post("/invocations", json={"dataframe_split": split(shuffled)})
    assert same(answer.json()["predictions"], model.predict(X.head(4)).tolist())


def test_nan_in_a_text_column_is_a_missing_value(client, saved):
    """MLflow writes a missing category as NaN in input examples; JSON null means the same."""
    _, X, model = saved
    rows = X.head(2).astype({"colour": object})
    rows.loc[rows.index[0], "colour"] = np.nan
    expected = model.predict(rows).tolist()  # imputed, as in training
    body = json.dumps({"dataframe_split": split(rows)})  # the NaN token, as MLflow writes it
    assert "NaN" in body
    answer = client.post("/invocations", content=body, headers=JSON_TYPE)
    assert answer.status_code == 200, answer.text
    assert same(answer.json()["predictions"], expected)


def test_one_row_as_inputs_object(client, saved):
    _, X, _ = saved
    answer = client.post("/invocations", json={"inputs": records(X.head(1))[0]})
    assert answer.status_code == 200
    assert len(answer.json()["predictions"]) == 1


def test_classifier_probabilities_on_request(client, saved, task):
    _, X, model = saved
    rows = X.head(5)
    for url, body in [
        ("/invocations?probabilities=true", {"dataframe_split": split(rows)}),
        ("/invocations", {"dataframe_split": split(rows), "params": {"probabilities": True}}),
    ]:
        answer = client.post(url, json=body)
        if task == "regression":
            assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER"
            continue
        probabilities = answer.json()["probabilities"]
        expected = model.predict_proba(rows)
        got = np.array([[p[str(c)] for c in model.classes_] for p in probabilities])
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    plain = client.post("/invocations", json={"dataframe_split": split(rows)}).json()
    assert set(plain) == {"predictions"}  # MLflow's shape unless asked


def test_typed_predict_endpoint(client, saved, task):
    _, X, model = saved
    rows = X.head(3)
    answer = client.post("/predict", json={"rows": records(rows)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == "7"
    predictions = [p["prediction"] for p in body["predictions"]]
    if task == "classification":
        assert predictions == model.predict(rows).tolist()
        for p in body["predictions"]:
            assert sum(p["probabilities"].values()) == pytest.approx(1.0)
    else:
        assert predictions == pytest.approx(model.predict(rows).tolist())
        assert all(p["probabilities"] is None for p in body["predictions"])


def test_openapi_request_schema_is_generated_from_the_signature(client):
    spec = client.get("/openapi.json").json()
    row = spec["components"]["schemas"]["Row"]
    assert set(row["properties"]) == {"size", "weight", "count", "colour"}
    assert set(row["required"]) == {"size", "weight", "count", "colour"}
    assert row["additionalProperties"] is False
    count = row["properties"]["count"]
    assert count.get("type") == "integer" or any(
        t.get("type") == "integer" for t in count.get("anyOf", [])
    )


# --- every refusal is a JSON 4xx naming the problem, and the server keeps answering ---------------

ROW = {"size": 10.0, "weight": 50.0, "count": 3, "colour": "red"}
JSON_TYPE = {"Content-Type": "application/json"}
REFUSALS = {
    "missing column": (
        {"dataframe_records": [{k: v for k, v in ROW.items() if k != "size"}]},
        400,
        "SCHEMA_MISMATCH",
        "size",
    ),
    "unknown column": (
        {"dataframe_records": [{**ROW, "height": 1.0}]},
        400,
        "SCHEMA_MISMATCH",
        "height",
    ),
    "string for a number": (
        {"dataframe_records": [{**ROW, "size": "big"}]},
        400,
        "INVALID_VALUE",
        "size",
    ),
    "bool for a number": (
        {"dataframe_records": [{**ROW, "weight": True}]},
        400,
        "INVALID_VALUE",
        "weight",
    ),
    "float for an integer": (
        {"dataframe_records": [{**ROW, "count": 2.5}]},
        400,
        "INVALID_VALUE",
        "count",
    ),
    "number for a string": (
        {"dataframe_records": [{**ROW, "colour": 3}]},
        400,
        "INVALID_VALUE",
        "colour",
    ),
    "integer too large": (
        {"dataframe_records": [{**ROW, "count": 2**70}]},
        400,
        "INVALID_VALUE",
        "count",
    ),
    "rows disagree": ({"dataframe_records": [ROW, {"size": 1.0}]}, 400, "SCHEMA_MISMATCH", "row 1"),
    "empty split": (
        {"dataframe_split": {"columns": list(ROW), "data": []}},
        400,
        "EMPTY_BATCH",
        "no rows",
    ),
    "empty records": ({"dataframe_records": []}, 400, "EMPTY_BATCH", "no rows"),
    "ragged split": (
        {"dataframe_split": {"columns": list(ROW), "data": [[1.0]]}},
        400,
        "MALFORMED_REQUEST",
        "row 0",
    ),
    "no format key": ({"data": [ROW]}, 400, "MALFORMED_REQUEST", "data"),
    "two format keys": (
        {"inputs": [ROW], "instances": [ROW]},
        400,
        "MALFORMED_REQUEST",
        "exactly one",
    ),
    "list body": ([ROW], 400, "MALFORMED_REQUEST", "JSON object"),
    "unknown parameter": (
        {"inputs": [ROW], "params": {"temperature": 1}},
        400,
        "INVALID_PARAMETER",
        "temperature",
    ),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_bad_json_requests_are_refused_with_the_reason(client, case):
    body, status, code, named = REFUSALS[case]
    answer = client.post("/invocations", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error_code"] == code
    assert named in answer.json()["message"]
    assert client.get("/ping").status_code == 200


CSV_HEADER = b"size,weight,count,colour"
BAD_BODIES = {  # name: (body, headers, status, error code)
    "truncated": (b'{"inputs": [', JSON_TYPE, 400, "MALFORMED_REQUEST"),
    "not utf-8": (b"\xff\xfe not utf-8", JSON_TYPE, 400, "MALFORMED_REQUEST"),
    "deep nesting": (b"[" * 100_000, JSON_TYPE, 400, "MALFORMED_REQUEST"),
    "text/plain": (b"size,weight\n1,2\n", {"Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    "no type": (b"{}", {"Content-Type": ""}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    "latin-1": (b"{}", {"Content-Type": "application/json; charset=latin-1"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    "csv bad value": (CSV_HEADER + b"\nbig,1,2,red\n", {"Content-Type": "text/csv"}, 400, "INVALID_VALUE"),
    "csv ragged": (CSV_HEADER + b"\n1,2\n", {"Content-Type": "text/csv"}, 400, "MALFORMED_REQUEST"),
    "csv empty": (b"", {"Content-Type": "text/csv"}, 400, "MALFORMED_REQUEST"),
    "csv extra column": (CSV_HEADER + b",extra\n1,2,3,red,9\n", {"Content-Type": "text/csv"}, 400, "SCHEMA_MISMATCH"),
}  # fmt: skip


@pytest.mark.parametrize(("content", "headers", "status", "code"), BAD_BODIES.values(),
                         ids=list(BAD_BODIES))  # fmt: skip
def test_bad_bodies_are_refused(client, content, headers, status, code):
    answer = client.post("/invocations", content=content, headers=headers)
    assert (answer.status_code, answer.json()["error_code"]) == (status, code), answer.text
    assert client.get("/ping").status_code == 200


PREDICT_REFUSALS = {
    "missing": ([{k: v for k, v in ROW.items() if k != "colour"}], "colour"),
    "unknown": ([{**ROW, "height": 2.0}], "height"),
    "wrong type": ([{**ROW, "size": "big"}], "size"),
    "empty": ([], "rows"),
}


@pytest.mark.parametrize(("rows", "named"), PREDICT_REFUSALS.values(), ids=list(PREDICT_REFUSALS))
def test_typed_predict_refuses_rows_off_the_signature(client, rows, named):
    answer = client.post("/predict", json={"rows": rows})
    assert answer.status_code == 422, answer.text
    assert named in answer.json()["message"]


CSV_TYPE = {"Content-Type": "text/csv"}
INFINITE = {  # (path, key of the rows or "csv", how the weight is written)
    "JSON Infinity": ("/invocations", "inputs", "Infinity"),
    "JSON -Infinity": ("/invocations", "dataframe_records", "-Infinity"),
    "JSON 1e309": ("/invocations", "instances", "1e309"),
    "/predict Infinity": ("/predict", "rows", "Infinity"),
    "/predict -1e309": ("/predict", "rows", "-1e309"),
    "CSV inf": ("/invocations", "csv", "inf"),
    "CSV -Infinity": ("/invocations", "csv", "-Infinity"),
}


def rows_with_weight(key: str, weight: str) -> str:
    """A body of two rows, the second with `weight` written as given (JSON or CSV)."""
    if key == "csv":
        return f"size,weight,count,colour\n10,50,3,red\n10,{weight},3,red\n"
    row = json.dumps(ROW)
    changed = row.replace('"weight": 50.0', f'"weight": {weight}')
    return "{" + f'"{key}": [{row}, {changed}]' + "}"


@pytest.mark.parametrize("case", INFINITE, ids=list(INFINITE))
def test_infinity_is_refused_naming_the_column_and_row(client, case):
    """Python's parsers take Infinity, 1e309 and inf; a model cannot use them."""
    path, key, weight = INFINITE[case]
    headers = CSV_TYPE if key == "csv" else JSON_TYPE
    answer = client.post(path, content=rows_with_weight(key, weight), headers=headers)
    assert (answer.status_code, answer.json()["error_code"]) == (400, "INVALID_VALUE"), answer.text
    assert (answer.json()["column"], answer.json()["row"]) == ("weight", 1)
    assert "column 'weight'" in answer.json()["message"] and "finite" in answer.json()["message"]


@pytest.mark.parametrize(
    ("path", "key", "weight"),
    [("/invocations", "inputs", "NaN"), ("/predict", "rows", "NaN"), ("/invocations", "csv", "nan"),
     ("/invocations", "csv", "")],
    ids=["JSON NaN", "/predict NaN", "CSV nan", "CSV empty"],
)  # fmt: skip
def test_nan_in_a_number_column_is_still_a_missing_value(client, path, key, weight):
    headers = CSV_TYPE if key == "csv" else JSON_TYPE
    answer = client.post(path, content=rows_with_weight(key, weight), headers=headers)
    assert answer.status_code == 200, answer.text


def rows_with_count(key: str, count: str) -> str:
    """A body of two rows, the second with the integer `count` written as given (JSON or CSV)."""
    if key == "csv":
        return f"size,weight,count,colour\n10,50,3,red\n10,50,{count},red\n"
    row = json.dumps(ROW)
    changed = row.replace('"count": 3', f'"count": {count}')
    return "{" + f'"{key}": [{row}, {changed}]' + "}"


@pytest.mark.parametrize(
    ("path", "key", "count"),
    [("/invocations", "dataframe_records", "null"), ("/invocations", "inputs", "NaN"),
     ("/predict", "rows", "null"), ("/invocations", "csv", "")],
    ids=["JSON null", "JSON NaN", "/predict null", "CSV empty"],
)  # fmt: skip
def test_a_missing_value_in_an_integer_column_is_imputed_as_in_training(
    client, saved, path, key, count
):
    """Integer features stay integers (the signature says long, segments say "4"), so a value
    missing at prediction time must still reach the model's imputer: it was refused with a 400."""
    _, _, model = saved
    headers = CSV_TYPE if key == "csv" else JSON_TYPE
    answer = client.post(path, content=rows_with_count(key, count), headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    got = (
        [p["prediction"] for p in body["predictions"]]
        if path == "/predict"
        else body["predictions"]
    )
    rows = pd.DataFrame(
        [ROW, {**ROW, "count": np.nan}]
    )  # a float column with a gap, as pandas has it
    assert same(got, model.predict(rows).tolist())


def test_the_integer_column_still_refuses_fractions_and_documents_null(client):
    assert client.post("/invocations", content=rows_with_count("inputs", "2.5"),
                       headers=JSON_TYPE).status_code == 400  # fmt: skip
    assert client.post("/invocations", content=rows_with_count("inputs", "3.0"),
                       headers=JSON_TYPE).status_code == 200  # fmt: skip
    count = client.get("/openapi.json").json()["components"]["schemas"]["Row"]["properties"][
        "count"
    ]
    assert {t.get("type") for t in count["anyOf"]} == {"integer", "null"}


def test_a_column_mismatch_names_what_is_lacking_and_what_is_not_taken(client):
    """The message said "missing column(s) [...]; unknown column(s) [...]"; it now reads plainly."""
    row = {**{k: v for k, v in ROW.items() if k not in ("size", "weight")}, "height": 1.0}
    answer = client.post("/invocations", json={"dataframe_records": [row]})
    assert (answer.status_code, answer.json()["error_code"]) == (400, "SCHEMA_MISMATCH")
    assert answer.json()["message"] == (
        "the request lacks columns 'size', 'weight' that the model needs; it has column 'height' "
        "that the model does not take (the model takes columns 'size', 'weight', 'count', 'colour')"
    )
    assert (answer.json()["missing"], answer.json()["unknown"]) == (["size", "weight"], ["height"])


def test_oversized_body_is_refused_before_parsing(saved):
    with TestClient(create_app(saved[0], Settings(max_body_bytes=200))) as small:
        answer = small.post("/invocations", content=b"x" * 201, headers=JSON_TYPE)
        assert (answer.status_code, answer.json()["error_code"]) == (413, "PAYLOAD_TOO_LARGE")
        chunked = small.post(
            "/invocations", content=iter([b"{" * 150, b" " * 150]), headers=JSON_TYPE
        )
        assert chunked.status_code == 413
        assert small.post("/invocations", json={"inputs": [ROW]}).status_code == 200


def test_unexpected_error_is_a_json_500_and_the_server_survives(saved, monkeypatch):
    app = create_app(saved[0], Settings())
    with TestClient(app) as fresh:
        monkeypatch.setattr(app.state.metrics, "observe_predictions", lambda *a: 1 / 0)
        answer = fresh.post("/invocations", json={"inputs": [ROW]})
        assert (answer.status_code, answer.json()["error_code"]) == (500, "INTERNAL_ERROR")
        monkeypatch.undo()
        assert fresh.post("/invocations", json={"inputs": [ROW]}).status_code == 200


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/nope").json()["error_code"] == "NOT_FOUND"
    wrong_method = client.get("/invocations")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"


# --- token, integrity, trust ------------------------------------------------------------------------


def test_token_guards_everything_but_ping_and_health(saved):
    with TestClient(create_app(saved[0], Settings(token="s3cret"))) as guarded:
        assert guarded.get("/ping").status_code == 200
        assert guarded.get("/health").status_code == 200
        for path in ("/version", "/metadata", "/metrics", "/docs", "/openapi.json"):
            assert guarded.get(path).status_code == 401
        assert guarded.post("/invocations", json={"inputs": [ROW]}).status_code == 401
        wrong = guarded.get("/metadata", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret"}
        assert guarded.post("/invocations", json={"inputs": [ROW]}, headers=good).status_code == 200
        assert guarded.get("/metrics", headers=good).status_code == 200


@pytest.fixture
def copy_of(saved, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(saved[0], target)
    return target


def test_a_changed_model_file_refuses_to_start(copy_of):
    skops_file = copy_of / "model" / "model.skops"
    skops_file.write_bytes(skops_file.read_bytes() + b"\0")
    with pytest.raises(bundle_files.IntegrityError, match=r"model.skops: SHA-256"):
        create_app(copy_of, Settings())


@pytest.mark.parametrize("change", ["added file", "removed file", "no manifest"])
def test_other_bundle_changes_refuse_to_start(copy_of, change):
    if change == "added file":
        (copy_of / "model" / "model.pkl").write_bytes(b"pickle")
    elif change == "removed file":
        (copy_of / "model" / "input_example.json").unlink()
    else:
        (copy_of / "manifest.json").unlink()
    with pytest.raises(bundle_files.IntegrityError):
        create_app(copy_of, Settings())


def test_the_server_process_exits_nonzero_on_a_tampered_bundle(copy_of):
    (copy_of / "model" / "MLmodel").write_text(
        (copy_of / "model" / "MLmodel").read_text() + "\n# edited\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.serving", "--bundle", str(copy_of), "--port", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    assert "integrity record" in done.stderr and "MLmodel: SHA-256" in done.stderr


CHECK_PROBE = """
import sys
from {package}.serving.__main__ import main
code = main(["--check", "--bundle", sys.argv[1], "--port", "1"])
late = ("uvicorn.protocols.http.httptools_impl", "uvicorn.loops.uvloop", "uvicorn.lifespan.on")
print(code, [name for name in late if name not in sys.modules])
"""


def test_check_imports_what_serving_would_and_exits_without_listening(saved):
    """The image build runs `--check`: it must import uvicorn's lazily loaded parts (so their
    bytecode is compiled) and return at once (port 1 could not even be bound)."""
    probe = CHECK_PROBE.format(package=PACKAGE)
    done = subprocess.run(
        [sys.executable, "-c", probe, str(saved[0])],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.stdout.split() == ["0", "[]"], done.stdout + done.stderr
    assert "ready to serve" in done.stderr


def test_check_refuses_a_tampered_bundle_as_a_start_would(copy_of):
    (copy_of / "model" / "MLmodel").write_text("# edited\n")
    done = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.serving", "--check", "--bundle", str(copy_of)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 3 and "MLmodel: SHA-256" in done.stderr, done.stderr


def test_a_model_trusting_foreign_types_is_refused(copy_of):
    mlmodel = copy_of / "model" / "MLmodel"
    mlmodel.write_text(
        mlmodel.read_text().replace("skops_trusted_types:", "skops_trusted_types:\n    - os.system")
    )
    record = Record.of(copy_of / bundle_files.MODEL_DIR, PROVENANCE["name"])
    bundle_files.write_manifest(copy_of, PROVENANCE, record)  # even with a matching manifest
    with pytest.raises(ModelLoadError, match=r"os\.system"):
        create_app(copy_of, Settings())


def test_serving_code_in_the_image_does_not_import_mlflow():
    code = (
        f"import sys, {PACKAGE}.serving.app, {PACKAGE}.serving.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'docker')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- from the registry to a bundle, and the image's requirements -----------------------------------


def test_export_bundle_takes_the_champion_with_its_provenance(saved, tmp_path, task):
    """A version registered as 05_deployment registers it, exported as `serve` and `image` do."""
    import mlflow

    from crisp_ml.serving import export
    from crisp_ml.serving.integrity import RECORD_TAG
    from crisp_ml.tracking import client, model_name

    _, X, model = saved
    registry = client()
    with mlflow.start_run(tags={"git_commit": "c0ffee"}) as run:
        info = mlflow.sklearn.log_model(
            model, name="model", input_example=X.head(2), pip_requirements=["scikit-learn"],
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
        )  # fmt: skip
    record = export.seal(info.model_uri, model, X)
    tags = {"data_digest": "abc", RECORD_TAG: record.to_json()}
    version = mlflow.register_model(info.model_uri, model_name(), tags=tags)
    registry.set_model_version_tag(model_name(), version.version, "model_card", "# Card")
    with pytest.raises(export.RegistryError, match="champion"):
        export.export_bundle()
    registry.set_registered_model_alias(model_name(), "champion", version.version)
    bundle, manifest = export.export_bundle()
    assert bundle == tmp_path / "build" / "serving" / str(version.version)
    assert manifest["model"]["run_id"] == run.info.run_id
    assert manifest["model"]["git_commit"] == "c0ffee" and manifest["model"]["data_digest"] == "abc"
    assert manifest["model_card"] == "# Card"
    assert bundle_files.verify(bundle) == manifest
    export.record_image(version.version, "img:1")
    assert registry.get_model_version(model_name(), version.version).tags["image"] == "img:1"


def test_image_requirements_are_the_serve_group(tmp_path, generated_project):
    from crisp_ml.serving.image import requirement_mismatches, serve_requirements

    requirements = serve_requirements(generated_project / "pyproject.toml")
    names = {re.split(r"[=<>~!; ]", line)[0] for line in requirements}
    assert {"scikit-learn", "skops", "fastapi", "uvicorn", "prometheus-client"} <= names
    assert not names & {"mlflow", "jupyterlab", "papermill"}
    assert requirement_mismatches(requirements, tmp_path) == []  # no requirements.txt logged
    (tmp_path / "requirements.txt").write_text("scikit-learn==0.1\n")
    assert "scikit-learn" in requirement_mismatches(requirements, tmp_path)[0]


# --- prediction log and metrics ---------------------------------------------------------------------


def test_prediction_log_is_off_by_default(client, tmp_path):
    assert client.app.state.prediction_log is None


def logged(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_closed_log_refuses_a_late_writer(tmp_path):
    """A shadow thread still scoring at shutdown must not write to whatever file reuses the
    descriptor's number."""
    log = predlog.PredictionLog(tmp_path / "p.jsonl", "m", "1", max_bytes=1 << 20)
    log.close()
    entry = predlog.Entry(0.0, "late", "/invocations", 1.0, {"x": [1]}, ["yes"], None)
    with pytest.raises(predlog.PredictionLogError, match="closed"):
        log.record(entry)
    log.close()  # twice is harmless


def test_an_answered_request_is_already_in_the_log(saved, tmp_path):
    path = tmp_path / "predictions.jsonl"
    with TestClient(create_app(saved[0], Settings(prediction_log=str(path)))) as served:
        answer = served.post("/invocations", json={"inputs": [ROW]}, headers={"X-Request-Id": "a1"})
        assert answer.status_code == 200
        (line,) = logged(path)  # read at once: no writer left behind to wait for
    assert line["request_id"] == "a1" and line["inputs"] == ROW


def test_prediction_log_writes_bounded_json_lines(saved, tmp_path):
    path = tmp_path / "logs" / "predictions.jsonl"
    settings = Settings(
        prediction_log=str(path), prediction_log_max_bytes=4000, prediction_log_backups=1
    )
    with TestClient(create_app(saved[0], settings)) as served:
        for _ in range(30):
            assert served.post("/invocations", json={"inputs": [ROW, ROW]}).status_code == 200
    line = logged(path)[-1]
    assert line["inputs"] == ROW and line["model_version"] == "7" and "prediction" in line
    assert {"timestamp", "latency_ms", "request_id", "endpoint", "model_name"} <= set(line)
    backup = path.with_name("predictions.jsonl.1")
    assert backup.exists()  # rotated once full
    assert path.stat().st_size <= 4000 and backup.stat().st_size <= 4000
    assert not path.with_name("predictions.jsonl.2").exists()
    assert len(logged(path)) + len(logged(backup)) >= 2 * 10, "whole requests in each file"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(bundle, env: dict, port: int) -> subprocess.Popen:
    """`python -m crisp_ml.serving` as its own process, once it answers /ping."""
    server = subprocess.Popen(
        [sys.executable, "-m", f"{PACKAGE}.serving", "--bundle", str(bundle),
         "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the server did not start: {server.communicate()[1][-2000:]}")
            time.sleep(0.1)


def hammer(port: int, answered: list[str], stop: threading.Event, name: str) -> None:
    """Keep sending 20-row requests, noting the id of each one answered 200, until stopped."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"inputs": [ROW] * 20})
    for i in itertools.count():
        if stop.is_set():
            return
        request_id = f"{name}-{i}"
        headers = {**JSON_TYPE, "X-Request-Id": request_id}
        try:
            connection.request("POST", "/invocations", body, headers)
            answer = connection.getresponse()
            answer.read()
        except (OSError, http.client.HTTPException):  # the server is gone
            return
        if answer.status == 200:
            answered.append(request_id)


KILLS = 2  # per task; before the fix, 4 kills in 5 lost an answered request


def test_an_answered_request_survives_a_kill_of_the_server(saved, tmp_path):
    """SIGKILL under load, as soon as answers arrive: each answered id is in the log. Each
    round restarts on the log the kill left, so a torn last line would join the next entry."""
    path = tmp_path / "predictions.jsonl"
    answered: list[str] = []
    for kill in range(KILLS):
        port = free_port()
        server = start_server(saved[0], {"PREDICTION_LOG": str(path)}, port)
        stop = threading.Event()
        clients = [
            threading.Thread(target=hammer, args=(port, answered, stop, f"k{kill}c{c}"))
            for c in range(6)
        ]
        for client_thread in clients:
            client_thread.start()
        goal = len(answered) + 40
        while len(answered) < goal and server.poll() is None:
            time.sleep(0.001)
        assert server.poll() is None, f"the server died: {server.communicate()[1][-2000:]}"
        server.send_signal(signal.SIGKILL)
        stop.set()
        server.wait()
        for client_thread in clients:
            client_thread.join()
    ids = {entry["request_id"] for entry in map(json.loads, whole_lines(path))}
    missing = sorted(set(answered) - ids)
    assert not missing, f"{len(missing)} of {len(answered)} answered requests not logged"


def whole_lines(path) -> list[str]:
    """The lines ending in a newline: a write the kill cut short is no entry (and was never
    answered)."""
    return path.read_text().splitlines()[: path.read_text().count("\n")]


def test_a_torn_last_line_is_cut_when_the_log_opens_and_the_reader_counts_it(saved, tmp_path):
    """A server killed mid-write leaves half a line; the next server cuts it, so its first entry
    stands on its own line. The monitor reads every whole entry, and says what it skipped."""
    from crisp_ml.monitoring import current_batch, read_prediction_log

    path = tmp_path / "predictions.jsonl"
    with TestClient(create_app(saved[0], Settings(prediction_log=str(path)))) as served:
        for i in range(3):
            served.post("/invocations", json={"inputs": [ROW]}, headers={"X-Request-Id": f"r{i}"})
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines(keepends=True)[-1][:40])  # a kill mid-write
    torn = read_prediction_log(str(path), "7")
    assert torn["request_id"].tolist() == ["r0", "r1", "r2"] and torn.attrs["skipped_lines"] == 1
    assert "1 unreadable line(s) skipped" in current_batch("", str(path), "7")[1]

    app = create_app(saved[0], Settings(prediction_log=str(path)))
    assert app.state.prediction_log.repaired_bytes == 40
    with TestClient(app) as served:
        served.post("/invocations", json={"inputs": [ROW]}, headers={"X-Request-Id": "after"})
    batch = read_prediction_log(str(path), "7")
    assert batch["request_id"].tolist() == ["r0", "r1", "r2", "after"]
    assert batch.attrs["skipped_lines"] == 0
    assert current_batch("", str(path), "7")[1] == f"prediction log {path}"


def test_a_request_too_large_for_the_log_is_logged_in_part_with_its_row_count(saved, tmp_path):
    from crisp_ml.monitoring import current_batch, read_prediction_log

    path = tmp_path / "predictions.jsonl"
    settings = Settings(prediction_log=str(path), prediction_log_max_bytes=4000)
    with TestClient(create_app(saved[0], settings)) as served:
        big = {"inputs": [ROW] * 100}
        assert served.post("/invocations", json=big, headers={"X-Request-Id": "big"}).is_success
        metrics = served.get("/metrics").text
    lines = logged(path)
    *rows, summary = lines
    assert 0 < len(rows) < 100 and all(line["inputs"] == ROW for line in rows)
    assert summary["request_id"] == "big" and "inputs" not in summary
    assert (summary["rows"], summary["rows_logged"]) == (100, len(rows))
    assert path.stat().st_size <= 4000
    assert f"serving_prediction_log_rows_left_out_total {100.0 - len(rows)}" in metrics
    batch = read_prediction_log(str(path), "7")
    assert len(batch) == len(rows) and batch.attrs["rows_left_out"] == 100 - len(rows)
    source = current_batch("", str(path), "7")[1]
    assert f"{100 - len(rows)} row(s) of requests too large to log left out" in source


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to fill (Linux only)")
def test_a_log_that_cannot_be_written_refuses_the_request(saved):
    """A 2xx means logged: on a full disk the answer is a 503 saying so, and the server lives."""
    app = create_app(saved[0], Settings(prediction_log="/dev/full"))  # every write: ENOSPC
    with TestClient(app) as served:
        for path, body in (("/invocations", {"inputs": [ROW]}), ("/predict", {"rows": [ROW]})):
            answer = served.post(path, json=body)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error_code"] == "PREDICTION_LOG_UNAVAILABLE"
            assert "No space left on device" in answer.json()["message"]
        assert "serving_prediction_log_failures_total 2.0" in served.get("/metrics").text
        assert served.get("/ping").status_code == 200


def test_a_write_cut_short_leaves_no_partial_line(tmp_path):
    """The file-size limit stops a write part way, as a filling disk does: the part is cut back,
    and once there is room again the next entry starts on a line of its own."""
    resource = pytest.importorskip("resource")
    path = tmp_path / "predictions.jsonl"
    log = predlog.PredictionLog(path, "m", "1", max_bytes=1_000_000)
    entry = predlog.Entry(time.time(), "r", "/predict", 1.0, {"x": [1.0]}, ["yes"], None)
    log.record(entry)
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 10, hard))
        with pytest.raises(predlog.PredictionLogError) as refused:
            log.record(entry)
        assert refused.value.errno == errno.EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert path.read_bytes() == before
    log.record(entry)
    log.close()
    assert [line["request_id"] for line in logged(path)] == ["r", "r"]


def test_metrics_count_requests_errors_and_predictions(saved, task):
    with TestClient(create_app(saved[0], Settings())) as fresh:
        fresh.post("/invocations", json={"inputs": [ROW, ROW, ROW]})
        fresh.post("/invocations", json={"inputs": [{**ROW, "size": "x"}]})
        text = fresh.get("/metrics").text
    assert 'serving_requests_total{endpoint="/invocations",method="POST",status="200"} 1.0' in text
    assert 'serving_errors_total{endpoint="/invocations",error_code="INVALID_VALUE"} 1.0' in text
    assert 'serving_request_duration_seconds_bucket{endpoint="/invocations"' in text
    assert 'serving_predicted_rows_total{endpoint="/invocations"} 3.0' in text
    if task == "classification":
        assert "serving_predictions_by_class_total{label=" in text
    else:
        assert "serving_prediction_value_count 3.0" in text
    assert 'serving_model_info{git_commit="abc123"' in text


# --- fuzzing the OpenAPI schema: the published schema is what the server enforces ------------------
# (Each operation is driven with `as_strategy`: schemathesis 4.32's pytest fixture loader
# `schemathesis.pytest.from_fixture` fails on pytest 9.2, which dropped `Node._nodeid`.)

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

CHECKS = [getattr(schemathesis.checks, name) for name in schemathesis.checks.CHECKS.get_all_names()]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def beyond_json_schema(case) -> bool:
    """An /invocations body whose validity JSON Schema cannot state: CSV text, dataframe_split's
    rows (typed by the column named at the same position), lists per column (of equal lengths).
    The server refuses such a body when it breaks the signature; only there is that right."""
    if case.path != "/invocations":
        return False
    body = case.body
    if not isinstance(body, dict) or "dataframe_split" in body:
        return True
    lists = [body.get(key) for key in ("instances", "inputs")]
    return any(isinstance(c, dict) and any(isinstance(v, list) for v in c.values()) for c in lists)


def for_each(strategy, check) -> None:
    @given(case=strategy)
    @settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case):
        check(case)

    run()


def test_fuzzed_requests_get_answers_the_schema_documents(saved):
    """Schemathesis's examples, coverage and fuzzing phases, valid and invalid requests, all its
    checks: no 5xx; every status, body and header is one the OpenAPI document declares; what it
    allows is answered (bar `beyond_json_schema`) and what it forbids is refused. Bounded: 40
    fuzzed examples per operation and mode."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(saved[0], Settings()))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {
        "POST /invocations",
        "POST /predict",
    }

    def validate(case):
        skip = [schemathesis.checks.positive_data_acceptance] if beyond_json_schema(case) else []
        case.call_and_validate(checks=CHECKS, excluded_checks=skip)

    examples = 0
    for operation in operations:
        for strategy in schema.get_strategies_from_examples(operation):
            for_each(strategy, validate)
            examples += 1
        coverage = schema.config.generation_for(operation=operation, phase="coverage")
        for case in schema.iter_coverage_cases(
            operation, generation_modes=MODES, generation_config=coverage
        ):
            validate(case)
        for mode in MODES:
            if mode is GenerationMode.NEGATIVE and operation.method == "get":
                continue  # nothing to break: no parameters, no body
            for_each(operation.as_strategy(generation_mode=mode), validate)
    assert examples, "the /invocations example is run"
