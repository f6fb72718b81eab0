"""MkDocs hooks: the parts of the docs read from the template itself, so they cannot drift from it.

A page asks for generated content with a marker alone on a line:

    <!-- options-table -->                every option in cookiecutter.json, linked to its page
    <!-- option: NAME -->                 one option: its prompt, default and choices
    <!-- files-by-option: NAME -->        what each value of NAME adds, removes and changes
    <!-- files-using: NAME -->            the default project's files holding NAME's value
    <!-- project-tree -->                 the files of the default project
    <!-- notebooks -->                    the default project's notebooks: phase, purpose, the module
                                          each exports and the runtime modules it calls
    <!-- rendered: PATH[#KEY] [OPTION=VALUE ...] -->
                                          a file of a baked project, or one YAML section or one
                                          TOML table (`pyproject.toml#tool.crisp-ml`) of it
    <!-- make-targets -->                 the generated Makefile's targets and their help
    <!-- cli-help: COMMAND -->            the generated project's `COMMAND --help` (the runtime's CLI)
    <!-- answer-limits -->                the longest value of each free-text answer
    <!-- runtime-api -->                  the runtime's version and public API (crisp_ml's docstring)

Projects are baked with cookiecutter, hooks included, always with git_init false, once per set of
options. Baked projects are kept in build/docs-bakes/<digest>/, where the digest covers every file
cookiecutter reads (cookiecutter.json, local_extensions.py, hooks/, the project template) and the
cookiecutter and Python versions: a rebuild reuses them until the template changes. The build fails
on an unknown marker, on an option of cookiecutter.json that no page documents with
`option: NAME`, and on a page documenting an option that does not exist.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

TEMPLATE = Path(__file__).resolve().parents[1]
OPTIONS_FILE = TEMPLATE / "cookiecutter.json"
RUNTIME = TEMPLATE / "runtime"  # crisp-ml-runtime, the machinery every generated project runs
BAKES = TEMPLATE / "build" / "docs-bakes"
MARKER = re.compile(r"^<!--\s*([a-z-]+)\s*(?::\s*(.*?))?\s*-->[ \t]*$", re.MULTILINE)
IGNORED_IN_BAKES = (".git", "__pycache__")  # neither is made here; listed for safety

log = logging.getLogger("mkdocs.hooks.template")


# --- cookiecutter.json ---------------------------------------------------------------------------


def load_options(path: Path = OPTIONS_FILE) -> dict[str, Any]:
    return json.loads(path.read_text())


def public_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options a user answers: `_` and `__` keys are settings and computed values."""
    return {name: value for name, value in options.items() if not name.startswith("_")}


def prompt_of(options: dict[str, Any], name: str) -> tuple[str, dict[str, str]]:
    """The question cookiecutter asks for `name`, and the label of each choice."""
    prompt = options.get("__prompts__", {}).get(name, name)
    if isinstance(prompt, dict):
        labels = {key: text for key, text in prompt.items() if key != "__prompt__"}
        return prompt.get("__prompt__", name), labels
    return prompt, {}


def choices_of(value: Any) -> list[Any] | None:
    """The values an option can take, default first; None for free text."""
    if isinstance(value, list):
        return value
    if isinstance(value, bool):
        return [value, not value]
    return None


def rendered_defaults(path: Path = OPTIONS_FILE) -> dict[str, Any]:
    """Every default as cookiecutter renders it with --no-input (the slug from the name, ...)."""
    from cookiecutter.generate import generate_context
    from cookiecutter.prompt import prompt_for_config

    # `_extensions` names local_extensions.py: importable from the template folder, as cookiecutter
    # itself arranges when it runs.
    sys.path.insert(0, str(path.parent))
    try:
        return dict(prompt_for_config(generate_context(context_file=str(path)), no_input=True))
    finally:
        sys.path.remove(str(path.parent))


