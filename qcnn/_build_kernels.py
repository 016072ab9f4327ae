"""cffi (API mode) build of qcnn's C kernels; run by setuptools through `cffi_modules` in setup.py.

The Python-visible declarations are read from the public headers, so each prototype is written
once.  QCNN_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer for the kernel
tests (scripts/check-kernels.sh)."""
import hashlib
import os
from pathlib import Path

from cffi import FFI

CSRC = Path("qcnn") / "csrc"
HEADERS = ["qcnn.h", "pq.h", "elementwise.h", "pq_kmeans.h",   # dense kernels; product-quantized layers; activations; codebooks
           "pq_widescan.h"]                                      # uint8 lookups for K = 32..256
SOURCES = ["isa.c", "depthwise.c", "pointwise.c", "dense_ops.c", "pq_tables.c", "pq_exact.c", "pq_fastscan.c",
           "winograd.c", "elementwise.c", "pq_kmeans.c", "pq_widescan.c", "cpuid_cap.c"]


def declarations(header: Path) -> str:
    """A header as cffi's cdef takes it: without include guards and includes (valued #defines stay)."""
    lines = []
    for line in header.read_text().splitlines():
        words = line.split()
        if words and words[0] in ("#ifndef", "#endif", "#include") or (words[:1] == ["#define"] and len(words) < 3):
            continue
        lines.append(line)
    return "\n".join(lines)


# No -march: each SIMD variant carries its own target attribute (qcnn/csrc/simd.h) and the build runs
# on any x86-64 or AArch64 CPU.  -ffp-contract=off: the variants are bit-identical because they round
# alike, so the compiler may not fuse a * b + c by itself (GCC's default in ISO C mode, not clang's).
flags = ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=off"]
link = []
if os.environ.get("QCNN_SANITIZE"):
    flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-O1"]
    link += ["-fsanitize=address,undefined"]


def kernels_digest() -> str:
    """What identifies this build of the kernels: every C source and header, and the flags.  Kernel
    plans (qcnn.pq.engine) are timings of one build, so a plan measured with another is re-measured."""
    h = hashlib.sha256(" ".join(flags).encode())
    for path in sorted(CSRC.glob("*.[ch]")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


ffibuilder = FFI()
ffibuilder.cdef("\n".join(declarations(CSRC / h) for h in HEADERS) + "\nconst char *qc_kernels_digest(void);")
ffibuilder.set_source("qcnn._kernels", "".join(f'#include "{h}"\n' for h in HEADERS)
                      + f'const char *qc_kernels_digest(void) {{ return "{kernels_digest()}"; }}\n',
                      sources=[str(CSRC / s) for s in SOURCES],
                      include_dirs=[str(CSRC)], extra_compile_args=flags, extra_link_args=link)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
