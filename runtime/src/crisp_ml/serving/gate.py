"""`Gate`, the ASGI middleware in front of every request, and the JSON body of its refusals.

A module of its own because it sits below FastAPI: it refuses a request (token, body size and
type) before any route or FastAPI's error handling runs, and needs nothing of the model's.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from typing import Any

from .metrics import Metrics
from .settings import Settings, log

OPEN_PATHS = frozenset({"/ping", "/health"})
ENDPOINTS = frozenset(
    {"/invocations", "/predict", "/ping", "/health", "/version", "/metadata", "/metrics"}
    | {"/docs", "/openapi.json"}
)
JSON = "application/json"


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
