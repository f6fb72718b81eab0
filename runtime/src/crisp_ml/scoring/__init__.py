"""Batch scoring: a registered version (the champion by default) scores a file, on this machine in
bounded memory or on Apache Spark, and writes one output row per input row.

    <project> score data/batch.csv --output scores/batch.parquet
    <project> score data/big/ --output scores/big/ --engine spark --spark-master spark://host:7077

Each output row holds the input's id column (`data.id_column`, or `--id-column`; without one the
local engine writes the input's row number as `row`), `prediction`, one `probability_<class>`
column per class for a classifier, and `model_version`.

The model comes from the registry as the server's does: its files are downloaded and checked
against the version's integrity record, and MLmodel may ask skops to trust only this project's
types (serving/export.py), before anything reads them. The Spark engine hands `spark_udf` that
checked folder, never the registry URI, so executors load the files that were checked.

Before any row is scored the input is checked against the model's signature: a missing column,
a column of the wrong type (Parquet, from its schema), an empty input, an unknown version or alias
each stop the job with a message naming the fix. CSV values are typed as they are read: a value
that is not a number in a number column stops the job with its row and column, and, as every
failure does, leaves no output (tables.py: outputs appear by a rename once complete).

Every job is an MLflow run (tag kind=scoring) in the project's experiment: the model version, the
input's and output's SHA-256, row counts, seconds and rows per second. `--prediction-log FILE`
(local engine) also appends the rows to a JSON Lines file in the serving prediction log's format,
which 06_monitoring judges as it judges traffic:
`make monitor ARGS="--set monitoring.prediction_log=FILE"`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..serving import model as served
from ..serving import predlog
from . import tables
from .tables import TableError

ENGINES = ("local", "spark")
DEFAULT_CHUNK_ROWS = 50_000
KIND = "scoring"  # the `kind` tag of a scoring job's MLflow run
ENDPOINT = "score"  # the prediction log's `endpoint` of rows a batch job scored
PROGRESS_SECONDS = 2.0  # at most one progress line this often when the output is not a terminal


class ScoringError(RuntimeError):
    """A job that cannot run or did not finish; the message says why and what to do."""


@dataclass(frozen=True)
class Request:
    """What to score, with what, and where the predictions go."""

    input: Path
    output: Path
    version: str | None = None  # None: the alias, else the champion
    alias: str | None = None
    id_column: str = ""
    engine: str = "local"
    output_format: str | None = None  # "parquet" or "csv"; None: from the output's name
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    prediction_log: Path | None = None
    overwrite: bool = False
    spark_master: str | None = None  # None: local[*]
    spark_conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    output: Path
    rows: int
    seconds: float
    model_name: str
    model_version: str
    run_id: str
    input_digest: str
    output_digest: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("nan")


@dataclass
class Model:
    """The checked model folder and the model loaded from it, as the server loads it."""

    name: str
    version: str
    folder: Path
    served: served.ServedModel

    @property
    def classes(self) -> list:
        return self.served.classes if self.served.task == "classification" else []


# --- what the job is given ------------------------------------------------------------------------


def resolve_version(version: str | None = None, alias: str | None = None):
    """The registered version asked for: `version`, else the one `alias` names, else the champion."""
    from ..registry import version_by_alias
    from ..serving.export import CHAMPION, RegistryError, model_version
    from ..tracking import client, model_name

    if version is not None and alias is not None:
        raise ScoringError("give --version or --alias, not both")
    if version is not None and not str(version).isdigit():
        raise ScoringError(f"--version {version!r}: a version is a number (see `make ui`)")
    if version is not None or alias in (None, CHAMPION):
        try:
            return model_version(version)
        except RegistryError as error:  # its message names the fix
            raise ScoringError(f"{error}{_versions_held(client(), model_name())}") from error
    found = version_by_alias(client(), alias)
    if found is None:
        raise ScoringError(
            f"registered model '{model_name()}' has no version with alias '{alias}'"
            f"{_versions_held(client(), model_name())}"
        )
    return found


def _versions_held(mlflow_client, name: str) -> str:
    """What the registry does hold, to choose from."""
    from mlflow.exceptions import MlflowException

    try:
        versions = mlflow_client.search_model_versions(f"name = '{name}'")
    except MlflowException:  # an unreachable store: the first message says enough
        return ""
    if not versions:
        return " (it holds no version yet: run the pipeline)"
    aliases: dict[str, list[str]] = {}
    with contextlib.suppress(MlflowException):  # search results carry no aliases in every store
        for alias, number in mlflow_client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(number), []).append(alias)
    held = sorted(str(v.version) for v in versions)
    held.sort(key=int)
    listed = ", ".join(
        v + (f" [{', '.join(sorted(aliases[v]))}]" if v in aliases else "") for v in held[-10:]
    )
    return f" (versions held: {listed})"


def id_column_from_params(param_files: list[Path] | None = None, sets: list[str] | None = None):
    """`data.id_column` of params.yaml, with `--params` and `--set` laid over it."""
    from .. import params as P
    from ..project import project_root

    path = project_root() / P.PARAMS_FILE
    if not path.is_file():
        return ""
    tree, _ = P.resolve(P.load_yaml(path), param_files or [], sets or [])
    return str(P.get_dotted_or_none(tree, "data.id_column") or "")


# --- the job --------------------------------------------------------------------------------------


def score(request: Request, echo: Callable[[str], None] | None = None) -> Outcome:
    """Run the job: check everything, score, reveal the output, record the run."""
    from ..serving.export import download_verified, version_record
    from ..tracking import configure

    echo = echo or _stderr
    if request.engine not in ENGINES:
        raise ScoringError(f"--engine {request.engine!r}: one of {', '.join(ENGINES)}")
    if request.chunk_rows < 1:
        raise ScoringError("--chunk-rows must be at least 1")
    if request.engine == "spark" and request.prediction_log:
        raise ScoringError(
            "--prediction-log is written by the local engine; to judge a batch scored on Spark, "
            'give 06 its input: make monitor ARGS="--set monitoring.current_path=<input file>"'
        )
    configure()
    mv = resolve_version(request.version, request.alias)
    record = version_record(mv)  # IntegrityError when the version has none
    try:
        fmt, single = tables.output_kind(request.output, request.output_format)
        source = tables.open_source(request.input)
        tables.check_output(request.output, request.overwrite)
    except TableError as error:
        raise ScoringError(str(error)) from None
    with tempfile.TemporaryDirectory(prefix="score-") as scratch:
        folder = download_verified(f"models:/{mv.name}/{mv.version}", record, Path(scratch) / "m")
        model = Model(mv.name, str(mv.version), folder, served.load(folder, served.SKLEARN))
        found = tables.problems(source, model.served.columns, request.id_column)
        if request.engine == "spark" and not request.id_column:
            found.append(
                "the Spark engine needs an id column (rows come back from a cluster in no fixed "
                "order): set data.id_column in params.yaml or pass --id-column NAME"
            )
        if found:
            raise ScoringError(
                f"cannot score {request.input} with {mv.name} version {mv.version}:\n  - "
                + "\n  - ".join(found)
            )
        return _run(request, source, model, fmt, single, echo)


def _run(
    request: Request, source: tables.Source, model: Model, fmt: str, single: bool, echo
) -> Outcome:
    import mlflow

    from ..tracking import KIND as KIND_TAG
    from ..tracking import git_tags, owner_tags

    stage = tables.staging_path(request.output)
    log_stage = _log_stage(request.prediction_log)
    tags = {
        **git_tags(), **owner_tags(), KIND_TAG: KIND, "model_name": model.name,
        "model_version": model.version, "engine": request.engine,
    }  # fmt: skip
    name = f"score {source.path.name} with version {model.version}"
    started = time.perf_counter()
    with _sigterm_as_interrupt(), mlflow.start_run(run_name=name, tags=tags) as run:
        mlflow.log_params(
            {
                "input": str(source.path), "output": str(request.output),
                "id_column": request.id_column, "engine": request.engine, "format": fmt,
                "chunk_rows": request.chunk_rows, "spark_master": request.spark_master or "",
            }
        )  # fmt: skip
        try:
            echo(
                f"Scoring {source.path} with {model.name} version {model.version} "
                f"({request.engine} engine)"
            )
            if request.engine == "local":
                rows, input_digest = _score_local(request, source, model, stage, fmt, single, echo,
                                                  log_stage, run.info.run_id)  # fmt: skip
            else:
                from . import spark

                rows = spark.score(request, source, model, stage, fmt, single, echo)
                input_digest = ""
            input_digest = input_digest or tables.digest(source.files, source.path)
            output_digest = tables.digest(tables.output_files(stage), stage)
            seconds = time.perf_counter() - started
            tables.reveal(stage, request.output, request.overwrite)
            if log_stage is not None:
                _append(log_stage, Path(request.prediction_log))
        except BaseException as error:
            tables.remove(stage)
            if log_stage is not None:
                tables.remove(log_stage)
            mlflow.set_tag("error", str(error)[:5000] or type(error).__name__)
            if isinstance(error, KeyboardInterrupt):  # Ctrl+C, or SIGTERM turned into it
                mlflow.end_run("KILLED")
            if isinstance(error, TableError):
                raise ScoringError(str(error)) from None
            raise
        mlflow.set_tags({"input_digest": input_digest, "output_digest": output_digest})
        mlflow.log_metrics(
            {
                "rows": rows, "seconds": seconds, "rows_per_second": rows / seconds,
                "input_bytes": source.size_bytes,
                "output_bytes": sum(f.stat().st_size for f in tables.output_files(request.output)),
            }
        )  # fmt: skip
        return Outcome(
            Path(request.output), rows, seconds, model.name, model.version, run.info.run_id,
            input_digest, output_digest,
        )  # fmt: skip


# --- the local engine -----------------------------------------------------------------------------


def _score_local(
    request: Request, source: tables.Source, model: Model, stage: Path, fmt: str, single: bool,
    echo, log_stage: Path | None, run_id: str,
) -> tuple[int, str]:  # fmt: skip
    """Chunk after chunk: read, convert as the server does, predict, write. Memory holds one."""
    progress = tables.Progress()
    reporter = _Reporter(echo, source)
    prediction_log = None
    if log_stage is not None:  # one file for the whole batch: no rotation within a job
        prediction_log = predlog.PredictionLog(
            log_stage, model.name, model.version, max_bytes=1 << 62, backups=0
        )
    writer, offset = None, 0
    try:
        batches = tables.chunks(
            source, model.served.columns, request.id_column, request.chunk_rows, progress
        )
        for batch in batches:
            started = time.perf_counter()
            table, predictions, probabilities = predict_chunk(
                model, batch, request.id_column, offset
            )
            if writer is None:
                writer = tables.Writer(stage, fmt, single, table.schema)
            writer.write(table)
            if prediction_log is not None:
                _log_chunk(prediction_log, model, batch, request.id_column, predictions,
                           probabilities, run_id, time.perf_counter() - started)  # fmt: skip
            offset += batch.num_rows
            reporter.update(offset, progress.bytes_read)
    finally:
        if prediction_log is not None:
            prediction_log.close()
    if writer is None:
        raise ScoringError(f"{source.path} holds no rows: there is nothing to score")
    writer.close()
    reporter.done(offset)
    digest = progress.sha256.hexdigest() if source.kind == "csv" else ""
    return offset, digest


def predict_chunk(
    model: Model, batch: pa.RecordBatch, id_column: str, offset: int
) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
    """One chunk's output rows, and its predictions and probabilities."""
    arrays = tables.to_arrays(batch, model.served.columns, offset)
    frame = model.served.frame(arrays)  # as the server builds it from a request
    estimator = model.served.estimator
    try:
        predictions = np.asarray(estimator.predict(frame))
        probabilities = estimator.predict_proba(frame) if model.classes else None
    except Exception as error:  # the input passed the signature yet the model refused it
        raise ScoringError(
            f"the model could not predict rows {offset} to {offset + batch.num_rows - 1}: {error}"
        ) from error
    ptype = tables.prediction_type(model.classes, model.served.task)
    if id_column:
        columns = {id_column: batch.column(batch.schema.names.index(id_column))}
    else:
        columns = {tables.ROW: pa.array(np.arange(offset, offset + batch.num_rows))}
    columns[tables.PREDICTION] = pa.array(predictions, type=ptype, from_pandas=True)
    for k, label in enumerate(model.classes):
        columns[tables.probability_column(label)] = pa.array(probabilities[:, k])
    columns[tables.MODEL_VERSION] = pa.repeat(pa.scalar(model.version), batch.num_rows)
    return pa.table(columns), predictions, probabilities


