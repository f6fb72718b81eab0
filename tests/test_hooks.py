"""Fast lane: the pre-generation hook refuses bad input, says how to fix it, leaves nothing behind.

End to end, each bad value is baked as a user would (cookiecutter stops, the output folder stays
empty); the hook's `problems()` is also tested directly, rendered as cookiecutter renders it.
Template syntax in answers and length limits: tests/test_fields.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.utils import create_env_with_context

TEMPLATE = Path(__file__).resolve().parents[1]
HOOK = TEMPLATE / "hooks" / "pre_gen_project.py"
# The project template folder, found as cookiecutter finds it.
PROJECT = next(p for p in TEMPLATE.iterdir() if "cookiecutter" in p.name and "{{" in p.name)
RUNTIME_SOURCE = TEMPLATE / "runtime" / "src"  # crisp_ml, which every project installs and runs
# A payload that runs a command if a value were ever pasted into the hook's source.
INJECTION = "x'''); import os; os.system('touch {marker}'); '''"
VALID = {
    "project_name": "Churn Model",
    "project_slug": "churn-model",
    "package_name": "churn_model",
    "author_name": "Data Science Team",
    "author_email": "data-science@example.com",
    "description": "Predict which customers will churn.",
    "tracking": "local",
    "tracking_server_uri": "http://127.0.0.1:5000",
    "__model_name": "churn-model",
    "__image_name": "churn-model",
    "__kernel_name": "churn-model",
}


def bad(field: str, value: str, id: str, **context) -> pytest.param:
    """A bad input: the extra context to bake with, the field the message must name, its value."""
    return pytest.param({field: value, **context}, field, value, id=id)


BAD_INPUTS = [
    bad("project_name", "", "name-empty"),
    bad("project_name", "", "name-empty-slug-given", project_slug="ok"),
    bad("project_name", 'Say "hi"', "name-double-quote"),
    bad("project_name", "Bob's model", "name-single-quote", project_slug="bobs-model"),
    bad("project_name", "back\\slash", "name-backslash"),
    bad("project_slug", "", "slug-empty"),
    bad("project_slug", "My Project", "slug-capitals-space"),
    bad("project_slug", "2fast", "slug-leading-digit"),
    bad("project_slug", "churn--model", "slug-double-hyphen"),
    bad("project_slug", "churn-", "slug-trailing-hyphen"),
    bad("project_slug", "churn_model", "slug-underscore"),
    bad("project_slug", "churn.model", "slug-dot"),
    bad("project_slug", "a/b", "slug-nested-folders"),
    bad("project_slug", "../escape", "slug-parent-folder"),
    bad("project_slug", "mlflow", "slug-dependency"),
    bad("project_slug", "test", "slug-test"),
    bad("package_name", "", "package-empty"),
    bad("package_name", "Churn", "package-capital"),
    bad("package_name", "churn-model", "package-hyphen"),
    bad("package_name", "1churn", "package-leading-digit"),
    bad("package_name", "churn model", "package-space"),
    bad("package_name", "class", "package-keyword"),
    bad("package_name", "mlflow", "package-mlflow"),
    bad("package_name", "crisp_ml", "package-runtime"),
    bad("project_slug", "crisp-ml", "slug-runtime"),
    bad("package_name", "sklearn", "package-sklearn"),
    bad("package_name", "yaml", "package-yaml"),
    bad("package_name", "json", "package-stdlib"),
    bad("package_name", "tests", "package-tests"),
    bad("package_name", "src", "package-src"),
    bad("author_email", "nobody", "email-without-at"),
    bad("description", 'The """ end', "description-docstring-end"),
    bad("description", "C:\\new", "description-backslash"),
    bad("tracking_server_uri", "mlflow.example.com", "uri-without-scheme", tracking="server"),
    bad("tracking_server_uri", 'http://x"; import os', "uri-quote", tracking="server"),
    # written into pyproject.toml's [tool.crisp-ml] table: `model_name = "<name>"`
    bad("__model_name", 'x"; import os; os.system("id") #', "model-name-code"),
    bad("__image_name", "Churn Model", "image-name-not-a-slug"),
    bad("__kernel_name", "k" * 65, "kernel-name-too-long"),
]
# Values holding template syntax: cookiecutter renders an answer, so local_extensions.py refuses
# it before this hook runs (tests/test_fields.py); a replay file's values reach the hook unrendered.
UNRENDERED_BAD_INPUTS = [
    bad("project_name", "{{ x }}", "name-template-expression"),
    bad("project_name", "{% if %}", "name-template-block", project_slug="ok"),
    bad("project_name", "a }} b", "name-template-end"),
    bad("author_name", "{{ me }}", "author-template"),
    bad("description", "{# note #}", "description-template-comment"),
]


def names_problem(output: str, field: str, value: str) -> bool:
    """The message names the field and shows the bad value (as the hook prints it, with repr)."""
    if value == "":
        return f"{field} is empty" in output
    return f"{field} {value!r}" in output or f"{field} {value[:40] + '...'!r}" in output


def assert_refused(output: str, field: str, value: str, output_dir: Path) -> None:
    assert names_problem(output, field, value), output
    assert "e.g. '" in output, "the message gives an example of a good value"
    left = sorted(path.name for path in output_dir.iterdir())
    assert left == [], f"left behind in the output folder: {left}"


@pytest.mark.parametrize(("context", "field", "value"), BAD_INPUTS)
def test_bad_input_is_refused_and_leaves_nothing(
    context, field, value, tmp_path, capfd, bake_project
):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    with pytest.raises(FailedHookException):
        bake_project(output_dir, **context)
    assert_refused(capfd.readouterr().err, field, value, output_dir)


