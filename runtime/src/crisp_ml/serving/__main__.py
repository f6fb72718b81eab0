"""`python -m crisp_ml.serving`: verify the bundle, load the model, serve it with uvicorn.

The image's entry point, and what `<project> serve` runs after exporting a bundle. Exit codes:
2 bad setting, 3 integrity check failed (a model file differs from the manifest), 4 the model
cannot be loaded: all decided before any worker starts.

SERVING_WORKERS (or --workers): how many server processes answer, a whole number (default 1) or
`auto`, one per CPU this process may use (its affinity, and the cgroup's CPU quota in a container
started with `docker run --cpus N`; the image sets auto). One worker is one process, as before.
With more, this process checks and loads the bundle once to fail fast, then starts the workers,
and each verifies and loads the bundle itself; they share the port. Their metrics meet in a
private temporary directory (PROMETHEUS_MULTIPROC_DIR, removed at exit) so /metrics counts every
worker's requests; they share the prediction log (predlog.py says how). SIGTERM or Ctrl+C stops
every worker, and a worker whose parent is killed outright stops too (Linux).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

EXIT_SETTINGS, EXIT_INTEGRITY, EXIT_MODEL = 2, 3, 4
BUNDLE_ENV, METRICS_DIR_ENV = "MODEL_BUNDLE", "PROMETHEUS_MULTIPROC_DIR"


def run(
    bundle: Path, host: str, port: int, access_log: bool = False, workers: str | None = None
) -> int:
    """Serve until stopped; `workers` as SERVING_WORKERS takes it (None: that variable)."""
    import uvicorn

    from .app import WORKERS_ENV, Settings, SettingsError, create_app, worker_count
    from .integrity import IntegrityError
    from .model import ModelLoadError

    refusals = ((SettingsError, EXIT_SETTINGS), (IntegrityError, EXIT_INTEGRITY))
    try:
        count = worker_count(os.environ.get(WORKERS_ENV) if workers is None else workers)
        settings = Settings.from_env({**os.environ, WORKERS_ENV: str(count)})
        app = create_app(bundle, replace(settings, workers=1))  # the workers' check, done once
    except (SettingsError, IntegrityError, ModelLoadError, OSError) as error:
        sys.stderr.write(f"refusing to start: {error}\n")
        return next((code for kind, code in refusals if isinstance(error, kind)), EXIT_MODEL)
    options = {
        "host": host, "port": port, "access_log": access_log, "server_header": False,
        "log_level": os.environ.get("LOG_LEVEL", "info").lower(),
    }  # fmt: skip
    if count == 1:
        uvicorn.run(app, workers=1, **options)
        return 0
    if app.state.prediction_log:
        app.state.prediction_log.close()
    del app  # each worker loads its own
    # prometheus_client is imported here already, so this process keeps its metrics in memory;
    # the workers are new interpreters (spawned) and take the directory from the environment.
    given = {name: os.environ.get(name) for name in (BUNDLE_ENV, WORKERS_ENV, METRICS_DIR_ENV)}
    metrics_dir = tempfile.mkdtemp(prefix="serving-metrics-")
    os.environ[BUNDLE_ENV] = str(Path(bundle).resolve())
    os.environ[WORKERS_ENV], os.environ[METRICS_DIR_ENV] = str(count), metrics_dir
    try:
        uvicorn.run(f"{__package__}.__main__:worker_app", factory=True, workers=count, **options)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for name, value in given.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0


def worker_app():
    """The app of one worker process (uvicorn's factory), from the environment `run` set."""
    from .app import Settings, create_app

    _stop_with_parent()
    return create_app(Path(os.environ[BUNDLE_ENV]), Settings.from_env())


def _stop_with_parent() -> None:
    """On Linux, SIGTERM this worker when its parent dies, even by SIGKILL: no orphan keeps the
    port and serves on. (Elsewhere a killed parent leaves its workers to be stopped by hand.)"""
    import multiprocessing

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--bundle", type=Path, default=Path(os.environ.get(BUNDLE_ENV, "/opt/bundle"))
    )
    # SERVING_HOST, not HOST: zsh sets HOST to the machine's name.
    parser.add_argument("--host", default=os.environ.get("SERVING_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument(
        "--access-log", action="store_true",
        default=os.environ.get("ACCESS_LOG", "").lower() in ("1", "true"),
        help="log every request (off by default: /metrics counts them)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", default=None, metavar="N|auto",
        help="server processes (default: SERVING_WORKERS, else 1); auto: one per usable CPU",
    )  # fmt: skip
    args = parser.parse_args(argv)
    return run(args.bundle, args.host, args.port, args.access_log, args.workers)


if __name__ == "__main__":
    sys.exit(main())
