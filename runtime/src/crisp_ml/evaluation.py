"""Evaluation: test metrics, plots, sanity checks, segments and fairness, the acceptance gate and
the model card."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.dummy import DummyClassifier, DummyRegressor

from .use_case import METRICS, UseCase


class EvaluationError(ValueError):
    """Settings or data the evaluation cannot work with; names the key and the fix."""


@dataclass
class Predictions:
    """What a model says about some rows; the columns of `proba` follow `classes`."""

    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray | None = None
    classes: list = field(default_factory=list)

    def subset(self, rows: np.ndarray) -> Predictions:
        proba = None if self.proba is None else self.proba[rows]
        return Predictions(self.y_true[rows], self.y_pred[rows], proba, self.classes)


def predict(model, X: pd.DataFrame, y: pd.Series, task: str) -> Predictions:
    """Predictions (and class probabilities, where the model has them) for `X`."""
    y_pred = np.asarray(model.predict(X))
    if task != "classification":
        return Predictions(np.asarray(y, dtype=float), y_pred.astype(float))
    classes = list(model.classes_)
    proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    # The labels keep their own type: as objects, integer or boolean labels are a target type
    # scikit-learn cannot classify ("unknown"), and every metric of 04 would fail on a 0/1 flag.
    return Predictions(np.asarray(y), y_pred, proba, classes)


def label_text(value: Any) -> str:
    """A class label or an id as text; an integral float reads as the integer (1.0 from a CSV is 1)."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def label_texts(values: pd.Series) -> np.ndarray:
    """`label_text` of each value, computed once per distinct value."""
    codes, distinct = pd.factorize(values, use_na_sentinel=False)
    return np.array([label_text(v) for v in distinct], dtype=object)[codes]


def positive_label(classes: list, positive_class: str) -> Any:
    """The class the use case is about: `use_case.positive_class`, else the second of two classes
    (scikit-learn's convention); None for several classes and no positive class."""
    if positive_class:
        for label in classes:
            if str(label) == str(positive_class):
                return label
        raise EvaluationError(
            f"use_case.positive_class {positive_class!r} is not a class of the target; "
            f"the classes are {[str(c) for c in classes]}"
        )
    return classes[1] if len(classes) == 2 else None


# Where a metric is undefined on some rows, the metric a segment table shows instead: one that every
# non-empty group has and that reads the same way (class-balanced, or an error in target units).
FALLBACKS = {
    "roc_auc": "balanced_accuracy",
    "log_loss": "balanced_accuracy",
    "r2": "mae",
    "mape": "mae",
}


def _quoted(labels: list) -> str:
    return ", ".join(repr(str(label)) for label in labels)


def _check_labels(preds: Predictions) -> None:
    """Refuse true labels none of which is a class of the model: the target was read with another
    type than the model was trained on ("1" against 1), an error and not a group lacking classes."""
    if preds.classes and not any(np.any(preds.y_true == label) for label in preds.classes):
        raise EvaluationError(
            "none of the true labels is a class of the model"
            + _labels_hint(preds)
            + ": read the target with the type it had in training"
        )


def _absent_classes(preds: Predictions) -> list:
    """The model's classes that no true label holds: ROC AUC needs each of them (one against
    the rest), so it is undefined where a group lacks one."""
    return [label for label in preds.classes if not np.any(preds.y_true == label)]


def undefined_reason(name: str, preds: Predictions, positive: Any = None) -> str:
    """Why metric `name` is undefined on these rows, or "" when it is defined. Undefined is
    expected (a small group lacking a class), unlike an error, which `metric_value` raises."""
    if name not in METRICS:
        raise EvaluationError(f"unknown metric {name!r}; the metrics are {list(METRICS)}")
    y = preds.y_true
    if len(y) == 0:
        return "no rows"
    _check_labels(preds)
    if name in ("roc_auc", "log_loss") and preds.proba is None:
        return "the model gives no class probabilities"
    if name == "roc_auc" and (absent := _absent_classes(preds)):
        kind = "class" if len(absent) == 1 else "classes"
        return f"no rows of {kind} {_quoted(absent)}"
    if name == "mape" and np.any(y == 0):
        return "a target of zero (a percentage of zero is undefined)"
    if name == "r2" and len(y) < 2:
        return "fewer than two rows"
    if name == "r2" and np.all(y == y[0]):
        return "the target is constant here (R² divides by its variance)"
    return ""


