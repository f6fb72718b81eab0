"""Two versions in one server (SERVING_MODE ab and shadow), in-process, with two toy bundles.

The champion is the toy pipeline as test_serving.py fits it (version 7); the challenger is fitted
on other rows with a much stronger penalty (version 8), so its probabilities (and values) differ
from the champion's on every row: an answer says by itself which version gave it.
"""

import hashlib
import json
import re
import shutil
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression, Ridge

from crisp_ml.serving import arms
from crisp_ml.serving import bundle as bundle_files
from crisp_ml.serving.__main__ import main as serve_main
from crisp_ml.serving.app import create_app
from crisp_ml.serving.settings import Settings

from .test_workers import free_port, start, stop
from .toy_models import PROVENANCE, pipeline, save_bundle, training_data

TASKS = ["classification", "regression"]
CHALLENGER_PROVENANCE = {**PROVENANCE, "version": "8", "run_id": "run-2"}
ROWS = [
    {
        "size": 9.0 + i / 10,
        "weight": 45.0 + i,
        "count": i,
        "colour": ["red", "green", "blue"][i % 3],
    }
    for i in range(5)
]


def challenger_pipeline(task: str):
    model = pipeline(task)
    strong = LogisticRegression(C=0.02) if task == "classification" else Ridge(alpha=200.0)
    model.steps[-1] = (model.steps[-1][0], strong)
    return model


@pytest.fixture(scope="module", params=TASKS)
def task(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, task) -> tuple[Path, Path]:
    return make_bundles(tmp_path_factory, task)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> tuple[Path, Path]:
    """The classification pair, for what does not depend on the task (the split)."""
    return make_bundles(tmp_path_factory, "classification")


def make_bundles(tmp_path_factory, task: str) -> tuple[Path, Path]:
    """(champion bundle, challenger bundle) for the task."""
    X, labels, values = training_data()
    X2, labels2, values2 = training_data(seed=1)
    y, y2 = (labels, labels2) if task == "classification" else (values, values2)
    champion = save_bundle(
        tmp_path_factory.mktemp(f"champion-{task}"), pipeline(task).fit(X, y), X, task
    )
    challenger = save_bundle(
        tmp_path_factory.mktemp(f"challenger-{task}"),
        challenger_pipeline(task).fit(X2, y2), X2, task, provenance=CHALLENGER_PROVENANCE,
    )  # fmt: skip
    return champion, challenger


def settings(mode: str = "single", challenger: Path | None = None, **plan) -> Settings:
    bundle = str(challenger) if challenger else None
    return Settings(plan=arms.Plan(mode=mode, challenger_bundle=bundle, **plan))


def invoke(client: TestClient, request_id: str | None = None, rows=ROWS, probabilities=False):
    headers = {"X-Request-ID": request_id} if request_id else {}
    query = "?probabilities=true" if probabilities else ""
    return client.post(f"/invocations{query}", json={"inputs": rows}, headers=headers)


@pytest.fixture(scope="module")
def singles(bundles):
    """Single-mode servers of the champion and of the challenger: the answers to compare with."""
    champion, challenger = bundles
    with (
        TestClient(create_app(champion, settings())) as first,
        TestClient(create_app(challenger, settings())) as second,
    ):
        yield first, second


def answers(singles, task: str) -> dict[str, dict]:
    """What each version answers to ROWS alone, by version."""
    probabilities = task == "classification"
    return {
        version: invoke(client, probabilities=probabilities).json()
        for version, client in zip(("7", "8"), singles, strict=True)
    }


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = (
        rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$"
        if labels
        else (rf"^{re.escape(name)} (\S+)$")
    )
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- ab: the split ---------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_ab_splits_distinct_request_ids_within_binomial_tolerance_of_the_share(classifiers, share):
    # The split over many ids is the routing function's; the server is shown to follow it per id
    # (each request scored by a real model costs milliseconds, the function microseconds).
    n = 20_000
    to_challenger = sum(
        arms.route(f"split-{share}-{i}", share) == arms.CHALLENGER for i in range(n)
    )
    sigma = (n * share * (1 - share)) ** 0.5
    assert abs(to_challenger - n * share) <= 4 * sigma, to_challenger
    champion, challenger = classifiers
    version = {
        arms.CHAMPION: PROVENANCE["version"],
        arms.CHALLENGER: CHALLENGER_PROVENANCE["version"],
    }
    with TestClient(create_app(champion, settings("ab", challenger, share=share))) as client:
        for i in range(200):
            key = f"split-{share}-{i}"
            answer = invoke(client, key, rows=ROWS[:1])
            arm = arms.route(key, share)
            assert answer.headers["X-Model-Arm"] == arm, key
            assert answer.headers["X-Model-Version"] == version[arm], key


