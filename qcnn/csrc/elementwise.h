/* Element-wise activations of imported networks (sigmoid, SiLU, hard-swish, GELU, ...); see
 * elementwise.c.  Callers (qcnn/kernels.py `unary`) validate the arrays: the kernel trusts them. */
#ifndef QCNN_ELEMENTWISE_H
#define QCNN_ELEMENTWISE_H

#include <stddef.h>

enum {
    QC_UNARY_SIGMOID = 0,      /* 1 / (1 + e^-x) */
    QC_UNARY_SILU = 1,         /* x * sigmoid(x) */
    QC_UNARY_HARDSIGMOID = 2,  /* max(0, min(1, alpha * x + beta)) */
    QC_UNARY_HARDSWISH = 3,    /* x * max(0, min(1, x / 6 + 1/2)) */
    QC_UNARY_TANH = 4,
    QC_UNARY_GELU = 5,         /* x / 2 * (1 + erf(x / sqrt 2)) */
    QC_UNARY_LEAKYRELU = 6,    /* x < 0 ? alpha * x : x */
    QC_UNARY_ERF = 7,
    QC_UNARY_ELU = 8,          /* x < 0 ? alpha * (e^x - 1) : x */
    QC_UNARY_COUNT = 9
};

/* y[i] = f(x[i]) for i < n; y may be x (in place). */
void qc_unary_f32(const float *x, float *y, size_t n, int kind, float alpha, float beta);

/* Per-channel scale and shift with a fused activation (QC_ACT_*, qcnn.h), the batch norm that has no
 * convolution before it (DenseNet's BN-ReLU): y[p, ch] = act(x[p, ch] * scale[ch] + shift[ch]) for
 * npix rows of c channels; y may be x. */
void qc_affine_f32(const float *x, float *y, size_t npix, int c, const float *scale, const float *shift, int act);

#endif
