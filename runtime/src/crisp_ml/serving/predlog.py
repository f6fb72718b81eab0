"""The prediction log: JSON Lines, one line per predicted row, off unless PREDICTION_LOG is set.

    {"timestamp": "2026-01-31T12:00:00.123+00:00", "request_id": "…", "endpoint": "/invocations",
     "model_name": "…", "model_version": "3", "latency_ms": 1.9,
     "inputs": {"column": value, ...}, "prediction": …, "probabilities": {"class": p, ...}}

Read it with `pandas.read_json(path, lines=True)` (`pandas.json_normalize` flattens `inputs`).

A server holding two versions (SERVING_MODE ab or shadow, see arms.py) adds to every row line
`"arm"` ("champion" or "challenger", the version that answered, named by `model_version`) and
`"row"` (the row's index within its request), right after `latency_ms`. In shadow mode the
challenger's answers are lines of their own, written once it has scored (after the response):
the same fields with `"arm": "shadow"`, the challenger's name, version and model latency, and no
`inputs` (they are on the champion's line of the same request_id and row); a classifier's shadow
lines always carry `probabilities`. Single mode writes neither field: its lines are as above.

An answered request is in the log: `record` hands a request's lines to the operating system
(`os.write` on a file opened for appending) before the app answers, so they survive the server
being killed right after (only the machine going down can lose what the OS has not yet put on
disk). A write that fails (disk full, no permission) raises PredictionLogError and the app refuses
the request rather than answer it unlogged; whatever part of it reached the file is cut, so the
next entry starts on a line of its own. A last line without its newline (the server was killed in
the middle of a write) is cut when the log opens: `repaired_bytes` says how much.

The file is bounded: past `max_bytes` it is rotated to `<file>.1` … `<file>.<backups>` (the oldest
is dropped); with backups=0 it is truncated instead. A request whose lines alone exceed `max_bytes`
is logged in part: as many of its rows as fit, then a summary line without `inputs` that counts
them (`"rows": 5000, "rows_logged": 1203`).

Several processes (SERVING_WORKERS) share one log, its bound and its rotation: each entry is
written under an exclusive `flock` on the file, taken after checking that the file is still the
one at the path (another process may have rotated it away; then it is reopened). Under the lock a
writer also cuts a torn last line left by a process killed mid-write, so no entry joins it. One
file, in the order entries were written, read as before. (Without `fcntl`, on Windows, the lock
is left out: one process per log there.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

NEWLINE = b"\n"
TAIL_CHUNK = 64 * 1024  # how far back each step looks for the last newline of a torn file


class PredictionLogError(OSError):
    """The log could not be written (`strerror` says why, `filename` where): the request must
    not be answered as if it had been."""


def _finite(value: Any) -> Any:
    """NaN and infinity (possible from CSV) are not JSON: logged as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass(frozen=True)
class Entry:
    """One request's worth of log lines."""

    timestamp: float
    request_id: str
    endpoint: str
    latency_ms: float
    values: dict[str, list]  # column -> values, as sent
    predictions: list
    probabilities: list[dict] | None
    model_name: str | None = None  # the version that scored the rows (None: the log's own)
    model_version: str | None = None
    arm: str | None = None  # champion, challenger or shadow; None (single mode): no arm, no row
    with_inputs: bool = True  # shadow lines leave them to the champion's line


