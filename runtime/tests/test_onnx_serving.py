"""The model compiled to ONNX answers every request as scikit-learn does (issue 15).

One small pipeline per task (numbers, an integer count, a categorical string) is compiled the way
05_deployment compiles it, saved beside its skops file, and served twice: by ONNX Runtime (the
default for a compiled model) and by scikit-learn (SERVING_RUNTIME=scikit-learn). The same
requests, valid and invalid, in every format, go to both; status codes, error bodies and classes
must be identical, probabilities and values within the tolerances `crisp_ml.compiling` documents.
"""

import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from crisp_ml import compiling
from crisp_ml.serving import bundle as bundle_files
from crisp_ml.serving import image
from crisp_ml.serving.app import create_app
from crisp_ml.serving.model import (
    ONNX,
    ONNX_FILE,
    SKLEARN,
    ModelLoadError,
    chosen_runtime,
    read_mlmodel,
    signature_columns,
)
from crisp_ml.serving.settings import Settings

from .test_serving import (
    BAD_BODIES,
    CSV_TYPE,
    INFINITE,
    JSON_TYPE,
    PREDICT_REFUSALS,
    REFUSALS,
    ROW,
    records,
    rows_with_count,
    rows_with_weight,
    split,
)
from .toy_models import pipeline, save_bundle, training_data

TASKS = ["classification", "regression"]


@pytest.fixture(scope="module", params=TASKS)
def task(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, task):
    """(bundle with model.onnx, bundle without, X): the same fitted pipeline in both."""
    X, labels, values = training_data()
    model = pipeline(task).fit(X, labels if task == "classification" else values)
    plain = save_bundle(tmp_path_factory.mktemp(f"plain-{task}"), model, X, task)
    columns = signature_columns(read_mlmodel(plain / bundle_files.MODEL_DIR))
    result = compiling.compile_for_serving(model, X, task, columns)
    assert result.onnx is not None, result.reason
    with_onnx = save_bundle(tmp_path_factory.mktemp(f"onnx-{task}"), model, X, task, result.onnx)
    return with_onnx, plain, X


@pytest.fixture(scope="module")
def servers(compiled):
    """The compiled bundle served by each runtime: {runtime: TestClient}."""
    bundle = compiled[0]
    with (
        TestClient(create_app(bundle, Settings())) as onnx,
        TestClient(create_app(bundle, Settings(runtime=SKLEARN))) as sklearn,
    ):
        yield {ONNX: onnx, SKLEARN: sklearn}


def _valid_requests(X) -> dict[str, tuple[str, bytes | str, dict]]:
    rows = X.sample(12, random_state=3)
    with_gap = rows.astype({"colour": object})
    with_gap.loc[with_gap.index[0], "colour"] = None
    body = {
        "dataframe_split": {"dataframe_split": split(rows)},
        "dataframe_records": {"dataframe_records": records(rows)},
        "instances": {"instances": records(rows)},
        "inputs records": {"inputs": records(rows)},
        "inputs columns": {"inputs": {c: rows[c].tolist() for c in rows.columns}},
        "inputs one row": {"inputs": ROW},
        "missing category": {"dataframe_split": split(with_gap)},
        "probabilities param": {"dataframe_split": split(rows), "params": {"probabilities": True}},
    }
    requests = {name: ("/invocations", json.dumps(b), JSON_TYPE) for name, b in body.items()}
    requests["probabilities query"] = (
        "/invocations?probabilities=true",
        json.dumps(body["dataframe_split"]),
        JSON_TYPE,
    )
    requests["csv"] = ("/invocations", rows.to_csv(index=False), CSV_TYPE)
    requests["predict"] = ("/predict", json.dumps({"rows": records(rows)}), JSON_TYPE)
    requests["missing count"] = ("/invocations", rows_with_count("inputs", "null"), JSON_TYPE)
    requests["NaN weight"] = ("/invocations", rows_with_weight("inputs", "NaN"), JSON_TYPE)
    return requests


def _invalid_requests() -> dict[str, tuple[str, bytes | str, dict]]:
    requests = {
        f"refused: {name}": ("/invocations", json.dumps(body), JSON_TYPE)
        for name, (body, *_) in REFUSALS.items()
    }
    requests |= {
        f"bad body: {name}": ("/invocations", content, headers)
        for name, (content, headers, *_) in BAD_BODIES.items()
    }
    requests |= {
        f"/predict refused: {name}": ("/predict", json.dumps({"rows": rows}), JSON_TYPE)
        for name, (rows, _) in PREDICT_REFUSALS.items()
    }
    requests |= {
        f"infinite: {name}": (path, rows_with_weight(key, weight), CSV_TYPE if key == "csv" else JSON_TYPE)
        for name, (path, key, weight) in INFINITE.items()
    }  # fmt: skip
    requests["fraction in an integer column"] = (
        "/invocations", rows_with_count("inputs", "2.5"), JSON_TYPE
    )  # fmt: skip
    return requests


