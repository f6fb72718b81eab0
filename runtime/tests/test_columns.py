"""Column roles: each planted problem column gets its role, a warning naming the setting that
changes it, and is left out of the frame 02 hands to modelling (issue 18)."""

import warnings

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.pipeline import Pipeline

from crisp_ml.columns import ColumnRoleWarning, assign_roles, looks_like_dates, role_of

ROWS = 300
# Warnings are asserted where they matter (`roles_of`); elsewhere they are expected noise.
pytestmark = pytest.mark.filterwarnings("ignore::crisp_ml.columns.ColumnRoleWarning")


def planted(rows: int = ROWS) -> pd.DataFrame:
    """A table with one column of each kind a user brought (issue 18), and two good features."""
    rng = np.random.default_rng(0)
    days = pd.date_range("2021-01-01", periods=rows, freq="D")
    return pd.DataFrame(
        {
            "income": rng.normal(50, 10, rows),
            "region": rng.choice(["north", "south", "east"], rows),
            "signed_up": days.tz_localize("UTC"),  # Parquet's datetime64, with its zone
            "visit_day": days.strftime("%Y-%m-%d"),  # a CSV's dates: text
            "comment": [f"the parcel number {i} came late and the box was damaged" for i in range(rows)],
            "postcode": [f"P{i:04d}" for i in rng.integers(0, 2000, rows)],  # ~2,000 levels
            "country": "NO",  # constant
            "notes": rng.choice(["x", "y"], rows),
            "churned": rng.choice(["yes", "no"], rows),
        }
    )  # fmt: skip


def roles_of(frame: pd.DataFrame, **settings) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The role table (indexed by column), the warnings and the columns handed to modelling."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        roles = assign_roles(frame, "churned", **settings)
    messages = [str(w.message) for w in caught if issubclass(w.category, ColumnRoleWarning)]
    return roles.table.set_index("column"), messages, roles.frame.columns.tolist()


def warning_about(messages: list[str], column: str) -> str:
    named = [m for m in messages if m.startswith(f"column {column!r} ")]
    assert len(named) == 1, f"expected one warning about {column}, got {messages}"
    return named[0]


@pytest.mark.parametrize(
    ("column", "role", "said"),
    [
        ("signed_up", "datetime", "dates and times (datetime64"),
        ("visit_day", "datetime", "text holding dates, such as '2021-01-01'"),
        ("comment", "free_text", "characters on average"),
        ("postcode", "high_cardinality", "more than data.max_categories=50"),
        ("country", "constant", "a single value ('NO')"),
    ],
)
def test_each_planted_column_is_left_out_with_its_role_and_a_warning(column, role, said):
    table, messages, modelled = roles_of(planted(), drop_columns=["notes"])
    assert table.loc[column, "role"] == role
    assert not table.loc[column, "used"]
    assert said in table.loc[column, "reason"]
    assert column not in modelled
    warning = warning_about(messages, column)
    assert said in warning and "data.drop_columns" in warning


def test_good_columns_and_the_target_are_kept_in_order():
    table, _, modelled = roles_of(planted(), drop_columns=["notes"])
    assert modelled == ["income", "region", "churned"]
    assert table.loc[["income", "region", "churned"], "role"].tolist() == [
        "numeric",
        "categorical",
        "target",
    ]


def test_a_listed_column_is_dropped_as_asked_without_a_warning():
    table, messages, modelled = roles_of(planted(), drop_columns=["notes", "postcode"])
    assert table.loc["notes", "role"] == "dropped"
    assert table.loc["notes", "reason"] == "listed in data.drop_columns"
    assert "notes" not in modelled and "postcode" not in modelled
    assert not [m for m in messages if "'notes'" in m or "'postcode'" in m]


def test_a_misspelt_drop_column_is_ignored_here_preflight_names_it():
    _, _, modelled = roles_of(planted(), drop_columns=["nots"])
    assert "notes" in modelled