def metric_value(name: str, preds: Predictions, positive: Any = None) -> float:
    """A metric of METRICS on `preds`, in its own sign; NaN where it is undefined on these rows
    (`undefined_reason` says why). Any other failure is a real error and raises, naming the metric
    and the labels, so it surfaces here and not several calls later."""
    if undefined_reason(name, preds, positive):
        return math.nan
    try:
        return float(_compute(name, preds, positive))
    except (ValueError, TypeError, IndexError, KeyError) as error:
        raise EvaluationError(
            f"{name} cannot be computed on {len(preds.y_true)} rows: {error}" + _labels_hint(preds)
        ) from error


def _labels_hint(preds: Predictions) -> str:
    """Some true labels beside the model's classes, as Python writes them ('1' is not 1): a label
    type other than the training one is the usual cause of a classification error."""
    if not preds.classes:
        return ""

    def shown(labels) -> str:
        plain = [v.item() if isinstance(v, np.generic) else v for v in list(labels)[:5]]
        return ", ".join(map(repr, plain)) + (", ..." if len(labels) > 5 else "")

    seen = pd.unique(pd.Series(preds.y_true))
    return f" (true labels {shown(seen)}; the model's classes {shown(preds.classes)})"


def _compute(name: str, preds: Predictions, positive: Any) -> float:
    """A metric on rows where it is defined; scikit-learn's errors pass through."""
    y, p = preds.y_true, preds.y_pred
    if name == "log_loss":
        return skm.log_loss(y, preds.proba, labels=preds.classes)
    if name == "roc_auc":
        if len(preds.classes) == 2:
            column = preds.classes.index(preds.classes[1] if positive is None else positive)
            truth = y == preds.classes[column]
            return skm.roc_auc_score(truth, preds.proba[:, column])
        return skm.roc_auc_score(y, preds.proba, multi_class="ovr", labels=preds.classes)
    if name == "balanced_accuracy":
        # The mean recall of the classes present, as balanced_accuracy_score computes it, without
        # its warning for predicted classes a group lacks (the usual case in a small segment).
        present = list(pd.unique(pd.Series(y)))
        return skm.recall_score(y, p, labels=present, average="macro", zero_division=0)
    functions = {
        "accuracy": skm.accuracy_score,
        "f1": lambda t, q: skm.f1_score(t, q, average="macro", zero_division=0),
        "precision": lambda t, q: skm.precision_score(t, q, average="macro", zero_division=0),
        "recall": lambda t, q: skm.recall_score(t, q, average="macro", zero_division=0),
        "mae": skm.mean_absolute_error,
        "rmse": skm.root_mean_squared_error,
        "mape": skm.mean_absolute_percentage_error,
        "r2": skm.r2_score,
    }
    return functions[name](y, p)


