"""Experiments: decide between the champion and a challenger from live traffic.

The server splits traffic into two arms (`ab` mode: each request goes to `champion` or
`challenger`), or lets the challenger score the champion's rows silently (`shadow` mode). True
outcomes arrive later; `join_outcomes` puts them beside the logged rows, `arm_results` measures
each arm, `compare` tests the difference, `decide` says promote, keep or continue, and
`shadow_agreement` says how far a shadow challenger agrees with the champion.

The statistics, in plain words:

- **Confidence intervals of an arm.** Accuracy is a proportion of correct rows, so its interval is
  Wilson's (right even near 0 or 1 and on small samples). Every other metric (ROC AUC, log loss,
  MAE, RMSE, R², F1 ...) and the business cost per row get a seeded percentile bootstrap with a
  bounded number of resamples (2000 by default): it needs no formula per metric and holds for
  metrics that are not means of rows.
- **Rows are not always independent.** All rows of a request go to one arm (and with a routing
  column, all requests of its value), and rows of one request tend to be right or wrong together.
  Treated as independent, they make a difference look surer than it is. So whenever a request in
  an arm holds more than one row, the bootstrap resamples whole requests (a cluster bootstrap, by
  `request_id`, or by `routing_key` where the log holds one), for accuracy too instead of Wilson
  and the two-proportion test, and the rows needed follow the standard error it finds. Requests
  of one row are independent rows: nothing changes for them. (A routing column groups requests
  the log does not link; with few requests per entity, resampling requests is close enough.)
- **The test of challenger - champion.** For accuracy on independent rows, the two-proportion
  z-test (pooled under the hypothesis of no difference). Otherwise a z-test whose standard error
  is the bootstrap's, the arms resampled independently: the corrected levels below are small (0.01
  and less), and a bounded number of resamples cannot estimate such tails by counting, while their
  standard error is stable and the metrics are close to normal on hundreds of rows.
- **Probabilities.** ROC AUC and log loss need each row's class probabilities. A log where some
  rows lack them (written by an older server) is refused, counting those rows: judged on the rest,
  an arm could gain from which rows were dropped. Serve again, or judge on accuracy.
- **Peeking.** The notebook may be run again and again while traffic accrues, and each look is
  another chance to see a difference that is not there. The correction is Bonferroni over a
  planned maximum number of looks: with `looks` K, each look tests at alpha / K, so whatever the
  looks' timing the chance that any of them falsely finds a difference stays below alpha.
  It is conservative (an O'Brien-Fleming boundary spends less early), but it needs no memory of
  earlier looks and no information fractions, and it holds at every look, so a promotion may come
  as soon as the boundary is crossed. The difference's interval is at the same corrected level,
  so it agrees with the test. Looking more than K times voids the guarantee, so the looks are
  counted (`look_number`: the finished experiment runs that tested the same two versions) and the
  reasons say "look k of K"; past K the decision is continue, whatever the test says, until
  `looks` is raised or a new experiment starts.
- **Sample size.** The rows per arm that detect `minimum_detectable_effect` with `power` at the
  corrected level: the two-proportion formula for accuracy (a champion too near 1 to gain the
  whole effect is taken to a target just below 1); for the other metrics and clustered rows, the
  normal formula with the per-row standard deviation the data shows (the bootstrap standard error times
  the square root of the rows: for a mean such as MAE that is the standard deviation of the
  per-row error).
- **The decision.** Promote when the challenger is significantly better at the corrected level;
  keep when the champion is significantly better, or when both arms have the rows needed and even
  the upper end of the improvement's interval is below the minimum detectable effect (futility:
  more traffic would not show a worthwhile gain); continue otherwise. With fewer than
  MIN_ROWS_PER_ARM rows in an arm the normal approximations do not hold: continue.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import evaluation, project
from .evaluation import Predictions, label_texts
from .project import resolve_path
from .serving.arms import AB, CHALLENGER, CHAMPION, SHADOW, SHADOW_ARM
from .serving.predlog import is_summary
from .use_case import METRICS, Metric, UseCase

ARMS = (CHAMPION, CHALLENGER)
# + the class label, one column per class: as the scorer writes them, and as pandas.json_normalize
# flattens the prediction log's "probabilities" object
PROBABILITY_PREFIXES = ("probability_", "probabilities.")
PROPORTIONS = ("accuracy",)  # metrics that are a share of correct rows: Wilson and the z-test
RESAMPLES = 2000
MIN_ROWS_PER_ARM = 30  # below this, no normal approximation is trusted: the decision is continue
BOOTSTRAP_CELLS = 2_000_000  # resampled values held at once, so memory stays bounded
LATENCY_PERCENTILES = (50, 90, 99)
PROPORTION_EDGE = 0.001  # how near 0 or 1 a proportion's sample size formula takes it


class ExperimentError(ValueError):
    """Data or settings an experiment cannot be judged on: names the problem and the fix."""


@dataclass(frozen=True)
class ExperimentPlan:
    """What the experiment measures and how strictly: one object for every step."""

    metric: Metric
    task: str
    target: str
    minimum_detectable_effect: float  # the smallest worthwhile gain, in the metric's units
    alpha: float = 0.05  # two-sided, over all the looks together
    power: float = 0.8
    looks: int = 1  # the planned maximum number of looks at the data (Bonferroni)
    positive_class: str = ""
    error_costs: dict[str, float] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)

    def __post_init__(self):
        object.__setattr__(self, "metric", metric_for(self.metric, self.task))
        checks = [
            (self.minimum_detectable_effect > 0, "minimum_detectable_effect must be above 0"),
            (0 < self.alpha < 1, f"alpha must be between 0 and 1, not {self.alpha}"),
            (0 < self.power < 1, f"power must be between 0 and 1, not {self.power}"),
            (
                int(self.looks) == self.looks >= 1,
                f"looks must be a whole number >= 1, not {self.looks}",
            ),
            (
                not self.error_costs or self.task == "classification",
                "error_costs apply to classification (false positives and negatives): remove them",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ExperimentError(message)

    @classmethod
    def from_use_case(cls, use_case: UseCase, target: str, **settings: Any) -> ExperimentPlan:
        """The plan for a use case's metric, positive class, error costs and segments."""
        return cls(
            metric=use_case.scoring,
            task=use_case.task,
            target=target,
            positive_class=use_case.positive_class,
            error_costs=dict(use_case.error_costs),
            segments=list(use_case.segments),
            **settings,
        )

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / self.looks


def metric_for(metric: Metric | str, task: str) -> Metric:
    """`metric` as a Metric of `task`; ExperimentError naming the allowed ones otherwise."""
    allowed = [m.name for m in METRICS.values() if m.task == task]
    if task not in ("classification", "regression"):
        raise ExperimentError(f"task must be classification or regression, not {task!r}")
    name = metric.name if isinstance(metric, Metric) else str(metric)
    if name not in allowed:
        raise ExperimentError(f"{name!r} is not a {task} metric: use one of {allowed}")
    return METRICS[name]


# --- joining outcomes ---------------------------------------------------------------------------