def answer_limits() -> str:
    """The length limits of local_extensions.py, which the pre-generation hook applies."""
    path = TEMPLATE / "local_extensions.py"
    spec = importlib.util.spec_from_file_location("template_local_extensions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = ["| answer | at most (characters) |", "|---|---|"]
    rows += [f"| `{name}` | {limit} |" for name, limit in module.MAX_LENGTHS.items()]
    return "\n".join(rows)


def token(value: Any) -> str:
    """A value as it is typed on the command line: `false`, not `False`."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def options_table(
    options: dict[str, Any], defaults: dict[str, Any], links: dict[str, str] | None = None
) -> str:
    """One row per public option: name (linked to its page), default, choices, prompt."""
    links = links or {}
    rows = ["| option | default | choices | prompt |", "|---|---|---|---|"]
    for name, value in public_options(options).items():
        label = f"[`{name}`]({links[name]})" if name in links else f"`{name}`"
        choices = choices_of(value)
        default = defaults.get(name, choices[0] if choices else value)
        default_text = f"`{token(default)}`" if token(default) else "(empty)"
        if isinstance(value, str) and "{{" in value:
            default_text += " (derived)"
        choice_text = ", ".join(f"`{token(c)}`" for c in choices) if choices else "free text"
        question = cell(prompt_of(options, name)[0])
        rows.append(f"| {label} | {default_text} | {choice_text} | {question} |")
    return "\n".join(rows)


def option_summary(options: dict[str, Any], defaults: dict[str, Any], name: str) -> str:
    """A short block for the top of an option's page."""
    value = options[name]
    question, labels = prompt_of(options, name)
    default = defaults.get(name, value)
    lines = [f"**Prompt:** {question}  ", f"**Default:** `{token(default)}`"]
    if isinstance(value, str) and "{{" in value:
        lines[-1] += f", derived by `{value}`"
    choices = choices_of(value)
    if choices and labels:
        lines += ["", "| value | meaning |", "|---|---|"]
        lines += [f"| `{token(c)}` | {cell(labels.get(str(c), ''))} |" for c in choices]
    elif choices:
        lines[-1] += "  \n**Choices:** " + ", ".join(f"`{token(c)}`" for c in choices)
    example = shlex.quote(token(choices[-1] if choices else default))
    lines += ["", f"Without prompts: `cookiecutter <template> --no-input {name}={example}`"]
    return "\n".join(lines)


def documented_options(pages: dict[str, str]) -> dict[str, str]:
    """Option name -> the page (its path under docs_dir) holding its `option: NAME` marker."""
    found: dict[str, str] = {}
    for path, text in pages.items():
        for marker, argument in MARKER.findall(text):
            if marker == "option":
                found[argument.strip()] = path
    return found


def coverage_problems(options: dict[str, Any], documented: dict[str, str]) -> list[str]:
    public = public_options(options)
    problems = [
        f"option `{name}` of cookiecutter.json has no page: add `<!-- option: {name} -->` to one"
        for name in public
        if name not in documented
    ]
    problems += [
        f"{page} documents `{name}`, which is not an option in cookiecutter.json"
        for name, page in documented.items()
        if name not in public
    ]
    return problems


# --- baked projects ------------------------------------------------------------------------------


def template_digest() -> str:
    """A digest of everything a bake depends on: the template's files and the tools' versions."""
    import cookiecutter

    digest = hashlib.sha256(f"{cookiecutter.__version__} {sys.version}".encode())
    sources = [OPTIONS_FILE, TEMPLATE / "local_extensions.py", TEMPLATE / "hooks"]
    sources += [p for p in TEMPLATE.iterdir() if p.is_dir() and p.name.startswith("{{")]
    # the runtime, which the post-generation hook builds into each project's vendor/ folder
    sources += [RUNTIME / "pyproject.toml", RUNTIME / "build_wheel.py", RUNTIME / "src"]
    for source in sources:
        for path in sorted([source, *source.rglob("*")]):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(TEMPLATE).as_posix().encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


class Bakery:
    """Projects baked from the working tree of the template, once per set of options."""

    def __init__(self, defaults: dict[str, Any], cache: Path = BAKES) -> None:
        self.defaults = defaults
        self.root = cache / template_digest()
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in cache.iterdir():  # bakes of an earlier state of the template
            if stale != self.root:
                shutil.rmtree(stale, ignore_errors=True)
        self.baked = 0

    def project(self, **options: Any) -> Path:
        """The project baked with these options (defaults for the rest), baking it if needed."""
        options = {name: v for name, v in options.items() if self.defaults.get(name) != v}
        key = json.dumps(sorted(options.items()))
        folder = self.root / hashlib.sha256(key.encode()).hexdigest()[:12]
        if not folder.is_dir():
            self._bake(options, folder)
        return next(path for path in folder.iterdir() if path.is_dir())

    def _bake(self, options: dict[str, Any], folder: Path) -> None:
        from cookiecutter.main import cookiecutter

        work = Path(tempfile.mkdtemp(prefix="bake-", dir=self.root))
        try:
            cookiecutter(
                str(TEMPLATE),
                no_input=True,
                output_dir=str(work / "out"),
                extra_context={**options, "git_init": False},
                # Neither the user's ~/.cookiecutterrc nor replay files in their home.
                default_config={"replay_dir": str(work / "replay")},
            )
            (work / "out").rename(folder)  # whole or not at all, also when builds run at once
            self.baked += 1
        except OSError:
            if not folder.is_dir():
                raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not set(path.relative_to(root).parts) & set(IGNORED_IN_BAKES)
    }


