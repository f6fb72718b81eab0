"""The serving app in-process, against a real model saved the way 03_modelling logs it.

A small scikit-learn pipeline (numbers, an integer count and a categorical string, with the same
preprocessing as the project's) is trained here for each task and saved with MLflow's sklearn
flavour in skops format; the app must answer as MLflow's own pyfunc does, refuse every bad request
with a JSON 4xx naming the problem, and keep answering afterwards.
"""

import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import skops.io
from fastapi.testclient import TestClient
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from {{ cookiecutter.package_name }}.serving import bundle as bundle_files
from {{ cookiecutter.package_name }}.serving.app import Settings, create_app
from {{ cookiecutter.package_name }}.serving.model import ModelLoadError

PACKAGE = "{{ cookiecutter.package_name }}"
TASKS = ["classification", "regression"]
PROVENANCE = {
    "name": "test-model",
    "version": "7",
    "run_id": "run-1",
    "git_commit": "abc123",
    "data_digest": "d1g",
}


def training_data(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "size": rng.normal(10, 2, n),
            "weight": rng.normal(50, 10, n),
            "count": rng.integers(0, 20, n),
            "colour": rng.choice(["red", "green", "blue"], n),
        }
    )
    score = X["size"] - 10 + (X["colour"] == "red") + rng.normal(0, 0.5, n)
    return X, np.where(score > 0, "yes", "no"), (3 * X["size"] + X["count"]).to_numpy()


def pipeline(task: str):
    features = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
             make_column_selector(dtype_include="number")),
            ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                          OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
             make_column_selector(dtype_exclude="number")),
        ]
    )  # fmt: skip
    return make_pipeline(features, LogisticRegression() if task == "classification" else Ridge())


