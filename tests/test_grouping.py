"""`make test` relies on pytest-xdist keeping each `xdist_group` on one worker (tests/conftest.py):
otherwise every worker bakes and installs every project, and the slow lane takes twice as long
while still passing. pytest 9.2 broke that silently once (pytest-dev/pytest-xdist#1386)."""

from __future__ import annotations

import os
import subprocess
import sys

SAMPLE = """
import os
import pytest

@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("i", range(6))
def test_where(i):
    with open(os.environ["WORKERS_FILE"], "a") as file:
        file.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_a_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    workers_file = tmp_path / "workers.txt"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "WORKERS_FILE": str(workers_file)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    workers = workers_file.read_text().split()
    assert len(workers) == 6, workers
    assert len(set(workers)) == 1, f"the group was split over {sorted(set(workers))}"