def test_the_id_column_dropped_before_clean_is_still_recorded():
    table, messages, _ = roles_of(planted(), id_column="customer_id")
    assert table.loc["customer_id", "role"] == "id"
    assert not table.loc["customer_id", "used"]
    assert not [m for m in messages if "customer_id" in m]


def test_max_categories_decides_between_one_hot_and_left_out():
    frame = planted()
    assert role_of(frame["postcode"], max_categories=50)[0] == "high_cardinality"
    assert role_of(frame["postcode"], max_categories=5000)[0] == "categorical"
    # Few distinct values are categories, however long they are.
    long_labels = pd.Series(["a bachelor's degree in science or engineering", "none"] * 50)
    assert role_of(long_labels)[0] == "categorical"


def test_a_column_with_one_value_and_gaps_is_constant():
    role, reason = role_of(pd.Series([1.0, None, 1.0, None]))
    assert role == "constant" and "2 missing" in reason


def test_numbers_booleans_and_other_values():
    assert role_of(pd.Series([True, False, True]))[0] == "categorical"
    assert role_of(pd.Series(range(10)))[0] == "numeric"
    assert role_of(pd.Series(pd.to_timedelta(range(5), unit="D")))[0] == "unsupported"
    assert role_of(pd.Series([[1, 2], [3], None]))[0] == "unsupported"


@pytest.mark.parametrize(
    ("texts", "dates"),
    [
        (["2021-03-04", "2021-12-31"], True),
        (["2021-03-04T10:00:00Z", "2021-03-05 11:30:00+01:00"], True),
        (["04/03/2021", "31/12/2021"], True),
        (["4.3.2021", "31.12.2021"], True),
        (["1.2.3", "2.0.1"], False),  # version numbers
        (["north", "south"], False),
        (["12", "13"], False),
        (["2021-13-45", "2021-14-99"], False),  # the shape of a date, but none
    ],
)
def test_dates_written_as_text_are_recognised(texts, dates):
    assert looks_like_dates(pd.Series(texts * 10)) is dates


def test_the_decisions_are_plain_data_for_the_card():
    roles = assign_roles(planted(), "churned", ["notes"], id_column="customer_id")
    not_used = roles.not_used()
    assert [row["column"] for row in not_used] == roles.dropped
    assert roles.dropped == [
        "customer_id", "signed_up", "visit_day", "comment", "postcode", "country", "notes"
    ]  # fmt: skip
    assert not_used[-1] == {
        "column": "notes",
        "role": "dropped",
        "reason": "listed in data.drop_columns",
    }


def test_a_segment_on_a_column_left_out_is_a_problem_naming_the_fix():
    roles = assign_roles(planted(), "churned", ["notes"])
    problems = roles.problems_with(
        {"use_case.segments": ["region", "postcode"], "use_case.sensitive_attributes": ["notes"]}
    )
    assert len(problems) == 2
    assert problems[0].startswith("`use_case.segments` names 'postcode'")
    assert "raise data.max_categories" in problems[0]
    assert "remove it from data.drop_columns" in problems[1]


def fitted_and_reloaded(modelling, frame: pd.DataFrame) -> Pipeline:
    """The model 03 would fit on `frame` (the project's own pipeline), through skops as MLflow
    saves and the server loads it."""
    X, y = frame.drop(columns=["churned"]), frame["churned"]
    model = modelling.make_pipeline_for("linear", "classification", 0).fit(X, y)
    data = skops.io.dumps(model)
    return skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))


def test_a_datetime_column_no_longer_breaks_the_saved_model(modelling):
    """The bug: a zoned datetime column was one-hot encoded, and its Timestamps broke the skops
    file after all the cross-validation. Left out, the model saves, loads and predicts."""
    frame = planted()[["income", "region", "signed_up", "churned"]]
    with pytest.raises(TypeError):  # what today's 02 handed on
        fitted_and_reloaded(modelling, frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ColumnRoleWarning)
        modelled = assign_roles(frame, "churned").frame
    model = fitted_and_reloaded(modelling, modelled)
    assert len(model.predict(modelled.drop(columns=["churned"]).head())) == 5
