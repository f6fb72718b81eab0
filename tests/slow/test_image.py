"""The serving image of a generated project, built from its champion and run as production runs it.

For each task: `<project> image` builds against the CI base image (BASE_IMAGE), runs the image once
itself and records the tag; then the image is run read-only on a loopback port and every endpoint,
request format, refusal, the token, the prediction log and the refusal to start on a tampered
model file are checked against the model's in-process predictions. Containers and images are
removed afterwards. Without a Docker engine these tests are skipped, loudly (see conftest.py).
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from containers import docker, run_container

pytestmark = pytest.mark.slow

CHAMPION = "champion"
IMAGE_USER = "10001"


@pytest.fixture(scope="session")
def champion_project(smoked_project):
    """The smoked project with a `champion`: 05_deployment's, or, where the pipeline does not
    register one, 03_modelling's latest logged model registered here."""
    smoked_project.mlflow_query(
        f"""
        from mlflow.exceptions import MlflowException
        try:
            version = client.get_model_version_by_alias(MODEL_NAME, "{CHAMPION}").version
        except MlflowException:
            newest = [{{"field_name": "creation_time", "ascending": False}}]
            models = client.search_logged_models([experiment_id], max_results=1, order_by=newest)
            version = mlflow.register_model(models[0].model_uri, MODEL_NAME).version
            client.set_registered_model_alias(MODEL_NAME, "{CHAMPION}", version)
        print(json.dumps(version))
        """
    )
    return smoked_project


@dataclass
class Image:
    tag: str
    project: object
    example: dict  # the input example, dataframe_split form
    expected: dict  # in-process predictions (and probabilities for a classifier)
    task: str
    by_sklearn: dict  # the same, by the scikit-learn runtime (the image serves the ONNX model)


@pytest.fixture(scope="session")
def image(champion_project, docker_base_image):
    project = champion_project
    done = project.cli("image", env={"BASE_IMAGE": docker_base_image}, timeout=1800)
    assert "verified" in done.stdout, done.stdout
    tag = project.mlflow_query(
        f"""
        version = client.get_model_version_by_alias(MODEL_NAME, "{CHAMPION}")
        print(json.dumps(version.tags.get("image")))
        """
    )
    assert tag and tag in done.stdout, "the tag is recorded on the champion version"
    expected = project.python_json(
        """
        import json
        from pathlib import Path
        import os
        from crisp_ml.serving.image import expected_answers
        example, expected = expected_answers(Path("build/image/bundle"))
        os.environ["SERVING_RUNTIME"] = "scikit-learn"
        _, by_sklearn = expected_answers(Path("build/image/bundle"))
        print(json.dumps({"example": example, "expected": expected, "by_sklearn": by_sklearn}))
        """
    )
    task = project.options["task"]
    yield Image(
        tag, project, expected["example"], expected["expected"], task, expected["by_sklearn"]
    )
    name = tag.split(":")[0]
    docker("image", "rm", "--force", tag, f"{name}:latest", check=False)


def request(
    url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None
):
    """(status, headers, parsed JSON or text) for one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            status, head, raw = answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, dict(error.headers), error.read()
    try:
        return status, head, json.loads(raw)
    except ValueError:
        return status, head, raw.decode(errors="replace")


def post_json(url: str, payload, headers: dict | None = None):
    body = json.dumps(payload).encode()
    return request(url, body, {"Content-Type": "application/json", **(headers or {})}, "POST")


def announce_oversized_body(url: str, size: int) -> tuple[int, dict, dict]:
    """POST headers declaring `size` bytes with `Expect: 100-continue`, as curl does for large
    bodies, and read the answer before sending any of it. A client that pushes the whole body
    at once races the server, which answers 413 from the headers and closes the connection: the
    client may then see a broken pipe instead of the answer (a TCP fact, not a server fault)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(size))
        connection.putheader("Expect", "100-continue")
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), json.loads(answer.read())
    finally:
        connection.close()


