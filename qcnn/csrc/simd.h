/* Helpers shared by the kernel files: target attribute for the AVX2 variants (no -march flags:
 * the shipped build runs on any x86-64 and picks a variant at run time). */
#ifndef QCNN_SIMD_H
#define QCNN_SIMD_H

#if defined(__x86_64__) || defined(__i386__)
#define QC_HAVE_X86 1
#include <immintrin.h>
#define QC_AVX2 __attribute__((target("avx2,fma")))
#else
#define QC_HAVE_X86 0
#endif

static inline float qc_act(float v, int act) {
    if (act == QC_ACT_RELU) return v > 0.f ? v : 0.f;
    if (act == QC_ACT_RELU6) return v > 0.f ? (v < 6.f ? v : 6.f) : 0.f;
    return v;
}

#endif
