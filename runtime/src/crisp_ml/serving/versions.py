"""The versions a server holds: the champion, and in ab and shadow modes the challenger, loaded
and checked against it; ab mode's routing key; shadow mode's queue and thread.

Two versions (arms.py): SERVING_MODE single (default), ab or shadow; CHALLENGER_BUNDLE (the second
bundle, verified and loaded exactly like the first, and refused unless it takes the same input
columns and types and is another version), SERVING_CHALLENGER_SHARE (ab: the challenger's share,
0 to 1, default 0.5), SERVING_ROUTING_COLUMN (ab: route on this input column's value in the
request's first row instead of X-Request-ID; every row of a request goes to one version),
SERVING_SHADOW_QUEUE (shadow: requests waiting for the challenger, default 1000; and at most
100,000 rows). In shadow mode a request's job is handed to the challenger once its response has
been sent, and one thread per server process scores the jobs: no response waits for the
challenger; when the queue is full a job is dropped and counted (serving_shadow_dropped_total).
The bound on what shadow costs the answers is the CPU that thread shares with the server under
sustained load: +53% p50 at one client and -33% throughput at eight, measured with a challenger as
fast as the champion (benchmarks/serving.py --modes, ONNX, one worker); with idle cores between
requests, nothing. serving_arm_requests_total and serving_arm_predict_seconds count and time each
arm (champion, challenger, shadow) and version.

Apart from arms.py, which loads no model (`make image` parses its settings with it); apart from
app.py, as none of it is HTTP. `make image` also runs `load_challenger` on the pair it stages, so
the image is refused before a build for the reasons its server would refuse to start.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import arms, predlog, schema
from . import bundle as bundle_files
from .arms import CHALLENGER, SHADOW_ARM, SettingsError
from .metrics import Metrics
from .model import ModelLoadError, ServedModel, load
from .settings import Settings, log


class ChallengerMismatch(ModelLoadError):
    """The challenger cannot serve the requests the champion serves (exit code 4)."""


@dataclass(frozen=True)
class Arm:
    """One served version: champion (the first bundle) or challenger (CHALLENGER_BUNDLE)."""

    name: str
    model: ServedModel
    provenance: bundle_files.Provenance
    manifest: dict

    def describe(self) -> dict:
        return {
            "arm": self.name,
            "model_name": self.provenance.name,
            "model_version": self.provenance.version,
            "runtime": self.model.runtime,
        }


def load_arm(name: str, bundle: Path, runtime: str | None) -> Arm:
    manifest = bundle_files.verify(bundle)  # before any byte of the model is deserialised
    model = load(Path(bundle) / bundle_files.MODEL_DIR, runtime)
    return Arm(name, model, bundle_files.Provenance.from_manifest(manifest), manifest)


def load_challenger(settings: Settings, champion: Arm) -> Arm | None:
    """The second version ab and shadow need, checked against the first; None in single mode."""
    plan = settings.plan
    if plan.mode == arms.SINGLE:
        return None  # a CHALLENGER_BUNDLE is ignored: the image always sets one, maybe empty
    folder = Path(plan.challenger_bundle) if plan.challenger_bundle else None
    if folder is None or not folder.is_dir() or not any(folder.iterdir()):
        where = f" ({folder} is {'empty' if folder and folder.is_dir() else 'missing'})"
        raise SettingsError(
            f"{arms.MODE_ENV}={plan.mode} serves two versions, but there is no challenger bundle"
            f"{where if folder else ''}: set {arms.CHALLENGER_ENV} (or --challenger-bundle DIR) "
            f"to one (`serve --mode {plan.mode}` and `image --mode {plan.mode}` export it), or "
            f"set {arms.MODE_ENV}=single"
        )
    challenger = load_arm(CHALLENGER, folder, settings.runtime)
    ours, theirs = champion.provenance, challenger.provenance
    if (ours.name, ours.version) == (theirs.name, theirs.version):
        raise SettingsError(
            f"the champion and the challenger are both {ours.name} version {ours.version}: "
            f"{plan.mode} mode compares two versions; pick another challenger (--challenger)"
        )
    if champion.model.columns != challenger.model.columns:
        raise ChallengerMismatch(
            f"the challenger ({theirs.name} version {theirs.version}) takes the input columns "
            f"{_signature(challenger.model)}, the champion ({ours.name} version {ours.version}) "
            f"{_signature(champion.model)}: in {plan.mode} mode every request must suit both, so "
            "their signatures must be the same columns of the same types"
        )
    if champion.model.task != challenger.model.task:
        raise ChallengerMismatch(
            f"the challenger is a {challenger.model.task} model, the champion a "
            f"{champion.model.task} one: both must answer the same question"
        )
    column = plan.routing_column
    if plan.mode == arms.AB and column and column not in champion.model.column_names:
        raise SettingsError(
            f"{arms.ROUTING_ENV}={column!r} is not an input column of the models "
            f"({', '.join(champion.model.column_names)}): name one of them, or unset it to route "
            "on X-Request-ID"
        )
    return challenger


def _signature(model: ServedModel) -> str:
    return "[" + ", ".join(f"{c.name}: {c.type}" for c in model.columns) + "]"


def routing_key(request_id: str, batch: schema.Batch, column: str | None) -> str:
    """What ab mode hashes: the routing column's value in the first row, else the request id."""
    if column and batch.rows:
        value = batch.arrays[column][0]
        value = value.item() if hasattr(value, "item") else value
        missing = value is None or (isinstance(value, float) and not math.isfinite(value))
        if not missing:
            return str(value)
    return request_id