@pytest.fixture(scope="module", params=TASKS)
def task(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def saved(tmp_path_factory, task):
    """(bundle folder, X, fitted pipeline): the model saved as MLflow saves it, with a manifest."""
    import mlflow
    from mlflow.models import infer_signature

    X, labels, values = training_data()
    model = pipeline(task).fit(X, labels if task == "classification" else values)
    bundle = tmp_path_factory.mktemp(f"bundle-{task}")
    mlflow.sklearn.save_model(
        model, path=str(bundle / bundle_files.MODEL_DIR),
        signature=infer_signature(X.head(5), model.predict(X.head(5))),
        input_example=X.head(3), pip_requirements=["scikit-learn"], metadata={"task": task},
        skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
    )  # fmt: skip
    bundle_files.write_manifest(bundle, PROVENANCE, model_card="# Test model\nFor tests only.")
    return bundle, X, model


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


def test_version_and_metadata_come_from_the_manifest(client, task):
    version = client.get("/version").json()
    assert version["model_name"] == "test-model" and version["model_version"] == "7"
    metadata = client.get("/metadata").json()
    assert metadata["model"] == PROVENANCE
    assert metadata["task"] == task
    assert metadata["model_card"].startswith("# Test model")
    assert [c["name"] for c in metadata["signature"]] == ["size", "weight", "count", "colour"]
    assert {c["type"] for c in metadata["signature"]} == {"double", "long", "string"}
    assert set(metadata["files"]) >= {"model/MLmodel", "model/model.skops"}


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
    "null for an integer": (
        {"dataframe_records": [{**ROW, "count": None}]},
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


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b'{"inputs": [', JSON_TYPE, 400, "MALFORMED_REQUEST"),
        (b"\xff\xfe not utf-8", JSON_TYPE, 400, "MALFORMED_REQUEST"),
        (b"[" * 100_000, JSON_TYPE, 400, "MALFORMED_REQUEST"),
        (b"size,weight\n1,2\n", {"Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b"{}", {"Content-Type": ""}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b"{}", {"Content-Type": "application/json; charset=latin-1"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b"size,weight,count,colour\nbig,1,2,red\n", {"Content-Type": "text/csv"}, 400, "INVALID_VALUE"),
        (b"size,weight,count,colour\n1,2\n", {"Content-Type": "text/csv"}, 400, "MALFORMED_REQUEST"),
        (b"", {"Content-Type": "text/csv"}, 400, "MALFORMED_REQUEST"),
        (b"size,weight,count,colour,extra\n1,2,3,red,9\n", {"Content-Type": "text/csv"}, 400, "SCHEMA_MISMATCH"),
    ],
    ids=["truncated", "not utf-8", "deep nesting", "text/plain", "no type", "latin-1", "csv bad value",
         "csv ragged", "csv empty", "csv extra column"],
)  # fmt: skip
def test_bad_bodies_are_refused(client, content, headers, status, code):
    answer = client.post("/invocations", content=content, headers=headers)
    assert (answer.status_code, answer.json()["error_code"]) == (status, code), answer.text
    assert client.get("/ping").status_code == 200


@pytest.mark.parametrize(
    ("rows", "named"),
    [
        ([{k: v for k, v in ROW.items() if k != "colour"}], "colour"),
        ([{**ROW, "height": 2.0}], "height"),
        ([{**ROW, "size": "big"}], "size"),
        ([], "rows"),
    ],
    ids=["missing", "unknown", "wrong type", "empty"],
)
def test_typed_predict_refuses_rows_off_the_signature(client, rows, named):
    answer = client.post("/predict", json={"rows": rows})
    assert answer.status_code == 422, answer.text
    assert named in answer.json()["message"]


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
    with pytest.raises(bundle_files.IntegrityError, match=r"model/model.skops: SHA-256"):
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
    assert "integrity check" in done.stderr and "model/MLmodel" in done.stderr


def test_a_model_trusting_foreign_types_is_refused(copy_of):
    mlmodel = copy_of / "model" / "MLmodel"
    mlmodel.write_text(
        mlmodel.read_text().replace("skops_trusted_types:", "skops_trusted_types:\n    - os.system")
    )
    bundle_files.write_manifest(copy_of, PROVENANCE)  # even with a matching manifest
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

    from {{ cookiecutter.package_name }}.serving import export
    from {{ cookiecutter.package_name }}.tracking import MODEL_NAME, client

    _, X, model = saved
    registry = client()
    with mlflow.start_run(tags={"git_commit": "c0ffee"}) as run:
        info = mlflow.sklearn.log_model(
            model, name="model", input_example=X.head(2), pip_requirements=["scikit-learn"],
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
        )  # fmt: skip
    version = mlflow.register_model(info.model_uri, MODEL_NAME, tags={"data_digest": "abc"})
    registry.set_model_version_tag(MODEL_NAME, version.version, "model_card", "# Card")
    with pytest.raises(export.RegistryError, match="champion"):
        export.export_bundle()
    registry.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    bundle, manifest = export.export_bundle()
    assert bundle == tmp_path / "build" / "serving" / str(version.version)
    assert manifest["model"]["run_id"] == run.info.run_id
    assert manifest["model"]["git_commit"] == "c0ffee" and manifest["model"]["data_digest"] == "abc"
    assert manifest["model_card"] == "# Card"
    assert bundle_files.verify(bundle) == manifest
    export.record_image(version.version, "img:1")
    assert registry.get_model_version(MODEL_NAME, version.version).tags["image"] == "img:1"


def test_image_requirements_are_the_serve_group(tmp_path):
    from pathlib import Path

    from {{ cookiecutter.package_name }}.serving.image import requirement_mismatches, serve_requirements

    requirements = serve_requirements(Path(__file__).parents[1] / "pyproject.toml")
    names = {re.split(r"[=<>~!; ]", line)[0] for line in requirements}
    assert {"scikit-learn", "skops", "fastapi", "uvicorn", "prometheus-client"} <= names
    assert not names & {"mlflow", "jupyterlab", "papermill"}
    assert requirement_mismatches(requirements, tmp_path) == []  # no requirements.txt logged
    (tmp_path / "requirements.txt").write_text("scikit-learn==0.1\n")
    assert "scikit-learn" in requirement_mismatches(requirements, tmp_path)[0]


# --- prediction log and metrics ---------------------------------------------------------------------


def test_prediction_log_is_off_by_default(client, tmp_path):
    assert client.app.state.prediction_log is None


def test_prediction_log_lines_appear_without_waiting_for_shutdown(saved, tmp_path):
    path = tmp_path / "predictions.jsonl"
    app = create_app(saved[0], Settings(prediction_log=str(path)))
    with TestClient(app) as logged:
        logged.post("/invocations", json={"inputs": [ROW]})
        deadline = time.monotonic() + 5
        while not path.read_text():
            assert time.monotonic() < deadline, "the line is still in a buffer"
            time.sleep(0.01)
        assert json.loads(path.read_text())["inputs"] == ROW


def test_prediction_log_writes_bounded_json_lines(saved, tmp_path):
    path = tmp_path / "logs" / "predictions.jsonl"
    settings = Settings(
        prediction_log=str(path), prediction_log_max_bytes=4000, prediction_log_backups=1
    )
    app = create_app(saved[0], settings)
    with TestClient(app) as logged:
        for _ in range(30):
            assert logged.post("/invocations", json={"inputs": [ROW, ROW]}).status_code == 200
        app.state.prediction_log.flush()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    line = lines[-1]
    assert line["inputs"] == ROW and line["model_version"] == "7" and "prediction" in line
    assert {"timestamp", "latency_ms", "request_id", "endpoint", "model_name"} <= set(line)
    backup = path.with_name("predictions.jsonl.1")
    assert backup.exists()  # rotated once full
    assert path.stat().st_size <= 4000 and backup.stat().st_size <= 4000
    assert not path.with_name("predictions.jsonl.2").exists()


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


# --- fuzzing the OpenAPI schema: whatever the schema allows, never a 5xx ----------------------------
# (Each operation is driven with `as_strategy`: schemathesis 4.32's pytest fixture loader
# `schemathesis.pytest.from_fixture` fails on pytest 9.2, which dropped `Node._nodeid`.)

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings


def test_fuzzed_requests_get_answers_the_schema_documents(saved):
    """Schema-conformant and -violating requests alike: no 5xx, and every answer's status and body
    is one the OpenAPI document declares. Bounded: 40 examples per operation.

    /invocations documents MLflow's loose protocol (any CSV text, any `dataframe_split` rows), so a
    body its schema allows may still break the signature: there, refusing it is right.
    """
    loose = [schemathesis.checks.positive_data_acceptance]
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(saved[0], Settings()))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {
        "POST /invocations",
        "POST /predict",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def fuzz(case):
            case.call_and_validate(excluded_checks=loose if case.path == "/invocations" else [])

        fuzz()