def _alike(sklearn, onnx, where: str = "answer") -> None:
    """Equal, but for floats: within the parity tolerance of the larger magnitude."""
    if isinstance(sklearn, float) and isinstance(onnx, float):
        tolerance = max(compiling.PROBABILITY_TOLERANCE, compiling.VALUE_TOLERANCE * abs(sklearn))
        assert abs(sklearn - onnx) <= tolerance, f"{where}: {sklearn} vs {onnx}"
    elif isinstance(sklearn, dict) and isinstance(onnx, dict):
        assert sklearn.keys() == onnx.keys(), where
        for key in sklearn:
            _alike(sklearn[key], onnx[key], f"{where}.{key}")
    elif isinstance(sklearn, list) and isinstance(onnx, list):
        assert len(sklearn) == len(onnx), where
        for i, (a, b) in enumerate(zip(sklearn, onnx, strict=True)):
            _alike(a, b, f"{where}[{i}]")
    else:
        assert (type(sklearn), sklearn) == (type(onnx), onnx), where


def test_both_runtimes_answer_every_request_alike(servers, compiled, task):
    requests = _valid_requests(compiled[2]) | _invalid_requests()
    answered = 0
    for name, (path, content, headers) in requests.items():
        sklearn, onnx = (
            servers[runtime].post(path, content=content, headers=headers)
            for runtime in (SKLEARN, ONNX)
        )
        assert sklearn.status_code == onnx.status_code, f"{name}: {sklearn.text} | {onnx.text}"
        assert sklearn.headers["content-type"] == onnx.headers["content-type"], name
        if sklearn.status_code == 200:
            answered += 1
            _alike(sklearn.json(), onnx.json(), name)
        else:
            assert sklearn.json() == onnx.json(), name  # the same error, word for word
    # The probability requests are refused alike for a regressor; everything else is answered.
    assert answered == 13 - 2 * (task == "regression")


def test_the_compiled_model_is_served_by_onnx_unless_told_otherwise(servers, compiled):
    assert servers[ONNX].get("/metadata").json()["runtime"] == ONNX
    assert servers[SKLEARN].get("/version").json()["runtime"] == SKLEARN
    assert "model.onnx" in servers[ONNX].get("/metadata").json()["files"], "under the record"
    with TestClient(create_app(compiled[1], Settings())) as plain:
        assert plain.get("/metadata").json()["runtime"] == SKLEARN


def test_make_serve_and_the_image_choose_the_same_runtime(compiled, monkeypatch):
    """`serve` loads with chosen_runtime; the image stages the requirements of the same choice."""
    with_onnx, plain = (bundle / bundle_files.MODEL_DIR for bundle in compiled[:2])
    assert image.SERVE_GROUPS[chosen_runtime(with_onnx)] == "serve-onnx"
    assert image.SERVE_GROUPS[chosen_runtime(plain)] == "serve"
    monkeypatch.setenv("SERVING_RUNTIME", "scikit-learn")
    assert image.SERVE_GROUPS[chosen_runtime(with_onnx)] == "serve"


def test_a_runtime_that_cannot_serve_the_bundle_is_refused_by_name(compiled):
    with pytest.raises(ModelLoadError, match=r"SERVING_RUNTIME=onnx, but .* holds no model.onnx"):
        create_app(compiled[1], Settings(runtime=ONNX))
    with pytest.raises(ModelLoadError, match=r"SERVING_RUNTIME='fast': use one of auto, onnx"):
        create_app(compiled[0], Settings(runtime="fast"))


def test_a_changed_onnx_file_refuses_to_start(compiled, tmp_path):
    import shutil

    copy = shutil.copytree(compiled[0], tmp_path / "bundle")
    onnx_file = copy / bundle_files.MODEL_DIR / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(bundle_files.IntegrityError, match=r"model.onnx: SHA-256"):
        create_app(copy, Settings())