@pytest.fixture(scope="session")
def served(image):
    container = run_container(image.tag)
    yield container
    docker("rm", "--force", container.id, check=False)


@pytest.fixture(scope="session")
def guarded(image):
    """The image with a token and the prediction log on (to the /tmp tmpfs)."""
    container = run_container(
        image.tag,
        "-e",
        "SERVING_TOKEN=slow-lane-token",
        "-e",
        "PREDICTION_LOG=/tmp/predictions.jsonl",
    )
    yield container
    docker("rm", "--force", container.id, check=False)


def close(got, expected, tolerance=1e-9) -> bool:
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(close(got[k], expected[k]) for k in got)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(
            close(a, b) for a, b in zip(got, expected, strict=True)
        )
    if isinstance(expected, float):
        limit = tolerance * max(1, abs(expected))
        return isinstance(got, int | float) and abs(got - expected) <= limit
    return got == expected


def formats(example: dict) -> dict[str, tuple[bytes, str]]:
    """The same rows in every request format the server takes: (body, content type)."""
    columns, rows = example["columns"], example["data"]
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    as_json = {
        "dataframe_split": {"dataframe_split": {"columns": columns, "data": rows}},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs": {"inputs": {c: [r[i] for r in rows] for i, c in enumerate(columns)}},
    }
    bodies = {
        name: (json.dumps(payload).encode(), "application/json")
        for name, payload in as_json.items()
    }
    return bodies | {"csv": (text.getvalue().encode(), "text/csv")}


# --- the image itself ---------------------------------------------------------------------------------


def test_image_is_lean_and_labelled(image):
    labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", image.tag).stdout)
    assert labels["ml.model.name"] and labels["ml.model.version"] == image.tag.split(":")[1]
    for key in ("ml.model.run-id", "ml.model.git-commit", "org.opencontainers.image.revision",
                "org.opencontainers.image.created", "org.opencontainers.image.version"):  # fmt: skip
        assert labels.get(key) not in (None, "", "unknown"), key
    # The demo champion is compiled to ONNX: its image holds no scikit-learn, SciPy or pandas.
    probe = "import importlib.util as u; print([m for m in ('mlflow', 'jupyterlab', 'notebook', 'papermill', 'sklearn', 'scipy', 'pandas', 'skops') if u.find_spec(m)])"
    found = docker("run", "--rm", "--entrypoint", "python", image.tag, "-c", probe).stdout.strip()
    assert found == "[]", f"the image carries {found}"
    compilers = docker(
        "run", "--rm", "--entrypoint", "sh", image.tag, "-c", "command -v gcc cc g++ || true"
    )
    assert compilers.stdout.strip() == ""


# Run inside the image: what the server imports, after the start-up check the build ran too.
LEFTOVERS_PROBE = """
import importlib.metadata, importlib.util, json, os, pathlib, struct, sys
from crisp_ml.serving.__main__ import main
assert main(["--check"]) == 0

def sections(path):  # an ELF file's section names, from its section header table
    data = path.read_bytes()
    if data[:4] != b"\\x7fELF":
        return set()
    offset, = struct.unpack_from("<Q", data, 0x28)
    size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, offset + i * size) for i in range(count)]
    names = data[headers[names_index][4]:]
    return {names[h[0]:names.index(b"\\0", h[0])].decode() for h in headers}

def fresh_bytecode(source):  # as the import system decides: magic, then the source's mtime, size
    cached = pathlib.Path(importlib.util.cache_from_source(source))
    if not cached.exists():
        return False
    magic, flags, mtime, size = struct.unpack_from("<4sIII", cached.read_bytes())
    stat = os.stat(source)
    return (magic, flags, mtime, size) == (
        importlib.util.MAGIC_NUMBER, 0, int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF)

served = [m.__spec__.origin for m in list(sys.modules.values())
          if getattr(m, "__spec__", None) and (m.__spec__.origin or "").startswith("/opt/")]
venv = pathlib.Path("/opt/venv")
print(json.dumps({
    "compiled at every start": [o for o in served if o.endswith(".py") and not fresh_bytecode(o)],
    "debug symbols": [str(p) for p in venv.rglob("*.so*")
                      if any(n.startswith(".debug_") for n in sections(p))],
    "build files": [str(p) for pattern in ("*.pyi", "*.pxd", "*.h", "*.a")
                    for p in venv.rglob(pattern)],
    "protobuf": "protobuf" in {d.name.lower() for d in importlib.metadata.distributions()},
    "modules": len(served),
}))
"""


