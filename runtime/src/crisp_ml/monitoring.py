"""Monitoring: the reference and the current batch, drift, performance where outcomes are known,
and the verdict."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from scipy import stats

from . import evaluation, project
from .project import project_root, resolve_path
from .serving.arms import SHADOW_ARM  # a shadow challenger's answer lines in the log
from .serving.predlog import is_summary
from .tracking import client as tracking_client
from .tracking import model_name
from .use_case import METRICS

VERDICTS = ("ok", "warn", "retrain")  # from the least to the most severe
# The exit status of `monitor` for each verdict. 1 is an error; 2 is left out because argparse
# exits 2 on wrong usage, and a typo must never read as a verdict.
EXIT_CODES = {"ok": 0, "warn": 3, "retrain": 4}
VERDICT_FILE = "verdict.json"  # what the notebook leaves in its run folder for `monitor` to read
LOG_FIELDS = ("request_id", "timestamp", "model_version")  # kept beside each logged row's inputs
READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


class MonitoringError(ValueError):
    """A batch or a reference monitoring cannot judge: says which, why and what to do."""


def monitored_version(
    client: MlflowClient, version: str = "", name: str | None = None
) -> ModelVersion:
    """The version to judge: `version`, or the one holding the champion alias."""
    name = name or model_name()
    try:
        if version:
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        wanted = f"version {version}" if version else "champion"
        raise MonitoringError(
            f"model {name!r} has no {wanted}: run the pipeline first (05_deployment registers "
            "the champion), or set monitoring.model_version"
        ) from None


@dataclass
class Reference:
    """What a version was trained on (feature drift) and tested on (prediction drift)."""

    train: pd.DataFrame
    test: pd.DataFrame
    folder: Path


SETS = ("train", "test")


def reference_sets(client: MlflowClient, version: ModelVersion) -> Reference:
    """The training and test sets of the pipeline run that registered `version`: from its run
    folder, or else from the artifacts 02 logged (another machine, or after `make clean`)."""
    label = f"{version.name} version {version.version}"
    run_id = version.tags.get("pipeline_run_id", "")
    if not run_id:
        raise MonitoringError(
            f"{label} was not registered by a pipeline run, so its training data is unknown; "
            "register one with `make pipeline`"
        )
    pipeline_run = client.get_run(run_id)
    folder = Path(pipeline_run.data.tags.get("run_dir", "")) / "data"
    if not all((folder / f"{name}.parquet").is_file() for name in SETS):
        folder = download_sets(client, pipeline_run, label)
    train, test = (pd.read_parquet(folder / f"{name}.parquet") for name in SETS)
    return Reference(train, test, folder)


def download_sets(client: MlflowClient, pipeline_run, label: str) -> Path:
    """The sets 02_data_preparation logged under `data/`, downloaded once into runs/monitoring/."""
    run_id = pipeline_run.info.run_id
    dest = project_root() / "runs" / "monitoring" / "reference" / run_id
    if all((dest / "data" / f"{name}.parquet").is_file() for name in SETS):
        return dest / "data"
    query = f"tags.mlflow.parentRunId = '{run_id}' and tags.mlflow.runName = '02_data_preparation'"
    found = client.search_runs([pipeline_run.info.experiment_id], query, max_results=1)
    try:
        mlflow.artifacts.download_artifacts(
            run_id=found[0].info.run_id, artifact_path="data", dst_path=str(dest)
        )
    except (IndexError, MlflowException, OSError):
        raise MonitoringError(
            f"the data {label} was trained on is neither in its run folder "
            f"({pipeline_run.data.tags.get('run_dir', 'unknown')}) nor logged with its "
            "02_data_preparation run; run the pipeline to register a version whose data is at hand"
        ) from None
    return dest / "data"


def digest_matches(frame: pd.DataFrame, target: str, expected: str) -> bool:
    """Whether `frame` is the set logged with digest `expected` (computed as 02 computes it)."""
    dataset = mlflow.data.from_pandas(frame, targets=target, name="reference")
    return not expected or dataset.digest == expected


def read_table(path: str, key: str) -> pd.DataFrame:
    """A CSV or Parquet file; every failure becomes a message naming the file and the setting."""
    file = resolve_path(path)
    if not file.is_file():
        raise MonitoringError(f"{key}: no file at {file}")
    reader = READERS.get(file.suffix.lower())
    if reader is None:
        raise MonitoringError(f"{key}: {file.name} is not a .csv or .parquet file")
    try:
        return reader(file)
    except pd.errors.EmptyDataError:
        raise MonitoringError(f"{key}: {file} is empty, without even a header") from None
    except (OSError, ValueError) as error:  # the parser's own message says what is wrong
        raise MonitoringError(f"{key}: cannot read {file}: {error}") from None


def log_files(path: Path) -> list[Path]:
    """The prediction log and the copies its rotation kept (`<file>.1` the newest), oldest first."""
    rotated = [p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: int(p.suffix[1:]), reverse=True)
    return [p for p in [*rotated, path] if p.is_file()]


def read_prediction_log(path: str, version: str) -> pd.DataFrame:
    """The rows `version` predicted, from the serving prediction log: inputs and LOG_FIELDS.

    What the log could not give is counted in the frame's `attrs`: `skipped_lines`, lines that are
    no whole entry (one a killed server left unfinished, one damaged by hand), and `rows_left_out`,
    rows of this version's requests too large for the log, which logged their first rows and a
    line counting all of them.
    """
    file = resolve_path(path)
    files = log_files(file)
    if not files:
        raise MonitoringError(
            f"no prediction log at {file}: serve with it on (`PREDICTION_LOG={path} make serve`) "
            "and send traffic, or set monitoring.current_path to a CSV or Parquet batch"
        )
    rows, versions, skipped, left_out = [], set(), 0, 0
    for part in files:
        for line in part.read_text(encoding="utf-8", errors="replace").splitlines():
            entry = log_entry(line)
            if entry is None:
                skipped += bool(line.strip())
                continue
            if entry.get("arm") == SHADOW_ARM:  # a shadow challenger's answer: no inputs
                continue
            versions.add(str(entry.get("model_version")))
            if str(entry.get("model_version")) != str(version):
                continue
            if "inputs" in entry:
                rows.append({**entry["inputs"], **{k: entry.get(k) for k in LOG_FIELDS}})
            else:
                left_out += entry["rows"] - entry["rows_logged"]
    if not rows:
        held = ", ".join(sorted(versions)) or "none"
        raise MonitoringError(
            f"the prediction log {file} holds no rows predicted by version {version} (versions "
            f"in it: {held}): send that version traffic, or set monitoring.model_version"
        )
    batch = pd.DataFrame(rows)
    batch.attrs.update(skipped_lines=skipped, rows_left_out=left_out)
    return batch


def log_entry(line: str) -> dict | None:
    """A log line as a row's entry, a shadow answer or a too-large request's summary; None for
    anything else."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("inputs"), dict) or entry.get("arm") == SHADOW_ARM:
        return entry
    return entry if is_summary(entry) else None


