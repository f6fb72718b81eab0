"""Monitoring: drift tests on synthetic data, the PSI on known shares, bad batches, the verdict and
the exit status of `monitor`."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest

from crisp_ml import cli, pipeline
from crisp_ml.monitoring import (
    EXIT_CODES,
    LOG_FIELDS,
    VERDICTS,
    Finding,
    MonitoringError,
    Verdict,
    adjust_p_values,
    attach_labels,
    binned_counts,
    categorical_drift,
    check_batch,
    classify_shifts,
    drift_findings,
    drift_table,
    labelled_performance,
    numeric_drift,
    performance_findings,
    psi,
    quantile_edges,
    read_prediction_log,
    read_table,
    read_verdict,
    reference_sets,
    shifted_batch,
    write_verdict,
)
from crisp_ml.params import ParamsError
from crisp_ml.tracking import client

THRESHOLDS = {"alpha": 0.05, "psi_warn": 0.1, "psi_retrain": 0.25}
LIMITS = {
    "retrain_share": 0.3,
    "max_unseen_share": 0.05,
    "max_missing_increase": 0.1,
    "min_rows": 30,
}


def normal(rows: int, mean: float = 0.0, seed: int = 0) -> pd.Series:
    return pd.Series(np.random.default_rng(seed).normal(mean, 1.0, rows))


# --- drift tests ---------------------------------------------------------------------------------


def test_kolmogorov_smirnov_detects_a_shifted_mean_and_not_a_fresh_sample():
    reference = normal(500, seed=1)
    assert numeric_drift(reference, normal(300, mean=0.5, seed=2))["p_value"] < 1e-6
    assert numeric_drift(reference, normal(300, seed=3))["p_value"] > 0.05


def test_chi_squared_detects_a_changed_mix_and_not_the_same_mix():
    reference = pd.Series(["a"] * 300 + ["b"] * 300 + ["c"] * 400)
    same = pd.Series(["a"] * 60 + ["b"] * 60 + ["c"] * 80)
    moved = pd.Series(["a"] * 120 + ["b"] * 40 + ["c"] * 40)
    assert categorical_drift(reference, same)["p_value"] > 0.5
    assert categorical_drift(reference, moved)["p_value"] < 1e-6


def test_psi_on_known_shares():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected)  # 0.2747
    assert psi([50, 50], [25, 75]) == pytest.approx(expected), "counts work as shares"
    empty_bin = (0.5 - 1) * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi([1, 0], [0.5, 0.5]) == pytest.approx(empty_bin), "an empty bin counts as 0.0001"


def test_numeric_psi_bins_at_the_reference_deciles_with_open_outer_bins():
    reference = pd.Series(np.arange(1000, dtype=float))
    edges = quantile_edges(reference, 10)
    assert binned_counts(reference, edges).tolist() == [100] * 10
    assert numeric_drift(reference, reference.sample(frac=0.5, random_state=0))["psi"] < 0.02
    beyond = numeric_drift(reference, pd.Series(np.full(100, 5000.0)))["psi"]
    expected = 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1) + (1 - 0.1) * math.log(1 / 0.1)
    assert beyond == pytest.approx(expected), "values above the reference's range count"


def test_unseen_categories_are_counted_and_named():
    result = categorical_drift(pd.Series(["a", "b"] * 50), pd.Series(["a"] * 8 + ["z"] * 2))
    assert result["unseen_share"] == pytest.approx(0.2)
    assert result["unseen"] == "z"


def test_numbers_as_categories_match_whether_read_as_int_or_float():
    result = categorical_drift(pd.Series([1.0, 2.0] * 50), pd.Series([1, 2] * 10))
    assert result["unseen_share"] == 0
    assert result["p_value"] > 0.5


def test_a_rise_in_missing_values_is_measured_and_warns():
    current = normal(100, seed=5)
    current[:30] = np.nan
    table = drift_table(pd.DataFrame({"x": normal(200)}), pd.DataFrame({"x": current}), ["x"])
    assert table.loc[0, "missing_change"] == pytest.approx(0.3)
    findings = drift_findings(classify_shifts(table, **THRESHOLDS), rows=100, **LIMITS)
    assert [f.level for f in findings if f.check == "missing values"] == ["warn"]


def test_benjamini_hochberg_adjusts_the_p_values_and_skips_untested_columns():
    adjusted = adjust_p_values(pd.Series([0.01, 0.04, 0.03, np.nan]))
    assert adjusted[:3].tolist() == pytest.approx([0.03, 0.04, 0.04])
    assert np.isnan(adjusted[3])


def test_a_shift_needs_a_significant_test_and_a_large_enough_psi():
    table = pd.DataFrame(
        {"feature": list("abcd"), "p_value": [1e-6, 1e-6, 1e-6, 0.5], "psi": [0.5, 0.15, 0.05, 0.9]}
    )
    assert classify_shifts(table, **THRESHOLDS)["shift"].tolist() == [
        "major",
        "moderate",
        "none",  # significant, but too small to matter
        "none",  # large, but within what chance gives a small batch
    ]


# --- the current batch ---------------------------------------------------------------------------

REFERENCE = pd.DataFrame({"size": [1.0, 2.0, 3.0], "colour": ["red", "blue", "red"]})
FEATURES = ["size", "colour"]


def test_a_batch_without_rows_is_refused():
    with pytest.raises(MonitoringError, match="has no rows"):
        check_batch(REFERENCE.iloc[0:0], REFERENCE, FEATURES, [])


def test_missing_unknown_and_mistyped_columns_are_named_in_one_error():
    batch = pd.DataFrame({"size": ["1.5", "big"], "shape": ["round", "square"]})
    with pytest.raises(MonitoringError) as error:
        check_batch(batch, REFERENCE, FEATURES, ["label"])
    message = str(error.value)
    assert "missing columns ['colour']" in message
    assert "unknown columns ['shape'] (allowed beside the model's inputs: label)" in message
    assert "column 'size' should hold numbers, found 'big'" in message


def test_numbers_written_as_text_are_read_as_numbers():
    batch = pd.DataFrame({"size": ["1.5", None], "colour": ["red", "red"], "label": [1, 0]})
    checked = check_batch(batch, REFERENCE, FEATURES, ["label"])
    assert checked["size"].dtype == float
    assert checked["label"].tolist() == [1, 0]


def test_a_missing_unreadable_or_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(MonitoringError, match=r"monitoring\.current_path: no file at"):
        read_table(str(tmp_path / "none.csv"), "monitoring.current_path")
    (tmp_path / "batch.txt").write_text("size\n1\n")
    with pytest.raises(MonitoringError, match=r"batch.txt is not a \.csv or \.parquet file"):
        read_table(str(tmp_path / "batch.txt"), "monitoring.current_path")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(MonitoringError, match="is empty"):
        read_table(str(tmp_path / "empty.csv"), "monitoring.current_path")


def write_log(path: Path, entries: list[tuple[str, float]], broken_tail: bool = False) -> None:
    """Lines as serving/predlog.py writes them: (model version, input x) each."""
    lines = [
        json.dumps(
            {
                "timestamp": "2026-01-31T12:00:00.000+00:00",
                "request_id": f"r{x:g}",
                "endpoint": "/predict",
                "model_name": "m",
                "model_version": version,
                "latency_ms": 1.0,
                "inputs": {"x": x},
                "prediction": "yes",
            }
        )
        for version, x in entries
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ('\n{"timestamp": ' if broken_tail else "\n"))


def test_the_prediction_log_gives_one_versions_rows_oldest_first(tmp_path):
    log = tmp_path / "logs" / "predictions.jsonl"
    write_log(log.with_name("predictions.jsonl.2"), [("2", 1.0)])
    write_log(log.with_name("predictions.jsonl.1"), [("1", 9.0), ("2", 2.0)])
    write_log(log, [("2", 3.0)], broken_tail=True)  # the server stopped mid-line
    frame = read_prediction_log(str(log), "2")
    assert frame["x"].tolist() == [1.0, 2.0, 3.0]
    assert list(frame.columns) == ["x", *LOG_FIELDS]


def test_a_shadow_servers_log_gives_the_champions_rows_and_skips_no_line_as_unreadable(tmp_path):
    """A shadow server logs the challenger's answers as lines of their own, without inputs."""
    log = tmp_path / "predictions.jsonl"
    write_log(log, [("1", 1.0), ("1", 2.0)])
    shadow = {
        "request_id": "r1",
        "model_version": "2",
        "arm": "shadow",
        "row": 0,
        "prediction": "no",
    }
    with log.open("a") as file:
        file.write(json.dumps(shadow) + "\n")
    frame = read_prediction_log(str(log), "1")
    assert frame["x"].tolist() == [1.0, 2.0]
    assert frame.attrs["skipped_lines"] == 0, "a shadow answer is no damaged line"


