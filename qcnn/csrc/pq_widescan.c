/* Wide-codebook PQ lookups: K = 32, 64, 128 or 256 codewords (ksub) per subspace, from uint8
 * tables held in SIMD registers (fast-scan, pq_fastscan.c, covers K = 16).
 *
 * Tables: as in fast-scan, each (pixel, group)'s float tables become uint8,
 * T ~ offset[p, g] + scale[p, g] * Q, Q: (npix, groups, M, ksub).  Sums of Q are integers, scaled
 * back to float once per output; the offsets enter as their per-pixel sum, M * offset, or with code
 * counts and mean weights that sum corrected for the expected rounding error, as fast-scan's
 * (qc_u8_debiased_offset, pq_fastscan.c; without it AlexNet's fc6 at C_s' = 4, K = 32, M = 2304
 * is off by 16 % RMS).  A k x k convolution sums the tables of several pixels in one integer sum,
 * so all pixels of a band share one step (`shared_scale`); 1x1 and FC layers keep one per pixel.
 *
 * Lookups: one subspace's table is one register or a few, and one instruction looks up the codes
 * of many output channels in it:
 *   AVX-512 VBMI (QC_ISA_AVX512VNNI level): `vpermb` on a 64-byte register (K <= 64, K = 32
 *     broadcast), `vpermi2b` on two (K = 128), two `vpermi2b` and a byte blend on the code's top
 *     bit (K = 256): 64 lookups per step;
 *   AVX2 (and the AVX-512 level without VBMI): `vpshufb` on the 16-entry chunks of the table,
 *     broadcast to both lanes, combined by a tree of `vpblendvb` on code bits 4, 5, 6, 7:
 *     K / 16 shuffles and K / 16 - 1 blends per 32 lookups (cost grows with K);
 *   NEON: `vqtbl2q_u8` (K = 32), `vqtbl4q_u8` (64), then `vqtbx4q_u8` on the next 64 entries with
 *     the index minus 64 (128, 256: an index out of a 64-entry range leaves the byte alone).
 * The scalar reference is the definition: sum[c] += Q[pixel, g, m, code].
 *
 * Code layout (made once at load by qc_ws_pack_codes), one byte per code: for group g, kernel
 * offset t, block b of QC_WS_BLOCK = 64 output channels of the group and subspace m, 64 bytes at
 * ((((g * taps + t) * nblk + b) * M + m) * 64; byte 2i + e (i < 32, e in {0, 1}) is the code of
 * channel b * 64 + 32 e + i (code 0 past the group's end; those outputs are discarded).  So the
 * even bytes of the 16-bit words of a lookup result are channels 0..31 and the odd ones 32..63.
 *
 * Accumulation (SIMD): the looked-up bytes r are added as 16-bit words into `all` (even + 256 * odd,
 * modulo 2^16) and r >> 8 into `odd`; even = all - (odd << 8) is exact while the even sum fits 16
 * bits, so the sums are widened to 32 bits every WS_FLUSH = 256 subspaces (256 * 255 < 65536).
 * NEON widens each byte into its own 16-bit lane (vaddw), the same flush period. */
#include <math.h>
#include <string.h>
#include "pq.h"
#include "pq_widescan.h"
#include "simd.h"

#define WS_FLUSH 256
#define WS_NB 4             /* blocks per pass (AVX-512); AVX2 takes pairs, NEON one */

int qc_ws_supported(int ksub) { return ksub == 32 || ksub == 64 || ksub == 128 || ksub == 256; }

static inline int chan_of(int j) { return j / 2 + 32 * (j % 2); }

/* ---- tables ---------------------------------------------------------------------------------- */

/* q[i] = round((t[i] - lo) * inv), nearest-even in every variant, at most 255; n is a multiple of 32. */
typedef void (*ws_quant_fn)(const float *t, size_t n, float lo, float inv, uint8_t *q);
typedef void (*ws_range_fn)(const float *t, size_t n, float *lo, float *hi);

static void range_scalar(const float *t, size_t n, float *lo, float *hi) {
    float a = t[0], b = t[0];
    for (size_t i = 1; i < n; i++) {
        a = t[i] < a ? t[i] : a;
        b = t[i] > b ? t[i] : b;
    }
    *lo = a;
    *hi = b;
}

static void quant_scalar(const float *t, size_t n, float lo, float inv, uint8_t *q) {
    for (size_t i = 0; i < n; i++) {
        long v = lrintf((t[i] - lo) * inv);
        q[i] = (uint8_t)(v > 255 ? 255 : v < 0 ? 0 : v);
    }
}

#if QC_HAVE_X86
QC_AVX2 static void range_avx2(const float *t, size_t n, float *lo, float *hi) {
    __m256 a = _mm256_loadu_ps(t), b = a;
    for (size_t i = 8; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(t + i);
        a = _mm256_min_ps(a, v);
        b = _mm256_max_ps(b, v);
    }
    float av[8], bv[8], unused;
    _mm256_storeu_ps(av, a);
    _mm256_storeu_ps(bv, b);
    range_scalar(av, 8, lo, &unused);
    range_scalar(bv, 8, &unused, hi);
}

QC_AVX2 static void quant_avx2(const float *t, size_t n, float lo, float inv, uint8_t *q) {
    const __m256 vinv = _mm256_set1_ps(inv), l = _mm256_set1_ps(lo);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t i = 0; i < n; i += 16) {
        __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(t + i), l), vinv));
        __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(t + i + 8), l), vinv));
        /* saturating packs clamp to 0..255 within 128-bit lanes; the permute restores the order */
        __m256i w = _mm256_packus_epi32(a, b);
        __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w, w), order);
        _mm_storeu_si128((__m128i *)(q + i), _mm256_castsi256_si128(bytes));
    }
}

QC_AVX512 static void quant_avx512(const float *t, size_t n, float lo, float inv, uint8_t *q) {
    const __m512 vinv = _mm512_set1_ps(inv), l = _mm512_set1_ps(lo);
    const __m512i zero = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(t + i), l), vinv));
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtusepi32_epi8(_mm512_max_epi32(v, zero)));
    }
}
#endif