def log_notes(batch: pd.DataFrame) -> str:
    """What reading the log left out, said where the batch's source is printed."""
    notes = []
    if skipped := batch.attrs.get("skipped_lines"):
        notes.append(f"{skipped} unreadable line(s) skipped")
    if left_out := batch.attrs.get("rows_left_out"):
        notes.append(f"{left_out} row(s) of requests too large to log left out")
    return f" ({'; '.join(notes)})" if notes else ""


def current_batch(
    current_path: str, prediction_log: str, version: str
) -> tuple[pd.DataFrame, str, list[str]]:
    """The batch to judge, where it comes from, and the bookkeeping columns it may hold."""
    if current_path:
        return read_table(current_path, "monitoring.current_path"), current_path, []
    batch = read_prediction_log(prediction_log, version)
    return batch, f"prediction log {prediction_log}{log_notes(batch)}", list(LOG_FIELDS)


def attach_labels(batch: pd.DataFrame, labels_path: str, id_column: str, target: str):
    """The batch with true outcomes in `target`, looked up in `labels_path` by `id_column`."""
    if not labels_path:
        return batch
    labels = read_table(labels_path, "monitoring.labels_path")
    for frame, what in ((labels, "monitoring.labels_path"), (batch, "the current batch")):
        if id_column not in frame.columns:
            raise MonitoringError(
                f"{what} has no column {id_column!r} (monitoring.id_column) to join labels by"
            )
    if target not in labels.columns:
        raise MonitoringError(f"monitoring.labels_path has no column {target!r} (data.target)")
    labels = labels.dropna(subset=[id_column])  # a label without an id labels no row
    # As text, as the experiment joins outcomes: "7" in the log, 7 in a CSV and 7.0 in a CSV
    # whose id column has a blank cell are the same id.
    ids = pd.Series(evaluation.label_texts(labels[id_column]), dtype=object)
    if ids.duplicated().any():
        raise MonitoringError(
            f"monitoring.labels_path: ids repeat in {id_column!r}, e.g. {ids[ids.duplicated()].iloc[0]!r}"
        )
    joined = batch.copy()
    batch_ids = pd.Series(evaluation.label_texts(batch[id_column]), index=batch.index)
    joined[target] = batch_ids.map(labels[target].set_axis(ids))
    return joined


