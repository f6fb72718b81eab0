"""`python -m crisp_ml.serving` with several worker processes (SERVING_WORKERS), for real: the
workers share the port, /metrics adds up all of them whichever answers the scrape, the
prediction log holds each request once through concurrent rotations, and stopping the parent
leaves no process behind. Loopback only; every wait is bounded."""

import collections
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from crisp_ml.monitoring import log_files, read_prediction_log
from crisp_ml.serving import predlog
from crisp_ml.serving.__main__ import EXIT_SETTINGS, main
from crisp_ml.serving.arms import SettingsError
from crisp_ml.serving.settings import usable_cpus, worker_count

from .test_serving import JSON_TYPE, PACKAGE, ROW, free_port
from .toy_models import pipeline, save_bundle, training_data

WORKERS = 2
CLIENTS, PER_CLIENT = 6, 10  # ~60 requests over several keep-alive connections
LOG_MAX_BYTES = 8000  # small enough that the workers rotate the log several times meanwhile
ANSWERED = re.compile(
    r'^serving_requests_total\{endpoint="/invocations",method="POST",status="200"\} (\S+)$',
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    X, labels, _ = training_data()
    model = pipeline("classification").fit(X, labels)
    return save_bundle(tmp_path_factory.mktemp("bundle"), model, X, "classification")


def start(bundle: Path, folder: Path, env: dict) -> tuple[subprocess.Popen, int, Path]:
    """The server in its own process, once every worker has started; its stderr in a file."""
    port, errors = free_port(), folder / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", f"{PACKAGE}.serving", "--bundle", str(bundle),
         "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=errors.open("wb"),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while errors.read_text().count("Application startup complete") < int(env["SERVING_WORKERS"]):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"the server did not start: {errors.read_text()[-2000:]}")
        time.sleep(0.1)
    return server, port, errors


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        for process in psutil.Process(server.pid).children(recursive=True):
            process.kill()
        server.kill()
        server.wait()


def descendants(server: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(server.pid).children(recursive=True)


def answering_pid(server: subprocess.Popen, port: int, connection: http.client.HTTPConnection):
    """The process holding the server end of this open connection."""
    client_port = connection.sock.getsockname()[1]
    for process in descendants(server):
        for conn in process.net_connections(kind="tcp"):
            if conn.laddr.port == port and conn.raddr and conn.raddr.port == client_port:
                return process.pid
    return None


def post(connection: http.client.HTTPConnection, request_id: str, rows: int = 3) -> None:
    body = json.dumps({"inputs": [ROW] * rows})
    connection.request("POST", "/invocations", body, {**JSON_TYPE, "X-Request-Id": request_id})
    answer = connection.getresponse()
    assert answer.status == 200, answer.read()
    answer.read()


@pytest.fixture(scope="module")
def served(bundle, tmp_path_factory):
    """Two workers with a small, rotating prediction log; ~60 requests answered by both.
    Yields (server, port, log path, ids sent, pids that answered them)."""
    folder = tmp_path_factory.mktemp("workers")
    log = folder / "predictions.jsonl"
    env = {
        "SERVING_WORKERS": str(WORKERS), "PREDICTION_LOG": str(log),
        "PREDICTION_LOG_MAX_BYTES": str(LOG_MAX_BYTES), "PREDICTION_LOG_BACKUPS": "100",
    }  # fmt: skip
    server, port, _ = start(bundle, folder, env)
    sent, pids, lock = [], set(), threading.Lock()

    def client(name: str, count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(count):
            post(connection, f"{name}-{i}")
            with lock:
                sent.append(f"{name}-{i}")
        with lock:
            pids.add(answering_pid(server, port, connection))
        connection.close()

    try:
        threads = [
            threading.Thread(target=client, args=(f"c{c}", PER_CLIENT)) for c in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        extra = 0
        while len(pids - {None}) < WORKERS and extra < 40:  # the kernel chose one worker so far
            client(f"x{extra}", 1)
            extra += 1
        yield server, port, log, sent, pids - {None}
    finally:
        stop(server)


def test_requests_are_answered_by_more_than_one_worker(served):
    server, _, _, sent, pids = served
    workers = {p.pid for p in descendants(server)}
    assert len(sent) >= CLIENTS * PER_CLIENT
    assert len(pids) == WORKERS and pids <= workers, f"answered by {pids} of {workers}"


def scrape(port: int) -> tuple[str, http.client.HTTPConnection]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    answer = connection.getresponse()
    assert answer.status == 200
    return answer.read().decode(), connection


def test_metrics_count_every_workers_requests_whichever_answers_the_scrape(served):
    server, port, _, sent, _ = served
    scraped_by = collections.Counter()
    for _ in range(40):
        text, connection = scrape(port)
        scraped_by[answering_pid(server, port, connection)] += 1
        connection.close()
        assert [float(n) for n in ANSWERED.findall(text)] == [len(sent)], text[:3000]
        assert f'serving_predicted_rows_total{{endpoint="/invocations"}} {3.0 * len(sent)}' in text
        (info,) = [line for line in text.splitlines() if line.startswith("serving_model_info{")]
        assert 'name="test-model"' in info and 'version="7"' in info and info.endswith(" 1.0")
        assert "process_cpu_seconds_total" not in text, "one worker's own figures, left out"
        if len(scraped_by.keys() - {None}) == WORKERS:
            break
    assert len(scraped_by.keys() - {None}) == WORKERS, f"scrapes answered by {scraped_by}"


def test_the_prediction_log_holds_every_request_once_through_rotations(served):
    _, _, log, sent, _ = served
    files = log_files(log)
    assert len(files) > 2, "the workers rotated the log"
    assert all(part.stat().st_size <= LOG_MAX_BYTES for part in files)
    lines = [line for part in files for line in part.read_text().splitlines()]
    entries = [json.loads(line) for line in lines]  # every line whole
    counts = collections.Counter(entry["request_id"] for entry in entries)
    assert counts == {request_id: 3 for request_id in sent}, "3 rows per request, each once"
    batch = read_prediction_log(str(log), "7")
    assert sorted(batch["request_id"]) == sorted(r for r in sent for _ in range(3))
    assert batch.attrs["skipped_lines"] == 0


def test_sigterm_stops_every_worker_and_removes_the_metrics_folder(bundle, tmp_path):
    server, _, errors = start(bundle, tmp_path, {"SERVING_WORKERS": str(WORKERS)})
    try:
        children = descendants(server)
        assert len(children) >= WORKERS
        folders = {p.environ().get("PROMETHEUS_MULTIPROC_DIR") for p in children} - {None}
        assert len(folders) == 1 and Path(next(iter(folders))).is_dir()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, errors.read_text()[-2000:]
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left behind: {alive}"
        assert not Path(next(iter(folders))).exists()
    finally:
        stop(server)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_stop_when_their_parent_is_killed(bundle, tmp_path):
    server, _, _ = start(bundle, tmp_path, {"SERVING_WORKERS": str(WORKERS)})
    try:
        workers = [
            p for p in descendants(server) if "resource_tracker" not in " ".join(p.cmdline())
        ]
        assert len(workers) == WORKERS
        server.kill()
        server.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"orphans still serving: {alive}"
    finally:
        stop(server)


# --- the setting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quota", "expected"),
    [("200000 100000\n", 2), ("150000 100000\n", 1), ("50000 100000\n", 1), ("max 100000\n", 8)],
    ids=["two-cpus", "rounded-down", "at-least-one", "no-quota"],
)
def test_auto_is_the_cgroup_cpu_quota(tmp_path, monkeypatch, quota, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(quota)
    assert worker_count("auto", cpu_max) == expected == usable_cpus(cpu_max)


def test_auto_is_the_cpus_this_process_may_use(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 3, 5}, raising=False)
    assert worker_count(" AUTO ", tmp_path / "no-cgroup-here") == 3
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("400000 100000\n")
    assert worker_count("auto", cpu_max) == 3, "the smaller of affinity and quota"


def test_unset_is_one_worker_and_numbers_are_taken_as_given():
    assert worker_count(None) == worker_count("") == 1
    assert worker_count("3") == 3


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
@pytest.mark.parametrize("how", ["env", "flag"])
def test_a_bad_worker_count_is_refused_naming_the_setting_and_the_fix(
    bundle, monkeypatch, capsys, value, how
):
    with pytest.raises(SettingsError):
        worker_count(value)
    monkeypatch.setenv("SERVING_WORKERS", value if how == "env" else "1")
    flag = ["--workers", value] if how == "flag" else []
    assert main(["--bundle", str(bundle), "--port", str(free_port()), *flag]) == EXIT_SETTINGS
    message = capsys.readouterr().err
    assert "refusing to start: SERVING_WORKERS=" in message and repr(value) in message
    assert "whole number, 1 or more" in message and "auto" in message


# --- the log shared by processes ------------------------------------------------------------------


WRITER = """
import sys, time
from crisp_ml.serving import predlog
path, name, count, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
log = predlog.PredictionLog(path, "m", "1", max_bytes=max_bytes, backups=1000)
for i in range(count):
    rows = 1 + i % 3
    entry = predlog.Entry(time.time(), f"{name}-{i}", "/predict", 1.0, {"x": [float(i)] * rows},
                          ["yes"] * rows, None)
    log.record(entry)
"""


def test_processes_writing_one_log_lose_and_tear_nothing_and_keep_its_bound(tmp_path):
    """Four processes at once on a log small enough to rotate every few entries."""
    path, max_bytes, writers, count = tmp_path / "p.jsonl", 4096, 4, 400
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"w{w}", str(count), str(max_bytes)]
        )
        for w in range(writers)
    ]
    assert [process.wait(timeout=120) for process in processes] == [0] * writers
    files = log_files(path)
    assert all(part.stat().st_size <= max_bytes for part in files)
    entries = [json.loads(line) for part in files for line in part.read_text().splitlines()]
    counts = collections.Counter(entry["request_id"] for entry in entries)
    assert counts == {f"w{w}-{i}": 1 + i % 3 for w in range(writers) for i in range(count)}


def test_a_line_torn_by_another_process_is_cut_before_the_next_entry(tmp_path):
    """A worker killed mid-write leaves half a line while the others go on writing."""
    path = tmp_path / "p.jsonl"
    log = predlog.PredictionLog(path, "m", "1", max_bytes=1_000_000)
    entry = predlog.Entry(time.time(), "a", "/predict", 1.0, {"x": [1.0]}, ["yes"], None)
    log.record(entry)
    with path.open("ab") as other:
        other.write(b'{"timestamp": "2026-01-31T12:00')
    log.record(predlog.Entry(time.time(), "b", "/predict", 1.0, {"x": [2.0]}, ["no"], None))
    log.close()
    assert [json.loads(line)["request_id"] for line in path.read_text().splitlines()] == ["a", "b"]
    assert log.repaired_bytes == len(b'{"timestamp": "2026-01-31T12:00')
