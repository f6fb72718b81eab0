"""Experiments: simulated A/B tests whose truth is known (which arm is better, by how much), the
decision on each, the peeking correction on A/A simulations, bad inputs, and shadow agreement."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from crisp_ml.experiment import (
    LATENCY_PERCENTILES,
    ExperimentError,
    ExperimentPlan,
    arm_results,
    compare,
    decide,
    join_outcomes,
    latencies_by_arm,
    required_sample_size,
    shadow_agreement,
    wilson_interval,
)
from crisp_ml.use_case import METRICS, UseCase

CLASSES = ("stay", "churn")


def arms(rng: np.random.Generator, rows: int, share: float = 0.5) -> np.ndarray:
    return np.where(rng.random(rows) < share, "challenger", "champion")


def classification_log(
    seed: int, rows: int, right: dict[str, float], share: float = 0.5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A log and its outcomes: each arm's prediction is right with probability right[arm]."""
    rng = np.random.default_rng(seed)
    arm = arms(rng, rows, share)
    truth = rng.choice(CLASSES, rows)
    correct = rng.random(rows) < np.where(
        arm == "challenger", right["challenger"], right["champion"]
    )
    prediction = np.where(correct, truth, np.where(truth == CLASSES[0], CLASSES[1], CLASSES[0]))
    # A probability that leans toward the predicted class, so ROC AUC and log loss are defined.
    lean = 0.55 + 0.4 * rng.random(rows)
    churn = np.where(prediction == "churn", lean, 1 - lean)
    ids = [f"r{i}" for i in range(rows)]
    log = pd.DataFrame(
        {
            "request_id": ids,
            "arm": arm,
            "model_version": np.where(arm == "challenger", "4", "3"),
            "prediction": prediction,
            "probability_stay": 1 - churn,
            "probability_churn": churn,
            "region": rng.choice(["north", "south"], rows),
            "tenure": rng.integers(0, 60, rows),
        }
    )
    return log, pd.DataFrame({"request_id": ids, "churned": truth})


