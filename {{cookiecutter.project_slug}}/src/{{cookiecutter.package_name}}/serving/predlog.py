"""The prediction log: JSON Lines, one line per predicted row, off unless PREDICTION_LOG is set.

    {"timestamp": "2026-01-31T12:00:00.123+00:00", "request_id": "…", "endpoint": "/invocations",
     "model_name": "…", "model_version": "3", "latency_ms": 1.9,
     "inputs": {"column": value, ...}, "prediction": …, "probabilities": {"class": p, ...}}

Read it with `pandas.read_json(path, lines=True)` (`pandas.json_normalize` flattens `inputs`).
Requests only enqueue; a background thread formats and writes, so the event loop never waits on
the disk. The file is bounded: past `max_bytes` it is rotated to `<file>.1` … `<file>.<backups>`
(the oldest is dropped); with backups=0 it is truncated instead. If the writer falls behind by
more than `max_pending` requests, new entries are dropped and counted, never queued without bound.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_STOP = object()


def _finite(value: Any) -> Any:
    """NaN and infinity (possible from CSV) are not JSON: logged as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass(frozen=True)
class Entry:
    """One request's worth of log lines, formatted later in the writer thread."""

    timestamp: float
    request_id: str
    endpoint: str
    latency_ms: float
    values: dict[str, list]  # column -> values, as sent
    predictions: list
    probabilities: list[dict] | None


class PredictionLog:
    def __init__(
        self, path: Path, model_name: str, model_version: str, max_bytes: int,
        backups: int = 1, max_pending: int = 10_000,
    ):  # fmt: skip
        self.path = Path(path)
        self.model_name, self.model_version = model_name, model_version
        self.max_bytes, self.backups = max(int(max_bytes), 1024), max(int(backups), 0)
        self.dropped = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")  # fails now, not on the first request
        self._size = self._file.tell()
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, entry: Entry) -> None:
        """Enqueue without blocking; a full queue drops the entry and counts it."""
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        self._file.close()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is on disk (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._file.flush()
                return
            if isinstance(item, threading.Event):
                self._file.flush()
                item.set()
                continue
            try:
                self._write(self._lines(item))
                if self._queue.empty():  # caught up: make the lines visible to readers now
                    self._file.flush()
            except (OSError, TypeError, ValueError):  # a log problem must not stop the server
                self.dropped += 1

    def _lines(self, entry: Entry) -> str:
        common = {
            "timestamp": datetime.fromtimestamp(entry.timestamp, UTC).isoformat(
                timespec="milliseconds"
            ),
            "request_id": entry.request_id,
            "endpoint": entry.endpoint,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "latency_ms": round(entry.latency_ms, 3),
        }
        names = list(entry.values)
        rows = zip(*entry.values.values(), strict=True)
        lines = []
        for i, row in enumerate(rows):
            inputs = {name: _finite(value) for name, value in zip(names, row, strict=True)}
            line = {**common, "inputs": inputs, "prediction": entry.predictions[i]}
            if entry.probabilities is not None:
                line["probabilities"] = entry.probabilities[i]
            lines.append(json.dumps(line, default=str, allow_nan=False) + "\n")
        return "".join(lines)

    def _write(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        if size > self.max_bytes:  # one request larger than the whole log: not kept
            self.dropped += 1
            return
        if self._size and self._size + size > self.max_bytes:
            self._rotate()
        self._file.write(text)
        self._size += size

    def _rotate(self) -> None:
        self._file.close()
        if self.backups:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("w", encoding="utf-8")
        self._size = 0


def from_env(env: dict[str, str], model_name: str, model_version: str) -> PredictionLog | None:
    """The log PREDICTION_LOG asks for (None when unset), sized by PREDICTION_LOG_MAX_BYTES."""
    if not (path := env.get("PREDICTION_LOG", "").strip()):
        return None
    return PredictionLog(
        Path(path), model_name, model_version,
        max_bytes=int(env.get("PREDICTION_LOG_MAX_BYTES", 50 * 1024 * 1024)),
        backups=int(env.get("PREDICTION_LOG_BACKUPS", 1)),
    )  # fmt: skip
