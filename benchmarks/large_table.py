"""The default pipeline on a large table: 50,000 mixed-type rows, before and after, in one run.

Builds a deterministic 50,000-row table (numbers, string categoricals of modest cardinality, missing
values, a learnable binary target), generates the default project from this checkout and from a
reference commit, sets each up, and times `<project> pipeline` on the table, printing for each:
the wall time of every phase (the runner's own timings), each candidate's search time, the size of
the chosen model and the test metric.

    uv run --group test python benchmarks/large_table.py [--reference REF] [--rows 50000] [--only after]

Not a timed test: the machine's load moves the numbers; run it twice and keep the best.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from project_size import checkout, generate  # this folder is on sys.path: scripts run from it

TEMPLATE = Path(__file__).resolve().parents[1]
REFERENCE = "ec18907"  # main before this change (its settings, search and capped forest)
ROWS = 50_000
TARGET = "churn"
PARAMS = f"""\
data:
  path: data/big.csv
  target: {TARGET}
use_case:
  metric: roc_auc
  threshold: 0.75
  segments: [region]
  worst_segment_threshold: 0.7
  sensitive_attributes: []
  positive_class: "yes"
deployment:
  build_image: false
"""


def make_table(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """Numbers on several scales, three string categoricals (5, 12 and 40 levels), a few percent of
    values missing, and a binary target from a noisy nonlinear score (a good model: AUC ~0.9)."""
    rng = np.random.default_rng(seed)
    numeric = {f"x{i}": rng.normal(0, 1, rows) * (10**i % 997) for i in range(8)}
    frame = pd.DataFrame(numeric)
    frame["age"] = rng.integers(18, 90, rows)
    frame["income"] = rng.lognormal(10, 0.6, rows).round(2)
    frame["region"] = rng.choice(["north", "south", "east", "west", "centre"], rows)
    frame["plan"] = rng.choice([f"plan_{i:02d}" for i in range(12)], rows)
    frame["channel"] = rng.choice([f"channel_{i:02d}" for i in range(40)], rows)
    plan_effect = dict(zip(sorted(frame["plan"].unique()), rng.normal(0, 0.8, 12), strict=True))
    score = (
        0.8 * np.tanh(frame["x0"])
        - 0.6 * (frame["x1"] / frame["x1"].std()) ** 2
        + 0.5 * np.sin(frame["x2"] / frame["x2"].std() * 2)
        + 0.02 * (frame["age"] - 50)
        - 0.4 * (np.log(frame["income"]) - 10)
        + frame["plan"].map(plan_effect)
        + np.where(frame["region"] == "south", 0.7, 0.0)
        + rng.logistic(0, 0.6, rows)
    )
    frame[TARGET] = np.where(score > np.median(score), "yes", "no")
    for column, share in (("x3", 0.05), ("income", 0.1), ("plan", 0.03), ("channel", 0.08)):
        frame.loc[rng.random(rows) < share, column] = np.nan
    return frame


def project_env() -> dict[str, str]:
    # This script runs in the template's own venv; the project's commands use the project's.
    return {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}


def set_up(project: Path, table: Path) -> None:
    subprocess.run(["make", "setup"], cwd=project, env=project_env(), check=True,
                   capture_output=True)  # fmt: skip
    (project / "data" / "big.csv").write_bytes(table.read_bytes())
    (project / "big.yaml").write_text(PARAMS)
    (project / "schema.yaml").unlink(missing_ok=True)  # the demo's: inferred from the table instead


CANDIDATES = r"""
import json, sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                          order_by=["attributes.start_time ASC"])
phase = [r for r in runs if r.info.run_name == "03_modelling"][-1]
previous, rows = phase.info.start_time, []
for run in runs:
    if run.data.tags.get("mlflow.parentRunId") == phase.info.run_id and "candidate" in run.data.tags:
        seconds = run.data.metrics.get("search_seconds", (run.info.start_time - previous) / 1000)
        rows.append([run.data.tags["candidate"], round(seconds, 1), run.data.params])
        previous = run.info.start_time
print(json.dumps({"candidates": rows, "model_size_mb": phase.data.metrics.get("model_size_mb")}))
"""


def run_pipeline(project: Path, sets: list[str]) -> dict:
    """The default pipeline on the table: its wall time, each phase's, each candidate's (its
    logged `search_seconds`, or else the time between candidate runs), the model's size."""
    command = ["uv", "run", project.name, "pipeline", "--params", "big.yaml"]
    command += [arg for value in sets for arg in ("--set", value)]
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=project, env=project_env(), capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed in {project}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")  # fmt: skip
    phases = dict(re.findall(r"\] (\d\d_\w+) \.\.\. done in ([\d.]+) s", done.stdout))
    metric = re.search(r"test (\w+):\s+([\d.]+)", done.stdout)
    python = project / ".venv" / "bin" / "python"
    tracking = f"sqlite:///{project / 'mlflow.db'}"
    found = subprocess.run([python, "-c", CANDIDATES, tracking], capture_output=True, text=True,
                           check=True, env=project_env()).stdout  # fmt: skip
    candidates = json.loads(found.strip().splitlines()[-1])
    models = sorted((project / "mlruns").rglob("model.skops"), key=lambda p: p.stat().st_mtime)
    return {
        "wall": wall,
        "phases": {name: float(seconds) for name, seconds in phases.items()},
        "candidates": candidates["candidates"],
        "model_mb": models[-1].stat().st_size / 1e6 if models else float("nan"),
        "metric": f"{metric[1]} {metric[2]}" if metric else "?",
    }


def show(label: str, measured: dict) -> None:
    print(f"\n{label}: {measured['wall']:.0f} s, the pipeline's command end to end")
    for name, seconds in measured["phases"].items():
        print(f"  {name:<22} {seconds:7.1f} s")
    for name, seconds, params in measured["candidates"]:
        print(f"    {name:<24} {seconds:7.1f} s  {params}")
    print(f"  model: {measured['model_mb']:.1f} MB (model.skops); test {measured['metric']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=REFERENCE, help=f"git ref (default {REFERENCE})")
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--only", choices=["before", "after"], help="time one side only")
    parser.add_argument("--keep", type=Path, help="generate the projects here and keep them")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="a parameter for both runs, e.g. modelling.candidates=[random_forest]",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp)
        table = root / "big.csv"
        root.mkdir(parents=True, exist_ok=True)
        make_table(args.rows).to_csv(table, index=False)
        print(f"table: {args.rows:,} rows, {table.stat().st_size / 1e6:.1f} MB CSV")
        sides = {"before": checkout(args.reference, root / "ref"), "after": TEMPLATE}
        results = {}
        for side, template in sides.items():
            if args.only and side != args.only:
                continue
            project = generate(template, root / side)
            set_up(project, table)
            results[side] = run_pipeline(project, args.sets)
            label = f"{side} ({args.reference})" if side == "before" else f"{side} (this checkout)"
            show(label, results[side])
        if len(results) == 2:
            ratio = results["before"]["wall"] / results["after"]["wall"]
            print(f"\nafter is {ratio:.1f}x faster (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
