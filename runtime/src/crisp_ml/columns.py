"""Column roles: which columns of the data the model takes, and why each other one is left out.

02 calls `assign_roles` on the cleaned data, before the schema and the split. Every column gets a
role from its values:

| role | what | outcome |
|---|---|---|
| `numeric` | numbers | used (03's preprocessor imputes and scales them) |
| `categorical` | text, categories or booleans with at most `data.max_categories` values | used (one-hot) |
| `datetime` | datetime64 values, or text holding dates (`2021-03-04`, `04/03/2021 10:00`) | dropped |
| `free_text` | more values than `data.max_categories`, long (mean > 30 characters) or of words | dropped |
| `high_cardinality` | more values than `data.max_categories`, short codes | dropped |
| `constant` | one value wherever a value is present | dropped |
| `unsupported` | values that are neither numbers nor text (durations, lists, decimals) | dropped |
| `dropped` | listed in `data.drop_columns` | dropped |
| `id` | `data.id_column` | dropped |
| `target` | `data.target` | the outcome |

Why drop rather than encode: the served model is 03's pipeline and its input is exactly the columns
02 hands on. A datetime one-hot encoded is noise (and a timezone-aware one broke the model's skops
file at save time); features derived from it in 02 would have to be sent by every client. Free text
and a 2,000-level column one-hot encoded make a wide, overfitting model. Each automatic drop warns,
naming the setting that changes it; a column listed in `data.drop_columns` is dropped silently (it
was asked for). To use a date or a text, derive features from it in the project's `clean` (02).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

MAX_CATEGORIES = 50  # data.max_categories' default
TEXT_MEAN_LENGTH = 30  # characters: longer values on average are free text
TEXT_WORDS = 3  # ... and so are values whose median has this many words
DATE_SHARE = 0.9  # share of a text column's values that must read as dates
DATE_SAMPLE = 1000  # values looked at to decide
# Dates written with digits: 2021-03-04, 2021/3/4, 04/03/21, 4.3.2021, with an optional time and
# zone (ISO 8601, as Parquet and most exports write them). Month names are left alone: too many
# words ("May", "March madness") would match.
DATE_TEXT = re.compile(
    r"\s*(\d{4}[-/]\d{1,2}[-/]\d{1,2}|\d{1,2}[-/]\d{1,2}[-/]\d{2,4}|\d{1,2}\.\d{1,2}\.\d{4})"
    r"([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2}|UTC)?\s*"
)
USED = ("numeric", "categorical", "target")

FIXES = {
    "datetime": "to use it, derive features from it (year, month, day of week...) in the project's "
    "`clean` in 02, which clients then send",
    "free_text": "to use it, derive features from it in the project's `clean` in 02",
    "high_cardinality": "raise data.max_categories to one-hot encode it anyway, or group its values "
    "in the project's `clean` in 02",
    "constant": "it carries no information",
    "unsupported": "convert it to numbers or text in the project's `clean` in 02",
}

KEEP = {  # how to keep a column left out as asked
    "dropped": "remove it from data.drop_columns",
    "id": "set data.id_column to another column",
    "constant": "use a column with more than one value",
}


class ColumnRoleWarning(UserWarning):
    """A column 02 leaves out of the model on its own: what it is, and the setting that decides."""


@dataclass
class ColumnRoles:
    """The data to model (the used columns and the target) and one row per column saying why."""

    frame: pd.DataFrame
    table: pd.DataFrame  # column, dtype, distinct, role, used, reason

    @property
    def dropped(self) -> list[str]:
        """The columns left out, the id column included."""
        return self.table.loc[~self.table["used"], "column"].tolist()

    def not_used(self) -> list[dict[str, str]]:
        """The columns left out with their role and reason, as plain data for the hand-over and
        the model card."""
        rows = self.table.loc[~self.table["used"], ["column", "role", "reason"]]
        return [{k: str(v) for k, v in row.items()} for row in rows.to_dict("records")]

    def problems_with(self, settings: Mapping[str, Iterable[str]]) -> list[str]:
        """Settings naming a column that is left out (`{"use_case.segments": [...]}`): 04 could not
        measure it, so 02 stops before modelling."""
        left_out = self.table[~self.table["used"]].set_index("column")
        problems = []
        for key, names in settings.items():
            for name in names:
                if name in left_out.index:
                    role, reason = left_out.loc[name, ["role", "reason"]]
                    keep = KEEP.get(role) or FIXES[role]
                    problems.append(
                        f"`{key}` names {name!r}, which is not used for modelling ({reason}) and so "
                        f"cannot be measured in 04: remove it from {key}, or {keep}"
                    )
        return problems


def _listed(values: Iterable, shown: int = 3) -> str:
    return ", ".join(repr(str(v))[:40] for v in list(values)[:shown])


def looks_like_dates(texts: pd.Series) -> bool:
    """Text whose values (nearly all of a sample) are dates written with digits and parse as such."""
    texts = texts.dropna().astype(str)
    if texts.empty:
        return False
    picked = texts.sample(min(len(texts), DATE_SAMPLE), random_state=0)
    if picked.str.fullmatch(DATE_TEXT).mean() < DATE_SHARE:
        return False
    with warnings.catch_warnings():  # pandas warns when it cannot infer one format: not our case
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(picked, errors="coerce", format="mixed", utc=True)
    return bool(parsed.notna().mean() >= DATE_SHARE)


def distinct_values(column: pd.Series) -> int:
    """The number of distinct values present; lists and other unhashable values (Parquet's nested
    columns) are compared as text."""
    try:
        return int(column.nunique())
    except TypeError:
        return int(column.dropna().astype(str).nunique())


def role_of(column: pd.Series, max_categories: int = MAX_CATEGORIES) -> tuple[str, str]:
    """The role of one feature column, from its values, and the reason in a few words."""
    values = column.dropna()
    distinct = distinct_values(values)
    missing = len(column) - len(values)
    if distinct <= 1:
        where = f" where present ({missing} missing)" if missing else ""
        value = f" ({_listed(values.unique(), 1)})" if distinct else ""
        return "constant", f"a single value{value}{where}"
    dtype = column.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime", f"dates and times ({dtype})"
    if pd.api.types.is_bool_dtype(dtype):
        return "categorical", "true or false"
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        return "numeric", "numbers"
    categorical = isinstance(dtype, pd.CategoricalDtype)
    if not categorical and not values.map(lambda v: isinstance(v, str)).all():
        kinds = sorted({type(v).__name__ for v in values})
        return "unsupported", f"values of type {', '.join(kinds)}, neither numbers nor text"
    texts = values.astype(str)
    if looks_like_dates(texts):
        return "datetime", f"text holding dates, such as {_listed(texts.unique(), 2)}"
    if distinct <= max_categories:
        return "categorical", f"{distinct} categories"
    mean_length = texts.str.len().mean()
    words = texts.str.split().str.len().median()
    unique = f"{distinct} distinct values in {len(values)} rows"
    if mean_length > TEXT_MEAN_LENGTH or words >= TEXT_WORDS:
        return "free_text", f"{unique}, {mean_length:.0f} characters on average"
    return "high_cardinality", f"{unique}, more than data.max_categories={max_categories}"


def assign_roles(
    frame: pd.DataFrame,
    target: str,
    drop_columns: Iterable[str] = (),
    max_categories: int = MAX_CATEGORIES,
    id_column: str = "",
) -> ColumnRoles:
    """Each column's role, the frame to model (the used columns and the target) and a warning for
    each column left out on its own. `drop_columns` are left out as asked (a name not in the data
    is preflight's to report, and ignored here); `id_column`, which 02 removes before `clean`, is
    recorded too and dropped if still present."""
    asked = set(drop_columns)
    rows = []
    if id_column and id_column not in frame.columns:
        rows.append(("id", id_column, "", None, "data.id_column: identifies rows"))
    for name in frame.columns:
        column = frame[name]
        distinct = distinct_values(column)
        if name == target:
            role, reason = "target", "data.target: the outcome to predict"
        elif name == id_column:
            role, reason = "id", "data.id_column: identifies rows"
        elif name in asked:
            role, reason = "dropped", "listed in data.drop_columns"
        else:
            role, reason = role_of(column, max_categories)
        rows.append((role, name, str(column.dtype), distinct, reason))
    table = pd.DataFrame(rows, columns=["role", "column", "dtype", "distinct", "reason"])
    table["distinct"] = table["distinct"].astype("Int64")  # the id column's is unknown here
    table.insert(4, "used", table["role"].isin(USED))
    table = table[["column", "dtype", "distinct", "role", "used", "reason"]]
    for row in table[table["role"].isin(FIXES)].itertuples():
        warnings.warn(
            f"column {row.column!r} is not used for modelling, {row.role.replace('_', ' ')}: "
            f"{row.reason}. {FIXES[row.role].capitalize()}; list it in data.drop_columns to "
            "drop it without this warning",
            ColumnRoleWarning,
            stacklevel=2,
        )
    kept = table.loc[table["used"], "column"].tolist()
    return ColumnRoles(frame[kept], table.reset_index(drop=True))
