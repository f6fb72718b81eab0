"""The cost of the notebook machinery: the pipeline through papermill against the same code in one
plain Python process.

    uv run python benchmarks/pipeline.py PROJECT_DIR [--repeat 2] [--full] [--set KEY=VALUE ...]

PROJECT_DIR is a generated project after `make setup`. Both sides run the same notebook code with
the same parameters (from the project's own planner) and log to MLflow alike; the plain side
executes each notebook's code cells with `exec` in one process, which is the floor any notebook
runner can reach. Prints each time and the ratio pipeline / plain.

By default both sides run with `deployment.build_image=false`: a Docker build costs the same on
either side and, with the engine's layer cache warm or cold, would only add noise to the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN_RUNNER = r"""
import json, os, sys, tempfile
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import importlib
package = importlib.import_module(sys.argv[1])
pipeline = importlib.import_module(sys.argv[1] + ".pipeline")
smoke = sys.argv[2] == "smoke"
plan = pipeline.plan(smoke=smoke, sets=sys.argv[3:])
os.environ["PIPELINE_RUN_DIR"] = tempfile.mkdtemp(prefix="plain-run-")
for notebook in plan.notebooks:
    cells = json.loads(notebook.read_text())["cells"]
    namespace = {"display": lambda *a, **k: None, "__name__": "__main__"}
    namespace.update(plan.values[notebook])
    os.chdir(notebook.parent)
    for cell in cells:
        if cell["cell_type"] != "code" or "parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        exec(compile("".join(cell["source"]), f"{notebook.name}", "exec"), namespace)
    matplotlib.pyplot.close("all")
"""


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--full", action="store_true", help="also time the full (non-smoke) pipeline"
    )
    parser.add_argument(
        "--set", dest="sets", action="append", metavar="KEY=VALUE",
        default=None, help="a parameter for both sides (default: deployment.build_image=false)",
    )  # fmt: skip
    args = parser.parse_args()
    project = args.project.resolve()
    slug = project.name
    package = slug.replace("-", "_")
    python, cli = project / ".venv/bin/python", project / ".venv/bin" / slug
    store = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    sets = args.sets if args.sets is not None else ["deployment.build_image=false"]
    modes = ["smoke", "full"] if args.full else ["smoke"]
    rows = []
    for mode in modes:
        flags = ["--smoke"] if mode == "smoke" else []
        flags += [arg for value in sets for arg in ("--set", value)]
        pipeline = [timed([str(cli), "pipeline", *flags], project, env) for _ in range(args.repeat)]
        plain = [
            timed([str(python), "-c", PLAIN_RUNNER, package, mode, *sets], project, env)
            for _ in range(args.repeat)
        ]
        rows.append((mode, statistics.median(pipeline), statistics.median(plain)))
    print(f"\n{'mode':<6} {'pipeline (papermill) s':>24} {'plain python s':>16} {'ratio':>7}")
    for mode, pipe, plain in rows:
        print(f"{mode:<6} {pipe:>24.1f} {plain:>16.1f} {pipe / plain:>7.2f}")
    print(f"(median of {args.repeat} runs each; MLflow store {store})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