def join_outcomes(
    log: pd.DataFrame, outcomes: pd.DataFrame, key: str | list[str], target: str
) -> pd.DataFrame:
    """The log's rows that have a true outcome, with it in column `target`.

    `key` names the column, or the columns (["request_id", "row"]: a row of a request of several),
    that name one row in both frames. Counts are in the frame's `attrs`: `matched` rows,
    `log_unmatched` (rows whose outcome has not arrived), `outcomes_unmatched` (outcomes of rows
    not in this log) and `duplicate_rows` (log rows whose id an earlier row already had: a client
    that reused its X-Request-ID, or retried; the first is kept, the later ones left out). An id
    repeated in the outcomes is refused: which of two outcomes is true cannot be told. Ids are
    compared as text, so 7 in a CSV and "7" in the log are the same id (and 7.0, as a CSV with a
    missing value reads a column of whole numbers, is 7 too).
    """
    keys = [key] if isinstance(key, str) else list(key)
    shown_key = ", ".join(map(repr, keys))
    _require_columns(log, keys, "the log")
    _require_columns(outcomes, [*keys, target], "the outcomes")
    known = outcomes.dropna(subset=[target])  # an outcome still unknown is no outcome yet
    outcome_ids, log_ids = _key_texts(known, keys), _key_texts(log, keys)
    if outcome_ids.duplicated().any():
        raise ExperimentError(
            f"the outcomes: ids repeat in {shown_key} (e.g. "
            f"{_shown(outcome_ids[outcome_ids.duplicated()].iloc[0])!r}), so outcomes cannot be "
            "matched to rows: join by a column that names one row (a request of several rows "
            "shares its request_id: add its `row`), one outcome per row"
        )
    repeated = log_ids.duplicated().to_numpy()  # the first of each id stays
    log, log_ids = log[~repeated], log_ids[~repeated]
    values = known[target].set_axis(outcome_ids)
    matched = log_ids.isin(values.index)
    if not matched.any():
        raise ExperimentError(
            f"no outcome joins a row: the log's {shown_key} ids ({_sample(log_ids)}) and the "
            f"outcomes' {shown_key} ids ({_sample(outcome_ids)}) never meet; join by the id the "
            "server logged, and use outcomes of the rows this log holds"
        )
    joined = log[matched.to_numpy()].drop(columns=[target], errors="ignore")
    joined[target] = log_ids[matched].map(values).to_numpy()
    joined = joined.reset_index(drop=True)
    joined.attrs.update(
        matched=int(matched.sum()),
        log_unmatched=int((~matched).sum()),
        outcomes_unmatched=int((~outcome_ids.isin(log_ids)).sum()),
        duplicate_rows=int(repeated.sum()),
    )
    return joined


KEY_SEPARATOR = "\x1f"  # between the parts of a composite id: never in an id as typed


