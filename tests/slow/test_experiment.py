"""Experiments in a generated project, run for real on simulated traffic.

A project of each task runs the smoke pipeline twice: version 1 is the champion, version 2 the
challenger. A prediction log in the `ab` format (each row line with its arm and row) is written
for ~1500 rows of the champion's test set, with outcomes drawn by a known rule:

- the challenger better (classification: right with probability 0.95 against 0.75; regression:
  errors of standard deviation 15 against 45): `experiment` decides promote (exit 0), `promote`
  moves the champion to version 2 and `rollback` moves it back;
- the rule reversed: keep (exit 4), and `promote` refuses (exit 1) without --force;
- 40 rows: continue (exit 3);
- a log served in single mode: an error (exit 1) naming the mode.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("two-versions")]

EXIT = {"promote": 0, "error": 1, "continue": 3, "keep": 4}  # the generated README's table
REQUESTS = 1000  # every other request holds two rows: 1500 rows


def aliases(project) -> dict[str, str]:
    return project.mlflow_query(
        "aliases = client.get_registered_model(MODEL_NAME).aliases\n"
        "print(json.dumps({alias: str(version) for alias, version in aliases.items()}))"
    )


def champion_rows(project) -> pd.DataFrame:
    """The champion's held-out test rows, target included, as traffic and truth to draw from."""
    records = project.python_json(
        """
        import json
        from crisp_ml.monitoring import monitored_version, reference_sets
        from crisp_ml.tracking import client
        mlflow_client = client()
        test = reference_sets(mlflow_client, monitored_version(mlflow_client)).test
        print(json.dumps(test.to_dict(orient="records")))
        """
    )
    return pd.DataFrame(records)


def simulate(project, task: str, name: str, requests: int, better: str, single=False) -> list[str]:
    """logs/<name>.jsonl in the server's ab format and data/<name>.csv the outcomes, drawn so that
    the `better` arm is right more often (classification) or nearer the truth (regression)."""
    rng = np.random.default_rng(len(name) + requests)
    rows = champion_rows(project)
    target = "diagnosis" if task == "classification" else "progression"
    classes = sorted(rows[target].astype(str).unique()) if task == "classification" else []
    quality = {"champion": 0.75, "challenger": 0.75, better: 0.95}  # right, classification
    spread = {"champion": 45.0, "challenger": 45.0, better: 15.0}  # error sd, regression
    lines, outcomes = [], []
    for number in range(requests):
        request = f"{name}-{number}"
        arm = "challenger" if rng.random() < 0.5 else "champion"
        for row in range(2 if number % 2 else 1):
            drawn = rows.iloc[int(rng.integers(len(rows)))]
            truth = drawn[target]
            entry = {
                "timestamp": "2026-01-31T12:00:00.000+00:00", "request_id": request,
                "endpoint": "/predict", "model_name": project.slug,
                "model_version": "2" if arm == "challenger" else "1", "latency_ms": 1.5,
                "inputs": drawn.drop(target).to_dict(),
            }  # fmt: skip
            if not single:
                entry |= {"arm": arm, "row": row}
            if task == "classification":
                right = rng.random() < quality[arm]
                wrong = [c for c in classes if c != str(truth)]
                answer = str(truth) if right else str(rng.choice(wrong))
                lean = 0.55 + 0.4 * rng.random()
                rest = (1 - lean) / (len(classes) - 1)
                entry["prediction"] = answer
                entry["probabilities"] = {c: lean if c == answer else rest for c in classes}
            else:
                entry["prediction"] = float(truth + rng.normal(0, spread[arm]))
            lines.append(json.dumps(entry, default=lambda value: value.item()))
            outcomes.append({"request_id": request, "row": row, target: truth})
    (project.root / "logs").mkdir(exist_ok=True)
    (project.root / "logs" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    pd.DataFrame(outcomes).to_csv(project.root / "data" / f"{name}.csv", index=False)
    return ["--set", f"experiment.prediction_log=logs/{name}.jsonl",
            "--set", f"experiment.outcomes_path=data/{name}.csv"]  # fmt: skip


def experiment_runs(project) -> list[dict]:
    """The experiment runs, oldest first: tags and the decision they logged."""
    return project.mlflow_query(
        """
        import tempfile
        found = sorted((r for r in runs if r.data.tags.get("kind") == "experiment"),
                       key=lambda r: r.info.start_time)
        out = []
        for r in found:
            with tempfile.TemporaryDirectory() as scratch:
                path = client.download_artifacts(r.info.run_id, "experiment.json", scratch)
                out.append({"id": r.info.run_id, "tags": r.data.tags,
                            "decision": json.load(open(path))})
        print(json.dumps(out))
        """
    )


def version_tags(project, version: str) -> dict:
    return project.mlflow_query(
        f'print(json.dumps(client.get_model_version(MODEL_NAME, "{version}").tags))'
    )


def test_a_better_challenger_is_promoted_and_rolled_back(two_versions):
    project, task = two_versions
    settings = simulate(project, task, "better", REQUESTS, better="challenger")
    done = project.cli("experiment", *settings, check=False)
    assert done.returncode == EXIT["promote"], done.stdout + done.stderr
    assert "Decision: promote (champion version 1, challenger version 2, ab)" in done.stdout
    run = experiment_runs(project)[-1]
    assert run["decision"]["action"] == "promote"
    comparison = run["decision"]["comparison"]
    assert comparison["n_champion"] + comparison["n_challenger"] == REQUESTS * 3 // 2
    assert run["tags"]["champion_version"] == "1" and run["tags"]["challenger_version"] == "2"
    for version, role in (("1", "champion"), ("2", "challenger")):
        tags = version_tags(project, version)
        assert (tags["experiment_run_id"], tags["experiment_role"]) == (run["id"], role)
    assert aliases(project)["champion"] == "1", "experiment decides, promote moves"

    moved = project.make("promote")
    assert "champion moved from version 1 to version 2" in moved.stdout
    assert aliases(project) == {"champion": "2"}
    assert version_tags(project, "2")["promoted_by_experiment"] == run["id"]
    project.make("rollback")
    assert aliases(project) == {"champion": "1"}
    project.mlflow_query(  # as the other tests of this project expect it
        'client.set_registered_model_alias(MODEL_NAME, "challenger", "2")\nprint("null")'
    )


def test_a_worse_challenger_is_kept_and_promote_refuses(two_versions):
    project, task = two_versions
    settings = simulate(project, task, "worse", REQUESTS, better="champion")
    done = project.cli("experiment", *settings, check=False)
    assert done.returncode == EXIT["keep"], done.stdout + done.stderr
    assert "keep: the champion is better" in done.stdout
    refused = project.cli("promote", check=False)
    assert refused.returncode == 1
    assert "decided keep, not promote" in refused.stderr
    assert aliases(project)["champion"] == "1"


def test_a_small_experiment_continues(two_versions):
    project, task = two_versions
    settings = simulate(project, task, "small", 27, better="challenger")  # 40 rows
    done = project.cli("experiment", *settings, check=False)
    assert done.returncode == EXIT["continue"], done.stdout + done.stderr
    assert "fewer than 30 rows in an arm" in done.stdout
    assert experiment_runs(project)[-1]["decision"]["comparison"]["n_champion"] < 30


def test_a_log_served_by_one_version_is_an_error_naming_the_mode(two_versions):
    project, task = two_versions
    settings = simulate(project, task, "single", 50, better="challenger", single=True)
    done = project.cli("experiment", *settings, check=False)
    assert done.returncode == EXIT["error"]
    assert "has no arms" in done.stderr and "--mode ab" in done.stderr
