"""Fast lane: each curated option combination bakes into exactly the project it should, and every
generated file is well-formed. Nothing is installed or executed here (that is the slow lane)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml

TEMPLATE = Path(__file__).resolve().parents[1]
OPTIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text())

# Every value of every choice option appears at least once (test_combinations_cover_every_value).
COMBINATIONS = [
    pytest.param(
        {"task": "classification", "tracking": "local", "ci": "github", "docker": True,
         "license": "MIT", "git_init": True},
        id="classification-local-github-docker",
    ),  # the defaults, names derived from the default project name
    pytest.param(
        {"task": "regression", "tracking": "server", "ci": "none", "docker": False,
         "license": "Apache-2.0", "git_init": False, "project_name": "Sales Forecast"},
        id="regression-server-noci-nodocker",
    ),
    pytest.param(
        {"task": "classification", "tracking": "server", "ci": "github", "docker": False,
         "license": "BSD-3-Clause", "git_init": True,
         "project_name": "Churn Model", "project_slug": "churn", "package_name": "churn_model"},
        id="classification-server-github-nodocker",
    ),  # slug and package differ, so a template that mixes them up fails here
    pytest.param(
        {"task": "regression", "tracking": "local", "ci": "none", "docker": True,
         "license": "Proprietary", "git_init": False, "project_name": "Credit_Risk v2"},
        id="regression-local-noci-docker",
    ),  # underscores and digits in the name
    pytest.param(
        {"task": "regression", "tracking": "server", "ci": "github", "docker": True,
         "license": "MIT", "git_init": True, "project_name": "Demand Planner"},
        id="regression-server-github-docker",
    ),  # every feature on, for the task the defaults do not cover
]  # fmt: skip

# The generated project's files for every combination; `{package}` is the package name.
BASE_FILES = [
    ".gitignore",
    ".pre-commit-config.yaml",
    "Makefile",
    "README.md",
    "data/README.md",
    "notebooks/01_use_case.ipynb",
    "notebooks/02_data_preparation.ipynb",
    "notebooks/03_modelling.ipynb",
    "notebooks/04_evaluation.ipynb",
    "notebooks/05_deployment.ipynb",
    "notebooks/06_monitoring.ipynb",
    "params.yaml",
    "pyproject.toml",
    "schema.yaml",
    "src/{package}/__init__.py",
    "src/{package}/cli.py",
    "src/{package}/data.py",
    "src/{package}/evaluation.py",
    "src/{package}/kernel_guard.py",
    "src/{package}/kernels.py",
    "src/{package}/modelling.py",
    "src/{package}/monitoring.py",
    "src/{package}/params.py",
    "src/{package}/pipeline.py",
    "src/{package}/project.py",
    "src/{package}/recovery.py",
    "src/{package}/registry.py",
    "src/{package}/serving/__init__.py",
    "src/{package}/serving/__main__.py",
    "src/{package}/serving/app.py",
    "src/{package}/serving/bundle.py",
    "src/{package}/serving/export.py",
    "src/{package}/serving/image.py",
    "src/{package}/serving/integrity.py",
    "src/{package}/serving/model.py",
    "src/{package}/serving/predlog.py",
    "src/{package}/serving/schema.py",
    "src/{package}/tasks.py",
    "src/{package}/tracking.py",
    "src/{package}/use_case.py",
    "tests/conftest.py",
    "tests/test_data.py",
    "tests/test_evaluation.py",
    "tests/test_integrity.py",
    "tests/test_kernels.py",
    "tests/test_modelling.py",
    "tests/test_monitoring.py",
    "tests/test_params.py",
    "tests/test_pipeline.py",
    "tests/test_recovery.py",
    "tests/test_registry.py",
    "tests/test_serving.py",
    "tests/test_tasks.py",
]
# What one option value adds to the base.
FILES_BY_OPTION = {
    ("ci", "github"): [".github/workflows/ci.yml", ".github/dependabot.yml"],
    ("docker", True): ["Dockerfile", ".dockerignore"],
    ("tracking", "server"): [
        "compose.yaml",
        ".env.example",
        "tracking-server/mlflow.Dockerfile",
        "tracking-server/postgres.Dockerfile",
        "tracking-server/postgres-entrypoint.sh",
        "tracking-server/requirements.txt",
        "tracking-server/serve.py",
        "src/{package}/tracking_server.py",
        "tests/test_tracking_server.py",
    ],
}

MAKE_TARGETS = ["help", "setup", "lab", "pipeline", "check", "fix", "test", "image", "serve",
                "monitor", "doctor", "clean"]  # fmt: skip
CI_COMMANDS = ["make setup", "make check", "make test", "make pipeline ARGS=--smoke"]
# Jinja left unrendered: an opening tag, the end of a tag as Jinja is written (`{{ x }}`), or the
# variable itself. A bare `}}` or `%}` is ordinary Python: nested dicts, f-string formats `{x:.0%}`.
TEMPLATE_LEFTOVERS = ("{{", "{%", " }}", " %}", "cookiecutter.")
GITHUB_EXPRESSION = re.compile(r"\$\{\{.*?\}\}")  # ${{ github.ref }} is GitHub's, not Jinja's


def choice_options() -> dict[str, list]:
    """Every option a user picks from a list or answers yes/no, with all its values."""
    return {
        name: value if isinstance(value, list) else [True, False]
        for name, value in OPTIONS.items()
        if not name.startswith("_") and isinstance(value, list | bool)
    }


def expected_names(options: dict) -> tuple[str, str]:
    """The slug and package a bake should produce: given, or derived as cookiecutter.json does."""
    name = options.get("project_name", OPTIONS["project_name"])
    slug = options.get("project_slug", name.lower().strip().replace(" ", "-").replace("_", "-"))
    return slug, options.get("package_name", slug.replace("-", "_"))


def expected_files(options: dict) -> set[str]:
    _, package = expected_names(options)
    files = list(BASE_FILES)
    for (option, value), added in FILES_BY_OPTION.items():
        if options[option] == value:
            files += added
    return {path.format(package=package) for path in files}


@dataclass
class Baked:
    root: Path
    options: dict
    slug: str
    package: str

    def files(self) -> set[str]:
        """Every file's path relative to the project, outside .git."""
        return {
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and ".git" not in path.relative_to(self.root).parts
        }

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.root, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()


