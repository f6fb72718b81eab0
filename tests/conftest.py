"""Fixtures shared by the fast lane: cookiecutter run apart from the user's own set-up.

Import nothing from this module: tests/slow/conftest.py is also imported under the name `conftest`,
so `from conftest import X` may find that one. Fixtures are looked up by name and do not clash.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
OPTIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text())  # test_docs.py imports it


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks
def pytest_collection_modifyitems(items):
    """Group tests for pytest-xdist's `--dist loadgroup` (`make test`): the tests that share a
    generated project stay on one worker, so each project is baked, installed and smoked once while
    the projects run side by side; the fast lane, whose bakes are shared too, is one group.
    A test on the slow lane's per-task `project` goes with its task; others name their group with
    `pytest.mark.xdist_group`."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        task = item.callspec.params.get("task") if hasattr(item, "callspec") else None
        if task:
            item.add_marker(pytest.mark.xdist_group(task))
        elif item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.xdist_group("fast-lane"))


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory) -> Path:
    """A config of our own: a developer's ~/.cookiecutterrc cannot change the defaults under test,
    and replay files stay out of their home."""
    folder = tmp_path_factory.mktemp("cookiecutter-config")
    config = folder / "config.yaml"
    config.write_text(
        f"cookiecutters_dir: {json.dumps(str(folder / 'cookiecutters'))}\n"
        f"replay_dir: {json.dumps(str(folder / 'replay'))}\n"
    )
    return config


@pytest.fixture(scope="session")
def bake_project(cookiecutter_config) -> Callable[..., Path]:
    """Bake the template without prompts into `output_dir`; returns the project folder."""

    def bake(output_dir: Path, **context) -> Path:
        folder = cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(output_dir), extra_context=context,
            config_file=str(cookiecutter_config),
        )  # fmt: skip
        return Path(folder)

    return bake
