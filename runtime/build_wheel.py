"""Build the runtime's wheel with the standard library alone, byte for byte the same every time.

Generation runs this (hooks/post_gen_project.py) to put the runtime beside a new project, in
`vendor/`, until the runtime is published to a package index: cookiecutter's own interpreter has
no build backend, and a reproducible wheel keeps the project's uv.lock hash stable.

    python runtime/build_wheel.py OUT_DIR     prints the wheel's path
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "crisp_ml"
# What the package is made of: a stray file in the checkout (an editor's backup) stays out, and a
# new kind of file fails the wheel's test until it is named here.
SOURCE_SUFFIXES = (".py", ".sh")  # .sh: serving/slim_venv.sh, which the image's builder runs
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry holds: no build time leaks in


def version(root: Path = HERE) -> str:
    text = (root / "src" / PACKAGE / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no __version__ in {root / 'src' / PACKAGE / '__init__.py'}")
    return found[1]


def metadata(project: dict, version: str) -> str:
    lines = [
        "Metadata-Version: 2.4",
        f"Name: {project['name']}",
        f"Version: {version}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project['requires-python']}",
    ]
    lines += [f"Requires-Dist: {spec}" for spec in project.get("dependencies", [])]
    for extra, specs in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f"Requires-Dist: {_with_extra(spec, extra)}" for spec in specs]
    return "\n".join(lines) + "\n"


def _with_extra(spec: str, extra: str) -> str:
    requirement, _, marker = spec.partition(";")
    condition = f"extra == '{extra}'"
    if marker.strip():
        condition = f"({marker.strip()}) and {condition}"
    return f"{requirement.strip()}; {condition}"


def entry_points(project: dict) -> str:
    scripts = project.get("scripts", {})
    return "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(scripts.items()))


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def files(root: Path = HERE) -> dict[str, bytes]:
    """Archive name to content: the package's sources, then the dist-info files."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    number = version(root)
    source = root / "src" / PACKAGE
    contents = {
        f"{PACKAGE}/{path.relative_to(source).as_posix()}": path.read_bytes()
        for path in sorted(source.rglob("*"))
        if path.is_file() and (path.suffix in SOURCE_SUFFIXES or path.name == "py.typed")
    }
    info = f"{project['name'].replace('-', '_')}-{number}.dist-info"
    contents[f"{info}/METADATA"] = metadata(project, number).encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: crisp-ml build_wheel\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    contents[f"{info}/entry_points.txt"] = entry_points(project).encode()
    record = [_record_line(name, data) for name, data in contents.items()]
    contents[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    return contents


def wheel_name(root: Path = HERE) -> str:
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return f"{project['name'].replace('-', '_')}-{version(root)}-py3-none-any.whl"


def build(out_dir: Path, root: Path = HERE) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel_name(root)
    # Stored, not deflated: compressed bytes depend on the zlib of the machine that builds.
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files(root).items():
            entry = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, data)
    return target


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
