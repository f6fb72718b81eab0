"""The project's command line: every `make` target is one call of this, so it works without make.

    {{ cookiecutter.project_slug }} pipeline --smoke --set modelling.cv_folds=3 --params my.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .project import PROJECT_NAME


def _pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override one parameter, e.g. --set modelling.cv_folds=10 (repeatable, dotted keys)",
    )  # fmt: skip
    parser.add_argument(
        "--params", dest="param_files", action="append", default=[], type=Path, metavar="FILE",
        help="a YAML file of overrides laid over params.yaml (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--smoke", action="store_true", help="a small sample and a tiny search, for CI"
    )


PASS_THROUGH = ("lab", "test")  # commands that hand unknown options to the tool they wrap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROJECT_NAME, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("setup", help="register the project's Jupyter kernel (after `uv sync`)")
    commands.add_parser("lab", help="open JupyterLab on the project (other options go to jupyter)")

    pipeline = commands.add_parser("pipeline", help="run the numbered notebooks in order")
    _pipeline_arguments(pipeline)
    part = pipeline.add_mutually_exclusive_group()
    part.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run just these (02 or 02_...)")
    part.add_argument("--from", dest="start", metavar="NOTEBOOK", help="run from this one on")

    show = commands.add_parser("params", help="print the parameters a pipeline run would use")
    _pipeline_arguments(show)

    commands.add_parser("check", help="lint, format, clean notebooks, export and params in sync")
    commands.add_parser("fix", help="make `check` pass where a tool can (changes files)")
    commands.add_parser("test", help="run the project's tests (other options go to pytest)")
    clean = commands.add_parser("clean", help="remove executed notebooks and build leftovers")
    clean.add_argument("--all", action="store_true", help="also delete the local MLflow store")
    ui = commands.add_parser("ui", help="open the MLflow UI on this project's store")
    ui.add_argument("--port", type=int, default=5000)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in PASS_THROUGH:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    handler = globals()[f"_cmd_{args.command}"]
    try:
        return handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def _cmd_setup(args: argparse.Namespace) -> int:
    from . import tasks

    code = tasks.register_kernel()
    if code == 0:
        print(f"Jupyter kernel '{PROJECT_NAME}' registered; open notebooks with `make lab`.")
    return code


def _cmd_lab(args: argparse.Namespace) -> int:
    from . import tasks

    return tasks.lab(args.extra)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from . import pipeline
    from .params import ParamsError

    try:
        plan = pipeline.plan(args.param_files, args.sets, args.smoke, args.only, args.start)
    except ParamsError as error:
        return _fail(error)
    names = ", ".join(n.stem for n in plan.notebooks)
    print(f"Running {len(plan.notebooks)} notebooks{' (smoke)' if args.smoke else ''}: {names}")
    try:
        outcome = pipeline.run(plan)
    except pipeline.PipelineError as error:
        return _fail(error)
    print(f"Pipeline finished in {outcome.seconds:.1f} s.")
    print(f"  executed notebooks: {outcome.run_dir}")
    print(f"  MLflow run:         {outcome.run_id} (open the UI with `make ui`)")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    import yaml

    from . import pipeline
    from .params import ParamsError

    try:
        plan = pipeline.plan(args.param_files, args.sets, args.smoke)
    except ParamsError as error:
        return _fail(error)
    print(yaml.safe_dump(plan.tree, sort_keys=False), end="")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from . import tasks

    return tasks.check()


def _cmd_fix(args: argparse.Namespace) -> int:
    from . import tasks

    return tasks.fix()


def _cmd_test(args: argparse.Namespace) -> int:
    import pytest

    from .project import project_root

    os.chdir(project_root())  # pytest reads its settings from pyproject.toml here
    return pytest.main(args.extra)


def _cmd_clean(args: argparse.Namespace) -> int:
    from . import tasks

    return tasks.clean(everything=args.all)


def _cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from . import tracking

    uri = tracking.tracking_uri()
    if not uri.startswith("sqlite:"):
        print(f"Runs are on the tracking server: open {uri} in a browser.")
        return 0
    command = [
        sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(args.port),
        "--backend-store-uri", uri, "--default-artifact-root", tracking.artifact_root().as_uri(),
    ]  # fmt: skip
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl+C stops it)")
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
