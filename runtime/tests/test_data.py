"""Data preparation: loading, the checks that stop bad data, cleaning and splitting."""

import json
import warnings

import mlflow
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from mlflow.exceptions import RestException

from crisp_ml import tracking
from crisp_ml.data import (
    DataValidationError,
    apply_schema,
    check_missing,
    check_rows,
    check_target,
    load_dataset,
    load_demo,
    load_schema,
    log_dataset_input,
    log_datasets,
    quality_report,
    sample,
    split,
)


def frame(rows: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, rows),
            "city": rng.choice(["Lyon", "Oslo", None], rows),
            "label": rng.choice(["a", "b", "c"], rows),
        }
    )


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_demo_data_loads_offline_with_its_target(task):
    data, target = load_demo(task)
    assert target in data.columns and len(data) > 400
    if task == "classification":
        assert set(data[target]) == {"malignant", "benign"}


def test_csv_and_parquet_load(isolated_project):
    data = frame()
    data.to_csv(isolated_project / "d.csv", index=False)
    data.to_parquet(isolated_project / "d.parquet")
    assert load_dataset("d.csv", "classification").shape == data.shape
    assert load_dataset(str(isolated_project / "d.parquet"), "classification").shape == data.shape


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "absent.csv", "no file at"),
        ("", "empty.csv", "is empty"),
        ("a,b\n", "header_only.csv", "has no rows"),
        ("x", "data.xlsx", "use a .csv or .parquet file"),
    ],
)
def test_unusable_files_fail_clearly(isolated_project, content, name, message):
    if content is not None:
        (isolated_project / name).write_text(content)
    with pytest.raises(DataValidationError, match=message) as error:
        load_dataset(name, "classification")
    assert error.value.check == "readable file"


def test_missing_target_names_the_column_and_the_alternatives():
    with pytest.raises(DataValidationError, match=r"'churn'.*set data.target to one of: age, city"):
        check_target(frame(), "churn", "classification", 1)


def test_single_class_and_rare_classes_stop():
    one_class = frame().assign(label="a")
    with pytest.raises(DataValidationError, match=r"single class"):
        check_target(one_class, "label", "classification", 1)
    with pytest.raises(DataValidationError, match=r"fewer than data.min_rows_per_class=100"):
        check_target(frame(), "label", "classification", 100)


def test_regression_target_must_be_numeric():
    with pytest.raises(DataValidationError, match=r"regression needs numbers"):
        check_target(frame(), "label", "regression", 1)


def test_empty_and_mostly_missing_columns_stop():
    with pytest.raises(DataValidationError, match=r"column 'gone': every value is missing"):
        check_missing(frame().assign(gone=None), 0.5)
    sparse = frame().assign(city=[None] * 30 + ["Oslo"] * 10)
    with pytest.raises(DataValidationError, match=r"column 'city': 75% missing"):
        check_missing(sparse, 0.5)


def test_a_column_listed_to_drop_is_exempt_from_the_missing_values_check():
    sparse = frame().assign(gone=None, notes=[None] * 35 + ["late"] * 5)
    with pytest.raises(DataValidationError, match=r"list it in data\.drop_columns to leave it out"):
        check_missing(sparse, 0.5)
    check_missing(sparse, 0.5, drop_columns=["gone", "notes", "not_a_column"])


def test_too_few_rows_for_the_folds():
    with pytest.raises(DataValidationError, match=r"too few for modelling.cv_folds=5"):
        check_rows(frame(6), 5)


def test_schema_drops_impossible_values_and_stops_on_wrong_types():
    schema = pa.DataFrameSchema({"age": pa.Column(float, pa.Check.in_range(0, 120), nullable=True)})
    data = pd.DataFrame({"age": [30.0, 150.0, -1.0, 45.0]})
    kept, dropped = apply_schema(data, schema)
    assert dropped == 2 and kept["age"].tolist() == [30.0, 45.0]
    with pytest.raises(DataValidationError, match=r"schema.*column 'age'"):
        apply_schema(pd.DataFrame({"age": ["thirty", "forty"]}), schema)


def test_a_schema_mismatch_names_the_missing_and_the_undeclared_columns_plainly(isolated_project):
    """It read `column 'None': column_in_dataframe: found 'mean radius' (and 30 more)`."""
    demo = load_demo("classification")[0]
    (isolated_project / "schema.yaml").write_text(pa.infer_schema(demo).to_yaml())
    other = pd.DataFrame({"cyl": [4, 6, 8], "mpg": [21.0, 18.5, 15.0]})
    with pytest.raises(DataValidationError) as error:
        load_schema("schema.yaml", other)
    assert str(error.value) == (
        "data check 'schema' failed: the data lacks columns 'mean radius', 'mean texture', "
        "'mean perimeter', 'mean area', 'mean smoothness' (and 26 more) that schema.yaml declares; "
        "it has columns 'cyl', 'mpg' that schema.yaml does not declare. If the data is right, "
        "regenerate schema.yaml by deleting it (the next run infers it from this data and writes "
        "it for you to review); else fix data.path"
    )
    assert error.value.column is None
    schema = pa.infer_schema(demo)
    with pytest.raises(DataValidationError, match=r"lacks column 'diagnosis' that schema\.yaml"):
        apply_schema(demo.drop(columns="diagnosis"), schema, "schema.yaml")


def test_undeclared_columns_alone_are_named_in_a_warning_and_pass():
    schema = pa.infer_schema(frame())
    with pytest.warns(UserWarning, match=r"it has column 'extra' that .* does not declare"):
        kept, dropped = apply_schema(frame().assign(extra=1.0), schema)
    assert dropped == 0 and "extra" in kept


