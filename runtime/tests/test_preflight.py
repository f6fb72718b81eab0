"""Preflight: each settings problem planted in the data or the parameters, found before a run."""

import json

import jinja2
import pandas as pd
import pytest
import yaml

from crisp_ml import cli, pipeline, preflight, project
from crisp_ml.params import ParamsError, set_dotted

from .conftest import TEMPLATE


def demo_params(task: str) -> dict:
    """The template's params.yaml for `task`, rendered as cookiecutter renders it."""
    text = (TEMPLATE / "{{cookiecutter.project_slug}}" / "params.yaml").read_text()
    template = jinja2.Template(text, undefined=jinja2.StrictUndefined)
    return yaml.safe_load(template.render(cookiecutter={"task": task, "project_slug": "demo"}))


def changed(tree: dict, **settings) -> dict:
    """A copy of `tree` with dotted keys (written with `__` for `.`) set."""
    tree = json.loads(json.dumps(tree))
    for key, value in settings.items():
        set_dotted(tree, key.replace("__", "."), value)
    return tree


def the_problem(problems: list[str], key: str) -> str:
    """The one problem naming `key`."""
    named = [p for p in problems if f"`{key}`" in p]
    assert len(named) == 1, f"expected one problem naming {key}, got {problems}"
    return named[0]


CUSTOMERS = pd.DataFrame(
    {
        "customer_id": [1, 2, 3, 4],
        "region": ["north", "south", "north", "east"],
        "sex": ["f", "m", "f", "m"],
        "churned": [0, 1, 0, 1],
    }
)


# --- columns ---------------------------------------------------------------------------------


def test_a_wrong_id_column_is_named_with_its_close_match():
    problem = the_problem(
        preflight.check_columns(CUSTOMERS, "churned", id_column="customerid"), "data.id_column"
    )
    assert "'customerid' is not in the data" in problem
    assert "Did you mean 'customer_id'?" in problem


def test_a_wrong_target_lists_the_columns_when_nothing_is_close():
    problem = the_problem(preflight.check_columns(CUSTOMERS, "outcome"), "data.target")
    assert "'customer_id', 'region', 'sex', 'churned'" in problem


def test_wrong_segments_and_sensitive_attributes_are_each_named():
    problems = preflight.check_columns(
        CUSTOMERS, "churned", segments=["regoin", "region"], sensitive_attributes=["Sex"]
    )
    assert "Did you mean 'region'?" in the_problem(problems, "use_case.segments")
    assert "Did you mean 'sex'?" in the_problem(problems, "use_case.sensitive_attributes")


def test_the_id_column_cannot_be_a_segment_it_is_dropped_before_modelling():
    problems = preflight.check_columns(
        CUSTOMERS, "churned", id_column="customer_id", segments=["customer_id"]
    )
    assert "kept out of the data before modelling" in the_problem(problems, "use_case.segments")


def add_age_band(frame: pd.DataFrame, target: str, drop_duplicates: bool):
    return frame.assign(age_band="adult"), {}


def test_a_column_the_projects_clean_derives_can_be_a_segment():
    prepared, problems = preflight.prepared_frame(CUSTOMERS, "churned", "customer_id", add_age_band)
    assert problems == []
    assert "customer_id" not in prepared.columns
    assert (
        preflight.check_columns(CUSTOMERS, "churned", segments=["age_band"], prepared=prepared)
        == []
    )
    assert preflight.check_columns(CUSTOMERS, "churned", segments=["age_band"]) != []


def test_a_clean_that_fails_on_the_data_is_a_problem_and_the_raw_columns_stand_in():
    def broken(frame, target, drop_duplicates):
        raise KeyError("income")

    prepared, problems = preflight.prepared_frame(CUSTOMERS, "churned", clean=broken)
    assert prepared.columns.tolist() == CUSTOMERS.columns.tolist()
    assert "clean() fails on this data (KeyError: 'income')" in problems[0]


