"""Batch scoring: rows per second and peak memory for a million rows of the demo schema.

    uv run python benchmarks/batch_scoring.py PROJECT_DIR [--rows 1000000] [--repeat 3]
        [--python PYTHON] [--no-spark] [--keep DIR]

PROJECT_DIR is a generated project with a champion (`make setup && make pipeline`); PYTHON (default
its .venv's) must import the runtime, and pyspark for the Spark case (`crisp-ml-runtime[spark]`).
The rows are the demo data (the task's) drawn with replacement up to --rows, with an id column,
written once as CSV and as Parquet. Each case runs in a process of its own, and its peak memory is
the largest proportional set size (PSS) of its whole process tree, sampled every 50 ms (Spark's JVM and Python
workers included):

  * naive:          `model.predict(pd.read_csv(...))` on the checked model, predictions to Parquet
  * local csv:      `score` on the CSV, local engine, default chunks
  * local parquet:  `score` on the Parquet file, local engine
  * spark local[2]: `score --engine spark --spark-master local[2]` on the Parquet file

The cases run in alternation --repeat times (the machine is shared) and the best run of each is
kept. Prints a markdown table. The scoring runs are logged in the project's MLflow store as any
`score` job is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

MAKE_DATA = r"""
import sys
import numpy as np
from crisp_ml.data import load_demo
from crisp_ml.params import load_yaml
folder, rows = sys.argv[1], int(sys.argv[2])
frame, target = load_demo(load_yaml("params.yaml")["task"])  # the demo schema, real rows
drawn = frame.drop(columns=[target]).sample(rows, replace=True, random_state=0)
drawn.insert(0, "id", np.arange(rows))
drawn["id"] = "r" + drawn["id"].astype(str)
drawn.to_csv(f"{folder}/batch.csv", index=False)
drawn.to_parquet(f"{folder}/batch.parquet")
print(len(drawn.columns) - 1)
"""

NAIVE = r"""
import sys, tempfile
from pathlib import Path
import pandas as pd
from crisp_ml.serving import export
from crisp_ml.serving.model import load
mv = export.model_version()
with tempfile.TemporaryDirectory() as scratch:
    folder = export.download_verified(f"models:/{mv.name}/{mv.version}", export.version_record(mv),
                                      Path(scratch) / "model")
    model = load(folder)
frame = pd.read_csv(sys.argv[1], dtype={"id": str})
out = pd.DataFrame({"id": frame["id"], "prediction": model.estimator.predict(frame[model.column_names])})
out.to_parquet(sys.argv[2])
"""


def measure(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Seconds and peak resident bytes of the command's whole process tree."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(_rss(p) for p in tree))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()[-3000:]}")
    return seconds, peak


def _rss(process: psutil.Process) -> int:
    """Proportional set size: pages a forked child shares with its parent count once."""
    try:
        return process.memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python", type=Path, help="default: PROJECT/.venv/bin/python")
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep the data and outputs in this folder")
    args = parser.parse_args()
    project = args.project.resolve()
    python = str(args.python or project / ".venv" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["PROJECT_ROOT"] = str(project)
    env["PYSPARK_PYTHON"] = python
    folder = args.keep or Path(tempfile.mkdtemp(prefix="batch-scoring-"))
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([python, "-c", MAKE_DATA, str(folder), str(args.rows)], cwd=project,
                          env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"making the data failed:\n{done.stderr[-3000:]}")
    features = int(done.stdout.strip().splitlines()[-1])
    sizes = {name: (folder / name).stat().st_size for name in ("batch.csv", "batch.parquet")}
    score = [python, "-m", "crisp_ml.cli", "score", "--id-column", "id", "--overwrite"]
    cases = {
        "naive `model.predict(pd.read_csv(...))`": [python, "-c", NAIVE, str(folder / "batch.csv"),
                                                    str(folder / "naive.parquet")],
        "local engine, CSV": [*score, str(folder / "batch.csv"), "-o", str(folder / "l1.parquet")],
        "local engine, Parquet": [*score, str(folder / "batch.parquet"), "-o",
                                  str(folder / "l2.parquet")],
    }  # fmt: skip
    if not args.no_spark:
        cases["Spark local[2], Parquet"] = [*score, str(folder / "batch.parquet"), "-o",
                                            str(folder / "spark"), "--engine", "spark",
                                            "--spark-master", "local[2]"]  # fmt: skip
    best: dict[str, tuple[float, int]] = {}
    for attempt in range(args.repeat):
        for name, command in cases.items():
            seconds, peak = measure(command, env, project)
            print(f"  run {attempt + 1}: {name}: {seconds:.1f} s, {peak / 2**20:.0f} MiB",
                  file=sys.stderr)  # fmt: skip
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, peak)
    print(f"\n{args.rows:,} rows x {features} features (CSV {sizes['batch.csv'] / 2**20:.0f} MiB, "
          f"Parquet {sizes['batch.parquet'] / 2**20:.0f} MiB), best of {args.repeat}, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print("| case | seconds | rows/s | peak memory (process tree) |")
    print("|---|---:|---:|---:|")
    for name, (seconds, peak) in best.items():
        print(f"| {name} | {seconds:.1f} | {args.rows / seconds:,.0f} | {peak / 2**20:,.0f} MiB |")
    print(json.dumps({n: {"seconds": s, "peak_bytes": p} for n, (s, p) in best.items()}),
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
