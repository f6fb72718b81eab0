"""Two registered versions in one server, in a generated project: `serve --mode ab|shadow` over
real HTTP, and the image built with `image --mode ab`.

The smoke pipeline runs twice: version 1 is the champion, version 2 the challenger (the same data
and seed give the same score, and only a strictly better one takes the champion alias).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from containers import docker, run_container

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("two-versions")]


def post(url: str, payload: dict, request_id: str):
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-Request-ID": request_id},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.headers, answer.read()  # case-insensitive names


def answers_here(project) -> dict:
    """Each version's input example and in-process answers, by version, from `serve`'s bundles."""
    return project.python_json(
        """
        import json
        from pathlib import Path
        from crisp_ml.serving.image import expected_answers
        found = {}
        for version in ("1", "2"):
            example, expected = expected_answers(Path("build/serving") / version)
            found[version] = {"example": example, "expected": expected}
        print(json.dumps(found))
        """
    )


def payload(example: dict, classification: bool) -> dict:
    body = {"dataframe_split": example}
    return body | ({"params": {"probabilities": True}} if classification else {})


def test_serve_ab_splits_requests_within_tolerance_and_keeps_each_key_on_one_version(two_versions):
    project, task = two_versions
    share, n = 0.3, 600
    with project.serving("--mode", "ab", "--share", str(share)) as url:
        here = answers_here(project)
        body = payload(here["1"]["example"], task == "classification")
        versions = {}
        for i in range(n):
            headers, raw = post(url, body, f"split-{i}")
            version = headers["X-Model-Version"]
            assert headers["X-Model-Arm"] == {"1": "champion", "2": "challenger"}[version]
            versions[f"split-{i}"] = version
            if i < 40:
                got = json.loads(raw)
                assert got["predictions"] == pytest.approx(here[version]["expected"]["predictions"])
        for key in list(versions)[:20]:
            again = {post(url, body, key)[0]["X-Model-Version"] for _ in range(5)}
            assert again == {versions[key]}, f"{key} moved between versions"
        described = json.loads(urllib.request.urlopen(f"{url}/version", timeout=10).read())
    challenger = sum(v == "2" for v in versions.values())
    sigma = (n * share * (1 - share)) ** 0.5
    assert abs(challenger - n * share) <= 4 * sigma, challenger
    assert described["mode"] == "ab" and described["share"] == share
    assert [a["model_version"] for a in described["arms"]] == ["1", "2"]


def test_serve_shadow_answers_as_single_mode_and_logs_both_versions(two_versions):
    project, task = two_versions
    requests = [f"shadow-{i}" for i in range(30)]
    with project.serving() as url:
        body = payload(champion_example(project), task == "classification")
        single = [post(url, body, key)[1] for key in requests]
    log = project.root / "logs" / "shadow-test.jsonl"
    log.unlink(missing_ok=True)
    with project.serving("--mode", "shadow", env={"PREDICTION_LOG": str(log)}) as url:
        here = answers_here(project)
        shadowed = []
        for key in requests:
            headers, raw = post(url, body, key)
            assert headers["X-Model-Arm"] == "champion" and headers["X-Model-Version"] == "1"
            shadowed.append(raw)
        deadline = time.monotonic() + 30
        rows = len(here["1"]["example"]["data"])
        while time.monotonic() < deadline:
            lines = [json.loads(x) for x in log.read_text().splitlines()]
            if sum(line["arm"] == "shadow" for line in lines) == rows * len(requests):
                break
            time.sleep(0.3)
    assert shadowed == single, "the champion's answers, byte for byte"
    mine = [line for line in lines if line["arm"] == "champion"]
    shadows = [line for line in lines if line["arm"] == "shadow"]
    assert len(mine) == len(shadows) == rows * len(requests)
    assert {line["model_version"] for line in shadows} == {"2"}
    first = sorted((x for x in shadows if x["request_id"] == "shadow-0"), key=lambda x: x["row"])
    assert [x["prediction"] for x in first] == pytest.approx(here["2"]["expected"]["predictions"])


def champion_example(project) -> dict:
    """The champion's input example, from the bundle `serve` exported."""
    return project.python_json(
        """
        import json
        from pathlib import Path
        from crisp_ml.serving.image import expected_answers
        print(json.dumps(expected_answers(Path("build/serving/1"))[0]))
        """
    )


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        (("--challenger", "champion"), "the champion and the challenger are both"),
        (("--routing-column", "no_such_column"), "'no_such_column' is not an input column"),
    ],
)
def test_an_image_of_a_pair_the_server_would_refuse_is_refused_before_any_build(
    two_versions, given, refusal
):
    """Staging asks the server's own checks (no engine needed): the refusal comes before a build,
    and no half-staged build context is left to build by hand."""
    project, _ = two_versions
    done = project.cli("image", "--mode", "ab", *given, "--no-build", check=False)
    assert done.returncode != 0 and refusal in done.stderr, done.stderr
    assert not (project.root / "build" / "image").exists()


