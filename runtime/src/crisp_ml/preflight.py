"""Preflight: the settings checked against the data before a pipeline run costs anything.

A wrong column name or an impossible limit would otherwise surface in 02 or, worse, in 04 after the
whole modelling step, one problem per run. Here every problem is found at once, in about a second:
the data is loaded, a few pandas calls and a dummy model's score, nothing more.

Each check is a small function of explicit values that returns its problems as sentences naming the
params.yaml key and the fix, so a notebook can call one on its own frame:

    check_columns(frame, target="diagnosis", segments=["mean texture"])

`check_before_run(tree)` runs them all on the data `data.path` names and raises `PreflightError`,
which the command line shows as it shows any other parameters error.
"""

from __future__ import annotations

import difflib
import importlib
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from .columns import MAX_CATEGORIES, ColumnRoleWarning, assign_roles
from .params import ParamsError, get_dotted_or_none, value_problems
from .use_case import METRICS, UseCase, UseCaseError

Cleaner = Callable[[pd.DataFrame, str, bool], Any]  # the project's `clean(frame, target, drop_dup)`
MAX_LISTED = 20  # columns or classes named in a message before "and N more"
SUGGESTED_SHARE = (
    0.1  # a suggested baseline margin: this share of the dummy's distance from perfect
)


class PreflightError(ParamsError):
    """Settings that cannot work with this data; the message lists every problem found."""


def _listed(names: Iterable[Any]) -> str:
    names = [str(n) for n in names]
    more = f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return ", ".join(repr(n) for n in names[:MAX_LISTED]) + more


def _close_to(name: str, columns: list[str]) -> str:
    """' Did you mean ...?' for a misspelt column, a different case first; else ''."""
    same_but_case = [c for c in columns if c.lower() == name.lower()]
    close = same_but_case or difflib.get_close_matches(name, columns, n=3, cutoff=0.75)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _missing_column(key: str, name: str, columns: list[str], fix: str) -> str:
    """The problem of a missing column: a close match when there is one, else the columns."""
    hint = _close_to(name, columns) or f" The columns: {_listed(columns)}."
    return f"`{key}`: column {name!r} is not in the data.{hint} {fix}"


def check_columns(
    frame: pd.DataFrame,
    target: str = "",
    id_column: str = "",
    segments: Iterable[str] = (),
    sensitive_attributes: Iterable[str] = (),
    prepared: pd.DataFrame | None = None,
) -> list[str]:
    """The columns the settings name, looked up in the data.

    `data.target` and `data.id_column` are read from the raw data (`frame`); segments and sensitive
    attributes from the frame 04 measures them on (`prepared`: by default the raw data without the
    id column, see `prepared_frame`)."""
    raw_columns = [str(c) for c in frame.columns]
    problems = []
    if target and target not in raw_columns:
        fix = "Set it to the column holding the outcome to predict."
        problems.append(_missing_column("data.target", target, raw_columns, fix))
    if id_column and id_column not in raw_columns:
        fix = 'Set it to the column that identifies rows, or to "" when there is none.'
        problems.append(_missing_column("data.id_column", id_column, raw_columns, fix))
    if prepared is None:
        prepared = frame.drop(columns=[id_column]) if id_column in raw_columns else frame
    columns = [str(c) for c in prepared.columns]
    for key, names in (
        ("use_case.segments", segments),
        ("use_case.sensitive_attributes", sensitive_attributes),
    ):
        for name in names:
            if id_column and name == id_column:
                problems.append(
                    f"`{key}`: {name!r} is `data.id_column`, which is kept out of the data before "
                    f'modelling; remove it from {key}, or set data.id_column to "".'
                )
            elif name not in columns:
                fix = "Name columns of the data, or set it to [] for none."
                problems.append(_missing_column(key, name, columns, fix))
    return problems


def check_drop_columns(
    frame: pd.DataFrame,
    drop_columns: Any,
    target: str = "",
    segments: Iterable[str] = (),
    sensitive_attributes: Iterable[str] = (),
    prepared: pd.DataFrame | None = None,
) -> list[str]:
    """`data.drop_columns`: a list of columns of the data (raw, or derived by the project's
    `clean`: 02 drops them after it), never the target, a segment or a sensitive attribute, which
    later phases need."""
    key = "data.drop_columns"
    if not isinstance(drop_columns, list | tuple) or not all(
        isinstance(name, str) for name in drop_columns
    ):
        return [f"`{key}` = {drop_columns!r}: use a list of column names, or [] for none."]
    columns = [str(c) for c in frame.columns]
    if prepared is not None:
        columns += [str(c) for c in prepared.columns if str(c) not in columns]
    problems = []
    needed = {target: "data.target"} if target else {}
    needed |= {name: "use_case.segments" for name in segments}
    needed |= {name: "use_case.sensitive_attributes" for name in sensitive_attributes}
    for name in drop_columns:
        if name not in columns:
            fix = "Name columns of the data, or set it to [] for none."
            problems.append(_missing_column(key, name, columns, fix))
        elif name in needed:
            problems.append(
                f"`{key}` lists {name!r}, which `{needed[name]}` names: later phases need it. "
                f"Remove it from one of them."
            )
    return problems