@pytest.mark.parametrize(("share", "only"), [(0.0, "champion"), (1.0, "challenger")])
def test_share_zero_or_one_sends_every_request_to_one_version(classifiers, share, only):
    champion, challenger = classifiers
    with TestClient(create_app(champion, settings("ab", challenger, share=share))) as client:
        arms_seen = {invoke(client, f"all-{i}").headers["X-Model-Arm"] for i in range(300)}
        unkeyed = {invoke(client).headers["X-Model-Arm"] for _ in range(50)}
    assert arms_seen == unkeyed == {only}


def test_the_same_request_id_always_gets_the_same_version_and_the_hash_is_sha256(classifiers):
    champion, challenger = classifiers
    with TestClient(create_app(champion, settings("ab", challenger))) as client:
        for i in range(30):
            key = f"sticky-{i}"
            got = {invoke(client, key).headers["X-Model-Arm"] for _ in range(20)}
            digest = hashlib.sha256(key.encode()).digest()  # not Python's per-process hash()
            want = "challenger" if int.from_bytes(digest[:8], "big") / 2**64 < 0.5 else "champion"
            assert got == {want}, key


def test_unkeyed_requests_are_split_at_random(classifiers):
    champion, challenger = classifiers
    with TestClient(create_app(champion, settings("ab", challenger))) as client:
        seen = [invoke(client).headers["X-Model-Arm"] for _ in range(200)]
    assert 50 < seen.count("challenger") < 150


def test_the_routing_column_of_the_first_row_routes_the_whole_request(bundles, tmp_path):
    champion, challenger = bundles
    log = tmp_path / "predictions.jsonl"
    plan = settings("ab", challenger, routing_column="colour")
    with TestClient(create_app(champion, replace(plan, prediction_log=str(log)))) as client:
        seen = set()
        for i in range(200):
            customer = f"customer-{i % 40}"
            rows = [{**ROWS[0], "colour": customer}, *ROWS[1:]]
            answer = invoke(client, f"any-id-{i}", rows=rows)  # a new id each time
            seen.add((customer, answer.headers["X-Model-Arm"]))
            assert answer.headers["X-Model-Arm"] == arms.route(customer, 0.5)
    assert len(seen) == 40, "each customer always gets the same version"
    by_request: dict[str, set] = {}
    for line in read_log(log):
        by_request.setdefault(line["request_id"], set()).add((line["arm"], line["model_version"]))
    assert all(len(versions) == 1 for versions in by_request.values()), "one version per request"
    assert {a for v in by_request.values() for a, _ in v} == {"champion", "challenger"}


# --- ab: what is answered, logged and counted ------------------------------------------------------


def test_ab_answers_logs_and_counts_each_row_with_the_version_that_answered(
    bundles, singles, task, tmp_path
):
    champion, challenger = bundles
    expected = answers(singles, task)
    log = tmp_path / "predictions.jsonl"
    config = replace(settings("ab", challenger), prediction_log=str(log))
    classification = task == "classification"
    sent = {}
    with TestClient(create_app(champion, config)) as client:
        for i in range(40):
            answer = invoke(client, f"ab-{i}", probabilities=classification)
            sent[f"ab-{i}"] = answer.headers["X-Model-Version"]
            assert answer.json() == expected[answer.headers["X-Model-Version"]]
        typed = client.post("/predict", json={"rows": ROWS}, headers={"X-Request-ID": "typed"})
        assert typed.json()["model_version"] == typed.headers["X-Model-Version"]
        assert typed.headers["X-Model-Arm"] == arms.route("typed", 0.5)
        sent["typed"] = typed.headers["X-Model-Version"]
        text = client.get("/metrics").text
        version = client.get("/version").json()
        metadata = client.get("/metadata").json()
    lines = read_log(log)
    assert len(lines) == len(sent) * len(ROWS)
    for line in lines:
        version_of = sent[line["request_id"]]
        assert line["model_version"] == version_of
        assert line["arm"] == {"7": "champion", "8": "challenger"}[version_of]
        assert list(line)[:8] == [
            "timestamp", "request_id", "endpoint", "model_name", "model_version", "latency_ms",
            "arm", "row",
        ]  # fmt: skip
        if line["request_id"] != "typed":
            assert line["prediction"] == expected[version_of]["predictions"][line["row"]]
    assert sorted(line["row"] for line in lines if line["request_id"] == "ab-0") == [0, 1, 2, 3, 4]
    for arm, version_of in (("champion", "7"), ("challenger", "8")):
        count = sum(v == version_of for v in sent.values())
        assert count, "both versions answered"
        labels = {"arm": arm, "model_version": version_of}
        assert metric(text, "serving_arm_requests_total", **labels) == count
        assert metric(text, "serving_arm_predict_seconds_count", **labels) == count
    assert version["mode"] == "ab" and version["share"] == 0.5
    assert [(a["arm"], a["model_version"]) for a in version["arms"]] == [
        ("champion", "7"), ("challenger", "8"),
    ]  # fmt: skip
    assert metadata["challenger"]["model"] == CHALLENGER_PROVENANCE and metadata["mode"] == "ab"


