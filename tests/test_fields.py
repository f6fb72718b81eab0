"""Fast lane: answers are data. Template syntax in any free-text answer is refused before
cookiecutter renders it, by every route an answer takes (Python API, command line, user config), and
every free-text answer has a length limit; either way nothing is run and nothing is left behind.

The guard is local_extensions.py; the length limits are checked by hooks/pre_gen_project.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter
from cookiecutter.utils import create_env_with_context

TEMPLATE = Path(__file__).resolve().parents[1]
OPTIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text())
# Every answer that takes free text: the string-valued options, computed ones included (an answer
# can set `__model_name` as well as `project_name`).
TEXT_FIELDS = [
    name
    for name, value in OPTIONS.items()
    if isinstance(value, str) and (name.startswith("__") or not name.startswith("_"))
]
_spec = importlib.util.spec_from_file_location(
    "fields_extensions", TEMPLATE / "local_extensions.py"
)
EXTENSIONS = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(EXTENSIONS)
MAX_LENGTHS = EXTENSIONS.MAX_LENGTHS
# Runs a command when rendered. It names no path (a `/` would nest folders, and a relative path
# would land in the template folder, which is the working directory when cookiecutter renders
# paths): the marker file's path comes from the environment.
PAYLOAD = "{{ cycler.__init__.__globals__.os.system('touch \"$FIELDS_MARKER\"') }}"
REFUSAL = "Answers are data, and this template refuses template syntax"


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    """The file the payload would create; the command line's subprocess inherits the variable."""
    path = tmp_path / "payload-ran"
    monkeypatch.setenv("FIELDS_MARKER", str(path))
    return path


@pytest.fixture
def output_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def config_with(folder: Path, default_context: dict | None = None) -> Path:
    """A user config of our own (JSON is YAML), holding `default_context` if given."""
    config = folder / "config.yaml"
    settings = {
        "cookiecutters_dir": str(folder / "cookiecutters"),
        "replay_dir": str(folder / "replay"),
        "default_context": default_context or {},
    }
    config.write_text(json.dumps(settings))
    return config


def run_command_line(output_dir: Path, config: Path, *answers: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(output_dir),
         "--config-file", str(config), str(TEMPLATE), "git_init=false", *answers],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_nothing_left(output_dir: Path) -> None:
    left = sorted(path.name for path in output_dir.iterdir()) if output_dir.exists() else []
    assert left == [], f"left behind in the output folder: {left}"


def assert_refused_as_data(message: str) -> None:
    assert REFUSAL in message, message
    assert PAYLOAD[:40] in message, "the message shows the value"
    assert "e.g. project_name='Churn Model'" in message, "the message says how to fix it"


def test_the_template_has_files_whose_name_is_a_condition():
    assert "{% if cookiecutter.docker %}Dockerfile{% endif %}" in CONDITIONAL


def test_every_text_field_is_covered():
    assert {"project_name", "description", "tracking_server_uri", "__model_name"} <= set(
        TEXT_FIELDS
    )


# --- template syntax, by each route an answer takes ---


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_template_syntax_in_extra_context_is_refused(field, marker, output_dir, tmp_path):
    with pytest.raises(FailedHookException) as refused:
        cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(output_dir),
            extra_context={field: PAYLOAD, "git_init": False},
            config_file=str(config_with(tmp_path)),
        )  # fmt: skip
    assert not marker.exists(), "the payload ran"
    assert_refused_as_data(str(refused.value))
    assert_nothing_left(output_dir)


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_template_syntax_on_the_command_line_is_refused(field, marker, output_dir, tmp_path):
    done = run_command_line(output_dir, config_with(tmp_path), f"{field}={PAYLOAD}")
    assert not marker.exists(), "the payload ran"
    assert done.returncode == 1, done.stdout + done.stderr
    assert_refused_as_data(done.stdout)
    assert "Traceback" not in done.stdout + done.stderr
    assert_nothing_left(output_dir)


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_template_syntax_in_a_user_config_is_refused(field, marker, output_dir, tmp_path):
    config = config_with(tmp_path, default_context={field: PAYLOAD, "git_init": False})
    with pytest.raises(FailedHookException) as refused:
        cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output_dir),
                     config_file=str(config))  # fmt: skip
    assert not marker.exists(), "the payload ran"
    assert_refused_as_data(str(refused.value))
    assert_nothing_left(output_dir)


def test_template_syntax_in_the_output_folder_is_refused(marker, tmp_path):
    # cookiecutter renders every path it writes, the output folder's included.
    output_dir = tmp_path / f"out{PAYLOAD}"
    with pytest.raises(FailedHookException):
        cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(output_dir),
            extra_context={"git_init": False}, config_file=str(config_with(tmp_path)),
        )  # fmt: skip
    assert not marker.exists(), "the payload ran"
    assert_nothing_left(output_dir)


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> dict:
    """The replay file a good bake leaves: every answer, as cookiecutter recorded it."""
    folder = tmp_path_factory.mktemp("replay")
    cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(folder / "out"),
                 extra_context={"git_init": False}, config_file=str(config_with(folder)))  # fmt: skip
    (replay_file,) = (folder / "replay").glob("*.json")
    return json.loads(replay_file.read_text())


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_a_replay_file_is_never_rendered(field, replay, marker, tmp_path):
    """cookiecutter takes a replay file's values as they are, so the payload stays text (which the
    hook refuses where it checks the field). Guards what the docs say, should cookiecutter change."""
    edited = tmp_path / "edited.json"
    edited.write_text(
        json.dumps({**replay, "cookiecutter": {**replay["cookiecutter"], field: PAYLOAD}})
    )
    output_dir = tmp_path / "replayed"
    try:
        cookiecutter(str(TEMPLATE), replay=str(edited), output_dir=str(output_dir),
                     config_file=str(config_with(tmp_path)))  # fmt: skip
    except FailedHookException:
        assert_nothing_left(output_dir)
    assert not marker.exists(), "the payload ran"


