/* Public C entry points of qcnn's kernels.  Callers (qcnn/kernels.py) validate every shape and index
 * before calling: the kernels trust their arguments.
 *
 * Every kernel family keeps a portable scalar reference next to its SIMD variants; which variant
 * runs is chosen once from the CPU's features (see isa.c) and can be forced for tests. */
#ifndef QCNN_H
#define QCNN_H

#include <stdint.h>

enum { QC_ISA_SCALAR = 0, QC_ISA_AVX2 = 1 };
enum { QC_ACT_NONE = 0, QC_ACT_RELU = 1, QC_ACT_RELU6 = 2 };

int qc_isa_best(void);          /* best variant this CPU supports, QCNN_DISABLE_SIMD=1 forces scalar */
int qc_isa(void);               /* variant in use */
int qc_set_isa(int isa);        /* force a variant (capped at qc_isa_best); returns the one in use */

/* Depthwise convolution, NHWC.  x: (n, h, w, c); wt: (kh, kw, c); bias: (c) or NULL;
 * y: (n, oh, ow, c).  Zero padding pt/pl before, implied after. */
void qc_depthwise_f32(const float *x, int n, int h, int w, int c, const float *wt, const float *bias,
                      int kh, int kw, int sh, int sw, int pt, int pl, float *y, int oh, int ow, int act);

#endif
