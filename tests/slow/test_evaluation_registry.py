"""Evaluation, the acceptance gate and the registry of a generated project, run for real.

On the smoked project of each task: 04 leaves its metrics, plots, segment table, gate verdict and
model card; 05 leaves a champion carrying its lineage and its image; an unreachable threshold fails
the gate and registers nothing; a worse model stays the challenger; `rollback` moves the champion
and back.
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


def deployment_run_of(project, version: str) -> dict:
    """Tags of the 05_deployment run that registered `version`."""
    return project.mlflow_query(
        f"""
        found = [r for r in runs if r.data.tags.get("mlflow.runName") == "05_deployment"
                 and r.data.tags.get("registry.version") == "{version}"]
        print(json.dumps(found[0].data.tags))
        """
    )


def test_deployment_builds_and_checks_the_champions_image(smoked_project, docker_base_image):
    """The smoked pipeline ran with the engine up: 05 built the image before promoting."""
    registry = registry_state(smoked_project)
    champion = registry["aliases"]["champion"]
    image = registry["versions"][champion].get("image", "")
    assert image.endswith(f":{champion}"), "05 records the image tag on the new champion"
    assert deployment_run_of(smoked_project, champion)["registry.image"] == image


# The gate and the champion, on the smoked project: `--from` reuses its last run's data (and model),
# and the champion is back where it was at the end.
UNREACHABLE = {
    "classification": ("use_case.threshold=0.9999", "roc_auc on the test set", ">= 0.9999"),
    "regression": ("use_case.threshold=0.0001", "mae on the test set", "<= 0.0001"),
}
STUMP = "{n_estimators: [1], max_depth: [1], min_samples_leaf: [1]}"  # one tree of depth 1
WORSE_BUT_ACCEPTABLE = {
    "classification": ["use_case.threshold=0.6", "use_case.worst_segment_threshold=0.5"],
    "regression": [
        "use_case.threshold=1000", "use_case.worst_segment_threshold=1000",
        "evaluation.baseline_margin=0.0", "use_case.fairness_limits.error_gap=1000",
    ],
}  # fmt: skip


def sets(*values: str) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def test_an_unreachable_threshold_fails_the_gate_and_registers_nothing(smoked_project):
    task = smoked_project.options["task"]
    setting, criterion, needs = UNREACHABLE[task]
    before = registry_state(smoked_project)
    done = smoked_project.cli(
        "pipeline", "--smoke", "--from", "04", *NO_IMAGE, *sets(setting), check=False
    )
    assert done.returncode == 1
    assert "04_evaluation.ipynb failed" in done.stderr
    assert "acceptance gate failed, nothing is registered" in done.stderr
    assert f"needs {needs}" in done.stderr
    assert "] 05_deployment" not in done.stdout, "the pipeline stops at the gate"
    assert registry_state(smoked_project) == before, "no version added, the champion untouched"
    evaluation = latest_phase_runs(smoked_project)["04_evaluation"]
    assert evaluation["tags"]["gate"] == "failed" and evaluation["status"] == "FAILED"
    gate = smoked_project.mlflow_query(
        """
        newest = max((r for r in runs if r.data.tags.get("mlflow.runName") == "04_evaluation"),
                     key=lambda r: r.info.start_time)
        print(json.dumps(mlflow.artifacts.load_dict(f"{newest.info.artifact_uri}/gate.json")))
        """
    )
    failed = {c["criterion"]: c["limit"] for c in gate["criteria"] if not c["passed"]}
    assert failed == {criterion: float(setting.split("=")[1])}


def test_a_worse_model_stays_challenger_and_rollback_moves_the_champion(smoked_project):
    task = smoked_project.options["task"]
    metric = HEADLINE[task]
    champion = registry_state(smoked_project)["aliases"]["champion"]
    worse = [
        "modelling.candidates=[random_forest]",
        f"modelling.search_space.random_forest={STUMP}",
        *WORSE_BUT_ACCEPTABLE[task],
    ]
    smoked_project.cli("pipeline", "--smoke", "--from", "03", *NO_IMAGE, *sets(*worse))
    registry = registry_state(smoked_project)
    newest = max(registry["versions"], key=int)
    assert registry["aliases"] == {"champion": champion, "challenger": newest}
    assert registry["versions"][newest]["decision"] == "kept champion"
    scores = latest_phase_runs(smoked_project)["05_deployment"]["metrics"]
    challenger, kept = scores[f"challenger_test_{metric}"], scores[f"champion_test_{metric}"]
    assert challenger < kept if task == "classification" else challenger > kept

    moved = smoked_project.make("rollback", f"--to {newest}")
    assert f"champion moved from version {champion} to version {newest}" in moved.stdout
    back = smoked_project.make("rollback")
    assert f"champion moved from version {newest} to version {champion}" in back.stdout
    assert registry_state(smoked_project)["aliases"]["champion"] == champion
