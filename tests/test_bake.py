"""Fast lane: each curated option combination bakes into exactly the project it should, and every
generated file is well-formed. Nothing is installed or executed here (that is the slow lane)."""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

TEMPLATE = Path(__file__).resolve().parents[1]
OPTIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text())
RUNTIME = TEMPLATE / "runtime"  # crisp-ml-runtime: the machinery every project depends on
RUNTIME_PACKAGE = RUNTIME / "src" / "crisp_ml"


def runtime_file_module(relative: str, name: str):
    """A module of the runtime folder loaded from its file alone (stdlib-only modules), under a
    name of its own, so that nothing named crisp_ml is imported into the tests' process."""
    spec = importlib.util.spec_from_file_location(name, RUNTIME / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    dont_write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write_bytecode
        del sys.modules[name]
    return module


BUILD_WHEEL = runtime_file_module("build_wheel.py", "runtime_build_wheel")

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
         "project_name": "Churn Model", "project_slug": "churn", "package_name": "churn_model",
         "__model_name": "churn-classifier", "__kernel_name": "churn-kernel"},
        id="classification-server-github-nodocker",
    ),  # slug, package, model and kernel differ, so a template that mixes them up fails here
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
    ".cruft.json",
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
    "notebooks/07_experiment.ipynb",
    "params.yaml",
    "pyproject.toml",
    "schema.yaml",
    "src/{package}/__init__.py",
    "src/{package}/data.py",  # nbdev exports these two from notebooks 02 and 03;
    "src/{package}/modelling.py",  # the machinery is the runtime's (crisp_ml)
    "tests/test_data.py",  # the tests of the team's own modules; the runtime's are in runtime/tests
    "tests/test_environment.py",
    "tests/test_modelling.py",
    "vendor/{wheel}",
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
    ],
}

MAKE_TARGETS = ["help", "setup", "lab", "pipeline", "params", "check", "fix", "test", "image",
                "serve", "score", "monitor", "experiment", "promote", "doctor", "clean"]  # fmt: skip
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
    return {path.format(package=package, wheel=BUILD_WHEEL.wheel_name()) for path in files}


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
        if name.startswith("vendor/"):
            continue  # the runtime's wheel, built from plain Python (test_vendored_runtime_...)
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
    # the command is the runtime's, under the project's name (`uv run <slug> pipeline`)
    assert pyproject["project"]["scripts"] == {baked.slug: "crisp_ml.cli:main"}


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
    # `setup` recognises this commit by its message to add uv.lock to it (the runtime's tasks.py)
    tasks = (RUNTIME_PACKAGE / "tasks.py").read_text()
    message = re.search(r'^GENERATED_COMMIT = "(.+)"', tasks, flags=re.MULTILINE)[1]
    assert baked.git("log", "-1", "--format=%s") == message


# --- the runtime: vendored, configured, recorded, and not copied into the project ---


def runtime_version() -> str:
    """crisp_ml.__version__, read from the runtime's source (not with build_wheel's own reader)."""
    tree = ast.parse((RUNTIME_PACKAGE / "__init__.py").read_text())
    (value,) = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]
    ]
    return value


