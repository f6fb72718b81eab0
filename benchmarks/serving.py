"""The serving stack against MLflow's: latency, throughput, image size and start-up time.

    uv run python benchmarks/serving.py PROJECT_DIR [--requests 2000] [--repeat 2] [--no-docker]
        [--prediction-log] [--baseline OTHER_PROJECT_DIR] [--quick]

PROJECT_DIR is a generated project after `make setup` and `make pipeline` (a registered champion).
Everything runs on loopback, bounded by --requests per measurement:

  * in process: scikit-learn's one-row predict (predict_proba for a classifier, on a one-row
    DataFrame), ONNX Runtime's on the compiled model.onnx (one-row arrays), MLflow's pyfunc
    predict, and this server's whole request path without HTTP (parse, check, predict, JSON) with
    each runtime; interleaved, p50, p99 and best of --requests calls each;
  * over HTTP, one row per request, 1 and 8 concurrent keep-alive clients (threads that send a
    prepared request on a raw socket, so the client's own cost stays out of the numbers;
    `--client http.client` for the standard library's client):
    `mlflow models serve --env-manager local` (1 worker) and this server (`python -m
    crisp_ml.serving`, uvicorn, SERVING_WORKERS=1) with SERVING_RUNTIME=scikit-learn and with
    SERVING_RUNTIME=onnx, all on the same exported model folder; they are measured in alternation
    --repeat times and the best run of each is kept (the machine is shared);
    with --prediction-log, this server once more with PREDICTION_LOG on (a fresh file in a temporary
    folder), and a table of what the log costs; with --baseline, the server of another generated
    project (say, baked from the template's previous commit) on the same model folder, measured
    alike in the same alternation, log on and off: the way to compare two versions of the server;
  * with Docker (unless --no-docker): this project's image of the same model version twice (staged
    and built with SERVING_RUNTIME=scikit-learn, so the `serve` group; and with onnx, the
    `serve-onnx` group) and one built from `mlflow models generate-dockerfile`, all FROM
    $BASE_IMAGE (default python:3.11-slim-bookworm): image size, seconds from `docker run` to the
    first /ping 200, and the same 1- and 8-client load against each container as it ships (its
    default worker count, reported; requests go to the container's address, not through
    docker-proxy), alternated and best of max(--repeat, 3) starts. The MLflow image is labelled
    with a hash of its build context and base image, and reused when one with the same label
    exists (its build is the slowest step).

--quick: 300 requests, one round, one container start each: a smoke check, not a measurement.

--modes: only the cost of serving two versions (issue 16): this server (ONNX runtime when the
model is compiled, one worker, over loopback as above) in SERVING_MODE single, ab (share 0.5,
unkeyed requests: a random split) and shadow, at 1 and 8 clients, alternated --repeat times, with
the ratios against single. The challenger is --challenger (a version or alias, default the
`challenger` alias); without one, a copy of the champion's bundle under another version number,
which costs the same to score (what is measured is the routing and the second scoring).

Prints markdown tables with the ratios against MLflow, then issue 15's targets, each met or not
met with its numbers. The images are tagged serving-benchmark/* (never the project's own tags);
this project's are removed at the end unless --keep-images, MLflow's is kept for the next run.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

IN_PROCESS = r"""
import json, os, sys, time
from pathlib import Path
import importlib
bundle = Path(sys.argv[2])
served = importlib.import_module(sys.argv[1] + ".serving.model")
schema = importlib.import_module(sys.argv[1] + ".serving.schema")
sk = served.load(bundle / "model", "scikit-learn")
compiled = (bundle / "model" / "model.onnx").is_file()
onnx = served.load(bundle / "model", "onnx") if compiled else None
example = sk.input_example
one = {"columns": example["columns"], "data": example["data"][:1]}
body = json.dumps({"dataframe_split": one}).encode()
arrays = schema.parse_json(body, sk.columns)[0].arrays
frame = sk.frame(arrays)
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"  # our own model, just exported
import mlflow
pyfunc = mlflow.pyfunc.load_model(str(bundle / "model"))
method = "predict_proba" if hasattr(sk.estimator, "predict_proba") else "predict"

def server_path(model):
    def call():
        batch, _ = schema.parse_json(body, model.columns)
        json.dumps({"predictions": model.predict(model.inputs(batch.arrays))})
    return call

