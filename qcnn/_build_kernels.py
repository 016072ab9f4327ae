"""cffi (API mode) build of qcnn's C kernels; run by setuptools through `cffi_modules` in setup.py.

QCNN_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer for the kernel tests."""
import os
from pathlib import Path

from cffi import FFI

CSRC = Path("qcnn") / "csrc"
SOURCES = ["isa.c", "depthwise.c", "pointwise.c", "dense_ops.c"]

CDEF = """
int qc_isa_best(void);
int qc_isa(void);
int qc_set_isa(int isa);
void qc_depthwise_f32(const float *x, int n, int h, int w, int c, const float *wt, const float *bias,
                      int kh, int kw, int sh, int sw, int pt, int pl, float *y, int oh, int ow, int act);
int qc_pw_panel(void);
void qc_pointwise_f32(const float *a, int m, int k, int lda, const float *bp, int n, const float *bias,
                      float *c, int ldc, int act);
int qc_conv_gemm_f32(const float *xp, int n, int hp, int wp, int c, int c0, int cc, int kh, int kw, int sh, int sw,
                     const float *bp, int cout, const float *bias, float *y, int ldy, int oh, int ow, int act);
void qc_lrn_f32(const float *x, size_t npix, int c, int size, float scale, float beta, float k, float *y);
void qc_pool_f32(const float *x, int n, int h, int w, int c, int kh, int kw, int sh, int sw, int pt, int pb,
                 int pl, int pr, int avg, int include_pad, float *y, int oh, int ow);
"""

# Product-quantized layers (pq.h): table build, exact and fast-scan lookups.
PQ_SOURCES = ["pq_tables.c", "pq_exact.c", "pq_fastscan.c"]
PQ_CDEF = """
void qc_pq_tables_f32(const float *x, int npix, int cin, int groups, int M, int dsub, int ksub,
                      const float *cbt, float *T);
void qc_pq_conv_exact(const float *T, int h, int w, int groups, int M, int ksub, const uint8_t *codes,
                      int kh, int kw, int sh, int sw, int pt, int pl, int cout, const float *bias,
                      float *y, int oh, int ow, int act);
void qc_fs_tables_u8(const float *x, int npix, int cin, int groups, int M, int dsub, const float *cbt,
                     int shared_scale, float *T, uint8_t *Q, float *scale, float *offset_sum);
size_t qc_fs_packed_size(int kh, int kw, int groups, int M, int cout, int nibbles);
void qc_fs_pack_codes(const uint8_t *codes, int kh, int kw, int groups, int M, int cout, int nibbles,
                      uint8_t *packed);
void qc_pq_conv_fastscan(const uint8_t *Q, const float *scale, const float *offset_sum, int h, int w,
                         int groups, int M, const uint8_t *packed, int kh, int kw, int sh, int sw,
                         int pt, int pl, int cout, const float *bias, float *y, int oh, int ow, int act,
                         int nibbles);
"""

flags = ["-O3", "-std=c11", "-fno-math-errno"]
link = []
if os.environ.get("QCNN_SANITIZE"):
    flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-O1"]
    link += ["-fsanitize=address,undefined"]

ffibuilder = FFI()
ffibuilder.cdef(CDEF + PQ_CDEF)
ffibuilder.set_source("qcnn._kernels", '#include "qcnn.h"\n#include "pq.h"',
                      sources=[str(CSRC / s) for s in SOURCES + PQ_SOURCES],
                      include_dirs=[str(CSRC)], extra_compile_args=flags, extra_link_args=link)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