def metric_key(label: Any) -> str:
    """A class label as part of an MLflow metric name."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(label)).strip("_") or "class"


def classification_metrics(preds: Predictions, positive: Any) -> dict[str, float]:
    names = ["accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"]
    values = {name: metric_value(name, preds, positive) for name in names}
    per_class = skm.precision_recall_fscore_support(
        preds.y_true, preds.y_pred, labels=preds.classes, zero_division=0
    )
    for kind, numbers in zip(("precision", "recall", "f1"), per_class[:3], strict=True):
        for label, number in zip(preds.classes, numbers, strict=True):
            values[f"{kind}_{metric_key(label)}"] = float(number)
    return values


def regression_metrics(preds: Predictions) -> dict[str, float]:
    """MAE, RMSE, R² and, where no target is zero, MAPE."""
    values = {name: metric_value(name, preds) for name in ("mae", "rmse", "r2", "mape")}
    return {name: value for name, value in values.items() if not math.isnan(value)}


def business_cost(
    preds: Predictions, positive: Any, costs: dict[str, float]
) -> dict[str, float] | None:
    """The errors' cost on these rows in the KPI's unit, beside flagging every row or none.
    None without a positive class or error costs."""
    if positive is None or not costs:
        return None
    actual, flagged = preds.y_true == positive, preds.y_pred == positive
    fp_cost, fn_cost = costs.get("false_positive", 0.0), costs.get("false_negative", 0.0)
    false_positives = int((flagged & ~actual).sum())
    false_negatives = int((~flagged & actual).sum())
    total = false_positives * fp_cost + false_negatives * fn_cost
    rows = len(actual)
    return {
        "false_positives": false_positives,
        "false_negatives": false_negatives,
        "cost_total": total,
        "cost_per_case": total / rows,
        "cost_per_case_flag_all": float((~actual).sum() * fp_cost / rows),
        "cost_per_case_flag_none": float(actual.sum() * fn_cost / rows),
    }


def log_test_metrics(values: dict[str, float], prefix: str = "test_") -> None:
    """Metrics as `test_<name>`; undefined ones (NaN) are left out."""
    mlflow.log_metrics(
        {f"{prefix}{name}": value for name, value in values.items() if not math.isnan(value)}
    )


def plot_classification(preds: Predictions, positive: Any) -> dict[str, plt.Figure]:
    """Figures by artifact file name."""
    figures = {}
    if preds.proba is not None:
        figure, (roc, pr, calibration) = plt.subplots(1, 3, figsize=(14, 4.2))
        shown = [positive] if len(preds.classes) == 2 and positive is not None else preds.classes
        for label in shown:
            column = preds.classes.index(label)
            truth, score = preds.y_true == label, preds.proba[:, column]
            if truth.all() or not truth.any():
                continue  # a curve needs both outcomes
            fpr, tpr, _ = skm.roc_curve(truth, score)
            roc.plot(fpr, tpr, label=f"{label} (AUC {skm.auc(fpr, tpr):.3f})")
            precision, recall, _ = skm.precision_recall_curve(truth, score)
            average = skm.average_precision_score(truth, score)
            pr.plot(recall, precision, label=f"{label} (AP {average:.3f})")
            bins = 10 if len(truth) >= 200 else 5
            observed, predicted = calibration_curve(truth, score, n_bins=bins, strategy="quantile")
            calibration.plot(predicted, observed, marker="o", label=str(label))
        roc.plot([0, 1], [0, 1], ls="--", color="grey")
        calibration.plot([0, 1], [0, 1], ls="--", color="grey", label="perfectly calibrated")
        for axis, title, xlabel, ylabel in (
            (roc, "ROC curve", "false positive rate", "true positive rate"),
            (pr, "Precision-recall curve", "recall", "precision"),
            (calibration, "Calibration", "mean predicted probability", "observed share"),
        ):
            axis.set(title=title, xlabel=xlabel, ylabel=ylabel)
            axis.legend(loc="best", fontsize="small")
        figure.tight_layout()
        figures["curves.png"] = figure
    figure, axis = plt.subplots(figsize=(5, 4.2))
    skm.ConfusionMatrixDisplay.from_predictions(
        preds.y_true, preds.y_pred, labels=preds.classes, ax=axis, colorbar=False
    )
    axis.set_title("Confusion matrix (test set)")
    figure.tight_layout()
    figures["confusion_matrix.png"] = figure
    return figures


def plot_regression(preds: Predictions) -> dict[str, plt.Figure]:
    residuals = preds.y_true - preds.y_pred
    figure, (versus, spread, histogram) = plt.subplots(1, 3, figsize=(14, 4.2))
    versus.scatter(preds.y_true, preds.y_pred, s=12, alpha=0.7)
    low, high = np.nanmin(preds.y_true), np.nanmax(preds.y_true)
    versus.plot([low, high], [low, high], ls="--", color="grey")
    versus.set(title="Predicted against actual", xlabel="actual", ylabel="predicted")
    spread.scatter(preds.y_pred, residuals, s=12, alpha=0.7)
    spread.axhline(0, ls="--", color="grey")
    spread.set(title="Residuals", xlabel="predicted", ylabel="actual - predicted")
    histogram.hist(residuals, bins=20)
    histogram.set(title="Residual distribution", xlabel="actual - predicted", ylabel="rows")
    figure.tight_layout()
    return {"residuals.png": figure}


@dataclass
class Criterion:
    """One line of the acceptance gate: a value held to a limit."""

    name: str
    value: float
    limit: float
    comparison: str  # ">=" or "<="
    note: str = ""
    assessed: bool = True  # False: nothing to hold to the limit (stated in the note), not a failure

    @property
    def passed(self) -> bool:
        if not self.assessed:
            return True
        if self.value is None or math.isnan(self.value):
            return False  # what cannot be measured cannot pass
        return self.value >= self.limit if self.comparison == ">=" else self.value <= self.limit


def comparison_for(metric: str) -> str:
    return ">=" if METRICS[metric].greater_is_better else "<="


def baseline_predictions(
    X_train: pd.DataFrame, y_train: pd.Series, X_test: pd.DataFrame, y_test: pd.Series, task: str
) -> Predictions:
    """What a dummy fitted on the training set predicts for the test set."""
    dummy = DummyClassifier(strategy="prior") if task == "classification" else DummyRegressor()
    return predict(dummy.fit(X_train, y_train), X_test, y_test, task)


def sanity_criteria(
    metric: str, test_value: float, baseline_value: float, margin: float, preds: Predictions
) -> list[Criterion]:
    """Beats the dummy baseline by `margin`; predictions are not all the same."""
    better = METRICS[metric].greater_is_better
    limit = baseline_value + margin if better else baseline_value - margin
    distinct = len(pd.unique(pd.Series(preds.y_pred)))
    return [
        Criterion(
            f"{metric} beats the dummy baseline ({baseline_value:.4g}) by {margin:g}",
            test_value,
            limit,
            comparison_for(metric),
        ),
        Criterion("distinct predicted values", distinct, 2, ">=", "a constant model is useless"),
    ]


def generalization_gaps(scores: dict[str, float], max_gap: float) -> pd.DataFrame:
    """Absolute differences between the training, cross-validation and test scores."""
    pairs = [("training", "test"), ("cross-validation", "test"), ("training", "cross-validation")]
    rows = []
    for first, second in pairs:
        gap = abs(scores[first] - scores[second])
        rows.append({"between": f"{first} and {second}", "gap": gap, "flagged": gap > max_gap})
    return pd.DataFrame(rows)


SEGMENT_MAX_DISTINCT = 10  # a numeric column with more distinct values is cut into quartiles


def segment_groups(frame: pd.DataFrame, column: str, key: str = "use_case.segments") -> pd.Series:
    """The group of each row: quartiles of a many-valued number, else the value itself."""
    if column not in frame.columns:
        columns = ", ".join(map(str, frame.columns[:30]))
        raise EvaluationError(f"{key}: column {column!r} is not in the data; use one of: {columns}")
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values) and values.nunique() > SEGMENT_MAX_DISTINCT:
        quartile = pd.qcut(values, 4, labels=False, duplicates="drop")
        labels = {}
        for number, part in values.groupby(quartile):
            labels[number] = f"Q{int(number) + 1} ({part.min():.4g} to {part.max():.4g})"
        groups = quartile.map(labels)
    else:
        groups = values.map(_group_label)
    return groups.where(values.notna(), "missing").astype(str).rename(column)


def _group_label(value: Any) -> str:
    """A value as a group's name: an integral float reads as the integer it is ("cyl = 4", not
    "4.0"), as an integer column with a missing value is held as floats."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class GroupResult:
    """A metric on one group's rows: its value, why it is undefined there, and the fallback."""

    value: float
    status: str  # "defined", or "undefined: <why>"
    fallback: str = ""  # the metric shown instead where this one is undefined
    fallback_value: float = math.nan


