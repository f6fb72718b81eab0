"""The project's command line: every `make` target is one call of this, so it works without make.

A project's console script (named after the project in its `[project.scripts]`) runs `main`.
For example: `<project> pipeline --smoke --set modelling.cv_folds=3`
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .project import ProjectNotFound, ProjectSettings, settings


def _pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    _override_arguments(parser)
    parser.add_argument(
        "--smoke", action="store_true", help="a small sample and a tiny search, for CI"
    )


def _override_arguments(parser: argparse.ArgumentParser) -> None:
    """`--set` and `--params`, the same on every command that reads params.yaml."""
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override one parameter, e.g. --set modelling.cv_folds=10 (repeatable, dotted keys)",
    )  # fmt: skip
    parser.add_argument(
        "--params", dest="param_files", action="append", default=[], type=Path, metavar="FILE",
        help="a YAML file of overrides laid over params.yaml (repeatable)",
    )  # fmt: skip


PASS_THROUGH = ("lab", "test")  # commands that hand unknown options to the tool they wrap
MONITOR_EPILOG = """\
exit status: 0 ok, 3 warn, 4 retrain, 1 error (a bad batch, no champion), 2 wrong usage.
`make monitor` itself exits 2 for anything but ok: schedulers call this command.

  monitor                                          judge the serving prediction log
  monitor --set monitoring.current_path=batch.csv  judge a CSV or Parquet batch
  monitor --shifted-batch data/shifted.csv         write a drifted demo batch (then judge it)"""
EXPERIMENT_EPILOG = """\
exit status: 0 promote, 3 continue (too few rows yet, or inconclusive), 4 keep, 1 error (no arms
in the log, outcomes that do not join, no champion), 2 wrong usage. 0 only for promote, so a
scheduler can run `experiment && promote`.

  experiment --set experiment.outcomes_path=data/outcomes.csv   judge the served traffic
  experiment --set experiment.prediction_log=logs/ab.jsonl      another log (its .1 ... copies too)"""


def build_parser() -> argparse.ArgumentParser:
    project = _project()
    parser = argparse.ArgumentParser(
        prog=project.name if project else "crisp-ml", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "setup", help="register the Jupyter kernel, commit uv.lock, install the commit hook"
    )
    commands.add_parser("lab", help="open JupyterLab on the project (other options go to jupyter)")

    pipeline = commands.add_parser("pipeline", help="run the numbered notebooks in order")
    _pipeline_arguments(pipeline)
    part = pipeline.add_mutually_exclusive_group()
    part.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run just these (02 or 02_...)")
    part.add_argument("--from", dest="start", metavar="NOTEBOOK", help="run from this one on")

    show = commands.add_parser(
        "params", help="print the parameters a pipeline run would use, checked against the data"
    )
    _pipeline_arguments(show)

    commands.add_parser("check", help="lint, format, clean notebooks, export and params in sync")
    commands.add_parser("fix", help="make `check` pass where a tool can (changes files)")
    commands.add_parser("test", help="run the project's tests (other options go to pytest)")
    clean = commands.add_parser("clean", help="remove executed notebooks and build leftovers")
    clean.add_argument("--all", action="store_true", help="also delete the local MLflow store")
    ui = commands.add_parser("ui", help="open the MLflow UI on this project's store")
    ui.add_argument("--port", type=int, default=5000)
    commands.add_parser(
        "doctor", help="mark runs a killed pipeline left RUNNING; settle half-done registrations"
    )
    rollback = commands.add_parser(
        "rollback", help="move the champion alias to the previous champion"
    )
    rollback.add_argument("--to", metavar="VERSION", help="move it to this model version instead")

    serve = commands.add_parser("serve", help="serve the champion model locally, without Docker")
    serve.add_argument("--version", help="model version to serve (default: the champion)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    _two_version_arguments(serve)
    monitor = commands.add_parser(
        "monitor", help="judge current data against the training data; exit status: the verdict",
        description="Run notebooks/06_monitoring.ipynb on a current batch: drift, performance and\n"
        "a verdict (ok, warn or retrain), logged as an MLflow run. --set, --params and --smoke\n"
        "also apply to the pipeline that --retrain runs.",
        epilog=MONITOR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _pipeline_arguments(monitor)  # --smoke applies to the pipeline --retrain runs
    monitor.add_argument(
        "--retrain", action="store_true", help="run the pipeline when the verdict is retrain"
    )
    monitor.add_argument(
        "--shifted-batch", metavar="FILE",
        help="write the champion's test set, shifted by one standard deviation, to FILE and stop",
    )  # fmt: skip
    experiment = commands.add_parser(
        "experiment", help="judge champion against challenger on served traffic; exit: the decision",
        description="Run notebooks/07_experiment.ipynb on the prediction log of an ab or shadow\n"
        "server and the true outcomes: each version's metric and cost, the test of the difference,\n"
        "and a decision (promote, keep or continue), logged as an MLflow run.",
        epilog=EXPERIMENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _override_arguments(experiment)
    promote = commands.add_parser(
        "promote", help="move the champion alias to the newest experiment's winner"
    )
    promote.add_argument(
        "--force", action="store_true",
        help="promote the challenger even when the experiment decided keep or continue (recorded)",
    )  # fmt: skip
    _score_parser(commands)
    image = commands.add_parser("image", help="build and check the champion's serving image")
    image.add_argument("--version", help="model version to build (default: the champion)")
    image.add_argument("--base-image", help="FROM image (default: $BASE_IMAGE or the Dockerfile's)")
    image.add_argument("--no-build", action="store_true", help="only stage build/image/")
    image.add_argument("--no-verify", action="store_true", help="do not run the image to check it")
    _two_version_arguments(image)
    update = commands.add_parser(
        "update", help="merge a newer template version into the project (see .cruft.json)"
    )
    update.add_argument(
        "--to", metavar="REF", help="template commit, tag or branch (default: its newest)"
    )
    update.add_argument("--template", metavar="SOURCE", help="fetch the template from here instead")
    if project and project.tracking == "server":
        _tracking_server_commands(commands)
    return parser


SCORE_EPILOG = """\
each output row: the id column (data.id_column or --id-column; else `row`, the input's row
number), `prediction`, `probability_<class>` per class (classifiers) and `model_version`. An output
named .parquet or .csv is one file; any other name is a folder of part files with _SUCCESS. It
appears only when complete. Every job is an MLflow run (kind=scoring): digests, rows, seconds.

  score data/batch.csv --output scores/batch.parquet
  score data/batch.parquet --output scores/batch.csv --version 3 --prediction-log logs/batch.jsonl
  score data/big/ --output scores/big/ --engine spark --spark-master spark://host:7077"""