@pytest.mark.parametrize(
    ("field", "context"),
    [
        pytest.param(
            "project_name", {"project_slug": "safe", "package_name": "safe"}, id="project_name"
        ),
        pytest.param("package_name", {}, id="package_name"),
        # the payload's `/` would nest the slug's folder: see local_extensions.py
        pytest.param("project_name", {}, id="project_name-deriving-the-slug"),
    ],
)  # fmt: skip
def test_injection_is_refused_and_never_runs(field, context, tmp_path, capfd, bake_project):
    marker = tmp_path / "pwned"
    payload = INJECTION.format(marker=marker)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    with pytest.raises(FailedHookException):
        bake_project(output_dir, **context, **{field: payload})
    assert not marker.exists(), "the payload ran"
    assert_refused(capfd.readouterr().err, field, payload, output_dir)


def test_command_line_exits_non_zero_with_the_message(tmp_path, cookiecutter_config):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(output_dir),
         "--config-file", str(cookiecutter_config), str(TEMPLATE), "package_name=class"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert_refused(done.stderr, "package_name", "class", output_dir)


# --- the hook as a module, rendered as cookiecutter renders it ---


@contextmanager
def template_importable():
    """cookiecutter.json's `_extensions` import local_extensions.py, as cookiecutter arranges."""
    sys.path.insert(0, str(TEMPLATE))
    try:
        yield
    finally:
        sys.path.remove(str(TEMPLATE))


def rendered_hook(**values: str) -> types.ModuleType:
    """pre_gen_project.py rendered by cookiecutter's own Jinja environment, then imported."""
    extensions = json.loads((TEMPLATE / "cookiecutter.json").read_text())["_extensions"]
    context = {
        "cookiecutter": {**VALID, **values, "_extensions": extensions, "_output_dir": "/tmp/out"}
    }
    with template_importable():
        env = create_env_with_context(context)
    source = env.from_string(HOOK.read_text()).render(**context)
    module = types.ModuleType("pre_gen_project")
    # Our own hook's code; not run as __main__, so its main() does not run.
    exec(compile(source, str(HOOK), "exec"), module.__dict__)  # noqa: S102
    return module


@pytest.fixture(scope="module")
def hook() -> types.ModuleType:
    return rendered_hook()


TRICKY_VALUES = [
    INJECTION,
    "'''",
    '"""',
    "ends with a backslash \\",
    "\\N{BULLET} \\x00 \\u1234",
    "{{ cookiecutter.project_slug }} {% if %}",
    "Café ☕ <b>&amp;</b>",
    "two\nlines\ttab",
]


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_rendered_hook_reads_any_value_back_as_data(value, tmp_path):
    marker = tmp_path / "pwned"
    value = value.format(marker=marker) if value is INJECTION else value
    module = rendered_hook(project_name=value, package_name=value, description=value)
    assert module.VALUES["project_name"] == value
    assert module.VALUES["package_name"] == value
    assert module.VALUES["description"] == value
    assert not marker.exists()


def test_rendered_hook_reads_the_output_folder_and_the_limits(hook):
    assert hook.OUTPUT_DIR == "/tmp/out"
    assert hook.MAX_LENGTHS["project_slug"] > 0
    assert set(hook.MAX_LENGTHS) <= set(hook.VALUES)


def test_valid_values_have_no_problems(hook):
    assert hook.problems(VALID) == []


@pytest.mark.parametrize(
    "values",
    [
        {"package_name": "match"},  # soft keywords can be imported
        {"package_name": "_private"},
        {"project_slug": "a1-b2-c3", "package_name": "a1_b2_c3"},
        {"project_name": "Ünïcode & Co (v2)"},
        {"author_name": "Siobhán O'Brien"},  # written with tojson, so quotes are safe here
        {"description": 'A "quoted" word, an apostrophe\'s fine.'},
        {"tracking": "server", "tracking_server_uri": "https://mlflow.example.com:8443/team"},
        {"tracking": "local", "tracking_server_uri": "unused when tracking is local"},
        {"__model_name": "churn-classifier", "__image_name": "team-churn"},
    ],
)
def test_acceptable_values_pass(hook, values):
    assert hook.problems({**VALID, **values}) == []


@pytest.mark.parametrize(("context", "field", "value"), BAD_INPUTS + UNRENDERED_BAD_INPUTS)
def test_problems_names_the_field_and_the_value(hook, context, field, value):
    values = {**VALID, **context}
    values[field] = value  # as the user typed it (cookiecutter renders extra context)
    found = [problem for problem in hook.problems(values) if problem.startswith(f"{field} ")]
    assert len(found) == 1, hook.problems(values)
    assert names_problem(found[0], field, value)


def test_a_problem_suggests_a_valid_name(hook):
    (problem,) = hook.problems({**VALID, "project_slug": "My Churn Model"})
    suggestion = re.search(r"e\.g\. '([^']*)'", problem).group(1)
    assert suggestion == "my-churn-model"
    assert hook.problems({**VALID, "project_slug": suggestion}) == []


def project_imports() -> set[str]:
    """Top-level modules the generated project imports, read from the template's sources and from
    the runtime's, whose imports run in the project's environment too."""
    sources = [path.read_text() for path in [*PROJECT.rglob("*.py"), *RUNTIME_SOURCE.rglob("*.py")]]
    for notebook in PROJECT.rglob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        sources += ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    pattern = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", flags=re.MULTILINE)
    return {name for source in sources for name in pattern.findall(source)} - {"__future__"}


def test_every_module_the_project_imports_is_reserved(hook):
    imported = project_imports()
    assert {"mlflow", "sklearn", "pandas", "yaml", "crisp_ml"} <= imported  # the reader finds them
    assert sorted(imported - hook.RESERVED_NAMES) == []