def check_batch(
    batch: pd.DataFrame, reference: pd.DataFrame, features: list[str], allowed: list[str]
) -> pd.DataFrame:
    """The batch with the model's inputs in the reference's types; every mismatch in one error."""
    if batch.empty:
        raise MonitoringError("the current batch has no rows: there is nothing to judge")
    problems = []
    missing = [column for column in features if column not in batch.columns]
    unknown = [c for c in batch.columns if c not in features and c not in allowed]
    if missing:
        problems.append(f"missing columns {missing}")
    if unknown:
        extra = ", ".join(sorted(set(filter(None, allowed)))) or "none"
        problems.append(f"unknown columns {unknown} (allowed beside the model's inputs: {extra})")
    checked = batch.copy()
    for column in [c for c in features if c in batch.columns]:
        if is_numeric(reference[column]) and not is_numeric(batch[column]):
            numbers = pd.to_numeric(batch[column], errors="coerce")
            bad = batch[column][numbers.isna() & batch[column].notna()]
            if not bad.empty:
                found = ", ".join(repr(v) for v in bad.astype(str).unique()[:3])
                problems.append(f"column {column!r} should hold numbers, found {found}")
            checked[column] = numbers
    if problems:
        raise MonitoringError("the current batch does not fit the model: " + "; ".join(problems))
    return checked.reset_index(drop=True)


def is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


CATEGORICAL_MAX_DISTINCT = 10  # a numeric column with at most this many values is a category
EMPTY_SHARE = 1e-4  # the share an empty bin counts as, so the PSI stays finite
PREDICTION = "(prediction)"  # the drift table's row for the model's predictions
SHIFT_LEVELS = {"none": "ok", "moderate": "warn", "major": "retrain"}


def is_categorical(values: pd.Series) -> bool:
    return not is_numeric(values) or values.nunique() <= CATEGORICAL_MAX_DISTINCT