def test_a_log_without_the_versions_rows_names_the_versions_it_holds(tmp_path):
    log = tmp_path / "predictions.jsonl"
    write_log(log, [("1", 1.0), ("3", 2.0)])
    with pytest.raises(
        MonitoringError, match=r"no rows predicted by version 2 \(versions in it: 1, 3\)"
    ):
        read_prediction_log(str(log), "2")


def test_no_log_says_how_to_turn_it_on():
    with pytest.raises(MonitoringError, match=r"PREDICTION_LOG=logs/p.jsonl make serve"):
        read_prediction_log("logs/p.jsonl", "1")


def test_labels_are_joined_by_id_whatever_its_type(tmp_path):
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": [7, 8], "y": ["no", "yes"]}).to_csv(labels, index=False)
    batch = pd.DataFrame({"request_id": ["8", "7", "9"], "x": [1.0, 2.0, 3.0]})
    joined = attach_labels(batch, str(labels), "request_id", "y")
    assert joined["y"].tolist()[:2] == ["yes", "no"]
    assert pd.isna(joined["y"].iloc[2]), "a row without a label stays unlabelled"


def test_labels_join_when_a_blank_id_cell_made_the_csv_read_ids_as_decimals(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,y\n7,no\n,yes\n8,yes\n")  # pandas reads 7.0, NaN, 8.0
    batch = pd.DataFrame({"request_id": ["8", "7"], "x": [1.0, 2.0]})
    joined = attach_labels(batch, str(labels), "request_id", "y")
    assert joined["y"].tolist() == ["yes", "no"]


def test_repeated_label_ids_and_a_missing_id_column_are_refused(tmp_path):
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": [7, 7], "y": ["no", "yes"]}).to_csv(labels, index=False)
    batch = pd.DataFrame({"request_id": ["7"], "x": [1.0]})
    with pytest.raises(MonitoringError, match="ids repeat in 'request_id'"):
        attach_labels(batch, str(labels), "request_id", "y")
    with pytest.raises(MonitoringError, match="the current batch has no column 'request_id'"):
        attach_labels(batch.rename(columns={"request_id": "id"}), str(labels), "request_id", "y")


# --- the reference -------------------------------------------------------------------------------


def pipeline_run_logging(tmp_path: Path, sets: dict[str, pd.DataFrame] | None) -> str:
    """A pipeline run whose folder is gone, with a 02 child run that logged `sets` (if any)."""
    with mlflow.start_run(run_name="pipeline") as parent:
        mlflow.set_tag("run_dir", str(tmp_path / "runs" / "cleaned-away"))
        with mlflow.start_run(run_name="02_data_preparation", nested=True):
            for name, frame in (sets or {}).items():
                path = tmp_path / f"{name}.parquet"
                frame.to_parquet(path, index=False)
                mlflow.log_artifact(str(path), "data")
    return parent.info.run_id


def test_the_reference_comes_from_the_logged_sets_when_the_run_folder_is_gone(tmp_path):
    mlflow_client = client()
    sets = {"train": pd.DataFrame({"x": [1.0, 2.0]}), "test": pd.DataFrame({"x": [3.0]})}
    version = SimpleNamespace(
        name="m", version="1", tags={"pipeline_run_id": pipeline_run_logging(tmp_path, sets)}
    )
    reference = reference_sets(mlflow_client, version)
    assert reference.train.equals(sets["train"]) and reference.test.equals(sets["test"])
    assert reference.folder.is_relative_to(tmp_path / "runs" / "monitoring" / "reference")


def test_a_reference_found_nowhere_is_a_clear_error(tmp_path):
    mlflow_client = client()
    version = SimpleNamespace(
        name="m", version="1", tags={"pipeline_run_id": pipeline_run_logging(tmp_path, None)}
    )
    with pytest.raises(MonitoringError, match="neither in its run folder"):
        reference_sets(mlflow_client, version)
    unregistered = SimpleNamespace(name="m", version="2", tags={})
    with pytest.raises(MonitoringError, match="not registered by a pipeline run"):
        reference_sets(mlflow_client, unregistered)


# --- the verdict ---------------------------------------------------------------------------------


def classified(shifts: list[str], prediction: str = "none") -> pd.DataFrame:
    """A drift table after classify_shifts: one feature per shift, then the predictions."""
    rows = [{"feature": f"f{i}", "shift": s, "psi": 0.5} for i, s in enumerate(shifts)]
    rows.append({"feature": "(prediction)", "shift": prediction, "psi": 0.3, "p_adjusted": 1e-4})
    table = pd.DataFrame(rows).assign(unseen_share=np.nan, unseen="", missing_change=0.0)
    return table.assign(missing_reference=0.0, missing_current=0.0)


def levels(findings: list[Finding]) -> dict[str, str]:
    return {f.check: f.level for f in findings}


def test_nothing_moved_is_ok():
    findings = drift_findings(classified(["none"] * 10), rows=100, **LIMITS)
    assert Verdict(findings).level == "ok"
    assert levels(findings) == {"feature drift": "ok", "prediction drift": "ok"}


def test_a_few_shifted_features_warn_and_many_major_shifts_retrain():
    few = drift_findings(classified(["major", "moderate"] + ["none"] * 8), rows=100, **LIMITS)
    assert levels(few)["feature drift"] == "warn"
    many = drift_findings(classified(["major"] * 3 + ["none"] * 7), rows=100, **LIMITS)
    assert levels(many)["feature drift"] == "retrain"
    assert "3 of 10 features shifted majorly" in Verdict(many).reasons()[0]


def test_a_major_shift_of_the_predictions_means_retrain():
    findings = drift_findings(classified(["none"] * 10, prediction="major"), rows=100, **LIMITS)
    assert levels(findings)["prediction drift"] == "retrain"


def test_too_few_rows_warn():
    findings = drift_findings(classified(["none"] * 10), rows=12, **LIMITS)
    assert levels(findings)["rows"] == "warn"


def test_a_metric_below_the_use_cases_threshold_means_retrain_and_a_drop_warns():
    below = performance_findings("roc_auc", 0.90, registered=0.98, threshold=0.95, max_drop=0.05)
    assert levels(below) == {"roc_auc threshold": "retrain", "roc_auc drop": "warn"}
    dropped = performance_findings("roc_auc", 0.96, registered=0.99, threshold=0.95, max_drop=0.02)
    assert levels(dropped) == {"roc_auc threshold": "ok", "roc_auc drop": "warn"}
    errors = performance_findings("mae", 70.0, registered=45.0, threshold=55.0, max_drop=5.0)
    assert levels(errors) == {"mae threshold": "retrain", "mae drop": "warn"}, "lower is better"
    steady = performance_findings("mae", 46.0, registered=45.0, threshold=55.0, max_drop=5.0)
    assert Verdict(steady).level == "ok"


def test_the_worst_segment_below_its_threshold_warns():
    worst = pd.Series({"segment": "age", "group": "Q1", "roc_auc": 0.7})
    findings = performance_findings("roc_auc", 0.97, 0.98, 0.95, 0.05, worst, worst_threshold=0.85)
    assert levels(findings)["worst segment roc_auc"] == "warn"


def multiclass_batch() -> tuple[object, pd.DataFrame]:
    """A three-class model, and labelled rows from three sites; only site a holds every class."""
    from sklearn.linear_model import LogisticRegression

    species = ["Adelie", "Chinstrap", "Gentoo"]
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": np.repeat([0.0, 5.0, 10.0], 30) + rng.normal(0, 0.3, 90)})
    model = LogisticRegression().fit(train, np.repeat(species, 30))
    labelled = pd.DataFrame(
        {"x": [0.0, 5.0, 10.0, 0.1, 10.1, 0.2], "site": ["a", "a", "a", "b", "b", "c"],
         "species": ["Adelie", "Chinstrap", "Gentoo", "Adelie", "Gentoo", "Adelie"]}
    )  # fmt: skip
    return model, labelled


def test_labelled_segments_lacking_a_class_are_undefined_with_a_fallback_and_never_the_worst():
    model, labelled = multiclass_batch()
    value, table, worst = labelled_performance(
        model, labelled, ["x"], "species", "classification", "roc_auc", "", ["site"]
    )
    assert value == pytest.approx(1.0)
    status = dict(zip(table["group"], table["status"], strict=True))
    assert status == {
        "a": "defined",
        "b": "undefined: no rows of class 'Chinstrap'",
        "c": "undefined: no rows of classes 'Chinstrap', 'Gentoo'",
    }
    undefined = table[table["group"] != "a"]
    assert (undefined["fallback"] == "balanced_accuracy").all()
    assert undefined["fallback_value"].tolist() == [1.0, 1.0]
    assert worst["group"] == "a"
    findings = performance_findings("roc_auc", value, 0.99, 0.95, 0.05, worst, 0.85, table)
    assert levels(findings)["worst segment roc_auc"] == "ok"


def test_a_metric_undefined_in_every_labelled_group_is_not_assessed_and_says_so():
    model, _ = multiclass_batch()
    labelled = pd.DataFrame(  # as on the penguins' islands: each lacks a species
        {"x": [0.0, 10.0, 0.1, 5.0], "site": ["b", "b", "c", "c"],
         "species": ["Adelie", "Gentoo", "Adelie", "Chinstrap"]}
    )  # fmt: skip
    value, table, worst = labelled_performance(
        model, labelled, ["x"], "species", "classification", "roc_auc", "", ["site"]
    )
    assert value == pytest.approx(1.0)
    assert worst is None and table["roc_auc"].isna().all()
    findings = performance_findings("roc_auc", value, 0.99, 0.95, 0.05, worst, 0.85, table)
    (segment,) = [f for f in findings if f.check == "worst segment roc_auc"]
    assert segment.level == "ok" and "not assessed" in segment.reason


def test_without_labels_performance_is_not_assessed_and_says_so():
    (finding,) = performance_findings("roc_auc", None, 0.98, 0.95, 0.05)
    assert finding.level == "ok" and "not assessed" in finding.reason


def test_the_verdict_is_the_most_severe_finding_with_its_exit_code():
    verdict = Verdict([Finding("a", "ok", "fine"), Finding("b", "warn", "drifting")])
    assert (verdict.level, verdict.exit_code, verdict.reasons()) == ("warn", 3, ["drifting"])
    assert Verdict([]).level == "ok"
    assert Verdict([Finding("a", "retrain", "gone"), Finding("b", "warn", "x")]).exit_code == 4


def test_exit_codes_are_distinct_from_errors_and_usage_errors():
    assert EXIT_CODES == {"ok": 0, "warn": 3, "retrain": 4}
    assert not {1, 2} & set(EXIT_CODES.values())


def test_the_verdict_file_round_trips_with_unmeasured_values_as_null(tmp_path):
    verdict = Verdict([Finding("performance", "warn", "undefined", value=math.nan)])
    assert read_verdict(write_verdict(verdict, tmp_path).parent) == verdict.as_dict()
    assert read_verdict(tmp_path)["findings"][0]["value"] is None
    with pytest.raises(MonitoringError, match=r"left no verdict\.json"):
        read_verdict(tmp_path / "elsewhere")


def test_the_shifted_demo_batch_moves_many_valued_numbers_by_one_standard_deviation():
    frame = pd.DataFrame(
        {"x": np.arange(20.0), "flag": [0.0, 1.0] * 10, "colour": ["a", "b"] * 10,
         "y": ["no", "yes"] * 10}
    )  # fmt: skip
    shifted = shifted_batch(frame, "y")
    assert (shifted["x"] - frame["x"]).to_numpy() == pytest.approx(np.full(20, frame["x"].std()))
    kept = ["flag", "colour", "y"]  # categories and the true outcome stay as they were
    assert shifted[kept].equals(frame[kept])


# --- the monitor command -------------------------------------------------------------------------


def test_the_pipeline_leaves_the_monitoring_notebook_to_its_own_command(tmp_path):
    for name in ("01_use_case", "05_deployment", "06_monitoring"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    assert [n.stem for n in pipeline.discover(tmp_path)] == ["01_use_case", "05_deployment"]
    assert pipeline.discover(tmp_path, on_demand=True)[-1].stem == "06_monitoring"


def test_the_monitoring_parameters_are_checked_like_the_pipelines(generated_project, monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(generated_project))
    notebook = pipeline.on_demand_notebook("06_monitoring")
    plan = pipeline.plan(sets=["monitoring.alpha=0.01"], notebooks=[notebook])
    assert plan.values[notebook]["monitoring_alpha"] == 0.01  # noqa: PD011 (a dict, not pandas)
    with pytest.raises(ParamsError, match=r"`monitoring.min_rows` = 'many' does not fit 06"):
        pipeline.plan(sets=["monitoring.min_rows=many"], notebooks=[notebook])


@pytest.fixture
def fake_runs(generated_project, monkeypatch, tmp_path):
    """`monitor` with the notebook and the pipeline replaced: the verdict is what a test says."""
    monkeypatch.setenv("PROJECT_ROOT", str(generated_project))
    runs = {"verdict": "ok", "pipelines": 0, "pipeline_fails": False}

    def run_on_demand(plan, kind):
        write_verdict(Verdict([Finding("feature drift", runs["verdict"], "because")]), tmp_path)
        return pipeline.Outcome("run", tmp_path, [tmp_path / "06_monitoring.ipynb"])

    def run(plan, echo=print):
        runs["pipelines"] += 1
        if runs["pipeline_fails"]:
            raise pipeline.PipelineError("03_modelling.ipynb failed")
        return pipeline.Outcome("pipeline", tmp_path, [], 1.0)

    monkeypatch.setattr(pipeline, "run_on_demand", run_on_demand)
    monkeypatch.setattr(pipeline, "run", run)
    return runs


@pytest.mark.parametrize("level", VERDICTS)
def test_monitor_exits_with_the_verdicts_code_and_retrains_only_when_told(fake_runs, level):
    fake_runs["verdict"] = level
    assert cli.main(["monitor", "--retrain"]) == EXIT_CODES[level]
    assert fake_runs["pipelines"] == (1 if level == "retrain" else 0)
    assert cli.main(["monitor"]) == EXIT_CODES[level]
    assert fake_runs["pipelines"] == (1 if level == "retrain" else 0), "no --retrain, no pipeline"


def test_a_failed_retraining_exits_1(fake_runs, capsys):
    fake_runs.update(verdict="retrain", pipeline_fails=True)
    assert cli.main(["monitor", "--retrain"]) == 1
    assert "03_modelling.ipynb failed" in capsys.readouterr().err


def test_monitor_refuses_unknown_monitoring_settings(fake_runs, capsys):
    assert cli.main(["monitor", "--set", "monitoring.alfa=0.1"]) == 1
    assert "Did you mean `monitoring.alpha`?" in capsys.readouterr().err