def measure_group(name: str, preds: Predictions, positive: Any) -> GroupResult:
    """`name` on one group's rows; where it is undefined, says why and measures its fallback.
    The one place 04's segments and monitoring's labelled segments compute a group's metric."""
    reason = undefined_reason(name, preds, positive)
    if not reason:
        return GroupResult(metric_value(name, preds, positive), "defined")
    fallback = FALLBACKS.get(name, "")
    value = metric_value(fallback, preds, positive) if fallback else math.nan
    return GroupResult(math.nan, f"undefined: {reason}", fallback, value)


SEGMENT_COLUMNS = ["segment", "group", "rows"]
STATUS_COLUMNS = ["status", "fallback", "fallback_value"]


def segment_metrics(
    preds: Predictions, frame: pd.DataFrame, columns: list[str], metric: str, positive: Any
) -> pd.DataFrame:
    """One row per group of each column: its rows, the use case's metric and a context metric,
    and the metric's status there: "defined", or "undefined: <why>" with the fallback metric
    measured instead (which never counts as the metric: only defined groups can be the worst)."""
    context = "accuracy" if METRICS[metric].task == "classification" else "mae"
    names = list(dict.fromkeys([metric, context]))
    rows = []
    for column in columns:
        groups = segment_groups(frame, column).to_numpy()
        for group in sorted(pd.unique(groups)):
            part = preds.subset(np.flatnonzero(groups == group))
            result = measure_group(metric, part, positive)
            row = {
                "segment": column,
                "group": group,
                "rows": len(part.y_true),
                metric: result.value,
            }
            row |= {name: metric_value(name, part, positive) for name in names if name != metric}
            row |= {
                "status": result.status,
                "fallback": result.fallback,
                "fallback_value": result.fallback_value,
            }
            rows.append(row)
    table = pd.DataFrame(rows, columns=[*SEGMENT_COLUMNS, *names, *STATUS_COLUMNS])
    return table.astype({"rows": int, metric: float, "fallback_value": float})