def leftovers(tag: str, touched: str | None = None) -> dict:
    """What LEFTOVERS_PROBE finds in the image; `touched`: a source file touched first (as root),
    so that its bytecode no longer matches it."""
    if touched is None:
        probe = docker("run", "--rm", "--read-only", "--entrypoint", "python", tag, "-c",
                       LEFTOVERS_PROBE, timeout=180)  # fmt: skip
    else:
        probe = docker("run", "--rm", "--user", "0", "--entrypoint", "sh", tag, "-c",
                       'touch "$1" && exec python -c "$2"', "sh", touched, LEFTOVERS_PROBE,
                       timeout=180)  # fmt: skip
    return json.loads(probe.stdout.splitlines()[-1])


def assert_holds_what_the_server_runs_and_no_build_leftovers(tag: str) -> None:
    """Valid bytecode for every module start-up imports (compiled at build time by the server's
    own start-up check), no debug symbols, no stubs, headers or static libraries, no protobuf."""
    found = leftovers(tag)
    assert found["modules"] > 100, found
    assert found["compiled at every start"] == [], "no valid bytecode in the image for these"
    assert found["debug symbols"] == [] and found["build files"] == [], found
    assert not found["protobuf"]


def test_the_image_holds_what_the_server_runs_and_no_build_leftovers(image):
    assert_holds_what_the_server_runs_and_no_build_leftovers(image.tag)
    env = json.loads(docker("inspect", "-f", "{{json .Config.Env}}", image.tag).stdout)
    assert "ORT_DISABLE_TELEMETRY=1" in env, "ONNX Runtime's telemetry is off in the image"


def test_the_probe_sees_bytecode_that_no_longer_matches_its_source(image):
    source = "/opt/app/crisp_ml/serving/app.py"
    assert leftovers(image.tag, touched=source)["compiled at every start"] == [source]


def test_a_bundle_that_would_not_start_fails_the_build(image, docker_base_image):
    """The image's own start-up check runs in its build: an edited model file stops it there,
    with the server's refusal, before any image is tagged."""
    project = image.project
    project.cli("image", "--no-build")
    mlmodel = project.root / "build" / "image" / "bundle" / "model" / "MLmodel"
    try:
        mlmodel.write_text(mlmodel.read_text() + "# edited after export\n")
        built = docker(
            "build", "--build-arg", f"BASE_IMAGE={docker_base_image}", "-t", "tampered:never",
            str(project.root), check=False, timeout=900,
        )  # fmt: skip
        output = built.stdout + built.stderr
        assert built.returncode != 0, output[-3000:]
        assert "refusing to start" in output and "MLmodel: SHA-256" in output, output[-3000:]
        assert docker("image", "inspect", "tampered:never", check=False).returncode != 0
    finally:
        project.cli("image", "--no-build")


def test_runs_as_a_non_root_user(image, served):
    assert (
        docker("inspect", "-f", "{{.Config.User}}", image.tag).stdout.strip().startswith(IMAGE_USER)
    )
    assert served.exec("id", "-u", check=True).stdout.strip() == IMAGE_USER


def test_root_filesystem_is_read_only(served):
    assert (
        docker("inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", served.id).stdout.strip()
        == "true"
    )
    assert served.exec("touch", "/opt/bundle/x").returncode != 0
    assert served.exec("touch", "/tmp/x").returncode == 0  # the tmpfs