def test_single_mode_answers_logs_and_headers_are_as_before(bundles, task, tmp_path):
    champion, _ = bundles
    log = tmp_path / "predictions.jsonl"
    with TestClient(create_app(champion, Settings(prediction_log=str(log)))) as client:
        answer = invoke(client, "one", probabilities=task == "classification")
        typed = client.post("/predict", json={"rows": ROWS})
        text = client.get("/metrics").text
    assert answer.headers["X-Model-Arm"] == typed.headers["X-Model-Arm"] == "champion"
    assert answer.headers["X-Model-Version"] == typed.json()["model_version"] == "7"
    lines = read_log(log)
    assert all("arm" not in line and "row" not in line for line in lines)
    assert list(lines[0]) == [
        "timestamp", "request_id", "endpoint", "model_name", "model_version", "latency_ms",
        "inputs", "prediction", *(["probabilities"] if task == "classification" else []),
    ]  # fmt: skip
    assert metric(text, "serving_arm_requests_total", arm="champion", model_version="7") == 2


# --- shadow ---------------------------------------------------------------------------------------


def test_shadow_answers_exactly_as_single_mode_and_logs_the_challengers_own_answers(
    bundles, singles, task, tmp_path
):
    champion, challenger = bundles
    log = tmp_path / "predictions.jsonl"
    config = replace(settings("shadow", challenger), prediction_log=str(log))
    classification = task == "classification"
    requests = [(f"shadow-{i}", ROWS[i % 5 :] or ROWS) for i in range(30)]
    with TestClient(create_app(champion, config)) as client:
        got = []
        for request_id, rows in requests:
            answer = invoke(client, request_id, rows=rows, probabilities=classification)
            assert answer.headers["X-Model-Arm"] == "champion"
            assert answer.headers["X-Model-Version"] == "7"
            got.append(answer.content)
        client.app.state.shadow.join()
        text = client.get("/metrics").text
    single_champion, single_challenger = singles
    for (request_id, rows), content in zip(requests, got, strict=True):
        want = invoke(single_champion, request_id, rows=rows, probabilities=classification)
        assert content == want.content, "byte for byte the single-mode answer"
    lines = read_log(log)
    mine = [line for line in lines if line["arm"] == "champion"]
    shadows = [line for line in lines if line["arm"] == "shadow"]
    assert len(mine) == len(shadows) == sum(len(rows) for _, rows in requests)
    assert {line["model_version"] for line in mine} == {"7"}
    assert {line["model_version"] for line in shadows} == {"8"}
    assert all("inputs" not in line for line in shadows) and all("inputs" in m for m in mine)
    for request_id, rows in requests:
        own = invoke(single_challenger, rows=rows, probabilities=classification).json()
        lines_of = sorted(
            (line for line in shadows if line["request_id"] == request_id), key=lambda x: x["row"]
        )
        assert [line["prediction"] for line in lines_of] == own["predictions"]
        if classification:
            assert [line["probabilities"] for line in lines_of] == own["probabilities"]
    assert metric(text, "serving_arm_requests_total", arm="shadow", model_version="8") == 30
    assert metric(text, "serving_arm_requests_total", arm="champion", model_version="7") == 30
    assert metric(text, "serving_shadow_dropped_total") == 0


