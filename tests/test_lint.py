"""The template repository's own Python (tests, benchmarks, tools, hooks) is kept to the same ruff
rules and format as the generated project's code; `make lint` fixes what ruff can."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
# What `make lint` fixes, read from the Makefile so that the check and the fix cover the same files.
OWN_CODE = re.search(r"(?m)^OWN_CODE := (.+)$", (TEMPLATE / "Makefile").read_text())[1].split()
RUFF = Path(sys.executable).parent / "ruff"


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUFF), *args, *OWN_CODE], cwd=TEMPLATE, capture_output=True, text=True, check=False
    )


def test_own_code_passes_ruff_check():
    done = ruff("check", "--output-format", "concise")
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nrun `make lint` to fix what it can"


def test_own_code_is_ruff_formatted():
    done = ruff("format", "--check")
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nrun `make lint` to reformat"