def _log_chunk(log, model, batch, id_column, predictions, probabilities, run_id, seconds) -> None:
    """The chunk's rows in the prediction log's format: inputs (and the id), prediction, and
    probabilities keyed by class label, as the server logs a request of as many rows."""
    names = [c.name for c in model.served.columns if c.name in batch.schema.names]
    if id_column:
        names = [id_column, *(n for n in names if n != id_column)]
    values = {name: batch.column(batch.schema.names.index(name)).to_pylist() for name in names}
    probas = None
    if probabilities is not None:
        labels = [str(label) for label in model.classes]
        probas = [dict(zip(labels, row, strict=True)) for row in probabilities.tolist()]
    entry = predlog.Entry(
        time.time(), run_id, ENDPOINT, seconds * 1000, values, served.jsonable(predictions), probas
    )
    log.record(entry)


def _log_stage(path: Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return tables.staging_path(path)


def _append(stage: Path, log: Path) -> None:
    """The job's log lines at the end of the prediction log, once the output is in place."""
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        with stage.open("rb") as source:
            while block := source.read(8 * 1024 * 1024):
                view = memoryview(block)
                while view:
                    view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)
        stage.unlink()


# --- progress and signals -------------------------------------------------------------------------


class _Reporter:
    """Rows scored so far: a line rewritten in place on a terminal, a line every few seconds else."""

    def __init__(self, echo, source: tables.Source):
        self.echo, self.source = echo, source
        self.started = self.last = time.perf_counter()
        self.terminal = echo is _stderr and sys.stderr.isatty()

    def _line(self, rows: int, bytes_read: int) -> str:
        rate = rows / max(time.perf_counter() - self.started, 1e-9)
        if self.source.rows:
            share = f" of {self.source.rows:,} ({rows / self.source.rows:.0%})"
        elif bytes_read:
            share = f" ({bytes_read / max(self.source.size_bytes, 1):.0%} of the file)"
        else:
            share = ""
        return f"  scored {rows:,} rows{share}, {rate:,.0f} rows/s"

    def update(self, rows: int, bytes_read: int) -> None:
        now = time.perf_counter()
        if self.terminal:
            sys.stderr.write("\r" + self._line(rows, bytes_read))
            sys.stderr.flush()
        elif now - self.last >= PROGRESS_SECONDS:
            self.echo(self._line(rows, bytes_read))
            self.last = now

    def done(self, rows: int) -> None:
        if self.terminal:
            sys.stderr.write("\n")


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A job stopped with SIGTERM (a scheduler's timeout) cleans up as one stopped with Ctrl+C."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
