"""`make demo`: what a new team gets, end to end, on the built-in demo data.

Generates a project with the default options into build/demo, sets it up, runs its whole pipeline,
builds the serving image when a Docker engine answers, and says where everything landed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
OUTPUT = TEMPLATE / "build" / "demo"


def step(title: str, *command: str, cwd: Path) -> int:
    print(f"\n=== {title}: {' '.join(command)}", flush=True)
    # This script runs in the template's own venv; the project's commands use the project's.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return subprocess.run(command, cwd=cwd, env=env, check=False).returncode


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def main() -> int:
    # A fresh project every time, so the demo is repeatable.
    shutil.rmtree(OUTPUT, ignore_errors=True)
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(OUTPUT)))
    print(f"Generated {project}")
    for title, target in (("Set up", "setup"), ("Run the pipeline", "pipeline")):
        if step(title, "make", target, cwd=project) != 0:
            print(f"\n`make {target}` failed in {project}: see the message above.", file=sys.stderr)
            return 1
    image = (
        "not built: no Docker engine answers (`docker info` fails); `make image` builds it later"
    )
    if (project / "Dockerfile").exists() and engine_answers():
        if step("Build the serving image", "make", "image", cwd=project) != 0:
            return 1
        image = f"{project.name}:latest (run it: docker run -p 127.0.0.1:8080:8080 {project.name})"
    runs = sorted((project / "runs").glob("2*"))
    print(
        f"""
Done. Everything is in {project}
  executed notebooks: {runs[-1] if runs else "runs/"}
  MLflow store:       {project / "mlflow.db"} and {project / "mlruns"}
                      open its UI: cd {project} && make ui   (it prints the link to the runs)
  registered model:   '{project.name}', alias champion (Models tab of the UI)
  serving image:      {image}
"""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
