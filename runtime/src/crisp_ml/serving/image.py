"""The serving image: stage a build context from the registry, build it, run it, check its answers.

    build/image/requirements.txt   the dependency group of pyproject.toml for the model's runtime:
                                   `serve-onnx` for a model compiled to ONNX, else `serve`
    build/image/app/crisp_ml/      the serving modules of the runtime (no MLflow among them)
    build/image/bundle/            the model version and its manifest (see export.py)

`build_and_verify()` is what 05_deployment and `make image` call. The Docker engine is reached
through the Docker SDK (DOCKER_HOST and friends are honoured); BASE_IMAGE in the environment picks
the base image (the Dockerfile's default is python:3.11-slim-bookworm).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..project import project_root, settings
from . import bundle as bundle_files
from . import export
from . import model as served

PACKAGE = __package__.split(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# What the image runs: the serving modules that import neither MLflow nor Docker.
RUNTIME_MODULES = (
    "__init__.py",
    "__main__.py",
    "app.py",
    "bundle.py",
    "integrity.py",
    "model.py",
    "onnx_model.py",
    "predlog.py",
    "schema.py",
)
CONTAINER_PORT = 8080
Echo = Callable[[str], Any]


class ImageError(RuntimeError):
    """The image could not be built or does not answer as the model does."""


class EngineUnavailable(ImageError):
    """No Docker engine answers."""


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    size_bytes: int
    version: str
    context: Path

    @property
    def bundle(self) -> Path:
        return self.context / "bundle"


def context_dir() -> Path:
    return project_root() / "build" / "image"


def dockerfile() -> Path:
    return project_root() / "Dockerfile"


# --- the build context -----------------------------------------------------------------------------


# The dependency group each runtime's image installs.
SERVE_GROUPS = {"onnx": "serve-onnx", "scikit-learn": "serve"}


def serve_requirements(pyproject: Path | None = None, group: str = "serve") -> list[str]:
    """A serve dependency group (with any groups it includes), as requirement lines."""
    data = tomllib.loads((pyproject or project_root() / "pyproject.toml").read_text())
    groups = data.get("dependency-groups", {})

    def expand(name: str, seen: tuple[str, ...] = ()) -> list[str]:
        if name not in groups:
            raise ImageError(
                f"pyproject.toml has no dependency group '{name}': `make update` brings the "
                "template's groups (or set SERVING_RUNTIME=scikit-learn to build the `serve` one)"
            )
        lines = []
        for item in groups[name]:
            if (
                isinstance(item, dict)
                and "include-group" in item
                and item["include-group"] not in seen
            ):
                lines += expand(item["include-group"], (*seen, name))
            elif isinstance(item, str):
                lines.append(item)
        return lines

    return expand(group)


def requirement_mismatches(requirements: list[str], model_dir: Path) -> list[str]:
    """Packages the model was logged with at a version the serve group does not pin alike."""
    pinned = dict(line.split("==", 1) for line in requirements if "==" in line and ";" not in line)
    logged_file = model_dir / "requirements.txt"
    if not logged_file.exists():
        return []
    problems = []
    for line in logged_file.read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name in pinned and version and pinned[name].strip() != version.strip():
            problems.append(
                f"{name}: the model was logged with {version}, the serve group pins {pinned[name]}"
            )
    return problems


def stage(version: str | int | None = None, echo: Echo = print) -> tuple[Path, dict, str]:
    """build/image/: the bundle of a model version (the champion by default), app and the
    requirements of the runtime that will serve it (returned with the manifest)."""
    context = context_dir()
    if context.exists():
        shutil.rmtree(context)
    app = context / "app" / PACKAGE
    (app / "serving").mkdir(parents=True)
    shutil.copy2(PACKAGE_DIR / "__init__.py", app / "__init__.py")
    for name in RUNTIME_MODULES:
        shutil.copy2(PACKAGE_DIR / "serving" / name, app / "serving" / name)
    bundle, manifest = export.export_bundle(version, context / "bundle")
    runtime = served.chosen_runtime(bundle / bundle_files.MODEL_DIR)
    requirements = serve_requirements(group=SERVE_GROUPS[runtime])
    (context / "requirements.txt").write_text("\n".join(requirements) + "\n")
    for problem in requirement_mismatches(requirements, bundle / "model"):
        echo(f"warning: {problem}; align them or the image may load the model differently")
    return context, manifest, runtime


def labels(manifest: dict) -> dict[str, str]:
    """OCI annotations plus the model's identity, readable with `docker inspect`."""
    model, project = manifest["model"], settings()
    return {
        "org.opencontainers.image.title": f"{project.image_name} model server",
        "org.opencontainers.image.description": f"Serves registered model {model['name']} version {model['version']}",
        "org.opencontainers.image.version": str(model["version"]),
        "org.opencontainers.image.revision": model.get("git_commit", "unknown"),
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "org.opencontainers.image.vendor": project.author,
        "org.opencontainers.image.licenses": project.license,
        "ml.model.name": model["name"],
        "ml.model.version": str(model["version"]),
        "ml.model.run-id": model.get("run_id", "unknown"),
        "ml.model.git-commit": model.get("git_commit", "unknown"),
        "ml.model.data-digest": model.get("data_digest", "unknown"),
        "ml.server.version": __version__,
    }


# --- the engine ------------------------------------------------------------------------------------


