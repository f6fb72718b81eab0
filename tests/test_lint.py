"""The template repository's own Python (tests, benchmarks, tools, hooks) is kept to the same ruff
rules and format as the generated project's code; `make lint` fixes what ruff can. The runtime
(runtime/, the machinery every project runs) is held to the rules of its own pyproject.toml, which
ruff finds by itself for files under runtime/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
# What `make lint` fixes, read from the Makefile so that the check and the fix cover the same files.
OWN_CODE = re.search(r"(?m)^OWN_CODE := (.+)$", (TEMPLATE / "Makefile").read_text())[1].split()
RUFF = Path(sys.executable).parent / "ruff"


RUNTIME = ["runtime"]
RUNTIME_FIX = "run `uv run ruff check --fix runtime && uv run ruff format runtime`"


def ruff(*args: str, paths: list[str] = OWN_CODE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUFF), *args, *paths], cwd=TEMPLATE, capture_output=True, text=True, check=False
    )


def test_own_code_passes_ruff_check():
    done = ruff("check", "--output-format", "concise")
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nrun `make lint` to fix what it can"


def test_own_code_is_ruff_formatted():
    done = ruff("format", "--check")
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nrun `make lint` to reformat"


def test_runtime_passes_ruff_check():
    done = ruff("check", "--output-format", "concise", paths=RUNTIME)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{RUNTIME_FIX}"


def test_runtime_is_ruff_formatted():
    done = ruff("format", "--check", paths=RUNTIME)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{RUNTIME_FIX}"


def test_runtime_is_checked_with_its_own_settings():
    """The runtime's own rules apply (pandas and numpy pitfalls, no stray prints, crisp_ml first
    party), not the template repository's: ruff reads runtime/pyproject.toml for those files."""
    done = ruff("check", "--show-settings", "runtime/src/crisp_ml/cli.py", paths=[])
    assert done.returncode == 0, done.stderr
    assert "runtime/pyproject.toml" in done.stdout
    assert "crisp_ml" in re.search(r"known_modules = \{(.*?)\}", done.stdout, flags=re.DOTALL)[1]