def test_a_full_shadow_queue_drops_the_shadow_scoring_and_counts_it_never_waits(
    bundles, tmp_path, monkeypatch
):
    champion, challenger = bundles
    log = tmp_path / "predictions.jsonl"
    config = replace(settings("shadow", challenger, shadow_queue=1), prediction_log=str(log))
    entered, release = threading.Event(), threading.Event()
    with TestClient(create_app(champion, config)) as client:
        model = client.app.state.challenger.model
        slow_predict = model.predict

        def blocked(inputs):
            entered.set()
            assert release.wait(30)
            return slow_predict(inputs)

        monkeypatch.setattr(model, "predict", blocked)
        assert invoke(client, "first").status_code == 200
        assert entered.wait(10), "the shadow thread took the first request"
        for i in range(4):  # one waits in the queue, three find it full (and never wait)
            assert invoke(client, f"next-{i}").status_code == 200
        assert metric(client.get("/metrics").text, "serving_shadow_dropped_total") == 3
        release.set()
        client.app.state.shadow.join()
    shadowed = {line["request_id"] for line in read_log(log) if line["arm"] == "shadow"}
    assert shadowed == {"first", "next-0"}


def test_the_shadow_queue_is_bounded_by_rows_too(bundles, monkeypatch):
    """A queue of few requests can still hold large ones: the rows waiting are bounded as well."""
    champion, challenger = bundles
    release = threading.Event()
    with TestClient(create_app(champion, settings("shadow", challenger))) as client:
        shadow = client.app.state.shadow
        shadow.max_rows = len(ROWS)  # room for one request's rows
        model = client.app.state.challenger.model
        slow_predict = model.predict
        monkeypatch.setattr(
            model, "predict", lambda inputs: release.wait(30) and slow_predict(inputs)
        )
        for i in range(3):
            assert invoke(client, f"rows-{i}").status_code == 200
        assert metric(client.get("/metrics").text, "serving_shadow_dropped_total") == 2
        release.set()
        shadow.join()
        assert shadow.pending_rows == 0


def test_two_version_modes_log_a_classifiers_probabilities_even_when_not_asked(
    classifiers, tmp_path
):
    """The experiment's metric may need them (ROC AUC); the answer keeps MLflow's shape."""
    champion, challenger = classifiers
    for mode in ("ab", "shadow"):
        log = tmp_path / f"{mode}.jsonl"
        config = replace(settings(mode, challenger), prediction_log=str(log))
        with TestClient(create_app(champion, config)) as client:
            answer = invoke(client, f"{mode}-plain")
            if client.app.state.shadow:
                client.app.state.shadow.join()
        assert set(answer.json()) == {"predictions"}
        lines = read_log(log)
        assert lines and all(isinstance(line.get("probabilities"), dict) for line in lines), mode


# --- more than one worker ---------------------------------------------------------------------------


