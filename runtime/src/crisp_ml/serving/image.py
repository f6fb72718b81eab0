"""The serving image: stage a build context from the registry, build it, run it, check its answers.

    build/image/requirements.txt   the dependency group of pyproject.toml for the model's runtime:
                                   `serve-onnx` for a model compiled to ONNX, else `serve`
    build/image/slim_venv.sh       what the builder stage runs once pip has filled the venv
    build/image/app/crisp_ml/      the serving modules of the runtime (no MLflow among them)
    build/image/bundle/            the model version and its manifest (see export.py)
    build/image/challenger/        the second version for ab and shadow images (arms.py); empty
                                   in single mode, so the Dockerfile's COPY always finds it

An ab or shadow image holds both versions: the `serve-onnx` group only when both are compiled,
else `serve` with SERVING_RUNTIME=scikit-learn for both; its mode, share and routing column are
baked as ENV defaults (`docker run -e SERVING_CHALLENGER_SHARE=0.2` overrides them), and `verify`
checks each version's answer (ab: a request id routed to each; shadow: the challenger's lines in
the container's prediction log).

`build_and_verify()` is what 05_deployment and `make image` call. The Docker engine is reached
through the Docker SDK (DOCKER_HOST and friends are honoured); BASE_IMAGE in the environment picks
the base image (the Dockerfile's default is python:3.11-slim-bookworm).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import textwrap
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
from . import arms, export
from . import bundle as bundle_files
from . import model as served
from .settings import Settings
from .versions import ChallengerMismatch, load_arm, load_challenger

PACKAGE = __package__.split(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parents[1]
SLIM_SCRIPT = "slim_venv.sh"  # the builder stage's: what the server never runs leaves the venv
# What the image runs: the serving modules that import neither MLflow nor Docker.
RUNTIME_MODULES = (
    "__init__.py",
    "__main__.py",
    "app.py",
    "arms.py",
    "bundle.py",
    "gate.py",
    "integrity.py",
    "metrics.py",
    "model.py",
    "onnx_model.py",
    "predlog.py",
    "schema.py",
    "settings.py",
    "versions.py",
)
CONTAINER_PORT = 8080
Echo = Callable[[str], Any]


class ImageError(RuntimeError):
    """The image could not be built or does not answer as the model does."""


class EngineUnavailable(ImageError):
    """No Docker engine answers."""


@dataclass(frozen=True)
class Serving:
    """Which versions an image holds and how it serves them (arms.py): single by default."""

    mode: str = arms.SINGLE
    challenger: str | None = None  # a version number or an alias; None: the `challenger` alias
    share: float = arms.DEFAULT_SHARE
    routing_column: str | None = None

    @classmethod
    def of(cls, mode=None, challenger=None, share=None, routing_column=None) -> Serving:
        """Checked settings (arms.SettingsError naming the setting and the fix)."""
        mode = arms.parse_mode(mode)
        if mode == arms.SINGLE:
            return cls()
        return cls(mode, challenger or export.CHALLENGER, arms.parse_share(share), routing_column)

    @property
    def env(self) -> dict[str, str]:
        """The settings as the server reads them (build args, ENV)."""
        return {
            arms.MODE_ENV: self.mode,
            arms.SHARE_ENV: f"{self.share:g}",
            arms.ROUTING_ENV: self.routing_column or "",
        }


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    size_bytes: int
    version: str
    context: Path
    serving: Serving = Serving()
    challenger_version: str | None = None

    @property
    def bundle(self) -> Path:
        return self.context / "bundle"

    @property
    def challenger(self) -> Path:
        return self.context / "challenger"


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


def stage(
    version: str | int | None = None, echo: Echo = print, serving: Serving = Serving()
) -> tuple[Path, dict, str]:
    """build/image/: the bundle of a model version (the champion by default), the challenger's in
    ab and shadow modes, app and the requirements of the runtime that will serve them (returned
    with the champion's manifest)."""
    context = context_dir()
    if context.exists():
        shutil.rmtree(context)
    try:
        return _stage_into(context, version, echo, serving)
    except BaseException:
        shutil.rmtree(context, ignore_errors=True)  # no context that looks ready to build
        raise


def _stage_into(
    context: Path, version: str | int | None, echo: Echo, serving: Serving
) -> tuple[Path, dict, str]:
    app = context / "app" / PACKAGE
    (app / "serving").mkdir(parents=True)
    shutil.copy2(PACKAGE_DIR / "__init__.py", app / "__init__.py")
    for name in RUNTIME_MODULES:
        shutil.copy2(PACKAGE_DIR / "serving" / name, app / "serving" / name)
    shutil.copy2(PACKAGE_DIR / "serving" / SLIM_SCRIPT, context / SLIM_SCRIPT)
    bundle, manifest = export.export_bundle(version, context / "bundle")
    held = [bundle]
    (context / "challenger").mkdir()
    if serving.mode != arms.SINGLE:
        held.append(_stage_challenger(context / "challenger", bundle, serving))
    runtimes = {served.chosen_runtime(folder / bundle_files.MODEL_DIR) for folder in held}
    runtime = runtimes.pop() if len(runtimes) == 1 else served.SKLEARN  # one runtime for all
    requirements = serve_requirements(group=SERVE_GROUPS[runtime])
    (context / "requirements.txt").write_text("\n".join(requirements) + "\n")
    for folder in held:
        for problem in requirement_mismatches(requirements, folder / "model"):
            echo(f"warning: {problem}; align them or the image may load the model differently")
    return context, manifest, runtime


def _stage_challenger(dest: Path, champion: Path, serving: Serving) -> Path:
    """The challenger's bundle, refused now, with the server's own reasons (versions.py), when the
    server in the image would refuse the pair: another version, the same input columns and task,
    and in ab mode a routing column among them."""
    folder, _ = export.export_bundle(serving.challenger, dest)
    plan = arms.Plan(
        mode=serving.mode, challenger_bundle=str(folder), share=serving.share,
        routing_column=serving.routing_column,
    )  # fmt: skip
    try:
        load_challenger(Settings(plan=plan), load_arm(arms.CHAMPION, champion, None))
    except (arms.SettingsError, ChallengerMismatch) as problem:
        raise ImageError(f"no {serving.mode} image of this pair: {problem}") from None
    return folder


def labels(manifest: dict, challenger: dict | None = None, mode: str = arms.SINGLE) -> dict:
    """OCI annotations plus the model's identity, readable with `docker inspect`; an ab or shadow
    image adds the mode and the challenger's identity."""
    model, project = manifest["model"], settings()
    extra = {}
    if challenger is not None:
        extra = {
            "ml.serving.mode": mode,
            "ml.challenger.name": challenger["model"]["name"],
            "ml.challenger.version": str(challenger["model"]["version"]),
            "ml.challenger.run-id": challenger["model"].get("run_id", "unknown"),
        }
    return extra | {
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
    version: str | int | None = None,
    base_image: str | None = None,
    echo: Echo = print,
    serving: Serving = Serving(),
) -> BuiltImage:
    """Stage the context and build `<image>:<model version>` (and `:latest`) with its labels; an
    ab or shadow image is `<image>:<champion>-<mode>-<challenger>` (no `:latest`)."""
    if not dockerfile().exists():
        raise ImageError(
            f"{dockerfile()} is missing: this project was generated without the Docker option "
            "(re-generate it with docker=true, or write a Dockerfile)"
        )
    client = engine()
    context, manifest, runtime = stage(version, echo, serving)
    model_version = str(manifest["model"]["version"])
    tag = f"{settings().image_name}:{model_version}"
    challenger, challenger_version, serving_args = None, None, {}
    if serving.mode != arms.SINGLE:
        challenger = bundle_files.read_manifest(context / "challenger")
        challenger_version = str(challenger["model"]["version"])
        tag = f"{tag}-{serving.mode}-{challenger_version}"
        serving_args = serving.env
    base_image = base_image or os.environ.get("BASE_IMAGE") or None
    echo(
        f"building {tag} from {context.relative_to(project_root())}"
        + (f" on {base_image}" if base_image else "")
        + f", served by {runtime}"
    )
    started = time.monotonic()
    output: list[str] = []
    stream = client.api.build(
        path=str(project_root()), dockerfile="Dockerfile", tag=tag,
        labels=labels(manifest, challenger, serving.mode),
        buildargs={
            "SERVING_RUNTIME": runtime, **serving_args,
            **({"BASE_IMAGE": base_image} if base_image else {}),
        },
        rm=True, forcerm=True, pull=False, decode=True,
    )  # fmt: skip
    for chunk in stream:
        if "error" in chunk:
            tail = "".join(output[-30:])
            raise ImageError(f"docker build failed: {chunk['error'].strip()}\n{tail}{_hint(tail)}")
        if text := chunk.get("stream"):
            output.append(text)
            if text.startswith("Step "):  # a RUN step's whole script is in the Dockerfile
                echo(f"  {textwrap.shorten(text, width=100, placeholder=' ...')}")
    if challenger is None:
        client.api.tag(tag, settings().image_name, "latest")
    size = client.images.get(tag).attrs["Size"]
    echo(f"built {tag} ({size / 1e6:.0f} MB) in {time.monotonic() - started:.0f} s")
    return BuiltImage(tag, size, model_version, context, serving, challenger_version)


# --- running and checking it -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(tag: str, env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[str]:
    """Run the image read-only on a free loopback port until healthy; yields its base URL; removes
    the container afterwards."""
    with running_container(tag, env, timeout) as (url, _):
        yield url


@contextmanager
def running_container(tag: str, env: dict[str, str] | None = None, timeout: float = 120):
    """As `running`, yielding (base URL, the Docker SDK's container)."""
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
        yield url, container
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
    return post_json_answer(url, payload, headers)[1]


def post_json_answer(url: str, payload: dict, headers: dict[str, str] | None = None):
    """(response headers, parsed body)."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.headers, json.loads(answer.read())


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
    """Run the image and compare its answer to the input example with the in-process prediction;
    an ab or shadow image: each version's answer."""
    if image.serving.mode == arms.AB:
        return _verify_ab(image, echo)
    if image.serving.mode == arms.SHADOW:
        return _verify_shadow(image, echo)
    example, expected = expected_answers(image.bundle)
    query = "?probabilities=true" if "probabilities" in expected else ""
    with running(image.tag) as url:
        got = post_json(f"{url}/invocations{query}", {"dataframe_split": example})
    if not same_answers(got, expected):
        raise ImageError(f"{image.tag} answers {got}, the model in this process {expected}")
    echo(f"verified {image.tag}: its answers to the input example match the model's")


def _verify_ab(image: BuiltImage, echo: Echo) -> None:
    """One request routed to each version (share 0.5 and X-Request-ID routing for the check,
    whatever the image's defaults), each answered as that version answers in this process."""
    env = {arms.SHARE_ENV: "0.5", arms.ROUTING_ENV: ""}
    wanted = {arms.CHAMPION: image.bundle, arms.CHALLENGER: image.challenger}
    with running(image.tag, env) as url:
        for arm, bundle in wanted.items():
            example, expected = expected_answers(bundle)
            query = "?probabilities=true" if "probabilities" in expected else ""
            headers, got = post_json_answer(
                f"{url}/invocations{query}", {"dataframe_split": example},
                {"X-Request-ID": arms.key_for(arm, 0.5, "image-check-")},
            )  # fmt: skip
            version = str(bundle_files.read_manifest(bundle)["model"]["version"])
            if headers.get("X-Model-Arm") != arm or headers.get("X-Model-Version") != version:
                raise ImageError(
                    f"{image.tag}: a request routed to the {arm} (version {version}) was answered "
                    f"by {headers.get('X-Model-Arm')} version {headers.get('X-Model-Version')}"
                )
            if not same_answers(got, expected):
                raise ImageError(
                    f"{image.tag}: the {arm} answers {got}, in this process {expected}"
                )
    echo(f"verified {image.tag}: each version answers the input example as it does here")


def _verify_shadow(image: BuiltImage, echo: Echo, timeout: float = 30) -> None:
    """The champion's answer, then the challenger's shadow lines in the prediction log."""
    log_file = "/tmp/shadow-check.jsonl"
    example, expected = expected_answers(image.bundle)
    _, shadow_expected = expected_answers(image.challenger)
    query = "?probabilities=true" if "probabilities" in expected else ""
    with running_container(image.tag, {"PREDICTION_LOG": log_file}) as (url, container):
        headers, got = post_json_answer(
            f"{url}/invocations{query}", {"dataframe_split": example}, {"X-Request-ID": "check"}
        )
        if not same_answers(got, expected) or headers.get("X-Model-Arm") != arms.CHAMPION:
            raise ImageError(f"{image.tag}: the champion answers {got}, here {expected}")
        deadline, lines = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            output = container.exec_run(["cat", log_file]).output.decode(errors="replace")
            lines = [
                json.loads(x) for x in output.splitlines() if '"arm":"shadow"' in x.replace(" ", "")
            ]
            if len(lines) == len(example["data"]):
                break
            time.sleep(0.3)
    lines.sort(key=lambda line: line["row"])
    shadow = {"predictions": [line["prediction"] for line in lines]}
    if "probabilities" in shadow_expected:
        shadow["probabilities"] = [line.get("probabilities") for line in lines]
    if not same_answers(shadow, shadow_expected):
        raise ImageError(
            f"{image.tag}: the challenger's shadow answers are {shadow}, here {shadow_expected}"
        )
    echo(f"verified {image.tag}: the champion answers and the challenger shadows as they do here")


def build_and_verify(
    version: str | int | None = None,
    *,
    base_image: str | None = None,
    echo: Echo = print,
    serving: Serving = Serving(),
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
    image = build(version, base_image, echo, serving)
    verify(image, echo)
    record(image, echo)
    return image.tag


def record(image: BuiltImage, echo: Echo = print) -> None:
    """Note the tag on the version(s) it serves: `image` for a single-version image, `image_ab` or
    `image_shadow` on both versions of a two-version one (the single image's tag stays)."""
    if image.serving.mode == arms.SINGLE:
        export.record_image(image.version, image.tag)
        where = f"version {image.version}"
        key = export.IMAGE_TAG
    else:
        key = f"{export.IMAGE_TAG}_{image.serving.mode}"
        for version in (image.version, image.challenger_version):
            export.record_image(str(version), image.tag, key=key)
        where = f"versions {image.version} and {image.challenger_version}"
    echo(f"recorded tag '{key}={image.tag}' on {settings().image_name} {where}")
