#!/usr/bin/env bash
# The C kernels' extra checks, run by CI after the test suite:
#   1. the portable scalar fallback (SIMD disabled by QCNN_DISABLE_SIMD=1) passes the kernel tests;
#   2. capped at AVX2 (QCNN_ISA=avx2, the common CPU), the layers choose and pass as there;
#   3. an AddressSanitizer + UndefinedBehaviorSanitizer build of the extension passes them too;
#   4. under that build, the fuzzers of everything that feeds the kernels from untrusted input: the
#      .qcnn loader (each file that loads then runs through every kernel), random conv/pooling
#      geometry against the work/memory budget and the pooling definition, and the ONNX importer
#      and restricted unpickler fuzzers where the suite has them (any test named *fuzz*), with
#      QCNN_FUZZ_EXAMPLES examples each and a hard time limit;
#   5. the C driver tests/c/variants_vs_scalar.c (every variant against scalar, as check-arm.sh
#      runs it on ARM), built with the package's flags and run on this CPU.
# The sanitizer build goes into a temporary copy of the package, never over the installed one.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
tests=(tests/test_kernels_pq.py tests/test_kernels_widescan.py tests/test_fastscan_accuracy.py tests/test_kernels_dense.py tests/test_layers.py tests/test_kernels_elementwise.py tests/test_pq_kmeans.py)
fuzz_examples="${QCNN_FUZZ_EXAMPLES:-200}"
fuzz_seconds="${QCNN_FUZZ_SECONDS:-600}"

echo "== kernel tests, scalar fallback (QCNN_DISABLE_SIMD=1)"
(cd "$repo" && QCNN_DISABLE_SIMD=1 "$py" -m pytest -q -p no:cacheprovider "${tests[@]}")

echo "== kernel tests, capped at AVX2 (QCNN_ISA=avx2)"
(cd "$repo" && QCNN_ISA=avx2 "$py" -m pytest -q -p no:cacheprovider "${tests[@]}")

echo "== kernel tests, ASan + UBSan build"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$repo/qcnn" "$repo/tests" "$repo/assets" "$repo/pyproject.toml" "$repo/README.md" "$tmp/"
rm -f "$tmp"/qcnn/_kernels*.so
(cd "$tmp" && QCNN_SANITIZE=1 "$py" -c "import runpy; runpy.run_path('qcnn/_build_kernels.py')['ffibuilder'].compile(tmpdir='.')" >/dev/null)
ls "$tmp"/qcnn/_kernels*.so >/dev/null
# Python itself is not instrumented: the runtimes are preloaded, leak checks (Python's own
# allocations) are off, any other report fails the run.
sanitized() {
    (cd "$tmp" && PYTHONPATH="$tmp" LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
        ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$@")
}
sanitized "$py" -m pytest -q -p no:cacheprovider "${tests[@]}"

echo "== fuzzers, ASan + UBSan build ($fuzz_examples examples each, at most $fuzz_seconds s)"
fuzz_files=(tests/test_modelfile.py tests/test_hostile.py tests/test_pooling_border.py)
for f in "$repo"/tests/test_onnx*.py "$repo"/tests/test_models_*.py "$repo"/tests/test_*pickle*.py; do
    [ -e "$f" ] && fuzz_files+=("tests/$(basename "$f")")
done
QCNN_FUZZ_EXAMPLES="$fuzz_examples" sanitized timeout --signal=INT "$fuzz_seconds" "$py" -m pytest -q -p no:cacheprovider \
    -k "fuzz or budget_bounds or random_geometry or corrupted_bytes_never_crash" "${fuzz_files[@]}"

echo "== C driver, every variant of this CPU against scalar (tests/c/variants_vs_scalar.c)"
build="$(cd "$repo" && "$py" - <<'PY'
import runpy
b = runpy.run_path("qcnn/_build_kernels.py")
print(" ".join(b["flags"]))
print(" ".join(str(b["CSRC"] / s) for s in b["SOURCES"]))
PY
)"
"$py" "$repo/tests/c/gen_cases.py" "$tmp/cases.h"
# shellcheck disable=SC2086  # word splitting of the flag and source lists is meant
gcc $(sed -n 1p <<<"$build") -Wall -I"$repo/qcnn/csrc" -I"$tmp" -o "$tmp/driver" "$repo/tests/c/variants_vs_scalar.c" \
    $(sed -n 2p <<<"$build") -lm
"$tmp/driver" --expect "$(cd "$repo" && "$py" -c 'from qcnn import kernels; print(kernels.cpu_isa())')" | tail -n 1