def code_list(paths: list[str]) -> str:
    return ", ".join(f"`{path}`" for path in paths) if paths else "none"


def files_by_option(options: dict[str, Any], name: str, bakery: Bakery) -> str:
    choices = choices_of(options.get(name))
    if not choices:
        raise PluginError(f"files-by-option: `{name}` is not an option with choices")
    base = snapshot(bakery.project())
    rows = [f"| `{name}` | adds | removes | changes |", "|---|---|---|---|"]
    for position, choice in enumerate(choices):
        if position == 0:
            rows.append(f"| `{token(choice)}` (default) | | | |")
            continue
        other = snapshot(bakery.project(**{name: choice}))
        added = sorted(other.keys() - base.keys())
        removed = sorted(base.keys() - other.keys())
        changed = sorted(p for p in base.keys() & other.keys() if base[p] != other[p])
        cells = " | ".join(code_list(paths) for paths in (added, removed, changed))
        rows.append(f"| `{token(choice)}` | {cells} |")
    return "\n".join(rows)


def files_using(defaults: dict[str, Any], name: str, bakery: Bakery) -> str:
    """The default project's files whose path or content holds the option's default value."""
    value = str(defaults[name]).encode()
    files = snapshot(bakery.project()).items()
    paths = [path for path, data in files if value in path.encode() or value in data]
    return f"`{defaults[name]}` appears in: {code_list(paths)}."


def project_tree(root: Path) -> str:
    """The project's files as an indented tree, folders first."""
    lines = [f"{root.name}/"]

    def walk(folder: Path, depth: int) -> None:
        entries = sorted(folder.iterdir(), key=lambda p: (p.is_file(), p.name))
        for entry in entries:
            if entry.name in IGNORED_IN_BAKES:
                continue
            lines.append(f"{'    ' * depth}{entry.name}{'/' if entry.is_dir() else ''}")
            if entry.is_dir():
                walk(entry, depth + 1)

    walk(root, 1)
    return "```text\n" + "\n".join(lines) + "\n```"


def notebooks_table(root: Path) -> str:
    """One row per numbered notebook, from its opening cell, its `#| default_exp` cell and the
    runtime modules it imports."""
    rows = ["| notebook | phase | what it does | its code |", "|---|---|---|---|"]
    package = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["crisp-ml"]["package"]
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        intro = next("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        phase = re.search(r"\*\*(.+?)\*\*\s*(.*)", intro, flags=re.DOTALL)
        summary = re.split(r"(?<=\.)\s", phase.group(2).strip(), maxsplit=1)[0] if phase else ""
        sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        modules = [m.group(1) for s in sources if (m := re.match(r"#\| default_exp (\S+)", s))]
        imported = sorted(
            {m for s in sources for m in re.findall(r"^\s*from (crisp_ml\.\w+)", s, re.MULTILINE)}
        )
        code = [f"exports `src/{package}/{modules[0]}.py`"] if modules else []
        code += [f"calls {', '.join(f'`{m}`' for m in imported)}"] if imported else []
        phase_text = phase.group(1).rstrip(".") if phase else ""
        row = f"| `{path.stem}` | {cell(phase_text)} | {cell(summary)} | {'; '.join(code)} |"
        rows.append(row)
    return "\n".join(rows)


def yaml_section(text: str, key: str) -> str:
    """One top-level section of a YAML file, as written (comments kept)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), None)
    if start is None:
        raise PluginError(f"rendered: no top-level `{key}:` in the file")
    end = start + 1
    while end < len(lines) and not re.match(r"[A-Za-z_]", lines[end]):
        end += 1
    section = lines[start:end]
    while section and (not section[-1].strip() or section[-1].lstrip().startswith("#")):
        section.pop()  # the next section's heading comment
    return "\n".join(section)


def toml_table(text: str, key: str) -> str:
    """One table of a TOML file (`tool.crisp-ml`), its header included, as written."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == f"[{key}]"), None)
    if start is None:
        raise PluginError(f"rendered: no table `[{key}]` in the file")
    end = start + 1
    while end < len(lines) and not lines[end].startswith("["):
        end += 1
    table = lines[start:end]
    while table and (not table[-1].strip() or table[-1].lstrip().startswith("#")):
        table.pop()  # the next table's heading comment
    return "\n".join(table)


def runtime_api() -> str:
    """The runtime's version and its public API, as crisp_ml's docstring states them."""
    source = (RUNTIME / "src" / "crisp_ml" / "__init__.py").read_text()
    tree = ast.parse(source)
    version = next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]
    )
    summary, _, body = ast.get_docstring(tree).partition("\n")
    return f"**Version {version}**: {summary.split(': ', 1)[-1]}\n\n{body.strip()}"


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)  # true, false, numbers
    except json.JSONDecodeError:
        return text