SERVE_WITHOUT_THE_SCIENTIFIC_STACK = """
import json, sys
from fastapi.testclient import TestClient
from crisp_ml.serving.app import create_app
from crisp_ml.serving.settings import Settings

bundle, requests = sys.argv[1], json.loads(sys.argv[2])
with TestClient(create_app(bundle, Settings())) as client:
    for path, content, content_type in requests:
        status = client.post(path, content=content, headers={"Content-Type": content_type}).status_code
        assert status == 200, (path, status)
print(json.dumps(sorted(m for m in ("pandas", "sklearn", "scipy", "skops") if m in sys.modules)))
"""


def test_serving_a_compiled_model_imports_no_pandas_scipy_or_scikit_learn(compiled):
    """What the ONNX image lacks is never imported, whatever the request's format."""
    requests = [
        (path, content, headers["Content-Type"])
        for path, content, headers in _valid_requests(compiled[2]).values()
        if "probabilities" not in path and "probabilities" not in content
    ]
    done = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_THE_SCIENTIFIC_STACK, str(compiled[0]),
         json.dumps(requests)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


# --- 05_deployment's step: from the logged model to a registered, compiled version --------------


def _logged(model, X):
    """A model logged as 03 logs it, and its sealed record."""
    import mlflow
    import skops.io

    from crisp_ml.serving import export
    from crisp_ml.tracking import configure

    configure()  # this test's store, not the one an earlier test set
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", input_example=X.head(2), pip_requirements=["scikit-learn"],
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
        )  # fmt: skip
    return info.model_uri, export.seal(info.model_uri, model, X)


def test_a_compiled_model_is_registered_as_a_copy_whose_record_covers_model_onnx(compiled, task):
    import mlflow

    from crisp_ml.serving import export
    from crisp_ml.serving.integrity import RECORD_TAG
    from crisp_ml.tracking import client, model_name

    X, labels, values = training_data()
    model = pipeline(task).fit(X, labels if task == "classification" else values)
    uri, record = _logged(model, X)
    compiled_uri, compiled_record, result = export.compile_for_serving(uri, record, X, task)
    assert result.runtime == ONNX and compiled_uri != uri
    assert record.files.items() < compiled_record.files.items(), "the same files, and model.onnx"
    assert set(compiled_record.files) - set(record.files) == {"model.onnx"}
    export.download_verified(uri, record, compiled[0].parent / f"original-{task}")  # untouched
    version = mlflow.register_model(
        compiled_uri, model_name(), tags={RECORD_TAG: compiled_record.to_json()}
    )
    client().set_registered_model_alias(model_name(), "champion", version.version)
    bundle, _ = export.export_bundle()
    with TestClient(create_app(bundle, Settings())) as served:
        assert served.get("/metadata").json()["runtime"] == ONNX


def test_a_model_that_cannot_compile_is_registered_as_it_was_with_the_reason(task):
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.pipeline import make_pipeline

    from crisp_ml.serving import export

    X, labels, values = training_data()
    dummy = DummyClassifier() if task == "classification" else DummyRegressor()
    model = make_pipeline(pipeline(task).steps[0][1], dummy).fit(
        X, labels if task == "classification" else values
    )
    uri, record = _logged(model, X)
    same_uri, same_record, result = export.compile_for_serving(uri, record, X, task)
    assert (same_uri, same_record, result.runtime) == (uri, record, SKLEARN)
    assert type(dummy).__name__ in result.reason
    assert result.tags()["serving_runtime"] == SKLEARN
    assert type(dummy).__name__ in result.card_section()


# ONNX Runtime sends nothing when one of these says it runs on a CI service (the names are in
# its library), so the opt-in case below would see nothing there: the test runs as on a laptop.
ORT_SILENT_ON_CI = (
    "CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
    "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER",
)  # fmt: skip


@pytest.mark.parametrize("given", [None, "0"])
def test_onnx_runtime_reports_nothing_unless_asked(compiled, tmp_path, given):
    """ONNX Runtime's telemetry keeps a device ID and an event cache under HOME: nothing appears
    there or in the working directory when a model is loaded through the runtime package, unless
    ORT_DISABLE_TELEMETRY=0 opts in."""
    ignored = ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", *ORT_SILENT_ON_CI)
    env = {k: v for k, v in os.environ.items() if k not in ignored}
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    env["HOME"] = str(home)
    if given is not None:
        env["ORT_DISABLE_TELEMETRY"] = given
    model = compiled[0] / bundle_files.MODEL_DIR / ONNX_FILE
    code = f"import crisp_ml, onnxruntime; onnxruntime.InferenceSession({str(model)!r})"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=work, check=True, timeout=120)
    written = [
        p.relative_to(tmp_path).as_posix()
        for d in (home, work)
        for p in d.rglob("*")
        if p.is_file()
    ]
    assert (written != []) == (given == "0"), written