def test_healthcheck_reports_healthy(served):
    deadline = time.monotonic() + 60
    while (
        status := docker("inspect", "-f", "{{.State.Health.Status}}", served.id).stdout.strip()
    ) != "healthy":
        assert status in ("starting", "healthy") and time.monotonic() < deadline, status
        time.sleep(1)


# --- endpoints --------------------------------------------------------------------------------------


def test_every_endpoint_answers(image, served):
    for path in ("/ping", "/health", "/version", "/metadata", "/metrics", "/openapi.json", "/docs"):
        assert request(f"{served.url}{path}")[0] == 200, path
    _, _, metadata = request(f"{served.url}/metadata")
    assert metadata["model"]["version"] == image.tag.split(":")[1]
    assert metadata["task"] == image.task
    assert [c["name"] for c in metadata["signature"]] == image.example["columns"]
    _, _, spec = request(f"{served.url}/openapi.json")
    assert set(spec["components"]["schemas"]["Row"]["properties"]) == set(image.example["columns"])


@pytest.mark.parametrize(
    "form", ["dataframe_split", "dataframe_records", "instances", "inputs", "csv"]
)
def test_every_request_format_matches_in_process_predictions(image, served, form):
    body, content_type = formats(image.example)[form]
    status, _, answer = request(
        f"{served.url}/invocations", body, {"Content-Type": content_type}, "POST"
    )
    assert status == 200, answer
    assert close(answer["predictions"], image.expected["predictions"])


def test_the_onnx_image_answers_as_the_scikit_learn_runtime_does(image, served):
    """Identical classes; probabilities and values within compiling's tolerance (1e-5)."""
    _, _, metadata = request(f"{served.url}/metadata")
    assert metadata["runtime"] == "onnx" and "model.onnx" in metadata["files"]
    query = "?probabilities=true" if image.task == "classification" else ""
    status, _, answer = post_json(
        f"{served.url}/invocations{query}", {"dataframe_split": image.example}
    )
    assert status == 200, answer
    assert answer["predictions"] == image.by_sklearn["predictions"] or image.task == "regression"
    assert close(answer, image.by_sklearn, tolerance=1e-5)


def test_typed_predict_and_probabilities(image, served):
    columns, rows = image.example["columns"], image.example["data"]
    status, _, answer = post_json(
        f"{served.url}/predict", {"rows": [dict(zip(columns, r, strict=True)) for r in rows]}
    )
    assert status == 200, answer
    assert close([p["prediction"] for p in answer["predictions"]], image.expected["predictions"])
    split = {"dataframe_split": image.example}
    status, _, answer = post_json(f"{served.url}/invocations?probabilities=true", split)
    if image.task == "classification":
        assert close(answer["probabilities"], image.expected["probabilities"])
    else:
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER"


def test_refusals_are_json_4xx_and_the_server_keeps_answering(image, served):
    columns, rows = image.example["columns"], image.example["data"]
    row = dict(zip(columns, rows[0], strict=True))
    first = columns[0]
    url = f"{served.url}/invocations"
    json_type = {"Content-Type": "application/json"}
    cases = {
        "missing column": (post_json(url, {"dataframe_records": [{k: v for k, v in row.items() if k != first}]}), 400, first),
        "unknown column": (post_json(url, {"dataframe_records": [{**row, "not_a_column": 1}]}), 400, "not_a_column"),
        "wrong type": (post_json(url, {"dataframe_records": [{**row, first: "text"}]}), 400, first),
        "empty batch": (post_json(url, {"dataframe_split": {"columns": columns, "data": []}}), 400, "no rows"),
        "malformed JSON": (request(url, b'{"inputs": [', json_type, "POST"), 400, "JSON"),
        "oversized body": (announce_oversized_body(served.url, 1024 * 1024 + 1), 413, "MAX_BODY_BYTES"),
        "wrong content type": (request(url, b"x", {"Content-Type": "text/plain"}, "POST"), 415, "text/plain"),
        "typed, unknown column": (post_json(f"{served.url}/predict", {"rows": [{**row, "zz": 1}]}), 422, "zz"),
    }  # fmt: skip
    for name, ((status, _, body), expected_status, named) in cases.items():
        assert status == expected_status, (name, body)
        assert isinstance(body, dict) and named in body["message"], (name, body)
        assert request(f"{served.url}/ping")[0] == 200, f"not answering after {name}"
    _, _, metrics = request(f"{served.url}/metrics")
    assert 'serving_errors_total{endpoint="/invocations",error_code="SCHEMA_MISMATCH"}' in metrics