@pytest.fixture(scope="module", params=COMBINATIONS)
def baked(request, tmp_path_factory, bake_project) -> Baked:
    options = request.param
    with pytest.MonkeyPatch.context() as patch:
        # Where Python writes bytecode, as on most machines, the hooks must still leave none.
        patch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        root = bake_project(tmp_path_factory.mktemp("bake"), **options)
    return Baked(root, options, *expected_names(options))


def test_combinations_cover_every_value():
    combinations = [param.values[0] for param in COMBINATIONS]
    for option, values in choice_options().items():
        assert all(option in combination for combination in combinations), (
            f"every combination must set `{option}` (a default would hide which value is tested)"
        )
        used = [combination[option] for combination in combinations]
        missing = [value for value in values if value not in used]
        assert not missing, f"no combination uses {option}={missing}"


def test_combination_ids_are_unique():
    ids = [param.id for param in COMBINATIONS]
    assert len(ids) == len(set(ids))


def test_folder_and_package_are_named_from_the_options(baked):
    assert baked.root.name == baked.slug
    assert (baked.root / "src" / baked.package / "__init__.py").is_file()


def test_files_are_exactly_the_expected_ones(baked):
    found, expected = baked.files(), expected_files(baked.options)
    unexpected, missing = sorted(found - expected), sorted(expected - found)
    assert not unexpected and not missing, f"unexpected: {unexpected}\nmissing: {missing}"


def test_no_empty_folders_are_left(baked):
    empty = [
        path.relative_to(baked.root).as_posix()
        for path in baked.root.rglob("*")
        if path.is_dir() and ".git" not in path.relative_to(baked.root).parts
        and not any(path.iterdir())
    ]  # fmt: skip
    assert empty == []


def test_no_template_syntax_is_left(baked):
    leftovers = []
    for name in sorted(baked.files()):
        text = (baked.root / name).read_text(encoding="utf-8")
        if name.startswith(".github/"):
            text = GITHUB_EXPRESSION.sub("", text)
        leftovers += [f"{name}: {marker!r}" for marker in TEMPLATE_LEFTOVERS if marker in text]
    assert not leftovers, "\n".join(leftovers)