def engine():
    """A Docker SDK client that answers, or EngineUnavailable saying what to do."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env()
        client.ping()
    except DockerException as error:
        raise EngineUnavailable(
            f"no Docker engine reachable ({str(error).splitlines()[0][:160]}). Start Docker "
            "(Docker Desktop, `systemctl start docker`, or set DOCKER_HOST) and run this again."
        ) from None
    return client


def _hint(build_output: str) -> str:
    """What to do when the build stopped at its first line: the base image could not be pulled."""
    if "Step 2/" in build_output and "Step 3/" not in build_output:
        return (
            "\nThe base image could not be had. Pull it (`docker pull python:3.11-slim-bookworm`), "
            "or set BASE_IMAGE to an image the engine has; or skip the image in the pipeline with "
            "`--set deployment.build_image=false`."
        )
    return ""


def build(
    version: str | int | None = None, base_image: str | None = None, echo: Echo = print
) -> BuiltImage:
    """Stage the context and build `<image>:<model version>` (and `:latest`) with its labels."""
    if not dockerfile().exists():
        raise ImageError(
            f"{dockerfile()} is missing: this project was generated without the Docker option "
            "(re-generate it with docker=true, or write a Dockerfile)"
        )
    client = engine()
    context, manifest, runtime = stage(version, echo)
    model_version = str(manifest["model"]["version"])
    tag = f"{settings().image_name}:{model_version}"
    base_image = base_image or os.environ.get("BASE_IMAGE") or None
    echo(
        f"building {tag} from {context.relative_to(project_root())}"
        + (f" on {base_image}" if base_image else "")
        + f", served by {runtime}"
    )
    started = time.monotonic()
    output: list[str] = []
    stream = client.api.build(
        path=str(project_root()), dockerfile="Dockerfile", tag=tag, labels=labels(manifest),
        buildargs={"SERVING_RUNTIME": runtime, **({"BASE_IMAGE": base_image} if base_image else {})},
        rm=True, forcerm=True, pull=False, decode=True,
    )  # fmt: skip
    for chunk in stream:
        if "error" in chunk:
            tail = "".join(output[-30:])
            raise ImageError(f"docker build failed: {chunk['error'].strip()}\n{tail}{_hint(tail)}")
        if text := chunk.get("stream"):
            output.append(text)
            if text.startswith("Step "):
                echo(f"  {text.strip()}")
    client.api.tag(tag, settings().image_name, "latest")
    size = client.images.get(tag).attrs["Size"]
    echo(f"built {tag} ({size / 1e6:.0f} MB) in {time.monotonic() - started:.0f} s")
    return BuiltImage(tag, size, model_version, context)


# --- running and checking it -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(tag: str, env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[str]:
    """Run the image read-only on a free loopback port until healthy; yields its base URL; removes
    the container afterwards."""
    from docker.errors import NotFound

    client = engine()
    port = free_port()
    container = client.containers.run(
        tag, detach=True, read_only=True, tmpfs={"/tmp": "rw,size=16m"},
        ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", port)}, environment=env or {},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, container, timeout)
        yield url
    finally:
        with suppress(NotFound):  # already gone: nothing to clean
            container.remove(force=True)


def wait_until_ready(url: str, container, timeout: float) -> float:
    """Seconds until /ping answered 200; ImageError with the container's log if it died first."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        container.reload()
        if container.status in ("exited", "dead"):
            logs = container.logs().decode(errors="replace")[-3000:]
            raise ImageError(f"the container stopped before answering /ping:\n{logs}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise ImageError(f"no answer from {url}/ping within {timeout:.0f} s")


def post_json(url: str, payload: dict, headers: dict[str, str] | None = None) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def expected_answers(bundle: Path) -> tuple[dict, dict]:
    """The input example and what the model predicts for it in this process (classes and
    probabilities for a classifier)."""
    from . import schema

    model = served.load(bundle / "model")
    example = model.input_example
    if not example:
        raise ImageError("the model has no input example to check the image with")
    values = dict(
        zip(example["columns"], map(list, zip(*example["data"], strict=True)), strict=True)
    )
    inputs = model.inputs(schema.check(values, model.columns).arrays)
    expected = {"predictions": model.predict(inputs)}
    if model.task == "classification":
        expected["probabilities"] = model.predict_proba(inputs)
    return example, expected


def same_answers(got: dict, expected: dict, tolerance: float = 1e-9) -> bool:
    def close(a: Any, b: Any) -> bool:
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, float) and isinstance(b, int | float):
            return abs(a - b) <= tolerance * max(1.0, abs(b))
        return a == b

    return all(close(got.get(key), value) for key, value in expected.items())


def verify(image: BuiltImage, echo: Echo = print) -> None:
    """Run the image and compare its answer to the input example with the in-process prediction."""
    example, expected = expected_answers(image.bundle)
    query = "?probabilities=true" if "probabilities" in expected else ""
    with running(image.tag) as url:
        got = post_json(f"{url}/invocations{query}", {"dataframe_split": example})
    if not same_answers(got, expected):
        raise ImageError(f"{image.tag} answers {got}, the model in this process {expected}")
    echo(f"verified {image.tag}: its answers to the input example match the model's")


def build_and_verify(
    version: str | int | None = None, *, base_image: str | None = None, echo: Echo = print
) -> str | None:
    """Build the image of a model version (the champion by default), run it, check it answers
    the input example as the model does in this process, and record the tag on the version.

    Returns the image tag, or None, said plainly and not raised, when the project ships no image
    (generated without the Docker option) or no Docker engine is reachable. Raises ImageError when
    the build fails or the image answers differently, RegistryError when there is no such version.
    """
    if not dockerfile().exists():
        echo(f"image not built: {dockerfile().name} is missing (project generated without Docker)")
        return None
    try:
        engine()
    except EngineUnavailable as error:
        echo(f"image not built: {error}")
        return None
    image = build(version, base_image, echo)
    verify(image, echo)
    export.record_image(image.version, image.tag)
    echo(
        f"recorded tag '{export.IMAGE_TAG}={image.tag}' on {settings().image_name} version {image.version}"
    )
    return image.tag