def test_the_projects_own_clean_is_found_and_none_without_its_package(
    generated_project, isolated_project, project_settings, monkeypatch
):
    unknown = project_settings.replace('package = "demo_ml_project"', 'package = "not_installed"')
    (isolated_project / "pyproject.toml").write_text(unknown)
    project._settings_of.cache_clear()
    assert preflight.project_clean() is None
    monkeypatch.setenv("PROJECT_ROOT", str(generated_project))
    monkeypatch.syspath_prepend(str(generated_project / "src"))
    clean = preflight.project_clean()
    assert clean.__module__ == "demo_ml_project.data"
    prepared, problems = preflight.prepared_frame(CUSTOMERS, "churned", "customer_id", clean)
    assert problems == [] and "customer_id" not in prepared


def test_a_misspelt_drop_column_is_named_with_its_close_match():
    problems = preflight.check_drop_columns(CUSTOMERS, ["regoin", "sex"], "churned")
    problem = the_problem(problems, "data.drop_columns")
    assert "'regoin' is not in the data. Did you mean 'region'?" in problem


def test_drop_columns_may_name_a_column_clean_derives_never_the_target_or_a_segment():
    prepared, _ = preflight.prepared_frame(CUSTOMERS, "churned", "customer_id", add_age_band)
    assert preflight.check_drop_columns(CUSTOMERS, ["age_band"], prepared=prepared) == []
    problems = preflight.check_drop_columns(
        CUSTOMERS, ["churned", "region", "sex"], "churned", ["region"], ["sex"]
    )
    assert len(problems) == 3
    assert "'churned', which `data.target` names" in problems[0]
    assert "'region', which `use_case.segments` names" in problems[1]
    assert "'sex', which `use_case.sensitive_attributes` names" in problems[2]


@pytest.mark.parametrize("value", ["region", [1, 2], {"region": True}])
def test_drop_columns_must_be_a_list_of_names(value):
    problem = the_problem(preflight.check_drop_columns(CUSTOMERS, value), "data.drop_columns")
    assert "use a list of column names" in problem


def test_a_misspelt_drop_column_stops_the_run_before_it_starts(isolated_project):
    tree = changed(demo_params("classification"), data__drop_columns=["mean radus"])
    with pytest.raises(preflight.PreflightError, match=r"Did you mean 'mean radius'\?"):
        preflight.check_before_run(tree)


# --- the positive class ----------------------------------------------------------------------


def test_an_unknown_positive_class_is_named_with_the_classes():
    labels = pd.Series(["benign", "malignant", "benign"])
    problem = the_problem(
        preflight.check_positive_class(labels, "maligant"), "use_case.positive_class"
    )
    assert "the classes are 'benign', 'malignant'" in problem
    assert "Did you mean 'malignant'?" in problem
    assert "leave it empty for the second class, 'malignant'" in problem


@pytest.mark.parametrize(
    "labels, positive",
    [([0, 1, 1, 0], "1"), ([True, False, True], "True"), ([0.0, 1.0], "1.0"), (["a", "b"], "")],
    ids=["integers", "booleans", "floats", "empty-for-binary"],
)
def test_integer_and_boolean_labels_match_as_text(labels, positive):
    assert preflight.check_positive_class(pd.Series(labels), positive) == []


def test_a_boolean_label_written_in_lower_case_is_pointed_to_its_spelling():
    problems = preflight.check_positive_class(pd.Series([True, False]), "true")
    assert "Did you mean 'True'?" in the_problem(problems, "use_case.positive_class")


def test_a_positive_class_with_multiclass_is_to_be_left_empty():
    labels = pd.Series(["setosa", "versicolor", "virginica"])
    problems = preflight.check_positive_class(labels, "setosa")
    assert "leave it empty for multiclass" in the_problem(problems, "use_case.positive_class")
    unknown = preflight.check_positive_class(labels, "rose")
    assert "leave it empty for multiclass" in the_problem(unknown, "use_case.positive_class")
    # ...unless something measures one class against the rest
    assert preflight.check_positive_class(labels, "setosa", ["site"]) == []
    assert preflight.check_positive_class(labels, "setosa", error_costs={"false_positive": 1}) == []


