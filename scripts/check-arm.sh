#!/usr/bin/env bash
# The C kernels' NEON variants, checked on this x86 machine (run by CI after check-kernels.sh):
#   1. the package's own compiler flags (qcnn/_build_kernels.py) hold no x86 or -march flag;
#   2. with them, the kernels and the driver tests/c/variants_vs_scalar.c are cross-compiled for
#      AArch64 Linux, by gcc and by clang, and each build runs under qemu-aarch64 on two CPUs:
#      a Cortex-A53 (NEON, no dot products: run-time detection must say "neon") and qemu's "max"
#      (with them: "neondot"), comparing every variant with the scalar reference over the Python
#      kernel tests' shapes (tests/c/gen_cases.py); and once with QCNN_DISABLE_SIMD=1 ("scalar");
#   3. the kernels compile to Mach-O objects for macOS arm64 (clang, stand-in SDK headers).
# Needs the packages of `scripts/install-system-deps.sh --arm` and the venv of `make test`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
cd "$repo"

for tool in aarch64-linux-gnu-gcc clang qemu-aarch64; do
    command -v "$tool" >/dev/null || { echo "check-arm: $tool missing; run: sudo bash scripts/install-system-deps.sh --arm" >&2; exit 1; }
done

build="$("$py" - <<'PY'
import runpy
b = runpy.run_path("qcnn/_build_kernels.py")
print(" ".join(b["flags"]))
print(" ".join(str(b["CSRC"] / s) for s in b["SOURCES"]))
PY
)"
flags="$(sed -n 1p <<<"$build")"
sources="$(sed -n 2p <<<"$build")"
echo "== package flags: $flags"
for f in $flags; do
    case "$f" in -m*|-march*|-mtune*|-mcpu*) echo "check-arm: $f in the package's flags would tie the build to one CPU" >&2; exit 1 ;; esac
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" tests/c/gen_cases.py "$tmp/cases.h"

passed=0 failed=0
drive() {   # qemu-aarch64 -cpu CPU DRIVER --expect LEVEL, its closing "N passed, M failed" added up
    local out
    out="$(qemu-aarch64 -cpu "$1" "$2" --expect "$3")" || { echo "$out"; exit 1; }
    echo "$out"
    read -r p _ f _ <<<"$(tail -n 1 <<<"$out")"
    passed=$((passed + p)) failed=$((failed + f))
}

for cc in aarch64-linux-gnu-gcc "clang --target=aarch64-linux-gnu"; do
    name="${cc%% *}"
    echo "== AArch64 build: $cc"
    # shellcheck disable=SC2086  # word splitting of the flag and source lists is meant
    $cc $flags -Wall -static -Iqcnn/csrc -I"$tmp" -o "$tmp/driver-$name" tests/c/variants_vs_scalar.c $sources -lm
    for run in "cortex-a53 neon" "max neondot"; do
        set -- $run
        echo "== qemu-aarch64 -cpu $1 ($name build): expect $2"
        drive "$1" "$tmp/driver-$name" "$2"
    done
    echo "== qemu-aarch64 -cpu max, QCNN_DISABLE_SIMD=1 ($name build): expect scalar"
    QCNN_DISABLE_SIMD=1 drive max "$tmp/driver-$name" scalar
done

echo "== macOS arm64 objects (clang, stand-in SDK headers: compiled, not linked or run)"
for src in $sources; do
    # shellcheck disable=SC2086
    clang --target=arm64-apple-macos11 $flags -Wall -ffreestanding -isystem tests/c/macos-sdk-standin \
        -c -o "$tmp/macos-$(basename "$src" .c).o" "$src"
done
echo "macOS arm64: $(wc -w <<<"$sources") sources compiled"
echo "check-arm: $passed passed, $failed failed"
