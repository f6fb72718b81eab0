"""Docker for the slow lane's image tests: the CLI called plainly, and an image run as it is meant
to run (read-only, a tmpfs at /tmp, a loopback port) until it answers /ping."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from ports import free_port


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"`docker {' '.join(args)}` exited {done.returncode}: {done.stderr[-3000:]}")
    return done


@dataclass
class Container:
    id: str
    url: str

    def exec(self, *command: str, check: bool = False) -> subprocess.CompletedProcess:
        return docker("exec", self.id, *command, check=check)


def run_container(tag: str, *extra: str) -> Container:
    port = free_port()
    cid = docker(
        "run",
        "--detach",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "-p",
        f"127.0.0.1:{port}:8080",
        *extra,
        tag,
    ).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = docker("inspect", "-f", "{{.State.Status}}", cid).stdout.strip()
        if state != "running":
            logs = docker("logs", cid, check=False)
            docker("rm", "--force", cid, check=False)
            pytest.fail(f"container {state}: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")
        try:
            if _pings(url):
                return Container(cid, url)
        except OSError:
            pass
        time.sleep(0.3)
    docker("rm", "--force", cid, check=False)
    pytest.fail(f"{tag} did not answer /ping within 90 s")


def _pings(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
            return answer.status == 200
    except urllib.error.URLError:
        return False