#if QC_HAVE_NEON
static void range_neon(const float *t, size_t n, float *lo, float *hi) {
    float32x4_t a = vld1q_f32(t), b = a;
    for (size_t i = 4; i < n; i += 4) {
        const float32x4_t v = vld1q_f32(t + i);
        a = vminq_f32(a, v);
        b = vmaxq_f32(b, v);
    }
    *lo = vminvq_f32(a);
    *hi = vmaxvq_f32(b);
}

/* vcvtnq: nearest even; the two narrowing moves saturate to 0..255 as quant_scalar clamps. */
static void quant_neon(const float *t, size_t n, float lo, float inv, uint8_t *q) {
    const float32x4_t vinv = vdupq_n_f32(inv), l = vdupq_n_f32(lo);
    for (size_t i = 0; i < n; i += 16) {
        uint16x8_t w[2];
        for (int j = 0; j < 2; j++) {
            const int32x4_t a = vcvtnq_s32_f32(vmulq_f32(vsubq_f32(vld1q_f32(t + i + 8 * j), l), vinv));
            const int32x4_t b = vcvtnq_s32_f32(vmulq_f32(vsubq_f32(vld1q_f32(t + i + 8 * j + 4), l), vinv));
            w[j] = vcombine_u16(vqmovun_s32(a), vqmovun_s32(b));
        }
        vst1q_u8(q + i, vcombine_u8(vqmovn_u16(w[0]), vqmovn_u16(w[1])));
    }
}
#endif

/* The float tables of one (pixel, group), (M, ksub), and their smallest and largest entries. */
typedef void (*ws_build_fn)(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t,
                            float *lo, float *hi);

static void build_scalar(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t,
                         float *lo, float *hi) {
    qc_pq_table_rows(xg, cin_g, M, dsub, ksub, cbt_g, t);     /* its SIMD variants are bit-identical */
    range_scalar(t, (size_t)M * ksub, lo, hi);
}

#if QC_HAVE_X86
QC_AVX2 static void build_avx2(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t,
                               float *lo, float *hi) {
    qc_pq_table_rows(xg, cin_g, M, dsub, ksub, cbt_g, t);
    range_avx2(t, (size_t)M * ksub, lo, hi);
}

/* Four pixels of one group at a time, 16 codewords per pass: eight chains in eight of the sixteen
 * registers, and each codebook load serves four pixels (one pixel at a time, rows_avx2 loads a
 * codebook vector per multiply-add).  Same fused multiply-adds in the same order as rows_scalar
 * (pq_tables.c), so bit-identical tables; the range is taken in registers as they are made. */
QC_AVX2 QC_INLINE void build4_avx2_d(const float *x0, size_t xstride, int cin_g, int M, const int dsub, int K,
                                     const float *cbt_g, float *t, float *lo, float *hi) {
    __m256 mn[4], mx[4];
    for (int p = 0; p < 4; p++) mn[p] = _mm256_set1_ps(INFINITY), mx[p] = _mm256_set1_ps(-INFINITY);
    const size_t n = (size_t)M * K;
    for (int m = 0; m < M; m++) {
        const int rest = cin_g - m * dsub, dm = rest < dsub ? rest : dsub;
        const float *cb = cbt_g + (size_t)m * dsub * K, *xs = x0 + m * dsub;
        for (int k = 0; k < K; k += 16) {
            __m256 a[4][2];
            for (int p = 0; p < 4; p++) a[p][0] = a[p][1] = _mm256_setzero_ps();
#define WS4A_FMAS(DM)                                                                              \
            for (int d = 0; d < (DM); d++) {                                                       \
                const float *row = cb + (size_t)d * K + k;                                         \
                const __m256 c0 = _mm256_loadu_ps(row), c1 = _mm256_loadu_ps(row + 8);             \
                for (int p = 0; p < 4; p++) {                                                      \
                    const __m256 xv = _mm256_broadcast_ss(xs + p * xstride + d);                   \
                    a[p][0] = _mm256_fmadd_ps(xv, c0, a[p][0]);                                    \
                    a[p][1] = _mm256_fmadd_ps(xv, c1, a[p][1]);                                    \
                }                                                                                  \
            }
            if (dm == dsub) {
                WS4A_FMAS(dsub)
            } else {
                WS4A_FMAS(dm)
            }
#undef WS4A_FMAS
            for (int p = 0; p < 4; p++) {
                float *tp = t + p * n + (size_t)m * K + k;
                _mm256_storeu_ps(tp, a[p][0]);
                _mm256_storeu_ps(tp + 8, a[p][1]);
                mn[p] = _mm256_min_ps(mn[p], _mm256_min_ps(a[p][0], a[p][1]));
                mx[p] = _mm256_max_ps(mx[p], _mm256_max_ps(a[p][0], a[p][1]));
            }
        }
    }
    for (int p = 0; p < 4; p++) {
        float v[8], unused;
        _mm256_storeu_ps(v, mn[p]);
        range_scalar(v, 8, lo + p, &unused);
        _mm256_storeu_ps(v, mx[p]);
        range_scalar(v, 8, &unused, hi + p);
    }
}

QC_AVX2 static void build4_avx2(const float *x0, size_t xstride, int cin_g, int M, int dsub, int ksub,
                                const float *cbt_g, float *t, float *lo, float *hi) {
    switch (dsub) {
    case 1: build4_avx2_d(x0, xstride, cin_g, M, 1, ksub, cbt_g, t, lo, hi); break;
    case 2: build4_avx2_d(x0, xstride, cin_g, M, 2, ksub, cbt_g, t, lo, hi); break;
    case 3: build4_avx2_d(x0, xstride, cin_g, M, 3, ksub, cbt_g, t, lo, hi); break;
    case 4: build4_avx2_d(x0, xstride, cin_g, M, 4, ksub, cbt_g, t, lo, hi); break;
    case 8: build4_avx2_d(x0, xstride, cin_g, M, 8, ksub, cbt_g, t, lo, hi); break;
    default: build4_avx2_d(x0, xstride, cin_g, M, dsub, ksub, cbt_g, t, lo, hi); break;
    }
}

/* Up to 128 codewords (eight registers, eight independent chains) per pass, the range taken in
 * registers as the tables are made: the same fused multiply-adds in the same order as rows_scalar
 * (pq_tables.c), so bit-identical tables.  DSUB and K are constants in the instantiations, so the
 * loops over channels and registers unroll (GCC -O3 unrolls them fully without a pragma). */