def test_an_inferred_schema_keeps_integer_columns_integers(isolated_project):
    with pytest.warns(UserWarning, match="wrote"):
        schema = load_schema("schema.yaml", frame())
    assert str(schema.columns["age"].dtype) == "int64"
    assert "dtype: int64" in (isolated_project / "schema.yaml").read_text()


def test_a_schema_forgets_the_columns_dropped_before_modelling(isolated_project):
    """A column newly listed in data.drop_columns (or left out by its role) is not a schema
    mismatch: the schema written by an earlier run need not be deleted."""
    (isolated_project / "schema.yaml").write_text(pa.infer_schema(frame()).to_yaml())
    kept = frame().drop(columns="city")
    with pytest.raises(DataValidationError, match=r"lacks column 'city'"):
        load_schema("schema.yaml", kept)
    schema = load_schema("schema.yaml", kept, dropped=["city"])
    assert list(schema.columns) == ["age", "label"]
    assert apply_schema(kept, schema)[1] == 0


def test_the_quality_report_shows_each_columns_role():
    from crisp_ml.columns import assign_roles

    data = frame().assign(country="NO")
    with pytest.warns(UserWarning, match="column 'country' is not used for modelling, constant"):
        roles = assign_roles(data, "label", drop_columns=["city"], id_column="row")
    report = quality_report(data, roles.table)
    assert report.index.tolist() == ["age", "city", "label", "country", "row"]
    assert report.loc["country", "role"] == "constant" and not report.loc["country", "used"]
    assert report.loc["city", "reason"] == "listed in data.drop_columns"
    assert report.loc["age", "distinct"] == data["age"].nunique()
    assert report.loc["row", "role"] == "id"  # dropped before: its role only


def test_the_projects_clean_keeps_integer_features_integers(project_data, isolated_project):
    """`clean` cast integer features to float64, so the inferred schema said float64 and a
    segment read "cyl = 4.0"; a value missing at prediction time is the server's to take (an
    integer column accepts null, test_serving), not a reason to make every integer a float."""
    from crisp_ml.evaluation import segment_groups

    raw = pd.DataFrame({"cyl": [4, 6, 8, 4], "mpg": [21.0, 18.5, 15.0, 22.0], "y": list("abab")})
    cleaned, _ = project_data.clean(raw, "y", drop_duplicates=True)
    assert str(cleaned["cyl"].dtype) == "int64"
    with pytest.warns(UserWarning, match="wrote"):
        schema = load_schema("schema.yaml", cleaned)
    assert str(schema.columns["cyl"].dtype) == "int64"
    validated, _ = apply_schema(cleaned, schema)
    assert segment_groups(validated, "cyl").tolist() == ["4", "6", "8", "4"]


def test_sample_keeps_class_shares_and_split_is_stratified_and_seeded():
    data = frame(400)
    small = sample(data, 100, "label", "classification", seed=1)
    assert len(small) == 100
    first = split(data, "label", "classification", 0.25, seed=3)
    again = split(data, "label", "classification", 0.25, seed=3)
    pd.testing.assert_frame_equal(first.test, again.test)
    shares = first.test["label"].value_counts(normalize=True)
    overall = data["label"].value_counts(normalize=True)
    assert (shares - overall).abs().max() < 0.05


# What a tracking server on PostgreSQL answers when two runs insert the same dataset at once.
LOST_RACE = {
    "error_code": "BAD_REQUEST",
    "message": "(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "
    '"dataset_pk"\n[SQL: INSERT INTO datasets (dataset_uuid, experiment_id, name, digest) ...]',
}


def log_input_failing_first(monkeypatch, error: dict) -> list[str]:
    """mlflow.log_input that answers `error` once, then logs for real; returns the calls made."""
    real_log_input, calls = mlflow.log_input, []

    def log_input(dataset, context=None, **kwargs):
        calls.append(context)
        if len(calls) == 1:
            raise RestException(error)
        return real_log_input(dataset, context=context, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", log_input)
    return calls


def training_set() -> mlflow.data.dataset.Dataset:
    return mlflow.data.from_pandas(frame().astype({"age": "float64"}), name="train")


def test_a_dataset_another_run_just_inserted_is_linked_on_the_second_try(monkeypatch):
    calls = log_input_failing_first(monkeypatch, LOST_RACE)
    with mlflow.start_run() as run:
        log_dataset_input(training_set(), "training")
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert calls == ["training", "training"]
    assert [each.dataset.name for each in inputs] == ["train"]


def test_other_tracking_errors_are_not_retried(monkeypatch):
    calls = log_input_failing_first(
        monkeypatch, {"error_code": "PERMISSION_DENIED", "message": "no access to experiment 1"}
    )
    with mlflow.start_run(), pytest.raises(RestException, match="no access"):
        log_dataset_input(training_set(), "training")
    assert calls == ["training"]


@pytest.mark.parametrize("path", ["demo", "data/patients.csv"])
def test_datasets_are_logged_from_their_stated_source_without_a_warning(path):
    """Given a path as text, MLflow guesses the kind of source and warns that a local path "can be
    interpreted in multiple ways" (it registers local files twice: MLflow issue 9702)."""
    parts = split(frame(), "label", "classification", 0.25, seed=0)
    tracking.configure()  # this test's own store: MLflow links a dataset it knows by its digest
    with mlflow.start_run() as run, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_datasets(parts, path, "label")
    assert [str(w.message) for w in caught if "dataset source" in str(w.message)] == []
    sources = [i.dataset for i in mlflow.get_run(run.info.run_id).inputs.dataset_inputs]
    if path == "demo":  # made by code: the notebook is its source
        assert {s.source_type for s in sources} == {"code"}
    else:
        assert {(s.source_type, json.loads(s.source)["uri"]) for s in sources} == {("local", path)}
