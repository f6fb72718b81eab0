"""The server's Prometheus metrics (`Metrics`), and with several worker processes the collector
that adds up every worker's values (`_Workers`).

A module of its own because the gate, the routes and the shadow all record into one `Metrics`,
and sharing them across processes (prometheus_client's multiprocess mode) is a subject of its own.
"""

from __future__ import annotations

import math
import os
from collections import Counter as Tally
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from . import bundle as bundle_files
from .arms import SettingsError
from .model import ServedModel
from .settings import WORKERS_ENV

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


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