def runtime_sources() -> dict[str, bytes]:
    """The runtime package's files as a wheel names them (`crisp_ml/serving/app.py`)."""
    return {
        f"crisp_ml/{path.relative_to(RUNTIME_PACKAGE).as_posix()}": path.read_bytes()
        for path in sorted(RUNTIME_PACKAGE.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_vendored_runtime_is_a_reproducible_build_of_the_templates_runtime(baked, tmp_path):
    (vendored,) = (baked.root / "vendor").iterdir()
    fresh = BUILD_WHEEL.build(tmp_path)
    assert fresh.name == vendored.name
    assert fresh.read_bytes() == vendored.read_bytes(), "the wheel differs from a fresh build"
    with zipfile.ZipFile(vendored) as wheel:
        entries = wheel.infolist()
        contents = {entry.filename: wheel.read(entry) for entry in entries}
    # byte for byte the same on every machine and day: no build time, no file modes of the checkout
    assert {entry.date_time for entry in entries} == {(1980, 1, 1, 0, 0, 0)}
    assert {entry.external_attr >> 16 for entry in entries} == {0o644}
    # every file of the package, py.typed included, exactly as in the runtime's source
    package = {name: data for name, data in contents.items() if name.startswith("crisp_ml/")}
    assert package == runtime_sources()
    info = f"crisp_ml_runtime-{runtime_version()}.dist-info"
    metadata = contents[f"{info}/METADATA"].decode()
    assert re.search(r"^Version: (.+)$", metadata, flags=re.MULTILINE)[1] == runtime_version()
    assert "Name: crisp-ml-runtime" in metadata.splitlines()
    # RECORD names every other file with its hash and size, as installers check it
    record = [line.split(",") for line in contents[f"{info}/RECORD"].decode().splitlines()]
    assert sorted(name for name, *_ in record) == sorted(contents)
    for name, digest, size in record:
        if name != f"{info}/RECORD":
            data = contents[name]
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert (digest, size) == (f"sha256={expected.decode()}", str(len(data))), name


def test_pyproject_depends_on_the_vendored_runtime(baked):
    pyproject = tomllib.loads((baked.root / "pyproject.toml").read_text())
    version = runtime_version()
    major, minor = (int(part) for part in version.split(".")[:2])
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}"  # 0.x: a minor may break
    extra = "[server]" if baked.options["tracking"] == "server" else ""
    assert f"crisp-ml-runtime{extra}>={version},<{upper}" in pyproject["project"]["dependencies"]
    source = pyproject["tool"]["uv"]["sources"]["crisp-ml-runtime"]
    assert source == {"path": f"vendor/{BUILD_WHEEL.wheel_name()}"}
    assert (baked.root / source["path"]).is_file()


def test_pyproject_tells_the_runtime_about_the_project(baked):
    table = tomllib.loads((baked.root / "pyproject.toml").read_text())["tool"]["crisp-ml"]
    expected = {
        "package": baked.package,
        "model_name": baked.options.get("__model_name", baked.slug),
        "image_name": baked.options.get("__image_name", baked.slug),
        "kernel_name": baked.options.get("__kernel_name", baked.slug),
        "tracking": baked.options["tracking"],
    }
    if baked.options["tracking"] == "server":  # a local project has no server to name
        expected["tracking_uri"] = OPTIONS["tracking_server_uri"]
    assert table == expected
    # the runtime reads it as it is written
    project = runtime_file_module("src/crisp_ml/project.py", "runtime_project")
    settings = project._settings_of(baked.root)
    assert (settings.name, settings.package, settings.tracking_uri) == (
        baked.slug, baked.package, expected.get("tracking_uri"),
    )  # fmt: skip
    # the kernel the notebooks ask for is the one `setup` registers
    for path in sorted((baked.root / "notebooks").glob("*.ipynb")):
        kernelspec = json.loads(path.read_text())["metadata"]["kernelspec"]
        assert kernelspec["name"] == table["kernel_name"], path.name


def test_cruft_json_records_the_template_and_the_answers(baked):
    record = json.loads((baked.root / ".cruft.json").read_text())
    assert {"template", "commit", "checkout", "context", "directory"} <= set(record)
    assert record["template"] == str(TEMPLATE)  # baked from this checkout
    head = subprocess.run(["git", "-C", str(TEMPLATE), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert record["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    answers = record["context"]["cookiecutter"]
    public = {name for name in OPTIONS if not name.startswith("_")}
    assert public <= set(answers), f"answers missing: {sorted(public - set(answers))}"
    given = {name: value for name, value in baked.options.items() if name in public}
    assert {name: answers[name] for name in given} == given
    assert (answers["project_slug"], answers["package_name"]) == (baked.slug, baked.package)
    # nothing of the machine that baked it: cookiecutter's own paths, the output folder
    assert not {"_output_dir", "_repo_dir"} & set(answers)
    assert str(baked.root.parent) not in json.dumps(record)


def definitions(source: str) -> dict[str, str]:
    """The names a module defines at its top level (functions, classes, assignments), each with
    its definition as `ast.dump` gives it; dunders such as `__all__` are left out."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = ast.dump(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        found[name.id] = ast.dump(node.value) if node.value else ""
    return {name: dump for name, dump in found.items() if not re.fullmatch(r"__\w+__", name)}


def public_runtime_modules() -> set[str]:
    """The modules crisp_ml's docstring lists as its public API (`crisp_ml.tracking`, ...)."""
    docstring = ast.get_docstring(ast.parse((RUNTIME_PACKAGE / "__init__.py").read_text()))
    return set(re.findall(r"`crisp_ml\.(\w+)`", docstring))


def runtime_modules_used(root: Path) -> set[str]:
    """The runtime's modules a project's notebooks and package import (`tracking`, `serving`)."""
    sources = [path.read_text() for path in (root / "src").rglob("*.py")]
    for path in (root / "notebooks").glob("*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        sources += ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    pattern = re.compile(r"^\s*(?:from|import)\s+crisp_ml\.(\w+)", flags=re.MULTILINE)
    return {module for source in sources for module in pattern.findall(source)}


def runtime_definitions() -> dict[str, dict[str, str]]:
    """Module (`serving.app`) to what it defines, for every module of the runtime."""
    return {
        ".".join(path.relative_to(RUNTIME_PACKAGE).with_suffix("").parts): definitions(
            path.read_text()
        )
        for path in sorted(RUNTIME_PACKAGE.rglob("*.py"))
    }


def defined_twice(
    project: dict[str, str], runtime: dict[str, dict[str, str]], in_use: set[str]
) -> list[str]:
    """Names the project defines that the runtime defines too: any name of a module in use (the
    public API, and whatever the project imports), and anything with the very same definition (a
    copy) elsewhere. A chore's name (`crisp_ml.tasks.clean`) is free for a notebook's own use."""
    return sorted(
        f"{name} (crisp_ml.{module})"
        for module, defined in runtime.items()
        for name, dump in project.items()
        if name in defined and (module.split(".")[0] in in_use or defined[name] == dump)
    )


def test_a_copy_of_the_runtime_would_be_found():
    """The check below can fail: a public name redefined, and a copy of a chore's code."""
    runtime = runtime_definitions()
    assert {"cli", "tracking", "use_case", "serving"} <= public_runtime_modules()
    tasks = (RUNTIME_PACKAGE / "tasks.py").read_text()
    chore = next(n for n in ast.parse(tasks).body if isinstance(n, ast.FunctionDef))
    copied = ast.get_source_segment(tasks, chore)
    project = definitions(f"def start_phase_run():\n    pass\n\n{copied}\n")
    found = defined_twice(project, runtime, public_runtime_modules())
    assert found == [f"{chore.name} (crisp_ml.tasks)", "start_phase_run (crisp_ml.tracking)"]
    # a module the project imports is in use; a chore's name with code of its own is not a copy
    runtime = {"data": {"load_demo": "runtime's"}, "tasks": {"clean": "runtime's"}}
    project = {"load_demo": "project's", "clean": "project's"}
    assert defined_twice(project, runtime, {"data"}) == ["load_demo (crisp_ml.data)"]


def test_the_project_package_defines_nothing_the_runtime_does(baked):
    runtime = runtime_definitions()
    in_use = public_runtime_modules() | runtime_modules_used(baked.root)
    assert {"tracking", "project"} <= in_use
    twice = {
        path.name: found
        for path in sorted((baked.root / "src" / baked.package).glob("*.py"))
        if (found := defined_twice(definitions(path.read_text()), runtime, in_use))
    }
    assert twice == {}, "defined in the project and in crisp_ml"


def test_the_project_package_holds_only_what_notebooks_export(baked):
    sources = [
        "".join(cell["source"])
        for path in sorted((baked.root / "notebooks").glob("*.ipynb"))
        for cell in json.loads(path.read_text())["cells"]
        if cell["cell_type"] == "code"
    ]
    exported = {f"{m[1]}.py" for s in sources if (m := re.match(r"#\| default_exp (\S+)", s))}
    modules = {path.name for path in (baked.root / "src" / baked.package).iterdir()}
    assert modules - {"__init__.py"} == exported


def copy_of_template(to: Path) -> Path:
    """This checkout's files (committed or not, nothing git ignores), without its git history."""
    listed = subprocess.run(
        ["git", "-C", str(TEMPLATE), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        if (TEMPLATE / name).is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            (to / name).write_bytes((TEMPLATE / name).read_bytes())
    return to


def test_a_template_inside_another_repository_records_no_commit(tmp_path, cookiecutter_config):
    """A template copied into another repository (a monorepo, an unpacked download) is no
    checkout of its own: the enclosing repository's commit would be a wrong base for `update`."""
    from cookiecutter.main import cookiecutter

    outer = tmp_path / "monorepo"
    subprocess.run(["git", "init", "--quiet", str(outer)], check=True)
    subprocess.run(["git", "-C", str(outer), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "--quiet", "--allow-empty", "-m", "other work"], check=True)  # fmt: skip
    template = copy_of_template(outer / "templates" / "crisp")
    sys.modules.pop("local_extensions", None)
    try:
        made = cookiecutter(str(template), no_input=True, output_dir=str(tmp_path / "out"),
                            config_file=str(cookiecutter_config))  # fmt: skip
    finally:
        sys.modules.pop("local_extensions", None)  # the next bake imports this template's again
    record = json.loads((Path(made) / ".cruft.json").read_text())
    assert record["commit"] is None and record["template"] == str(template)


def pins(requirements: list[str]) -> dict[str, str]:
    """Package name -> its specifier and marker, as written."""
    found = {}
    for line in requirements:
        requirement = Requirement(line)
        found[canonicalize_name(requirement.name)] = f"{requirement.specifier};{requirement.marker}"
    return found


@pytest.mark.parametrize("group", ["serve", "serve-onnx"])
def test_the_serve_group_pins_each_package_as_the_runtime_does(baked, group):
    """The image installs a serve group (by the model's runtime), the pipeline the runtime's
    dependencies: a model must load where it is served with the versions it was trained with."""
    from crisp_ml.serving.image import serve_requirements

    runtime = tomllib.loads((RUNTIME / "pyproject.toml").read_text())
    serve = pins(serve_requirements(baked.root / "pyproject.toml", group))
    trained = pins(runtime["project"]["dependencies"])
    both = serve.keys() & trained.keys()
    model_runtime = {"serve": {"scikit-learn", "pandas", "skops"}, "serve-onnx": {"onnxruntime"}}
    assert {"numpy", "fastapi", "uvicorn", *model_runtime[group]} <= both
    assert {name: serve[name] for name in both} == {name: trained[name] for name in both}


def test_the_serve_group_pin_check_sees_a_drift():
    assert pins(["numpy==2.4.6"]) != pins(["numpy==2.4.7"])
    assert pins(["uvloop>=0.21,<1; sys_platform != 'win32'"]) != pins(["uvloop>=0.21,<1"])


def test_a_template_with_uncommitted_changes_says_its_commit_is_not_exact(
    tmp_path, cookiecutter_config, capfd
):
    from cookiecutter.main import cookiecutter

    template = copy_of_template(tmp_path / "crisp")
    git = ["git", "-C", str(template), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "--quiet"], check=True)
    subprocess.run([*git, "add", "--all"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "the template"], check=True)

    def generate(into: str) -> dict:
        sys.modules.pop("local_extensions", None)
        try:
            made = cookiecutter(str(template), no_input=True, output_dir=str(tmp_path / into),
                                config_file=str(cookiecutter_config))  # fmt: skip
        finally:
            sys.modules.pop("local_extensions", None)
        return json.loads((Path(made) / ".cruft.json").read_text())

    clean = generate("clean")
    assert "uncommitted changes" not in capfd.readouterr().err
    (template / "README.md").write_text("changed, not committed\n")
    dirty = generate("dirty")
    assert dirty["commit"] == clean["commit"], "cruft's record holds a commit and nothing else"
    assert (
        f"has uncommitted changes, so this project is not exactly its commit {clean['commit'][:12]}"
        in capfd.readouterr().err
    )


def test_a_runtime_from_another_template_is_refused(tmp_path, cookiecutter_config):
    """cookiecutter imports a template's local extensions by module name: a second template
    generated in the same process would get the first one's runtime, unless the hook refuses."""
    from cookiecutter.exceptions import FailedHookException
    from cookiecutter.main import cookiecutter

    other = copy_of_template(tmp_path / "other-template")
    sys.modules.pop("local_extensions", None)
    try:
        cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(tmp_path / "first"),
                     config_file=str(cookiecutter_config))  # fmt: skip
        with pytest.raises(FailedHookException):
            cookiecutter(str(other), no_input=True, output_dir=str(tmp_path / "second"),
                         config_file=str(cookiecutter_config))  # fmt: skip
    finally:
        sys.modules.pop("local_extensions", None)  # the next bake imports this template's again
    assert not (tmp_path / "second" / "demo-ml-project").exists()