def test_notebooks_are_valid(baked):
    notebooks = sorted((baked.root / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nbformat.validate(nbformat.read(path, as_version=nbformat.NO_CONVERT))


def test_pyproject_names_the_project_and_its_command(baked):
    pyproject = tomllib.loads((baked.root / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == baked.slug
    assert pyproject["project"]["scripts"] == {baked.slug: f"{baked.package}.cli:main"}


def test_every_yaml_file_parses(baked):
    names = [name for name in baked.files() if name.endswith((".yaml", ".yml"))]
    assert "params.yaml" in names
    for name in names:
        assert isinstance(yaml.safe_load((baked.root / name).read_text()), dict), name


def ci_step_commands(workflow: dict) -> list[str]:
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    return [step["run"] for step in steps if "run" in step]


def test_ci_workflow_runs_the_projects_gates(baked):
    path = baked.root / ".github" / "workflows" / "ci.yml"
    if baked.options["ci"] != "github":
        assert not (baked.root / ".github").exists()
        return
    workflow = yaml.safe_load(path.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    job = next(iter(workflow["jobs"].values()))
    assert job["runs-on"] == "ubuntu-latest"
    assert any(step.get("uses", "").startswith("astral-sh/setup-uv@") for step in job["steps"])
    commands = ci_step_commands(workflow)
    expected = CI_COMMANDS + (["make image"] if baked.options["docker"] else [])
    assert [command for command in commands if command.startswith("make ")] == expected


def test_dependabot_updates_uv_and_actions_weekly(baked):
    if baked.options["ci"] != "github":
        assert not (baked.root / ".github" / "dependabot.yml").exists()
        return
    config = yaml.safe_load((baked.root / ".github" / "dependabot.yml").read_text())
    updates = {update["package-ecosystem"]: update for update in config["updates"]}
    assert set(updates) == {"uv", "github-actions"}
    assert {update["schedule"]["interval"] for update in updates.values()} == {"weekly"}


RUFF = Path(sys.executable).parent / "ruff"  # the version the generated project pins, too
EXPORTED_HEADER = "# AUTOGENERATED! DO NOT EDIT!"  # nbdev's own layout, which `check` leaves alone


def test_generated_code_passes_ruff_as_its_check_runs_it(baked):
    """A project passes its own lint and format gates from the first commit, for every option."""
    linted = subprocess.run([RUFF, "check", "--output-format", "concise", "."], cwd=baked.root,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert linted.returncode == 0, linted.stdout
    exported = [str(path.relative_to(baked.root)) for path in (baked.root / "src").rglob("*.py")
                if path.read_text().startswith(EXPORTED_HEADER)]  # fmt: skip
    formatted = subprocess.run(
        [RUFF, "format", "--check", ".", f"--extend-exclude={','.join(exported)}"],
        cwd=baked.root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert formatted.returncode == 0, formatted.stdout


def test_makefile_has_every_target(baked):
    makefile = (baked.root / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE))
    assert sorted(set(MAKE_TARGETS) - targets) == []


# Targets whose command takes no options of the user's: the rest hand ARGS on to the CLI.
WITHOUT_OPTIONS = {"help", "setup", "check", "fix", "doctor", "tracking-start", "tracking-status",
                   "tracking-stop"}  # fmt: skip


def test_every_target_that_calls_the_cli_hands_on_args(baked):
    makefile = (baked.root / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE)) - WITHOUT_OPTIONS
    for target in sorted(targets):
        done = subprocess.run(
            ["make", "-n", target, "ARGS=--handed-on"], cwd=baked.root, capture_output=True,
            text=True, check=True,
        )  # fmt: skip
        assert "--handed-on" in done.stdout, f"make {target} drops ARGS: {done.stdout}"


def flat_params(tree: dict, prefix: str = "") -> dict:
    """params.yaml under notebook parameter names: `data.test_size` is `data_test_size`."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat[name.replace(".", "_")] = value
        if isinstance(value, dict):
            flat |= flat_params(value, prefix=f"{name}.")
    return flat


def notebook_defaults(path: Path) -> dict:
    """The values a notebook's `parameters` cell assigns (annotated assignments only)."""
    notebook = json.loads(path.read_text())
    cells = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected one cell tagged `parameters`"
    tree = ast.parse("".join(cells[0]["source"]))
    return {
        node.target.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and node.value is not None
    }


def test_notebook_parameters_equal_params_yaml(baked):
    params = flat_params(yaml.safe_load((baked.root / "params.yaml").read_text()))
    assert params["task"] == baked.options["task"]
    for path in sorted((baked.root / "notebooks").glob("*.ipynb")):
        defaults = notebook_defaults(path)
        assert defaults, f"{path.name} declares no parameters"
        drift = {
            name: (value, params.get(name, "<not in params.yaml>"))
            for name, value in defaults.items()
            if params.get(name, object()) != value
        }
        assert drift == {}, f"{path.name}: notebook default vs params.yaml"


def test_git_repository_follows_git_init(baked):
    if not baked.options["git_init"]:
        assert not (baked.root / ".git").exists()
        return
    assert baked.git("rev-list", "--count", "HEAD") == "1"
    assert baked.git("status", "--porcelain") == ""
    # `setup` recognises this commit by its message to add uv.lock to it (tasks.py)
    tasks = (baked.root / "src" / baked.package / "tasks.py").read_text()
    message = re.search(r'^GENERATED_COMMIT = "(.+)"', tasks, flags=re.MULTILINE)[1]
    assert baked.git("log", "-1", "--format=%s") == message