def _two_version_arguments(parser: argparse.ArgumentParser) -> None:
    """`serve` and `image`: two registered versions in one server (crisp_ml.serving.arms)."""
    from .serving import arms

    parser.add_argument(
        "--mode", default=None, metavar="single|ab|shadow",
        help="ab: each request answered by one version, split by --share; shadow: the champion "
        "answers, the challenger scores the same rows for the log (default: SERVING_MODE, else "
        "single)",
    )  # fmt: skip
    parser.add_argument(
        "--challenger", metavar="VERSION_OR_ALIAS",
        help="the second version in ab and shadow modes (default: the alias `challenger`)",
    )  # fmt: skip
    parser.add_argument(
        "--share", default=None, metavar="0..1",
        help=f"ab: the challenger's share of requests (default: {arms.SHARE_ENV}, "
        f"else {arms.DEFAULT_SHARE:g})",
    )  # fmt: skip
    parser.add_argument(
        "--routing-column", metavar="COLUMN",
        help="ab: route on this input column's value in a request's first row (an entity id), "
        "not on its X-Request-ID",
    )  # fmt: skip


def _serving_plan(args: argparse.Namespace):
    """The checked --mode/--challenger/--share/--routing-column (environment as defaults)."""
    from .serving import arms
    from .serving.image import Serving

    return Serving.of(
        args.mode if args.mode is not None else os.environ.get(arms.MODE_ENV),
        args.challenger,
        args.share if args.share is not None else os.environ.get(arms.SHARE_ENV),
        args.routing_column or os.environ.get(arms.ROUTING_ENV) or None,
    )


