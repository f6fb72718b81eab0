"""The server's settings: what the environment (or `python -m crisp_ml.serving`'s options) chose.

Environment (all optional): SERVING_TOKEN (bearer token for all but /ping and /health),
MAX_BODY_BYTES (default 1 MiB, checked before parsing), PREDICTION_LOG (a .jsonl path; off when
unset), PREDICTION_LOG_MAX_BYTES, PREDICTION_LOG_BACKUPS, PREDICTION_BUCKETS (histogram bounds
for a regressor's predictions, comma-separated), SERVING_RUNTIME (auto, onnx or scikit-learn:
model.py says how `auto` chooses), SERVING_WORKERS (server processes: a whole number, default 1,
or `auto`, one per CPU the process may use; `python -m crisp_ml.serving` starts them, and with
more than one, /metrics adds up every worker's counts; process_* metrics are left out then, as
each would describe one worker only). The two-version settings are arms.py's `Plan`; versions.py
says what the server does with them.

A module of its own because every other part of the server reads these, and reading them needs
neither FastAPI nor prometheus_client; so does the logger they all write to, `log`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import arms
from .arms import SettingsError
from .model import RUNTIME_ENV

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one; our lines sit with its own

# A 1-2.5-5 ladder over both signs: fits most regression targets without knowing their scale.
VALUE_BUCKETS = tuple(
    sorted({s * m * 10**e for s in (-1, 1) for m in (1, 2.5, 5) for e in range(-1, 5)} | {0.0})
)
WORKERS_ENV = "SERVING_WORKERS"
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2 quota, "<quota> <period>" or "max <period>"


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
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
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
