"""The serving app: MLflow's scoring protocol, a typed /predict, health, metadata and metrics.

    POST /invocations  MLflow's protocol (JSON formats or CSV) -> {"predictions": [...]};
                       classifiers add "probabilities" with ?probabilities=true or
                       "params": {"probabilities": true}
    POST /predict      {"rows": [{column: value, ...}]} -> class (or value) and probabilities;
                       its OpenAPI schema is generated from the model's signature
    GET  /ping /health 200 once the model is loaded (never behind the token)
    GET  /version /metadata /metrics /docs /openapi.json

Environment (all optional): SERVING_TOKEN (bearer token for all but /ping and /health),
MAX_BODY_BYTES (default 1 MiB, checked before parsing), PREDICTION_LOG (a .jsonl path; off when
unset), PREDICTION_LOG_MAX_BYTES, PREDICTION_LOG_BACKUPS, PREDICTION_BUCKETS (histogram bounds
for a regressor's predictions, comma-separated), SERVING_RUNTIME (auto, onnx or scikit-learn:
model.py says how `auto` chooses), SERVING_WORKERS (server processes: a whole number, default 1,
or `auto`, one per CPU the process may use; `python -m crisp_ml.serving` starts them, and with
more than one, /metrics adds up every worker's counts; process_* metrics are left out then, as
each would describe one worker only).

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
requests, nothing. In two-version modes a classifier's probabilities are logged for every row
(the experiment's metric may need them) and answered only when asked for. Every prediction response
carries X-Model-Version and X-Model-Arm (champion or challenger), in every mode; /version and
/metadata describe both versions and the mode; serving_arm_requests_total and
serving_arm_predict_seconds count and time each arm (champion, challenger, shadow) and version.

No `from __future__ import annotations` here: FastAPI must see the request model generated at
run time as a real annotation.
"""

import contextlib
import hmac
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from . import arms, predlog, schema
from . import bundle as bundle_files
from .arms import CHALLENGER, CHAMPION, SHADOW_ARM, SettingsError
from .model import RUNTIME_ENV, ModelLoadError, ServedModel, load
from .schema import ErrorBody, PredictResponse, RequestError

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one; our lines sit with its own

OPEN_PATHS = frozenset({"/ping", "/health"})
ENDPOINTS = frozenset(
    {"/invocations", "/predict", "/ping", "/health", "/version", "/metadata", "/metrics"}
    | {"/docs", "/openapi.json"}
)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# A 1-2.5-5 ladder over both signs: fits most regression targets without knowing their scale.
VALUE_BUCKETS = tuple(
    sorted({s * m * 10**e for s in (-1, 1) for m in (1, 2.5, 5) for e in range(-1, 5)} | {0.0})
)
JSON = "application/json"
WORKERS_ENV = "SERVING_WORKERS"
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2 quota, "<quota> <period>" or "max <period>"


class ChallengerMismatch(ModelLoadError):
    """The challenger cannot serve the requests the champion serves (exit code 4)."""


def usable_cpus(cpu_max: Path = CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (what
    `docker run --cpus 2` sets), rounded down so workers are not throttled; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) // int(period))
    except (OSError, ValueError, ZeroDivisionError):  # no cgroup v2 limit here
        pass
    return max(cpus, 1)