#define WS_ACCS(K) ((K) >= 128 ? 8 : (K) / 16)
#define WS_FMAS(DM)                                                                                \
    for (int d = 0; d < (DM); d++) {                                                               \
        const __m512 xv = _mm512_set1_ps(xs[d]);                                                   \
        const float *row = cb + (size_t)d * K + k;                                                 \
        for (int j = 0; j < WS_ACCS(K); j++) a[j] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(row + 16 * j), a[j]); \
    }

QC_AVX512 QC_INLINE void build_avx512_kd(const float *xg, int cin_g, int M, const int dsub, const int K,
                                         const float *cbt_g, float *t, float *lo, float *hi) {
    __m512 mn = _mm512_set1_ps(INFINITY), mx = _mm512_set1_ps(-INFINITY);
    for (int m = 0; m < M; m++) {
        const int rest = cin_g - m * dsub, dm = rest < dsub ? rest : dsub;
        const float *xs = xg + m * dsub, *cb = cbt_g + (size_t)m * dsub * K;
        float *tm = t + (size_t)m * K;
        for (int k = 0; k < K; k += 16 * WS_ACCS(K)) {
            __m512 a[8];
            for (int j = 0; j < WS_ACCS(K); j++) a[j] = _mm512_setzero_ps();
            if (dm == dsub) {
                WS_FMAS(dsub)
            } else {
                WS_FMAS(dm)
            }
            for (int j = 0; j < WS_ACCS(K); j++) {
                _mm512_storeu_ps(tm + k + 16 * j, a[j]);
                mn = _mm512_min_ps(mn, a[j]);
                mx = _mm512_max_ps(mx, a[j]);
            }
        }
    }
    *lo = _mm512_reduce_min_ps(mn);
    *hi = _mm512_reduce_max_ps(mx);
}

/* Four pixels of one group at a time, 64 codewords per pass: sixteen chains, and each codebook
 * load serves four pixels.  One pixel at a time, the table build streamed its codebooks from L2
 * (AlexNet's conv4: 98 KB per group, one load per multiply-add) and was bound by it. */
QC_AVX512 QC_INLINE void build4_avx512_kd(const float *x0, size_t xstride, int cin_g, int M, const int dsub,
                                          const int K, const float *cbt_g, float *t, float *lo, float *hi) {
    enum { NA = 4 };
    const int na = K >= 64 ? NA : K / 16;
    __m512 mn[4], mx[4];
    for (int p = 0; p < 4; p++) mn[p] = _mm512_set1_ps(INFINITY), mx[p] = _mm512_set1_ps(-INFINITY);
    const size_t n = (size_t)M * K;
    for (int m = 0; m < M; m++) {
        const int rest = cin_g - m * dsub, dm = rest < dsub ? rest : dsub;
        const float *cb = cbt_g + (size_t)m * dsub * K, *xs = x0 + m * dsub;
        for (int k = 0; k < K; k += 16 * na) {
            __m512 a[4][NA];
            for (int p = 0; p < 4; p++)
                for (int j = 0; j < na; j++) a[p][j] = _mm512_setzero_ps();
#define WS4_FMAS(DM)                                                                               \
            for (int d = 0; d < (DM); d++) {                                                       \
                const float *row = cb + (size_t)d * K + k;                                         \
                __m512 c[NA];                                                                      \
                for (int j = 0; j < na; j++) c[j] = _mm512_loadu_ps(row + 16 * j);                 \
                for (int p = 0; p < 4; p++) {                                                      \
                    const __m512 xv = _mm512_set1_ps(xs[p * xstride + d]);                         \
                    for (int j = 0; j < na; j++) a[p][j] = _mm512_fmadd_ps(xv, c[j], a[p][j]);     \
                }                                                                                  \
            }
            if (dm == dsub) {
                WS4_FMAS(dsub)
            } else {
                WS4_FMAS(dm)
            }
#undef WS4_FMAS
            for (int p = 0; p < 4; p++)
                for (int j = 0; j < na; j++) {
                    _mm512_storeu_ps(t + p * n + (size_t)m * K + k + 16 * j, a[p][j]);
                    mn[p] = _mm512_min_ps(mn[p], a[p][j]);
                    mx[p] = _mm512_max_ps(mx[p], a[p][j]);
                }
        }
    }
    for (int p = 0; p < 4; p++) lo[p] = _mm512_reduce_min_ps(mn[p]), hi[p] = _mm512_reduce_max_ps(mx[p]);
}

#define WS_BUILD4_D(K)                                                                             \
    switch (dsub) {                                                                                \
    case 1: build4_avx512_kd(x0, xstride, cin_g, M, 1, K, cbt_g, t, lo, hi); break;                \
    case 2: build4_avx512_kd(x0, xstride, cin_g, M, 2, K, cbt_g, t, lo, hi); break;                \
    case 3: build4_avx512_kd(x0, xstride, cin_g, M, 3, K, cbt_g, t, lo, hi); break;                \
    case 4: build4_avx512_kd(x0, xstride, cin_g, M, 4, K, cbt_g, t, lo, hi); break;                \
    case 8: build4_avx512_kd(x0, xstride, cin_g, M, 8, K, cbt_g, t, lo, hi); break;                \
    default: build4_avx512_kd(x0, xstride, cin_g, M, dsub, K, cbt_g, t, lo, hi); break;            \
    }

/* The tables of four pixels (x0 + p * xstride) into t + p * M * ksub, their ranges into lo[p], hi[p]. */
QC_AVX512 static void build4_avx512(const float *x0, size_t xstride, int cin_g, int M, int dsub, int ksub,
                                    const float *cbt_g, float *t, float *lo, float *hi) {
    switch (ksub) {
    case 32: WS_BUILD4_D(32); break;
    case 64: WS_BUILD4_D(64); break;
    case 128: WS_BUILD4_D(128); break;
    default: WS_BUILD4_D(256); break;
    }
}

