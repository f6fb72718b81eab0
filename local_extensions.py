"""Jinja extensions of this template, loaded by cookiecutter through `_extensions` in cookiecutter.json.

Answers are data. cookiecutter renders every answer given on its command line, in the Python API's
`extra_context` or in a user config's `default_context` as a Jinja template (`from_string`) before
any hook runs, so `{{ cycler.__init__.__globals__.os.system(...) }}` in a project name would run
a command. Jinja hands every source to the extensions' `preprocess` before compiling it, which is
the one place early enough to refuse: `RefuseTemplateSyntax` lets template syntax through only in
the template's own text (the raw values of cookiecutter.json, the hooks, the paths of the project
template) and stops anything else with a message. Typed answers and replay files are not rendered.

cookiecutter creates the project folder by rendering the name of the template folder,
`{{cookiecutter.project_slug}}`, *before* the pre-generation hook gets to check the slug. A slug
holding `/` would make nested folders, of which cookiecutter's clean-up after a refused input removes
only the innermost; an empty slug would name the output folder itself, and cookiecutter would stop
with "directory already exists" before the hook could say what is wrong; a slug longer than the
file system allows would end in a traceback. So the folder's name, and only it, is rendered through
`slugify` cut to the slug's length limit: a valid slug is left as it is (slugify does not change
one), and any other value gives a single folder that the hook's refusal removes again.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path, PurePath

from cookiecutter.exceptions import FailedHookException
from jinja2 import Environment
from jinja2.ext import Extension

# The longest value each free-text answer may have: the pre-generation hook refuses longer ones
# (it reads this table as the Jinja global `field_max_lengths`), and the folder name is cut to the
# slug's. The slug names a folder, an image and a kernel: far below the file systems' 255 bytes;
# the name is held to the same limit, so that the slug derived from it fits. 254 characters is the
# longest address SMTP carries (RFC 5321).
# fmt: off
MAX_LENGTHS = {
    "project_name": 64, "project_slug": 64, "package_name": 64, "author_name": 100,
    "author_email": 254, "description": 200, "tracking_server_uri": 200,
}
# fmt: on

TEMPLATE = Path(__file__).resolve().parent
# Written in halves so that Jinja, which may render this file's neighbours, never reads them.
PROJECT_FOLDER = "{" + "{cookiecutter.project_slug}" + "}"
SAFE_PROJECT_FOLDER = (
    "{" + "{ cookiecutter.project_slug | slugify(max_length=%d) or 'invalid-project-slug' }" + "}"
) % MAX_LENGTHS["project_slug"]
SHOWN_CHARACTERS = 80  # of a refused value, so that a long one does not flood the terminal


class TemplateSyntaxInAnswer(FailedHookException):
    """An answer holds template syntax. A FailedHookException, like the hook's own refusals, so
    that the cookiecutter command prints the message and exits 1, and API callers catch both."""

    def __init__(self, value: str, markers: tuple[str, ...]) -> None:
        shown = value if len(value) <= SHOWN_CHARACTERS else value[:SHOWN_CHARACTERS] + "..."
        super().__init__(
            f"Cannot generate the project: the answer {shown!r} holds template syntax "
            f"({', '.join(markers)}). Answers are data, and this template refuses template syntax "
            "in them, because cookiecutter would run it as code. Give the value as plain text, "
            "without these characters, e.g. project_name='Churn Model'."
        )


def markers_of(environment: Environment) -> tuple[str, ...]:
    """What starts template syntax in this environment (cookiecutter.json may change it)."""
    markers = (
        environment.variable_start_string,
        environment.block_start_string,
        environment.comment_start_string,
        environment.line_statement_prefix,
        environment.line_comment_prefix,
    )
    return tuple(marker for marker in markers if marker)


def strings_in(value: object) -> Iterator[str]:
    """Every string in a JSON value, keys included (cookiecutter renders dictionary keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def template_texts(template: Path) -> frozenset[str]:
    """The template's own sources that cookiecutter renders whole: the raw values of
    cookiecutter.json and the hooks (read as cookiecutter reads them)."""
    options = json.loads((template / "cookiecutter.json").read_text(encoding="utf-8"))
    hooks = [path.read_text(encoding="utf-8") for path in (template / "hooks").glob("*.py")]
    return frozenset([*strings_in(options), *hooks])


def template_paths(template: Path) -> frozenset[tuple[str, ...]]:
    """The project template folder and every path in it, relative to it, as path components."""
    project = template / PROJECT_FOLDER
    inside = (path.relative_to(project).parts for path in project.rglob("*"))
    return frozenset([(PROJECT_FOLDER,), *inside])


class RefuseTemplateSyntax(Extension):
    """Refuse any source holding template syntax that is not the template's own text."""

    priority = 0  # before SafeProjectFolder rewrites the folder's name into another expression

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.markers = markers_of(environment)
        # Read for each environment (a few per bake), so an edited template is seen at once.
        self.own_texts = template_texts(TEMPLATE)
        self.own_paths = template_paths(TEMPLATE)

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        # Template files are loaded by name; cookiecutter renders everything else from a string.
        if name is None and self.holds_syntax(source) and not self.is_own(source):
            raise TemplateSyntaxInAnswer(source, self.markers)
        return source

    def holds_syntax(self, text: str) -> bool:
        return any(marker in text for marker in self.markers)

    def is_own(self, source: str) -> bool:
        return source in self.own_texts or self.is_own_path(source)

    def is_own_path(self, source: str) -> bool:
        """A path of the project template, relative or under a folder free of template syntax:
        cookiecutter renders `src/{{cookiecutter.package_name}}/cli.py`, and directories as
        `<output folder>/<project>/./src/{{cookiecutter.package_name}}`."""
        parts = PurePath(source).parts  # drops `.` and doubled separators, keeps `..`
        for start in range(len(parts)):
            if parts[start:] in self.own_paths:
                return True
            if self.holds_syntax(parts[start]):
                return False
        return False


class FieldMaxLengths(Extension):
    """Give templates, the pre-generation hook among them, the table of length limits."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.globals["field_max_lengths"] = MAX_LENGTHS


def _runtime_release() -> dict[str, str]:
    """The runtime a project generated from this checkout depends on: its version, the range of
    versions compatible with it (semantic versioning; in 0.x a minor version may break), and the
    file name of the wheel the post-generation hook builds into the project's vendor/ folder."""
    spec = importlib.util.spec_from_file_location(
        "build_wheel", TEMPLATE / "runtime" / "build_wheel.py"
    )
    build_wheel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_wheel)
    version = build_wheel.version()
    major, minor = (int(part) for part in version.split(".")[:2])
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}"
    return {
        "version": version,
        "range": f">={version},<{upper}",
        "wheel": build_wheel.wheel_name(),
        "source": str(TEMPLATE / "runtime"),  # absolute: cookiecutter's _repo_dir may be relative
    }


class RuntimeRelease(Extension):
    """Give templates the runtime's version, wheel and source folder (`runtime.version`, ...)."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.globals["runtime"] = _runtime_release()


class SafeProjectFolder(Extension):
    """Render the template folder's name as a single, harmless folder name, whatever the slug."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        # cookiecutter renders a folder name on its own (`from_string`, no template name), and no
        # file of the template consists of exactly this expression.
        if name is None and source == PROJECT_FOLDER:
            return SAFE_PROJECT_FOLDER
        return source
