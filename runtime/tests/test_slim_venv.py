"""slim_venv.sh, the serving image's venv trim, run on a made-up venv with each problem planted.

The venv's python is this one, seeing only the made-up site-packages; pip, apt-get, readelf and
strip are stand-ins that write down how they were called (strip can be told to break its file).
The libraries it strips are copies of real extension modules, so the load that follows a strip is
real. tests/slow/test_image.py checks the built image itself.
"""

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crisp_ml.serving.image import PACKAGE_DIR, SLIM_SCRIPT

SCRIPT = PACKAGE_DIR / "serving" / SLIM_SCRIPT
SITE = Path("lib/python3.11/site-packages")  # in the made-up venv; the script finds python*
TOOLS = {
    "pip": 'echo "pip $*" >> "$CALLS"; exit "${PIP_EXIT:-0}"',
    "apt-get": 'echo "apt-get $*" >> "$CALLS"; exit "${APT_EXIT:-0}"',
    # a library named *nodebug* has no debug sections, as most vendored ones
    "readelf": 'case "$2" in *nodebug*) echo "  [27] .text";; *) echo "  [27] .debug_info";; esac',
    # BREAK_STRIP: strip leaves a file that is no library any more, as it did NumPy's OpenBLAS
    "strip": 'echo "strip $*" >> "$CALLS"; [ -z "${BREAK_STRIP:-}" ] || echo broken > "$2"',
}


def real_extension_module() -> Path:
    """A shared object this interpreter loads; builds that link every module in have none."""
    for name in ("_json", "_bisect", "_ctypes", "_decimal"):
        path = getattr(importlib.import_module(name), "__file__", None)
        if path and path.endswith(".so"):
            return Path(path)
    pytest.skip(f"NO EXTENSION MODULE FILE in {sys.executable}: nothing real to strip and load")


def write_script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def dist(site: Path, name: str, *requires: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


# A file in each place the script clears: none may be left.
LEFT_OUT = (
    "numpy/distutils/core.py", "numpy/_core/_simd.so", "numpy/_core/tests/test_a.py",
    "numpy/__init__.pyi", "numpy/_core/include/numpy/ndarraytypes.h", "yaml/_yaml.pyx",
    "yaml/_yaml.pxd", "yaml/_yaml.c", "numpy/_core/lib/libnpymath.a", "pkg/tests/conftest.py",
    "onnxruntime/capi/libonnxruntime.so.1.32.0", "onnxruntime/tools/convert.py",
    "onnxruntime/transformers/optimizer.py", "onnxruntime/quantization/quantize.py",
    "onnxruntime/datasets/sigmoid.onnx",
)  # fmt: skip
# Real shared objects: an extension module with debug sections, one without, a vendored library.
LIBRARIES = ("numpy/_core/_multiarray.so", "numpy/_core/_nodebug.so", "numpy.libs/libopenblas.so")


@pytest.fixture
def venv(tmp_path) -> Path:
    """A venv as pip leaves it: ONNX Runtime asking for protobuf, and files the server never runs."""
    root = tmp_path / "venv"
    site = root / SITE
    kept = ("numpy/__init__.py", "onnxruntime/capi/_pybind_state.py")
    for name in LEFT_OUT + kept:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("")
    (site / "numpy.libs").mkdir()
    module = real_extension_module()
    for target in LIBRARIES:
        shutil.copy(module, site / target)
    dist(site, "onnxruntime", "numpy", "protobuf", "coloredlogs")
    dist(site, "protobuf")
    (root / "bin").mkdir()
    write_script(root / "bin" / "python", f'exec "{sys.executable}" -S "$@"')
    return root


def slim(venv: Path, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for name, body in TOOLS.items():
        write_script((venv / "bin" if name == "pip" else tools) / name, body)
    calls = tmp_path / "calls"
    calls.write_text("")
    env = {
        "PATH": f"{tools}:/usr/bin:/bin", "CALLS": str(calls), "PYTHONPATH": str(venv / SITE),
        **env,
    }  # fmt: skip
    done = subprocess.run(["sh", str(SCRIPT), str(venv)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    return done, calls.read_text().splitlines()


def site_files(venv: Path) -> set[str]:
    site = venv / SITE
    return {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}


def test_what_the_server_never_runs_goes_and_what_it_runs_stays(venv, tmp_path):
    done, calls = slim(venv, tmp_path)
    assert done.returncode == 0, done.stderr
    assert {f for f in site_files(venv) if not f.endswith("METADATA")} == {
        "numpy/__init__.py", "onnxruntime/capi/_pybind_state.py", *LIBRARIES,
    }  # fmt: skip
    assert "pip uninstall --yes protobuf" in calls, "ONNX Runtime alone asked for it"
    assert "pip uninstall --yes pip setuptools" in calls
    stripped = [c for c in calls if c.startswith("strip")]
    assert stripped == [f"strip --strip-debug {venv / SITE / LIBRARIES[0]}"], (
        "extension modules with debug sections only: never a library a wheel vendors in *.libs"
    )


@pytest.mark.parametrize(
    "another", [("grpcio-status", "protobuf>=5"), ("mlflow-skinny", "protobuf<7,>=3.12.0")]
)
def test_protobuf_stays_when_another_package_asks_for_it(venv, tmp_path, another):
    dist(venv / SITE, *another)
    done, calls = slim(venv, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pip uninstall --yes protobuf" not in calls


def test_a_request_behind_an_extra_is_not_one(venv, tmp_path):
    dist(venv / SITE, "opentelemetry-proto", 'protobuf; extra == "grpc"')
    done, calls = slim(venv, tmp_path)
    assert "pip uninstall --yes protobuf" in calls, done.stderr


def test_a_library_that_no_longer_loads_once_stripped_fails_the_build(venv, tmp_path):
    done, _ = slim(venv, tmp_path, BREAK_STRIP="1")
    assert done.returncode != 0
    assert "_multiarray.so no longer loads once stripped" in done.stderr


def test_a_step_that_fails_fails_the_build(venv, tmp_path):
    done, calls = slim(venv, tmp_path, PIP_EXIT="1")
    assert done.returncode != 0
    assert not [c for c in calls if c.startswith(("apt-get", "strip"))], "it stopped there"


def test_without_binutils_the_symbols_stay_with_a_warning(venv, tmp_path):
    done, calls = slim(venv, tmp_path, APT_EXIT="100")
    assert done.returncode == 0, done.stderr
    assert "no binutils from apt, so debug symbols stay" in done.stderr
    assert not [c for c in calls if c.startswith("strip")]