def test_multiclass_fairness_needs_a_positive_class():
    labels = pd.Series([0, 1, 2, 1])
    problems = preflight.check_positive_class(labels, "", sensitive_attributes=["sex"])
    assert "set it to one of '0', '1', '2'" in the_problem(problems, "use_case.positive_class")


# --- ranges and limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("data.test_size", 1.5),
        ("data.test_size", 0),
        ("data.max_categories", 0),
        ("modelling.search_rows", -1),
        ("modelling.max_model_mb", -5),
        ("data.sample_rows", -1),
        ("data.max_missing_share", 1.5),
        ("modelling.cv_folds", 1),
        ("modelling.n_iter", 0),
        ("monitoring.retrain_share", 2.0),
        ("monitoring.max_unseen_share", -0.1),
        ("use_case.threshold", 1.2),
        ("use_case.worst_segment_threshold", 1.01),
        ("use_case.fairness_limits.demographic_parity_difference", -0.1),
        ("use_case.error_costs.false_negative", -10.0),
    ],
)
def test_a_setting_out_of_its_range_is_named(key, value):
    tree = changed(demo_params("classification"), **{key.replace(".", "__"): value})
    assert the_problem(preflight.settings_problems(tree), key)


def test_an_error_threshold_below_zero_can_never_be_met():
    tree = changed(demo_params("regression"), use_case__threshold=-1.0)
    problem = the_problem(preflight.settings_problems(tree), "use_case.threshold")
    assert "mae is never below 0" in problem


def test_an_unknown_fairness_measure_is_named_before_modelling():
    tree = changed(demo_params("regression"), use_case__fairness_limits={"error_gapp": 5.0})
    problem = the_problem(preflight.settings_problems(tree), "use_case")
    assert "['error_gapp']" in problem and "['error_gap']" in problem


# --- the baseline margin ---------------------------------------------------------------------


def test_the_baseline_is_the_dummy_models_metric():
    labels = pd.Series(["a", "a", "a", "b"])
    assert preflight.baseline_metric(labels, "classification", "roc_auc") == 0.5
    assert preflight.baseline_metric(labels, "classification", "accuracy") == 0.75
    targets = pd.Series([-0.4, 0.4, -0.4, 0.4])
    assert preflight.baseline_metric(targets, "regression", "mae") == pytest.approx(0.4)
    assert preflight.baseline_metric(targets, "regression", "r2") == pytest.approx(0.0)


def test_an_impossible_regression_margin_names_the_baseline_and_a_margin_that_fits():
    tree = changed(demo_params("regression"), evaluation__baseline_margin=5.0)
    frame = pd.DataFrame({"age": range(40), "sex": [1, 2] * 20, "progression": [-0.4, 0.4] * 20})
    problem = the_problem(preflight.data_problems(tree, frame), "evaluation.baseline_margin")
    assert "a dummy model's mae on this data is about 0.4" in problem
    assert "a mae of at most -4.6" in problem
    assert "try 0.04" in problem


@pytest.mark.parametrize(
    "metric, baseline, margin, possible",
    [
        ("roc_auc", 0.5, 0.1, True),
        ("roc_auc", 0.5, 0.5, False),
        ("r2", 0.0, 0.9, True),
        ("r2", 0.0, 1.0, False),
        ("mae", 0.4, 0.39, True),
        ("mae", 0.4, 0.4, False),
        ("accuracy", 0.9, 0.1, False),
        ("log_loss", 0.69, 0.1, True),
    ],
)
def test_a_margin_that_asks_for_a_perfect_score_or_better_cannot_be_met(
    metric, baseline, margin, possible
):
    problems = preflight.check_baseline_margin(metric, baseline, margin)
    assert (problems == []) == possible, problems