@dataclass(frozen=True)
class ShadowJob:
    request_id: str
    endpoint: str
    batch: schema.Batch


class Shadow:
    """The challenger scoring requests after the champion answered them: a bounded queue and one
    thread. `submit` never waits: with the queue full the job is dropped and counted."""

    def __init__(
        self, arm: Arm, size: int, metrics: Metrics, prediction_log,
        max_rows: int = arms.SHADOW_QUEUE_ROWS,
    ):  # fmt: skip
        self.arm, self.metrics, self.prediction_log = arm, metrics, prediction_log
        self.jobs: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=size)
        self.max_rows, self.pending_rows = max_rows, 0
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._rows = threading.Lock()

    def submit(self, job: ShadowJob) -> bool:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._work, name="shadow-scoring", daemon=True
                    )
                    self._thread.start()
        with self._rows:
            if self.pending_rows + job.batch.rows > self.max_rows:
                self.metrics.shadow_dropped.inc()
                return False
            try:
                self.jobs.put_nowait(job)
            except queue.Full:
                self.metrics.shadow_dropped.inc()
                return False
            self.pending_rows += job.batch.rows
        return True

    def join(self) -> None:
        """Wait until every submitted job has been scored (tests, shutdown)."""
        self.jobs.join()

    def close(self, timeout: float = 10) -> None:
        """Stop the thread: what waits unscored is dropped (and counted), the job in hand ends."""
        if self._thread is None:
            return
        dropped = 0
        with contextlib.suppress(queue.Empty):
            while True:
                self.jobs.get_nowait()
                self.jobs.task_done()
                dropped += 1
        if dropped:
            self.metrics.shadow_dropped.inc(dropped)
            log.warning("shadow scoring: %d requests left unscored at shutdown", dropped)
        self.jobs.put(None)  # room now: the queue was just emptied
        self._thread.join(timeout)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                self.score(job)
            except Exception:  # one bad job must not stop the shadow
                self.metrics.shadow_failures.inc()
                log.exception("shadow scoring failed for request %s", job.request_id)
            finally:
                with self._rows:
                    self.pending_rows -= job.batch.rows
                self.jobs.task_done()
        self.jobs.task_done()

    def score(self, job: ShadowJob) -> None:
        model, provenance = self.arm.model, self.arm.provenance
        started = time.perf_counter()
        inputs = model.inputs(job.batch.arrays)
        predictions = model.predict(inputs)
        probas = model.predict_proba(inputs) if model.task == "classification" else None
        seconds = time.perf_counter() - started
        self.metrics.observe_arm(SHADOW_ARM, provenance.version, seconds)
        if self.prediction_log:
            entry = predlog.Entry(
                time.time(), job.request_id, job.endpoint, seconds * 1000, job.batch.values,
                predictions, probas, provenance.name, provenance.version, SHADOW_ARM,
                with_inputs=False,
            )  # fmt: skip
            try:
                self.metrics.log_rows_left_out.inc(self.prediction_log.record(entry))
            except predlog.PredictionLogError as error:
                self.metrics.log_failures.inc()
                log.error(
                    "cannot write the prediction log %s (%s): the shadow answer to request %s "
                    "is lost", error.filename, error.strerror, job.request_id,
                )  # fmt: skip