class PredictionLog:
    def __init__(
        self, path: Path, model_name: str, model_version: str, max_bytes: int, backups: int = 1
    ):
        self.path = Path(path)
        self.model_name, self.model_version = model_name, model_version
        self.max_bytes, self.backups = max(int(max_bytes), 1024), max(int(backups), 0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one writer thread at a time; flock: one process
        self._fd = self._open()  # fails now, not on the first request
        with self._locked():
            self.repaired_bytes = self._cut_torn_tail()  # later ones add to it

    def record(self, entry: Entry) -> int:
        """Write the entry's lines now; returns how many of its rows were left out (0 unless the
        request alone is larger than `max_bytes`). PredictionLogError when nothing was logged."""
        lines = self._lines(entry)
        left_out = 0
        if sum(map(len, lines)) > self.max_bytes:
            kept = self._rows_that_fit(lines, entry)
            left_out = len(lines) - len(kept)
            lines = [*kept, _encode(self._summary(entry, len(lines), len(kept)))]
        with self._lock:
            if self._fd < 0:  # closed: a late writer (a shadow thread at shutdown) must not
                # write to whatever file reuses the descriptor's number
                raise PredictionLogError(
                    errno.EBADF, "the prediction log is closed", str(self.path)
                )
            self._append(b"".join(lines))
        return left_out

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # --- lines ------------------------------------------------------------------------------------

    def _common(self, entry: Entry) -> dict[str, Any]:
        return {
            "timestamp": datetime.fromtimestamp(entry.timestamp, UTC).isoformat(
                timespec="milliseconds"
            ),
            "request_id": entry.request_id,
            "endpoint": entry.endpoint,
            "model_name": entry.model_name or self.model_name,
            "model_version": entry.model_version or self.model_version,
            "latency_ms": round(entry.latency_ms, 3),
        } | ({"arm": entry.arm} if entry.arm else {})

    def _lines(self, entry: Entry) -> list[bytes]:
        common = self._common(entry)
        names = list(entry.values)
        rows = zip(*entry.values.values(), strict=True)
        lines = []
        for i, row in enumerate(rows):
            line = {**common, "row": i} if entry.arm else dict(common)
            if entry.with_inputs:
                line["inputs"] = {name: _finite(v) for name, v in zip(names, row, strict=True)}
            line["prediction"] = entry.predictions[i]
            if entry.probabilities is not None:
                line["probabilities"] = entry.probabilities[i]
            lines.append(_encode(line))
        return lines

    def _summary(self, entry: Entry, rows: int, logged: int) -> dict[str, Any]:
        """The line closing a request too large for the log: how many of its rows are in it."""
        return self._common(entry) | {"rows": rows, "rows_logged": logged}

    def _rows_that_fit(self, lines: list[bytes], entry: Entry) -> list[bytes]:
        """The first rows' lines that fit in one file beside the summary line."""
        widest = len(lines)  # the summary with the longest counts it can hold
        room = self.max_bytes - len(_encode(self._summary(entry, widest, widest)))
        kept, used = [], 0
        for line in lines:
            used += len(line)
            if used > room:
                break
            kept.append(line)
        return kept

    # --- the file ---------------------------------------------------------------------------------

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        return os.open(self.path, flags, 0o666)

    def _append(self, data: bytes) -> None:
        """`data` in the file (handed to the OS), or PredictionLogError and the file as before."""
        try:
            with self._locked():
                while True:
                    self.repaired_bytes += self._cut_torn_tail()
                    size = os.fstat(self._fd).st_size
                    if not size or size + len(data) <= self.max_bytes:
                        break
                    self._rotate()  # and now hold the lock of the file at the path again
                try:
                    written = 0
                    while written < len(data):
                        written += os.write(self._fd, data[written:])
                except OSError:
                    self._cut_back(size)  # the lock still held: nobody wrote after it
                    raise
        except OSError as error:
            raise PredictionLogError(error.errno, error.strerror, str(self.path)) from error

    def _cut_back(self, size: int) -> None:
        """Drop a partly written entry; if even that fails, the next writer cuts it."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, size)

    @contextlib.contextmanager
    def _locked(self):
        """Hold the other processes' writers off the file at the path (see the module doc)."""
        self._lock_current()
        try:
            yield
        finally:
            if fcntl:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _lock_current(self) -> None:
        """Lock our file; if it is no longer the one at the path (rotated away, deleted), open
        that one instead and lock it."""
        if not fcntl:
            return
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            held = os.fstat(self._fd)
            with contextlib.suppress(FileNotFoundError):
                current = os.stat(self.path)
                if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                    return
            fresh = self._open()
            os.close(self._fd)  # and its lock
            self._fd = fresh

    def _rotate(self) -> None:
        """Shift the backups and start an empty file (or empty it: backups=0), with the lock held;
        returns holding the lock of the file at the path. The old file stays open until the new
        one is, so a failure on the way leaves the log writable where it was."""
        if not self.backups:
            os.ftruncate(self._fd, 0)  # in place: other processes' descriptors stay valid
            return
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        fresh = self._open()  # another process may have created it since the rename: appended to
        os.close(self._fd)  # releases the old file's lock
        self._fd = fresh
        self._lock_current()

    def _cut_torn_tail(self) -> int:
        """Cut a last line left without its newline (a write a kill interrupted), so the next
        entry does not join it; returns the number of bytes cut. Called with the lock held:
        every other writer has finished its lines."""
        size = end = os.fstat(self._fd).st_size
        if not size or self._read(size - 1, 1) == NEWLINE:
            return 0
        keep = 0
        while end > 0:
            start = max(0, end - TAIL_CHUNK)
            newline = self._read(start, end - start).rfind(NEWLINE)
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        os.ftruncate(self._fd, keep)
        return size - keep

    def _read(self, offset: int, size: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fd, size, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)  # writes still append: O_APPEND ignores it
        return os.read(self._fd, size)


def is_summary(entry: dict) -> bool:
    """Whether a log line is one `PredictionLog._summary` wrote: how many rows a too-large
    request had, and how many of them were logged."""
    counts = (entry.get("rows"), entry.get("rows_logged"))
    return all(type(n) is int for n in counts) and 0 <= counts[1] <= counts[0]


def _encode(line: dict) -> bytes:
    return (json.dumps(line, default=str, allow_nan=False) + "\n").encode()


def from_env(env: dict[str, str], model_name: str, model_version: str) -> PredictionLog | None:
    """The log PREDICTION_LOG asks for (None when unset), sized by PREDICTION_LOG_MAX_BYTES."""
    if not (path := env.get("PREDICTION_LOG", "").strip()):
        return None
    return PredictionLog(
        Path(path), model_name, model_version,
        max_bytes=int(env.get("PREDICTION_LOG_MAX_BYTES", 50 * 1024 * 1024)),
        backups=int(env.get("PREDICTION_LOG_BACKUPS", 1)),
    )  # fmt: skip
