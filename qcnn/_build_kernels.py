"""cffi (API mode) build of qcnn's C kernels; run by setuptools through `cffi_modules` in setup.py.

QCNN_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer for the kernel tests."""
import os
from pathlib import Path

from cffi import FFI

CSRC = Path("qcnn") / "csrc"
SOURCES = ["isa.c", "depthwise.c"]

CDEF = """
int qc_isa_best(void);
int qc_isa(void);
int qc_set_isa(int isa);
void qc_depthwise_f32(const float *x, int n, int h, int w, int c, const float *wt, const float *bias,
                      int kh, int kw, int sh, int sw, int pt, int pl, float *y, int oh, int ow, int act);
"""

flags = ["-O3", "-std=c11", "-fno-math-errno"]
link = []
if os.environ.get("QCNN_SANITIZE"):
    flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-O1"]
    link += ["-fsanitize=address,undefined"]

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("qcnn._kernels", '#include "qcnn.h"', sources=[str(CSRC / s) for s in SOURCES],
                      include_dirs=[str(CSRC)], extra_compile_args=flags, extra_link_args=link)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
