"""The serving app: MLflow's scoring protocol, a typed /predict, health, metadata and metrics.

    POST /invocations  MLflow's protocol (JSON formats or CSV) -> {"predictions": [...]};
                       classifiers add "probabilities" with ?probabilities=true or
                       "params": {"probabilities": true}
    POST /predict      {"rows": [{column: value, ...}]} -> class (or value) and probabilities;
                       its OpenAPI schema is generated from the model's signature
    GET  /ping /health 200 once the model is loaded (never behind the token)
    GET  /version /metadata /metrics /docs /openapi.json

Here: `create_app`, which wires the parts together, the routes, and `Scoring`, what a prediction
request goes through once its rows are checked. The settings (settings.py), the middleware in
front of every request (gate.py), the versions served (versions.py) and the metrics (metrics.py)
have modules of their own.

In two-version modes (versions.py) a classifier's probabilities are logged for every row (the
experiment's metric may need them) and answered only when asked for. Every prediction response
carries X-Model-Version and X-Model-Arm (champion or challenger), in every mode; /version and
/metadata describe both versions and the mode.

No `from __future__ import annotations` here: FastAPI must see the request model generated at
run time as a real annotation.
"""

import json
import math
import time
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from . import arms, predlog, schema
from .arms import CHALLENGER, CHAMPION
from .gate import ENDPOINTS, JSON, Gate
from .metrics import Metrics
from .schema import ErrorBody, PredictResponse, RequestError
from .settings import WORKERS_ENV, Settings, log, worker_count
from .versions import Arm, Shadow, ShadowJob, load_arm, load_challenger, routing_key

# WORKERS_ENV and worker_count live in settings.py; benchmarks/serving.py reads them from here in
# the image of whichever runtime a project holds, so they stay importable from this module.
__all__ = ["WORKERS_ENV", "create_app", "worker_count"]

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
    shadow = (
        Shadow(challenger, plan.shadow_queue, metrics, prediction_log)
        if challenger is not None and plan.mode == arms.SHADOW
        else None
    )
    scoring = Scoring(champion, challenger, plan, metrics, prediction_log, shadow)
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
        arm, predictions, probas = scoring.run_model(request, "/invocations", batch, probabilities)
        answer: dict[str, Any] = {"predictions": predictions}
        if probas is not None:
            answer["probabilities"] = probas
        return respond(answer, arm=arm, after=scoring.shadow_after(request, "/invocations", batch))

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
        arm, predictions, probas = scoring.run_model(request, "/predict", batch, classification)
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
            after=scoring.shadow_after(request, "/predict", batch),
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


class Scoring:
    """What a prediction request goes through once its rows are checked: the version that answers
    it, the model's predict, the prediction log and the metrics; in shadow mode, the challenger's
    job for after the answer."""

    def __init__(
        self, champion: Arm, challenger: Arm | None, plan: arms.Plan, metrics: Metrics,
        prediction_log: predlog.PredictionLog | None, shadow: Shadow | None,
    ):  # fmt: skip
        self.champion, self.challenger, self.plan = champion, challenger, plan
        self.metrics, self.prediction_log, self.shadow = metrics, prediction_log, shadow
        self.classification = champion.model.task == "classification"
        self.two = challenger is not None  # ab or shadow: log lines name their arm and row

    def choose(self, request: Request, batch: schema.Batch) -> Arm:
        if self.challenger is None or self.plan.mode != arms.AB:
            return self.champion
        key = routing_key(request.state.request_id, batch, self.plan.routing_column)
        return self.challenger if arms.route(key, self.plan.share) == CHALLENGER else self.champion

    def run_model(self, request: Request, endpoint: str, batch: schema.Batch, probabilities: bool):
        """(the arm that answered, its predictions, its probabilities or None)."""
        if probabilities and not self.classification:
            raise RequestError(400, "INVALID_PARAMETER", "a regression model has no probabilities")
        arm = self.choose(request, batch)
        started = time.perf_counter()
        # Two versions are compared on the log, by a metric that may need probabilities (AUC):
        # they are logged for every row then, and answered only when asked for.
        logged_probabilities = probabilities or (self.two and self.classification)
        try:
            inputs = arm.model.inputs(batch.arrays)
            predictions = arm.model.predict(inputs)
            probas = arm.model.predict_proba(inputs) if logged_probabilities else None
        except Exception as error:  # the input passed the signature yet the model refused it
            raise RequestError(
                400, "PREDICTION_FAILED", f"the model could not predict these rows: {error}"
            ) from error
        seconds = time.perf_counter() - started
        if self.prediction_log:  # before the answer exists: an answered request is a logged one
            entry = predlog.Entry(
                time.time(), request.state.request_id, endpoint, seconds * 1000, batch.values,
                predictions, probas,
                *((arm.provenance.name, arm.provenance.version, arm.name) if self.two else ()),
            )  # fmt: skip
            self.log_prediction(entry)
        self.metrics.observe_predictions(endpoint, predictions, seconds)
        self.metrics.observe_arm(arm.name, arm.provenance.version, seconds)
        return arm, predictions, probas if probabilities else None

    def shadow_after(self, request: Request, endpoint: str, batch: schema.Batch):
        """In shadow mode, the challenger's job, handed to its thread once the answer is sent."""
        if self.shadow is None:
            return None
        return BackgroundTask(
            self.shadow.submit, ShadowJob(request.state.request_id, endpoint, batch)
        )

    def log_prediction(self, entry: predlog.Entry) -> None:
        try:
            self.metrics.log_rows_left_out.inc(self.prediction_log.record(entry))
        except predlog.PredictionLogError as error:
            self.metrics.log_failures.inc()
            log.error(
                "cannot write the prediction log %s (%s): request %s refused with 503",
                error.filename, error.strerror, entry.request_id,
            )  # fmt: skip
            raise RequestError(
                503, "PREDICTION_LOG_UNAVAILABLE",
                f"the prediction log cannot be written ({error.strerror}) and every answer is "
                "logged, so none was given; retry later (the server's own log says more)",
            ) from error  # fmt: skip


def respond(payload: Any, status: int = 200, arm: Arm | None = None, after: Any = None) -> Response:
    """Compact JSON; a prediction's answer names the version that gave it (`arm`)."""
    headers = {"X-Model-Version": arm.provenance.version, "X-Model-Arm": arm.name} if arm else None
    return Response(
        json.dumps(payload, separators=(",", ":")), status_code=status, media_type=JSON,
        headers=headers, background=after,
    )  # fmt: skip


def _wants_probabilities(request: Request, params: dict) -> bool:
    raw = request.query_params.get("probabilities")
    if raw not in (None, "true", "false"):  # as OpenAPI writes a boolean in a query
        raise RequestError(
            400, "INVALID_PARAMETER", "query parameter 'probabilities' must be true or false"
        )
    return bool(params.get("probabilities")) or raw == "true"


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
