/* Helpers shared by the kernel files: target attributes for the SIMD variants (no -march flags:
 * the shipped build runs on any x86-64 or AArch64 CPU and picks a variant at run time, see isa.c). */
#ifndef QCNN_SIMD_H
#define QCNN_SIMD_H

#include "qcnn.h"
#include <stdatomic.h>

/* qc_variants_ran's record (isa.c): a variant calls qc_ran(family, its level) on entry.  A relaxed
 * load first, so the shared word is written once per variant, not on every call. */
extern _Atomic int qc_ran_[QC_FAMILY_COUNT];
static inline void qc_ran(int family, int isa) {
    const int bit = 1 << isa;
    if (!(atomic_load_explicit(&qc_ran_[family], memory_order_relaxed) & bit))
        atomic_fetch_or_explicit(&qc_ran_[family], bit, memory_order_relaxed);
}

#if defined(__x86_64__) || defined(__i386__)
#define QC_HAVE_X86 1
#include <immintrin.h>
#define QC_AVX2 __attribute__((target("avx2,fma")))
/* Skylake-X level: F for the 16-lane float ops and masked loads/stores, DQ/BW/VL so the compiler
 * may also use masks and the 256-bit forms when it lowers our code.  isa.c checks all four. */
#define QC_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define QC_VNNI __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx2,fma")))
/* A family's table of variants, indexed by qc_isa(): families without a VNNI variant run their
 * AVX-512 one there; the other architecture's entries are never selected (isa.c). */
#define QC_VARIANTS(scalar, avx2, avx512, neon) {scalar, avx2, avx512, avx512, scalar, scalar}
#else
#define QC_HAVE_X86 0
#endif

#if defined(__aarch64__)
/* NEON is part of every AArch64 CPU and of the compilers' baseline: no attribute needed.  The
 * ARMv8.2 byte dot products are optional (isa.c asks the OS), so only the functions that use them
 * are compiled for them, as the x86 variants are; no -march flag, the build runs on any AArch64.
 * GCC's arm_neon.h offers vdotq_u32 to functions of that architecture level; clang's (up to 15 at
 * least) only when the whole file is compiled with the feature, so there the instruction is
 * written out (a function compiled for dotprod may assemble it). */
#define QC_HAVE_NEON 1
#include <arm_neon.h>
#if defined(__ARM_FEATURE_DOTPROD)
#define QC_DOTPROD
#define qc_udot vdotq_u32
#elif defined(__clang__)
#define QC_DOTPROD __attribute__((target("dotprod")))
static inline __attribute__((always_inline)) uint32x4_t qc_udot(uint32x4_t acc, uint8x16_t a, uint8x16_t b) {
    __asm__("udot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}
#else
#define QC_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define qc_udot vdotq_u32
#endif
/* Families without a dot-product variant run their NEON one on NEONDOT. */
#define QC_VARIANTS(scalar, avx2, avx512, neon) {scalar, scalar, scalar, scalar, neon, neon}
#else
#define QC_HAVE_NEON 0
#endif

#if !QC_HAVE_X86 && !QC_HAVE_NEON
#define QC_VARIANTS(scalar, avx2, avx512, neon) {scalar, scalar, scalar, scalar, scalar, scalar}
#endif

/* Kernel bodies are written once with compile-time sizes as arguments (kernel width, tile rows);
 * forcing the inlining makes the compiler specialise each call site, so the loops over those
 * sizes unroll and small arrays of vectors stay in registers. */
#define QC_INLINE static inline __attribute__((always_inline))

/* Unrolls a loop over such a compile-time size completely.  Clang reads "#pragma GCC unroll N" as
 * an unroll count and then kept the arrays of vectors of the NEON kernels in memory (clang 14 and
 * 16: a store per multiply-add); its own pragma unrolls them fully and they stay in registers. */
#if defined(__clang__)
#define QC_UNROLL _Pragma("clang loop unroll(full)")
#else
#define QC_UNROLL _Pragma("GCC unroll 32")
#endif

/* BODY(N) with N the compile-time constant equal to n, for n in 1..8 (larger n: 8): kernels written
 * with compile-time sizes (vectors per pass, pixels per group) get one specialisation per case. */
#define QC_CASES8(n, BODY)                                                              \
    switch ((n) >= 8 ? 8 : (n)) {                                                       \
    case 1: BODY(1); break;                                                             \
    case 2: BODY(2); break;                                                             \
    case 3: BODY(3); break;                                                             \
    case 4: BODY(4); break;                                                             \
    case 5: BODY(5); break;                                                             \
    case 6: BODY(6); break;                                                             \
    case 7: BODY(7); break;                                                             \
    default: BODY(8); break;                                                            \
    }

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

#if QC_HAVE_NEON
QC_INLINE float32x4_t qc_act128(float32x4_t v, int act) {
    if (act != QC_ACT_NONE) v = vmaxnmq_f32(v, vdupq_n_f32(0.f));   /* a NaN gives 0, as qc_act */
    if (act == QC_ACT_RELU6) v = vminq_f32(v, vdupq_n_f32(6.f));
    return v;
}
#endif

#endif