#define WS_BUILD_D(K)                                                                              \
    switch (dsub) {                                                                                \
    case 1: build_avx512_kd(xg, cin_g, M, 1, K, cbt_g, t, lo, hi); break;                          \
    case 2: build_avx512_kd(xg, cin_g, M, 2, K, cbt_g, t, lo, hi); break;                          \
    case 3: build_avx512_kd(xg, cin_g, M, 3, K, cbt_g, t, lo, hi); break;                          \
    case 4: build_avx512_kd(xg, cin_g, M, 4, K, cbt_g, t, lo, hi); break;                          \
    case 8: build_avx512_kd(xg, cin_g, M, 8, K, cbt_g, t, lo, hi); break;                          \
    default: build_avx512_kd(xg, cin_g, M, dsub, K, cbt_g, t, lo, hi); break;                      \
    }

QC_AVX512 static void build_avx512(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g,
                                   float *t, float *lo, float *hi) {
    switch (ksub) {
    case 32: WS_BUILD_D(32); break;
    case 64: WS_BUILD_D(64); break;
    case 128: WS_BUILD_D(128); break;
    default: WS_BUILD_D(256); break;
    }
}
#endif

#if QC_HAVE_NEON
static void build_neon(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t,
                       float *lo, float *hi) {
    qc_pq_table_rows(xg, cin_g, M, dsub, ksub, cbt_g, t);
    range_neon(t, (size_t)M * ksub, lo, hi);
}
#endif

typedef void (*ws_build4_fn)(const float *x0, size_t xstride, int cin_g, int M, int dsub, int ksub,
                             const float *cbt_g, float *t, float *lo, float *hi);

/* Each table's code counts sum to the same total (qcnn/pq/kernels.py code_statistics). */
static uint32_t counts_total(const uint16_t *counts_g, int ksub) {
    uint32_t n = 0;
    for (int k = 0; k < ksub; k++) n += counts_g[k];
    return n;
}

void qc_ws_tables_u8(const float *x, int npix, int cin, int groups, int M, int dsub, int ksub, const float *cbt,
                     const float *wmean, const uint16_t *counts, int shared_scale, float *T, uint8_t *Q, float *scale,
                     float *offset_sum) {
    static const ws_build_fn builds[QC_ISA_COUNT] = QC_VARIANTS(build_scalar, build_avx2, build_avx512, build_neon);
    static const ws_quant_fn quants[QC_ISA_COUNT] = QC_VARIANTS(quant_scalar, quant_avx2, quant_avx512, quant_neon);
#if QC_HAVE_X86
    const ws_build4_fn build4 = qc_isa() >= QC_ISA_AVX512 ? build4_avx512 : qc_isa() == QC_ISA_AVX2 ? build4_avx2 : NULL;
#else
    const ws_build4_fn build4 = NULL;
#endif
    const ws_build_fn build = builds[qc_isa()];
    const ws_quant_fn quant = quants[qc_isa()];
    const int cin_g = cin / groups;
    const size_t n = (size_t)M * ksub;
    float widest = 0.f, lo[4], hi[4];
    /* The tables of up to four pixels go through T, an L1/L2-sized buffer, built, measured and
     * quantized while hot.  A shared step needs every pixel's range first: the tables are built
     * twice, once for the ranges and once to quantize, which measured faster than keeping a band's
     * float tables (K = 128 tables of AlexNet's conv1 input: 26 MB written and read back). */
    for (int pass = shared_scale ? 0 : 1; pass < 2; pass++) {
        const float s = widest > 0.f ? widest / 255.f : 1.f;
        for (int p0 = 0; p0 < npix; p0 += 4) {
            const int np = npix - p0 < 4 ? npix - p0 : 4;
            for (int g = 0; g < groups; g++) {
                const float *xg = x + (size_t)p0 * cin + g * cin_g, *cbt_g = cbt + (size_t)g * M * dsub * ksub;
                if (build4 && np == 4)
                    build4(xg, (size_t)cin, cin_g, M, dsub, ksub, cbt_g, T, lo, hi);
                else
                    for (int i = 0; i < np; i++)
                        build(xg + (size_t)i * cin, cin_g, M, dsub, ksub, cbt_g, T + i * n, lo + i, hi + i);
                for (int i = 0; i < np; i++) {
                    const size_t pg = (size_t)(p0 + i) * groups + g;
                    if (pass == 0) {
                        widest = hi[i] - lo[i] > widest ? hi[i] - lo[i] : widest;
                        continue;
                    }
                    const float step = shared_scale ? s : hi[i] > lo[i] ? (hi[i] - lo[i]) / 255.f : 1.f;
                    quant(T + i * n, n, lo[i], 1.f / step, Q + pg * n);
                    scale[pg] = step;
                    offset_sum[pg] = lo[i] * (float)M;
                    if (wmean && counts) {
                        const uint16_t *cg = counts + (size_t)g * n;
                        offset_sum[pg] = qc_u8_debiased_offset(xg + (size_t)i * cin, wmean + (size_t)g * cin_g, cin_g,
                                                               Q + pg * n, cg, (int)(n / 16), counts_total(cg, ksub), step);
                    }
                }
            }
        }
    }
}

/* ---- codes ----------------------------------------------------------------------------------- */

static inline int blocks_of(int cout_g) { return (cout_g + QC_WS_BLOCK - 1) / QC_WS_BLOCK; }

size_t qc_ws_packed_size(int kh, int kw, int groups, int M, int cout) {
    return (size_t)groups * kh * kw * blocks_of(cout / groups) * M * QC_WS_BLOCK;
}

void qc_ws_pack_codes(const uint8_t *codes, int kh, int kw, int groups, int M, int cout, uint8_t *packed) {
    const int cout_g = cout / groups, nblk = blocks_of(cout_g), taps = kh * kw;
    memset(packed, 0, qc_ws_packed_size(kh, kw, groups, M, cout));
    for (int g = 0; g < groups; g++)
        for (int t = 0; t < taps; t++)
            for (int b = 0; b < nblk; b++)
                for (int m = 0; m < M; m++) {
                    uint8_t *dst = packed + ((((size_t)g * taps + t) * nblk + b) * M + m) * QC_WS_BLOCK;
                    for (int j = 0; j < QC_WS_BLOCK; j++) {
                        const int ch = b * QC_WS_BLOCK + chan_of(j);
                        if (ch < cout_g) dst[j] = codes[((size_t)t * M + m) * cout + g * cout_g + ch];
                    }
                }
}

/* ---- lookups --------------------------------------------------------------------------------- */

