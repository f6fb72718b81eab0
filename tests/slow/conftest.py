"""The slow lane: generated projects installed in their own venvs and run for real.

Projects are baked and installed once per session and shared by every slow test; a test that needs
a project in a particular state (a pipeline already run, a champion registered) asks for the fixture
that produces that state.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter
from ports import free_port

TEMPLATE = Path(__file__).resolve().parents[2]
ENGINE_SCRIPT = TEMPLATE / ".ci" / "engine"

pytestmark = pytest.mark.slow


# Reads one JSON-encoded block of code per line, runs it with fresh globals, and answers one JSON
# line: what it printed, or the traceback.
QUERY_LOOP = r"""
import contextlib, io, json, os, sys, traceback
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # whatever else writes to the standard output cannot garble the answers
for line in sys.stdin:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(json.loads(line), "<query>", "exec"), {"__name__": "__query__"})
        answer = {"printed": printed.getvalue()}
    except BaseException:
        answer = {"printed": printed.getvalue(), "error": traceback.format_exc()}
    answers.write(json.dumps(answer) + "\n")
    answers.flush()
"""


class QueryProcess:
    """A Python process in a project's venv that runs the tests' queries one after another."""

    def __init__(self, python: Path, cwd: Path, env: dict[str, str]):
        self.process = subprocess.Popen(
            [str(python), "-c", QUERY_LOOP], cwd=cwd, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, code: str) -> str:
        """What `code` printed; fails the test with the traceback when it raised."""
        self.process.stdin.write(json.dumps(code) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            pytest.fail(f"the query process exited ({self.process.poll()}) running:\n{code}")
        answer = json.loads(line)
        if "error" in answer:
            pytest.fail(f"query failed:\n{code}\n{answer['printed']}\n{answer['error']}")
        return answer["printed"]

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Project:
    """A generated project with its own .venv, and ways to run its commands."""

    root: Path
    slug: str
    options: dict = field(default_factory=dict)
    query_process: QueryProcess | None = None

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")
        }
        env["PATH"] = f"{self.root / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
        return env | (extra or {})

    def run(self, *command: str, check: bool = True, timeout: float = 900, env=None):
        """Run a command in the project folder; on failure the error shows its output."""
        done = subprocess.run(
            command, cwd=self.root, env=self.env(env), text=True, capture_output=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` exited {done.returncode}\n"
                f"--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
            )
        return done

    def cli(self, *args: str, **kwargs):
        """The project's own console script, as `make` targets call it."""
        return self.run(str(self.root / ".venv" / "bin" / self.slug), *args, **kwargs)

    def make(self, target: str, args: str = "", **kwargs):
        return self.run("make", target, *([f"ARGS={args}"] if args else []), **kwargs)

    @contextlib.contextmanager
    def serving(self, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
        """`serve ARGS` on a free loopback port, as `make serve ARGS=...` runs it; yields its URL
        once it answers /ping, and stops it on exit. Its output goes to build/serve.out, shown
        when it fails."""
        port = free_port()
        command = [str(self.root / ".venv" / "bin" / self.slug), "serve", "--host", "127.0.0.1",
                   "--port", str(port), *args]  # fmt: skip
        output = self.root / "build" / "serve.out"
        output.parent.mkdir(exist_ok=True)
        with output.open("w") as sink:
            server = subprocess.Popen(command, cwd=self.root, env=self.env(env), stdout=sink,
                                      stderr=sink)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{url}/ping", timeout=2).read()
                    break
                except (urllib.error.URLError, ConnectionError):
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(
                            f"`serve {' '.join(args)}` did not answer /ping:\n"
                            f"{output.read_text()[-3000:]}"
                        )
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    def python_json(self, code: str, **kwargs):
        """Run Python in the project's venv and parse the JSON it prints on its last line.

        Without extra arguments the code runs in the project's long-lived query process (fresh
        globals each time), which spares the 3 to 5 s of importing MLflow again for every query;
        with them (another environment, say) in a new interpreter."""
        if kwargs:
            done = self.run(str(self.python), "-c", textwrap.dedent(code), **kwargs)
            return json.loads(done.stdout.strip().splitlines()[-1])
        return json.loads(self._queries().run(textwrap.dedent(code)).strip().splitlines()[-1])

    def _queries(self) -> QueryProcess:
        if self.query_process is None or not self.query_process.alive():
            self.query_process = QueryProcess(self.python, self.root, self.env())
        return self.query_process

    def close(self) -> None:
        if self.query_process is not None:
            self.query_process.close()

    def mlflow_query(self, code: str):
        """Query the project's MLflow store with its own MLflow; `client` and `runs` are ready, and
        the project's experiment and registered model names as `EXPERIMENT_NAME` and `MODEL_NAME`."""
        prelude = """
            import json, mlflow
            from crisp_ml.tracking import configure, experiment_name, model_name
            experiment_id = configure()
            EXPERIMENT_NAME, MODEL_NAME = experiment_name(), model_name()
            client = mlflow.MlflowClient()
            runs = client.search_runs([experiment_id], max_results=1000)
        """
        return self.python_json(textwrap.dedent(prelude) + textwrap.dedent(code))


def bake(output_dir: Path, template: str = str(TEMPLATE), checkout=None, **options) -> Project:
    context = {"project_name": "Slow Lane", "git_init": True, **options}
    # cookiecutter imports a template's local extensions by module name: forget another template's
    sys.modules.pop("local_extensions", None)
    made = cookiecutter(
        template, checkout=checkout, no_input=True, output_dir=str(output_dir),
        extra_context=context,
    )  # fmt: skip
    root = Path(made)
    package = root.name.replace("-", "_")
    return Project(root, root.name, {"package_name": package, **context})


def install(project: Project) -> Project:
    """`make setup` as a user runs it: uv creates .venv and installs the project."""
    project.make("setup", env={"UV_COMPILE_BYTECODE": "1"})
    return project


@pytest.fixture(scope="session")
def project_factory(tmp_path_factory):
    """Bake and install a project once per distinct set of options."""
    made: dict[tuple, Project] = {}

    def make_project(**options) -> Project:
        key = tuple(sorted(options.items()))
        if key not in made:
            folder = tmp_path_factory.mktemp("project")
            made[key] = install(bake(folder, **options))
        return made[key]

    yield make_project
    for project in made.values():
        project.close()


@pytest.fixture(scope="session")
def generate_and_install():
    """Generate a project from a template source (a path or URL) at a commit, and install it."""

    def make(template: str, checkout: str, output_dir: Path, **options) -> Project:
        return install(bake(output_dir, template, checkout, **options))

    return make


@pytest.fixture(scope="session", params=["classification", "regression"])
def task(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def two_versions(project_factory, task) -> tuple[Project, str]:
    """(project, task): the smoke pipeline run twice, images off, so version 1 is the champion and
    version 2 the challenger (the same data and seed give the same score, and only a strictly
    better one takes the alias). Shared by the A/B serving and the experiment tests (one xdist
    group, "two-versions"): a test that moves an alias puts it back."""
    project = project_factory(task=task, project_name=f"Two Versions {task.title()}")
    for _ in range(2):
        project.cli("pipeline", "--smoke", "--set", "deployment.build_image=false")
    aliases = project.mlflow_query(
        "aliases = client.get_registered_model(MODEL_NAME).aliases\n"
        "print(json.dumps({alias: str(version) for alias, version in aliases.items()}))"
    )
    assert aliases == {"champion": "1", "challenger": "2"}, aliases
    return project, task


@pytest.fixture(scope="session")
def project(project_factory, task) -> Project:
    """An installed project with default options for each task."""
    name = "Slow Classifier" if task == "classification" else "Slow Regressor"
    return project_factory(task=task, project_name=name)


@pytest.fixture(scope="session")
def smoked_project(project) -> Project:
    """The project after one successful smoke pipeline run: a champion registered and, where an
    engine answers, its image built by 05_deployment against the base image the tests use."""
    base_image = None if engine_problem() else base_image_name()
    project.cli("pipeline", "--smoke", env={"BASE_IMAGE": base_image} if base_image else None)
    yield project
    if base_image:  # the images 05 built: named after the project, tagged with model versions
        remove_images(project.slug)


def remove_images(repository: str) -> None:
    listed = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if tags := listed.stdout.split():
        subprocess.run(
            ["docker", "image", "rm", "--force", *tags], capture_output=True, check=False
        )


def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    done = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else f"`docker info` failed: {done.stderr.strip()[:200]}"


@pytest.fixture(scope="session")
def docker_base_image() -> str:
    """The base image to build against: the official one, or the local stand-in CI makes."""
    problem = engine_problem()
    if problem:
        message = (
            f"NO DOCKER ENGINE ({problem}): image tests SKIPPED. CI starts one with .ci/engine."
        )
        print(f"\n{'!' * 80}\n{message}\n{'!' * 80}")
        pytest.skip(message)
    return base_image_name()


def base_image_name() -> str:
    """BASE_IMAGE, else the local stand-in .ci/engine makes when present, else the official one."""
    if image := os.environ.get("BASE_IMAGE"):
        return image
    local = subprocess.run(
        [str(ENGINE_SCRIPT), "base-image"], capture_output=True, text=True, check=False
    ).stdout.strip()
    present = subprocess.run(
        ["docker", "image", "inspect", local], capture_output=True, check=False
    )
    return local if local and present.returncode == 0 else "python:3.11-slim-bookworm"
