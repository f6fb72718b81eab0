#!/bin/sh
# Slims the serving image's venv once pip has filled it: what the server never runs goes (70 MB of
# an ONNX image). The builder stage of the project's Dockerfile runs it: `sh slim_venv.sh VENV`.
#
# Left out: test suites and the installers; type stubs, C headers, Cython sources and static
# libraries (for building against a package); NumPy's distutils and SIMD test module (not f2py:
# SciPy imports it); ONNX Runtime's C API library (its Python binding holds its own copy) and
# model-building tools, and protobuf when only ONNX Runtime asks for it (only those tools import
# it); and the debug symbols of extension modules (uvloop's alone are 12 MB), stripped when apt can
# install binutils, each stripped file then loaded to prove it still loads. Never the libraries
# wheels vendor in `*.libs`: rewriting those (auditwheel patched them) can break them, as
# stripping NumPy's OpenBLAS did. runtime/tests/test_slim_venv.py plants what each step guards
# against.
set -eu
venv=$1
python=$venv/bin/python

# Requirements behind an extra (`protobuf; extra == "..."`) are not installed, so they do not ask.
if "$python" -c 'import importlib.metadata as m, re, sys
asks = {d.name.lower() for d in m.distributions() for r in d.requires or ()
        if re.match(r"protobuf\b", r, re.I) and "extra ==" not in r}
sys.exit(asks != {"onnxruntime"})'; then
    "$venv/bin/pip" uninstall --yes protobuf
fi
"$venv/bin/pip" uninstall --yes pip setuptools

find "$venv/lib" -depth -type d -path '*/site-packages/*' -name tests -prune -exec rm -rf {} +
find "$venv/lib" -type f \( -name '*.pyi' -o -name '*.pxd' -o -name '*.pyx' -o -name '*.h' \
    -o -name '*.c' -o -name '*.a' \) -delete
for site in "$venv"/lib/python*/site-packages; do
    (cd "$site" && rm -rf numpy/distutils numpy/_core/_simd.* onnxruntime/capi/libonnxruntime.so.* \
        onnxruntime/transformers onnxruntime/quantization onnxruntime/tools onnxruntime/datasets)
done

if ! { apt-get update -qq -o Acquire::Retries=0 -o Acquire::http::Timeout=30 \
    && apt-get install -y -qq --no-install-recommends binutils >/dev/null; }; then
    echo "warning: no binutils from apt, so debug symbols stay (about 15 MB)" >&2
    exit 0
fi
find "$venv" -type f -name '*.so*' -not -path '*.libs/*' | while IFS= read -r library; do
    readelf -S "$library" | grep -q '[.]debug_' || continue
    strip --strip-debug "$library"
    if ! "$python" -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$library"; then
        echo "error: $library no longer loads once stripped: strip no file of its kind" >&2
        exit 1
    fi
done