def shares(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    return counts / counts.sum() if counts.sum() else counts


def psi(reference_counts, current_counts) -> float:
    """Population stability index of two distributions over the same bins (counts or shares)."""
    expected = np.clip(shares(reference_counts), EMPTY_SHARE, None)
    actual = np.clip(shares(current_counts), EMPTY_SHARE, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def quantile_edges(reference: pd.Series, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles, so each bin holds about 1/bins of it."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def binned_counts(values: pd.Series, edges: np.ndarray) -> np.ndarray:
    """Counts per bin, the outer bins open-ended, so values beyond the reference's range count."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def numeric_drift(reference: pd.Series, current: pd.Series, bins: int = 10) -> dict[str, Any]:
    """Kolmogorov-Smirnov test and PSI of two numeric columns, missing values left out."""
    ref, cur = reference.dropna().astype(float), current.dropna().astype(float)
    row = {"test": "Kolmogorov-Smirnov", "statistic": math.nan, "p_value": math.nan}
    if ref.empty or cur.empty:
        return {**row, "psi": math.nan}
    result = stats.ks_2samp(ref, cur)
    edges = quantile_edges(ref, bins)
    value = psi(binned_counts(ref, edges), binned_counts(cur, edges))
    return {
        **row,
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "psi": value,
    }


def category_labels(values: pd.Series) -> pd.Series:
    """Values as category names; numbers as floats first, so 1 in a CSV and 1.0 in training match."""
    values = values.dropna()
    if is_numeric(values):
        return values.astype(float).map(lambda v: f"{v:g}")
    return values.astype(str)


def categorical_drift(reference: pd.Series, current: pd.Series) -> dict[str, Any]:
    """Chi-squared test and PSI of the category counts, and the share of unseen categories."""
    ref, cur = category_labels(reference), category_labels(current)
    unseen = sorted(set(cur) - set(ref))
    row = {
        "test": "chi-squared",
        "statistic": math.nan,
        "p_value": math.nan,
        "psi": math.nan,
        "unseen_share": float(cur.isin(unseen).mean()) if len(cur) else 0.0,
        "unseen": ", ".join(unseen[:5]) + (" ..." if len(unseen) > 5 else ""),
    }
    if ref.empty or cur.empty:
        return row
    categories = sorted(set(ref) | set(cur))
    counts = np.vstack(
        [
            ref.value_counts().reindex(categories, fill_value=0).to_numpy(),
            cur.value_counts().reindex(categories, fill_value=0).to_numpy(),
        ]
    )
    if len(categories) < 2:  # one category on both sides: nothing can have moved
        return {**row, "statistic": 0.0, "p_value": 1.0, "psi": 0.0}
    result = stats.chi2_contingency(counts)
    return {
        **row,
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "psi": psi(counts[0], counts[1]),
    }


def column_drift(name: str, reference: pd.Series, current: pd.Series, bins: int) -> dict[str, Any]:
    categorical = is_categorical(reference)
    result = (
        categorical_drift(reference, current)
        if categorical
        else numeric_drift(reference, current, bins)
    )
    missing_reference, missing_current = (
        float(reference.isna().mean()),
        float(current.isna().mean()),
    )
    return {
        "feature": name,
        "kind": "categorical" if categorical else "numeric",
        **result,
        "missing_reference": missing_reference,
        "missing_current": missing_current,
        "missing_change": missing_current - missing_reference,
    }


DRIFT_COLUMNS = [
    "feature",
    "kind",
    "test",
    "statistic",
    "p_value",
    "psi",
    "unseen_share",
    "unseen",
    "missing_reference",
    "missing_current",
    "missing_change",
]


def drift_table(
    reference: pd.DataFrame, current: pd.DataFrame, features: list[str], bins: int = 10
) -> pd.DataFrame:
    """One row per feature: its test, statistic and p-value, PSI, unseen categories, missing shares."""
    rows = [column_drift(c, reference[c], current[c], bins) for c in features]
    return pd.DataFrame(rows, columns=DRIFT_COLUMNS)


def prediction_drift(reference_predictions, current_predictions, bins: int = 10) -> pd.DataFrame:
    """The predictions' row of the drift table: class mix, or the predicted values' distribution."""
    row = column_drift(
        PREDICTION, pd.Series(reference_predictions), pd.Series(current_predictions), bins
    )
    return pd.DataFrame([row], columns=DRIFT_COLUMNS)


def adjust_p_values(p_values: pd.Series) -> pd.Series:
    """Benjamini-Hochberg adjusted p-values; a column without a test (NaN) stays NaN."""
    adjusted = pd.Series(np.nan, index=p_values.index)
    tested = p_values.notna()
    if tested.any():
        adjusted[tested] = stats.false_discovery_control(p_values[tested].to_numpy(), method="bh")
    return adjusted


def classify_shifts(
    table: pd.DataFrame, alpha: float, psi_warn: float, psi_retrain: float
) -> pd.DataFrame:
    """Adds `p_adjusted` and `shift`: major or moderate when the adjusted test is significant and
    the PSI reaches psi_retrain or psi_warn, else none."""
    table = table.copy()
    table["p_adjusted"] = adjust_p_values(table["p_value"])
    significant = table["p_adjusted"] < alpha
    table["shift"] = np.select(
        [significant & (table["psi"] >= psi_retrain), significant & (table["psi"] >= psi_warn)],
        ["major", "moderate"],
        default="none",
    )
    return table


def labelled_performance(
    model,
    labelled: pd.DataFrame,
    features: list[str],
    target: str,
    task: str,
    metric: str,
    positive_class: str,
    segments: list[str],
) -> tuple[float, pd.DataFrame, pd.Series | None]:
    """The metric on the labelled rows, its value per segment group, and the worst group.
    The groups are measured as 04 measures them (`evaluation.segment_metrics`): a group where the
    metric is undefined (a class missing) says so in `status`, with a fallback, and is never the
    worst."""
    labelled = labelled.reset_index(drop=True)
    preds = evaluation.predict(model, labelled[features], labelled[target], task)
    positive = None
    if task == "classification":
        positive = evaluation.positive_label(preds.classes, positive_class)
    table = evaluation.segment_metrics(preds, labelled, segments, metric, positive)
    value = evaluation.metric_value(metric, preds, positive)
    return value, table, evaluation.worst_segment(table, metric)


@dataclass(frozen=True)
class Finding:
    check: str
    level: str  # ok, warn or retrain
    reason: str
    value: float = math.nan
    limit: float = math.nan


@dataclass
class Verdict:
    findings: list[Finding]

    @property
    def level(self) -> str:
        return max((f.level for f in self.findings), key=VERDICTS.index, default="ok")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.level]

    def reasons(self) -> list[str]:
        return [f.reason for f in self.findings if f.level != "ok"]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [asdict(f) for f in self.findings], columns=list(Finding.__annotations__)
        )

    def as_dict(self) -> dict[str, Any]:
        findings = [{k: _plain(v) for k, v in asdict(f).items()} for f in self.findings]
        return {
            "verdict": self.level,
            "exit_code": self.exit_code,
            "reasons": self.reasons(),
            "findings": findings,
        }


def _plain(value: Any) -> Any:
    """JSON has no NaN: an unmeasured value is null."""
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    return value


def _names(rows: pd.DataFrame, most: int = 5) -> str:
    names = [
        f"{r.feature} (PSI {r.psi:.2f})"
        for r in rows.sort_values("psi", ascending=False).itertuples()
    ]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def drift_findings(
    table: pd.DataFrame,
    rows: int,
    retrain_share: float,
    max_unseen_share: float,
    max_missing_increase: float,
    min_rows: int,
) -> list[Finding]:
    """What the drift table (after classify_shifts) says, as findings."""
    findings = []
    if rows < min_rows:
        reason = (
            f"only {rows} rows: too few to judge drift reliably (monitoring.min_rows {min_rows})"
        )
        findings.append(Finding("rows", "warn", reason, rows, min_rows))
    features = table[table["feature"] != PREDICTION]
    major, shifted = features[features["shift"] == "major"], features[features["shift"] != "none"]
    share = len(major) / len(features) if len(features) else 0.0
    if len(major) and share >= retrain_share:
        level = "retrain"
        reason = (
            f"{len(major)} of {len(features)} features shifted majorly ({share:.0%}, "
            f"monitoring.retrain_share {retrain_share:.0%}): {_names(major)}"
        )
    elif len(shifted):
        level, reason = (
            "warn",
            f"{len(shifted)} of {len(features)} features shifted: {_names(shifted)}",
        )
    else:
        level, reason = "ok", f"none of {len(features)} features shifted"
    findings.append(Finding("feature drift", level, reason, share, retrain_share))
    for row in table[table["feature"] == PREDICTION].itertuples():
        level = SHIFT_LEVELS[row.shift]
        size = "no" if row.shift == "none" else row.shift
        reason = f"predictions: {size} shift (PSI {row.psi:.2f}, adjusted p {row.p_adjusted:.2g})"
        findings.append(Finding("prediction drift", level, reason, row.psi))
    for row in features[features["unseen_share"] > max_unseen_share].itertuples():
        reason = (
            f"{row.feature}: {row.unseen_share:.0%} of rows hold unseen categories ({row.unseen})"
        )
        findings.append(
            Finding("unseen categories", "warn", reason, row.unseen_share, max_unseen_share)
        )
    for row in features[features["missing_change"] > max_missing_increase].itertuples():
        reason = (
            f"{row.feature}: missing values rose from {row.missing_reference:.0%} "
            f"to {row.missing_current:.0%}"
        )
        findings.append(
            Finding("missing values", "warn", reason, row.missing_change, max_missing_increase)
        )
    return findings


def performance_findings(
    metric: str,
    current: float | None,
    registered: float,
    threshold: float,
    max_drop: float,
    worst: pd.Series | None = None,
    worst_threshold: float = math.nan,
    segments: pd.DataFrame | None = None,
) -> list[Finding]:
    """The metric on labelled rows against the use case's threshold and the registered score;
    `current` None means there were no labels. Only a group where the metric is defined can warn;
    given the segment table, a metric undefined in every group is said to be not assessed."""
    if current is None:
        reason = "no true outcomes: performance not assessed (monitoring.labels_path)"
        return [Finding("performance", "ok", reason)]
    if math.isnan(current):
        reason = f"{metric} is undefined on the labelled rows (a single class?)"
        return [Finding("performance", "warn", reason)]
    scoring = METRICS[metric]
    meets = scoring.meets(current, threshold)
    reason = (
        f"{metric} {current:.4g} {'meets' if meets else 'fails'} use_case.threshold {threshold:g}"
    )
    findings = [
        Finding(f"{metric} threshold", "ok" if meets else "retrain", reason, current, threshold)
    ]
    if not math.isnan(registered):
        drop = registered - current if scoring.greater_is_better else current - registered
        level = "warn" if drop > max_drop else "ok"
        reason = f"{metric} {current:.4g} against {registered:.4g} at registration (a drop of {drop:.3g})"
        findings.append(Finding(f"{metric} drop", level, reason, drop, max_drop))
    if worst is not None:
        value = float(worst[metric])
        level = "ok" if scoring.meets(value, worst_threshold) else "warn"
        reason = f"worst segment {worst['segment']} = {worst['group']}: {metric} {value:.4g}"
        findings.append(Finding(f"worst segment {metric}", level, reason, value, worst_threshold))
    elif segments is not None and not segments.empty:
        reason = (
            f"{metric} is undefined in every segment group (see the segment table's status and "
            "fallback): the worst segment is not assessed"
        )
        findings.append(Finding(f"worst segment {metric}", "ok", reason))
    return findings


def plot_overlays(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], title: str
) -> plt.Figure:
    """Each column's reference and current distribution, overlaid: histograms of numbers, bars
    of category shares."""
    columns = columns[:12]
    width = min(3, len(columns))
    height = math.ceil(len(columns) / width)
    figure, axes = plt.subplots(height, width, figsize=(4.3 * width, 3.1 * height), squeeze=False)
    for axis, column in zip(axes.flat, columns, strict=False):
        ref, cur = reference[column].dropna(), current[column].dropna()
        if is_categorical(reference[column]):
            mix = pd.DataFrame(
                {
                    "training": category_labels(ref).value_counts(normalize=True),
                    "current": category_labels(cur).value_counts(normalize=True),
                }
            ).fillna(0)
            mix.plot.bar(ax=axis, color=["tab:blue", "tab:orange"], legend=False, rot=0)
        else:
            edges = np.histogram_bin_edges(pd.concat([ref, cur]).astype(float), bins=20)
            axis.hist(ref, edges, density=True, alpha=0.5, color="tab:blue", label="training")
            axis.hist(cur, edges, density=True, alpha=0.5, color="tab:orange", label="current")
        axis.set_title(str(column), fontsize="medium")
    for axis in list(axes.flat)[len(columns) :]:
        axis.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.6) for c in ("tab:blue", "tab:orange")]
    figure.legend(handles, ["reference", "current"], loc="upper right")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def log_verdict(
    verdict: Verdict, drift: pd.DataFrame, version: ModelVersion, source: str, rows: int
):
    """The verdict on the active MLflow run, as tags, metrics and verdict.json."""
    features = drift[drift["feature"] != PREDICTION]
    mlflow.set_tags(
        {
            "model_name": version.name,
            "model_version": str(version.version),
            "verdict": verdict.level,
            "monitoring.source": source[:500],
        }
    )
    mlflow.log_metrics(
        {
            "rows": rows,
            "exit_code": verdict.exit_code,
            "features_shifted": int((features["shift"] != "none").sum()),
            "features_shifted_major": int((features["shift"] == "major").sum()),
            "psi_max": float(features["psi"].max()) if features["psi"].notna().any() else 0.0,
        }
    )
    mlflow.log_dict(verdict.as_dict(), VERDICT_FILE)


def link_to_version(client: MlflowClient, version: ModelVersion, run_id: str, level: str) -> None:
    """The newest verdict on the model version itself, pointing at its monitoring run."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tags = {"monitoring_verdict": level, "monitoring_run_id": run_id, "monitoring_at": now}
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)


def write_verdict(verdict: Verdict, folder: Path) -> Path:
    return project.write_run_file(verdict.as_dict(), folder, VERDICT_FILE)


def read_verdict(folder: Path) -> dict[str, Any]:
    """What a monitoring run left in its folder; MonitoringError when it left nothing."""
    return project.read_run_file(folder, VERDICT_FILE, MonitoringError, "monitoring")


def shifted_batch(frame: pd.DataFrame, target: str, shift_sd: float = 1.0) -> pd.DataFrame:
    """A copy with each many-valued numeric feature moved up by `shift_sd` standard deviations."""
    shifted = frame.copy()
    for column in frame.columns.drop(target, errors="ignore"):
        if not is_categorical(frame[column]):
            shifted[column] = frame[column] + shift_sd * frame[column].std()
    return shifted


def write_shifted_batch(path: str, target: str, version: str = "") -> tuple[Path, int]:
    """The monitored version's test set, shifted, as a CSV file; returns where and how many rows."""
    client = tracking_client()
    test = reference_sets(client, monitored_version(client, version)).test
    file = resolve_path(str(path))
    file.parent.mkdir(parents=True, exist_ok=True)
    shifted_batch(test, target).to_csv(file, index=False)
    return file, len(test)