def worst_segment(table: pd.DataFrame, metric: str) -> pd.Series | None:
    """The group with the worst defined value of `metric`, or None when there is none: a group
    where it is undefined (NaN, its status says why) is never the worst, whatever its fallback."""
    defined = table.dropna(subset=[metric]) if metric in table else table.iloc[0:0]
    if defined.empty:
        return None
    values = defined[metric].astype(float)
    position = values.idxmin() if METRICS[metric].greater_is_better else values.idxmax()
    return defined.loc[position]


def plot_segments(table: pd.DataFrame, metric: str, floor: float) -> plt.Figure:
    """The metric per group; a group where it is undefined is labelled so, with no bar."""
    values = table[metric].astype(float)
    labels = [
        f"{s} = {g}" + (" (undefined)" if math.isnan(v) else "")
        for s, g, v in zip(table["segment"], table["group"], values, strict=True)
    ]
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(table) + 1.5))
    axis.barh(labels, values.fillna(0), color="tab:blue")
    axis.axvline(floor, color="tab:red", ls="--", label=f"worst_segment_threshold {floor:g}")
    axis.invert_yaxis()
    axis.set(xlabel=f"{metric} on the test set", title="Segments")
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def fairness(
    preds: Predictions, frame: pd.DataFrame, attributes: list[str], task: str, positive: Any
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fairness measures per attribute, and the group rates behind them."""
    measures, details = [], []
    for attribute in attributes:
        groups = segment_groups(frame, attribute, "use_case.sensitive_attributes").to_numpy()
        if task == "classification":
            if positive is None:
                raise EvaluationError(
                    "use_case.positive_class: set it to measure fairness with more than two classes"
                )
            truth, flagged = preds.y_true == positive, preds.y_pred == positive
            values = {
                "demographic_parity_difference": demographic_parity_difference(
                    truth, flagged, sensitive_features=groups
                ),
                "equalized_odds_difference": equalized_odds_difference(
                    truth, flagged, sensitive_features=groups
                ),
            }
            rates = {
                "selection_rate": selection_rate,
                "true_positive_rate": true_positive_rate,
                "false_positive_rate": false_positive_rate,
                "rows": count,
            }
            by_group = MetricFrame(
                metrics=rates, y_true=truth, y_pred=flagged, sensitive_features=groups
            ).by_group
        else:
            errors = MetricFrame(
                metrics={"mae": skm.mean_absolute_error, "rows": count},
                y_true=preds.y_true,
                y_pred=preds.y_pred,
                sensitive_features=groups,
            )
            values = {"error_gap": float(errors.difference()["mae"])}
            by_group = errors.by_group
        for measure, value in values.items():
            measures.append({"attribute": attribute, "measure": measure, "value": float(value)})
        detail = by_group.reset_index()
        detail.columns = ["group", *detail.columns[1:]]
        detail.insert(0, "attribute", attribute)
        details.append(detail)
    table = pd.DataFrame(measures, columns=["attribute", "measure", "value"])
    return table, (pd.concat(details, ignore_index=True) if details else pd.DataFrame())


class GateFailed(RuntimeError):
    """The model failed the acceptance gate; the message lists each failed criterion."""


def _number(value: float) -> str:
    return "undefined" if value is None or math.isnan(value) else f"{value:.4g}"


@dataclass
class Gate:
    criteria: list[Criterion]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria)

    def failures(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.passed]

    def table(self) -> pd.DataFrame:
        rows = [
            {
                "criterion": c.name,
                "value": c.value,
                "limit": f"{c.comparison} {c.limit:g}",
                "passed": c.passed,
                "note": c.note,
            }
            for c in self.criteria
        ]
        return pd.DataFrame(rows, columns=["criterion", "value", "limit", "passed", "note"])

    def report(self) -> str:
        if self.passed:
            unassessed = sum(not c.assessed for c in self.criteria)
            aside = f", {unassessed} not assessed" if unassessed else ""
            return f"acceptance gate passed ({len(self.criteria)} criteria{aside})"
        lines = [
            f"  - {c.name}: {_number(c.value)}, needs {c.comparison} {c.limit:g}"
            + (f" ({c.note})" if c.note else "")
            for c in self.failures()
        ]
        return "acceptance gate failed, nothing is registered:\n" + "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "criteria": [
                {
                    "criterion": c.name,
                    "value": None if math.isnan(c.value) else c.value,
                    "comparison": c.comparison,
                    "limit": c.limit,
                    "passed": c.passed,
                    "assessed": c.assessed,
                    "note": c.note,
                }
                for c in self.criteria
            ],
        }


def acceptance_gate(
    use_case: UseCase,
    test_value: float,
    sanity: list[Criterion],
    worst: pd.Series | None,
    worst_threshold: float,
    fairness_table: pd.DataFrame,
    fairness_limits: dict[str, float],
) -> Gate:
    metric, comparison = use_case.metric, comparison_for(use_case.metric)
    criteria = [Criterion(f"{metric} on the test set", test_value, use_case.threshold, comparison)]
    criteria += sanity
    if use_case.segments:
        if worst is None:
            # Only a group where the metric is defined can fail the gate (a group lacking a
            # class has no ROC AUC); the segment table shows each group's fallback instead.
            note = (
                f"not assessed: {metric} is undefined in every group (see the segment table's "
                "status and fallback); segments whose groups hold every class can be assessed"
            )
            criteria.append(
                Criterion(
                    f"worst segment {metric}", math.nan, worst_threshold, comparison, note, False
                )
            )
        else:
            name = f"worst segment {metric} ({worst['segment']} = {worst['group']})"
            criteria.append(Criterion(name, float(worst[metric]), worst_threshold, comparison))
    for row in fairness_table.itertuples():
        if row.measure in fairness_limits:
            name = f"{row.measure} ({row.attribute})"
            criteria.append(Criterion(name, row.value, fairness_limits[row.measure], "<="))
    return Gate(criteria)


def log_gate(gate: Gate) -> None:
    """The verdict as the run's `gate` tag, metrics and gate.json."""
    mlflow.set_tag("gate", "passed" if gate.passed else "failed")
    mlflow.log_metrics(
        {"gate_passed": float(gate.passed), "gate_failed_criteria": len(gate.failures())}
    )
    mlflow.log_dict(gate.as_dict(), "gate.json")


def enforce(gate: Gate) -> None:
    """Stop the pipeline when the gate failed, naming each failed criterion."""
    if not gate.passed:
        raise GateFailed(gate.report())


@dataclass
class CardFacts:
    """Everything the model card states, gathered by this notebook."""

    model_name: str
    use_case: UseCase
    candidate: str
    hyperparameters: dict[str, Any]
    model_uri: str
    data: dict[str, Any]  # source, target, rows, split and digests
    metrics: dict[str, float]
    scores: dict[str, float]  # training, cross-validation, test, baseline
    gaps: pd.DataFrame
    segments: pd.DataFrame
    worst: pd.Series | None
    fairness: pd.DataFrame
    gate: Gate
    lineage: dict[str, str]
    cost: dict[str, float] | None = None
    # The columns 02 left out of the model: column, role, reason (`ColumnRoles.not_used`); None
    # when the run did not record them.
    columns_not_used: list[dict[str, str]] | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table, numbers to four significant digits."""
    if frame.empty:
        return "_none_"

    def cell(value) -> str:
        if isinstance(value, bool | np.bool_):
            return "yes" if value else "**no**"
        if isinstance(value, float | np.floating):
            return _number(float(value))
        return str(value).replace("|", "\\|")

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def segments_for_card(table: pd.DataFrame) -> pd.DataFrame:
    """The segment table with its status in one plain note: empty where the metric is defined,
    else why it is not and the fallback measured instead (e.g. "undefined: no rows of class 'c';
    balanced_accuracy 0.93 instead"). Without an undefined group the note is left out."""
    if "status" not in table:
        return table
    shown = table.drop(columns=STATUS_COLUMNS)
    if (table["status"] == "defined").all():
        return shown
    notes = [_segment_note(*row) for row in table[STATUS_COLUMNS].itertuples(index=False)]
    return shown.assign(note=notes)


def _segment_note(status: str, fallback: str, fallback_value: float) -> str:
    if status == "defined":
        return ""
    return status + (f"; {fallback} {_number(fallback_value)} instead" if fallback else "")


def limitations(facts: CardFacts) -> list[str]:
    """What this evaluation itself shows about the model's limits."""
    found = []
    rows, sample = facts.data.get("test_rows", 0), facts.data.get("sample_rows", 0)
    if sample:
        found.append(
            f"Trained and tested on a sample of {sample} rows (`data.sample_rows`): a trial or "
            "smoke run, not a model to rely on."
        )
    if rows < 200:
        found.append(
            f"The test set has {rows} rows: every metric here carries wide uncertainty, and more "
            "so within segments."
        )
    for gap in facts.gaps[facts.gaps["flagged"]].itertuples():
        found.append(
            f"The scores of {gap.between} differ by {gap.gap:.4g}, more than "
            "`evaluation.max_generalization_gap`: overfitting or a lucky split."
        )
    metric = facts.use_case.metric
    if not facts.segments.empty and metric in facts.segments:
        undefined = facts.segments[facts.segments[metric].isna()]
        if not undefined.empty:
            groups = ", ".join(f"{r.segment} = {r.group}" for r in undefined.itertuples())
            found.append(
                f"{metric} is undefined in some groups ({groups}): those groups were not held "
                "to `use_case.worst_segment_threshold`; the segment table gives a fallback."
            )
    if not facts.use_case.sensitive_attributes:
        found.append("No sensitive attributes are configured: fairness was not assessed.")
    stated = facts.use_case.limitations or [
        (
            "None stated in `use_case.limitations`, where what the data does not cover "
            "(populations, time period, sites) and the uses the model is not fit for belong."
        )
    ]
    return found + stated


def columns_not_used(facts: CardFacts) -> str:
    """The card's account of the columns of the data the model does not take, and why."""
    if facts.columns_not_used is None:
        return "_Not recorded by this run's 02_data_preparation._"
    if not facts.columns_not_used:
        return "The model takes every column of the data but the target."
    rows = pd.DataFrame(facts.columns_not_used, columns=["column", "role", "reason"])
    rows["role"] = rows["role"].str.replace("_", " ")
    return (
        f"{markdown_table(rows)}\n\nClients do not send these columns: the model's input is the "
        "other columns (02's decisions, `data.drop_columns` and `data.max_categories`)."
    )


def model_card(facts: CardFacts) -> str:
    """The model card as Markdown."""
    uc, gate = facts.use_case, facts.gate
    verdict = "passed" if gate.passed else "FAILED"
    direction = "at least" if uc.scoring.greater_is_better else "at most"
    data = facts.data
    hyper = pd.DataFrame(
        [{"parameter": k, "value": v} for k, v in sorted(facts.hyperparameters.items())]
    )
    metrics = pd.DataFrame([{"metric": k, "test": v} for k, v in facts.metrics.items()])
    scores = pd.DataFrame([{"score": k, uc.metric: v} for k, v in facts.scores.items()])
    if facts.worst is not None:
        worst = (
            f"Worst group: **{facts.worst['segment']} = {facts.worst['group']}** "
            f"({uc.metric} {_number(float(facts.worst[uc.metric]))})."
        )
    elif not facts.segments.empty:
        worst = f"{uc.metric} is undefined in every group: no worst group was assessed."
    else:
        worst = "No segment result."
    cost = ""
    if facts.cost:
        cost_rows = pd.DataFrame(
            [{"": k.replace("_", " "), "value": v} for k, v in facts.cost.items()]
        )
        cost = f"\n\nExpected business cost on the test set:\n\n{markdown_table(cost_rows)}"
    fairness = (
        markdown_table(facts.fairness)
        if uc.sensitive_attributes
        else "No sensitive attributes configured (`use_case.sensitive_attributes`)."
    )
    lineage = pd.DataFrame([{"what": k, "value": v} for k, v in facts.lineage.items()])
    intended = (
        f"- **Problem:** {uc.problem}\n- **Business goal:** {uc.business_goal}\n"
        f"- **Intended users:** {uc.audience}\n- **Business KPI:** {uc.kpi}\n"
        f"- **Acceptance:** {uc.metric} {direction} {uc.threshold:g} on held-out data"
    )
    sample = f", sample of {data['sample_rows']} rows" if data.get("sample_rows") else ""
    data_lines = (
        f"- **Source:** `{data.get('source')}`, target `{data.get('target')}`\n"
        f"- **Rows:** {data.get('train_rows')} training, {data.get('test_rows')} test "
        f"(test share {data.get('test_size')}, seed {data.get('seed')}{sample})\n"
        f"- **Digests:** training `{data.get('train_digest')}`, test `{data.get('test_digest')}`"
    )
    sections = [
        f"# Model card: {facts.model_name}",
        f"Candidate **{facts.candidate}**, evaluated {facts.created}. Acceptance gate: **{verdict}**.",
        "## Intended use",
        intended,
        "## Data",
        data_lines,
        "## Columns not used and why",
        columns_not_used(facts),
        "## Model",
        (
            f"`{facts.model_uri}`: a scikit-learn pipeline, candidate **{facts.candidate}**, "
            f"with these tuned hyperparameters:\n\n{markdown_table(hyper)}"
        ),
        "## Metrics",
        (
            f"On the held-out test set:\n\n{markdown_table(metrics)}\n\n"
            f"{uc.metric} across the stages:\n\n{markdown_table(scores)}{cost}"
        ),
        "## Segments",
        f"{markdown_table(segments_for_card(facts.segments))}\n\n{worst}",
        "## Fairness",
        fairness,
        "## Acceptance gate",
        f"**{verdict}**\n\n{markdown_table(gate.table())}",
        "## Limitations",
        "\n".join(f"- {line}" for line in limitations(facts)),
        "## Lineage",
        markdown_table(lineage),
    ]
    return "\n\n".join(sections) + "\n"
