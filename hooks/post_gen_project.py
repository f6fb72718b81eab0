"""After generation, only what templating cannot do well.

1. Copy params.yaml's values into each notebook's `parameters` cell, with the project's own code
   (`<package>.params.sync_notebook`), so a new project passes its own `check` for every option.
2. Remove the folders that conditional file names left empty (`.github/` without CI): cookiecutter
   cannot skip a folder whose name renders empty (cookiecutter issue #1518), only a file.
3. `git init` with a first commit, when asked for and git is present.
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
PACKAGE = json.loads(r''' {{ cookiecutter.package_name | tojson }} ''')
GIT_INIT = json.loads(r''' {{ cookiecutter.git_init | tojson }} ''')
# fmt: on


def sync_notebook_parameters(root: Path) -> None:
    sys.dont_write_bytecode = True  # importing the package must leave no __pycache__ in the project
    sys.path.insert(0, str(root / "src"))
    params = importlib.import_module(f"{PACKAGE}.params")
    tree = params.load_yaml(root / params.PARAMS_FILE)
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        params.sync_notebook(notebook, tree)


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
    sync_notebook_parameters(root)
    remove_empty_folders(root)
    if GIT_INIT:
        git_init(root)


if __name__ == "__main__":
    main()