def test_arm_metrics_add_up_across_workers(classifiers, tmp_path):
    champion, challenger = classifiers
    env = {
        "SERVING_WORKERS": "2", "SERVING_MODE": "ab", "CHALLENGER_BUNDLE": str(challenger),
    }  # fmt: skip
    server, port, _ = start(champion, tmp_path, env)
    try:
        url = f"http://127.0.0.1:{port}"
        counts = {"champion": 0, "challenger": 0}
        for i in range(60):
            request = urllib.request.Request(
                f"{url}/invocations", data=json.dumps({"inputs": ROWS}).encode(), method="POST",
                headers={"Content-Type": "application/json", "X-Request-ID": f"w-{i}"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=30) as answer:
                counts[answer.headers["X-Model-Arm"]] += 1
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
            text = answer.read().decode()
    finally:
        stop(server)
    assert (
        metric(text, "serving_arm_requests_total", arm="champion", model_version="7")
        == (counts["champion"])
    )
    assert (
        metric(text, "serving_arm_requests_total", arm="challenger", model_version="8")
        == (counts["challenger"])
    )


# --- bad settings ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_signature(tmp_path_factory, task) -> Path:
    """A version 9 that takes no `count` column."""
    X, labels, values = training_data(seed=2)
    X = X.drop(columns="count")
    model = pipeline(task).fit(X, labels if task == "classification" else values)
    return save_bundle(
        tmp_path_factory.mktemp("other"), model, X, task, provenance={**PROVENANCE, "version": "9"}
    )


def refusal(capsys, *argv: str) -> tuple[int, str]:
    code = serve_main(["--port", str(free_port()), *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("share", ["1.5", "-0.1", "half", "nan"])
def test_a_share_outside_zero_to_one_is_refused_with_exit_2_naming_the_setting(
    bundles, capsys, share
):
    champion, challenger = bundles
    code, err = refusal(
        capsys, "--bundle", str(champion), "--mode", "ab", "--challenger-bundle", str(challenger),
        "--share", share,
    )  # fmt: skip
    assert code == 2
    assert "SERVING_CHALLENGER_SHARE" in err and "from 0 to 1" in err, err


def test_the_share_setting_is_checked_in_the_environment_too(monkeypatch):
    monkeypatch.setenv("SERVING_CHALLENGER_SHARE", "2")
    with pytest.raises(arms.SettingsError, match="SERVING_CHALLENGER_SHARE"):
        Settings.from_env()


@pytest.mark.parametrize("mode", ["ab", "shadow"])
def test_two_version_modes_without_a_challenger_bundle_are_refused(bundles, capsys, tmp_path, mode):
    champion, _ = bundles
    code, err = refusal(capsys, "--bundle", str(champion), "--mode", mode)
    assert code == 2 and "CHALLENGER_BUNDLE" in err, err
    empty = tmp_path / "empty"
    empty.mkdir()  # the image's /opt/challenger after a single-mode build
    code, err = refusal(
        capsys, "--bundle", str(champion), "--mode", mode, "--challenger-bundle", str(empty)
    )
    assert code == 2 and "is empty" in err, err


def test_an_unknown_mode_is_refused(bundles, capsys):
    code, err = refusal(capsys, "--bundle", str(bundles[0]), "--mode", "canary")
    assert code == 2 and "SERVING_MODE" in err and "single, ab, shadow" in err, err


def test_the_same_version_twice_is_refused(bundles, capsys, tmp_path):
    champion, _ = bundles
    copy = shutil.copytree(champion, tmp_path / "copy")
    code, err = refusal(
        capsys, "--bundle", str(champion), "--mode", "ab", "--challenger-bundle", str(copy)
    )
    assert code == 2 and "both test-model version 7" in err, err


def test_a_challenger_with_another_signature_is_refused_with_exit_4(
    bundles, other_signature, capsys
):
    code, err = refusal(
        capsys, "--bundle", str(bundles[0]), "--mode", "shadow",
        "--challenger-bundle", str(other_signature),
    )  # fmt: skip
    assert code == 4 and "signatures must be the same" in err and "count: long" in err, err


def test_a_challenger_of_the_other_task_is_refused_with_exit_4(
    classifiers, tmp_path_factory, capsys
):
    """The same input columns, another question: a regressor cannot challenge a classifier."""
    _, regressor = make_bundles(tmp_path_factory, "regression")
    # --check: the start's own checks, then exit; were the refusal gone, this returns 0, not serves
    code, err = refusal(
        capsys, "--check", "--bundle", str(classifiers[0]), "--mode", "ab",
        "--challenger-bundle", str(regressor),
    )  # fmt: skip
    assert code == 4 and "a regression model, the champion a classification one" in err, err


def test_a_challenger_whose_file_differs_from_its_manifest_is_refused_with_exit_3(
    bundles, capsys, tmp_path
):
    champion, challenger = bundles
    tampered = shutil.copytree(challenger, tmp_path / "tampered")
    with (tampered / bundle_files.MODEL_DIR / "MLmodel").open("a") as mlmodel:
        mlmodel.write("\n# changed\n")
    code, err = refusal(
        capsys, "--bundle", str(champion), "--mode", "ab", "--challenger-bundle", str(tampered)
    )
    assert code == 3 and "MLmodel" in err, err


def test_an_unknown_routing_column_is_refused(bundles, capsys):
    champion, challenger = bundles
    code, err = refusal(
        capsys, "--bundle", str(champion), "--mode", "ab", "--challenger-bundle", str(challenger),
        "--routing-column", "customer_id",
    )  # fmt: skip
    assert code == 2 and "SERVING_ROUTING_COLUMN='customer_id'" in err, err


def test_single_mode_ignores_a_challenger_bundle(bundles):
    champion, _ = bundles
    app = create_app(champion, settings("single", Path("/nonexistent")))
    assert app.state.challenger is None and app.state.shadow is None
