"""Evaluation: metrics on tiny known arrays, segments, fairness, the acceptance gate, the model card."""

import math

import numpy as np
import pandas as pd
import pytest

from crisp_ml.evaluation import (
    CardFacts,
    Criterion,
    EvaluationError,
    Gate,
    GateFailed,
    Predictions,
    acceptance_gate,
    business_cost,
    classification_metrics,
    enforce,
    fairness,
    generalization_gaps,
    markdown_table,
    metric_value,
    model_card,
    positive_label,
    predict,
    regression_metrics,
    sanity_criteria,
    segment_groups,
    segment_metrics,
    undefined_reason,
    worst_segment,
)
from crisp_ml.use_case import UseCase

CLASSES = ["no", "yes"]


def binary(y_true, y_pred, p_yes=None) -> Predictions:
    y_true, y_pred = np.array(y_true, dtype=object), np.array(y_pred, dtype=object)
    proba = None
    if p_yes is not None:
        p_yes = np.asarray(p_yes, dtype=float)
        proba = np.column_stack([1 - p_yes, p_yes])
    return Predictions(y_true, y_pred, proba, CLASSES)


def numbers(y_true, y_pred) -> Predictions:
    return Predictions(np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float))


def use_case(task="classification", metric="roc_auc", threshold=0.9, **extra) -> UseCase:
    texts = dict.fromkeys(["problem", "business_goal", "audience", "kpi"], "text")
    if extra.get("segments"):
        extra.setdefault("worst_segment_threshold", 0.8)
    return UseCase(task=task, metric=metric, threshold=threshold, **texts, **extra)


# --- metrics -------------------------------------------------------------------------------------