/* The valid taps of one output pixel, shared by all its blocks. */
typedef struct {
    int n;
    size_t pix[QC_WS_MAX_TAPS];          /* input pixel index */
    int tap[QC_WS_MAX_TAPS];             /* kernel offset index */
} ws_taps;

/* How a block's integer sums become outputs: y[c] = act(fma(s, sum[c], osum) + bias[c]), c < n. */
typedef struct {
    float s, osum;
    const float *bias;                   /* NULL or the block's first channel */
    float *y;                            /* the block's first output */
    int n, act;
} ws_out;

/* nb <= WS_NB consecutive blocks of one (output pixel, group); codes: the first block's codes at
 * tap 0, tap_stride bytes between taps, M * 64 between blocks. */
typedef void (*ws_blocks_fn)(const uint8_t *Q, int groups, int M, int ksub, const uint8_t *codes, size_t tap_stride,
                             int nb, int g, const ws_taps *tp, const ws_out *out);

static void store_scalar(const uint32_t sum[QC_WS_BLOCK], const ws_out *o) {
    for (int c = 0; c < o->n; c++) {
        float v = fmaf(o->s, (float)sum[c], o->osum);
        if (o->bias) v += o->bias[c];
        o->y[c] = qc_act(v, o->act);
    }
}

static void blocks_scalar(const uint8_t *Q, int groups, int M, int ksub, const uint8_t *codes, size_t tap_stride,
                          int nb, int g, const ws_taps *tp, const ws_out *out) {
    const size_t tstride = (size_t)M * ksub;
    for (int b = 0; b < nb; b++) {
        uint32_t sum[QC_WS_BLOCK] = {0};
        const uint8_t *codes_b = codes + (size_t)b * M * QC_WS_BLOCK;
        for (int k = 0; k < tp->n; k++) {
            const uint8_t *lut = Q + (tp->pix[k] * groups + g) * tstride;
            const uint8_t *cd = codes_b + (size_t)tp->tap[k] * tap_stride;
            for (int m = 0; m < M; m++)
                for (int j = 0; j < QC_WS_BLOCK; j++)
                    sum[chan_of(j)] += lut[(size_t)m * ksub + cd[m * QC_WS_BLOCK + j]];
        }
        store_scalar(sum, out + b);
    }
}

#if QC_HAVE_X86
/* ---- AVX-512 VBMI ---- */

/* 64 lookups in one subspace's table, held in t[0..K/64) (K = 32: broadcast into t[0]). */
QC_VNNI QC_INLINE __m512i look_vbmi(__m512i idx, __m512i t0, __m512i t1, __m512i t2, __m512i t3, const int K) {
    if (K <= 64) return _mm512_permutexvar_epi8(idx, t0);
    if (K == 128) return _mm512_permutex2var_epi8(t0, idx, t1);
    const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1), hi = _mm512_permutex2var_epi8(t2, idx, t3);
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi);
}

#define WSV_STEP(c, A, O)                                                                          \
    do {                                                                                           \
        const __m512i r_ = look_vbmi(_mm512_loadu_si512((const void *)(c)), t0, t1, t2, t3, K);    \
        A = _mm512_add_epi16(A, r_);                                                               \
        O = _mm512_add_epi16(O, _mm512_srli_epi16(r_, 8));                                         \
    } while (0)

/* sum[0..63] += the 64 channels of one block's 16-bit sums (even words: 0..31, odd: 32..63). */
QC_VNNI QC_INLINE void widen_vbmi(uint32_t *sum, __m512i all, __m512i odd) {
    const __m512i even = _mm512_sub_epi16(all, _mm512_slli_epi16(odd, 8));
    const __m512i parts[4] = {_mm512_cvtepu16_epi32(_mm512_castsi512_si256(even)),
                              _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(even, 1)),
                              _mm512_cvtepu16_epi32(_mm512_castsi512_si256(odd)),
                              _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(odd, 1))};
    for (int i = 0; i < 4; i++)
        _mm512_storeu_si512((void *)(sum + 16 * i),
                            _mm512_add_epi32(_mm512_loadu_si512((const void *)(sum + 16 * i)), parts[i]));
}

/* store_scalar's fused multiply-add, 16 channels at a time, masked at the group's end. */
QC_VNNI QC_INLINE void store_vbmi(const uint32_t sum[QC_WS_BLOCK], const ws_out *o) {
    const __m512 s = _mm512_set1_ps(o->s), osum = _mm512_set1_ps(o->osum);
    for (int i = 0; i < 4 && 16 * i < o->n; i++) {
        const int n = o->n - 16 * i;
        const __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
        __m512 v = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(sum + 16 * i))), osum);
        if (o->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o->bias + 16 * i));
        _mm512_mask_storeu_ps(o->y + 16 * i, m, qc_act512(v, o->act));
    }
}

QC_VNNI QC_INLINE void blocks_vbmi_n(const uint8_t *Q, int groups, int M, const int K, const uint8_t *codes,
                                     size_t tap_stride, const int nb, int g, const ws_taps *tp, const ws_out *out) {
    uint32_t sum[WS_NB][QC_WS_BLOCK];
    memset(sum, 0, sizeof sum);
    const __m512i zero = _mm512_setzero_si512();
    __m512i a0 = zero, o0 = zero, a1 = zero, o1 = zero, a2 = zero, o2 = zero, a3 = zero, o3 = zero;
    const size_t bs = (size_t)M * QC_WS_BLOCK, tstride = (size_t)M * K;
    int pending = 0;
    for (int k = 0; k < tp->n; k++) {
        const uint8_t *lut = Q + (tp->pix[k] * groups + g) * tstride;
        const uint8_t *cd = codes + (size_t)tp->tap[k] * tap_stride;
        for (int m = 0; m < M; m++, lut += K, cd += QC_WS_BLOCK) {
            __m512i t0, t1 = zero, t2 = zero, t3 = zero;
            if (K == 32) {
                t0 = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)lut));
            } else {
                t0 = _mm512_loadu_si512((const void *)lut);
                if (K >= 128) t1 = _mm512_loadu_si512((const void *)(lut + 64));
                if (K == 256) {
                    t2 = _mm512_loadu_si512((const void *)(lut + 128));
                    t3 = _mm512_loadu_si512((const void *)(lut + 192));
                }
            }
            WSV_STEP(cd, a0, o0);
            if (nb >= 2) WSV_STEP(cd + bs, a1, o1);
            if (nb >= 3) WSV_STEP(cd + 2 * bs, a2, o2);
            if (nb >= 4) WSV_STEP(cd + 3 * bs, a3, o3);
            if (++pending == WS_FLUSH) {
                widen_vbmi(sum[0], a0, o0);
                if (nb >= 2) widen_vbmi(sum[1], a1, o1);
                if (nb >= 3) widen_vbmi(sum[2], a2, o2);
                if (nb >= 4) widen_vbmi(sum[3], a3, o3);
                a0 = o0 = a1 = o1 = a2 = o2 = a3 = o3 = zero;
                pending = 0;
            }
        }
    }
    widen_vbmi(sum[0], a0, o0);
    if (nb >= 2) widen_vbmi(sum[1], a1, o1);
    if (nb >= 3) widen_vbmi(sum[2], a2, o2);
    if (nb >= 4) widen_vbmi(sum[3], a3, o3);
    for (int b = 0; b < nb; b++) store_vbmi(sum[b], out + b);
}

