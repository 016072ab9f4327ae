/* Helpers shared by the kernel files: target attributes for the SIMD variants (no -march flags:
 * the shipped build runs on any x86-64 and picks a variant at run time, see isa.c). */
#ifndef QCNN_SIMD_H
#define QCNN_SIMD_H

#include "qcnn.h"

#if defined(__x86_64__) || defined(__i386__)
#define QC_HAVE_X86 1
#include <immintrin.h>
#define QC_AVX2 __attribute__((target("avx2,fma")))
/* Skylake-X level: F for the 16-lane float ops and masked loads/stores, DQ/BW/VL so the compiler
 * may also use masks and the 256-bit forms when it lowers our code.  isa.c checks all four. */
#define QC_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define QC_VNNI __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx2,fma")))
/* A family's table of variants, indexed by qc_isa(): families without a VNNI variant run their
 * AVX-512 one there; without x86 every entry is the scalar one. */
#define QC_VARIANTS(scalar, avx2, avx512) {scalar, avx2, avx512, avx512}
#else
#define QC_HAVE_X86 0
#define QC_VARIANTS(scalar, avx2, avx512) {scalar, scalar, scalar, scalar}
#endif

/* Kernel bodies are written once with compile-time sizes as arguments (kernel width, tile rows);
 * forcing the inlining makes the compiler specialise each call site, so the loops over those
 * sizes unroll and small arrays of vectors stay in registers. */
#define QC_INLINE static inline __attribute__((always_inline))

static inline float qc_act(float v, int act) {
    if (act == QC_ACT_RELU) return v > 0.f ? v : 0.f;
    if (act == QC_ACT_RELU6) return v > 0.f ? (v < 6.f ? v : 6.f) : 0.f;
    return v;
}

#if QC_HAVE_X86
/* Fused activation on a whole vector, applied just before the store. */
QC_AVX512 QC_INLINE __m512 qc_act512(__m512 v, int act) {
    if (act != QC_ACT_NONE) v = _mm512_max_ps(v, _mm512_setzero_ps());
    if (act == QC_ACT_RELU6) v = _mm512_min_ps(v, _mm512_set1_ps(6.f));
    return v;
}

QC_AVX2 QC_INLINE __m256 qc_act256(__m256 v, int act) {
    if (act != QC_ACT_NONE) v = _mm256_max_ps(v, _mm256_setzero_ps());
    if (act == QC_ACT_RELU6) v = _mm256_min_ps(v, _mm256_set1_ps(6.f));
    return v;
}
#endif

#endif
