"""The summary a successful pipeline run ends with, read from its handoff."""

import json

from crisp_ml import cli, pipeline, summary
from crisp_ml.project import HANDOFF

EVERY_NOTEBOOK = [
    "01_use_case",
    "02_data_preparation",
    "03_modelling",
    "04_evaluation",
    "05_deployment",
]
HANDOFF_OF_A_RUN = {
    "best_candidate": "random_forest",
    "gate_passed": True,
    "gate": {
        "passed": True,
        "criteria": [
            {
                "criterion": "roc_auc on the test set",
                "value": 0.98765,
                "comparison": ">=",
                "limit": 0.95,
                "passed": True,
            },
            {
                "criterion": "distinct predicted values",
                "value": 2,
                "comparison": ">=",
                "limit": 2,
                "passed": True,
            },
        ],
    },
    "test_metrics": {"roc_auc": 0.98765, "accuracy": 0.95},
    "model_card_path": "/p/runs/1/model_card.md",
    "registered_version": "3",
    "champion_version": "3",
    "promoted": True,
    "image": None,
    "serving_runtime": "onnx",
    "serving_runtime_reason": "",
}


def test_a_full_run_names_model_metric_gate_alias_and_card():
    lines = summary.summary_lines(HANDOFF_OF_A_RUN, "roc_auc", EVERY_NOTEBOOK)
    assert lines == [
        "model:              random_forest",
        "test roc_auc:       0.9877 (threshold >= 0.95)",
        "acceptance gate:    passed (2 criteria)",
        "champion alias:     moved to version 3",
        "serving runtime:    onnx",
        "model card:         /p/runs/1/model_card.md",
    ]


def test_a_version_scikit_learn_serves_says_why_not_onnx():
    reason = "conversion (double): skl2onnx could not convert DummyClassifier"
    handoff = {**HANDOFF_OF_A_RUN, "serving_runtime": "scikit-learn"}
    handoff["serving_runtime_reason"] = reason
    (line,) = [
        x for x in summary.summary_lines(handoff, "roc_auc", EVERY_NOTEBOOK) if "runtime" in x
    ]
    assert line == f"serving runtime:    scikit-learn (not ONNX: {reason})"


def test_a_kept_challenger_says_who_stays_and_why_when_05_hands_the_reason_on():
    handoff = {**HANDOFF_OF_A_RUN, "promoted": False, "champion_version": "2"}
    handoff["decision_reason"] = "version 3 does not beat champion version 2; the champion stays"
    (line,) = [x for x in summary.summary_lines(handoff, "roc_auc", EVERY_NOTEBOOK) if "alias" in x]
    assert line == (
        "champion alias:     stays with version 2; version 3 is the challenger: "
        "version 3 does not beat champion version 2; the champion stays"
    )


def test_only_what_this_run_made_is_summarised():
    """A --from or --only run starts from an earlier handoff: its gate or alias is not this run's."""
    assert summary.summary_lines(HANDOFF_OF_A_RUN, "roc_auc", ["01_use_case", "02_data_prep"]) == []
    lines = summary.summary_lines(HANDOFF_OF_A_RUN, "roc_auc", ["03_modelling"])
    assert lines == ["model:              random_forest"]
    lines = summary.summary_lines(HANDOFF_OF_A_RUN, "roc_auc", ["04_evaluation"])
    assert not any("alias" in line for line in lines)


def test_missing_keys_leave_their_lines_out():
    lines = summary.summary_lines({"test_metrics": {"mae": 41.2}}, "mae", EVERY_NOTEBOOK)
    assert lines == ["test mae:           41.2"]
    assert summary.summary_lines({}, "mae", EVERY_NOTEBOOK) == []


def test_a_missing_or_unreadable_handoff_reads_as_empty(tmp_path):
    assert summary.read_handoff(tmp_path / "nowhere") == {}
    (tmp_path / HANDOFF).write_text("{not json")
    assert summary.read_handoff(tmp_path) == {}


def test_the_pipeline_command_ends_with_the_summary(
    generated_project, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("PROJECT_ROOT", str(generated_project))
    (tmp_path / HANDOFF).write_text(json.dumps(HANDOFF_OF_A_RUN))
    monkeypatch.setattr(
        pipeline, "run", lambda plan, echo=print: pipeline.Outcome("abc", tmp_path, [], 1.0)
    )
    assert cli.main(["pipeline", "--smoke"]) == 0  # the demo's settings pass the preflight
    out = capsys.readouterr().out
    assert "  test roc_auc:       0.9877 (threshold >= 0.95)\n" in out
    assert "  champion alias:     moved to version 3\n" in out
    assert f"  executed notebooks: {tmp_path}\n" in out