def worker_count(raw: str | None, cpu_max: Path = CPU_MAX) -> int:
    """SERVING_WORKERS (or --workers) as a number of processes: unset is 1, `auto` usable_cpus."""
    text = (raw or "").strip().lower()
    if not text:
        return 1
    if text == "auto":
        return usable_cpus(cpu_max)
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise SettingsError(
            f"{WORKERS_ENV}={raw!r} is not a number of worker processes: set it to a whole "
            f"number, 1 or more (e.g. {WORKERS_ENV}=2 or --workers 2), or to auto for one per "
            "CPU this process may use"
        )
    return count


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = 1024 * 1024
    token: str | None = None
    prediction_log: str | None = None
    prediction_log_max_bytes: int = 50 * 1024 * 1024
    prediction_log_backups: int = 1
    prediction_buckets: tuple[float, ...] = VALUE_BUCKETS
    runtime: str | None = None  # None: SERVING_RUNTIME, else auto
    workers: int = 1  # server processes; above 1 the metrics are shared through files
    plan: arms.Plan = field(default_factory=arms.Plan)  # single, or two versions (ab, shadow)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env

        def number(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            try:
                value = int(raw) if raw else default
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a whole number") from None
            if value < 0:
                raise SettingsError(f"{name} must not be negative")
            return value

        buckets = cls.prediction_buckets
        if raw := env.get("PREDICTION_BUCKETS", "").strip():
            try:
                buckets = tuple(sorted({float(x) for x in raw.split(",") if x.strip()}))
            except ValueError:
                raise SettingsError(
                    f"PREDICTION_BUCKETS={raw!r}: comma-separated numbers"
                ) from None
        return cls(
            max_body_bytes=number("MAX_BODY_BYTES", cls.max_body_bytes),
            token=env.get("SERVING_TOKEN") or None,
            prediction_log=env.get("PREDICTION_LOG", "").strip() or None,
            prediction_log_max_bytes=number(
                "PREDICTION_LOG_MAX_BYTES", cls.prediction_log_max_bytes
            ),
            prediction_log_backups=number("PREDICTION_LOG_BACKUPS", cls.prediction_log_backups),
            prediction_buckets=buckets,
            runtime=env.get(RUNTIME_ENV, "").strip() or None,
            workers=worker_count(env.get(WORKERS_ENV)),
            plan=arms.Plan.from_env(env),
        )


class Metrics:
    """Prometheus metrics in a registry of the app's own (several apps can live in one process).

    `shared` (several worker processes): prometheus_client's multiprocess mode. Each worker's
    values live in files under PROMETHEUS_MULTIPROC_DIR, set before prometheus_client is imported
    (`python -m crisp_ml.serving` does it), and `registry` reads every worker's files, so whichever
    worker answers the scrape reports the sums. Per-process collectors are left out then.
    """

    def __init__(
        self, model: ServedModel, provenance: bundle_files.Provenance, buckets, shared: bool = False
    ):
        self.registry = CollectorRegistry()
        if shared:
            _Workers(self.registry)
            registry = None  # the metrics below write to files; the collector reads them all
        else:
            registry = self.registry
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.requests = Counter(
            "serving_requests", "HTTP requests by endpoint, method and status code",
            ["endpoint", "method", "status"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "serving_request_duration_seconds", "Time from request to response, by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "serving_errors", "Error responses by endpoint and error code",
            ["endpoint", "error_code"], registry=registry,
        )  # fmt: skip
        self.rows = Counter(
            "serving_predicted_rows", "Rows predicted", ["endpoint"], registry=registry
        )
        self.predict_seconds = Histogram(
            "serving_model_predict_seconds", "Time spent in the model's predict per request",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.classes = self.values = None
        if model.task == "classification":
            self.classes = Counter(
                "serving_predictions_by_class", "Predicted rows per class", ["label"],
                registry=registry,
            )  # fmt: skip
        else:
            self.values = Histogram(
                "serving_prediction_value", "Distribution of predicted values",
                buckets=buckets, registry=registry,
            )  # fmt: skip
        self.arm_requests = Counter(
            "serving_arm_requests",
            "Prediction requests by the arm that scored them (champion, challenger, or shadow: "
            "scored after the answer) and its model version",
            ["arm", "model_version"], registry=registry,
        )  # fmt: skip
        self.arm_predict_seconds = Histogram(
            "serving_arm_predict_seconds", "Time in the model's predict per request, by arm",
            ["arm", "model_version"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.shadow_dropped = Counter(
            "serving_shadow_dropped",
            "Requests not scored in shadow: the shadow queue (SERVING_SHADOW_QUEUE) was full",
            registry=registry,
        )
        self.shadow_failures = Counter(
            "serving_shadow_failures", "Requests the challenger could not score in shadow",
            registry=registry,
        )  # fmt: skip
        self.log_rows_left_out = Counter(
            "serving_prediction_log_rows_left_out",
            "Rows of requests too large for the prediction log (its summary lines count them)",
            registry=registry,
        )
        self.log_failures = Counter(
            "serving_prediction_log_failures",
            "Requests refused with 503 because the prediction log could not be written",
            registry=registry,
        )
        labels = {
            "name": provenance.name,
            "version": provenance.version,
            "run_id": provenance.run_id,
            "git_commit": provenance.git_commit,
            "task": model.task,
            "runtime": model.runtime,
        }
        if shared:  # Info does not work across processes: the same sample, from a gauge
            Gauge(
                "serving_model_info", "The model being served", list(labels),
                multiprocess_mode="livemax", registry=registry,
            ).labels(**labels).set(1)  # fmt: skip
        else:
            Info("serving_model", "The model being served", registry=registry).info(labels)

    def observe_arm(self, arm: str, version: str, seconds: float) -> None:
        self.arm_requests.labels(arm, version).inc()
        self.arm_predict_seconds.labels(arm, version).observe(seconds)

    def observe_predictions(self, endpoint: str, predictions: list, seconds: float) -> None:
        self.rows.labels(endpoint).inc(len(predictions))
        self.predict_seconds.observe(seconds)
        if self.classes is not None:
            for label, count in Tally(map(str, predictions)).items():
                self.classes.labels(label).inc(count)
        else:
            for value in predictions:
                if isinstance(value, int | float) and math.isfinite(value):
                    self.values.observe(value)


class _Workers(MultiProcessCollector):
    """Every worker's metric files; the live gauges of workers that have exited are dropped first
    (uvicorn restarts a dead worker without telling anyone: this is where it is noticed)."""

    def __init__(self, registry: CollectorRegistry):
        self.path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        if not os.path.isdir(self.path):
            raise SettingsError(
                f"{WORKERS_ENV} above 1 needs PROMETHEUS_MULTIPROC_DIR, a fresh directory for the "
                "workers' metrics: start the server with `python -m crisp_ml.serving`, which sets it"
            )
        super().__init__(registry, self.path)

    def collect(self):
        for file in Path(self.path).glob("gauge_live*_*.db"):
            pid = file.stem.rpartition("_")[2]
            if pid.isdigit() and not _alive(int(pid)):
                mark_process_dead(int(pid), self.path)
        return super().collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def error_body(code: str, message: str, **details: Any) -> bytes:
    return json.dumps({"error_code": code, "message": message, **details}).encode()


class Gate:
    """Pure ASGI middleware in front of every request: token, body size and content type, request
    id, metrics, and a last-resort handler so an unexpected error is a JSON 500, never a crash."""

    def __init__(self, app, settings: Settings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.token = f"Bearer {settings.token}".encode() if settings.token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        endpoint = path if path in ENDPOINTS else "other"  # bounded label values
        headers = dict(scope["headers"])
        request_id = _request_id(headers.get(b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message):
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        async def refuse(code: int, error_code: str, message: str, **extra_headers: str):
            self.metrics.errors.labels(endpoint, error_code).inc()
            headers_out = [(b"content-type", JSON.encode())]
            headers_out += [(k.encode(), v.encode()) for k, v in extra_headers.items()]
            await send_with_id(
                {"type": "http.response.start", "status": code, "headers": headers_out}
            )
            await send_with_id(
                {"type": "http.response.body", "body": error_body(error_code, message)}
            )

        try:
            if self.token and path not in OPEN_PATHS and not _authorized(headers, self.token):
                await refuse(
                    401, "UNAUTHORIZED", "send 'Authorization: Bearer <token>' (SERVING_TOKEN)",
                    **{"www-authenticate": "Bearer"},
                )  # fmt: skip
            elif problem := self._body_problem(path, method, headers):
                await refuse(*problem)
            elif method == "POST":
                body = await self._read_body(receive)
                if body is None:
                    limit = self.settings.max_body_bytes
                    await refuse(
                        413, "PAYLOAD_TOO_LARGE", f"the body exceeds MAX_BODY_BYTES={limit}"
                    )
                else:
                    await self.app(scope, _replay(body, receive), send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unexpected error on %s %s (request %s)", method, path, request_id)
            if not response_started:
                await refuse(
                    500, "INTERNAL_ERROR", f"unexpected server error (request {request_id})"
                )
        finally:
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _body_problem(self, path: str, method: str, headers: dict) -> tuple[int, str, str] | None:
        """Refusals decided from the headers alone: a declared size over the limit, a wrong type."""
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return 400, "MALFORMED_REQUEST", "Content-Length is not a number"
            if declared > self.settings.max_body_bytes:
                limit = self.settings.max_body_bytes
                return (
                    413,
                    "PAYLOAD_TOO_LARGE",
                    f"the body ({declared} bytes) exceeds MAX_BODY_BYTES={limit}",
                )
        if method != "POST" or path not in ("/invocations", "/predict"):
            return None
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        mime, _, parameters = content_type.partition(";")
        mime = mime.strip().lower()
        accepted = (JSON, "text/csv") if path == "/invocations" else (JSON,)
        if mime not in accepted:
            return (
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                f"Content-Type {content_type or 'missing'!r}; use {' or '.join(accepted)}",
            )
        charset = (
            parameters.strip().lower().removeprefix("charset=").strip('"')
            if parameters.strip()
            else "utf-8"
        )
        if charset.replace("-", "") != "utf8":
            return 415, "UNSUPPORTED_MEDIA_TYPE", f"only UTF-8 bodies are accepted, not {charset!r}"
        return None

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or None as soon as it grows past the limit (chunked uploads too)."""
        limit, chunks, size = self.settings.max_body_bytes, [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _request_id(given: bytes | None) -> str:
    if given and len(given) <= 128 and given.isascii() and given.decode().isprintable():
        return given.decode()
    return uuid.uuid4().hex


def _authorized(headers: dict, expected: bytes) -> bool:
    return hmac.compare_digest(headers.get(b"authorization", b""), expected)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _wants_probabilities(request: Request, params: dict) -> bool:
    raw = request.query_params.get("probabilities")
    if raw not in (None, "true", "false"):  # as OpenAPI writes a boolean in a query
        raise RequestError(
            400, "INVALID_PARAMETER", "query parameter 'probabilities' must be true or false"
        )
    return bool(params.get("probabilities")) or raw == "true"


ERRORS = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "malformed body, schema mismatch, wrong value type, empty batch",
        401: "missing or wrong bearer token (when SERVING_TOKEN is set)",
        413: "body larger than MAX_BODY_BYTES",
        415: "unsupported Content-Type",
        422: "a row that does not match the signature (/predict)",
        503: "the prediction log (PREDICTION_LOG) cannot be written, so nothing is answered",
    }.items()
}


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


def create_app(bundle: Path, settings: Settings | None = None) -> FastAPI:
    """The app for one bundle (two in ab and shadow modes: the champion first); SettingsError,
    IntegrityError or ModelLoadError when it cannot be served."""
    settings = settings or Settings.from_env()
    plan = settings.plan
    champion = load_arm(CHAMPION, Path(bundle), settings.runtime)
    challenger = load_challenger(settings, champion)
    model, provenance, manifest = champion.model, champion.provenance, champion.manifest
    metrics = Metrics(model, provenance, settings.prediction_buckets, shared=settings.workers > 1)
    prediction_log = None
    if settings.prediction_log:
        prediction_log = predlog.PredictionLog(
            Path(settings.prediction_log), provenance.name, provenance.version,
            max_bytes=settings.prediction_log_max_bytes, backups=settings.prediction_log_backups,
        )  # fmt: skip
    columns = model.columns
    classification = model.task == "classification"
    two = challenger is not None  # ab or shadow: log lines name their arm and row
    shadow = (
        Shadow(challenger, plan.shadow_queue, metrics, prediction_log)
        if two and plan.mode == arms.SHADOW
        else None
    )
    Row = schema.row_model(columns)
    PredictRequest = schema.request_model(Row)
    InvocationsRow = schema.row_model(columns, "InvocationsRow", schema.INVOCATIONS_BOUNDS)
    invocations_openapi = schema.invocations_openapi(
        columns, f"#/components/schemas/{InvocationsRow.__name__}",
        _example_row(model.input_example), classification,
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log.info(
            "serving %s version %s (run %s, %s, %d input columns, %s runtime)%s",
            provenance.name, provenance.version, provenance.run_id, model.task, len(columns),
            model.runtime,
            f"; prediction log {settings.prediction_log}" if prediction_log else "",
        )  # fmt: skip
        if challenger is not None:
            log.info(
                "%s mode: challenger %s version %s (%s runtime)%s",
                plan.mode, challenger.provenance.name, challenger.provenance.version,
                challenger.model.runtime,
                f", share {plan.share:g}, routed on "
                + (f"column {plan.routing_column!r}" if plan.routing_column else "X-Request-ID")
                if plan.mode == arms.AB
                else f", shadow queue {plan.shadow_queue} requests",
            )  # fmt: skip
        if prediction_log and prediction_log.repaired_bytes:
            log.warning(
                "prediction log %s: cut its last line, %d bytes without a newline (a server "
                "stopped in the middle of writing it)",
                settings.prediction_log, prediction_log.repaired_bytes,
            )  # fmt: skip
        yield
        if shadow:
            shadow.close()
        if prediction_log:
            prediction_log.close()

    app = FastAPI(
        title=f"{provenance.name} model server",
        version=provenance.version,
        description=f"Serves {provenance.name} version {provenance.version} ({model.task}).",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.model, app.state.manifest, app.state.metrics = model, manifest, metrics
    app.state.prediction_log = prediction_log
    app.state.champion, app.state.challenger, app.state.shadow = champion, challenger, shadow

    def respond(
        payload: Any, status: int = 200, arm: Arm | None = None, after: Any = None
    ) -> Response:
        headers = (
            {"X-Model-Version": arm.provenance.version, "X-Model-Arm": arm.name} if arm else None
        )
        return Response(
            json.dumps(payload, separators=(",", ":")), status_code=status, media_type=JSON,
            headers=headers, background=after,
        )  # fmt: skip

    def choose(request: Request, batch: schema.Batch) -> Arm:
        if challenger is None or plan.mode != arms.AB:
            return champion
        key = routing_key(request.state.request_id, batch, plan.routing_column)
        return challenger if arms.route(key, plan.share) == CHALLENGER else champion

    def fail(request: Request, status: int, body: dict) -> Response:
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        metrics.errors.labels(endpoint, body["error_code"]).inc()
        return respond(body, status)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> Response:
        return fail(request, error.status, error.body())

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return fail(request, *_explain(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(error.status_code, "HTTP_ERROR")
        answer = fail(
            request, error.status_code, {"error_code": code, "message": str(error.detail)}
        )
        answer.headers.update(error.headers or {})  # e.g. Allow on a 405
        return answer

    def run_model(request: Request, endpoint: str, batch: schema.Batch, probabilities: bool):
        """(the arm that answered, its predictions, its probabilities or None)."""
        if probabilities and not classification:
            raise RequestError(400, "INVALID_PARAMETER", "a regression model has no probabilities")
        arm = choose(request, batch)
        started = time.perf_counter()
        # Two versions are compared on the log, by a metric that may need probabilities (AUC):
        # they are logged for every row then, and answered only when asked for.
        logged_probabilities = probabilities or (two and classification)
        try:
            inputs = arm.model.inputs(batch.arrays)
            predictions = arm.model.predict(inputs)
            probas = arm.model.predict_proba(inputs) if logged_probabilities else None
        except Exception as error:  # the input passed the signature yet the model refused it
            raise RequestError(
                400, "PREDICTION_FAILED", f"the model could not predict these rows: {error}"
            ) from error
        seconds = time.perf_counter() - started
        if prediction_log:  # before the answer exists: an answered request is a logged one
            entry = predlog.Entry(
                time.time(), request.state.request_id, endpoint, seconds * 1000, batch.values,
                predictions, probas,
                *((arm.provenance.name, arm.provenance.version, arm.name) if two else ()),
            )  # fmt: skip
            log_prediction(entry)
        metrics.observe_predictions(endpoint, predictions, seconds)
        metrics.observe_arm(arm.name, arm.provenance.version, seconds)
        return arm, predictions, probas if probabilities else None

    def shadow_after(request: Request, endpoint: str, batch: schema.Batch):
        """In shadow mode, the challenger's job, handed to its thread once the answer is sent."""
        if shadow is None:
            return None
        return BackgroundTask(shadow.submit, ShadowJob(request.state.request_id, endpoint, batch))

    def log_prediction(entry: predlog.Entry) -> None:
        try:
            metrics.log_rows_left_out.inc(prediction_log.record(entry))
        except predlog.PredictionLogError as error:
            metrics.log_failures.inc()
            log.error(
                "cannot write the prediction log %s (%s): request %s refused with 503",
                error.filename, error.strerror, entry.request_id,
            )  # fmt: skip
            raise RequestError(
                503, "PREDICTION_LOG_UNAVAILABLE",
                f"the prediction log cannot be written ({error.strerror}) and every answer is "
                "logged, so none was given; retry later (the server's own log says more)",
            ) from error  # fmt: skip

    # The app exists only once the model is loaded and verified, and uvicorn accepts connections
    # only after that: a 200 here means the model answers.
    @app.get("/ping", summary="200 once the model is loaded")
    @app.get("/health", summary="same as /ping")
    async def ping() -> Response:
        return respond({"status": "ok"})

    @app.get("/version", summary="server and model versions")
    async def version() -> Response:
        return respond(
            {
                "server_version": __version__,
                "model_name": provenance.name,
                "model_version": provenance.version,
                "mlflow_version": model.mlmodel.get("mlflow_version"),
                "runtime": model.runtime,
                **two_versions(),
            }
        )

    def two_versions() -> dict:
        """The mode, and in ab and shadow modes both versions (champion first)."""
        if challenger is None:
            return {"mode": plan.mode}
        described = {"mode": plan.mode, "arms": [champion.describe(), challenger.describe()]}
        if plan.mode == arms.AB:
            described |= {"share": plan.share, "routing_column": plan.routing_column}
        else:
            described |= {"shadow_queue": plan.shadow_queue}
        return described

    @app.get("/metadata", summary="the model's provenance, signature and model card")
    async def metadata() -> Response:
        return respond(
            {
                "model": manifest.get("model"),
                "task": model.task,
                "runtime": model.runtime,
                "classes": model.classes if classification else None,
                "signature": [
                    {"name": c.name, "type": c.type, "required": c.required} for c in columns
                ],
                "model_card": manifest.get("model_card"),
                "files": (manifest.get("record") or {}).get("files"),
                "signed": bool((manifest.get("record") or {}).get("hmac")),
                "bundle_created": manifest.get("created"),
                **two_versions(),
                **({"challenger": arm_metadata(challenger)} if challenger else {}),
            }
        )

    def arm_metadata(arm: Arm) -> dict:
        record = arm.manifest.get("record") or {}
        return {
            "model": arm.manifest.get("model"),
            "runtime": arm.model.runtime,
            "classes": arm.model.classes if classification else None,
            "model_card": arm.manifest.get("model_card"),
            "files": record.get("files"),
            "signed": bool(record.get("hmac")),
            "bundle_created": arm.manifest.get("created"),
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/invocations",
        summary="MLflow scoring protocol (dataframe_split, dataframe_records, instances, inputs, CSV)",
        openapi_extra=invocations_openapi,
        response_model=None,
        responses={200: {"model": schema.InvocationsResponse}, **ERRORS},
    )
    async def invocations(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-type", "").lower().startswith("text/csv"):
            batch, params = schema.parse_csv(body, columns), {}
        else:
            batch, params = schema.parse_json(body, columns)
        probabilities = _wants_probabilities(request, params)
        arm, predictions, probas = run_model(request, "/invocations", batch, probabilities)
        answer: dict[str, Any] = {"predictions": predictions}
        if probas is not None:
            answer["probabilities"] = probas
        return respond(answer, arm=arm, after=shadow_after(request, "/invocations", batch))

    @app.post(
        "/predict",
        summary="typed prediction: the class (or value) and, for classifiers, probabilities",
        response_model=None,
        responses={200: {"model": PredictResponse}, **ERRORS},
    )
    async def predict(request: Request, body: PredictRequest) -> Response:
        fields = [f"c{i}" for i in range(len(columns))]
        values = {
            c.name: [_plain(getattr(row, f)) for row in body.rows]
            for c, f in zip(columns, fields, strict=True)
        }
        batch = schema.check(values, columns)
        arm, predictions, probas = run_model(request, "/predict", batch, classification)
        rows = [
            {"prediction": p, "probabilities": probas[i] if probas else None}
            for i, p in enumerate(predictions)
        ]
        return respond(
            {
                "predictions": rows,
                "model_name": arm.provenance.name,
                "model_version": arm.provenance.version,
            },
            arm=arm,
            after=shadow_after(request, "/predict", batch),
        )

    def openapi() -> dict:
        """FastAPI's document, plus the row schema only /invocations' hand-written body uses."""
        if app.openapi_schema is None:
            components = FastAPI.openapi(app)["components"]["schemas"]
            components[InvocationsRow.__name__] = InvocationsRow.model_json_schema()
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(Gate, settings=settings, metrics=metrics)
    return app


def _example_row(example: dict | None) -> dict | None:
    """The first row of the model's input example in `dataframe_split` form, NaN as null."""
    if not example or not example.get("data"):
        return None
    row = [None if isinstance(v, float) and not math.isfinite(v) else v for v in example["data"][0]]
    return {"columns": example["columns"], "data": [row]}


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _explain(errors: list[dict]) -> tuple[int, dict]:
    """FastAPI's validation errors for /predict as one sentence naming the rows and columns."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, {"error_code": "MALFORMED_REQUEST", "message": "the body is not valid JSON"}
    missing, unknown, invalid = [], [], []
    for e in errors:
        loc = [part for part in e.get("loc", ()) if part != "body"]
        where = ".".join(str(part) for part in loc) or "body"
        if e.get("type") == "missing":
            missing.append(where)
        elif e.get("type") == "extra_forbidden":
            unknown.append(where)
        else:
            invalid.append(f"{where}: {e.get('msg')}")
    parts = [
        f"missing {missing}" if missing else "",
        f"unknown {unknown}" if unknown else "",
        f"invalid {invalid}" if invalid else "",
    ]
    message = "; ".join(p for p in parts if p)
    code = "SCHEMA_MISMATCH" if (missing or unknown) else "INVALID_VALUE"
    return 422, {
        "error_code": code,
        "message": message,
        "missing": missing,
        "unknown": unknown,
        "invalid": invalid,
    }