/* Each (K, pass width) gets its own unrolled instantiation with the sums in registers. */
#define WS_BY_NB(CALL, K)                                                                          \
    switch (nb) {                                                                                  \
    case 1: CALL(K, 1); break;                                                                     \
    case 2: CALL(K, 2); break;                                                                     \
    case 3: CALL(K, 3); break;                                                                     \
    default: CALL(K, 4); break;                                                                    \
    }
#define WS_BY_K(CALL)                                                                              \
    switch (ksub) {                                                                                \
    case 32: WS_BY_NB(CALL, 32); break;                                                            \
    case 64: WS_BY_NB(CALL, 64); break;                                                            \
    case 128: WS_BY_NB(CALL, 128); break;                                                          \
    default: WS_BY_NB(CALL, 256); break;                                                           \
    }
_Static_assert(WS_NB == 4, "WS_BY_NB lists the pass widths 1..4");

QC_VNNI static void blocks_vbmi(const uint8_t *Q, int groups, int M, int ksub, const uint8_t *codes,
                                size_t tap_stride, int nb, int g, const ws_taps *tp, const ws_out *out) {
#define WSV_CALL(K, NB) blocks_vbmi_n(Q, groups, M, K, codes, tap_stride, NB, g, tp, out)
    WS_BY_K(WSV_CALL);
#undef WSV_CALL
}

/* ---- AVX2 ---- */

/* Chunk c (entries 16c..16c+15) of a table, in both 128-bit lanes: a load, no shuffle. */
QC_AVX2 QC_INLINE __m256i chunk_avx2(const uint8_t *lut, int c) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lut + 16 * c)));
}

/* 32 lookups in a K-entry table: a shuffle per chunk, then blends on code bits 4, 5, 6 (and 7).
 * vpshufb gives 0 where an index has bit 7 set, so K = 256 shuffles with bit 7 cleared. */
QC_AVX2 QC_INLINE __m256i look_avx2(__m256i idx, const uint8_t *lut, const int K) {
    const __m256i i7 = K == 256 ? _mm256_and_si256(idx, _mm256_set1_epi8(0x7f)) : idx;
    const __m256i b4 = _mm256_slli_epi16(idx, 3);      /* bit 4 of each byte to its bit 7 */
    __m256i r[8];
    for (int c = 0; c < K / 32; c++)
        r[c] = _mm256_blendv_epi8(_mm256_shuffle_epi8(chunk_avx2(lut, 2 * c), i7),
                                  _mm256_shuffle_epi8(chunk_avx2(lut, 2 * c + 1), i7), b4);
    if (K >= 64) {
        const __m256i b5 = _mm256_slli_epi16(idx, 2);
        for (int c = 0; c < K / 64; c++) r[c] = _mm256_blendv_epi8(r[2 * c], r[2 * c + 1], b5);
    }
    if (K >= 128) {
        const __m256i b6 = _mm256_slli_epi16(idx, 1);
        for (int c = 0; c < K / 128; c++) r[c] = _mm256_blendv_epi8(r[2 * c], r[2 * c + 1], b6);
    }
    if (K == 256) r[0] = _mm256_blendv_epi8(r[0], r[1], idx);
    return r[0];
}

/* One 32-byte half of a block (16 even channels, 16 odd): lookups, then the 16-bit sums. */
#define WS2_STEP(c, A, O)                                                                          \
    do {                                                                                           \
        const __m256i r_ = look_avx2(_mm256_loadu_si256((const __m256i *)(c)), lut, K);            \
        A = _mm256_add_epi16(A, r_);                                                               \
        O = _mm256_add_epi16(O, _mm256_srli_epi16(r_, 8));                                         \
    } while (0)

/* Half h of a block: even words are channels 16h..16h+15, odd ones 32 + 16h.. */
QC_AVX2 QC_INLINE void widen_avx2(uint32_t *sum, int h, __m256i all, __m256i odd) {
    const __m256i even = _mm256_sub_epi16(all, _mm256_slli_epi16(odd, 8));
    uint32_t *dst[4] = {sum + 16 * h, sum + 16 * h + 8, sum + 32 + 16 * h, sum + 40 + 16 * h};
    const __m256i parts[4] = {_mm256_cvtepu16_epi32(_mm256_castsi256_si128(even)),
                              _mm256_cvtepu16_epi32(_mm256_extracti128_si256(even, 1)),
                              _mm256_cvtepu16_epi32(_mm256_castsi256_si128(odd)),
                              _mm256_cvtepu16_epi32(_mm256_extracti128_si256(odd, 1))};
    for (int i = 0; i < 4; i++)
        _mm256_storeu_si256((__m256i *)dst[i], _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)dst[i]), parts[i]));
}

QC_AVX2 QC_INLINE void store_avx2(const uint32_t sum[QC_WS_BLOCK], const ws_out *o) {
    if (o->n < QC_WS_BLOCK) {
        store_scalar(sum, o);
        return;
    }
    const __m256 s = _mm256_set1_ps(o->s), osum = _mm256_set1_ps(o->osum);
    for (int i = 0; i < QC_WS_BLOCK; i += 8) {
        __m256 v = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(sum + i))), osum);
        if (o->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(o->bias + i));
        _mm256_storeu_ps(o->y + i, qc_act256(v, o->act));
    }
}

