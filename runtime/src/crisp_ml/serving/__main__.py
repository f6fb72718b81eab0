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

Two versions (arms.py): --mode single|ab|shadow (SERVING_MODE), --challenger-bundle DIR
(CHALLENGER_BUNDLE), --share (SERVING_CHALLENGER_SHARE), --routing-column (SERVING_ROUTING_COLUMN).
The challenger bundle is verified and loaded exactly as the first, with the same exit codes: 3 when
a file differs from its manifest, 4 when it cannot be loaded, and 4 too when it cannot serve the
champion's requests (other input columns or types, another task). Exit 2 for a bad mode or share,
ab or shadow without a challenger bundle, the same version twice, or an unknown routing column.

--check: do every check of a start (settings, integrity, loading each version) and import what
starting the server would, then exit 0 without listening; the prediction log is not opened, so
it is never changed. The image build runs it: a bundle that would not start fails the build, and
the bytecode of what start-up imports is compiled into the image.
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

from .arms import CHALLENGER_ENV, DEFAULT_SHARE, MODE_ENV, ROUTING_ENV, SHARE_ENV

EXIT_SETTINGS, EXIT_INTEGRITY, EXIT_MODEL = 2, 3, 4
BUNDLE_ENV, METRICS_DIR_ENV = "MODEL_BUNDLE", "PROMETHEUS_MULTIPROC_DIR"


def run(
    bundle: Path,
    host: str,
    port: int,
    access_log: bool = False,
    workers: str | None = None,
    overrides: dict[str, str] | None = None,
    check_only: bool = False,
) -> int:
    """Serve until stopped; `workers` as SERVING_WORKERS takes it (None: that variable);
    `overrides`: settings (SERVING_MODE, CHALLENGER_BUNDLE...) that win over the environment;
    `check_only`: return 0 once the server could start, without starting it."""
    import uvicorn

    from .app import create_app
    from .arms import SettingsError
    from .integrity import IntegrityError
    from .model import ModelLoadError
    from .settings import WORKERS_ENV, Settings, worker_count

    refusals = ((SettingsError, EXIT_SETTINGS), (IntegrityError, EXIT_INTEGRITY))
    overrides = dict(overrides or {})
    if challenger := overrides.get(CHALLENGER_ENV):  # the workers may start elsewhere
        overrides[CHALLENGER_ENV] = str(Path(challenger).resolve())
    try:
        count = worker_count(os.environ.get(WORKERS_ENV) if workers is None else workers)
        settings = Settings.from_env({**os.environ, **overrides, WORKERS_ENV: str(count)})
        if check_only:  # opening the log may cut a torn last line: leave that to a real start
            settings = replace(settings, prediction_log=None)
        app = create_app(bundle, replace(settings, workers=1))  # the workers' check, done once
    except (SettingsError, IntegrityError, ModelLoadError, OSError) as error:
        sys.stderr.write(f"refusing to start: {error}\n")
        return next((code for kind, code in refusals if isinstance(error, kind)), EXIT_MODEL)
    options = {
        "host": host, "port": port, "access_log": access_log, "server_header": False,
        "log_level": os.environ.get("LOG_LEVEL", "info").lower(),
    }  # fmt: skip
    if check_only:
        _import_server(app, options)
        sys.stderr.write(f"ready to serve {bundle} ({settings.plan.mode}, {count} worker(s))\n")
        return 0
    if count == 1:
        uvicorn.run(app, workers=1, **options)
        return 0
    if app.state.prediction_log:
        app.state.prediction_log.close()
    del app  # each worker loads its own
    # prometheus_client is imported here already, so this process keeps its metrics in memory;
    # the workers are new interpreters (spawned) and take the directory from the environment.
    names = {BUNDLE_ENV, WORKERS_ENV, METRICS_DIR_ENV, *overrides}
    given = {name: os.environ.get(name) for name in names}
    metrics_dir = tempfile.mkdtemp(prefix="serving-metrics-")
    os.environ.update(overrides)  # the workers read their settings from the environment
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


def _import_server(app, options: dict) -> None:
    """Import what uvicorn imports only once it runs: its event loop, HTTP protocol and lifespan
    (its worker supervisor comes with uvicorn itself)."""
    import uvicorn

    config = uvicorn.Config(app, **options)
    config.load()
    config.get_loop_factory()


def worker_app():
    """The app of one worker process (uvicorn's factory), from the environment `run` set."""
    from .app import create_app
    from .settings import Settings

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
    parser.add_argument("--mode", help="single, ab or shadow (default: SERVING_MODE, else single)")
    parser.add_argument(
        "--challenger-bundle", type=Path, metavar="DIR",
        help="the second version's bundle, for ab and shadow (default: CHALLENGER_BUNDLE)",
    )  # fmt: skip
    parser.add_argument(
        "--share",
        help=f"ab: the challenger's share of requests, 0 to 1 (default {DEFAULT_SHARE:g})",
    )
    parser.add_argument(
        "--routing-column", metavar="COLUMN",
        help="ab: route on this input column's value in the first row, not on X-Request-ID",
    )  # fmt: skip
    parser.add_argument(
        "--check", action="store_true",
        help="check that the server would start (exit status as it would refuse), then exit",
    )  # fmt: skip
    args = parser.parse_args(argv)
    given = {
        MODE_ENV: args.mode,
        CHALLENGER_ENV: args.challenger_bundle and str(args.challenger_bundle),
        SHARE_ENV: args.share,
        ROUTING_ENV: args.routing_column,
    }
    overrides = {name: value for name, value in given.items() if value is not None}
    return run(
        args.bundle, args.host, args.port, args.access_log, args.workers, overrides, args.check
    )


if __name__ == "__main__":
    sys.exit(main())
