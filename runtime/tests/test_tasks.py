"""The project's chores that touch git: what `setup` may change, and where."""

import subprocess

from crisp_ml import tasks


def git_init(folder) -> None:
    subprocess.run(["git", "init", "--quiet", str(folder)], check=True)


def test_setup_changes_git_only_in_a_repository_of_the_projects_own(tmp_path, monkeypatch):
    git_init(tmp_path)  # a monorepo, say, whose hooks and history are not the project's
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("PROJECT_ROOT", str(project))
    assert not tasks.in_git_repository()
    git_init(project)
    assert tasks.in_git_repository()
