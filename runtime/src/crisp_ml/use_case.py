"""The use case: the metrics a use case may name, and the use case itself, checked and logged.

01_use_case declares it, checks it and hands it on as one object; the later phases read it back
with `handed_on_use_case()`, and monitoring reads the one a version was trained for from its
pipeline run's parameters (`UseCase.from_params`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import mlflow

from .project import handed_on


@dataclass(frozen=True)
class Metric:
    name: str
    task: str
    scorer: str  # scikit-learn scorer; errors are negated there, so higher is always better
    greater_is_better: bool

    def from_score(self, score: float) -> float:
        """A scorer's value in the metric's own sign (MAE 42, not -42)."""
        return score if self.greater_is_better else -score

    def better(self, a: float, b: float) -> bool:
        """Whether value `a` is strictly better than value `b`."""
        return a > b if self.greater_is_better else a < b

    def meets(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.greater_is_better else value <= threshold


METRICS = {
    m.name: m
    for m in [
        Metric("roc_auc", "classification", "roc_auc_ovr", True),
        Metric("accuracy", "classification", "accuracy", True),
        Metric("balanced_accuracy", "classification", "balanced_accuracy", True),
        Metric("f1", "classification", "f1_macro", True),
        Metric("precision", "classification", "precision_macro", True),
        Metric("recall", "classification", "recall_macro", True),
        Metric("log_loss", "classification", "neg_log_loss", False),
        Metric("mae", "regression", "neg_mean_absolute_error", False),
        Metric("rmse", "regression", "neg_root_mean_squared_error", False),
        Metric("mape", "regression", "neg_mean_absolute_percentage_error", False),
        Metric("r2", "regression", "r2", True),
    ]
}


FAIRNESS_MEASURES = {
    "classification": ("demographic_parity_difference", "equalized_odds_difference"),
    "regression": ("error_gap",),
}


class UseCaseError(ValueError):
    """A use case that cannot be held to: names the `use_case` key and the fix."""


@dataclass(frozen=True)
class UseCase:
    task: str
    problem: str
    business_goal: str
    audience: str
    kpi: str
    metric: str
    threshold: float
    segments: list[str] = field(default_factory=list)
    sensitive_attributes: list[str] = field(default_factory=list)
    positive_class: str = ""
    error_costs: dict[str, float] = field(default_factory=dict)
    limitations: list[str] = field(default_factory=list)  # what the data and the model do not cover
    worst_segment_threshold: float | None = None  # the least acceptable metric in any one group
    fairness_limits: dict[str, float] = field(default_factory=dict)  # largest gap per measure

    @classmethod
    def from_params(cls, tree: dict[str, Any]) -> UseCase:
        """The use case a parameter tree states: params.yaml's, or the one a pipeline run logged."""
        stated = dict(tree.get("use_case") or {})
        unknown = sorted(set(stated) - {f.name for f in fields(cls)} - {"task"})
        if unknown:
            raise UseCaseError(f"use_case has unknown keys {unknown}: remove them from params.yaml")
        return cls(task=tree.get("task", ""), **stated)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self):
        if self.task not in ("classification", "regression"):
            raise UseCaseError(f"task must be classification or regression, not {self.task!r}")
        allowed = [m.name for m in METRICS.values() if m.task == self.task]
        if self.metric not in allowed:
            raise UseCaseError(
                f"use_case.metric {self.metric!r} is not a {self.task} metric; use one of {allowed}"
            )
        unknown_costs = set(self.error_costs) - {"false_positive", "false_negative"}
        if unknown_costs:
            raise UseCaseError(
                f"use_case.error_costs has {sorted(unknown_costs)}; "
                "the keys are false_positive and false_negative"
            )
        if self.segments and self.worst_segment_threshold is None:
            raise UseCaseError(
                "use_case.worst_segment_threshold is not set: give the least acceptable "
                f"{self.metric} in any one group of use_case.segments"
            )
        unknown_limits = sorted(set(self.fairness_limits) - set(FAIRNESS_MEASURES[self.task]))
        if unknown_limits:
            raise UseCaseError(
                f"use_case.fairness_limits has {unknown_limits}; for {self.task} the measures are "
                f"{list(FAIRNESS_MEASURES[self.task])}"
            )

    @property
    def scoring(self) -> Metric:
        return METRICS[self.metric]

    def summary(self) -> str:
        """The use case as Markdown, for people."""
        direction = "at least" if self.scoring.greater_is_better else "at most"
        rows = [
            ("Problem", self.problem),
            ("Business goal", self.business_goal),
            ("Audience", self.audience),
            ("Business KPI", self.kpi),
            ("ML metric", f"{self.metric}, {direction} {self.threshold} on held-out data"),
            ("Segments", ", ".join(self.segments) or "none"),
            ("Each segment group", self._worst_segment_rule(direction)),
            ("Sensitive attributes", ", ".join(self.sensitive_attributes) or "none"),
            ("Fairness limits", _listed(self.fairness_limits)),
            ("Limitations", "; ".join(self.limitations) or "none stated"),
        ]
        if self.task == "classification":
            rows.append(("Positive class", self.positive_class or "not set"))
            rows.append(("Error costs", _listed(self.error_costs)))
        table = "\n".join(f"| {name} | {value} |" for name, value in rows)
        return f"| | {self.task} |\n|---|---|\n{table}"

    def _worst_segment_rule(self, direction: str) -> str:
        if self.worst_segment_threshold is None:
            return "no limit"
        return f"{self.metric}, {direction} {self.worst_segment_threshold}"


def _listed(values: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in values.items()) or "not set"


def handed_on_use_case() -> UseCase:
    """The use case 01_use_case checked and handed on to this run's later phases."""
    return UseCase(**handed_on("use_case", "01_use_case"))


def log_use_case(use_case: UseCase) -> None:
    """Tags for searching runs, and the whole use case as use_case.json."""
    mlflow.set_tags(
        {
            "use_case.metric": use_case.metric,
            "use_case.threshold": str(use_case.threshold),
            "use_case.kpi": use_case.kpi[:250],
            "use_case.problem": use_case.problem[:250],
        }
    )
    mlflow.log_text(json.dumps(use_case.as_dict(), indent=2), "use_case.json")