def _key_texts(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each row's id as one text: its key columns as text (label_text), joined."""
    parts = [pd.Series(label_texts(frame[k]), index=frame.index, dtype=object) for k in keys]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + KEY_SEPARATOR + part
    return joined


def _shown(value: str) -> str:
    return str(value).replace(KEY_SEPARATOR, "/")


def _require_columns(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        shown = ", ".join(map(str, list(frame.columns)[:20]))
        raise ExperimentError(f"{where} has no column {missing} (its columns: {shown})")


def _sample(ids: pd.Series, most: int = 3) -> str:
    shown = [repr(_shown(v)) for v in ids.drop_duplicates().head(most)]
    return ", ".join(shown) + (", ..." if ids.nunique() > most else "") if shown else "none"


# --- reading the prediction log and the outcomes -------------------------------------------------

# Beside each row's inputs: where the row came from and who answered it.
LOG_FIELDS = (
    "request_id", "row", "timestamp", "endpoint", "model_name", "model_version", "arm",
    "latency_ms",
)  # fmt: skip
ROW_KEY = ["request_id", "row"]  # what names one logged row: the request and the row within it
SERVE_AB = 'make serve ARGS="--mode ab --challenger challenger --share 0.5"'


def read_experiment_log(path: str | Path) -> pd.DataFrame:
    """The rows of an `ab` or `shadow` prediction log (and the copies its rotation kept,
    `<file>.1` ...), one per (request_id, row): the inputs, LOG_FIELDS, `prediction` and
    `probability_<class>`; in a shadow log also `shadow_prediction`, `shadow_model_version`,
    `shadow_latency_ms` and `shadow_probability_<class>`, the challenger's answer on that row.

    The frame's `attrs` say what was left out and what it is: `mode` ("ab" or "shadow"),
    `skipped_lines` (no whole entry), `rows_left_out` (rows of requests too large for the log),
    `single_rows` (rows served without an arm) and `shadow_unmatched` (shadow answers of rows the
    log does not hold). ExperimentError for a missing log, a log without arms, and a log that
    mixes both modes.
    """
    from .monitoring import log_entry, log_files  # the log's lines and rotation, in one place

    file = resolve_path(str(path))
    files = log_files(file)
    if not files:
        raise ExperimentError(
            f"no prediction log at {file}: serve both versions with the log on "
            f"(PREDICTION_LOG={path} {SERVE_AB}), send traffic, or set experiment.prediction_log"
        )
    rows, shadows, counts = [], [], dict.fromkeys(("skipped_lines", "rows_left_out", "single"), 0)
    positions: dict[tuple[str, str], int] = {}  # the next row of a request, for lines without one
    for part in files:
        for line in part.read_text(encoding="utf-8", errors="replace").splitlines():
            entry = log_entry(line)
            kind = _line_kind(entry)
            if kind in ("skipped", "summary"):
                counts["skipped_lines"] += kind == "skipped" and bool(line.strip())
                if kind == "summary" and entry.get("arm") != SHADOW_ARM:  # counted once, not twice
                    counts["rows_left_out"] += entry["rows"] - entry["rows_logged"]
                continue
            if kind == "single":
                counts["single"] += 1
                continue
            position = (str(entry.get("request_id")), "shadow" if kind == SHADOW_ARM else "row")
            row = entry.get("row")
            if row is None:
                row = positions.get(position, 0)
            positions[position] = int(row) + 1
            (shadows if kind == SHADOW_ARM else rows).append(_flat(entry, row, kind == SHADOW_ARM))
    if not rows:
        if counts["single"]:
            raise ExperimentError(
                f"the prediction log {file} has no arms: its {counts['single']} rows were served "
                f"by one version (mode single). Serve two versions ({SERVE_AB}, or --mode shadow) "
                "with the log on, then judge that log"
            )
        raise ExperimentError(
            f"the prediction log {file} holds no predicted rows"
            + (f" ({counts['skipped_lines']} unreadable lines)" if counts["skipped_lines"] else "")
            + f": send the server traffic ({SERVE_AB}) first"
        )
    log = pd.DataFrame(rows)
    challenger_rows = int((log["arm"] == "challenger").sum())
    if shadows and challenger_rows:
        raise ExperimentError(
            f"the prediction log {file} mixes ab traffic ({challenger_rows} challenger rows) and "
            f"shadow answers ({len(shadows)}): the server changed mode while logging. Start a "
            "fresh log for each experiment (move the old file away, with its .1 ... copies)"
        )
    unmatched = 0
    if shadows:
        log, unmatched = _with_shadows(log, pd.DataFrame(shadows))
    log.attrs.update(
        mode=SHADOW if shadows else AB,
        skipped_lines=counts["skipped_lines"],
        rows_left_out=counts["rows_left_out"],
        single_rows=counts["single"],
        shadow_unmatched=unmatched,
        files=[str(f) for f in files],
    )
    return log


def _line_kind(entry: dict | None) -> str:
    """`row` (an arm's row), `shadow` (a shadow answer), `single` (a row without an arm),
    `summary` (a too-large request's count) or `skipped`."""
    if entry is None:
        return "skipped"
    arm = entry.get("arm")
    if isinstance(entry.get("inputs"), dict):
        if arm is None:
            return "single"
        return "row" if arm in ARMS else "skipped"
    if is_summary(entry):
        return "summary"
    if arm == SHADOW_ARM and "prediction" in entry:
        return SHADOW_ARM
    return "skipped"


def _flat(entry: dict, row: Any, shadow: bool) -> dict[str, Any]:
    """A log line as one flat record: inputs by their names, then the bookkeeping (which wins
    where an input has a bookkeeping field's name), the prediction and one column per class."""
    probabilities = entry.get("probabilities")
    probabilities = probabilities if isinstance(probabilities, dict) else {}
    if shadow:
        return {
            "request_id": entry.get("request_id"),
            "row": row,
            "shadow_model_version": _text(entry.get("model_version")),
            "shadow_latency_ms": entry.get("latency_ms"),
            "shadow_prediction": entry.get("prediction"),
            **{f"shadow_probability_{c}": p for c, p in probabilities.items()},
        }
    record = {**entry["inputs"], **{k: entry.get(k) for k in LOG_FIELDS}, "row": row}
    record["model_version"] = _text(record["model_version"])
    record["prediction"] = entry.get("prediction")
    return record | {f"probability_{c}": p for c, p in probabilities.items()}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _with_shadows(log: pd.DataFrame, shadows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The champion's rows with the shadow's answer on each (joined on request_id and row),
    and how many shadow answers found no row."""
    keys = {"log": _key_texts(log, ROW_KEY), "shadows": _key_texts(shadows, ROW_KEY)}
    shadows = shadows.assign(_key=keys["shadows"].to_numpy()).drop_duplicates("_key", keep="last")
    answers = shadows.drop(columns=ROW_KEY).set_index("_key")
    joined = log.join(answers, on=keys["log"].rename("_key"))
    unmatched = int((~answers.index.isin(keys["log"])).sum())
    return joined.reset_index(drop=True), unmatched


def read_outcomes(path: str, target: str) -> pd.DataFrame:
    """The true outcomes: a CSV or Parquet file of `request_id`, optionally `row` (the row's
    index within its request) and `target`."""
    from .monitoring import MonitoringError, read_table

    needed = f"columns request_id, row (when a request holds several rows) and {target!r}"
    if not path:
        raise ExperimentError(
            f"experiment.outcomes_path is empty: name the CSV or Parquet file of true outcomes "
            f"({needed})"
        )
    try:
        outcomes = read_table(path, "experiment.outcomes_path")
    except MonitoringError as error:
        raise ExperimentError(f"{error} ({needed})") from None
    _require_columns(outcomes, ["request_id", target], "the outcomes (experiment.outcomes_path)")
    return outcomes


def join_experiment(log: pd.DataFrame, outcomes: pd.DataFrame, target: str) -> pd.DataFrame:
    """The logged rows that have an outcome: joined on request_id and row, or on request_id
    alone when the outcomes have no `row` (then every request must hold one row)."""
    if "row" in outcomes.columns:
        return join_outcomes(log, outcomes, ROW_KEY, target)
    per_request = log.groupby(log["request_id"].astype(str))["row"].nunique()
    several = per_request[per_request > 1]
    if not several.empty:
        raise ExperimentError(
            f"the outcomes have no column 'row', but {len(several)} requests of the log hold "
            f"several rows (e.g. {several.index[0]!r}, {int(several.iloc[0])} rows): add `row`, "
            "the row's index within its request (0 for the first), so each outcome names one row"
        )
    return join_outcomes(log, outcomes, "request_id", target)


def shadow_arms(joined: pd.DataFrame) -> pd.DataFrame:
    """A shadow log as two arms on the same rows: the champion's answers (arm champion) and the
    shadow's (arm challenger), each with its outcome, for `arm_results` and `compare`."""
    _require_columns(joined, ["shadow_prediction"], "the shadow log")
    shadow_columns = [c for c in joined.columns if str(c).startswith("shadow_")]
    champion = joined.drop(columns=shadow_columns).assign(arm="champion")
    answered = joined[joined["shadow_prediction"].notna()]
    if answered.empty:
        raise ExperimentError("no row holds the shadow's answer: the shadow model scored nothing")
    renamed = {c: str(c).removeprefix("shadow_") for c in shadow_columns}
    # The champion's answer on these rows gives way to the shadow's.
    own = [c for c in answered.columns if str(c).startswith(PROBABILITY_PREFIXES)]
    replaced = [c for c in answered.columns if c in renamed.values() or c in own]
    challenger = answered.drop(columns=replaced).rename(columns=renamed).assign(arm="challenger")
    return pd.concat([champion, challenger], ignore_index=True)


def registered_versions(client, versions: dict[str, str], name: str) -> dict[str, Any]:
    """The registered ModelVersion of each arm; ExperimentError naming an unknown one."""
    from mlflow.exceptions import MlflowException

    found = {}
    for arm, version in versions.items():
        try:
            found[arm] = client.get_model_version(name, version)
        except MlflowException:
            raise ExperimentError(
                f"the log's {arm} arm was served by version {version or '(none)'} of {name!r}, "
                "which the registry does not hold: judge a log of this project's server"
            ) from None
    return found


def arm_versions(log: pd.DataFrame) -> dict[str, str]:
    """The version behind each arm ({"champion": "3", "challenger": "4"}), a shadow's as the
    challenger; ExperimentError when an arm holds several (the log spans a champion change)."""
    sources = {"champion": log[log["arm"] == "champion"]["model_version"]}
    if "shadow_model_version" in log.columns:
        sources["challenger"] = log["shadow_model_version"]
    else:
        sources["challenger"] = log[log["arm"] == "challenger"]["model_version"]
    versions = {}
    for arm, values in sources.items():
        held = sorted(values.dropna().astype(str).unique())
        if len(held) > 1:
            raise ExperimentError(
                f"the {arm} arm was served by versions {', '.join(held)}: the log spans a change "
                "of version. Start a fresh prediction log for each experiment"
            )
        versions[arm] = held[0] if held else ""
    return versions


# --- arms and predictions -----------------------------------------------------------------------


def arm_frames(joined: pd.DataFrame, plan: ExperimentPlan) -> dict[str, pd.DataFrame]:
    """The joined rows of each arm; ExperimentError unless both arms and nothing else are there."""
    if "arm" not in joined.columns:
        raise ExperimentError(
            "the log has no arms (no column 'arm'): serve with SERVING_MODE=ab so each request "
            "goes to the champion or the challenger"
        )
    _require_columns(joined, ["prediction", plan.target], "the joined rows")
    arms = joined["arm"].astype(str)
    seen = set(arms.unique())
    unknown = sorted(seen - set(ARMS))
    if unknown:
        raise ExperimentError(f"unknown arms {unknown}: the arms are {list(ARMS)}")
    present = [arm for arm in ARMS if arm in seen]
    if len(present) < 2:
        only = present[0] if present else "no"
        raise ExperimentError(
            f"only {only} rows have outcomes: both arms need traffic and outcomes; check the "
            "challenger's share of traffic (SERVING_MODE=ab) and wait for more outcomes"
        )
    return {arm: joined[(arms == arm).to_numpy()].reset_index(drop=True) for arm in ARMS}


def predictions(frame: pd.DataFrame, plan: ExperimentPlan) -> Predictions:
    """The logged predictions beside the outcomes, in evaluation's form. Class labels are text,
    so a label logged as 1 and an outcome read as "1" are one class; `probability_<class>` (or
    `probabilities.<class>`) columns, where logged, give the class probabilities."""
    if plan.task == "regression":
        truth = pd.to_numeric(frame[plan.target], errors="coerce").to_numpy(float)
        return Predictions(truth, pd.to_numeric(frame["prediction"]).to_numpy(float))
    prefix = next(
        (p for p in PROBABILITY_PREFIXES if any(str(c).startswith(p) for c in frame.columns)), ""
    )
    # Sorted by label: scikit-learn's log loss takes the columns to be in sorted order.
    columns = sorted(c for c in frame.columns if prefix and str(c).startswith(prefix))
    truth, predicted = label_texts(frame[plan.target]), label_texts(frame["prediction"])
    classes = [str(c)[len(prefix) :] for c in columns]
    classes = classes or sorted(set(truth) | set(predicted))
    proba = frame[columns].to_numpy(float) if columns else None
    if proba is not None and np.isnan(proba).all():
        proba = None  # none of these rows was logged with probabilities (another arm's were)
    return Predictions(truth, predicted, proba, classes)


PROBABILITY_METRICS = ("roc_auc", "log_loss")  # what evaluation computes from probabilities
SERVE_AGAIN = "serve again with the current runtime, which logs them on every row of both arms"


def check_probabilities(name: str, preds: Predictions, where: str) -> None:
    """ExperimentError when `name` needs probabilities and some rows were logged without them
    (a log from an older server): the metric on the other rows alone could favour an arm, so the
    rows are not judged; the message counts them and names both ways out."""
    if name not in PROBABILITY_METRICS or preds.proba is None:
        return
    missing = int(np.isnan(preds.proba).any(axis=1).sum())
    if missing:
        raise ExperimentError(
            f"{missing:,} of the {where}'s {len(preds.proba):,} rows were logged without class "
            f"probabilities (probability_<class>), which {name} needs: {SERVE_AGAIN} and judge "
            "that log, or judge this one on a metric that needs no probabilities "
            "(--set use_case.metric=accuracy)"
        )


def positive_of(preds: Predictions, plan: ExperimentPlan) -> Any:
    if plan.task != "classification":
        return None
    try:
        return evaluation.positive_label(preds.classes, plan.positive_class)
    except evaluation.EvaluationError as error:
        raise ExperimentError(str(error)) from None


# --- per-row values and the bootstrap -------------------------------------------------------------


def per_row_loss(name: str, preds: Predictions) -> np.ndarray | None:
    """The per-row values whose mean is the metric (RMSE: before the square root), or None for
    a metric that is no mean of rows (ROC AUC, R², F1 ...)."""
    y, p = preds.y_true, preds.y_pred
    if name == "accuracy":
        return (y == p).astype(float)
    if name == "mae":
        return np.abs(y - p)
    if name == "rmse":
        return (y - p) ** 2
    if name == "mape":
        return np.abs(y - p) / np.maximum(np.abs(y), np.finfo(float).eps)
    if name == "log_loss" and preds.proba is not None:
        column = pd.Index(preds.classes).get_indexer(y)
        proba = preds.proba / preds.proba.sum(axis=1, keepdims=True)
        chosen = np.where(column >= 0, proba[np.arange(len(y)), column], 0.0)
        return -np.log(np.clip(chosen, np.finfo(float).eps, 1.0))
    return None


def row_costs(preds: Predictions, positive: Any, costs: dict[str, float]) -> np.ndarray:
    """Each row's error cost, as evaluation.business_cost counts it."""
    actual, flagged = preds.y_true == positive, preds.y_pred == positive
    false_positive, false_negative = flagged & ~actual, ~flagged & actual
    return false_positive * costs.get("false_positive", 0.0) + false_negative * costs.get(
        "false_negative", 0.0
    )


CLUSTER_COLUMNS = ("routing_key", "request_id")  # what names a unit of assignment, first found


def clusters_of(frame: pd.DataFrame) -> np.ndarray | None:
    """Each row's unit of assignment as a code 0, 1, ...: the rows that went to an arm together
    (all rows of a request; with a routing column, all requests of its value, when the log holds
    it as `routing_key`). None when every unit holds one row: then rows are independent."""
    column = next((c for c in CLUSTER_COLUMNS if c in frame.columns), None)
    if column is None or frame.empty:
        return None
    codes, _ = pd.factorize(pd.Series(label_texts(frame[column]), index=frame.index))
    unknown = frame[column].isna().to_numpy()  # a row without an id is a unit of its own
    codes[unknown] = codes.max() + 1 + np.arange(int(unknown.sum()))
    return codes if np.bincount(codes).max() > 1 else None


def bootstrap_means(
    values: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
    clusters: np.ndarray | None = None,
) -> np.ndarray:
    """Means of `resamples` resamples of `values`, drawn in chunks so memory stays bounded.
    With `clusters` (clusters_of), whole clusters are drawn: each mean is the drawn clusters'
    sum over their rows."""
    if clusters is None:
        sums, sizes = np.asarray(values, float), None
    else:
        sums, sizes = np.bincount(clusters, weights=values), np.bincount(clusters)
    n = len(sums)
    chunk = max(1, BOOTSTRAP_CELLS // max(n, 1))
    parts = []
    for start in range(0, resamples, chunk):
        drawn = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        if sizes is None:
            parts.append(sums[drawn].mean(axis=1))
        else:
            parts.append(sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1))
    return np.concatenate(parts)


def resampled_rows(clusters: np.ndarray | None, rows: int, rng: np.random.Generator) -> np.ndarray:
    """The row indices of one resample: `rows` rows drawn, or as many clusters with all rows."""
    if clusters is None:
        return rng.integers(0, rows, rows)
    order = np.argsort(clusters, kind="stable")
    sizes = np.bincount(clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    drawn = rng.integers(0, len(sizes), len(sizes))
    lengths = sizes[drawn]
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return order[np.repeat(starts[drawn], lengths) + offsets]


def bootstrap_metric(
    name: str,
    preds: Predictions,
    positive: Any,
    resamples: int,
    rng: np.random.Generator,
    clusters: np.ndarray | None = None,
) -> np.ndarray:
    """The metric on `resamples` resamples of the rows, or of whole `clusters` (NaN where
    undefined on one)."""
    loss = per_row_loss(name, preds)
    if loss is not None:
        means = bootstrap_means(loss, resamples, rng, clusters)
        return np.sqrt(means) if name == "rmse" else means
    n = len(preds.y_true)
    if name == "roc_auc" and len(preds.classes) == 2 and preds.proba is not None:
        column = preds.classes.index(preds.classes[1] if positive is None else positive)
        truth, scores = preds.y_true == preds.classes[column], preds.proba[:, column]
        return np.array(
            [binary_auc(truth[rows], scores[rows])
             for rows in (resampled_rows(clusters, n, rng) for _ in range(resamples))]
        )  # fmt: skip
    return np.array(
        [
            evaluation.metric_value(name, preds.subset(resampled_rows(clusters, n, rng)), positive)
            for _ in range(resamples)
        ]
    )


def binary_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC from ranks (the Mann-Whitney statistic, ties counted half), as scikit-learn's
    roc_auc_score computes it, at a tenth of its cost per call: the bootstrap calls it thousands of
    times. NaN when one class is absent."""
    positives = int(np.count_nonzero(truth))
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass(frozen=True)
class Estimate:
    """A value with its confidence interval and standard error."""

    value: float
    low: float
    high: float
    se: float
    method: str
    rows: int
    successes: int = 0  # correct rows, for a proportion


def from_replicates(
    value: float, replicates: np.ndarray, confidence: float, rows: int, method: str = "bootstrap"
) -> Estimate:
    tail = (1 - confidence) / 2 * 100
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < 2:
        return Estimate(value, math.nan, math.nan, math.nan, method, rows)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Estimate(value, float(low), float(high), float(np.std(finite, ddof=1)), method, rows)


def bootstrap_method(clusters: np.ndarray | None) -> str:
    if clusters is None:
        return "bootstrap"
    return f"cluster bootstrap ({int(clusters.max()) + 1:,} requests resampled whole)"


def proportion_estimate(successes: int, rows: int, confidence: float) -> Estimate:
    share = successes / rows
    low, high = wilson_interval(successes, rows, confidence)
    se = math.sqrt(share * (1 - share) / rows)
    return Estimate(share, low, high, se, "Wilson", rows, successes)


def wilson_interval(successes: int, rows: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval (scipy's binomtest gives the same, with an exact test we need
    not pay for at every look)."""
    z = stats.norm.isf((1 - confidence) / 2)
    share, weight = successes / rows, z * z / rows
    centre = (share + weight / 2) / (1 + weight)
    half = z / (1 + weight) * math.sqrt(share * (1 - share) / rows + weight / (4 * rows))
    return max(0.0, centre - half), min(1.0, centre + half)


def metric_estimate(
    name: str,
    preds: Predictions,
    positive: Any,
    confidence: float,
    resamples: int,
    rng: np.random.Generator,
    clusters: np.ndarray | None = None,
    where: str = "arm",
) -> tuple[Estimate, str]:
    """The metric on these rows with its interval, and "" or why it is undefined here. Wilson's
    interval for accuracy on independent rows; with `clusters` (rows that went to the arm
    together), and for every other metric, a bootstrap."""
    rows = len(preds.y_true)
    reason = evaluation.undefined_reason(name, preds, positive)
    if reason:
        return Estimate(math.nan, math.nan, math.nan, math.nan, "", rows), reason
    check_probabilities(name, preds, where)
    if name in PROPORTIONS and clusters is None:
        correct = int(np.sum(preds.y_true == preds.y_pred))
        return proportion_estimate(correct, rows, confidence), ""
    value = evaluation.metric_value(name, preds, positive)
    replicates = bootstrap_metric(name, preds, positive, resamples, rng, clusters)
    return from_replicates(value, replicates, confidence, rows, bootstrap_method(clusters)), ""


def cost_estimate(
    preds: Predictions,
    positive: Any,
    costs: dict[str, float],
    confidence: float,
    resamples: int,
    rng: np.random.Generator,
    clusters: np.ndarray | None = None,
) -> Estimate:
    values = row_costs(preds, positive, costs)
    replicates = bootstrap_means(values, resamples, rng, clusters)
    method = bootstrap_method(clusters)
    return from_replicates(float(values.mean()), replicates, confidence, len(values), method)


# --- per-arm results -----------------------------------------------------------------------------


def arm_results(
    joined: pd.DataFrame,
    plan: ExperimentPlan,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per arm (segment "all"), then per arm and group of each of `plan.segments`: rows,
    the metric with its `confidence` interval (Wilson for accuracy, else bootstrap), its status
    ("defined" or "undefined: <why>"), and with error costs the cost per row and its interval.
    Segment groups are cut as 04 cuts them (quartiles of a many-valued number)."""
    frames = arm_frames(joined, plan)
    groups = segment_labels(joined, plan.segments)
    rng = np.random.default_rng(seed)
    rows = []
    for arm, frame in frames.items():
        arm_groups = groups[(joined["arm"].astype(str) == arm).to_numpy()].reset_index(drop=True)
        rows.append(arm_row(arm, "all", "all", frame, plan, confidence, resamples, rng))
        for segment in plan.segments:
            for group in sorted(arm_groups[segment].unique()):
                part = frame[(arm_groups[segment] == group).to_numpy()]
                rows.append(arm_row(arm, segment, group, part, plan, confidence, resamples, rng))
    table = pd.DataFrame(rows)
    overall = table[table["segment"] == "all"]
    undefined = overall[overall["status"] != "defined"]
    if not undefined.empty:
        first = undefined.iloc[0]
        raise ExperimentError(
            f"{plan.metric.name} is {first['status']} for the {first['arm']}: log the class "
            "probabilities (probability_<class>) or choose a metric the rows can give"
        )
    return table


def segment_labels(joined: pd.DataFrame, segments: list[str]) -> pd.DataFrame:
    """Each row's group in each segment column, cut over both arms so the groups match."""
    try:
        labels = {c: evaluation.segment_groups(joined, c, "segments") for c in segments}
    except evaluation.EvaluationError as error:
        raise ExperimentError(str(error)) from None
    return pd.DataFrame(labels, index=joined.index).reset_index(drop=True)


def arm_row(
    arm: str,
    segment: str,
    group: str,
    frame: pd.DataFrame,
    plan: ExperimentPlan,
    confidence: float,
    resamples: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    preds = predictions(frame, plan)
    positive = positive_of(preds, plan)
    name = plan.metric.name
    clusters = clusters_of(frame)
    where = arm if segment == "all" else f"{arm} in {segment} {group}"
    estimate, reason = metric_estimate(
        name, preds, positive, confidence, resamples, rng, clusters, where
    )
    versions = ", ".join(sorted(frame.get("model_version", pd.Series()).astype(str).unique()))
    row = {
        "arm": arm,
        "model_version": versions,
        "segment": segment,
        "group": group,
        "rows": len(frame),
        name: estimate.value,
        "ci_low": estimate.low,
        "ci_high": estimate.high,
        "ci_method": estimate.method,
        "status": f"undefined: {reason}" if reason else "defined",
    }
    if plan.error_costs:
        if positive is None:
            raise ExperimentError(
                "error_costs need a positive class: set positive_class (use_case.positive_class)"
            )
        cost = cost_estimate(
            preds, positive, plan.error_costs, confidence, resamples, rng, clusters
        )
        row |= {"cost_per_row": cost.value, "cost_ci_low": cost.low, "cost_ci_high": cost.high}
    return row


# --- comparing the arms --------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Challenger - champion on the plan's metric, tested at the corrected level."""

    metric: str
    greater_is_better: bool
    champion: float
    challenger: float
    difference: float  # challenger - champion, in the metric's units
    ci_low: float  # of the difference, at 1 - alpha_per_look
    ci_high: float
    z: float
    p_value: float  # two-sided
    alpha_per_look: float
    test: str
    n_champion: int
    n_challenger: int
    per_row_sd: float  # the per-row standard deviation the sample size formula uses

    @property
    def improvement(self) -> float:
        """The difference signed so that positive means the challenger is better."""
        return self.difference if self.greater_is_better else -self.difference

    @property
    def improvement_interval(self) -> tuple[float, float]:
        if self.greater_is_better:
            return self.ci_low, self.ci_high
        return -self.ci_high, -self.ci_low

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha_per_look


def compare(
    joined: pd.DataFrame, plan: ExperimentPlan, resamples: int = RESAMPLES, seed: int = 0
) -> Comparison:
    """The challenger against the champion on `plan.metric`: the difference, its interval at the
    corrected level alpha / looks, and the p-value of the test suited to the metric (the
    two-proportion z-test for accuracy on independent rows, a bootstrap z-test otherwise, whole
    requests resampled when a request holds several rows)."""
    rng = np.random.default_rng(seed)
    estimates = {}
    for arm, frame in arm_frames(joined, plan).items():
        preds = predictions(frame, plan)
        positive = positive_of(preds, plan)
        estimate, reason = metric_estimate(
            plan.metric.name, preds, positive, 0.95, resamples, rng, clusters_of(frame), arm
        )
        if reason:
            raise ExperimentError(
                f"{plan.metric.name} is undefined for the {arm} ({reason}): log the class "
                "probabilities (probability_<class>) or choose a metric the rows can give"
            )
        estimates[arm] = estimate
    champion, challenger = estimates["champion"], estimates["challenger"]
    if champion.method == challenger.method == "Wilson":
        return proportion_comparison(champion, challenger, plan)
    return bootstrap_comparison(champion, challenger, plan, resamples)


TWO_PROPORTION = "two-proportion z-test"


def proportion_comparison(champion: Estimate, challenger: Estimate, plan: ExperimentPlan):
    """The two-proportion z-test: pooled standard error for the test (no difference assumed),
    unpooled for the interval (the difference as observed)."""
    n1, n2 = champion.rows, challenger.rows
    pooled = (champion.successes + challenger.successes) / (n1 + n2)
    se_test = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    se_interval = math.hypot(champion.se, challenger.se)
    test = TWO_PROPORTION
    per_row_sd = math.sqrt(champion.value * (1 - champion.value))  # a correct row's spread
    return comparison(champion, challenger, plan, se_test, se_interval, test, per_row_sd)


def bootstrap_comparison(
    champion: Estimate, challenger: Estimate, plan: ExperimentPlan, resamples: int
) -> Comparison:
    """A z-test with the bootstrap standard errors of the independently resampled arms."""
    se = math.hypot(champion.se, challenger.se)
    # Per-row standard deviation implied by each standard error (se = sd / sqrt(rows)), averaged
    # over the arms as variances: for a mean like MAE it is the per-row error's standard deviation;
    # resampled by request, it carries the clustering too (the design effect), and so the rows
    # needed do.
    variance = (champion.se**2 * champion.rows + challenger.se**2 * challenger.rows) / 2
    clustered = [e.method for e in (champion, challenger) if e.method.startswith("cluster")]
    if clustered:
        test = (
            f"bootstrap z-test, whole requests resampled ({resamples} resamples per arm): rows "
            "of a request went to one arm together, so they are not independent"
        )
    else:
        test = f"bootstrap z-test ({resamples} resamples per arm)"
    return comparison(champion, challenger, plan, se, se, test, math.sqrt(variance))


def comparison(
    champion: Estimate,
    challenger: Estimate,
    plan: ExperimentPlan,
    se_test: float,
    se_interval: float,
    test: str,
    per_row_sd: float,
) -> Comparison:
    difference = challenger.value - champion.value
    z = difference / se_test if se_test > 0 else 0.0
    critical = stats.norm.isf(plan.alpha_per_look / 2)
    return Comparison(
        metric=plan.metric.name,
        greater_is_better=plan.metric.greater_is_better,
        champion=champion.value,
        challenger=challenger.value,
        difference=difference,
        ci_low=difference - critical * se_interval,
        ci_high=difference + critical * se_interval,
        z=z,
        p_value=float(2 * stats.norm.sf(abs(z))),
        alpha_per_look=plan.alpha_per_look,
        test=test,
        n_champion=champion.rows,
        n_challenger=challenger.rows,
        per_row_sd=per_row_sd,
    )


# --- sample size ---------------------------------------------------------------------------------


def required_sample_size(
    metric: Metric | str,
    baseline_value: float,
    minimum_detectable_effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    share: float = 0.5,
    per_row_sd: float | None = None,
    looks: int = 1,
    proportion: bool = True,
) -> dict[str, int]:
    """Rows per arm ({"champion": n, "challenger": n}) to detect an improvement of
    `minimum_detectable_effect` over `baseline_value` with `power`, two-sided at alpha / looks,
    the challenger getting `share` of the traffic. Accuracy: the two-proportion formula (unless
    `proportion` is False: rows in clusters, judged by the cluster bootstrap). Other metrics: the
    normal formula with `per_row_sd`, the per-row standard deviation of the metric
    (Comparison.per_row_sd: for MAE, of the absolute errors)."""
    metric = metric if isinstance(metric, Metric) else METRICS[metric]
    if not 0 < share < 1:
        raise ExperimentError(
            f"share {share} is outside (0, 1): give the challenger's share of the traffic, "
            "above 0 and below 1 (each arm needs some)"
        )
    if minimum_detectable_effect <= 0:
        raise ExperimentError("minimum_detectable_effect must be above 0")
    z_alpha, z_power = stats.norm.isf(alpha / looks / 2), stats.norm.ppf(power)
    spread = 1 / share + 1 / (1 - share)  # the difference's variance, times all rows, per unit
    if metric.name in PROPORTIONS and proportion:
        total = proportion_rows(baseline_value, minimum_detectable_effect, share, z_alpha, z_power)
    else:
        if per_row_sd is None or not per_row_sd >= 0:  # NaN fails too
            raise ExperimentError(
                f"{metric.name} needs per_row_sd, the per-row standard deviation of the metric "
                "(compare() measures it as Comparison.per_row_sd)"
            )
        total = (z_alpha + z_power) ** 2 * per_row_sd**2 * spread / minimum_detectable_effect**2
    return {"champion": math.ceil((1 - share) * total), "challenger": math.ceil(share * total)}


def proportion_rows(
    baseline: float, effect: float, share: float, z_alpha: float, z_power: float
) -> float:
    """All rows the two-proportion test needs: pooled variance under no difference, each arm's
    own under the improvement. Proportions are kept within PROPORTION_EDGE of 0 and 1: a champion
    at 0.99 with an effect of 0.02 leaves room for 0.009 at most, and the rows are those that
    detect a move to 0.999 (`headroom` says so in the reasons)."""
    baseline = min(max(baseline, PROPORTION_EDGE), 1 - 2 * PROPORTION_EDGE)
    improved = min(baseline + effect, 1 - PROPORTION_EDGE)
    effect = improved - baseline
    pooled = (1 - share) * baseline + share * improved
    null = z_alpha * math.sqrt(pooled * (1 - pooled) * (1 / share + 1 / (1 - share)))
    alternative = z_power * math.sqrt(
        baseline * (1 - baseline) / (1 - share) + improved * (1 - improved) / share
    )
    return (null + alternative) ** 2 / effect**2


# --- the decision --------------------------------------------------------------------------------

ACTIONS = ("promote", "keep", "continue")


@dataclass(frozen=True)
class Decision:
    action: str  # promote, keep or continue
    reasons: list[str]
    comparison: Comparison
    required: dict[str, int]  # rows per arm needed
    reached: bool  # whether both arms have them
    look: int | None = None  # which look at these two versions this is (1 the first)


def decide(
    comparison: Comparison,
    plan: ExperimentPlan,
    share: float | None = None,
    look: int | None = None,
) -> Decision:
    """Promote, keep or continue, with the reasons as sentences (see the module's docstring).
    `share` is the challenger's planned share of traffic; by default the observed one. `look` is
    this look's number (`look_number`): past `plan.looks` the decision is continue, since the
    correction no longer holds."""
    c = comparison
    observed = c.n_challenger / (c.n_champion + c.n_challenger)
    share = observed if share is None else share
    required = required_sample_size(
        plan.metric,
        c.champion,
        plan.minimum_detectable_effect,
        plan.alpha,
        plan.power,
        share,
        c.per_row_sd,
        plan.looks,
        proportion=c.test == TWO_PROPORTION,
    )
    reached = c.n_champion >= required["champion"] and c.n_challenger >= required["challenger"]
    action, verdict = action_for(c, plan, reached)
    if look is not None and look > plan.looks:
        action, verdict = (
            "continue",
            (
                f"continue: this is look {look} at these two versions, past the {plan.looks} planned "
                f"(experiment.looks), so the correction no longer bounds the chance of a false "
                f"finding (it would have said: {verdict}). Raise experiment.looks before looking "
                "again, or start a new experiment (a new challenger version)"
            ),
        )
    reasons = [
        measured(c),
        correction(plan, look),
        sample(c, required, plan) + headroom(c, plan),
        verdict,
    ]
    return Decision(action, reasons, c, required, reached, look)


def action_for(c: Comparison, plan: ExperimentPlan, reached: bool) -> tuple[str, str]:
    low, high = c.improvement_interval
    effect = plan.minimum_detectable_effect
    if min(c.n_champion, c.n_challenger) < MIN_ROWS_PER_ARM:
        return "continue", (
            f"continue: fewer than {MIN_ROWS_PER_ARM} rows in an arm, too few to test"
        )
    if c.significant and c.improvement > 0:
        return "promote", (
            f"promote: the challenger is better (p = {c.p_value:.2g} < {c.alpha_per_look:.3g})"
        )
    if c.significant:
        return "keep", (
            f"keep: the champion is better (p = {c.p_value:.2g} < {c.alpha_per_look:.3g})"
        )
    if reached and high < effect:
        return "keep", (
            f"keep: with the rows needed, the challenger's improvement is at most {high:+.4g}, "
            f"below the minimum detectable effect {effect:g}: more traffic would not show a "
            "worthwhile gain"
        )
    why = "the rows needed are not reached yet" if not reached else "the result is inconclusive"
    return "continue", (
        f"continue: {why}; the improvement's interval {low:+.4g} to {high:+.4g} holds both no "
        f"difference and the minimum detectable effect {effect:g}"
    )


def measured(c: Comparison) -> str:
    level = 1 - c.alpha_per_look
    return (
        f"{c.metric}: challenger {c.challenger:.4g} against champion {c.champion:.4g} on "
        f"{c.n_challenger:,} and {c.n_champion:,} rows; difference {c.difference:+.4g} "
        f"({level:.1%} interval {c.ci_low:+.4g} to {c.ci_high:+.4g}), p = {c.p_value:.2g} "
        f"({c.test})"
    )


def correction(plan: ExperimentPlan, look: int | None = None) -> str:
    counted = "" if look is None else f"look {look} of {plan.looks}; "
    if plan.looks == 1:
        return (
            f"{counted}one planned look: the test is at alpha {plan.alpha:g}; looking again as "
            "traffic accrues would raise the chance of a false promotion, so set looks first"
        )
    return (
        f"{counted}peeking: alpha {plan.alpha:g} is split over {plan.looks} planned looks "
        f"(Bonferroni), each testing at {plan.alpha_per_look:.3g}, so {plan.looks} looks together "
        f"keep the chance of a false finding below {plan.alpha:g}; raise looks before looking "
        "more often"
    )


def headroom(c: Comparison, plan: ExperimentPlan) -> str:
    """For a proportion too near 1 to improve by the whole effect: what the rows are for."""
    if c.test != TWO_PROPORTION or c.champion + plan.minimum_detectable_effect < 1:
        return ""
    return (
        f" (the champion's {c.champion:.4g} leaves less than {plan.minimum_detectable_effect:g} "
        f"to gain: the rows are those that detect a move to {1 - PROPORTION_EDGE:g})"
    )


def sample(c: Comparison, required: dict[str, int], plan: ExperimentPlan) -> str:
    return (
        f"sample: {c.n_champion:,} champion and {c.n_challenger:,} challenger rows of the "
        f"{required['champion']:,} and {required['challenger']:,} needed to detect "
        f"{plan.minimum_detectable_effect:g} in {c.metric} with power {plan.power:g}"
    )


# --- shadow mode ---------------------------------------------------------------------------------


def shadow_agreement(log: pd.DataFrame, task: str, tolerance: float = 0.0) -> dict[str, Any]:
    """How far a shadow challenger agrees with the champion on the same rows, and their latency.

    Classification: `agreement`, the share of rows where both predict the same class.
    Regression: `mean_abs_difference`, `max_abs_difference` and `within_tolerance`, the share
    of rows whose predictions differ by at most `tolerance`. Always `rows`, `compared` (rows with
    both predictions), and `latency_ms` per version (p50, p90, p99) where the log has it.
    """
    if "shadow_prediction" not in log.columns:
        raise ExperimentError(
            "the log has no shadow_prediction column: serve with SERVING_MODE=shadow so the "
            "challenger scores the champion's rows"
        )
    metric_for("accuracy" if task == "classification" else "mae", task)  # checks the task
    both = log.dropna(subset=["prediction", "shadow_prediction"])
    if both.empty:
        raise ExperimentError("no row holds both predictions: the shadow model scored nothing")
    result: dict[str, Any] = {"rows": len(log), "compared": len(both)}
    if task == "classification":
        same = label_texts(both["prediction"]) == label_texts(both["shadow_prediction"])
        result["agreement"] = float(same.mean())
    else:
        gap = (pd.to_numeric(both["prediction"]) - pd.to_numeric(both["shadow_prediction"])).abs()
        result |= {
            "mean_abs_difference": float(gap.mean()),
            "max_abs_difference": float(gap.max()),
            "within_tolerance": float((gap <= tolerance).mean()),
            "tolerance": tolerance,
        }
    result["latency_ms"] = latencies(log)
    return result


def latencies(log: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Latency percentiles of the champion and the shadow challenger, with their versions."""
    sources = {
        "champion": ("latency_ms", "model_version"),
        "challenger": ("shadow_latency_ms", "shadow_model_version"),
    }
    found = {}
    for role, (column, version) in sources.items():
        if column not in log.columns or log[column].dropna().empty:
            continue
        row: dict[str, Any] = percentiles(log[column])
        if version in log.columns:
            row["version"] = ", ".join(sorted(log[version].dropna().astype(str).unique()))
        found[role] = row
    return found


def percentiles(values: pd.Series) -> dict[str, float]:
    """LATENCY_PERCENTILES of `values` ({"p50": ..., ...}), missing values left out."""
    numbers = pd.to_numeric(values).dropna().to_numpy(float)
    return {f"p{q}": float(np.percentile(numbers, q)) for q in LATENCY_PERCENTILES}


def latencies_by_arm(log: pd.DataFrame) -> pd.DataFrame:
    """Latency percentiles (LATENCY_PERCENTILES) of each arm of an `ab` log, by arm and version."""
    _require_columns(log, ["arm", "model_version", "latency_ms"], "the log")
    timed = log.dropna(subset=["latency_ms"])
    groups = timed.groupby(["arm", "model_version"])["latency_ms"]
    return pd.DataFrame({key: percentiles(values) for key, values in groups}).T.rename_axis(
        ["arm", "model_version"]
    )


# --- per-segment comparisons ---------------------------------------------------------------------


def segment_comparisons(
    joined: pd.DataFrame, plan: ExperimentPlan, resamples: int = RESAMPLES, seed: int = 0
) -> pd.DataFrame:
    """Challenger - champion within each group of each of `plan.segments`, at the corrected
    level: the rows of each arm, both values, the difference with its interval, the p-value and
    what it says. Descriptive: the decision rests on all rows, and with many groups one of them
    differs by chance. A group with fewer than MIN_ROWS_PER_ARM rows in an arm is not tested."""
    columns = ["segment", "group", "rows_champion", "rows_challenger", "champion", "challenger",
               "difference", "ci_low", "ci_high", "p_value", "status"]  # fmt: skip
    if not plan.segments:
        return pd.DataFrame(columns=columns)
    arm_frames(joined, plan)  # both arms, nothing else
    groups = segment_labels(joined, plan.segments)
    arms = joined["arm"].astype(str).to_numpy()
    rows = []
    for segment in plan.segments:
        for group in sorted(groups[segment].unique()):
            inside = (groups[segment] == group).to_numpy()
            sizes = {arm: int((inside & (arms == arm)).sum()) for arm in ARMS}
            row = {"segment": segment, "group": group, "rows_champion": sizes["champion"],
                   "rows_challenger": sizes["challenger"]}  # fmt: skip
            if min(sizes.values()) < MIN_ROWS_PER_ARM:
                rows.append(
                    row | {"status": f"not tested: under {MIN_ROWS_PER_ARM} rows in an arm"}
                )
                continue
            try:
                c = compare(joined[inside].reset_index(drop=True), plan, resamples, seed)
            except ExperimentError as error:
                rows.append(row | {"status": f"not tested: {error}"})
                continue
            status = "no significant difference"
            if c.significant:
                status = "challenger better" if c.improvement > 0 else "champion better"
            rows.append(row | {"champion": c.champion, "challenger": c.challenger,
                               "difference": c.difference, "ci_low": c.ci_low,
                               "ci_high": c.ci_high, "p_value": c.p_value, "status": status})  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


# --- the decision on record, and promotion -------------------------------------------------------

# The exit status of `experiment` for each action. 0 only for promote, so a scheduler can chain
# `experiment && promote`; continue is 3 (come back with more traffic), keep 4 (stop the
# experiment, the champion stays); 1 is an error and 2 wrong usage, as for `monitor`.
EXIT_CODES = {"promote": 0, "continue": 3, "keep": 4}
DECISION_FILE = "experiment.json"  # in the run folder for `experiment`, and on the MLflow run
KIND = "experiment"  # the `kind` tag of the runs `experiment` makes


def decision_record(
    decision: Decision,
    plan: ExperimentPlan,
    versions: dict[str, str],
    mode: str,
    model: str,
    agreement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The decision as plain data: what `promote` reads, and what experiment.json holds."""
    record = {
        "action": decision.action,
        "exit_code": EXIT_CODES[decision.action],
        "reasons": list(decision.reasons),
        "model_name": model,
        "champion_version": versions.get("champion", ""),
        "challenger_version": versions.get("challenger", ""),
        "mode": mode,
        "metric": plan.metric.name,
        "minimum_detectable_effect": plan.minimum_detectable_effect,
        "alpha": plan.alpha,
        "power": plan.power,
        "looks": plan.looks,
        "alpha_per_look": plan.alpha_per_look,
        "required_rows": dict(decision.required),
        "rows_reached": decision.reached,
        "look": decision.look,
        "comparison": asdict(decision.comparison) if decision.comparison else None,
    }
    if agreement is not None:
        record["shadow"] = agreement
    return json.loads(json.dumps(record, default=_plain))  # numpy numbers as plain ones


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def no_outcomes_record(
    plan: ExperimentPlan, versions: dict[str, str], mode: str, model: str, agreement: dict
) -> dict[str, Any]:
    """A shadow experiment before any outcome arrived: agreement and latency, decision continue."""
    reason = (
        "continue: no outcomes yet (experiment.outcomes_path is empty), so neither version's "
        f"{plan.metric.name} is known; agreement and latency are reported"
    )
    empty = Decision("continue", [reason], None, {}, False)  # type: ignore[arg-type]
    return decision_record(empty, plan, versions, mode, model, agreement)


def write_decision(record: dict[str, Any], folder: Path) -> Path:
    return project.write_run_file(record, folder, DECISION_FILE)


def read_decision(folder: Path) -> dict[str, Any]:
    """What an experiment run left in its folder; ExperimentError when it left nothing."""
    return project.read_run_file(folder, DECISION_FILE, ExperimentError, "experiment")


def log_decision(record: dict[str, Any], run_id: str, client) -> None:
    """The decision on the MLflow run: tags naming both versions, metrics and experiment.json."""
    comparison = record.get("comparison") or {}
    tags = {
        "model_name": record["model_name"],
        "champion_version": record["champion_version"],
        "challenger_version": record["challenger_version"],
        "experiment.decision": record["action"],
        "experiment.mode": record["mode"],
        "experiment.metric": record["metric"],
    }
    if record.get("look") is not None:
        tags["experiment.look"] = record["look"]
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    metrics = {"exit_code": record["exit_code"]}
    for name in ("n_champion", "n_challenger", "difference", "p_value", "ci_low", "ci_high"):
        value = comparison.get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            metrics[name] = float(value)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_dict(run_id, record, DECISION_FILE)


def link_to_versions(record: dict[str, Any], run_id: str, client) -> None:
    """On each version, the newest experiment it took part in: the run, its role, the decision."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for role in ARMS:
        version = record[f"{role}_version"]
        if not version:
            continue
        tags = {"experiment_run_id": run_id, "experiment_role": role,
                "experiment_decision": record["action"], "experiment_at": now}  # fmt: skip
        for key, value in tags.items():
            client.set_model_version_tag(record["model_name"], version, key, value)


def look_number(client, experiment_id: str, model: str, versions: dict[str, str]) -> int:
    """Which look at these two versions this is: 1 + the finished `experiment` runs of the same
    model, champion and challenger versions that tested them (logged a p-value)."""
    query = (
        f"tags.kind = '{KIND}' and attributes.status = 'FINISHED' and "
        f"tags.model_name = '{model}' and "
        f"tags.champion_version = '{versions.get('champion', '')}' and "
        f"tags.challenger_version = '{versions.get('challenger', '')}'"
    )
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return 1 + sum("p_value" in run.data.metrics for run in runs)


def newest_decision(client, experiment_id: str) -> tuple[str, dict[str, Any]]:
    """The newest finished `experiment` run and its decision; ExperimentError when there is none."""
    found = client.search_runs(
        [experiment_id],
        f"tags.kind = '{KIND}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        raise ExperimentError("no finished experiment run: run `make experiment` first")
    run_id = found[0].info.run_id
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run_id, DECISION_FILE, scratch)
        except Exception as error:  # noqa: BLE001 (any store's failure: say which run)
            raise ExperimentError(
                f"the newest experiment run {run_id} has no readable {DECISION_FILE} ({error}): "
                "run `make experiment` again"
            ) from None
        return run_id, json.loads(Path(path).read_text())


@dataclass(frozen=True)
class Promotion:
    run_id: str
    action: str
    forced: bool
    move: Any  # registry.Move
    again: str = ""  # the version this experiment had promoted before, when forced again

    def lines(self) -> list[str]:
        said = [str(self.move)]
        if self.forced:
            why = (
                f"the experiment ({self.run_id}) already promoted version {self.again} once"
                if self.again
                else f"the experiment ({self.run_id}) decided {self.action}, not promote"
            )
            said.append(f"forced: {why}; the move is recorded as forced on the version and the run")
        return said


def promote_winner(force: bool = False, client=None, name: str | None = None) -> Promotion:
    """Move `champion` to the challenger the newest experiment run found better, through the
    registry's recorded move (so `rollback` undoes it). Refuses a keep or continue decision unless
    `force`, a decision about a champion that has changed since (the traffic judged was served by
    another one), and, unless `force`, a second promotion from one experiment run (after a
    `rollback`: the rollback is a judgement the old evidence cannot overrule)."""
    from mlflow.exceptions import MlflowException

    from . import registry, tracking

    client = client or tracking.client()
    name = name or tracking.model_name()
    run_id, record = newest_decision(client, tracking.configure())
    action, old, new = record["action"], record["champion_version"], record["challenger_version"]
    current = registry.champion_now(client, name)
    if current == new:
        raise ExperimentError(
            f"version {new} of {name!r} is already the champion (experiment run {run_id}): "
            "nothing to promote; `make rollback` moves it back"
        )
    if current != old:
        raise ExperimentError(
            f"the newest experiment (run {run_id}) compared champion version {old} with version "
            f"{new}, but the champion is now version {current or 'none'}: run `make experiment` "
            "again on traffic the current champion served"
        )
    try:
        client.get_model_version(name, new)
    except MlflowException:
        raise ExperimentError(
            f"model {name!r} has no version {new!r}, the experiment's challenger: was it deleted?"
        ) from None
    again = client.get_run(run_id).data.tags.get("promoted_version", "")
    if again and not force:
        raise ExperimentError(
            f"the newest experiment (run {run_id}) already promoted version {again} once, and the "
            f"champion was moved back since: one promotion per experiment. Serve both versions "
            "again and run `make experiment` on the new traffic, or `promote --force` to move it "
            f"to version {new} anyway, recorded as forced"
        )
    forced = action != "promote" or bool(again)
    if action != "promote" and not force:
        why = record["reasons"][-1] if record.get("reasons") else action
        raise ExperimentError(
            f"the newest experiment (run {run_id}) decided {action}, not promote ({why}). The "
            f"champion stays version {current}. `promote --force` moves it to version {new} "
            "anyway, recorded as forced"
        )
    reason = f"experiment {run_id}: {action}"
    if action != "promote":
        reason += f", promoted with --force against the decision ({action})"
    elif again:
        reason += f", promoted again with --force (it promoted version {again} before)"
    move = registry.promote(client, new, reason, name)
    client.set_model_version_tag(name, new, "promoted_by_experiment", run_id)
    client.set_model_version_tag(name, new, "promotion_forced", str(forced).lower())
    client.set_tag(run_id, "promoted_version", new)
    client.set_tag(run_id, "promotion_forced", str(forced).lower())
    return Promotion(run_id, action, forced, move, again)