def check_enough_rows(rows: int, cv_folds: Any) -> list[str]:
    """Cross-validation needs `cv_folds` folds of the training set, and the test set its share:
    twice the folds is the least that can work (03 checks the cleaned training set again)."""
    if not _number(cv_folds) or rows >= 2 * cv_folds:
        return []
    problem = (
        f"`modelling.cv_folds` = {cv_folds:g} needs at least {2 * cv_folds:g} rows; the data has "
        f"{rows} after cleaning. Bring more data, or lower modelling.cv_folds (at least 2)."
    )
    return [problem]


def _classes(labels: pd.Series) -> list[str]:
    """The target's classes as text, in scikit-learn's order (its `classes_` are sorted)."""
    values = list(pd.unique(labels.dropna()))
    try:
        values = sorted(values)
    except TypeError:  # mixed types: no order scikit-learn would accept either
        values = sorted(values, key=str)
    return [str(value) for value in values]


def check_positive_class(
    labels: pd.Series,
    positive_class: str,
    sensitive_attributes: Iterable[str] = (),
    error_costs: dict[str, float] | None = None,
) -> list[str]:
    """`use_case.positive_class` against the target's classes, compared as text as 04 compares
    them: params.yaml holds a string, so `1` names the label 1 and `True` the label True.

    With more than two classes it must be empty unless something measures one class against the
    rest: fairness (which then needs it) or error costs."""
    classes = _classes(labels)
    if len(classes) < 2:
        return []  # a single class: data.target's own check in 02 says so
    multiclass = len(classes) > 2
    if positive_class and positive_class not in classes:
        default = "for multiclass" if multiclass else f"for the second class, {classes[1]!r}"
        problem = (
            f"`use_case.positive_class`: {positive_class!r} is not a class of the target; the "
            f"classes are {_listed(classes)}.{_close_to(positive_class, classes)} Set it to one "
            f"of them (written as shown), or leave it empty {default}."
        )
        return [problem]
    attributes = list(sensitive_attributes)
    if multiclass and positive_class and not attributes and not error_costs:
        problem = (
            f"`use_case.positive_class` = {positive_class!r}, but the target has {len(classes)} "
            "classes and neither use_case.sensitive_attributes nor use_case.error_costs measures "
            'one class against the rest: leave it empty for multiclass ("").'
        )
        return [problem]
    if multiclass and not positive_class and attributes:
        # 04 measures fairness for one class against the rest: it needs to know which.
        problem = (
            f"`use_case.positive_class` is empty, but with {len(classes)} classes the fairness "
            f"of use_case.sensitive_attributes {attributes} is measured for one class against "
            f"the rest: set it to one of {_listed(classes)}, or set "
            "use_case.sensitive_attributes to []."
        )
        return [problem]
    return []


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def best_possible(metric: str) -> float:
    """The best value `metric` can take: every score in METRICS is at most 1 (accuracy, AUC, R²,
    ...), every error at least 0 (MAE, log loss, ...)."""
    return 1.0 if METRICS[metric].greater_is_better else 0.0


def check_reachable(metric: str, value: Any, key: str) -> list[str]:
    """A limit on `metric` that no model can meet (an AUC above 1, an error below 0)."""
    if metric not in METRICS or not _number(value):
        return []
    best = best_possible(metric)
    if METRICS[metric].better(value, best):
        side = "at most" if METRICS[metric].greater_is_better else "never below"
        problem = (
            f"`{key}` = {value:g}: {metric} is {side} {best:g}, so no model can meet it; set a "
            "value a good model reaches on this data."
        )
        return [problem]
    return []


