"""The serving benchmark's load generator reads answers correctly over one keep-alive connection."""

import importlib.util
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "serving.py"


@pytest.fixture(scope="module")
def serving_benchmark():
    spec = importlib.util.spec_from_file_location("serving_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


class Echo(BaseHTTPRequestHandler):
    """Answers a POST with its body, in chunks of varying size; 418 for a body that says so."""

    protocol_version = "HTTP/1.1"  # keep-alive, as both servers under test

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(body)  # before answering: the client may check right after
        answer = b"x" * 70_000 + body  # larger than one recv
        self.send_response(418 if body == b"teapot" else 200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer[:10])
        self.wfile.write(answer[10:])

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", ["raw", "http.client"])
def test_one_connection_reads_each_answer_whole(serving_benchmark, echo_server, kind):
    port = echo_server.server_address[1]
    connection = serving_benchmark.CLIENTS[kind](port)
    try:
        statuses = [
            connection.exchange(serving_benchmark.invocation(port, body))
            for body in (b'{"a": 1}', b"teapot", b'{"b": 2}')
        ]
    finally:
        connection.close()
    assert statuses == [200, 418, 200]
    assert echo_server.bodies == [b'{"a": 1}', b"teapot", b'{"b": 2}']


def test_load_counts_every_request_and_refuses_errors(serving_benchmark, echo_server):
    port = echo_server.server_address[1]
    result = serving_benchmark.load(port, b"{}", requests=40, clients=4)
    assert result["rps"] > 0 and 0 < result["p50"] <= result["p99"]
    assert len(echo_server.bodies) == 40 + 40  # the warm-up (min(200, 40)) and the measured 40
    with pytest.raises(SystemExit, match="418"):
        serving_benchmark.load(port, b"teapot", requests=8, clients=2)


def test_the_log_cost_compares_each_server_with_itself(serving_benchmark):
    def run(rps_1: float, rps_8: float) -> dict:
        return {1: {"rps": rps_1}, 8: {"rps": rps_8}}

    http = {
        "mlflow models serve": run(100, 100),
        "this server": run(500, 800),
        "this server, prediction log on": run(400, 600),
        "baseline server": run(1000, 1000),
    }
    (row,) = serving_benchmark.log_cost(http)[3:]
    assert row == "| this server | 500 / 400 | 0.80x | 500 | 800 / 600 | 0.75x |"
    assert serving_benchmark.log_cost({"this server": run(1, 1)}) == []