def regression_log(
    seed: int, rows: int, noise: dict[str, float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A log and its outcomes: each arm's prediction is the truth plus noise of sd noise[arm]."""
    rng = np.random.default_rng(seed)
    arm = arms(rng, rows)
    truth = rng.normal(100, 20, rows)
    spread = np.where(arm == "challenger", noise["challenger"], noise["champion"])
    ids = np.arange(rows)
    log = pd.DataFrame(
        {
            "request_id": ids,
            "arm": arm,
            "model_version": np.where(arm == "challenger", "4", "3"),
            "prediction": truth + rng.normal(0, 1, rows) * spread,
            "region": rng.choice(["north", "south"], rows),
        }
    )
    return log, pd.DataFrame({"request_id": ids.astype(str), "price": truth})


def classification_plan(**settings) -> ExperimentPlan:
    defaults = {"metric": "accuracy", "task": "classification", "target": "churned"}
    return ExperimentPlan(**{**defaults, "minimum_detectable_effect": 0.02, **settings})


def regression_plan(**settings) -> ExperimentPlan:
    defaults = {"metric": "mae", "task": "regression", "target": "price"}
    return ExperimentPlan(**{**defaults, "minimum_detectable_effect": 0.5, **settings})


def classification_decision(seed, rows, right, **settings):
    log, outcomes = classification_log(seed, rows, right)
    plan = classification_plan(**settings)
    joined = join_outcomes(log, outcomes, "request_id", "churned")
    return decide(compare(joined, plan), plan)


# --- decisions on simulated experiments ----------------------------------------------------------


def test_a_challenger_right_more_often_is_promoted():
    decision = classification_decision(1, 3000, {"champion": 0.80, "challenger": 0.90}, looks=5)
    assert decision.action == "promote"
    assert decision.comparison.difference == pytest.approx(0.10, abs=0.03)
    assert decision.comparison.test == "two-proportion z-test"
    assert decision.reasons[-1].startswith("promote: the challenger is better")


def test_a_champion_right_more_often_is_kept():
    decision = classification_decision(2, 3000, {"champion": 0.90, "challenger": 0.80}, looks=5)
    assert decision.action == "keep"
    assert decision.reasons[-1].startswith("keep: the champion is better")


def test_a_champion_near_one_does_not_stop_a_clear_promotion():
    """0.985 against 0.999 on 2000 rows per arm, MDE 0.02: 0.985 + 0.02 is past 1, yet the
    challenger is clearly better; the rows needed are those to reach just below 1."""
    rows = 2000
    right = np.concatenate([np.arange(rows) < 1970, np.arange(rows) < 1998])  # 0.985, 0.999
    joined = pd.DataFrame(
        {
            "arm": np.repeat(["champion", "challenger"], rows),
            "prediction": np.where(right, "churn", "stay"),
            "churned": "churn",
        }
    )
    plan = classification_plan(minimum_detectable_effect=0.02)
    decision = decide(compare(joined, plan), plan)
    assert decision.action == "promote", decision.reasons
    assert "detect a move to 0.999" in decision.reasons[2]
    near_one = required_sample_size("accuracy", 0.99, 0.02)
    assert 0 < near_one["champion"] < required_sample_size("accuracy", 0.99, 0.005)["champion"]


def test_equal_arms_on_few_rows_continue():
    decision = classification_decision(3, 40, {"champion": 0.85, "challenger": 0.85})
    assert decision.action == "continue"
    assert not decision.reached


def test_equal_arms_with_the_rows_needed_are_kept_for_futility():
    """The documented rule: with the rows needed and an improvement whose upper end is below the
    minimum detectable effect, more traffic would not show a worthwhile gain: keep."""
    decision = classification_decision(
        4, 40_000, {"champion": 0.85, "challenger": 0.85}, minimum_detectable_effect=0.02
    )
    assert decision.reached
    assert decision.comparison.improvement_interval[1] < 0.02
    assert decision.action == "keep"
    assert "below the minimum detectable effect" in decision.reasons[-1]


def test_equal_arms_short_of_the_rows_needed_continue():
    decision = classification_decision(
        5, 2000, {"champion": 0.85, "challenger": 0.85}, minimum_detectable_effect=0.02
    )
    assert not decision.reached
    assert decision.action == "continue"
    assert "not reached" in decision.reasons[-1]


def test_a_challenger_with_a_lower_mae_is_promoted_and_a_worse_one_kept():
    for noise, action in [
        ({"champion": 10.0, "challenger": 6.0}, "promote"),
        ({"champion": 6.0, "challenger": 10.0}, "keep"),
    ]:
        log, outcomes = regression_log(6, 2000, noise)
        plan = regression_plan(looks=3)
        comparison = compare(join_outcomes(log, outcomes, "request_id", "price"), plan, seed=1)
        decision = decide(comparison, plan)
        assert decision.action == action, decision.reasons
        # MAE of normal noise is sd * sqrt(2 / pi): the challenger's minus the champion's.
        expected = (noise["challenger"] - noise["champion"]) * math.sqrt(2 / math.pi)
        assert comparison.difference == pytest.approx(expected, abs=0.6)
        assert comparison.test.startswith("bootstrap z-test")


def test_roc_auc_is_compared_by_bootstrap_on_the_logged_probabilities():
    log, outcomes = classification_log(7, 1200, {"champion": 0.70, "challenger": 0.90})
    plan = classification_plan(metric="roc_auc", minimum_detectable_effect=0.02)
    joined = join_outcomes(log, outcomes, "request_id", "churned")
    comparison = compare(joined, plan, resamples=300)
    assert comparison.challenger > comparison.champion
    assert decide(comparison, plan).action == "promote"


def test_probabilities_flattened_from_the_prediction_log_are_read_too():
    log, outcomes = classification_log(7, 300, {"champion": 0.8, "challenger": 0.8})
    log = log.rename(columns=lambda c: c.replace("probability_", "probabilities."))
    plan = classification_plan(metric="log_loss", minimum_detectable_effect=0.05)
    table = arm_results(join_outcomes(log, outcomes, "request_id", "churned"), plan, resamples=50)
    assert table["log_loss"].between(0, 1).all()
    # The bootstrap resamples per-row losses; their interval surrounds scikit-learn's value.
    assert ((table["ci_low"] < table["log_loss"]) & (table["log_loss"] < table["ci_high"])).all()


def test_roc_auc_on_a_log_partly_without_probabilities_counts_the_rows_and_names_the_fix():
    """An older server logged some rows without probabilities: refused (judging the rest could
    favour an arm), counting them; accuracy, which needs none, is still judged."""
    log, outcomes = classification_log(7, 400, {"champion": 0.8, "challenger": 0.8})
    unlogged = log.index[:25]
    log.loc[unlogged, ["probability_stay", "probability_churn"]] = np.nan
    joined = join_outcomes(log, outcomes, "request_id", "churned")
    champion_rows = int((log.loc[unlogged, "arm"] == "champion").sum())
    with pytest.raises(ExperimentError) as error:
        compare(joined, classification_plan(metric="roc_auc"), resamples=50)
    message = str(error.value)
    assert f"{champion_rows} of the champion's" in message
    assert "without class probabilities" in message and "serve again" in message
    assert "metric that needs no probabilities" in message
    assert compare(joined, classification_plan(), resamples=50).test == "two-proportion z-test"


def test_roc_auc_without_probabilities_names_the_fix():
    log, outcomes = classification_log(7, 200, {"champion": 0.8, "challenger": 0.8})
    log = log.drop(columns=["probability_stay", "probability_churn"])
    joined = join_outcomes(log, outcomes, "request_id", "churned")
    with pytest.raises(ExperimentError, match="probability_<class>"):
        compare(joined, classification_plan(metric="roc_auc"), resamples=50)


def test_the_reasons_state_the_numbers_and_the_peeking_correction():
    decision = classification_decision(1, 3000, {"champion": 0.80, "challenger": 0.90}, looks=5)
    text = " ".join(decision.reasons)
    assert "Bonferroni" in text and "5 planned looks" in text and "0.01" in text
    assert f"{decision.comparison.n_challenger:,}" in text
    assert f"{decision.required['challenger']:,}" in text


# --- the peeking correction ---------------------------------------------------------------------

LOOKS = 10
STEP = 100  # rows per arm added between two looks


def promotes_while_peeking(seed: int, looks_planned: int) -> bool:
    """An A/A experiment (both arms right 80% of the time) looked at LOOKS times as traffic
    accrues; stops at the first decision that is not continue. Whether it promoted."""
    rng = np.random.default_rng(seed)
    rows = LOOKS * STEP
    correct = rng.random((2, rows)) < 0.8
    plan = classification_plan(looks=looks_planned, minimum_detectable_effect=0.02)
    for look in range(1, LOOKS + 1):
        n = look * STEP
        joined = pd.DataFrame(
            {
                "arm": np.repeat(["champion", "challenger"], n),
                "prediction": np.where(np.concatenate([correct[0, :n], correct[1, :n]]), 1, 0),
                "churned": 1,
            }
        )
        action = decide(compare(joined, plan), plan).action
        if action != "continue":
            return action == "promote"
    return False


def test_peeking_with_the_correction_keeps_false_promotions_near_alpha_and_without_it_does_not():
    """200 A/A experiments, each looked at 10 times. Promotion is one side of a two-sided test,
    so one look promotes falsely at most alpha / 2 of the time. Corrected (looks=10), all ten looks
    together stay there; treating each look as the only one (looks=1) at least doubles it."""
    simulations, alpha = 200, 0.05
    corrected = np.mean([promotes_while_peeking(seed, LOOKS) for seed in range(simulations)])
    naive = np.mean([promotes_while_peeking(seed, 1) for seed in range(simulations)])
    assert corrected <= alpha / 2 + 0.01, corrected
    assert naive >= 2 * (alpha / 2), naive
    assert naive >= 3 * corrected, (naive, corrected)


# --- requests of several rows --------------------------------------------------------------------

ROWS_PER_REQUEST = 5


def clustered_promotes(seed: int, request_ids: bool) -> bool:
    """An A/A experiment (both arms right 80% of the time) in which each request holds 5 rows that
    are all right or all wrong, as rows of one request often are. Whether it promoted, the rows
    named by their request (`request_ids`) or each as a request of its own (the row-level test)."""
    rng = np.random.default_rng(seed)
    requests = 200  # per arm
    right = np.repeat(rng.random(2 * requests) < 0.8, ROWS_PER_REQUEST)
    request = np.repeat(np.arange(2 * requests), ROWS_PER_REQUEST)
    joined = pd.DataFrame(
        {
            "request_id": request if request_ids else np.arange(len(request)),
            "arm": np.where(request < requests, "champion", "challenger"),
            "prediction": np.where(right, 1, 0),
            "churned": 1,
        }
    )
    plan = classification_plan()
    return decide(compare(joined, plan, resamples=400, seed=seed), plan).action == "promote"


def test_requests_of_several_rows_are_resampled_whole_so_an_a_a_test_rarely_promotes():
    """Promotion is one side of a two-sided test at alpha 0.05: at most 2.5% of A/A experiments.
    Rows of a request move together, so a test that counts them as independent rows
    understates the spread by sqrt(5) and promotes far more often; resampling whole requests does
    not."""
    simulations = 120
    by_request = np.mean([clustered_promotes(seed, True) for seed in range(simulations)])
    by_row = np.mean([clustered_promotes(seed, False) for seed in range(simulations)])
    assert by_request <= 0.025 + 0.03, by_request
    assert by_row >= 0.1, by_row


def test_a_request_of_several_rows_makes_accuracy_a_cluster_bootstrap_named_in_the_reasons():
    log, outcomes = classification_log(16, 600, {"champion": 0.8, "challenger": 0.8})
    # Up to 5 rows of an arm make one request.
    ids = log["arm"] + "-" + (np.arange(len(log)) // 5).astype(str)
    joined = join_outcomes(
        log.assign(request_id=ids, row=range(len(log))),
        outcomes.assign(request_id=ids, row=range(len(log))),
        ["request_id", "row"],
        "churned",
    )
    plan = classification_plan()
    table = arm_results(joined, plan, resamples=100)
    assert table["ci_method"].str.startswith("cluster bootstrap").all()
    decision = decide(compare(joined, plan, resamples=100), plan)
    assert "whole requests resampled" in decision.reasons[0]


# --- looks -------------------------------------------------------------------------------------


def test_each_look_is_counted_and_past_the_planned_looks_the_decision_is_continue():
    log, outcomes = classification_log(1, 3000, {"champion": 0.80, "challenger": 0.90})
    plan = classification_plan(looks=3)
    comparison = compare(join_outcomes(log, outcomes, "request_id", "churned"), plan)
    third = decide(comparison, plan, look=3)
    assert third.action == "promote" and "look 3 of 3" in third.reasons[1]
    fourth = decide(comparison, plan, look=4)
    assert fourth.action == "continue"
    assert "look 4 of 3" in fourth.reasons[1]
    assert (
        "past the 3 planned" in fourth.reasons[-1]
        and "Raise experiment.looks" in fourth.reasons[-1]
    )


# --- sample size --------------------------------------------------------------------------------


def test_two_proportion_sample_size_matches_the_textbook():
    """10% to 15% at alpha 0.05 and power 0.8 needs 686 per group (Fleiss, no continuity
    correction)."""
    rows = required_sample_size(METRICS["accuracy"], 0.10, 0.05, alpha=0.05, power=0.8)
    assert rows == {"champion": 686, "challenger": 686}


def test_continuous_sample_size_uses_the_per_row_sd():
    """2 (z_0.975 + z_0.8)^2 sd^2 / effect^2 = 2 * 7.849 * 1 / 0.01 = 1570 per arm."""
    rows = required_sample_size("mae", 5.0, 0.1, per_row_sd=1.0)
    assert rows == {"champion": 1570, "challenger": 1570}
    with pytest.raises(ExperimentError, match="per_row_sd"):
        required_sample_size("mae", 5.0, 0.1)


def test_more_looks_and_an_uneven_share_need_more_rows():
    even = required_sample_size("accuracy", 0.8, 0.02)
    peeking = required_sample_size("accuracy", 0.8, 0.02, looks=5)
    uneven = required_sample_size("accuracy", 0.8, 0.02, share=0.1)
    assert peeking["challenger"] > even["challenger"]
    assert sum(uneven.values()) > sum(even.values())
    assert uneven["challenger"] < uneven["champion"]


@pytest.mark.parametrize("share", [-0.1, 0.0, 1.0, 1.5])
def test_a_share_outside_zero_and_one_is_refused(share):
    with pytest.raises(ExperimentError, match=r"outside \(0, 1\).*challenger's share"):
        required_sample_size("accuracy", 0.8, 0.02, share=share)


# --- per-arm results ----------------------------------------------------------------------------


def test_arm_results_give_each_arm_and_segment_group_a_metric_and_cost_with_intervals():
    log, outcomes = classification_log(8, 1500, {"champion": 0.8, "challenger": 0.9})
    plan = classification_plan(
        positive_class="churn",
        error_costs={"false_positive": 1, "false_negative": 5},
        segments=["region", "tenure"],
    )
    table = arm_results(join_outcomes(log, outcomes, "request_id", "churned"), plan)
    overall = table[table["segment"] == "all"].set_index("arm")
    assert list(overall.index) == ["champion", "challenger"]
    assert overall.loc["challenger", "model_version"] == "4"
    assert overall["rows"].sum() == 1500
    assert (overall["ci_low"] < overall["accuracy"]).all()
    assert (overall["accuracy"] < overall["ci_high"]).all()
    assert set(overall["ci_method"]) == {"Wilson"}
    # Fewer errors, lower cost: the challenger's whole interval is below the champion's value.
    assert overall.loc["challenger", "cost_ci_high"] < overall.loc["champion", "cost_per_row"]
    regions = table[table["segment"] == "region"]
    assert sorted(regions["group"].unique()) == ["north", "south"]
    assert len(regions) == 4
    tenure = table[table["segment"] == "tenure"]
    assert tenure["group"].str.startswith("Q").all()  # cut into quartiles, as 04 cuts it


@pytest.mark.parametrize(("successes", "rows"), [(0, 40), (7, 50), (1700, 2000), (40, 40)])
def test_the_wilson_interval_is_scipys(successes, rows):
    expected = stats.binomtest(successes, rows).proportion_ci(0.95, method="wilson")
    assert wilson_interval(successes, rows, 0.95) == pytest.approx((expected.low, expected.high))


def test_the_cost_per_row_counts_errors_as_the_evaluation_does():
    log = pd.DataFrame(
        {
            "request_id": range(60),
            "arm": ["champion", "challenger"] * 30,
            "prediction": ["churn", "stay", "stay"] * 20,
        }
    )
    outcomes = pd.DataFrame({"request_id": range(60), "churned": ["stay", "churn", "stay"] * 20})
    plan = classification_plan(
        positive_class="churn", error_costs={"false_positive": 1, "false_negative": 5}
    )
    table = arm_results(join_outcomes(log, outcomes, "request_id", "churned"), plan, resamples=100)
    # Each arm: 10 false positives (cost 1) and 10 false negatives (cost 5) in 30 rows.
    assert table.set_index("arm")["cost_per_row"].to_dict() == {
        "champion": pytest.approx(2.0),
        "challenger": pytest.approx(2.0),
    }


def test_bootstrap_intervals_are_seeded():
    log, outcomes = regression_log(9, 600, {"champion": 5.0, "challenger": 5.0})
    joined = join_outcomes(log, outcomes, "request_id", "price")
    first, again = (arm_results(joined, regression_plan(), seed=3) for _ in range(2))
    other = arm_results(joined, regression_plan(), seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first["ci_low"].equals(other["ci_low"])
    assert set(first["ci_method"]) == {"bootstrap"}


def test_a_plan_from_the_use_case_takes_its_metric_costs_and_segments():
    use_case = UseCase(
        task="classification",
        problem="p",
        business_goal="g",
        audience="a",
        kpi="k",
        metric="f1",
        threshold=0.7,
        segments=["region"],
        worst_segment_threshold=0.5,
        positive_class="churn",
        error_costs={"false_negative": 5},
    )
    plan = ExperimentPlan.from_use_case(use_case, "churned", minimum_detectable_effect=0.02)
    assert (plan.metric.name, plan.segments, plan.positive_class) == ("f1", ["region"], "churn")


# --- joining outcomes ---------------------------------------------------------------------------


def test_join_counts_matched_and_unmatched_rows_and_ids_match_as_text():
    log, outcomes = regression_log(10, 100, {"champion": 5.0, "challenger": 5.0})
    outcomes = pd.concat(
        [outcomes.iloc[:70], pd.DataFrame({"request_id": ["x1", "x2"], "price": [1.0, 2.0]})]
    )
    joined = join_outcomes(log, outcomes, "request_id", "price")  # ints in the log, text here
    assert len(joined) == 70
    assert joined.attrs == {
        "matched": 70, "log_unmatched": 30, "outcomes_unmatched": 2, "duplicate_rows": 0
    }  # fmt: skip
    assert joined["price"].iloc[0] == pytest.approx(outcomes["price"].iloc[0])


def test_outcomes_that_join_no_row_are_refused_naming_both_keys_and_ids():
    log, outcomes = classification_log(11, 50, {"champion": 0.8, "challenger": 0.8})
    outcomes["request_id"] = "other-" + outcomes["request_id"]
    with pytest.raises(ExperimentError) as error:
        join_outcomes(log, outcomes, "request_id", "churned")
    message = str(error.value)
    assert "the log's 'request_id' ids ('r0'" in message
    assert "the outcomes' 'request_id' ids ('other-r0'" in message
    assert "join by the id the server logged" in message


def test_repeated_outcome_ids_cannot_be_joined():
    log, outcomes = classification_log(12, 20, {"champion": 0.8, "challenger": 0.8})
    with pytest.raises(ExperimentError, match=r"the outcomes: ids repeat in 'request_id'.*one row"):
        join_outcomes(log, pd.concat([outcomes, outcomes]), "request_id", "churned")


def test_repeated_log_ids_keep_the_first_row_and_are_counted():
    """A client reusing its X-Request-ID, or retrying, logs an id twice: the first row is kept."""
    log, outcomes = classification_log(12, 20, {"champion": 0.8, "challenger": 0.8})
    retried = log.iloc[:3].assign(prediction="retried")
    joined = join_outcomes(pd.concat([log, retried]), outcomes, "request_id", "churned")
    assert len(joined) == 20 and joined.attrs["duplicate_rows"] == 3
    assert joined.attrs["matched"] == 20 and joined.attrs["log_unmatched"] == 0
    assert "retried" not in set(joined["prediction"])


def test_a_missing_key_or_target_column_is_named():
    log, outcomes = classification_log(13, 20, {"champion": 0.8, "challenger": 0.8})
    with pytest.raises(ExperimentError, match=r"the outcomes has no column \['churned'\]"):
        join_outcomes(log, outcomes.drop(columns=["churned"]), "request_id", "churned")


# --- bad inputs ---------------------------------------------------------------------------------


def test_a_log_without_arms_names_the_serving_mode():
    log, outcomes = classification_log(14, 100, {"champion": 0.8, "challenger": 0.8})
    joined = join_outcomes(log.drop(columns=["arm"]), outcomes, "request_id", "churned")
    with pytest.raises(ExperimentError, match=r"the log has no arms.*SERVING_MODE=ab"):
        compare(joined, classification_plan())


def test_a_single_arm_is_refused():
    log, outcomes = classification_log(15, 100, {"champion": 0.8, "challenger": 0.8}, share=0.0)
    joined = join_outcomes(log, outcomes, "request_id", "churned")
    with pytest.raises(ExperimentError, match=r"only champion rows.*both arms need traffic"):
        arm_results(joined, classification_plan())


@pytest.mark.parametrize(
    ("metric", "task", "expected"),
    [
        ("mae", "classification", "'mae' is not a classification metric: use one of"),
        ("roc_auc", "regression", "'roc_auc' is not a regression metric"),
        ("lift", "classification", "'lift' is not a classification metric"),
    ],
)
def test_a_metric_of_another_task_is_refused(metric, task, expected):
    with pytest.raises(ExperimentError, match=expected):
        ExperimentPlan(metric, task, "y", minimum_detectable_effect=0.1)


def test_error_costs_on_a_regression_are_refused():
    with pytest.raises(ExperimentError, match="error_costs apply to classification"):
        regression_plan(error_costs={"false_positive": 1})


# --- shadow mode --------------------------------------------------------------------------------


def test_shadow_agreement_of_classes_and_latency_per_version():
    log = pd.DataFrame(
        {
            "prediction": ["stay", "churn", "stay", "stay"],
            "shadow_prediction": ["stay", "churn", "churn", None],
            "model_version": "3",
            "shadow_model_version": "4",
            "latency_ms": [1.0, 2.0, 3.0, 4.0],
            "shadow_latency_ms": [10.0, 20.0, 30.0, 40.0],
        }
    )
    result = shadow_agreement(log, "classification")
    assert (result["rows"], result["compared"]) == (4, 3)
    assert result["agreement"] == pytest.approx(2 / 3)
    assert result["latency_ms"]["champion"]["version"] == "3"
    assert result["latency_ms"]["challenger"]["p50"] == pytest.approx(25.0)


def test_shadow_agreement_of_numbers_within_a_tolerance():
    log = pd.DataFrame({"prediction": [1.0, 2.0, 3.0], "shadow_prediction": [1.0, 2.5, 5.0]})
    result = shadow_agreement(log, "regression", tolerance=0.5)
    assert result["mean_abs_difference"] == pytest.approx(2.5 / 3)
    assert result["max_abs_difference"] == pytest.approx(2.0)
    assert result["within_tolerance"] == pytest.approx(2 / 3)
    assert result["latency_ms"] == {}


def test_a_log_without_shadow_predictions_names_the_serving_mode():
    with pytest.raises(ExperimentError, match="SERVING_MODE=shadow"):
        shadow_agreement(pd.DataFrame({"prediction": [1, 2]}), "regression")


def test_latencies_by_arm_give_each_arm_and_version_the_modules_percentiles():
    log = pd.DataFrame(
        {
            "arm": ["champion"] * 4 + ["challenger"] * 4,
            "model_version": ["3"] * 4 + ["4"] * 4,
            "latency_ms": [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, None],
        }
    )
    table = latencies_by_arm(log)
    assert list(table.columns) == [f"p{q}" for q in LATENCY_PERCENTILES]
    assert table.loc[("champion", "3"), "p50"] == pytest.approx(2.5)
    assert table.loc[("challenger", "4"), "p50"] == pytest.approx(20.0)


def test_the_bootstrap_auc_is_scikit_learns_ties_included():
    from sklearn.metrics import roc_auc_score

    from crisp_ml.experiment import binary_auc

    rng = np.random.default_rng(3)
    truth = rng.random(300) < 0.4
    scores = np.round(rng.random(300) + truth * 0.3, 1)  # rounded: many ties
    assert binary_auc(truth, scores) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert np.isnan(binary_auc(np.zeros(5, bool), scores[:5]))
