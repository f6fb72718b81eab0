"""Fast lane: the documentation site builds strictly and offline, and its options table is
cookiecutter.json's, so adding an option cannot leave the docs behind."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[1]
OPTIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text())
DOCS = TEMPLATE / "docs"
PUBLIC = {name: value for name, value in OPTIONS.items() if not name.startswith("_")}
# Every proxy points at a closed local port: a build that reached for the network would fail.
CLOSED = "http://127.0.0.1:9"
OFFLINE = {name: CLOSED for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
OFFLINE |= {name.lower(): CLOSED for name in OFFLINE} | {"NO_PROXY": "", "no_proxy": ""}
# A page element that makes the browser fetch from another host (plain links are fine).
REMOTE_ASSET = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", flags=re.IGNORECASE
)
MARKER_LEFT = re.compile(r"<!--\s*[a-z-]+\s*(?::[^>]*)?-->")


def choices(value) -> list[str]:
    """An option's values as the docs print them: booleans as JSON tokens."""
    if isinstance(value, bool):
        return ["true", "false"]
    return [str(choice) for choice in value] if isinstance(value, list) else []


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(DOCS / "mkdocs.yml"),
         "-d", str(site_dir)],
        # Not from the template folder: `python -m` would put it on sys.path, which `make docs`
        # (the mkdocs script) does not, and local_extensions.py must be found all the same.
        cwd=site_dir, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"mkdocs build failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}"
    return site_dir


@pytest.fixture(scope="module")
def hooks():
    """docs/mkdocs_hooks.py, imported as MkDocs imports it."""
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", DOCS / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_page_is_built(site):
    pages = sorted((DOCS / "pages").rglob("*.md"))
    assert pages
    for page in pages:
        relative = page.relative_to(DOCS / "pages")
        folder = relative.parent if relative.stem == "index" else relative.with_suffix("")
        assert (site / folder / "index.html").is_file(), f"{relative} was not built"


def test_options_table_lists_every_option_and_each_choice(site):
    page = (site / "options" / "index.html").read_text()
    tables = re.findall(r"<table>.*?</table>", page, flags=re.DOTALL)
    assert tables, "the options page has no table"
    table = text_of(tables[0])
    for name, value in PUBLIC.items():
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", table), f"option {name} missing"
        for choice in choices(value):
            assert choice in table, f"{name}: choice {choice} missing"
    for name, prompt in OPTIONS["__prompts__"].items():
        question = prompt["__prompt__"] if isinstance(prompt, dict) else prompt
        assert question in table, f"{name}: prompt missing"
    assert not any(name in table for name in OPTIONS if name.startswith("_"))


def test_each_option_page_shows_its_choices(site):
    pages = {path: text_of(path.read_text()) for path in (site / "options").rglob("index.html")}
    for name, value in PUBLIC.items():
        holding = [path for path, text in pages.items() if f"{name}=" in text]
        assert holding, f"no option page shows how to answer {name} without prompts"
        for choice in choices(value):
            assert any(choice in pages[path] for path in holding), f"{name}: {choice} missing"


def test_no_marker_is_left_unreplaced(site):
    for page in site.rglob("*.html"):
        left = MARKER_LEFT.findall(page.read_text())
        assert not left, f"{page.relative_to(site)}: {left}"


def test_pages_load_nothing_from_other_hosts(site):
    for page in site.rglob("*.html"):
        remote = REMOTE_ASSET.findall(page.read_text())
        assert not remote, f"{page.relative_to(site)} loads from another host: {remote}"


def test_the_table_follows_cookiecutter_json(hooks):
    options = json.loads(json.dumps(OPTIONS))  # a copy to add to
    options["orchestrator"] = ["none", "airflow"]
    options["__prompts__"]["orchestrator"] = {"__prompt__": "Workflow orchestrator"}
    table = hooks.options_table(options, defaults={})
    row = next(line for line in table.splitlines() if "`orchestrator`" in line)
    assert "`none`" in row and "`airflow`" in row and "Workflow orchestrator" in row
    assert "__model_name" not in table and "_copy_without_render" not in table


def test_an_option_without_a_page_is_reported(hooks):
    documented = {name: f"options/{name}.md" for name in PUBLIC}
    assert hooks.coverage_problems(OPTIONS, documented) == []
    problems = hooks.coverage_problems({**OPTIONS, "orchestrator": ["none"]}, documented)
    assert len(problems) == 1
    assert "`orchestrator`" in problems[0] and "<!-- option: orchestrator -->" in problems[0]
    problems = hooks.coverage_problems(OPTIONS, {**documented, "gpu": "options/gpu.md"})
    assert problems == [
        "options/gpu.md documents `gpu`, which is not an option in cookiecutter.json"
    ]


def test_the_index_names_every_notebook_the_template_ships():
    index = (DOCS / "pages" / "index.md").read_text()
    notebooks = sorted((TEMPLATE / "{{cookiecutter.project_slug}}" / "notebooks").glob("*.ipynb"))
    assert notebooks
    assert [n.stem for n in notebooks if f"`{n.stem}`" not in index] == []
    assert "being built" not in index, "the index describes what a project has today"


def test_the_runtime_page_shows_its_version_and_public_api(site):
    source = (TEMPLATE / "runtime" / "src" / "crisp_ml" / "__init__.py").read_text()
    version = re.search(r'^__version__ = "([^"]+)"', source, flags=re.MULTILINE)[1]
    modules = set(re.findall(r"`(crisp_ml\.\w+)`", source))
    assert {"crisp_ml.cli", "crisp_ml.project", "crisp_ml.tracking"} <= modules
    page = text_of((site / "runtime" / "index.html").read_text())
    assert f"Version {version}" in page
    assert sorted(module for module in modules if module not in page) == []
    assert "[tool.crisp-ml]" in page and "crisp-ml-runtime = { path = " in page
