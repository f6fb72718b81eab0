"""Data preparation: loading, the checks a model needs, the schema, quality, splitting and
logging the sets to MLflow."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
import pandera.pandas as pa
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from pandera.errors import SchemaErrors
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

from .columns import distinct_values
from .project import resolve_path
from .serving.schema import columns_named
from .tracking import once_more_on_a_dataset_race


class DataValidationError(ValueError):
    """Data the pipeline cannot use. Names the check, the column and what to do."""

    def __init__(self, check: str, column: str | None, problem: str):
        self.check, self.column = check, column
        where = f" column '{column}':" if column else ""
        super().__init__(f"data check '{check}' failed:{where} {problem}")


def load_demo(task: str) -> tuple[pd.DataFrame, str]:
    """The built-in demo data and its target column."""
    if task == "classification":
        bunch = load_breast_cancer(as_frame=True)
        frame = bunch.frame.rename(columns={"target": "diagnosis"})
        frame["diagnosis"] = bunch.target_names[bunch.target]  # 'malignant' / 'benign', not 0 / 1
        return frame, "diagnosis"
    frame = load_diabetes(as_frame=True, scaled=False).frame  # real units: years, mm Hg, ...
    return frame.rename(columns={"target": "progression"}), "progression"


def load_dataset(path: str, task: str) -> pd.DataFrame:
    """Read a CSV or Parquet file (or the demo), turning every failure into a clear message."""
    if path == "demo":
        return load_demo(task)[0]
    file = resolve_path(path)
    if not file.is_file():
        raise DataValidationError("readable file", None, f"no file at {file}; fix data.path")
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}
    reader = readers.get(file.suffix.lower())
    if reader is None:
        raise DataValidationError(
            "readable file", None, f"{file.name}: use a .csv or .parquet file"
        )
    try:
        frame = reader(file)
    except pd.errors.EmptyDataError:
        raise DataValidationError("readable file", None, f"{file} is empty") from None
    except (OSError, ValueError) as error:  # the parser's own message says what is wrong
        raise DataValidationError("readable file", None, f"cannot read {file}: {error}") from None
    if frame.empty:
        raise DataValidationError("readable file", None, f"{file} has no rows")
    return frame


def check_target(frame: pd.DataFrame, target: str, task: str, min_rows_per_class: int) -> None:
    if target not in frame.columns:
        columns = ", ".join(map(str, frame.columns[:20]))
        raise DataValidationError(
            "target column", target, f"not in the data; set data.target to one of: {columns}"
        )
    values = frame[target].dropna()
    if values.empty:
        raise DataValidationError("target values", target, "every value is missing")
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(values):
            raise DataValidationError(
                "target type", target, f"regression needs numbers, found {values.dtype}"
            )
        return
    counts = values.value_counts()
    if len(counts) < 2:
        raise DataValidationError(
            "class count", target, f"a single class ({counts.index[0]!r}); a classifier needs two"
        )
    rare = counts[counts < min_rows_per_class]
    if not rare.empty:
        raise DataValidationError(
            "class count",
            target,
            f"classes {rare.to_dict()} have fewer than data.min_rows_per_class="
            f"{min_rows_per_class} rows; gather more data or merge rare classes",
        )


def check_missing(frame: pd.DataFrame, max_share: float, drop_columns: Iterable[str] = ()) -> None:
    """Stop on a column missing more than `max_share` of its values, unless it is one of
    `drop_columns` (data.drop_columns), which never reach the model."""
    shares = frame.drop(columns=[c for c in drop_columns if c in frame.columns]).isna().mean()
    drop_it = "list it in data.drop_columns to leave it out"
    for column, share in shares.items():
        if share == 1.0:
            raise DataValidationError(
                "missing values", column, f"every value is missing; {drop_it}"
            )
        if share > max_share:
            raise DataValidationError(
                "missing values",
                column,
                f"{share:.0%} missing, above data.max_missing_share={max_share:.0%}; {drop_it}, "
                "or raise data.max_missing_share",
            )


def check_rows(frame: pd.DataFrame, cv_folds: int) -> None:
    if len(frame) < 2 * cv_folds:
        raise DataValidationError(
            "rows",
            None,
            f"{len(frame)} rows after cleaning: too few for modelling.cv_folds={cv_folds} "
            "cross-validation folds plus a test set",
        )


SCHEMA_FILE = "the schema file (data.schema)"  # how messages name a schema whose file is unknown


def load_schema(path: str, frame: pd.DataFrame, dropped: Iterable[str] = ()) -> pa.DataFrameSchema:
    """The explicit schema, its columns checked against this data; when its file does not exist
    yet, one inferred from this data (integer columns as integers), written there for you to
    review and commit. Columns it declares that are `dropped` before modelling (see
    `crisp_ml.columns`) are left out of it, so dropping one does not mean writing it again."""
    file = resolve_path(path)
    if file.is_file():
        schema = pa.DataFrameSchema.from_yaml(file)
        if gone := [c for c in dropped if c in schema.columns and c not in frame.columns]:
            schema = schema.remove_columns(gone)
        check_columns(frame, schema, file.name, warn=False)  # apply_schema warns
        return schema
    schema = pa.infer_schema(frame)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(schema.to_yaml())
    warnings.warn(
        f"wrote {file}, inferred from this data: review its ranges, commit it", stacklevel=2
    )
    return schema


def check_columns(
    frame: pd.DataFrame, schema: pa.DataFrameSchema, source: str = SCHEMA_FILE, warn: bool = True
) -> None:
    """Stop on columns the schema declares and the data lacks, naming them and the data's
    undeclared ones plainly (pandera says `column 'None': column_in_dataframe`). Undeclared
    columns alone go unchecked, which `warn` says, unless the schema is strict: then they stop."""
    missing = [c for c, column in schema.columns.items() if column.required and c not in frame]
    undeclared = [c for c in frame.columns if c not in schema.columns]
    has = f"it has {columns_named(undeclared)} that {source} does not declare"
    if missing or (undeclared and schema.strict is True):
        parts = (
            [f"the data lacks {columns_named(missing)} that {source} declares"] if missing else []
        )
        parts += [has] if undeclared else []
        raise DataValidationError(
            "schema",
            None,
            f"{'; '.join(parts)}. If the data is right, regenerate {source} by deleting it (the "
            "next run infers it from this data and writes it for you to review); else fix "
            "data.path",
        )
    if undeclared and warn:
        unchecked = "them" if len(undeclared) > 1 else "it"
        warnings.warn(
            f"{has}: validation leaves {unchecked} unchecked; delete {source} to infer it again",
            stacklevel=2,
        )


def apply_schema(
    frame: pd.DataFrame, schema: pa.DataFrameSchema, source: str = SCHEMA_FILE
) -> tuple[pd.DataFrame, int]:
    """Validate; rows with an impossible value (outside a range or an allowed set) are dropped and
    counted, while a missing column, a wrong type or a forbidden missing value stops the run.
    `source` names the schema in messages (data.schema's value)."""
    check_columns(frame, schema, source)
    try:
        return schema.validate(frame, lazy=True), 0
    except SchemaErrors as errors:
        cases = errors.failure_cases
    check = cases["check"].astype(str)
    structural = cases["index"].isna() | check.str.match(r"(coerce_dtype|dtype|not_nullable)")
    if structural.any():
        first = cases[structural].iloc[0]
        more = f" (and {structural.sum() - 1} more)" if structural.sum() > 1 else ""
        column = first["column"] if isinstance(first["column"], str) else None
        raise DataValidationError(
            "schema",
            column,
            f"{first['check']}: found {first['failure_case']!r}{more}. Fix the data, or "
            f"{source} (delete it to infer a new one from this data)",
        )
    bad_rows = cases["index"].unique()
    return schema.validate(frame.drop(index=bad_rows), lazy=True), len(bad_rows)


def quality_report(frame: pd.DataFrame, roles: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per column: type, missing values, distinct values and range; with `roles` (the
    table of `crisp_ml.columns.assign_roles`), each column's role, whether the model uses it and
    why (a column `clean` derived has its role only)."""
    numeric = frame.select_dtypes("number")
    report = pd.DataFrame(
        {
            "dtype": frame.dtypes.astype(str),
            "missing": frame.isna().sum(),
            "missing_share": frame.isna().mean().round(3),
            "distinct": frame.apply(distinct_values),
            "min": numeric.min(),
            "max": numeric.max(),
            "mean": numeric.mean().round(3),
        }
    )
    report = report.reindex(frame.columns)  # the data's order, not the alphabet's
    if roles is None:
        return report
    decisions = roles.set_index("column")[["role", "used", "reason"]]
    derived = [c for c in decisions.index if c not in report.index]
    return report.reindex([*report.index, *derived]).join(decisions)


def plot_quality(frame: pd.DataFrame, target: str, task: str) -> plt.Figure:
    """The target's distribution and each column's share of missing values."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
    if task == "classification":
        frame[target].value_counts().plot.bar(ax=left, color="tab:blue")
    else:
        frame[target].plot.hist(ax=left, bins=30, color="tab:blue")
    left.set_title(f"target: {target}")
    missing = frame.isna().mean().sort_values(ascending=False).head(20)
    missing.plot.bar(ax=right, color="tab:orange")
    right.set_title("share of missing values (top 20 columns)")
    right.set_ylim(0, 1)
    figure.tight_layout()
    return figure


def sample(frame: pd.DataFrame, rows: int, target: str, task: str, seed: int) -> pd.DataFrame:
    """A random sample of `rows` rows (class shares kept for classification); 0 keeps all."""
    if rows <= 0 or rows >= len(frame):
        return frame
    if task == "classification":
        picked, _ = train_test_split(
            frame, train_size=rows, stratify=frame[target], random_state=seed
        )
        return picked.sort_index()
    return frame.sample(n=rows, random_state=seed).sort_index()


@dataclass
class Split:
    train: pd.DataFrame
    test: pd.DataFrame


def split(frame: pd.DataFrame, target: str, task: str, test_size: float, seed: int) -> Split:
    stratify = frame[target] if task == "classification" else None
    train, test = train_test_split(frame, test_size=test_size, stratify=stratify, random_state=seed)
    return Split(train.reset_index(drop=True), test.reset_index(drop=True))


def save_split(parts: Split, folder: Path) -> dict[str, str]:
    """Parquet files outside git (in the run folder), so the next notebooks read exactly these rows."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in (("train", parts.train), ("test", parts.test)):
        path = folder / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        paths[f"{name}_path"] = str(path)
    return paths


def log_dataset_input(dataset: Dataset, context: str) -> None:
    """`mlflow.log_input`, tried once more if another run registered the same dataset meanwhile."""
    once_more_on_a_dataset_race(lambda: mlflow.log_input(dataset, context=context))


def dataset_source(path: str) -> DatasetSource | None:
    """Where the rows came from, stated outright: given a path as text, MLflow guesses the kind of
    source and warns that a local file "can be interpreted in multiple ways" (it registers local
    files twice, MLflow issue 9702). The demo data is made by code: None makes this notebook its
    source, as MLflow records for data made in code."""
    if path == "demo":
        return None
    return get_dataset_source_from_json(json.dumps({"uri": path}), source_type="local")


def log_datasets(parts: Split, path: str, target: str) -> dict[str, str]:
    """Both sets as MLflow dataset inputs, from `data.path`; returns their digests."""
    source, digests = dataset_source(path), {}
    for name, frame, context in (("train", parts.train, "training"), ("test", parts.test, "test")):
        dataset = mlflow.data.from_pandas(frame, source=source, targets=target, name=name)
        log_dataset_input(dataset, context)
        digests[f"{name}_digest"] = dataset.digest
    return digests