# --- all at once -----------------------------------------------------------------------------


def test_the_demo_params_pass(isolated_project):
    for task in ("classification", "regression"):
        assert preflight.problems_before_run(demo_params(task)) == [], task
        preflight.check_before_run(demo_params(task))


def test_every_problem_is_reported_at_once(isolated_project):
    tree = changed(
        demo_params("regression"),
        data__id_column="patient",
        data__test_size=1.5,
        use_case__segments=["age", "agegroup"],
        use_case__sensitive_attributes=["gender"],
        evaluation__baseline_margin=500.0,
    )
    with pytest.raises(preflight.PreflightError) as raised:
        preflight.check_before_run(tree)
    assert isinstance(raised.value, ParamsError), "the command line shows it as a params error"
    message = str(raised.value)
    for key in [
        "data.id_column",
        "data.test_size",
        "use_case.segments",
        "use_case.sensitive_attributes",
        "evaluation.baseline_margin",
    ]:
        assert f"`{key}`" in message, key
    assert message.startswith("5 setting(s) cannot work with this data; nothing was run")


def test_a_data_file_that_is_not_there_is_reported_with_the_other_problems(isolated_project):
    tree = changed(demo_params("classification"), data__path="data/missing.csv", data__test_size=2)
    problems = preflight.problems_before_run(tree)
    assert "no file at" in the_problem(problems, "data.path")
    assert the_problem(problems, "data.test_size")


def test_a_csv_with_integer_labels_and_an_id_column_passes(isolated_project):
    customers = pd.concat([CUSTOMERS] * 5, ignore_index=True)
    customers["tenure"] = range(len(customers))  # no two rows alike: cleaning keeps all 20
    customers.to_csv(isolated_project / "customers.csv", index=False)
    tree = changed(
        demo_params("classification"),
        data__path="customers.csv",
        data__target="churned",
        data__id_column="customer_id",
        use_case__segments=["region"],
        use_case__sensitive_attributes=["sex"],
        use_case__positive_class="1",
    )
    assert preflight.problems_before_run(tree) == []


# --- the command line ------------------------------------------------------------------------


def test_a_pipeline_with_a_wrong_id_column_stops_before_any_run(
    generated_project, isolated_project, monkeypatch, capsys
):
    monkeypatch.setenv("PROJECT_ROOT", str(generated_project))
    started = []
    monkeypatch.setattr(pipeline, "run", lambda plan, echo=print: started.append(plan))
    code = cli.main(["pipeline", "--smoke", "--set", "data.id_column=patient_id"])
    assert code == 1
    err = capsys.readouterr().err
    assert "nothing was run" in err
    assert "`data.id_column`: column 'patient_id' is not in the data" in err
    assert started == [], "no notebook ran, so no MLflow run started"
    assert not (isolated_project / "mlflow.db").exists()


def test_too_few_rows_for_the_folds_are_named_before_modelling():
    assert preflight.check_enough_rows(12, 5) == []
    (problem,) = preflight.check_enough_rows(9, 5)
    assert problem.startswith("`modelling.cv_folds` = 5 needs at least 10 rows; the data has 9")


def test_a_segment_on_a_column_02_leaves_out_by_itself_is_named_before_modelling():
    frame = CUSTOMERS.assign(postcode=["P1", "P2", "P3", "P4"], country="NO")
    tree = changed(demo_params("classification"), data__target="churned",
                   use_case__segments=["postcode", "region"],
                   use_case__sensitive_attributes=["country"], data__max_categories=3)  # fmt: skip
    problems = preflight.data_problems(tree, frame)
    assert "names 'postcode', which is not used for modelling" in the_problem(
        problems, "use_case.segments"
    )
    assert "'country'" in the_problem(problems, "use_case.sensitive_attributes")