QC_AVX2 QC_INLINE void blocks_avx2_n(const uint8_t *Q, int groups, int M, const int K, const uint8_t *codes,
                                     size_t tap_stride, const int nb, int g, const ws_taps *tp, const ws_out *out) {
    uint32_t sum[2][QC_WS_BLOCK];
    memset(sum, 0, sizeof sum);
    const __m256i zero = _mm256_setzero_si256();
    __m256i a0 = zero, o0 = zero, a1 = zero, o1 = zero, b0 = zero, p0 = zero, b1 = zero, p1 = zero;
    const size_t bs = (size_t)M * QC_WS_BLOCK, tstride = (size_t)M * K;
    int pending = 0;
    for (int k = 0; k < tp->n; k++) {
        const uint8_t *lut = Q + (tp->pix[k] * groups + g) * tstride;
        const uint8_t *cd = codes + (size_t)tp->tap[k] * tap_stride;
        for (int m = 0; m < M; m++, lut += K, cd += QC_WS_BLOCK) {
            WS2_STEP(cd, a0, o0);
            WS2_STEP(cd + 32, a1, o1);
            if (nb == 2) {
                WS2_STEP(cd + bs, b0, p0);
                WS2_STEP(cd + bs + 32, b1, p1);
            }
            if (++pending == WS_FLUSH) {
                widen_avx2(sum[0], 0, a0, o0);
                widen_avx2(sum[0], 1, a1, o1);
                if (nb == 2) widen_avx2(sum[1], 0, b0, p0), widen_avx2(sum[1], 1, b1, p1);
                a0 = o0 = a1 = o1 = b0 = p0 = b1 = p1 = zero;
                pending = 0;
            }
        }
    }
    widen_avx2(sum[0], 0, a0, o0);
    widen_avx2(sum[0], 1, a1, o1);
    store_avx2(sum[0], out);
    if (nb == 2) {
        widen_avx2(sum[1], 0, b0, p0);
        widen_avx2(sum[1], 1, b1, p1);
        store_avx2(sum[1], out + 1);
    }
}

QC_AVX2 static void blocks_avx2(const uint8_t *Q, int groups, int M, int ksub, const uint8_t *codes,
                                size_t tap_stride, int nb, int g, const ws_taps *tp, const ws_out *out) {
    /* sixteen 256-bit registers: the sums of two blocks per pass */
    const size_t bs = (size_t)M * QC_WS_BLOCK;
    for (int b = 0; b < nb; b += 2) {
        const int two = nb - b >= 2;
        const uint8_t *c = codes + b * bs;
#define WS2_CALL(K, NB) blocks_avx2_n(Q, groups, M, K, c, tap_stride, NB, g, tp, out + b)
        switch (ksub + two) {
        case 32: WS2_CALL(32, 1); break;
        case 33: WS2_CALL(32, 2); break;
        case 64: WS2_CALL(64, 1); break;
        case 65: WS2_CALL(64, 2); break;
        case 128: WS2_CALL(128, 1); break;
        case 129: WS2_CALL(128, 2); break;
        case 256: WS2_CALL(256, 1); break;
        default: WS2_CALL(256, 2); break;
        }
#undef WS2_CALL
    }
}
#endif

#if QC_HAVE_NEON
/* ---- NEON ---- */

/* The table of one subspace in registers: up to four groups of four. */
typedef struct {
    uint8x16x4_t q[4];
} ws_neon_table;

/* 16 lookups; an index past a 64-entry range gives 0 (vqtbl) or leaves the byte (vqtbx). */
QC_INLINE uint8x16_t look_neon(uint8x16_t idx, const ws_neon_table *t, const int K) {
    if (K == 32) {
        const uint8x16x2_t t2 = {{t->q[0].val[0], t->q[0].val[1]}};
        return vqtbl2q_u8(t2, idx);
    }
    uint8x16_t r = vqtbl4q_u8(t->q[0], idx);
    if (K >= 128) r = vqtbx4q_u8(r, t->q[1], vsubq_u8(idx, vdupq_n_u8(64)));
    if (K == 256) {
        r = vqtbx4q_u8(r, t->q[2], vsubq_u8(idx, vdupq_n_u8(128)));
        r = vqtbx4q_u8(r, t->q[3], vsubq_u8(idx, vdupq_n_u8(192)));
    }
    return r;
}

/* Vector v of a block (bytes 16v..16v+15): lanes of L are bytes 0..7, of H bytes 8..15. */
#define WSN_STEP(c, L, H)                                                                          \
    do {                                                                                           \
        const uint8x16_t r_ = look_neon(vld1q_u8(c), &tab, K);                                     \
        L = vaddw_u8(L, vget_low_u8(r_));                                                          \
        H = vaddw_high_u8(H, r_);                                                                  \
    } while (0)

/* Vector v's sums: even lanes are channels 8v..8v+7, odd ones 32 + 8v.. */
QC_INLINE void widen_neon(uint32_t *sum, int v, uint16x8_t lo, uint16x8_t hi) {
    const uint16x8_t e = vuzp1q_u16(lo, hi), o = vuzp2q_u16(lo, hi);
    uint32_t *se = sum + 8 * v, *so = sum + 32 + 8 * v;
    vst1q_u32(se, vaddw_u16(vld1q_u32(se), vget_low_u16(e)));
    vst1q_u32(se + 4, vaddw_high_u16(vld1q_u32(se + 4), e));
    vst1q_u32(so, vaddw_u16(vld1q_u32(so), vget_low_u16(o)));
    vst1q_u32(so + 4, vaddw_high_u16(vld1q_u32(so + 4), o));
}

QC_INLINE void store_neon(const uint32_t sum[QC_WS_BLOCK], const ws_out *o) {
    if (o->n < QC_WS_BLOCK) {
        store_scalar(sum, o);
        return;
    }
    const float32x4_t s = vdupq_n_f32(o->s), osum = vdupq_n_f32(o->osum);
    for (int i = 0; i < QC_WS_BLOCK; i += 4) {
        float32x4_t v = vfmaq_f32(osum, s, vcvtq_f32_u32(vld1q_u32(sum + i)));
        if (o->bias) v = vaddq_f32(v, vld1q_f32(o->bias + i));
        vst1q_f32(o->y + i, qc_act128(v, o->act));
    }
}

