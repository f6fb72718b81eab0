"""`make update`: a project generated from an older commit of the template takes the newer one.

The test makes the template's history itself: an older commit that differs from this checkout in
a notebook cell (03's search note), a params.yaml value (`modelling.n_iter`) and a runtime function
(`crisp_ml.project.resolve_path`, which drops folders in runtime 0.0.9), then this
checkout as the newer commit. Projects are generated from the older one through a file:// URL.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import nbformat
import pytest

TEMPLATE = Path(__file__).resolve().parents[2]

# One group: the tests share the template history and the older project (one worker holds them).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800), pytest.mark.xdist_group("update")]

IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
SEARCH_CELL = "## Cross-validated search"  # the markdown cell of 03 the template changes
OLD_NOTE = "An older template's note on the search."
CLEANING_CELL = "## Cleaning: this project's own rule"  # a cell only the team changes
TEAM_NOTE = "Our data has no duplicates worth keeping."
FIXED = "    return candidate if candidate.is_absolute() else project_root() / candidate\n"
BROKEN = "    return project_root() / candidate.name  # folders dropped: the fix is newer\n"


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", *IDENTITY, *args], cwd=folder, capture_output=True, text=True,
                          check=True)  # fmt: skip
    return done.stdout.strip()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def edit_cell(notebook: Path, heading: str, addition: str) -> None:
    """Append a line to the markdown cell that starts with `heading`."""
    data = json.loads(notebook.read_text())
    cell = next(c for c in data["cells"] if "".join(c["source"]).startswith(heading))
    cell["source"] = "".join(cell["source"]) + f"\n{addition}"
    notebook.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def cell_text(notebook: Path, heading: str) -> str:
    data = json.loads(notebook.read_text())
    return next(
        "".join(c["source"]) for c in data["cells"] if "".join(c["source"]).startswith(heading)
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[str, str, str]:
    """A template repository with an older and a newer commit: (git+file:// URL, old, new)."""
    repo = tmp_path_factory.mktemp("history") / f"template-{uuid.uuid4().hex[:8]}"
    listed = git(TEMPLATE, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    for name in filter(None, listed.split("\0")):
        if (TEMPLATE / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(TEMPLATE / name, repo / name)
    project = repo / "{{cookiecutter.project_slug}}"
    runtime = repo / "runtime" / "src" / "crisp_ml"
    git(repo, "init", "--quiet", "--initial-branch", "main")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "newer")  # made first, to restore from after
    edit_cell(project / "notebooks" / "03_modelling.ipynb", SEARCH_CELL, OLD_NOTE)
    edit(project / "params.yaml", "  n_iter: 8 ", "  n_iter: 5 ")
    edit(runtime / "project.py", FIXED, BROKEN)
    edit(runtime / "__init__.py", '__version__ = "0.1.0"', '__version__ = "0.0.9"')
    git(repo, "commit", "--quiet", "--all", "-m", "older")
    old = git(repo, "rev-parse", "HEAD")
    git(repo, "revert", "--no-edit", "HEAD")  # back to this checkout: the newer commit
    new = git(repo, "rev-parse", "HEAD")
    return f"git+{repo.as_uri()}", old, new  # cookiecutter knows a git URL by `git` in it


def team_edit(project, notebook: str, heading: str, note: str) -> None:
    edit_cell(project.root / "notebooks" / notebook, heading, note)
    project.make("fix")  # as the commit hook would: notebooks clean, exports in sync
    git(project.root, "commit", "--quiet", "--all", "-m", "the team's edit")


def runtime_facts(project) -> dict:
    return project.python_json(
        "import json, crisp_ml; from crisp_ml.project import resolve_path; "
        "print(json.dumps({'version': crisp_ml.__version__, "
        "'absolute': str(resolve_path('/srv/data.csv'))}))",
        env={},  # a new interpreter: the runtime changed under the query process
    )


def test_an_update_merges_the_template_and_keeps_the_teams_edit(
    history, generate_and_install, tmp_path
):
    url, old, new = history
    project = generate_and_install(url, old, tmp_path, project_name="Update Clean")
    broken = str(project.root / "data.csv")
    assert runtime_facts(project) == {"version": "0.0.9", "absolute": broken}
    team_edit(project, "02_data_preparation.ipynb", CLEANING_CELL, TEAM_NOTE)

    done = project.make("update")
    assert "CONFLICT" not in done.stdout, done.stdout
    record = json.loads((project.root / ".cruft.json").read_text())
    assert record["commit"] == new and record["template"] == url
    notebooks = project.root / "notebooks"
    assert OLD_NOTE not in cell_text(notebooks / "03_modelling.ipynb", SEARCH_CELL)
    assert TEAM_NOTE in cell_text(notebooks / "02_data_preparation.ipynb", CLEANING_CELL)
    assert "  n_iter: 8 " in (project.root / "params.yaml").read_text()
    assert str(TEMPLATE) not in (project.root / "uv.lock").read_text()

    project.make("setup")
    assert runtime_facts(project) == {"version": "0.1.0", "absolute": "/srv/data.csv"}
    checked = project.make("check")
    assert checked.stdout.count("ok  ") == 6, checked.stdout
    project.make("test")
    project.cli("pipeline", "--smoke", "--set", "deployment.build_image=false")


@pytest.fixture(scope="module")
def older_project(history, generate_and_install, tmp_path_factory):
    """A project of the older commit, shared by the tests below: the refusal leaves it as it was."""
    url, old, _ = history
    return generate_and_install(url, old, tmp_path_factory.mktemp("older"), project_name="Older")


def test_update_refuses_uncommitted_changes(older_project):
    params = older_project.root / "params.yaml"
    params.write_text("task: classification\n")
    try:
        done = older_project.make("update", check=False)
        assert done.returncode != 0 and "uncommitted changes" in done.stderr
        assert params.read_text() == "task: classification\n"
    finally:
        git(older_project.root, "checkout", "--", "params.yaml")


def test_a_conflicting_edit_is_marked_and_the_teams_edit_kept(older_project):
    project = older_project
    mine = "We tune fewer settings on purpose."
    team_edit(project, "03_modelling.ipynb", SEARCH_CELL, mine)

    done = project.make("update", check=False)
    assert done.returncode != 0
    assert "CONFLICT notebooks/03_modelling.ipynb" in done.stdout, done.stdout
    notebook = project.root / "notebooks" / "03_modelling.ipynb"
    nbformat.validate(nbformat.read(notebook, as_version=4))  # still a notebook, never broken JSON
    merged = cell_text(notebook, SEARCH_CELL)
    assert "<<<<<<< local" in merged and mine in merged and OLD_NOTE in merged