cases = {
    "scikit-learn one-row predict": lambda: getattr(sk.estimator, method)(frame),
    "MLflow pyfunc predict": lambda: pyfunc.predict(frame),
    "this server's request path, no HTTP, scikit-learn": server_path(sk),
}
if onnx is not None:
    cases["ONNX Runtime one-row predict"] = lambda: getattr(onnx.estimator, method)(arrays)
    cases["this server's request path, no HTTP, ONNX"] = server_path(onnx)
n = int(sys.argv[3])
times = {name: [] for name in cases}
for i in range(n + 50):  # interleaved, so a busy moment hits every case alike
    for name, call in cases.items():
        started = time.perf_counter()
        call()
        if i >= 50:  # warm-up
            times[name].append(time.perf_counter() - started)
out = {"method": method}
for name, values in times.items():
    values.sort()
    out[name] = {
        "p50": values[len(values) // 2], "p99": values[int(len(values) * 0.99)], "best": values[0]
    }
print(json.dumps(out))
"""
SKLEARN_ROW, ONNX_ROW = "scikit-learn one-row predict", "ONNX Runtime one-row predict"

LOG_COST = r"""
import importlib, json, sys, tempfile, time
from pathlib import Path
predlog = importlib.import_module(sys.argv[1] + ".serving.predlog")
example = json.loads((Path(sys.argv[2]) / "model" / "input_example.json").read_text())
values = {name: [value] for name, value in zip(example["columns"], example["data"][0])}
n = int(sys.argv[3])
log = predlog.PredictionLog(Path(tempfile.mkdtemp()) / "p.jsonl", "model", "1", 50 * 2**20)
wait = getattr(log, "flush", lambda: None)  # a writer thread's log: until the line is written

def entry():
    return predlog.Entry(time.time(), "5f0c6e4d0c2b4f3e9a8d7c6b5a4f3e2d", "/invocations", 1.25,
                         values, ["yes"], None)

out = {}
for mode in ("one at a time", "back to back"):  # as at c=1, and as a burst the writer batches
    for i in range(n + 200):
        if i == 200:  # after a warm-up
            wall, cpu = time.perf_counter(), time.process_time()
        log.record(entry())
        if mode == "one at a time":
            wait()
    wait()
    out[mode] = {"wall": (time.perf_counter() - wall) / n, "cpu": (time.process_time() - cpu) / n}
out["dropped"] = getattr(log, "dropped", 0)
log.close()
print(json.dumps(out))
"""

EXPORT = r"""
import json, sys, importlib
export = importlib.import_module(sys.argv[1] + ".serving.export")
bundle, manifest = export.export_bundle(sys.argv[3] or None, sys.argv[2])
print(json.dumps({"bundle": str(bundle), "version": manifest["model"]["version"]}))
"""

COPY_AS_OTHER_VERSION = r"""
import json, shutil, sys
from pathlib import Path
source, dest = Path(sys.argv[2]), Path(sys.argv[3])
shutil.copytree(source, dest)
manifest = json.loads((dest / "manifest.json").read_text())
manifest["model"]["version"] = str(manifest["model"]["version"]) + "-copy"
(dest / "manifest.json").write_text(json.dumps(manifest))
print(json.dumps({"bundle": str(dest), "version": manifest["model"]["version"]}))
"""

STAGE = r"""
import json, sys, importlib
image = importlib.import_module(sys.argv[1] + ".serving.image")
context, manifest, runtime = image.stage(sys.argv[2] or None, echo=lambda *a: None)
print(json.dumps({"context": str(context), "version": manifest["model"]["version"],
                  "runtime": runtime}))
"""
OUR_TAGS = {  # never the project's own tags
    "scikit-learn": "serving-benchmark/this-server-scikit-learn:latest",
    "onnx": "serving-benchmark/this-server-onnx:latest",
}
WORKERS = r"""
import os
from crisp_ml.serving.app import WORKERS_ENV, worker_count
print(worker_count(os.environ.get(WORKERS_ENV)))
"""
MLFLOW_TAG = "serving-benchmark/mlflow-generated:latest"


@dataclass
class Project:
    root: Path
    package: str

    @property
    def bin(self) -> Path:
        return self.root / ".venv" / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env['PATH']}"
        return env | extra

    def python(self, code: str, *args: str, **env: str) -> dict:
        done = subprocess.run(
            [str(self.bin / "python"), "-c", code, self.package, *args],
            cwd=self.root, env=self.env(**env), capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            sys.exit(f"failed in {self.root}:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def find_project(path: Path) -> Project:
    root = path.resolve()
    generated = (root / "pyproject.toml").is_file() and "[tool.crisp-ml]" in (
        root / "pyproject.toml"
    ).read_text()
    if not (root / ".venv").is_dir() or not generated:
        sys.exit(f"{root} is not a generated project after `make setup` (no .venv or runtime)")
    return Project(root, "crisp_ml")  # the serving modules are the runtime's


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_ping(
    port: int,
    process: subprocess.Popen | None = None,
    timeout: float = 180,
    host: str = "127.0.0.1",
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process is not None and process.poll() is not None:
            sys.exit(f"server exited ({process.returncode}):\n{process.stderr.read()[-3000:]}")
        try:
            connection = http.client.HTTPConnection(host, port, timeout=2)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"nothing answered /ping on {host}:{port} within {timeout:.0f} s")


# --- load ---------------------------------------------------------------------------------------------


class RawConnection:
    """A keep-alive connection that sends one prepared request and reads one answer.

    The load generator's own cost lands in every c=1 round trip and competes for the two cores at
    c=8, so it must be small: this costs tens of microseconds a request, where http.client (which
    parses every answer's headers with the email package) costs several hundred.
    """

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.address = (host, port)
        self._connect()

    def _connect(self) -> None:
        self.socket = socket.create_connection(self.address, timeout=30)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    def exchange(self, request: bytes) -> int:
        """Send `request`, read the whole answer, return its status code."""
        self.socket.sendall(request)
        while b"\r\n\r\n" not in self.pending:
            self.pending += self._receive()
        head, _, rest = self.pending.partition(b"\r\n\r\n")
        length = CONTENT_LENGTH.search(head)
        if length is None:
            sys.exit(f"an answer without Content-Length: {head[:300]!r}")
        size = int(length.group(1))
        while len(rest) < size:
            rest += self._receive()
        self.pending = rest[size:]
        if CONNECTION_CLOSE.search(head):  # nginx ends a connection after 1000 requests
            self.socket.close()
            self._connect()
        return int(head.split(b" ", 2)[1])

    def _receive(self) -> bytes:
        chunk = self.socket.recv(65536)
        if not chunk:
            sys.exit("the server closed a keep-alive connection")
        return chunk

    def close(self) -> None:
        self.socket.close()


class StdlibConnection:
    """The same exchange through http.client, for comparison with earlier measurements."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.connection = http.client.HTTPConnection(host, port, timeout=30)

    def exchange(self, request: bytes) -> int:
        _, _, body = request.partition(b"\r\n\r\n")
        self.connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        answer = self.connection.getresponse()
        answer.read()
        return answer.status

    def close(self) -> None:
        self.connection.close()


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
CLIENTS = {"raw": RawConnection, "http.client": StdlibConnection}


def invocation(port: int, body: bytes, host: str = "127.0.0.1") -> bytes:
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def load(
    port: int, body: bytes, requests: int, clients: int, kind: str = "raw", host: str = "127.0.0.1"
) -> dict:
    """`requests` POSTs of `body` to /invocations over `clients` keep-alive connections."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    request = invocation(port, body, host)

    def client(count: int) -> None:
        mine = []
        try:
            connection = CLIENTS[kind](port, host)
            for _ in range(count):
                started = time.perf_counter()
                status = connection.exchange(request)
                mine.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(str(status))
            connection.close()
        except (OSError, SystemExit) as error:  # a thread's exit would go unseen
            errors.append(f"{type(error).__name__}: {error}")
        with lock:
            latencies.extend(mine)

    client(min(200, requests))  # warm-up, not counted
    latencies.clear()
    threads = [threading.Thread(target=client, args=(requests // clients,)) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        sys.exit(f"non-200 answers during the load: {sorted(set(errors))}")
    latencies.sort()
    return {
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
        "rps": len(latencies) / elapsed,
    }


def start_mlflow(project: Project, model_dir: Path, port: int) -> subprocess.Popen:
    command = [
        str(project.bin / "mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager",
        "local", "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    env = project.env(MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true")  # MLflow 3.17 gates every load
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def start_ours(project: Project, bundle: Path, port: int, **env: str) -> subprocess.Popen:
    command = [
        str(project.bin / "python"), "-m", f"{project.package}.serving", "--bundle", str(bundle),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=project.env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


MLFLOW = "mlflow models serve"
SKLEARN_SERVER, ONNX_SERVER = "this server, scikit-learn", "this server, ONNX"
WITH_LOG = ", prediction log on"


def servers(
    project: Project, baseline: Project | None, prediction_log: Path | None, compiled: bool
) -> dict[str, Callable[[Path, int], subprocess.Popen]]:
    """Each server to measure, by name: a function of (bundle, port) that starts it. Ours run one
    worker each, as `mlflow models serve` does; the images below run their default."""
    started = {MLFLOW: lambda bundle, port: start_mlflow(project, bundle / "model", port)}
    ours = {SKLEARN_SERVER: (project, {"SERVING_RUNTIME": "scikit-learn"})}
    if compiled:
        ours[ONNX_SERVER] = (project, {"SERVING_RUNTIME": "onnx"})
    if baseline:  # its own default runtime
        ours["baseline server"] = (baseline, {})
    for name, (owner, env) in ours.items():
        started[name] = partial(start_ours, owner, SERVING_WORKERS="1", **env)
        if prediction_log:  # a file of each server's own, never shared
            log = prediction_log / f"{name.replace(' ', '-').replace(',', '')}.jsonl"
            started[name + WITH_LOG] = partial(
                start_ours, owner, SERVING_WORKERS="1", PREDICTION_LOG=str(log), **env
            )
    return started


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def http_benchmark(
    starts: dict[str, Callable], bundle: Path, body: bytes, requests: int, repeat: int, client: str
) -> dict:
    results: dict[str, dict] = {name: {} for name in starts}
    for _ in range(repeat):
        for name, start in starts.items():  # alternate, so a busy moment hits them all
            port = free_port()
            process = start(bundle, port)
            try:
                startup = wait_for_ping(port, process)
                results[name]["startup"] = min(startup, results[name].get("startup", startup))
                for clients in (1, 8):
                    run = load(port, body, requests, clients, client)
                    best = results[name].get(clients)
                    if best is None or run["rps"] > best["rps"]:
                        results[name][clients] = run
            finally:
                stop(process)
    return results


MODES = ("single", "ab", "shadow")


def modes_benchmark(
    project: Project, bundle: Path, challenger: Path, runtime: str, body: bytes, requests: int,
    repeat: int, client: str,
) -> dict:  # fmt: skip
    """This server in each SERVING_MODE on the same champion (and challenger), one worker."""
    starts = {
        mode: partial(
            start_ours,
            project,
            SERVING_WORKERS="1",
            SERVING_RUNTIME=runtime,
            SERVING_MODE=mode,
            CHALLENGER_BUNDLE=str(challenger),
            SERVING_CHALLENGER_SHARE="0.5",
        )
        for mode in MODES
    }
    return http_benchmark(starts, bundle, body, requests, repeat, client)


def modes_report(results: dict, runtime: str, versions: str, load_before: str) -> str:
    lines = [
        f"## Two versions in one server ({runtime} runtime, one worker; {versions})",
        "",
        "| mode | clients | p50 | p99 | req/s | p50 vs single | req/s vs single |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for clients in (1, 8):
        single = results["single"][clients]
        for mode in MODES:
            run = results[mode][clients]
            lines.append(
                f"| {mode} | {clients} | {ms(run['p50'])} | {ms(run['p99'])} | {run['rps']:,.0f} "
                f"| {run['p50'] / single['p50']:.2f}x | {run['rps'] / single['rps']:.2f}x |"
            )
    lines += ["", f"load average before: {load_before}; after: {os.getloadavg()}"]
    return "\n".join(lines)


# --- images -------------------------------------------------------------------------------------------


def docker(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = os.environ | {"DOCKER_BUILDKIT": "0"}  # the legacy builder, as CI has it
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


IMAGE_OPTIONS = {  # how each image is meant to run
    "onnx": ("--read-only", "--tmpfs", "/tmp"),
    "scikit-learn": ("--read-only", "--tmpfs", "/tmp"),
    "mlflow": ("-e", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true"),
}
ONNX_IMAGE, SKLEARN_IMAGE, MLFLOW_IMAGE = (
    "this image, ONNX", "this image, scikit-learn", "mlflow generate-dockerfile"
)  # fmt: skip
CONTEXT_LABEL = "serving-benchmark.context"


def container_address(container: str) -> str:
    """The container's own address on the bridge network: loopback load through docker-proxy
    would measure the proxy too."""
    done = docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container
    )
    return (done.stdout.split() or ["127.0.0.1"])[0]


def worker_count(container: str) -> str:
    """How many server processes the container runs (SERVING_WORKERS as the server reads it)."""
    done = docker("exec", container, "python", "-c", WORKERS)
    return done.stdout.strip() if done.returncode == 0 else "its default"


def run_image(tag: str, kind: str, body: bytes, requests: int, client: str, load_it: bool) -> dict:
    """One `docker run`: seconds to the first /ping 200, then (if `load_it`) 1 and 8 clients."""
    port = free_port()
    started = time.monotonic()
    done = docker("run", "--detach", "-p", f"127.0.0.1:{port}:8080", *IMAGE_OPTIONS[kind], tag)
    if done.returncode != 0:
        sys.exit(f"docker run {tag} failed: {done.stderr[-1000:]}")
    container = done.stdout.strip()
    try:
        wait_for_ping(port, None, timeout=300)
        result: dict = {"healthy": time.monotonic() - started}
        if load_it:
            host = container_address(container)
            wait_for_ping(8080, None, timeout=30, host=host)
            result["workers"] = worker_count(container) if kind != "mlflow" else "its default"
            for clients in (1, 8):
                result[clients] = load(8080, body, requests, clients, client, host)
        return result
    finally:
        docker("rm", "--force", container)


def context_hash(folder: Path, base_image: str) -> str:
    digest = hashlib.sha256(docker("image", "inspect", "-f", "{{.Id}}", base_image).stdout.encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_mlflow_image(project: Project, bundle: Path, base_image: str) -> tuple[str | None, str]:
    """Build what `mlflow models generate-dockerfile` writes, FROM the same base; (tag, note).
    An image of an earlier run built from the same context and base is reused."""
    folder = Path(tempfile.mkdtemp(prefix="mlflow-dockerfile-"))
    try:
        done = subprocess.run(
            [str(project.bin / "mlflow"), "models", "generate-dockerfile", "-m", str(bundle / "model"),
             "-d", str(folder)],
            env=project.env(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            return None, f"generate-dockerfile failed: {done.stderr[-300:]}"
        dockerfile = folder / "Dockerfile"
        text = dockerfile.read_text()
        original = re.search(r"^FROM (\S+)", text, re.MULTILINE).group(1)
        dockerfile.write_text(
            re.sub(r"^FROM \S+", f"FROM {base_image}", text, count=1, flags=re.MULTILINE)
        )
        tag, key = MLFLOW_TAG, context_hash(folder, base_image)
        note = f"generated FROM {original}, built FROM {base_image}"
        label = f"{{{{index .Config.Labels {json.dumps(CONTEXT_LABEL)}}}}}"
        if docker("image", "inspect", "-f", label, tag).stdout.strip() == key:
            return tag, note + f" (reused: an earlier run built this context, {key})"
        print("building MLflow's image (the slowest step)", flush=True)
        built = docker("build", "-t", tag, "--label", f"{CONTEXT_LABEL}={key}", str(folder))
        if built.returncode != 0:
            return (
                None,
                f"its build failed here (apt or pip needs the network): {built.stderr[-400:]}",
            )
        return tag, note
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_ours(project: Project, version: str, runtime: str, base_image: str) -> dict:
    """Stage and build this project's image with SERVING_RUNTIME=`runtime`, as `make image` does."""
    staged = project.python(STAGE, version, SERVING_RUNTIME=runtime)  # build/image/
    if staged["runtime"] != runtime:
        sys.exit(f"stage() chose {staged['runtime']} with SERVING_RUNTIME={runtime}")
    tag = OUR_TAGS[runtime]
    print(f"building this project's {runtime} image", flush=True)
    built = docker(
        "build", "-t", tag, "--build-arg", f"BASE_IMAGE={base_image}",
        "--build-arg", f"SERVING_RUNTIME={runtime}", str(project.root),
    )  # fmt: skip
    if built.returncode != 0:
        sys.exit(f"building this project's {runtime} image failed: {built.stderr[-2000:]}")
    return staged


def image_benchmark(
    project: Project, version: str, base_image: str, compiled: bool, body: bytes, requests: int,
    rounds: int, client: str,
) -> dict:  # fmt: skip
    images = {SKLEARN_IMAGE: ("scikit-learn", OUR_TAGS["scikit-learn"])}
    staged = build_ours(project, version, "scikit-learn", base_image)
    if compiled:
        staged = build_ours(project, version, "onnx", base_image)
        images[ONNX_IMAGE] = ("onnx", OUR_TAGS["onnx"])
    mlflow_tag, note = build_mlflow_image(project, Path(staged["context"]) / "bundle", base_image)
    if mlflow_tag:
        images = {MLFLOW_IMAGE: ("mlflow", mlflow_tag)} | images
    result: dict = {"note": note}
    for name, (_, tag) in images.items():
        size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())
        result[name] = {"tag": tag, "size": size, "healthy": float("inf")}
    for round_ in range(rounds):  # alternate, so a busy moment hits them all
        for name, (kind, tag) in images.items():
            run = run_image(tag, kind, body, requests, client, load_it=round_ < max(rounds - 1, 1))
            kept = result[name]
            kept["healthy"] = min(kept["healthy"], run["healthy"])
            kept.setdefault("workers", run.get("workers"))
            for clients in (1, 8):
                if clients in run and (
                    clients not in kept or run[clients]["rps"] > kept[clients]["rps"]
                ):
                    kept[clients] = run[clients]
    return result


# --- report -------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def log_benchmark(projects: dict[str, Project], bundle: Path, requests: int, repeat: int) -> dict:
    """Each project's prediction log in process, 1-row entries: time per entry, best of `repeat`
    alternating runs. CPU time counts every thread, so a writer thread's work is in it."""
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for name, project in projects.items():
            run = project.python(LOG_COST, str(bundle), str(requests * 10))
            for mode in ("one at a time", "back to back"):
                kept = best.setdefault(name, {}).setdefault(mode, run[mode])
                best[name][mode] = {k: min(kept[k], run[mode][k]) for k in kept}
            best[name]["dropped"] = max(best[name].get("dropped", 0), run["dropped"])
    return best


def report(
    in_process: dict, http: dict, images: dict | None, load_before: str, client: str,
    log_in_process: dict | None = None,
) -> str:  # fmt: skip
    method = in_process.pop("method", "predict")
    lines = [f"Load average before: {load_before}; after: {os.getloadavg()}", ""]
    lines += [
        f"| in process, 1 row (scikit-learn and ONNX: {method}) | p50 ms | p99 ms | best ms |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {name} | {ms(r['p50'])} | {ms(r['p99'])} | {ms(r['best'])} |"
            for name, r in in_process.items()
        ),
        "",
        (
            f"| over HTTP, 1 row, {client} client, 1 worker | start s | c=1 p50 ms | c=1 p99 ms "
            "| c=1 req/s | c=8 p50 ms | c=8 p99 ms | c=8 req/s "
            "| vs MLflow: c=1 p50 / c=1 req/s / c=8 req/s |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = http[MLFLOW]
    for name, r in http.items():
        ratio = (
            f"{r[1]['p50'] / base[1]['p50']:.2f}x / {r[1]['rps'] / base[1]['rps']:.2f}x "
            f"/ {r[8]['rps'] / base[8]['rps']:.2f}x"
        )
        lines.append(
            f"| {name} | {r['startup']:.1f} | {ms(r[1]['p50'])} | {ms(r[1]['p99'])} | {r[1]['rps']:.0f} "
            f"| {ms(r[8]['p50'])} | {ms(r[8]['p99'])} | {r[8]['rps']:.0f} | {ratio} |"
        )
    lines += log_cost(http)
    if log_in_process:
        lines += log_cost_in_process(log_in_process)
    if images:
        lines += image_table(images, client)
    lines += targets(in_process, http, images)
    return "\n".join(lines)


def image_table(images: dict, client: str) -> list[str]:
    lines = [
        "",
        (
            f"| image, as it ships ({client} client, to the container's address) | size MB "
            "| docker run to /ping 200, s | workers | c=1 p50 ms | c=8 p50 ms | c=8 p99 ms "
            "| c=8 req/s | vs MLflow: size / c=8 req/s |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    mlflow = images.get(MLFLOW_IMAGE, {})
    for name in (MLFLOW_IMAGE, SKLEARN_IMAGE, ONNX_IMAGE):
        if name not in images:
            continue
        r = images[name]
        size = f"{r['size'] / mlflow['size']:.2f}x" if mlflow else "n/a"
        rps = f"{r[8]['rps'] / mlflow[8]['rps']:.2f}x" if 8 in mlflow and 8 in r else "n/a"
        lines.append(
            f"| {name} (`{r['tag']}`) | {r['size'] / 1e6:.0f} | {r['healthy']:.1f} "
            f"| {r.get('workers')} | {ms(r[1]['p50'])} | {ms(r[8]['p50'])} | {ms(r[8]['p99'])} "
            f"| {r[8]['rps']:.0f} | {size} / {rps} |"
        )
    lines.append(f"\nMLflow's image: {images['note']}")
    return lines


def targets(in_process: dict, http: dict, images: dict | None) -> list[str]:
    """Issue 15's targets, each met or not met with its numbers."""

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    lines = ["", "Targets (issue 15):"]
    if ONNX_SERVER not in http:
        return [*lines, "- n/a: the model has no model.onnx, so no ONNX server was measured"]
    onnx, mlflow, row = http[ONNX_SERVER], http[MLFLOW], in_process[SKLEARN_ROW]
    lines.append(
        f"1. ONNX server c=1 p50 over HTTP below scikit-learn's in-process one-row predict: "
        f"{verdict(onnx[1]['p50'] < row['best'])} ({ms(onnx[1]['p50'])} ms against "
        f"{ms(row['best'])} ms best, {ms(row['p50'])} ms p50; "
        f"{row['best'] / onnx[1]['p50']:.2f}x)"
    )
    ratio = onnx[8]["rps"] / mlflow[8]["rps"]
    lines.append(
        f"2. ONNX throughput at 8 clients at least 10x MLflow's: one worker each (processes): "
        f"{verdict(ratio >= 10)} ({onnx[8]['rps']:.0f} against {mlflow[8]['rps']:.0f} req/s, "
        f"{ratio:.1f}x)"
    )
    if images and ONNX_IMAGE in images and MLFLOW_IMAGE in images:
        ours, theirs = images[ONNX_IMAGE], images[MLFLOW_IMAGE]
        if 8 in ours and 8 in theirs:
            ratio = ours[8]["rps"] / theirs[8]["rps"]
            lines.append(
                f"   images as they ship ({ours['workers']} worker(s) in the ONNX image, MLflow's "
                f"default): {verdict(ratio >= 10)} ({ours[8]['rps']:.0f} against "
                f"{theirs[8]['rps']:.0f} req/s, {ratio:.1f}x)"
            )
        ratio, margin = ours["size"] / theirs["size"], (theirs["size"] / 4 - ours["size"]) / 1e6
        lines.append(
            f"3. ONNX image at most a quarter of MLflow's: {verdict(ratio <= 0.25)} "
            f"({ours['size'] / 1e6:.1f} MB against {theirs['size'] / 1e6:.1f} MB, {ratio:.3f}x, "
            f"{abs(margin):.1f} MB {'under' if margin >= 0 else 'over'} the bar)"
        )
    else:
        lines.append("3. ONNX image at most a quarter of MLflow's: n/a (no image comparison)")
    return lines


def log_cost(http: dict) -> list[str]:
    """What the prediction log costs each server that ran with it on and off: throughput with it
    as a share of throughput without, and the time it adds to a request at c=1."""
    logged = [name for name in http if name.endswith(WITH_LOG)]
    if not logged:
        return []
    lines = [
        "",
        (
            "| prediction log cost | c=1 req/s off / on | c=1 on vs off | c=1 µs per request "
            "| c=8 req/s off / on | c=8 on vs off |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in logged:
        off, on = http[name.removesuffix(WITH_LOG)], http[name]
        added = (1 / on[1]["rps"] - 1 / off[1]["rps"]) * 1e6
        lines.append(
            f"| {name.removesuffix(WITH_LOG)} | {off[1]['rps']:.0f} / {on[1]['rps']:.0f} "
            f"| {on[1]['rps'] / off[1]['rps']:.2f}x | {added:.0f} "
            f"| {off[8]['rps']:.0f} / {on[8]['rps']:.0f} | {on[8]['rps'] / off[8]['rps']:.2f}x |"
        )
    return lines


def log_cost_in_process(results: dict) -> list[str]:
    def us(seconds: float) -> str:
        return f"{seconds * 1e6:.1f}"

    lines = [
        "",
        (
            "| prediction log in process, 1-row entry | one at a time: wall µs | CPU µs "
            "| back to back: wall µs | CPU µs | entries dropped |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        one, burst = r["one at a time"], r["back to back"]
        lines.append(
            f"| {name} | {us(one['wall'])} | {us(one['cpu'])} | {us(burst['wall'])} "
            f"| {us(burst['cpu'])} | {r['dropped']} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "project", type=Path, help="a generated project after make setup + pipeline"
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument(
        "--repeat", type=int, default=2, help="alternating runs per server (best kept)"
    )
    parser.add_argument("--version", default="", help="model version (default: the champion)")
    parser.add_argument(
        "--client", choices=sorted(CLIENTS), default="raw",
        help="load generator: raw sockets (default) or http.client (costs more per request)",
    )  # fmt: skip
    parser.add_argument(
        "--prediction-log", action="store_true",
        help="also measure the server(s) with PREDICTION_LOG on, and report what it costs",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", type=Path,
        help="another generated project (after make setup) whose server to measure alike",
    )  # fmt: skip
    parser.add_argument("--no-docker", action="store_true", help="skip the image comparison")
    parser.add_argument("--keep-images", action="store_true", help="leave the built images")
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke check: 300 requests, one round, one container start each",
    )  # fmt: skip
    parser.add_argument(
        "--modes", action="store_true",
        help="only this server in SERVING_MODE single, ab and shadow (two versions)",
    )  # fmt: skip
    parser.add_argument(
        "--challenger", default="challenger", help="--modes: the second version or alias"
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeat = 300, 1
    project = find_project(args.project)
    baseline = find_project(args.baseline) if args.baseline else None
    load_before = str(os.getloadavg())
    bundle_dir = Path(tempfile.mkdtemp(prefix="serving-benchmark-")) / "bundle"
    exported = project.python(EXPORT, str(bundle_dir), args.version)
    bundle = Path(exported["bundle"])
    compiled = (bundle / "model" / "model.onnx").is_file()
    print(
        f"model version {exported['version']} of {project.root.name}, exported to {bundle}"
        f" ({'with' if compiled else 'without'} model.onnx)",
        flush=True,
    )
    example = json.loads((bundle / "model" / "input_example.json").read_text())
    body = json.dumps(
        {"dataframe_split": {"columns": example["columns"], "data": example["data"][:1]}}
    ).encode()
    if args.modes:
        return run_modes(project, args, bundle, bundle_dir, exported, compiled, body, load_before)
    in_process = project.python(IN_PROCESS, str(bundle), str(args.requests))
    prediction_log = bundle_dir.parent / "logs" if args.prediction_log else None
    starts = servers(project, baseline, prediction_log, compiled)
    http = http_benchmark(starts, bundle, body, args.requests, args.repeat, args.client)
    log_in_process = None
    if args.prediction_log:
        projects = {"this server": project} | ({"baseline server": baseline} if baseline else {})
        log_in_process = log_benchmark(projects, bundle, args.requests, args.repeat)
    images = None
    if not args.no_docker:
        if docker("info").returncode != 0:
            print("no Docker engine answers: image comparison skipped", flush=True)
        else:
            base_image = os.environ.get("BASE_IMAGE", "python:3.11-slim-bookworm")
            rounds = 1 if args.quick else max(args.repeat, 3)
            images = image_benchmark(
                project, exported["version"], base_image, compiled, body, args.requests, rounds,
                args.client,
            )  # fmt: skip
            if not args.keep_images:  # MLflow's stays for the next run to reuse
                for name in (SKLEARN_IMAGE, ONNX_IMAGE):
                    if name in images:
                        docker("image", "rm", "--force", images[name]["tag"])
    shutil.rmtree(bundle_dir.parent, ignore_errors=True)
    print(report(in_process, http, images, load_before, args.client, log_in_process))
    return 0


def run_modes(project, args, bundle, bundle_dir, exported, compiled, body, load_before) -> int:
    """--modes: export the challenger (or copy the champion as one) and compare the modes."""
    second = bundle_dir.parent / "challenger"
    done = subprocess.run(
        [str(project.bin / "python"), "-c", EXPORT, project.package, str(second), args.challenger],
        cwd=project.root, env=project.env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode == 0:
        challenger = json.loads(done.stdout.strip().splitlines()[-1])
        both_compiled = compiled and (second / "model" / "model.onnx").is_file()
    else:
        print(f"no version '{args.challenger}': a copy of the champion stands in", flush=True)
        challenger = project.python(COPY_AS_OTHER_VERSION, str(bundle), str(second))
        both_compiled = compiled
    runtime = "onnx" if both_compiled else "scikit-learn"
    versions = f"champion {exported['version']}, challenger {challenger['version']}"
    results = modes_benchmark(
        project, bundle, second, runtime, body, args.requests, args.repeat, args.client
    )
    shutil.rmtree(bundle_dir.parent, ignore_errors=True)
    print(modes_report(results, runtime, versions, load_before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