QC_INLINE void block_neon_k(const uint8_t *Q, int groups, int M, const int K, const uint8_t *codes,
                            size_t tap_stride, int g, const ws_taps *tp, const ws_out *out) {
    uint32_t sum[QC_WS_BLOCK];
    memset(sum, 0, sizeof sum);
    const uint16x8_t z = vdupq_n_u16(0);
    uint16x8_t l0 = z, h0 = z, l1 = z, h1 = z, l2 = z, h2 = z, l3 = z, h3 = z;
    const size_t tstride = (size_t)M * K;
    int pending = 0;
    ws_neon_table tab;
    for (int k = 0; k < tp->n; k++) {
        const uint8_t *lut = Q + (tp->pix[k] * groups + g) * tstride;
        const uint8_t *cd = codes + (size_t)tp->tap[k] * tap_stride;
        for (int m = 0; m < M; m++, lut += K, cd += QC_WS_BLOCK) {
            if (K == 32) {
                tab.q[0].val[0] = vld1q_u8(lut);
                tab.q[0].val[1] = vld1q_u8(lut + 16);
            } else {
                for (int i = 0; i < K / 64; i++) tab.q[i] = vld1q_u8_x4(lut + 64 * i);
            }
            WSN_STEP(cd, l0, h0);
            WSN_STEP(cd + 16, l1, h1);
            WSN_STEP(cd + 32, l2, h2);
            WSN_STEP(cd + 48, l3, h3);
            if (++pending == WS_FLUSH) {
                widen_neon(sum, 0, l0, h0), widen_neon(sum, 1, l1, h1);
                widen_neon(sum, 2, l2, h2), widen_neon(sum, 3, l3, h3);
                l0 = h0 = l1 = h1 = l2 = h2 = l3 = h3 = z;
                pending = 0;
            }
        }
    }
    widen_neon(sum, 0, l0, h0), widen_neon(sum, 1, l1, h1);
    widen_neon(sum, 2, l2, h2), widen_neon(sum, 3, l3, h3);
    store_neon(sum, out);
}

static void blocks_neon(const uint8_t *Q, int groups, int M, int ksub, const uint8_t *codes, size_t tap_stride,
                        int nb, int g, const ws_taps *tp, const ws_out *out) {
    const size_t bs = (size_t)M * QC_WS_BLOCK;
    for (int b = 0; b < nb; b++) {
        const uint8_t *c = codes + b * bs;
        switch (ksub) {
        case 32: block_neon_k(Q, groups, M, 32, c, tap_stride, g, tp, out + b); break;
        case 64: block_neon_k(Q, groups, M, 64, c, tap_stride, g, tp, out + b); break;
        case 128: block_neon_k(Q, groups, M, 128, c, tap_stride, g, tp, out + b); break;
        default: block_neon_k(Q, groups, M, 256, c, tap_stride, g, tp, out + b); break;
        }
    }
}
#endif

void qc_pq_conv_widescan(const uint8_t *Q, const float *scale, const float *offset_sum, int h, int w, int groups,
                         int M, int ksub, const uint8_t *packed, int kh, int kw, int sh, int sw, int pt, int pl,
                         int cout, const float *bias, float *y, int oh, int ow, int act) {
#if QC_HAVE_X86
    /* VBMI's byte permutes come with the VNNI level; the AVX-512 level without them runs AVX2 */
    static const ws_blocks_fn variants[QC_ISA_COUNT] = {blocks_scalar, blocks_avx2, blocks_avx2, blocks_vbmi,
                                                        blocks_scalar, blocks_scalar};
#elif QC_HAVE_NEON
    static const ws_blocks_fn variants[QC_ISA_COUNT] = {blocks_scalar, blocks_scalar, blocks_scalar, blocks_scalar,
                                                        blocks_neon, blocks_neon};
#else
    static const ws_blocks_fn variants[QC_ISA_COUNT] = {blocks_scalar, blocks_scalar, blocks_scalar, blocks_scalar,
                                                        blocks_scalar, blocks_scalar};
#endif
    const ws_blocks_fn blocks = variants[qc_isa()];
    const int cout_g = cout / groups, nblk = blocks_of(cout_g);
    const size_t tap_stride = (size_t)nblk * M * QC_WS_BLOCK;
    ws_taps tp;
    for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++) {
            tp.n = 0;
            for (int i = 0; i < kh; i++) {
                const int iy = oy * sh - pt + i;
                if (iy < 0 || iy >= h) continue;    /* zero padding contributes nothing */
                for (int j = 0; j < kw; j++) {
                    const int ix = ox * sw - pl + j;
                    if (ix < 0 || ix >= w) continue;
                    tp.pix[tp.n] = (size_t)iy * w + ix;
                    tp.tap[tp.n++] = i * kw + j;
                }
            }
            float *yp = y + ((size_t)oy * ow + ox) * cout;
            for (int g = 0; g < groups; g++) {
                /* every valid tap shares the scale (one tap, or a shared-scale band) */
                float s = tp.n ? scale[tp.pix[0] * groups + g] : 0.f, osum = 0.f;
                for (int k = 0; k < tp.n; k++) osum += offset_sum[tp.pix[k] * groups + g];
                for (int b = 0; b < nblk; b += WS_NB) {
                    const int nb = nblk - b < WS_NB ? nblk - b : WS_NB;
                    ws_out out[WS_NB];
                    for (int j = 0; j < nb; j++) {
                        const int c0 = g * cout_g + (b + j) * QC_WS_BLOCK, rest = cout_g - (b + j) * QC_WS_BLOCK;
                        out[j] = (ws_out){s, osum, bias ? bias + c0 : NULL, yp + c0,
                                          rest < QC_WS_BLOCK ? rest : QC_WS_BLOCK, act};
                    }
                    const uint8_t *codes = packed + ((size_t)g * kh * kw * nblk + b) * M * QC_WS_BLOCK;
                    blocks(Q, groups, M, ksub, codes, tap_stride, nb, g, &tp, out);
                }
            }
        }
}
