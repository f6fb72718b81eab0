"""Evaluation, the acceptance gate and the registry of a generated project, run for real.

On the smoked project of each task: 04 leaves its metrics, plots, segment table, gate verdict and
model card, and 05 leaves a champion carrying its lineage. On a project of its own (its registry is
changed here): an unreachable threshold fails the gate and registers nothing, a worse model stays
the challenger, and `rollback` moves the champion and back.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

HEADLINE = {"classification": "roc_auc", "regression": "mae"}
PLOTS = {
    "classification": {"curves.png", "confusion_matrix.png", "segments.png"},
    "regression": {"residuals.png", "segments.png"},
}
NO_IMAGE = ["--set", "deployment.build_image=false"]  # the image is tested on the smoked project


def latest_phase_runs(project) -> dict:
    """The newest pipeline run's notebooks: tags, metrics and artifacts of 04 and 05."""
    return project.mlflow_query(
        """
        parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
        parent = max(parents, key=lambda r: r.info.start_time)
        children = {
            r.data.tags["mlflow.runName"]: r for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        }
        def facts(run):
            return {
                "status": run.info.status, "tags": run.data.tags, "metrics": run.data.metrics,
                "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)],
            }
        print(json.dumps({
            "parent": parent.info.status,
            **{name: facts(run) for name, run in children.items() if name[:2] in ("04", "05")},
        }))
        """
    )


def registry_state(project) -> dict:
    """Every version of the model with its aliases and tags."""
    return project.mlflow_query(
        """
        versions = client.search_model_versions(f"name='{MODEL_NAME}'")
        aliases = client.get_registered_model(MODEL_NAME).aliases if versions else {}
        print(json.dumps({
            "aliases": {alias: str(version) for alias, version in aliases.items()},
            "versions": {str(v.version): v.tags for v in versions},
        }))
        """
    )


def test_evaluation_leaves_metrics_plots_segments_gate_and_card(smoked_project):
    task = smoked_project.options["task"]
    metric = HEADLINE[task]
    evaluation = latest_phase_runs(smoked_project)["04_evaluation"]
    assert evaluation["status"] == "FINISHED" and evaluation["tags"]["gate"] == "passed"
    assert evaluation["metrics"]["gate_passed"] == 1.0
    assert f"test_{metric}" in evaluation["metrics"]
    assert f"test_worst_segment_{metric}" in evaluation["metrics"]
    if task == "classification":
        assert {"test_accuracy", "test_balanced_accuracy", "test_log_loss"} <= set(
            evaluation["metrics"]
        )
    else:
        assert {"test_rmse", "test_r2"} <= set(evaluation["metrics"])
        assert any(m.startswith("fairness_error_gap") for m in evaluation["metrics"])
    artifacts = set(evaluation["artifacts"])
    assert PLOTS[task] | {"segment_metrics.csv", "gate.json", "model_card.md"} <= artifacts


def test_deployment_registers_a_champion_with_lineage_and_card(smoked_project):
    task = smoked_project.options["task"]
    runs = latest_phase_runs(smoked_project)
    registry = registry_state(smoked_project)
    champion = registry["aliases"]["champion"]
    assert runs["05_deployment"]["tags"]["registry.champion"] == champion
    tags = registry["versions"][champion]
    assert tags["gate"] == "passed" and tags["smoke"] == "true"
    assert tags["evaluation_run_id"] and tags["modelling_run_id"] and tags["data_digest"]
    assert len(tags["git_commit"]) == 40
    assert f"test_{HEADLINE[task]}" in tags
    assert tags["model_card"].startswith("#") and "passed" in tags["model_card"]
    assert "decision.json" in runs["05_deployment"]["artifacts"]


def test_deployment_builds_and_checks_the_champions_image(smoked_project, docker_base_image):
    """The smoked pipeline ran with the engine up: 05 built the image before promoting."""
    runs = latest_phase_runs(smoked_project)
    champion = registry_state(smoked_project)["aliases"]["champion"]
    image = registry_state(smoked_project)["versions"][champion].get("image", "")
    assert image.endswith(f":{champion}"), "05 records the image tag on the new champion"
    assert runs["05_deployment"]["tags"]["registry.image"] == image


@pytest.fixture(scope="module")
def gated_project(project_factory):
    """A classification project with a first champion from a smoke run."""
    project = project_factory(task="classification", project_name="Gate Keeper")
    project.cli("pipeline", "--smoke", *NO_IMAGE)
    return project


def test_an_unreachable_threshold_fails_the_gate_and_registers_nothing(gated_project):
    before = registry_state(gated_project)
    done = gated_project.cli(
        "pipeline", "--smoke", *NO_IMAGE, "--set", "use_case.threshold=0.9999", check=False
    )
    assert done.returncode == 1
    assert "04_evaluation.ipynb failed" in done.stderr
    assert "acceptance gate failed, nothing is registered" in done.stderr
    assert "needs >= 0.9999" in done.stderr
    assert "05_deployment" not in done.stdout, "the pipeline stops at the gate"
    assert registry_state(gated_project) == before, "no version added, the champion untouched"
    evaluation = latest_phase_runs(gated_project)["04_evaluation"]
    assert evaluation["tags"]["gate"] == "failed" and evaluation["status"] == "FAILED"
    gate = gated_project.mlflow_query(
        """
        newest = max((r for r in runs if r.data.tags.get("mlflow.runName") == "04_evaluation"),
                     key=lambda r: r.info.start_time)
        print(json.dumps(mlflow.artifacts.load_dict(f"{newest.info.artifact_uri}/gate.json")))
        """
    )
    failed = {c["criterion"]: c["limit"] for c in gate["criteria"] if not c["passed"]}
    assert failed == {"roc_auc on the test set": 0.9999}


def test_a_worse_model_stays_challenger_and_rollback_moves_the_champion(gated_project):
    champion = registry_state(gated_project)["aliases"]["champion"]
    stump = "{n_estimators: [1], max_depth: [1], min_samples_leaf: [1]}"
    worse = [
        "modelling.candidates=[random_forest]", f"modelling.search_space.random_forest={stump}",
        "use_case.threshold=0.6", "use_case.worst_segment_threshold=0.5",
    ]  # fmt: skip
    done = gated_project.cli(
        "pipeline", "--smoke", *NO_IMAGE, *[arg for s in worse for arg in ("--set", s)]
    )
    assert f"champion stays version {champion}" in done.stdout
    registry = registry_state(gated_project)
    newest = max(registry["versions"], key=int)
    assert registry["aliases"] == {"champion": champion, "challenger": newest}
    assert registry["versions"][newest]["decision"] == "kept champion"
    decision = latest_phase_runs(gated_project)["05_deployment"]["metrics"]
    assert decision["challenger_test_roc_auc"] < decision["champion_test_roc_auc"]

    moved = gated_project.make("rollback", f"--to {newest}")
    assert f"champion moved from version {champion} to version {newest}" in moved.stdout
    back = gated_project.make("rollback")
    assert f"champion moved from version {newest} to version {champion}" in back.stdout
    assert registry_state(gated_project)["aliases"]["champion"] == champion
    refused = gated_project.cli("rollback", check=False)
    assert refused.returncode == 1 and "no previous champion" in refused.stderr
