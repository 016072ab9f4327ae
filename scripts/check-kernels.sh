#!/usr/bin/env bash
# The C kernels' extra checks, run by CI after the test suite:
#   1. the portable scalar fallback (SIMD disabled by QCNN_DISABLE_SIMD=1) passes the kernel tests;
#   2. an AddressSanitizer + UndefinedBehaviorSanitizer build of the extension passes them too.
# The sanitizer build goes into a temporary copy of the package, never over the installed one.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
tests=(tests/test_kernels_pq.py tests/test_kernels_dense.py tests/test_layers.py tests/test_pq_kmeans.py)

echo "== kernel tests, scalar fallback (QCNN_DISABLE_SIMD=1)"
(cd "$repo" && QCNN_DISABLE_SIMD=1 "$py" -m pytest -q -p no:cacheprovider "${tests[@]}")

echo "== kernel tests, ASan + UBSan build"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$repo/qcnn" "$repo/tests" "$repo/assets" "$repo/pyproject.toml" "$repo/README.md" "$tmp/"
rm -f "$tmp"/qcnn/_kernels*.so
(cd "$tmp" && QCNN_SANITIZE=1 "$py" -c "import runpy; runpy.run_path('qcnn/_build_kernels.py')['ffibuilder'].compile(tmpdir='.')" >/dev/null)
ls "$tmp"/qcnn/_kernels*.so >/dev/null
# Python itself is not instrumented: the runtimes are preloaded, leak checks (Python's own
# allocations) are off, any other report fails the run.
(cd "$tmp" && PYTHONPATH="$tmp" LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$py" -m pytest -q -p no:cacheprovider "${tests[@]}")
