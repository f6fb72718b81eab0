"""`python -m crisp_ml.serving`: verify the bundle, load the model, serve it with uvicorn.

The image's entry point, and what `<project> serve` runs after exporting a bundle. Exit codes:
2 bad setting, 3 integrity check failed (a model file differs from the manifest), 4 the model
cannot be loaded. One worker: requests are short and CPU-bound; scale with containers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_SETTINGS, EXIT_INTEGRITY, EXIT_MODEL = 2, 3, 4


def run(bundle: Path, host: str, port: int, access_log: bool = False) -> int:
    import uvicorn

    from .app import Settings, SettingsError, create_app
    from .integrity import IntegrityError
    from .model import ModelLoadError

    refusals = ((SettingsError, EXIT_SETTINGS), (IntegrityError, EXIT_INTEGRITY))
    try:
        app = create_app(bundle, Settings.from_env())
    except (SettingsError, IntegrityError, ModelLoadError, OSError) as error:
        sys.stderr.write(f"refusing to start: {error}\n")
        return next((code for kind, code in refusals if isinstance(error, kind)), EXIT_MODEL)
    uvicorn.run(
        app, host=host, port=port, workers=1, access_log=access_log, server_header=False,
        log_level=os.environ.get("LOG_LEVEL", "info").lower(),
    )  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--bundle", type=Path, default=Path(os.environ.get("MODEL_BUNDLE", "/opt/bundle"))
    )
    # SERVING_HOST, not HOST: zsh sets HOST to the machine's name.
    parser.add_argument("--host", default=os.environ.get("SERVING_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument(
        "--access-log", action="store_true",
        default=os.environ.get("ACCESS_LOG", "").lower() in ("1", "true"),
        help="log every request (off by default: /metrics counts them)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    return run(args.bundle, args.host, args.port, args.access_log)


if __name__ == "__main__":
    sys.exit(main())