def test_classification_metrics_on_a_known_example():
    preds = binary(["no", "no", "yes", "yes"], ["no", "yes", "yes", "yes"], [0.1, 0.6, 0.7, 0.9])
    values = classification_metrics(preds, "yes")
    assert values["accuracy"] == pytest.approx(0.75)
    assert values["roc_auc"] == pytest.approx(1.0)  # every "yes" scores above every "no"
    assert values["precision_yes"] == pytest.approx(2 / 3)
    assert values["recall_no"] == pytest.approx(0.5)
    assert values["f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # macro average
    assert values["log_loss"] > 0


@pytest.mark.parametrize(
    "labels",
    [[0, 1], [False, True], [0, 1, 2], ["no", "yes"]],
    ids=["integers", "booleans", "three integers", "strings"],
)
def test_metrics_are_measured_for_integer_boolean_and_string_labels(labels):
    """Integer-coded and boolean classes were classified as "unknown" targets and 04 crashed."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=90)})
    y = pd.Series([labels[i % len(labels)] for i in range(90)])
    X["x"] += pd.Series(range(90)).mod(len(labels))  # learnable, not perfect
    model = LogisticRegression().fit(X, y)
    preds = predict(model, X, y, "classification")
    positive = positive_label(preds.classes, str(labels[-1]))
    values = classification_metrics(preds, positive)
    assert all(math.isfinite(values[name]) for name in ("accuracy", "f1", "roc_auc")), values
    assert business_cost(preds, positive, {"false_positive": 1.0, "false_negative": 5.0})
    table = segment_metrics(preds, X.assign(group=y), ["group"], "accuracy", positive)
    assert table["accuracy"].notna().all()


def test_roc_auc_follows_the_positive_class_and_is_nan_with_one_class():
    preds = binary(["no", "yes", "yes"], ["no", "yes", "no"], [0.2, 0.9, 0.4])
    assert metric_value("roc_auc", preds, "yes") == pytest.approx(1.0)
    assert metric_value("roc_auc", preds, "no") == pytest.approx(1.0)  # same ranking, other side
    assert math.isnan(metric_value("roc_auc", preds.subset(np.array([1, 2])), "yes"))


def test_regression_metrics_and_mape_only_without_zero_targets():
    values = regression_metrics(numbers([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]))
    assert values["mae"] == pytest.approx(1.0)
    assert values["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert values["mape"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert "mape" not in regression_metrics(numbers([0.0, 2.0], [1.0, 2.0]))


def test_positive_label_defaults_to_the_second_class_and_rejects_unknown_ones():
    assert positive_label(CLASSES, "") == "yes"
    assert positive_label([0, 1], "1") == 1
    assert positive_label(["a", "b", "c"], "") is None
    with pytest.raises(EvaluationError, match=r"use_case\.positive_class 'maybe'"):
        positive_label(CLASSES, "maybe")


def test_business_cost_prices_false_positives_and_negatives():
    preds = binary(["no", "no", "yes", "yes"], ["yes", "no", "no", "yes"])
    cost = business_cost(preds, "yes", {"false_positive": 1.0, "false_negative": 10.0})
    assert (cost["false_positives"], cost["false_negatives"]) == (1, 1)
    assert cost["cost_total"] == pytest.approx(11.0)
    assert cost["cost_per_case_flag_all"] == pytest.approx(2 * 1.0 / 4)
    assert cost["cost_per_case_flag_none"] == pytest.approx(2 * 10.0 / 4)
    assert business_cost(preds, "yes", {}) is None


def test_multiclass_cost_ignores_mixups_between_other_classes():
    preds = Predictions(np.array(["a", "b", "c"], dtype=object), np.array(["b", "a", "c"], dtype=object),
                        None, ["a", "b", "c"])  # fmt: skip
    cost = business_cost(preds, "c", {"false_positive": 1.0, "false_negative": 5.0})
    assert cost["cost_total"] == 0.0  # a <-> b says nothing about "c"


# --- sanity checks -------------------------------------------------------------------------------


def test_constant_predictions_and_a_model_no_better_than_the_dummy_fail():
    preds = numbers([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    baseline, constant = sanity_criteria("mae", 0.67, baseline_value=0.67, margin=0.1, preds=preds)
    assert not baseline.passed and baseline.limit == pytest.approx(0.57)  # errors: below the dummy
    assert not constant.passed
    better, varied = sanity_criteria("roc_auc", 0.9, 0.5, 0.1, binary(["no", "yes"], ["no", "yes"]))
    assert better.passed and better.limit == pytest.approx(0.6) and varied.passed


def test_generalization_gaps_are_flagged_above_the_limit():
    gaps = generalization_gaps({"training": 1.0, "cross-validation": 0.9, "test": 0.88}, 0.05)
    assert gaps["flagged"].tolist() == [True, False, True]


# --- segments and fairness -----------------------------------------------------------------------


def test_many_valued_numbers_are_cut_into_labelled_quartiles():
    frame = pd.DataFrame({"age": np.arange(20.0), "sex": [1.0, 2.0] * 10})
    quartiles = segment_groups(frame, "age")
    assert quartiles.nunique() == 4
    assert quartiles.iloc[0] == "Q1 (0 to 4)" and quartiles.iloc[-1] == "Q4 (15 to 19)"
    assert set(segment_groups(frame, "sex")) == {"1", "2"}  # few values stay groups


def test_integer_groups_read_as_integers_even_when_held_as_floats():
    """A segment showed "cyl = 4.0": an integer column with a gap is held as floats."""
    frame = pd.DataFrame({"cyl": [4, 6, 8, 4], "cyl_with_gap": [4.0, 6.0, np.nan, 8.0]})
    assert segment_groups(frame, "cyl").tolist() == ["4", "6", "8", "4"]
    assert segment_groups(frame, "cyl_with_gap").tolist() == ["4", "6", "missing", "8"]
    assert segment_groups(pd.DataFrame({"x": [0.5, 1.0]}), "x").tolist() == ["0.5", "1"]


def test_a_missing_value_is_a_group_and_a_missing_column_names_the_key():
    frame = pd.DataFrame({"city": ["a", None, "b"]})
    assert segment_groups(frame, "city").tolist() == ["a", "missing", "b"]
    with pytest.raises(
        EvaluationError, match=r"use_case\.segments: column 'region' is not in the data"
    ):
        segment_groups(frame, "region")


def test_the_worst_segment_follows_the_metric_direction():
    frame = pd.DataFrame({"site": ["a", "a", "b", "b"]})
    preds = numbers([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 1.0, 5.0])
    table = segment_metrics(preds, frame, ["site"], "mae", None)
    assert table[["group", "rows", "mae"]].to_numpy().tolist() == [["a", 2, 0.5], ["b", 2, 2.0]]
    assert worst_segment(table, "mae")["group"] == "b"  # an error: the largest is the worst


def test_groups_where_the_metric_is_undefined_cannot_be_the_worst():
    frame = pd.DataFrame({"site": ["a", "a", "b", "b"]})
    preds = binary(["no", "yes", "no", "no"], ["no", "yes", "no", "yes"], [0.1, 0.8, 0.2, 0.7])
    table = segment_metrics(preds, frame, ["site"], "roc_auc", "yes")
    assert math.isnan(table.loc[1, "roc_auc"])  # site b holds one class only
    assert worst_segment(table, "roc_auc")["group"] == "a"
    assert worst_segment(table.iloc[[1]], "roc_auc") is None


PENGUINS = ["Adelie", "Chinstrap", "Gentoo"]


def perfect(species: list[str]) -> Predictions:
    """A multiclass model that is always right, and sure of it: accuracy 1.0."""
    y = np.array(species, dtype=object)
    proba = np.array([[float(s == c) for c in PENGUINS] for s in species])
    return Predictions(y, y.copy(), proba, PENGUINS)


ISLANDS = pd.DataFrame(
    {"island": ["Biscoe"] * 3 + ["Dream"] * 2 + ["Torgersen"] * 2,
     "species": [*PENGUINS, "Adelie", "Gentoo", "Adelie", "Adelie"]}
)  # fmt: skip


def test_a_multiclass_group_lacking_a_class_is_reported_undefined_with_its_fallback():
    table = segment_metrics(perfect(ISLANDS["species"].tolist()), ISLANDS, ["island"], "roc_auc",
                            None)  # fmt: skip
    by_group = table.set_index("group")
    assert by_group.loc["Biscoe", "status"] == "defined"
    assert by_group.loc["Biscoe", "roc_auc"] == pytest.approx(1.0)
    assert by_group.loc["Dream", "status"] == "undefined: no rows of class 'Chinstrap'"
    assert by_group.loc["Torgersen", "status"] == (
        "undefined: no rows of classes 'Chinstrap', 'Gentoo'"
    )
    undefined = by_group.loc[["Dream", "Torgersen"]]
    assert undefined["roc_auc"].isna().all()
    assert (undefined["fallback"] == "balanced_accuracy").all()
    assert undefined["fallback_value"].tolist() == [1.0, 1.0]
    assert worst_segment(table, "roc_auc")["group"] == "Biscoe"


def test_a_metric_undefined_in_every_group_does_not_fail_the_gate_at_accuracy_one():
    """Multiclass segments failed the gate whenever each group lacked a class, at accuracy 1.0."""
    rows = ISLANDS[ISLANDS["island"] != "Biscoe"].reset_index(drop=True)
    preds = perfect(rows["species"].tolist())
    assert classification_metrics(preds, None)["accuracy"] == 1.0
    table = segment_metrics(preds, rows, ["island"], "roc_auc", None)
    assert table["status"].str.startswith("undefined: no rows of class").all()
    worst = worst_segment(table, "roc_auc")
    assert worst is None
    no_fairness = pd.DataFrame(columns=["attribute", "measure", "value"])
    gate = acceptance_gate(use_case(segments=["island"]), 0.99, [], worst, 0.8, no_fairness, {})
    assert gate.passed, gate.report()
    (segment,) = [c for c in gate.criteria if c.name.startswith("worst segment")]
    assert not segment.assessed and "not assessed" in segment.note
    assert "1 not assessed" in gate.report()
    assert gate.as_dict()["criteria"][1]["assessed"] is False


def test_a_defined_group_below_the_threshold_still_fails_the_gate():
    frame = pd.DataFrame({"site": ["a", "a", "b", "b", "c"]})
    preds = binary(["no", "yes", "no", "yes", "yes"], ["no", "no", "no", "yes", "yes"],
                   [0.6, 0.4, 0.1, 0.9, 0.8])  # fmt: skip
    table = segment_metrics(preds, frame, ["site"], "roc_auc", "yes")
    assert table.set_index("group").loc["c", "status"] == "undefined: no rows of class 'no'"
    worst = worst_segment(table, "roc_auc")
    assert (worst["group"], worst["roc_auc"]) == ("a", 0.0)
    fair = pd.DataFrame(columns=["attribute", "measure", "value"])
    gate = acceptance_gate(use_case(segments=["site"]), 0.95, [], worst, 0.8, fair, {})
    assert not gate.passed and "worst segment roc_auc (site = a): 0, needs >= 0.8" in gate.report()


def test_undefined_is_told_apart_from_an_error():
    one_class = binary(["yes", "yes"], ["yes", "no"], [0.9, 0.4])
    assert undefined_reason("roc_auc", one_class, "yes") == "no rows of class 'no'"
    assert math.isnan(metric_value("roc_auc", one_class, "yes"))
    assert undefined_reason("r2", numbers([2.0, 2.0], [1.0, 3.0])).startswith(
        "the target is constant"
    )
    assert undefined_reason("accuracy", one_class) == ""


@pytest.mark.parametrize(
    ("preds", "metric", "message"),
    [
        (Predictions(np.array(["a", "b", "c"], dtype=object), np.array(["a", "b", "c"], dtype=object),
                     np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]), ["a", "b", "c"]),
         "roc_auc", r"roc_auc cannot be computed on 3 rows"),
        (Predictions(np.array(["0", "1", "1"], dtype=object), np.array([0, 1, 1]),
                     np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]), [0, 1]),
         "roc_auc", r"none of the true labels .* \(true labels '0', '1'; the model's classes 0, 1\)"),
        (binary(["no", "yes"], ["no", "yes"]), "auc", r"unknown metric 'auc'"),
    ],
    ids=["probabilities for two classes of three", "labels read as text", "unknown metric"],
)  # fmt: skip
def test_a_metric_that_fails_for_a_real_reason_raises_naming_it(preds, metric, message):
    """metric_value swallowed every ValueError as NaN, so a crash surfaced calls later."""
    with pytest.raises(EvaluationError, match=message):
        metric_value(metric, preds)


def test_fairness_measures_on_known_groups():
    frame = pd.DataFrame({"sex": ["f", "f", "m", "m"]})
    preds = binary(["yes", "no", "yes", "no"], ["yes", "yes", "no", "no"])
    table, groups = fairness(preds, frame, ["sex"], "classification", "yes")
    values = dict(zip(table["measure"], table["value"], strict=True))
    assert values["demographic_parity_difference"] == pytest.approx(1.0)  # f: all flagged, m: none
    assert values["equalized_odds_difference"] == pytest.approx(1.0)
    assert set(groups["group"]) == {"f", "m"}
    gap, _ = fairness(numbers([1, 1, 1, 1], [1, 2, 1, 5]), frame, ["sex"], "regression", None)
    assert gap["value"].tolist() == [pytest.approx(1.5)]  # MAE 0.5 against 2.0


# --- the gate ------------------------------------------------------------------------------------


def test_criteria_respect_direction_and_fail_when_undefined():
    assert Criterion("auc", 0.95, 0.9, ">=").passed
    assert not Criterion("mae", 60.0, 55.0, "<=").passed
    assert Criterion("mae", 55.0, 55.0, "<=").passed  # the limit itself is acceptable
    assert not Criterion("auc", math.nan, 0.9, ">=").passed


def test_gate_fails_listing_each_failed_criterion_with_value_and_limit():
    fair = pd.DataFrame([{"attribute": "sex", "measure": "error_gap", "value": 12.0}])
    worst = pd.Series({"segment": "age", "group": "Q1 (19 to 42)", "mae": 80.0})
    gate = acceptance_gate(
        use_case("regression", "mae", 55.0, segments=["age"], sensitive_attributes=["sex"]),
        test_value=50.0, sanity=[], worst=worst, worst_threshold=70.0,
        fairness_table=fair, fairness_limits={"error_gap": 10.0},
    )  # fmt: skip
    assert [c.passed for c in gate.criteria] == [True, False, False]
    report = gate.report()
    assert "worst segment mae (age = Q1 (19 to 42)): 80, needs <= 70" in report
    assert "error_gap (sex): 12, needs <= 10" in report
    assert "mae on the test set" not in report
    with pytest.raises(GateFailed, match="acceptance gate failed"):
        enforce(gate)


def test_gate_passes_and_measures_without_limits_are_not_gated():
    fair = pd.DataFrame(
        [{"attribute": "sex", "measure": "demographic_parity_difference", "value": 0.9}]
    )
    gate = acceptance_gate(use_case(sensitive_attributes=["sex"]), 0.95, [], None, 0.8, fair, {})
    assert gate.passed and len(gate.criteria) == 1
    enforce(gate)  # does not raise
    assert gate.as_dict()["passed"] is True


# --- the model card ------------------------------------------------------------------------------


def test_markdown_table_formats_numbers_and_escapes_pipes():
    table = markdown_table(pd.DataFrame({"name": ["a|b"], "value": [0.123456], "ok": [False]}))
    assert table.splitlines() == [
        "| name | value | ok |",
        "|---|---|---|",
        "| a\\|b | 0.1235 | **no** |",
    ]


def test_model_card_states_verdict_metrics_segments_and_lineage():
    uc = use_case(segments=["site"])
    gate = Gate([Criterion("roc_auc on the test set", 0.97, 0.9, ">=")])
    segments = pd.DataFrame({"segment": ["site"], "group": ["a"], "rows": [10], "roc_auc": [0.97]})
    card = model_card(
        CardFacts(
            model_name="demo", use_case=uc, candidate="linear", hyperparameters={"C": "1.0"},
            model_uri="models:/m-1", data={"source": "demo", "test_rows": 40, "sample_rows": 200},
            metrics={"roc_auc": 0.97}, scores={"test": 0.97},
            gaps=generalization_gaps({"training": 0.99, "cross-validation": 0.98, "test": 0.97}, 0.05),
            segments=segments, worst=segments.iloc[0], fairness=pd.DataFrame(), gate=gate,
            lineage={"git commit": "abc123", "evaluation run": "run-4"},
        )
    )  # fmt: skip
    for expected in ("# Model card: demo", "Acceptance gate: **passed**", "| C | 1.0 |",
                     "| roc_auc | 0.97 |", "site = a", "| git commit | abc123 |",
                     "sample of 200 rows", "fairness was not assessed"):  # fmt: skip
        assert expected in card


def card_with_segments(segments: pd.DataFrame, worst: pd.Series | None) -> str:
    gate = Gate([Criterion("roc_auc on the test set", 0.99, 0.9, ">=")])
    gaps = generalization_gaps(dict.fromkeys(["training", "cross-validation", "test"], 0.99), 0.05)
    return model_card(
        CardFacts(
            model_name="demo", use_case=use_case(segments=["island"]), candidate="linear",
            hyperparameters={}, model_uri="models:/m-1", data={"test_rows": 400}, metrics={},
            scores={}, gaps=gaps, segments=segments, worst=worst, fairness=pd.DataFrame(),
            gate=gate, lineage={},
        )
    )  # fmt: skip


def test_the_card_shows_undefined_groups_plainly_with_their_fallback():
    table = segment_metrics(perfect(ISLANDS["species"].tolist()), ISLANDS, ["island"], "roc_auc",
                            None)  # fmt: skip
    card = card_with_segments(table, worst_segment(table, "roc_auc"))
    segments = card.split("## Segments")[1].split("##")[0]
    assert "| segment | group | rows | roc_auc | accuracy | note |" in segments
    assert "| island | Biscoe | 3 | 1 | 1 |  |" in segments
    assert (
        "| island | Dream | 2 | undefined | 1 | undefined: no rows of class 'Chinstrap'; "
        "balanced_accuracy 1 instead |"
    ) in segments
    assert "Worst group: **island = Biscoe**" in segments
    assert "roc_auc is undefined in some groups (island = Dream, island = Torgersen)" in card
    rows = ISLANDS[ISLANDS["island"] != "Biscoe"].reset_index(drop=True)
    nowhere = segment_metrics(perfect(rows["species"].tolist()), rows, ["island"], "roc_auc", None)
    assert "roc_auc is undefined in every group" in card_with_segments(nowhere, None)


def card_with_columns(columns_not_used: list[dict[str, str]] | None) -> str:
    gate = Gate([Criterion("roc_auc on the test set", 0.97, 0.9, ">=")])
    gaps = generalization_gaps(dict.fromkeys(["training", "cross-validation", "test"], 0.97), 0.05)
    return model_card(
        CardFacts(
            model_name="demo", use_case=use_case(), candidate="linear", hyperparameters={},
            model_uri="models:/m-1", data={"test_rows": 400}, metrics={}, scores={}, gaps=gaps,
            segments=pd.DataFrame(), worst=None, fairness=pd.DataFrame(), gate=gate, lineage={},
            columns_not_used=columns_not_used,
        )
    )  # fmt: skip


def test_the_card_lists_the_columns_not_used_and_why():
    card = card_with_columns(
        [
            {"column": "signed_up", "role": "datetime", "reason": "dates and times"},
            {"column": "postcode", "role": "high_cardinality", "reason": "1,987 distinct values"},
            {"column": "notes", "role": "dropped", "reason": "listed in data.drop_columns"},
        ]
    )
    section = card.split("## Columns not used and why\n")[1].split("##")[0]
    assert card.index("## Data") < card.index("## Columns not used") < card.index("## Model")
    assert "| column | role | reason |" in section
    assert "| signed_up | datetime | dates and times |" in section
    assert "| postcode | high cardinality | 1,987 distinct values |" in section
    assert "| notes | dropped | listed in data.drop_columns |" in section
    assert "Clients do not send these columns" in section


def test_the_card_says_when_every_column_is_used_or_nothing_was_recorded():
    assert "The model takes every column of the data but the target." in card_with_columns([])
    assert "_Not recorded by this run's 02_data_preparation._" in card_with_columns(None)


@pytest.mark.parametrize("stated", [["Adults of one hospital only."], []])
def test_the_card_lists_the_limitations_the_use_case_states_and_no_placeholder(stated):
    gate = Gate([Criterion("roc_auc on the test set", 0.97, 0.9, ">=")])
    gaps = generalization_gaps(dict.fromkeys(["training", "cross-validation", "test"], 0.97), 0.05)
    card = model_card(
        CardFacts(
            model_name="demo", use_case=use_case(limitations=stated), candidate="linear",
            hyperparameters={}, model_uri="models:/m-1", data={"test_rows": 400}, metrics={},
            scores={}, gaps=gaps, segments=pd.DataFrame(), worst=None, fairness=pd.DataFrame(),
            gate=gate, lineage={},
        )
    )  # fmt: skip
    limits = card.split("## Limitations")[1].split("##")[0]
    assert "TODO" not in card
    if stated:
        assert "- Adults of one hospital only." in limits
    else:
        assert "`use_case.limitations`" in limits