def test_the_ab_image_holds_both_versions_and_each_answers(two_versions, docker_base_image):
    project, _ = two_versions
    done = project.cli(
        "image", "--mode", "ab", "--share", "0.5", env={"BASE_IMAGE": docker_base_image},
        timeout=1800,
    )  # fmt: skip
    assert "verified" in done.stdout, done.stdout
    tag = next(word for word in done.stdout.split() if word.endswith(":1-ab-2"))
    here = project.python_json(
        """
        import json
        from pathlib import Path
        from crisp_ml.serving.arms import key_for
        from crisp_ml.serving.image import expected_answers
        found = {}
        for arm, folder, version in (("champion", "bundle", "1"), ("challenger", "challenger", "2")):
            example, expected = expected_answers(Path("build/image") / folder)
            found[version] = {"example": example, "expected": expected, "key": key_for(arm, 0.5)}
        print(json.dumps(found))
        """
    )
    container = run_container(tag)
    cid, url = container.id, container.url
    try:
        for version, held in here.items():
            headers, raw = post(url, payload(held["example"], False), held["key"])
            assert headers["X-Model-Version"] == version
            got = json.loads(raw)["predictions"]
            assert got == pytest.approx(held["expected"]["predictions"])
        labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", tag).stdout)
        assert labels["ml.serving.mode"] == "ab" and labels["ml.challenger.version"] == "2"
    finally:
        docker("rm", "--force", cid, check=False)
        docker("image", "rm", "--force", tag, check=False)


def test_the_shadow_image_answers_as_the_champion_and_logs_the_challenger(
    two_versions, docker_base_image
):
    project, _ = two_versions
    done = project.cli(
        "image", "--mode", "shadow", env={"BASE_IMAGE": docker_base_image}, timeout=1800
    )
    assert "verified" in done.stdout, done.stdout
    tag = next(word for word in done.stdout.split() if word.endswith(":1-shadow-2"))
    example, expected = project.python_json(
        """
        import json
        from pathlib import Path
        from crisp_ml.serving.image import expected_answers
        print(json.dumps(expected_answers(Path("build/image/bundle"))))
        """
    )
    container = run_container(tag, "-e", "PREDICTION_LOG=/tmp/predictions.jsonl")
    try:
        headers, raw = post(container.url, payload(example, False), "shadow-check")
        assert (headers["X-Model-Version"], headers["X-Model-Arm"]) == ("1", "champion")
        assert json.loads(raw)["predictions"] == pytest.approx(expected["predictions"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the challenger scores after the answer is sent
            lines = container.exec("cat", "/tmp/predictions.jsonl").stdout.splitlines()
            shadows = [json.loads(line) for line in lines if '"shadow"' in line]
            if len(shadows) == len(example["data"]):
                break
            time.sleep(0.3)
        assert {(s["model_version"], s["arm"]) for s in shadows} == {("2", "shadow")}
    finally:
        docker("rm", "--force", container.id, check=False)
        docker("image", "rm", "--force", tag, check=False)