def _score_parser(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser(
        "score", help="score a CSV or Parquet file (or folder) with the champion, in batch",
        description="Predict every row of a file with a registered model version, on this machine "
        "in bounded memory\n(--engine local) or on Apache Spark (--engine spark).",
        epilog=SCORE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    score.add_argument("input", type=Path, help="a .csv or .parquet file, or a folder of Parquet")
    score.add_argument(
        "-o", "--output", type=Path, required=True,
        help="a .parquet or .csv file, or a folder (Parquet part files and _SUCCESS)",
    )  # fmt: skip
    which = score.add_mutually_exclusive_group()
    which.add_argument("--version", help="model version to score with (default: the champion)")
    which.add_argument("--alias", help="the version holding this alias (e.g. challenger)")
    score.add_argument("--id-column", help="the input's id column (default: data.id_column)")
    score.add_argument("--format", dest="output_format", choices=("parquet", "csv"),
                       help="of a folder output (default: parquet; files: from the name)")  # fmt: skip
    score.add_argument("--engine", choices=("local", "spark"), default="local",
                       help="local: chunks on this machine (default); spark: on Apache Spark")  # fmt: skip
    score.add_argument("--spark-master", metavar="URL",
                       help="Spark master (default: local[*]), e.g. spark://host:7077")  # fmt: skip
    score.add_argument(
        "--spark-conf", action="append", default=[], metavar="KEY=VALUE",
        help="a Spark setting, e.g. spark.executor.memory=4g (repeatable)",
    )  # fmt: skip
    score.add_argument("--chunk-rows", type=int, default=50_000, metavar="N",
                       help="rows per chunk of the local engine (default: 50000)")  # fmt: skip
    score.add_argument(
        "--prediction-log", type=Path, metavar="FILE",
        help="also append the rows to FILE in the prediction log's format, for `monitor`",
    )  # fmt: skip
    score.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _override_arguments(score)


def _project() -> ProjectSettings | None:
    try:
        return settings()
    except ProjectNotFound:  # `--help` outside a project still answers
        return None


def _tracking_server_commands(commands: argparse._SubParsersAction) -> None:
    server = commands.add_parser(
        "tracking-server", help="the team's MLflow server without Docker; migrate a local store"
    )
    server_actions = server.add_subparsers(dest="action", required=True, metavar="ACTION")
    server_actions.add_parser("start", help="start `mlflow server` on a local PostgreSQL (.env)")
    server_actions.add_parser("status", help="whether the server started here runs and answers")
    server_actions.add_parser("stop", help="stop the server `start` started")
    migrate = server_actions.add_parser(
        "migrate", help="copy the local SQLite store's runs and models to the tracking server"
    )
    migrate.add_argument("--source", help="store to copy from (default: this project's mlflow.db)")
    migrate.add_argument("--target", help="server to copy to (default: MLFLOW_TRACKING_URI)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in PASS_THROUGH:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    handler = globals()[f"_cmd_{args.command.replace('-', '_')}"]
    try:
        return handler(args) or 0
    except ProjectNotFound as error:  # outside a project, or its pyproject.toml unreadable
        return _fail(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def _cmd_setup(args: argparse.Namespace) -> int:
    from . import tasks

    code = tasks.register_kernel()
    if code != 0:
        return code
    print(f"Jupyter kernel '{settings().kernel_name}' registered; open notebooks with `make lab`.")
    if tasks.in_git_repository():
        tasks.commit_lock_file()
        code = tasks.install_commit_hook()
    return code


def _cmd_lab(args: argparse.Namespace) -> int:
    from . import tasks

    return tasks.lab(args.extra)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from . import pipeline, preflight, summary
    from .params import ParamsError

    try:
        plan = pipeline.plan(args.param_files, args.sets, args.smoke, args.only, args.start)
        # Every run, --only and --from too: a second or so, against a modelling run lost to a typo.
        preflight.check_before_run(plan.tree)
    except ParamsError as error:  # PreflightError is one: every problem found, listed
        return _fail(error)
    names = ", ".join(n.stem for n in plan.notebooks)
    print(f"Running {len(plan.notebooks)} notebooks{' (smoke)' if args.smoke else ''}: {names}")
    try:
        outcome = pipeline.run(plan)
    except pipeline.PipelineError as error:
        return _fail(error)
    print(f"Pipeline finished in {outcome.seconds:.1f} s.")
    handoff = summary.read_handoff(outcome.run_dir)
    metric = plan.tree.get("use_case", {}).get("metric", "")
    for line in summary.summary_lines(handoff, metric, [n.stem for n in plan.notebooks]):
        print(f"  {line}")
    print(f"  executed notebooks: {outcome.run_dir}")
    print(f"  MLflow run:         {outcome.run_id} (open the UI with `make ui`)")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from . import monitoring, pipeline
    from .params import ParamsError

    try:
        notebook = pipeline.on_demand_notebook("06_monitoring")
        plan = pipeline.plan(args.param_files, args.sets, args.smoke, notebooks=[notebook])
        if args.shifted_batch:
            target = plan.tree["data"]["target"]
            version = plan.tree["monitoring"]["model_version"]
            path, rows = monitoring.write_shifted_batch(args.shifted_batch, target, version)
            print(f"Wrote {rows} shifted rows to {path}; judge them with:")
            print(f'  make monitor ARGS="--set monitoring.current_path={args.shifted_batch}"')
            return 0
        outcome = pipeline.run_on_demand(plan, kind="monitoring")
        verdict = monitoring.read_verdict(outcome.run_dir)
    except (ParamsError, pipeline.PipelineError, monitoring.MonitoringError) as error:
        return _fail(error)
    print(f"Verdict: {verdict['verdict']}")
    for reason in verdict["reasons"]:
        print(f"  - {reason}")
    print(f"  executed notebook: {outcome.executed[0]}")
    print(f"  MLflow run:        {outcome.run_id} (open the UI with `make ui`)")
    if args.retrain and verdict["verdict"] == "retrain":
        print("Retraining (--retrain): running the pipeline")
        if code := _cmd_pipeline(argparse.Namespace(**{**vars(args), "only": None, "start": None})):
            return code
    code = monitoring.EXIT_CODES[verdict["verdict"]]
    print(f"exit status {code} ({verdict['verdict']})")
    return code


def _cmd_experiment(args: argparse.Namespace) -> int:
    from . import experiment, pipeline
    from .params import ParamsError

    try:
        notebook = pipeline.on_demand_notebook("07_experiment")
        plan = pipeline.plan(args.param_files, args.sets, notebooks=[notebook])
        outcome = pipeline.run_on_demand(plan, kind=experiment.KIND)
        decision = experiment.read_decision(outcome.run_dir)
    except (ParamsError, pipeline.PipelineError, experiment.ExperimentError) as error:
        return _fail(error)
    print(
        f"Decision: {decision['action']} (champion version {decision['champion_version']}, "
        f"challenger version {decision['challenger_version']}, {decision['mode']})"
    )
    for reason in decision["reasons"]:
        print(f"  - {reason}")
    print(f"  executed notebook: {outcome.executed[0]}")
    print(f"  MLflow run:        {outcome.run_id} (open the UI with `make ui`)")
    if decision["action"] == "promote":
        print("  move the champion alias with `make promote` (`make rollback` undoes it)")
    code = experiment.EXIT_CODES[decision["action"]]
    print(f"exit status {code} ({decision['action']})")
    return code


def _cmd_promote(args: argparse.Namespace) -> int:
    from . import experiment, registry

    try:
        promotion = experiment.promote_winner(force=args.force)
    except (experiment.ExperimentError, registry.RegistryError) as error:
        return _fail(error)
    for line in promotion.lines():
        print(line)
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    import yaml

    from . import pipeline, preflight
    from .params import ParamsError

    try:
        plan = pipeline.plan(args.param_files, args.sets, args.smoke)
    except ParamsError as error:
        return _fail(error)
    print(yaml.safe_dump(plan.tree, sort_keys=False), end="")
    try:  # the parameters first: the problems below name their keys
        preflight.check_before_run(plan.tree)
    except ParamsError as error:
        return _fail(error)
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
    from . import tasks, tracking

    uri = tracking.tracking_uri()
    if not uri.startswith("sqlite:"):
        print(f"Runs are on the tracking server: open {uri} in a browser.")
        return 0
    command = [
        sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(args.port),
        "--backend-store-uri", uri, "--default-artifact-root", tracking.artifact_root().as_uri(),
    ]  # fmt: skip
    # MLflow 3's UI opens in its GenAI view (traces) unless told otherwise: link the training runs.
    runs = f"#/experiments/{tracking.configure()}/runs?workflowType=machine_learning"
    print(f"MLflow UI: the training runs at http://127.0.0.1:{args.port}/{runs} (Ctrl+C stops it)")
    return tasks.become(*command)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from . import recovery, tracking

    if problem := tracking.server_problem():
        return _fail(RuntimeError(problem))
    repairs = recovery.repair()
    for line in repairs.lines():
        print(line)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from . import registry

    try:
        move = registry.rollback(to=args.to)
    except registry.RegistryError as error:
        return _fail(error)
    print(move)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serving import arms, export
    from .serving.__main__ import EXIT_SETTINGS, run
    from .serving.integrity import IntegrityError
    from .serving.model import ModelLoadError

    try:
        plan = _serving_plan(args)
    except arms.SettingsError as error:
        _fail(error)
        return EXIT_SETTINGS
    try:
        bundle, manifest = export.export_bundle(args.version)
        if plan.mode != arms.SINGLE:
            second, other = export.export_bundle(plan.challenger)
    except (export.RegistryError, IntegrityError, ModelLoadError) as error:
        return _fail(error)
    model = manifest["model"]
    print(f"Serving {model['name']} version {model['version']} from {bundle}")
    overrides = {**plan.env, arms.CHALLENGER_ENV: ""}
    if plan.mode != arms.SINGLE:
        how = f"share {plan.share:g}" if plan.mode == arms.AB else "in shadow"
        print(
            f"  {plan.mode}: challenger version {other['model']['version']} ({how}) from {second}"
        )
        overrides[arms.CHALLENGER_ENV] = str(second)
    print(f"  http://{args.host}:{args.port}/docs  (Ctrl+C stops it)")
    return run(bundle, args.host, args.port, overrides=overrides)


def _cmd_score(args: argparse.Namespace) -> int:
    from . import scoring
    from .params import ParamsError
    from .serving.integrity import IntegrityError
    from .serving.model import ModelLoadError

    try:
        conf = dict(_key_value(item, "--spark-conf") for item in args.spark_conf)
        id_column = args.id_column
        if id_column is None:
            id_column = scoring.id_column_from_params(args.param_files, args.sets)
        request = scoring.Request(
            input=args.input, output=args.output, version=args.version, alias=args.alias,
            id_column=id_column, engine=args.engine, output_format=args.output_format,
            chunk_rows=args.chunk_rows, prediction_log=args.prediction_log,
            overwrite=args.overwrite, spark_master=args.spark_master, spark_conf=conf,
        )  # fmt: skip
        outcome = scoring.score(request)
    except (scoring.ScoringError, ParamsError, IntegrityError, ModelLoadError) as error:
        return _fail(error)
    print(
        f"Scored {outcome.rows:,} rows with {outcome.model_name} version {outcome.model_version} "
        f"in {outcome.seconds:.1f} s ({outcome.rows_per_second:,.0f} rows/s)"
    )
    print(f"  predictions: {outcome.output}")
    if args.prediction_log:
        print(f"  prediction log: {args.prediction_log} (judge it: make monitor "
              f'ARGS="--set monitoring.prediction_log={args.prediction_log}")')  # fmt: skip
    print(f"  MLflow run:  {outcome.run_id} (open the UI with `make ui`)")
    return 0


def _key_value(item: str, option: str) -> tuple[str, str]:
    from .scoring import ScoringError

    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ScoringError(f"{option} {item!r}: write KEY=VALUE")
    return key.strip(), value


def _cmd_image(args: argparse.Namespace) -> int:
    from .serving import export, image
    from .serving.arms import SettingsError
    from .serving.integrity import IntegrityError
    from .serving.model import ModelLoadError

    try:
        serving = _serving_plan(args)
    except SettingsError as error:
        _fail(error)
        return 2
    try:
        if args.no_build:
            context, _, _ = image.stage(args.version, serving=serving)
            print(f"Staged {context}; build it with: docker build -t {settings().image_name}:dev .")
            if serving.mode != "single":
                args_text = " ".join(f"--build-arg {k}={v}" for k, v in serving.env.items())
                print(f"  (with {args_text} for a {serving.mode} image)")
            return 0
        if args.no_verify:
            built = image.build(args.version, args.base_image, serving=serving)
            image.record(built, echo=lambda _: None)
            print(f"Image {built.tag} ({built.size_bytes / 1e6:.0f} MB); tag recorded")
            return 0
        tag = image.build_and_verify(args.version, base_image=args.base_image, serving=serving)
    except (export.RegistryError, image.ImageError, IntegrityError, ModelLoadError) as error:
        return _fail(error)
    if tag is None:
        return 1
    print(f"Image {tag}")
    return 0


def _cmd_update(args: argparse.Namespace) -> int:
    from . import update

    try:
        outcome = update.update(args.to, args.template)
    except update.UpdateError as error:
        return _fail(error)
    if outcome.old == outcome.new:
        print(f"Already at the template's {outcome.new[:12]}.")
        return 0
    print(
        f"Template {outcome.old[:12]} -> {outcome.new[:12]}: {len(outcome.changed)} files merged."
    )
    for name in outcome.changed:
        print(f"  merged   {name}")
    for name, advice in outcome.conflicts.items():
        print(f"  CONFLICT {name}: {advice}")
    if outcome.lock_problem:
        print(f"error: {outcome.lock_problem}", file=sys.stderr)
    if outcome.conflicts or outcome.lock_problem:
        print("Settle these, then `make fix`, `make setup`, `make check` and `make test`; commit.")
        return 1
    print("Review with `git diff`, then `make setup`, `make check` and `make test`; commit.")
    return 0


def _cmd_tracking_server(args: argparse.Namespace) -> int:
    from . import tracking_server as server

    try:
        if args.action == "start":
            server.start()
        elif args.action == "stop":
            server.stop()
        elif args.action == "status":
            return server.status()
        else:
            print(server.migrate(args.source, args.target))
    except server.TrackingServerError as error:
        return _fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