def rendered(argument: str, bakery: Bakery) -> str:
    words = shlex.split(argument)
    if not words:
        raise PluginError("rendered: name a file: `rendered: params.yaml#data task=regression`")
    path, _, section = words[0].partition("#")
    options = dict(word.split("=", 1) for word in words[1:])
    root = bakery.project(**{key: parse_value(value) for key, value in options.items()})
    file = root / path
    if not file.is_file():
        raise PluginError(f"rendered: a baked project has no file {path}")
    text = file.read_text()
    if section:
        text = (toml_table if file.suffix == ".toml" else yaml_section)(text, section)
    else:
        text = text.rstrip("\n")
    language = {".yaml": "yaml", ".toml": "toml", ".py": "python", ".md": "markdown"}.get(
        file.suffix, "text"
    )
    if file.name == "Makefile":
        language = "makefile"
    fence = "````" if "```" in text else "```"
    return f"{fence}{language}\n{text}\n{fence}"


def make_targets(root: Path) -> str:
    """The Makefile's `target: ## help` lines as a table."""
    found = re.findall(
        r"^([a-z][a-z-]*):.*?## (.*)$", (root / "Makefile").read_text(), re.MULTILINE
    )
    rows = ["| command | what it does |", "|---|---|"]
    rows += [f"| `make {target}` | {cell(help_text)} |" for target, help_text in found]
    return "\n".join(rows)


def cli_help(root: Path, command: str) -> str:
    """`<project> COMMAND --help`: the runtime's command line from the project's vendored wheel
    (Python imports from a wheel as from a zip), run in the project so it reads its settings."""
    (wheel,) = (root / "vendor").glob("*.whl")
    env = {**os.environ, "PYTHONPATH": str(wheel), "COLUMNS": "100", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PROJECT_ROOT", None)
    code = "from crisp_ml.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, *command.split(), "--help"],
        cwd=root, capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise PluginError(f"cli-help {command}: {done.stderr.strip()[-500:]}")
    return f"```text\n$ {root.name} {command} --help\n{done.stdout.rstrip()}\n```"


# --- MkDocs events -------------------------------------------------------------------------------

_state: dict[str, Any] = {}


def on_pre_build(config) -> None:
    _state.clear()
    _state["options"] = load_options()
    _state["defaults"] = rendered_defaults()
    _state["bakery"] = Bakery(_state["defaults"])


def on_files(files, config):
    pages = {f.src_uri: f.content_string for f in files.documentation_pages()}
    documented = documented_options(pages)
    problems = coverage_problems(_state["options"], documented)
    if problems:
        raise PluginError("Options and their pages disagree:\n  " + "\n  ".join(problems))
    _state["documented"] = documented
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    options, defaults, bakery = _state["options"], _state["defaults"], _state["bakery"]
    here = posixpath.dirname(page.file.src_uri)

    def replace(match: re.Match) -> str:
        marker, argument = match.group(1), (match.group(2) or "").strip()
        if marker == "options-table":
            links = {n: posixpath.relpath(p, here or ".") for n, p in _state["documented"].items()}
            return options_table(options, defaults, links)
        if marker == "option":
            return option_summary(options, defaults, argument)
        if marker == "files-by-option":
            return files_by_option(options, argument, bakery)
        if marker == "files-using":
            return files_using(defaults, argument, bakery)
        if marker == "notebooks":
            return notebooks_table(bakery.project())
        if marker == "project-tree":
            return project_tree(bakery.project())
        if marker == "rendered":
            return rendered(argument, bakery)
        if marker == "make-targets":
            return make_targets(bakery.project())
        if marker == "cli-help":
            return cli_help(bakery.project(), argument)
        if marker == "answer-limits":
            return answer_limits()
        if marker == "runtime-api":
            return runtime_api()
        raise PluginError(f"{page.file.src_uri}: unknown marker `<!-- {marker} -->`")

    return MARKER.sub(replace, markdown)


def on_post_build(config) -> None:
    if bakery := _state.get("bakery"):
        log.debug("baked %d projects for the docs", bakery.baked)
