"""The use case: one object, checked once, handed on to the later phases."""

import pytest

from crisp_ml.project import hand_on
from crisp_ml.use_case import UseCase, UseCaseError, handed_on_use_case

TEXTS = {"problem": "p", "business_goal": "g", "audience": "a", "kpi": "k"}
STATED = {
    "task": "classification",
    "use_case": {
        **TEXTS, "metric": "roc_auc", "threshold": 0.9, "segments": ["site"],
        "worst_segment_threshold": 0.8, "fairness_limits": {"equalized_odds_difference": 0.2},
    },
}  # fmt: skip


def test_the_use_case_params_state_is_the_one_the_later_phases_read_back():
    stated = UseCase.from_params(STATED)
    assert stated.worst_segment_threshold == 0.8 and stated.task == "classification"
    hand_on(use_case=stated.as_dict())  # as 01 hands it on, through JSON
    assert handed_on_use_case() == stated


def test_a_use_case_that_cannot_be_held_to_names_the_key_and_the_fix():
    def problem(**changes) -> str:
        tree = {"task": "classification", "use_case": {**STATED["use_case"], **changes}}
        with pytest.raises(UseCaseError) as caught:
            UseCase.from_params(tree)
        return str(caught.value)

    assert "use_case has unknown keys ['treshold']" in problem(treshold=0.9)
    assert "use_case.worst_segment_threshold is not set" in problem(worst_segment_threshold=None)
    assert "for classification the measures are" in problem(fairness_limits={"error_gap": 1.0})
    assert "not a classification metric" in problem(metric="mae")


def test_the_later_phases_say_which_notebook_hands_the_use_case_on():
    with pytest.raises(RuntimeError, match="written by 01_use_case"):
        handed_on_use_case()
