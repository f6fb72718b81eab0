"""After generation, only what templating cannot do well.

1. Build the runtime's wheel from the template's own source into vendor/ (runtime/build_wheel.py),
   where the project's pyproject.toml finds it until the runtime is on a package index.
2. Copy params.yaml's values into each notebook's `parameters` cell, with the runtime's own code
   (`crisp_ml.params.sync_notebook`), so a new project passes its own `check` for every option.
3. Record where the project came from in .cruft.json (template, commit, answers): what
   `update` merges from, and what cruft itself reads.
4. Remove the folders that conditional file names left empty (`.github/` without CI): cookiecutter
   cannot skip a folder whose name renders empty (cookiecutter issue #1518), only a file.
5. `git init` with a first commit, when asked for and git is present.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

# User values arrive as JSON data, never as source code (see pre_gen_project.py on the quotes).
# fmt: off
CONTEXT = json.loads(r''' {{ cookiecutter | tojson }} ''')
RUNTIME = Path(json.loads(r''' {{ runtime.source | tojson }} '''))  # in the template checkout
# fmt: on
GIT_INIT = CONTEXT["git_init"]
VENDOR = "vendor"
CRUFT_FILE = ".cruft.json"


def _runtime_module(name: str):
    sys.dont_write_bytecode = True  # importing from the template must leave no __pycache__ there
    for folder in (RUNTIME, RUNTIME / "src"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def check_runtime_source() -> None:
    """The runtime comes from the template being generated. cookiecutter imports a template's
    local extensions by module name, so a process that generated from another template first
    would hand over that one's runtime: refuse rather than vendor the wrong wheel."""
    repo = Path(CONTEXT["_repo_dir"])
    if repo.is_absolute() and repo.resolve() != RUNTIME.parent.resolve():
        sys.exit(
            f"the runtime would come from {RUNTIME.parent}, not from the template being generated "
            f"({repo}): this process generated from another template first. Generate in a new "
            "process (run cookiecutter again)."
        )


def vendor_runtime(root: Path) -> None:
    _runtime_module("build_wheel").build(root / VENDOR)


def sync_notebook_parameters(root: Path) -> None:
    params = _runtime_module("crisp_ml.params")
    tree = params.load_yaml(root / params.PARAMS_FILE)
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        params.sync_notebook(notebook, tree)


def template_commit() -> str | None:
    """The commit of the template's own git checkout (a changed working tree still gives HEAD);
    None when the template is no checkout of its own (say, a copy inside another repository)."""
    if shutil.which("git") is None:
        return None

    def git(*args: str) -> str | None:
        done = subprocess.run(
            ["git", "-C", str(RUNTIME.parent), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != RUNTIME.parent.resolve():
        return None
    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain"):
        # cruft's record has room for a commit only: say what it cannot hold.
        print(
            f"warning: the template at {top} has uncommitted changes, so this project is not "
            f"exactly its commit {commit[:12]}, which .cruft.json records; `make update` will take "
            "the difference for the project's own edits. Commit the template first to avoid that.",
            file=sys.stderr,
        )
    return commit


def template_source() -> str:
    """Where `update` fetches the template again: the git URL it was generated from (without
    credentials), or else the local checkout's absolute path."""
    from cookiecutter.config import BUILTIN_ABBREVIATIONS
    from cookiecutter.repository import expand_abbreviations, is_repo_url

    given = expand_abbreviations(CONTEXT["_template"], BUILTIN_ABBREVIATIONS)
    if is_repo_url(given):
        return _runtime_module("crisp_ml.update").shown(given)
    return str(RUNTIME.parent)


def record_template(root: Path) -> None:
    """.cruft.json as cruft writes it: the template, its commit and the answers."""
    answers = _runtime_module("crisp_ml.update").answers_in(CONTEXT)
    commit, template = template_commit(), template_source()
    record = {
        "template": template,
        "commit": commit,
        "checkout": CONTEXT.get("_checkout"),
        "context": {"cookiecutter": {**answers, "_template": template, "_commit": commit}},
        "directory": None,
    }
    (root / CRUFT_FILE).write_text(json.dumps(record, indent=2) + "\n")


def remove_empty_folders(root: Path) -> None:
    # Deepest first, so a folder whose only content was an empty folder goes too.
    for folder in sorted(root.rglob("*"), key=lambda path: len(path.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def git_init(root: Path) -> None:
    if shutil.which("git") is None:
        print("git not found: skipping `git init` (run it yourself later).")
        return

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "--quiet", "--initial-branch", "main")
    git("add", "--all")
    # A first commit even where no git identity is configured (CI, fresh machines).
    identity = ["-c", "user.name=cookiecutter", "-c", "user.email=cookiecutter@localhost"]
    subprocess.run(
        ["git", *identity, "commit", "--quiet", "-m", "Project generated from the template"],
        cwd=root,
        check=True,
        capture_output=True,
    )


def main() -> None:
    root = Path.cwd()
    check_runtime_source()
    vendor_runtime(root)
    sync_notebook_parameters(root)
    record_template(root)
    remove_empty_folders(root)
    if GIT_INIT:
        git_init(root)


if __name__ == "__main__":
    main()