# --- token, prediction log, integrity ----------------------------------------------------------------


def test_token_guards_all_but_ping_and_health(image, guarded):
    split = {"dataframe_split": image.example}
    assert request(f"{guarded.url}/ping")[0] == 200
    assert request(f"{guarded.url}/health")[0] == 200
    for path in ("/metadata", "/metrics", "/version", "/openapi.json"):
        assert request(f"{guarded.url}{path}")[0] == 401, path
    assert post_json(f"{guarded.url}/invocations", split)[0] == 401
    status, _, answer = post_json(
        f"{guarded.url}/invocations", split, {"Authorization": "Bearer slow-lane-token"}
    )
    assert status == 200 and close(answer["predictions"], image.expected["predictions"])


def test_prediction_log_is_written_when_asked(image, guarded):
    post_json(
        f"{guarded.url}/invocations",
        {"dataframe_split": image.example},
        {"Authorization": "Bearer slow-lane-token"},
    )
    deadline = time.monotonic() + 10
    while not (lines := guarded.exec("cat", "/tmp/predictions.jsonl").stdout.splitlines()):
        assert time.monotonic() < deadline, "no prediction log line within 10 s"
        time.sleep(0.2)
    entry = json.loads(lines[-1])
    assert set(entry["inputs"]) == set(image.example["columns"])
    assert entry["model_version"] == image.tag.split(":")[1] and "prediction" in entry


def test_refuses_to_start_on_a_tampered_model_file(image):
    """The image's own entry point, on a copy of its bundle with one byte added to the model."""
    tamper = (
        "cp -r /opt/bundle /tmp/bundle && printf x >> /tmp/bundle/model/model.skops && "
        "exec python -m crisp_ml.serving --bundle /tmp/bundle"
    )
    done = docker(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "sh", image.tag, "-c", tamper,
        check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert "differ from the integrity record" in done.stderr, done.stderr
    assert "model.skops: SHA-256" in done.stderr, "the message names the file"


# --- last: it builds another image under the same tag, and puts the ONNX one back ----------------


def test_the_scikit_learn_runtime_image_starts_and_answers(image, docker_base_image):
    """The image of a version 05 could not compile (here forced with SERVING_RUNTIME): the `serve`
    group, scikit-learn, SciPy and pandas included, built, run and checked by `image` itself."""
    if image.task != "classification":
        pytest.skip("the same Dockerfile and requirements for both tasks; built once to save time")
    name, onnx_image = image.tag.split(":")[0], image_id(image.tag)
    env = {"BASE_IMAGE": docker_base_image, "SERVING_RUNTIME": "scikit-learn"}
    try:
        done = image.project.cli("image", env=env, timeout=1800)
        assert "served by scikit-learn" in done.stdout and "verified" in done.stdout, done.stdout
        assert image_id(image.tag) != onnx_image
        assert_holds_what_the_server_runs_and_no_build_leftovers(image.tag)
    finally:  # the tag and build/image/ are the ONNX image's again, for any test after this one
        sklearn_image = image_id(image.tag)
        for tag in (image.tag, f"{name}:latest"):
            docker("tag", onnx_image, tag)
        if sklearn_image != onnx_image:
            docker("image", "rm", sklearn_image, check=False)
        image.project.cli("image", "--no-build", check=False)


def image_id(tag: str) -> str:
    return docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()