# --- the guard itself, on sources as cookiecutter hands them to Jinja ---


@pytest.fixture(scope="module")
def environment():
    """cookiecutter's own environment with the template's extensions, as a bake makes it."""
    sys.path.insert(0, str(TEMPLATE))
    try:
        return create_env_with_context({"cookiecutter": {"_extensions": OPTIONS["_extensions"]}})
    finally:
        sys.path.remove(str(TEMPLATE))


def own_sources() -> list[str]:
    values = list(EXTENSIONS.strings_in(OPTIONS))
    hooks = [path.read_text() for path in sorted((TEMPLATE / "hooks").glob("*.py"))]
    return [*values, *hooks]


PACKAGE = "{{cookiecutter.package_name}}"
PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"
# Files whose name is a condition (`{% if cookiecutter.docker %}Dockerfile{% endif %}`), as the
# template has them today.
CONDITIONAL = sorted(
    path.relative_to(PROJECT).as_posix() for path in PROJECT.rglob("*") if "{%" in path.name
)
OWN_PATHS = [
    "{{cookiecutter.project_slug}}",
    f"src/{PACKAGE}/data.py",
    f"src/{PACKAGE}/modelling.py",
    *CONDITIONAL,
    f"/tmp/out/demo-ml-project/./src/{PACKAGE}",
    "/tmp/out/demo-ml-project/./src",
]
NOT_OWN = [
    "{{ x }}",
    "{% raw %}{{ x }}{% endraw %}",
    "{# a comment #}",
    "plain {{ x }} text",
    # a path of the template with something of its own around it
    f"{{{{ x }}}}/../src/{PACKAGE}",
    f"/tmp/{{{{ x }}}}/demo-ml-project/./src/{PACKAGE}",
    f"src/{PACKAGE}/data.py{{{{ x }}}}",
    f"src/{PACKAGE}/cli.py",  # the machinery is the runtime's now: not a path of the template
    f"src/{PACKAGE}/{{{{ x }}}}",
    f"{PACKAGE}",  # a name of the tree, but not a path of it
]


def short_id(source: str) -> str:
    return source[:40]


@pytest.mark.parametrize("source", own_sources() + OWN_PATHS, ids=short_id)
def test_the_templates_own_text_passes_the_guard(environment, source):
    environment.from_string(source)  # compiles: the guard lets it through


# the last hook with an expression of its own appended
@pytest.mark.parametrize("source", [*NOT_OWN, own_sources()[-1] + "{{ x }}"], ids=short_id)
def test_anything_else_holding_template_syntax_is_refused(environment, source):
    with pytest.raises(FailedHookException, match=REFUSAL):
        environment.from_string(source)


@pytest.mark.parametrize("text", ["plain text", "a }} b %} c #}", "{ {", "100% {braces}"])
def test_text_without_template_syntax_passes(environment, text):
    assert environment.from_string(text).render() == text


# --- length limits ---


def just_too_long(field: str) -> dict:
    """Answers in which only `field` is too long, by one character, and otherwise valid."""
    n = MAX_LENGTHS[field] + 1
    return {
        "project_name": {"project_name": "N" * n, "project_slug": "churn-model",
                         "package_name": "churn_model"},
        "project_slug": {"project_slug": "s" * n, "package_name": "churn_model"},
        "package_name": {"package_name": "p" * n},
        "author_name": {"author_name": "A" * n},
        "author_email": {"author_email": "e" * (n - len("@example.com")) + "@example.com"},
        "description": {"description": "d" * n},
        "tracking_server_uri": {"tracking": "server",
                                "tracking_server_uri": "http://" + "h" * (n - len("http://"))},
    }[field]  # fmt: skip


def test_every_text_answer_has_a_limit():
    computed = {name for name in TEXT_FIELDS if name.startswith("__")}  # the slug's, checked as it
    assert set(MAX_LENGTHS) == set(TEXT_FIELDS) - computed


@pytest.mark.parametrize("field", list(MAX_LENGTHS))
def test_a_value_over_its_limit_is_refused(field, output_dir, capfd, bake_project):
    context = just_too_long(field)
    length, limit = len(context[field]), MAX_LENGTHS[field]
    assert length == limit + 1
    with pytest.raises(FailedHookException):
        bake_project(output_dir, git_init=False, **context)
    message = capfd.readouterr().err
    assert f"{field} '" in message
    assert f"is {length} characters long, over the limit of {limit}" in message, message
    assert_nothing_left(output_dir)


def test_values_at_their_limits_are_accepted(output_dir, bake_project):
    at_limit = {field: just_too_long(field)[field][:-1] for field in MAX_LENGTHS}
    project = bake_project(output_dir, git_init=False, tracking="server", **at_limit)
    assert project.name == at_limit["project_slug"], "the folder is named the whole slug"


def test_a_300_character_name_is_refused_and_the_next_try_works(output_dir, tmp_path):
    config = config_with(tmp_path)
    done = run_command_line(output_dir, config, "project_name=" + "a" * 300)
    assert done.returncode == 1
    assert "project_name 'aaaa" in done.stderr, done.stderr
    assert f"is 300 characters long, over the limit of {MAX_LENGTHS['project_name']}" in done.stderr
    assert "OSError" not in done.stdout + done.stderr
    assert_nothing_left(output_dir)
    again = run_command_line(output_dir, config, "project_name=Churn Model")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (output_dir / "churn-model" / "pyproject.toml").is_file()