def check_use_case_limits(tree: dict[str, Any]) -> list[str]:
    """The use case's own checks (as 01 makes them), then thresholds, fairness limits and error
    costs that cannot work whatever the data."""
    try:
        UseCase.from_params(tree)
        problems = []
    except (UseCaseError, TypeError) as error:  # TypeError: a key of the wrong shape
        problems = [f"`use_case`: {error}"]
    task = tree.get("task")
    metric = get_dotted_or_none(tree, "use_case.metric")
    if metric not in METRICS or METRICS[metric].task != task:
        return problems
    problems += check_reachable(
        metric, get_dotted_or_none(tree, "use_case.threshold"), "use_case.threshold"
    )
    problems += check_reachable(
        metric,
        get_dotted_or_none(tree, "use_case.worst_segment_threshold"),
        "use_case.worst_segment_threshold",
    )
    problems += _check_fairness_limits(get_dotted_or_none(tree, "use_case.fairness_limits"))
    for kind, cost in (get_dotted_or_none(tree, "use_case.error_costs") or {}).items():
        if _number(cost) and cost < 0:
            problems.append(f"`use_case.error_costs.{kind}` = {cost:g}: a cost is 0 or more.")
    return problems


def _check_fairness_limits(limits: Any) -> list[str]:
    """Negative limits (the measures themselves are the use case's check)."""
    if not isinstance(limits, dict):
        return []
    problems = []
    for measure, limit in limits.items():
        key = f"use_case.fairness_limits.{measure}"
        if _number(limit) and limit < 0:
            problems.append(
                f"`{key}` = {limit:g}: a gap between groups is never negative, so no model "
                "passes; use 0 or more."
            )
    return problems


def settings_problems(tree: dict[str, Any]) -> list[str]:
    """Every problem the settings show on their own, before any data is read: the ranges of
    params.py (`data.test_size` in (0, 1), ...) and the use case's limits."""
    return value_problems(tree) + check_use_case_limits(tree)


def baseline_metric(labels: pd.Series, task: str, metric: str, positive_class: str = "") -> float:
    """The use case's metric for the dummy model 04 compares against (the class shares for
    classification, the mean for regression), fitted and scored on these target values: about
    what it scores on the test set. NaN where it is undefined."""
    from .evaluation import baseline_predictions, metric_value

    labels = labels.dropna().reset_index(drop=True)
    if labels.empty or (task == "regression" and not pd.api.types.is_numeric_dtype(labels)):
        return math.nan  # 02's target check names these
    no_features = pd.DataFrame(index=labels.index)  # a dummy looks only at the target
    preds = baseline_predictions(no_features, labels, no_features, labels, task)
    positive = next((c for c in preds.classes if str(c) == positive_class), None)
    return metric_value(metric, preds, positive)


def check_baseline_margin(metric: str, baseline: float, margin: Any) -> list[str]:
    """`evaluation.baseline_margin` against the dummy's score: 04's gate needs the model to beat it
    by the margin, which is impossible when that asks for a perfect score or better."""
    if metric not in METRICS or not _number(margin) or margin <= 0 or math.isnan(baseline):
        return []
    scoring, best = METRICS[metric], best_possible(metric)
    needed = baseline + margin if scoring.greater_is_better else baseline - margin
    if scoring.better(best, needed):
        return []  # short of a perfect score: a good model can get there
    direction = "at least" if scoring.greater_is_better else "at most"
    past = "above" if scoring.greater_is_better else "below"
    impossible = "a perfect score" if needed == best else f"{past} {best:g}, the best possible"
    suggestion = SUGGESTED_SHARE * abs(best - baseline)
    problem = (
        f"`evaluation.baseline_margin` = {margin:g} cannot be met: a dummy model's {metric} on "
        f"this data is about {baseline:.4g}, so 04's gate would need a {metric} of {direction} "
        f"{needed:.4g} ({impossible}). The margin is in {metric}'s units: try "
        f"{suggestion:.2g}, a tenth of the way from the dummy's {metric} to {best:g}."
    )
    return [problem]


def prepared_frame(
    raw: pd.DataFrame,
    target: str,
    id_column: str = "",
    clean: Cleaner | None = None,
    drop_duplicates: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    """The data as 04 sees its columns: without `data.id_column` and through the project's
    `clean`, as 02 prepares it. A column `clean` derives may then be a segment, and one it drops
    may not. When `clean` fails here, 02 would fail too: that is a problem, and the raw columns
    stand in for the checks."""
    frame = raw.drop(columns=[id_column]) if id_column in raw.columns else raw
    if clean is None or target not in frame.columns:
        return frame, []
    try:
        result = clean(frame, target, drop_duplicates)
    except Exception as error:  # noqa: BLE001 - the team's code: whatever it raises, 02 would too
        problem = (
            f"the project's clean() fails on this data ({type(error).__name__}: {error}): "
            "02_data_preparation would stop there. The columns were checked without it."
        )
        return frame, [problem]
    cleaned = result[0] if isinstance(result, tuple) else result
    return (cleaned, []) if isinstance(cleaned, pd.DataFrame) else (frame, [])


def project_clean() -> Cleaner | None:
    """The project's own `clean` (exported from 02 to `src/<package>/data.py`), or None.

    Preflight applies it because columns may be derived there; when the package cannot be
    imported (a project without one, a broken export `make check` reports) the checks use the raw
    columns rather than stop a run that 02 itself, defining `clean` in its own cell, may pass."""
    from .project import settings

    try:
        module = importlib.import_module(f"{settings().package}.data")
    except Exception:  # noqa: BLE001 - no project, no package, a broken export: none at hand
        return None
    found = getattr(module, "clean", None)
    return found if callable(found) else None


def check_roles(
    frame: pd.DataFrame,
    target: str,
    max_categories: int,
    segments: Iterable[str],
    sensitive_attributes: Iterable[str],
) -> list[str]:
    """Segments and sensitive attributes on a column 02 leaves out by itself (a date, free text,
    too many categories, one value): 04 could not measure them. Columns left out on request are
    `check_drop_columns`'s to name. On the whole data: a sample may count a few values fewer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ColumnRoleWarning)  # the notebook shows them; here, noise
        roles = assign_roles(frame, target, max_categories=max_categories)
    named = {"use_case.segments": segments, "use_case.sensitive_attributes": sensitive_attributes}
    return roles.problems_with(named)


def data_problems(
    tree: dict[str, Any], raw: pd.DataFrame, clean: Cleaner | None = None
) -> list[str]:
    """Every problem of the settings with this data: columns, classes, the baseline margin."""
    task = tree.get("task")
    target = get_dotted_or_none(tree, "data.target") or ""
    id_column = get_dotted_or_none(tree, "data.id_column") or ""
    segments = get_dotted_or_none(tree, "use_case.segments") or []
    sensitive = get_dotted_or_none(tree, "use_case.sensitive_attributes") or []
    drop_duplicates = bool(get_dotted_or_none(tree, "data.drop_duplicates"))
    frame, problems = prepared_frame(raw, target, id_column, clean, drop_duplicates)
    problems += check_columns(raw, target, id_column, segments, sensitive, prepared=frame)
    drop_columns = get_dotted_or_none(tree, "data.drop_columns") or []
    problems += check_drop_columns(raw, drop_columns, target, segments, sensitive, prepared=frame)
    problems += check_enough_rows(len(frame), get_dotted_or_none(tree, "modelling.cv_folds"))
    if target not in frame.columns:
        return problems  # roles, classes and baseline need the target
    max_categories = get_dotted_or_none(tree, "data.max_categories") or MAX_CATEGORIES
    problems += check_roles(frame, target, max_categories, segments, sensitive)
    labels = frame[target]
    positive_class = str(get_dotted_or_none(tree, "use_case.positive_class") or "")
    if task == "classification":
        costs = get_dotted_or_none(tree, "use_case.error_costs")
        problems += check_positive_class(labels, positive_class, sensitive, costs)
    metric = get_dotted_or_none(tree, "use_case.metric")
    if metric in METRICS and METRICS[metric].task == task:
        baseline = baseline_metric(labels, task, metric, positive_class)
        margin = get_dotted_or_none(tree, "evaluation.baseline_margin")
        problems += check_baseline_margin(metric, baseline, margin)
    return problems


def problems_before_run(tree: dict[str, Any], clean: Cleaner | None = None) -> list[str]:
    """Every problem preflight finds: the settings alone, then against the data `data.path` names
    (`clean` defaults to the project's own, see `project_clean`)."""
    from .data import DataValidationError, load_dataset

    problems = settings_problems(tree)
    path = get_dotted_or_none(tree, "data.path")
    try:
        raw = load_dataset(str(path), str(tree.get("task")))
    except DataValidationError as error:
        return [*problems, f"`data.path`: {error}"]
    return problems + data_problems(tree, raw, clean or project_clean())


def check_before_run(tree: dict[str, Any]) -> None:
    """Raise PreflightError listing every problem of these settings with their data."""
    if problems := problems_before_run(tree):
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise PreflightError(
            f"{len(problems)} setting(s) cannot work with this data; nothing was run. Fix them in "
            f"params.yaml (or the --set/--params that changed them):\n{lines}"
        )
