/* Fast-scan PQ lookups for K = 16 (4-bit codes).
 *
 * Tables: each input pixel's float tables become uint8, T ~ offset[p, gm] + scale[p, g] * Q, so a
 * 16-entry table fits a 128-bit lane and `vpshufb` performs 16 lookups per lane and instruction.
 * Sums of Q are integers, scaled back to float once per output and block of channels; the offsets
 * enter as their per-pixel sum, the same for every output channel.  An output sums the tables of
 * all its kernel offsets, so for k x k convolutions every pixel of a band shares one scale
 * (`shared_scale`); a 1x1 convolution or FC layer reads one pixel per output and keeps a scale per
 * pixel, which is more precise.
 *
 * Code layout (made once at load by qc_fs_pack_codes), for group g, kernel offset t, block b of 32
 * output channels of the group and quad u of subspaces (M is padded to Mp, a multiple of 4, with
 * zero tables and zero codes), QB bytes at ((((g * taps + t) * nblk + b) * Mp/4 + u) * QB, for
 * h in 0..3 (subspace m = 4u + h), l in 0..15, half in {0, 1}, perm(l) = l / 2 + 8 * (l % 2):
 *   bytes layout   (QB = 128): byte 64 * half + 16 * h + l = code of channel b*32 + 16 * half + perm(l)
 *   nibbles layout (QB = 64):  byte 16 * h + l holds that code in its low (half 0) or high (half 1)
 *                              nibble.
 *   dot layout     (QB = 128): byte 64 * half + 4 * j + h = 16 * h + code of channel b*32 + 16*half + j
 * Convolutions reuse their codes at every output position, so they take bytes: no unpacking,
 * three vector ops fewer per 64 lookups on the ports the shuffles compete for.  FC layers read each
 * code once per image and are bound by memory bandwidth: they take nibbles.  In the bytes and
 * nibbles layouts lane h (128 bits) of a 64-byte half meets lane h of the four consecutive 16-byte
 * tables loaded beside it (`vpshufb`, AVX2 and AVX-512).  The permutation makes the even/odd-byte
 * split of the 16-bit accumulators come out in channel order (even bytes: channels 0..7, odd
 * bytes: 8..15).  Channels past the group's end carry code 0 and are discarded.
 * The dot layout is for CPUs with VBMI and VNNI (QC_ISA_AVX512VNNI), for every convolution: one
 * `vpermb` looks up 64 bytes in the quad's four tables at once (the index carries the subspace;
 * padded subspaces point at their own zero row), and one `vpdpbusd` adds each channel's four bytes
 * into its 32-bit sum: two instructions per 64 lookups instead of four, and no widening.  Those
 * lookups are then bound by reading codes, so two neighbouring output pixels with the same taps
 * share each pass and every code load.
 *
 * Accumulation (bytes, nibbles): the shuffled bytes r are added as 16-bit words into `all` (even
 * + 256 * odd, modulo 2^16) and r >> 8 into `odd`; even = all - (odd << 8) is exact as long as the
 * even sum fits 16 bits.  A lane receives at most two bytes (<= 255) per quad, so the sums are
 * widened to 32 bits every FS_FLUSH = 128 quads (65280 < 65536).  The dot layout's 32-bit sums
 * cannot overflow (at most 121 taps * 4 * quads * 255 per channel).
 *
 * What bounds AVX2 (bytes): a 32-byte shuffle makes 32 lookups and accumulating them takes three
 * more ops (add, shift, add), all on the same three vector ports (Golden Cove: p0, p1, p5): at
 * most 24 lookups per cycle, 3/4 of the AVX-512 bytes kernel (8 ops per 128 lookups, two ports)
 * and 3/8 of the dot layout.  Measured on AlexNet at 4.1 GHz, the AVX2 kernel reaches 88-90 % of
 * that bound on conv3-5 and 81 % on conv2 (3 quads per tap: the per-tap and per-pass bookkeeping
 * weigh more); the other 8-bit accumulations tried on paper (pair sums with vpmaddubsw, byte sums
 * with vpaddb) cost the same three ops or lose the odd channels' high bits.  Sharing each code
 * load between two output pixels, which pays in the dot layout, does not on AVX2: the code loads
 * fold into the shuffles, and keeping a pass's codes in L1 across pixels (a loop order tried and
 * dropped) gained at most 2 %. */
#include <math.h>
#include <string.h>
#include "pq.h"
#include "simd.h"

#define FS_FLUSH 128

static inline int perm16(int l) { return l / 2 + 8 * (l % 2); }
static inline int quads_of(int m) { return (m + 3) / 4; }

/* Table quantization, per (pixel, group): one offset, the smallest entry of all its M tables, and
 * one step, their span / 255; the offset sum the lookups add is then corrected for the expected
 * rounding error (debiased_offset, below).  (A separate offset per table would need a horizontal
 * reduction per 16 entries, which costs more than the lookups themselves, and gains little once
 * the bias is removed: in a numpy model of the tables of four Lite0 1x1 layers at C_s' = 1 on a
 * bundled photo, RMS error / RMS of the output (without bias) 2.1-3.1 % with one offset and the
 * correction, 1.9-2.8 % with an offset per table as well, 2.2-70 % with neither.  A smaller step
 * that clips the widest entries was worse on every layer: 1.3-18 % at 3/4 of the span against
 * 1.2-4.8 % without clipping, both corrected, relative to the output with its bias.) */
/* q[i] = round((t[i] - lo) * inv), nearest-even in every variant; n is a multiple of 16. */
typedef void (*quant_fn)(const float *t, size_t n, float lo, float inv, uint8_t *q);

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
    qc_ran(QC_FAMILY_FS_QUANT, QC_ISA_SCALAR);
    for (size_t i = 0; i < n; i++) {
        long v = lrintf((t[i] - lo) * inv);
        q[i] = (uint8_t)(v > 255 ? 255 : v);
    }
}

/* The K = 16 tables of one (pixel, group), (M, 16), and their smallest and largest entries. */
typedef void (*tables16_fn)(const float *xg, int cin_g, int M, int dsub, const float *cbt_g, float *t,
                            float *lo, float *hi);

static void tables16_scalar(const float *xg, int cin_g, int M, int dsub, const float *cbt_g, float *t,
                            float *lo, float *hi) {
    qc_ran(QC_FAMILY_FS_TABLES, QC_ISA_SCALAR);
    qc_pq_table_rows(xg, cin_g, M, dsub, 16, cbt_g, t);
    range_scalar(t, (size_t)M * 16, lo, hi);
}

#if QC_HAVE_X86
QC_AVX2 static void quant_avx2(const float *t, size_t n, float lo, float inv, uint8_t *q) {
    qc_ran(QC_FAMILY_FS_QUANT, QC_ISA_AVX2);
    const __m256 vinv = _mm256_set1_ps(inv), l = _mm256_set1_ps(lo);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t i = 0; i < n; i += 16) {
        __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(t + i), l), vinv));
        __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(t + i + 8), l), vinv));
        /* Saturating packs work within 128-bit lanes; the final permute restores the order. */
        __m256i w = _mm256_packus_epi32(a, b);
        __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w, w), order);
        _mm_storeu_si128((__m128i *)(q + i), _mm256_castsi256_si128(bytes));
    }
}

QC_AVX512 static inline __m512i quant16_avx512(const float *t, __m512 l, __m512 vinv) {
    return _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(t), l), vinv));
}

/* Four tables (64 entries) at a time go to bytes with two saturating packs and one dword permute,
 * half the shuffle-port work of four narrowing moves; the packs saturate negatives to 0 as the
 * other variants clamp them. */
QC_AVX512 static void quant_avx512(const float *t, size_t n, float lo, float inv, uint8_t *q) {
    qc_ran(QC_FAMILY_FS_QUANT, QC_ISA_AVX512);
    const __m512 vinv = _mm512_set1_ps(inv), l = _mm512_set1_ps(lo);
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512i ab = _mm512_packus_epi32(quant16_avx512(t + i, l, vinv), quant16_avx512(t + i + 16, l, vinv));
        __m512i cd = _mm512_packus_epi32(quant16_avx512(t + i + 32, l, vinv), quant16_avx512(t + i + 48, l, vinv));
        _mm512_storeu_si512((void *)(q + i), _mm512_permutexvar_epi32(order, _mm512_packus_epi16(ab, cd)));
    }
    for (; i < n; i += 16) {
        __m512i v = quant16_avx512(t + i, l, vinv);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtusepi32_epi8(_mm512_max_epi32(v, _mm512_setzero_si512())));
    }
}

/* K = 16 tables of one (pixel, group) and their range in one sweep: the min and max are taken in
 * registers as the tables are made, so the tables are not read back.  Same fused multiply-adds in
 * the same order as rows_scalar (pq_tables.c): bit-identical tables.  DSUB is a constant in the
 * common instantiations, so the loop over a subspace's channels unrolls. */
QC_AVX512 QC_INLINE void tables16_avx512_d(const float *xg, int cin_g, int M, const int dsub, const float *cbt_g,
                                          float *t, float *lo, float *hi) {
    __m512 mn = _mm512_set1_ps(INFINITY), mx = _mm512_set1_ps(-INFINITY);
    const int full = cin_g / dsub;
    int m = 0;
    for (; m + 4 <= full; m += 4) {
        const float *xs = xg + m * dsub, *cb = cbt_g + (size_t)m * dsub * 16;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int d = 0; d < dsub; d++) {
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(xs[d]), _mm512_loadu_ps(cb + d * 16), a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(xs[dsub + d]), _mm512_loadu_ps(cb + (dsub + d) * 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_set1_ps(xs[2 * dsub + d]), _mm512_loadu_ps(cb + (2 * dsub + d) * 16), a2);
            a3 = _mm512_fmadd_ps(_mm512_set1_ps(xs[3 * dsub + d]), _mm512_loadu_ps(cb + (3 * dsub + d) * 16), a3);
        }
        _mm512_storeu_ps(t + (size_t)m * 16, a0);
        _mm512_storeu_ps(t + (size_t)m * 16 + 16, a1);
        _mm512_storeu_ps(t + (size_t)m * 16 + 32, a2);
        _mm512_storeu_ps(t + (size_t)m * 16 + 48, a3);
        mn = _mm512_min_ps(mn, _mm512_min_ps(_mm512_min_ps(a0, a1), _mm512_min_ps(a2, a3)));
        mx = _mm512_max_ps(mx, _mm512_max_ps(_mm512_max_ps(a0, a1), _mm512_max_ps(a2, a3)));
    }
    for (; m < M; m++) {
        const int rest = cin_g - m * dsub, dm = rest < dsub ? rest : dsub;
        __m512 a = _mm512_setzero_ps();
        for (int d = 0; d < dm; d++)
            a = _mm512_fmadd_ps(_mm512_set1_ps(xg[m * dsub + d]), _mm512_loadu_ps(cbt_g + ((size_t)m * dsub + d) * 16), a);
        _mm512_storeu_ps(t + (size_t)m * 16, a);
        mn = _mm512_min_ps(mn, a);
        mx = _mm512_max_ps(mx, a);
    }
    *lo = _mm512_reduce_min_ps(mn);
    *hi = _mm512_reduce_max_ps(mx);
}

QC_AVX512 static void tables16_avx512(const float *xg, int cin_g, int M, int dsub, const float *cbt_g, float *t,
                                      float *lo, float *hi) {
    qc_ran(QC_FAMILY_FS_TABLES, QC_ISA_AVX512);
    switch (dsub) {
    case 1: tables16_avx512_d(xg, cin_g, M, 1, cbt_g, t, lo, hi); break;
    case 2: tables16_avx512_d(xg, cin_g, M, 2, cbt_g, t, lo, hi); break;
    case 4: tables16_avx512_d(xg, cin_g, M, 4, cbt_g, t, lo, hi); break;
    case 8: tables16_avx512_d(xg, cin_g, M, 8, cbt_g, t, lo, hi); break;
    default: tables16_avx512_d(xg, cin_g, M, dsub, cbt_g, t, lo, hi); break;
    }
}

/* tables16_avx512_d on 256-bit registers: a table is two, and four subspaces at a time keep eight
 * fused multiply-add chains in flight, enough to cover the latency (4-5 cycles) at the one or two
 * issued per cycle (the row-by-row build ran two chains: latency bound, 2-3x slower for wide
 * subspaces such as conv1's 33-wide kernel rows).  The J < 4 full subspaces left over go
 * together too, the narrower last one alone.  Same order as rows_scalar: bit-identical. */
QC_AVX2 QC_INLINE void tables16_avx2_j(const float *xs, const float *cb, const int J, const int dsub, float *t,
                                      __m256 *mn, __m256 *mx) {
    __m256 a[4], b[4];
    QC_UNROLL
    for (int j = 0; j < J; j++) a[j] = b[j] = _mm256_setzero_ps();
    for (int d = 0; d < dsub; d++) {
        QC_UNROLL
        for (int j = 0; j < J; j++) {
            const __m256 x = _mm256_set1_ps(xs[j * dsub + d]);
            const float *row = cb + (size_t)(j * dsub + d) * 16;
            a[j] = _mm256_fmadd_ps(x, _mm256_loadu_ps(row), a[j]);
            b[j] = _mm256_fmadd_ps(x, _mm256_loadu_ps(row + 8), b[j]);
        }
    }
    QC_UNROLL
    for (int j = 0; j < J; j++) {
        _mm256_storeu_ps(t + 16 * j, a[j]);
        _mm256_storeu_ps(t + 16 * j + 8, b[j]);
        *mn = _mm256_min_ps(*mn, _mm256_min_ps(a[j], b[j]));
        *mx = _mm256_max_ps(*mx, _mm256_max_ps(a[j], b[j]));
    }
}

QC_AVX2 QC_INLINE void tables16_avx2_d(const float *xg, int cin_g, int M, const int dsub, const float *cbt_g,
                                      float *t, float *lo, float *hi) {
    __m256 mn = _mm256_set1_ps(INFINITY), mx = _mm256_set1_ps(-INFINITY);
    const int full = cin_g / dsub;
    int m = 0;
    for (; m + 4 <= full; m += 4)
        tables16_avx2_j(xg + m * dsub, cbt_g + (size_t)m * dsub * 16, 4, dsub, t + (size_t)m * 16, &mn, &mx);
    const float *xs = xg + m * dsub, *cb = cbt_g + (size_t)m * dsub * 16;
    switch (full - m) {
    case 3: tables16_avx2_j(xs, cb, 3, dsub, t + (size_t)m * 16, &mn, &mx); break;
    case 2: tables16_avx2_j(xs, cb, 2, dsub, t + (size_t)m * 16, &mn, &mx); break;
    case 1: tables16_avx2_j(xs, cb, 1, dsub, t + (size_t)m * 16, &mn, &mx); break;
    default: break;
    }
    m = full;
    if (m < M)          /* the narrower last subspace */
        tables16_avx2_j(xg + m * dsub, cbt_g + (size_t)m * dsub * 16, 1, cin_g - m * dsub, t + (size_t)m * 16, &mn, &mx);
    float mnv[8], mxv[8], unused;
    _mm256_storeu_ps(mnv, mn);
    _mm256_storeu_ps(mxv, mx);
    range_scalar(mnv, 8, lo, &unused);
    range_scalar(mxv, 8, &unused, hi);
}

QC_AVX2 static void tables16_avx2(const float *xg, int cin_g, int M, int dsub, const float *cbt_g, float *t,
                                  float *lo, float *hi) {
    qc_ran(QC_FAMILY_FS_TABLES, QC_ISA_AVX2);
    switch (dsub) {
    case 1: tables16_avx2_d(xg, cin_g, M, 1, cbt_g, t, lo, hi); break;
    case 2: tables16_avx2_d(xg, cin_g, M, 2, cbt_g, t, lo, hi); break;
    case 3: tables16_avx2_d(xg, cin_g, M, 3, cbt_g, t, lo, hi); break;
    case 4: tables16_avx2_d(xg, cin_g, M, 4, cbt_g, t, lo, hi); break;
    case 8: tables16_avx2_d(xg, cin_g, M, 8, cbt_g, t, lo, hi); break;
    default: tables16_avx2_d(xg, cin_g, M, dsub, cbt_g, t, lo, hi); break;
    }
}

/* The tables of four pixels (x[p * xstride ...], p < 4) of one group at once, for wide subspaces
 * (C_s' >= FS_WIDE: conv1's kernel rows across taps): each codebook row is loaded once for the
 * four pixels, so the multiply-adds, not the loads (two codebook vectors and a broadcast per two
 * multiply-adds for one pixel), bound the build.  Eight chains, in rows_scalar's order. */
#define FS_WIDE 8
#define FS_FOUR_FLOATS (64 * 16)     /* a pixel's share of the stack buffer: M <= 64 */
QC_AVX2 static void tables16x4_avx2(const float *x, size_t xstride, int cin_g, int M, int dsub, const float *cbt_g,
                                    float *t, float lo[4], float hi[4]) {
    qc_ran(QC_FAMILY_FS_TABLES, QC_ISA_AVX2);
    const size_t n = (size_t)M * 16;
    __m256 mn[4], mx[4];
    for (int p = 0; p < 4; p++) mn[p] = _mm256_set1_ps(INFINITY), mx[p] = _mm256_set1_ps(-INFINITY);
    for (int m = 0; m < M; m++) {
        const int rest = cin_g - m * dsub, dm = rest < dsub ? rest : dsub;
        const float *cb = cbt_g + (size_t)m * dsub * 16, *x0 = x + m * dsub;
        __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
        for (int d = 0; d < dm; d++) {
            const __m256 c0 = _mm256_loadu_ps(cb + d * 16), c1 = _mm256_loadu_ps(cb + d * 16 + 8);
            __m256 v = _mm256_set1_ps(x0[d]);
            a0 = _mm256_fmadd_ps(v, c0, a0), b0 = _mm256_fmadd_ps(v, c1, b0);
            v = _mm256_set1_ps(x0[xstride + d]);
            a1 = _mm256_fmadd_ps(v, c0, a1), b1 = _mm256_fmadd_ps(v, c1, b1);
            v = _mm256_set1_ps(x0[2 * xstride + d]);
            a2 = _mm256_fmadd_ps(v, c0, a2), b2 = _mm256_fmadd_ps(v, c1, b2);
            v = _mm256_set1_ps(x0[3 * xstride + d]);
            a3 = _mm256_fmadd_ps(v, c0, a3), b3 = _mm256_fmadd_ps(v, c1, b3);
        }
        float *tm = t + (size_t)m * 16;
        _mm256_storeu_ps(tm, a0), _mm256_storeu_ps(tm + 8, b0);
        _mm256_storeu_ps(tm + n, a1), _mm256_storeu_ps(tm + n + 8, b1);
        _mm256_storeu_ps(tm + 2 * n, a2), _mm256_storeu_ps(tm + 2 * n + 8, b2);
        _mm256_storeu_ps(tm + 3 * n, a3), _mm256_storeu_ps(tm + 3 * n + 8, b3);
        mn[0] = _mm256_min_ps(mn[0], _mm256_min_ps(a0, b0)), mx[0] = _mm256_max_ps(mx[0], _mm256_max_ps(a0, b0));
        mn[1] = _mm256_min_ps(mn[1], _mm256_min_ps(a1, b1)), mx[1] = _mm256_max_ps(mx[1], _mm256_max_ps(a1, b1));
        mn[2] = _mm256_min_ps(mn[2], _mm256_min_ps(a2, b2)), mx[2] = _mm256_max_ps(mx[2], _mm256_max_ps(a2, b2));
        mn[3] = _mm256_min_ps(mn[3], _mm256_min_ps(a3, b3)), mx[3] = _mm256_max_ps(mx[3], _mm256_max_ps(a3, b3));
    }
    for (int p = 0; p < 4; p++) {
        float mnv[8], mxv[8], unused;
        _mm256_storeu_ps(mnv, mn[p]);
        _mm256_storeu_ps(mxv, mx[p]);
        range_scalar(mnv, 8, &lo[p], &unused);
        range_scalar(mxv, 8, &unused, &hi[p]);
    }
}
#endif

#if QC_HAVE_NEON
/* q = round((t - lo) * inv) to nearest even (vcvtnq), saturated to 0..255 by the two narrowing
 * moves, as quant_scalar clamps. */
static void quant_neon(const float *t, size_t n, float lo, float inv, uint8_t *q) {
    qc_ran(QC_FAMILY_FS_QUANT, QC_ISA_NEON);
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

/* The K = 16 tables of one (pixel, group) and their range in one sweep, as tables16_avx512_d:
 * a table is four vectors, four subspaces at a time keep sixteen chains in flight, and the fused
 * multiply-adds run in rows_scalar's order (bit-identical tables). */
QC_INLINE void tables16_neon_d(const float *xg, int cin_g, int M, const int dsub, const float *cbt_g, float *t,
                               float *lo, float *hi) {
    float32x4_t mn = vdupq_n_f32(INFINITY), mx = vdupq_n_f32(-INFINITY);
    const int full = cin_g / dsub;
    int m = 0;
    for (; m + 4 <= full; m += 4) {
        const float *xs = xg + m * dsub, *cb = cbt_g + (size_t)m * dsub * 16;
        float32x4_t a[4][4];
        for (int j = 0; j < 4; j++)
            for (int v = 0; v < 4; v++) a[j][v] = vdupq_n_f32(0.f);
        for (int d = 0; d < dsub; d++)
            for (int j = 0; j < 4; j++) {
                const float32x4_t xv = vdupq_n_f32(xs[j * dsub + d]);
                const float *row = cb + (size_t)(j * dsub + d) * 16;
                for (int v = 0; v < 4; v++) a[j][v] = vfmaq_f32(a[j][v], xv, vld1q_f32(row + 4 * v));
            }
        for (int j = 0; j < 4; j++)
            for (int v = 0; v < 4; v++) {
                vst1q_f32(t + (size_t)(m + j) * 16 + 4 * v, a[j][v]);
                mn = vminq_f32(mn, a[j][v]);
                mx = vmaxq_f32(mx, a[j][v]);
            }
    }
    for (; m < M; m++) {
        const int rest = cin_g - m * dsub, dm = rest < dsub ? rest : dsub;
        float32x4_t a[4] = {vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f), vdupq_n_f32(0.f)};
        for (int d = 0; d < dm; d++) {
            const float32x4_t xv = vdupq_n_f32(xg[m * dsub + d]);
            const float *row = cbt_g + ((size_t)m * dsub + d) * 16;
            for (int v = 0; v < 4; v++) a[v] = vfmaq_f32(a[v], xv, vld1q_f32(row + 4 * v));
        }
        for (int v = 0; v < 4; v++) {
            vst1q_f32(t + (size_t)m * 16 + 4 * v, a[v]);
            mn = vminq_f32(mn, a[v]);
            mx = vmaxq_f32(mx, a[v]);
        }
    }
    *lo = vminvq_f32(mn);
    *hi = vmaxvq_f32(mx);
}

static void tables16_neon(const float *xg, int cin_g, int M, int dsub, const float *cbt_g, float *t, float *lo,
                          float *hi) {
    qc_ran(QC_FAMILY_FS_TABLES, QC_ISA_NEON);
    switch (dsub) {
    case 1: tables16_neon_d(xg, cin_g, M, 1, cbt_g, t, lo, hi); break;
    case 2: tables16_neon_d(xg, cin_g, M, 2, cbt_g, t, lo, hi); break;
    case 4: tables16_neon_d(xg, cin_g, M, 4, cbt_g, t, lo, hi); break;
    case 8: tables16_neon_d(xg, cin_g, M, 8, cbt_g, t, lo, hi); break;
    default: tables16_neon_d(xg, cin_g, M, dsub, cbt_g, t, lo, hi); break;
    }
}
#endif

/* Code-weighted sums of a (pixel, group)'s quantized tables, sum over m < M, k < 16 of
 * counts[m, k] * q[m, k]: integers, so exact in any order and the same in every variant.  Counts
 * are below 2^15 (pq.h), so the SIMD variants multiply 16-bit pairs and add them into 32-bit
 * lanes (vpmaddwd); a lane gains at most 2 * 255 * total per table, so the lanes are widened to
 * 64 bits every `run` tables (debiased_offset keeps 510 * total * run < 2^31). */
typedef uint64_t (*weighted_fn)(const uint8_t *q, const uint16_t *counts, int M, int run);

static uint64_t weighted_scalar(const uint8_t *q, const uint16_t *counts, int M, int run) {
    (void)run;
    uint64_t total = 0;
    for (int m = 0; m < M; m++) {
        uint32_t acc = 0;
        for (int k = 0; k < 16; k++) acc += (uint32_t)counts[m * 16 + k] * q[m * 16 + k];
        total += acc;
    }
    return total;
}

#if QC_HAVE_X86
QC_AVX2 static uint64_t lanes8_avx2(__m256i a) {
    uint32_t l[8];
    _mm256_storeu_si256((__m256i *)l, a);
    uint64_t t = 0;
    for (int i = 0; i < 8; i++) t += l[i];
    return t;
}

QC_AVX2 static uint64_t weighted_avx2(const uint8_t *q, const uint16_t *counts, int M, int run) {
    uint64_t total = 0;
    for (int m0 = 0; m0 < M; m0 += run) {
        const int m1 = m0 + run < M ? m0 + run : M;
        __m256i a = _mm256_setzero_si256();
        for (int m = m0; m < m1; m++)
            a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(q + (size_t)m * 16))),
                                                      _mm256_loadu_si256((const __m256i *)(counts + (size_t)m * 16))));
        total += lanes8_avx2(a);
    }
    return total;
}

/* Two tables per step. */
QC_AVX512 static uint64_t weighted_avx512(const uint8_t *q, const uint16_t *counts, int M, int run) {
    uint64_t total = 0;
    for (int m0 = 0; m0 < M; m0 += run) {
        const int m1 = m0 + run < M ? m0 + run : M;
        __m512i a = _mm512_setzero_si512();
        int m = m0;
        for (; m + 2 <= m1; m += 2)
            a = _mm512_add_epi32(a, _mm512_madd_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + (size_t)m * 16))),
                                                      _mm512_loadu_si512((const void *)(counts + (size_t)m * 16))));
        __m256i b = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
        if (m < m1)
            b = _mm256_add_epi32(b, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(q + (size_t)m * 16))),
                                                      _mm256_loadu_si256((const __m256i *)(counts + (size_t)m * 16))));
        total += lanes8_avx2(b);
    }
    return total;
}
#endif

/* <x, the code-weighted mean weight> for one (pixel, group): the mean over the layer's outputs of
 * their exact (pre-bias) value.  32 running sums, each a multiply then an add (no fused
 * multiply-add: baseline x86 has none), folded in a fixed order at the end: the SIMD variants keep
 * the sums in the lanes of four (AVX2), two (AVX-512) or eight (NEON) vectors, enough independent
 * chains to hide the adds' latency, and every variant gives the same float.  (Left to the
 * compiler, an eight-sum loop became a shuffle-bound mess that took half of the time conv1's
 * tables across taps spent on their 363-channel pixels.) */
typedef float (*mean_fn)(const float *xg, const float *wmean_g, int cin_g);
#define MEAN_SUMS 32

static float mean_fold(float acc[MEAN_SUMS], const float *xg, const float *wmean_g, int c, int cin_g) {
    for (int j = 0; c < cin_g; c++, j++) acc[j] += xg[c] * wmean_g[c];
    float s[8];
    for (int j = 0; j < 8; j++) s[j] = (acc[j] + acc[j + 8]) + (acc[j + 16] + acc[j + 24]);
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static float mean_scalar(const float *xg, const float *wmean_g, int cin_g) {
    float acc[MEAN_SUMS] = {0.f};
    int c = 0;
    for (; c + MEAN_SUMS <= cin_g; c += MEAN_SUMS)
        for (int j = 0; j < MEAN_SUMS; j++) acc[j] += xg[c + j] * wmean_g[c + j];
    return mean_fold(acc, xg, wmean_g, c, cin_g);
}

#if QC_HAVE_X86
/* mean_fold's last two steps on s[j] = (acc[j] + acc[j + 8]) + (acc[j + 16] + acc[j + 24]), in
 * registers: a store and scalar reloads of the sums cost more than the whole loop on short pixels. */
QC_AVX2 static inline float mean_fold8_avx2(__m256 s) {
    const __m256 h = _mm256_hadd_ps(s, s);          /* s0+s1, s2+s3 | s4+s5, s6+s7 */
    const __m256 q = _mm256_hadd_ps(h, h);          /* (s0+s1)+(s2+s3) | (s4+s5)+(s6+s7) */
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1)));
}

/* The tail of a pixel shorter than 32 sums adds into the lanes below `rest` only (blended, so that
 * the others keep their value exactly, a zero's sign included), read by masked loads. */
QC_AVX2 static float mean_avx2(const float *xg, const float *wmean_g, int cin_g) {
    __m256 a[4];
    for (int v = 0; v < 4; v++) a[v] = _mm256_setzero_ps();
    int c = 0;
    for (; c + MEAN_SUMS <= cin_g; c += MEAN_SUMS) {
        QC_UNROLL
        for (int v = 0; v < 4; v++)
            a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(_mm256_loadu_ps(xg + c + 8 * v), _mm256_loadu_ps(wmean_g + c + 8 * v)));
    }
    const int rest = cin_g - c;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int v = 0; v < 4 && 8 * v < rest; v++) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(rest - 8 * v), lane);
        const __m256 p = _mm256_mul_ps(_mm256_maskload_ps(xg + c + 8 * v, m), _mm256_maskload_ps(wmean_g + c + 8 * v, m));
        a[v] = _mm256_blendv_ps(a[v], _mm256_add_ps(a[v], p), _mm256_castsi256_ps(m));
    }
    return mean_fold8_avx2(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

QC_AVX512 static float mean_avx512(const float *xg, const float *wmean_g, int cin_g) {
    __m512 a = _mm512_setzero_ps(), b = a;             /* sums 0..15 and 16..31 */
    int c = 0;
    for (; c + MEAN_SUMS <= cin_g; c += MEAN_SUMS) {
        a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_loadu_ps(xg + c), _mm512_loadu_ps(wmean_g + c)));
        b = _mm512_add_ps(b, _mm512_mul_ps(_mm512_loadu_ps(xg + c + 16), _mm512_loadu_ps(wmean_g + c + 16)));
    }
    const int rest = cin_g - c;
    if (rest > 0) {
        const __mmask16 ka = rest >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rest) - 1);
        const __mmask16 kb = rest <= 16 ? (__mmask16)0 : (__mmask16)((1u << (rest - 16)) - 1);
        a = _mm512_mask_add_ps(a, ka, a, _mm512_mul_ps(_mm512_maskz_loadu_ps(ka, xg + c), _mm512_maskz_loadu_ps(ka, wmean_g + c)));
        b = _mm512_mask_add_ps(b, kb, b, _mm512_mul_ps(_mm512_maskz_loadu_ps(kb, xg + c + 16),
                                                       _mm512_maskz_loadu_ps(kb, wmean_g + c + 16)));
    }
    const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)),
                                   _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1)));
    return mean_fold8_avx2(s);
}
#endif

#if QC_HAVE_NEON
static float mean_neon(const float *xg, const float *wmean_g, int cin_g) {
    float32x4_t a[8];
    for (int v = 0; v < 8; v++) a[v] = vdupq_n_f32(0.f);
    int c = 0;
    for (; c + MEAN_SUMS <= cin_g; c += MEAN_SUMS) {
        QC_UNROLL
        for (int v = 0; v < 8; v++)
            a[v] = vaddq_f32(a[v], vmulq_f32(vld1q_f32(xg + c + 4 * v), vld1q_f32(wmean_g + c + 4 * v)));
    }
    float acc[MEAN_SUMS];
    for (int v = 0; v < 8; v++) vst1q_f32(acc + 4 * v, a[v]);
    return mean_fold(acc, xg, wmean_g, c, cin_g);
}
#endif

/* The rounding correction's two sums, per SIMD level. */
typedef struct {
    weighted_fn weighted;
    mean_fn mean;
} debias_ops;

static debias_ops debias_for_isa(void) {
    static const weighted_fn weighteds[QC_ISA_COUNT] = QC_VARIANTS(weighted_scalar, weighted_avx2, weighted_avx512, weighted_scalar);
    static const mean_fn means[QC_ISA_COUNT] = QC_VARIANTS(mean_scalar, mean_avx2, mean_avx512, mean_neon);
    return (debias_ops){weighteds[qc_isa()], means[qc_isa()]};
}

/* The offset sum of one (pixel, group) with the expected rounding error removed: rounding a table
 * entry to the nearest of 256 levels errs by up to half a step, and the errors of narrow tables
 * (entries all near one level) do not cancel: they add up over the M subspaces, the same for
 * every output (6-24 % of the largest output on Lite0's 1x1 layers with M in the hundreds).  With
 * f[m, k] the frequency of code k in subspace m among the layer's outputs, the offset
 *   sum_m (f_m . t_m) - step * sum_m (f_m . q_m)
 * makes the code-weighted mean of the outputs exact; what is left is the error of each output
 * about that mean, which no longer grows with M faster than the outputs do. */
static float debiased_offset(debias_ops ops, const float *xg, const float *wmean_g, int cin_g,
                             const uint8_t *q, const uint16_t *counts_g, int M, uint32_t total, float step) {
    /* signed 32-bit lanes take `run` tables of at most 2 * 255 * total each */
    const uint64_t per = 510u * (uint64_t)(total ? total : 1), most = INT32_MAX / per;
    const int run = most > (uint64_t)M ? M : (int)(most ? most : 1);
    const double fq = (double)ops.weighted(q, counts_g, M, run) / (double)total;
    return (float)((double)ops.mean(xg, wmean_g, cin_g) - (double)step * fq);
}

float qc_u8_debiased_offset(const float *xg, const float *wmean_g, int cin_g, const uint8_t *q, const uint16_t *counts_g,
                            int rows, uint32_t total, float step) {
    return debiased_offset(debias_for_isa(), xg, wmean_g, cin_g, q, counts_g, rows, total, step);
}

static uint32_t table_total(const uint16_t *counts_g) {
    uint32_t n = 0;
    for (int k = 0; k < 16; k++) n += counts_g[k];
    return n;
}

/* Where pixel p's input vector (cin floats) is: row p of x, or, for a convolution whose subspaces run
 * across kernel offsets (qcnn/pq/taps.py: a 1x1 layer over (kh, kw, C) windows), output pixel p's
 * window of the padded image, gathered into `buf` (four pixels' worth) when it is needed: the
 * whole im2col copy (4.4 MB for AlexNet's conv1) is never made.  Same vectors, same tables. */
typedef struct {
    const float *x;
    size_t cin;
    int windows, w, c, kh, kw, sh, sw, ow, oy0;
    float *buf;
} fs_pixels;

static const float *fs_gather(const fs_pixels *s, size_t p, int slot) {
    const int oy = s->oy0 + (int)(p / (size_t)s->ow), ox = (int)(p % (size_t)s->ow);
    const size_t row = (size_t)s->kw * s->c;
    float *dst = s->buf + (size_t)slot * s->cin;
    for (int i = 0; i < s->kh; i++)
        memcpy(dst + i * row, s->x + (((size_t)oy * s->sh + i) * s->w + (size_t)ox * s->sw) * s->c, row * sizeof(float));
    return dst;
}

static void tables_u8(const fs_pixels *src, int npix, int groups, int M, int dsub, const float *cbt,
                      const float *wmean, const uint16_t *counts, int shared_scale, float *T, uint8_t *Q,
                      float *scale, float *offset_sum) {
    static const tables16_fn builds[QC_ISA_COUNT] = QC_VARIANTS(tables16_scalar, tables16_avx2, tables16_avx512, tables16_neon);
    static const quant_fn quants[QC_ISA_COUNT] = QC_VARIANTS(quant_scalar, quant_avx2, quant_avx512, quant_neon);
    const tables16_fn build = builds[qc_isa()];
    const quant_fn quant = quants[qc_isa()];
    const debias_ops ops = debias_for_isa();
    const float *x = src->x;
    const size_t cin = src->cin;
    const int Mp = 4 * quads_of(M), cin_g = (int)cin / groups;
    const size_t n = (size_t)M * 16;
    const int debias = wmean != NULL && counts != NULL;
    float widest_all = 0.f;
    int by4 = 0;
#if QC_HAVE_X86
    /* Wide subspaces: four pixels per build, through a buffer on the stack.  The AVX-512 levels take
     * it too: one table per 512-bit register leaves the per-pixel build load-bound there (conv1's
     * tables across taps: 0.69 ms against 0.44 by four, AVX-512 machine). */
    float four[4 * FS_FOUR_FLOATS], lo4[4], hi4[4];
    const int x86_simd = qc_isa() == QC_ISA_AVX2 || qc_isa() == QC_ISA_AVX512 || qc_isa() == QC_ISA_AVX512VNNI;
    by4 = x86_simd && dsub >= FS_WIDE && groups == 1 && !shared_scale && n <= FS_FOUR_FLOATS;
#endif
    for (size_t p = 0, pg = 0; p < (size_t)npix; p++) {
        const int in4 = by4 && (p & ~(size_t)3) + 4 <= (size_t)npix;
        const float *xp = x + p * cin;
        if (src->windows) {       /* (one group: check_taps) */
            if (in4 && p % 4 == 0)
                for (int j = 0; j < 4; j++) fs_gather(src, p + j, j);
            xp = in4 ? src->buf + (p % 4) * cin : fs_gather(src, p, 0);
        }
        for (int g = 0; g < groups; g++, pg++) {
            /* Per-pixel steps: each pixel's tables go through one L1-sized buffer, built, measured
             * and quantized while hot.  A shared step needs every table first: they stay in T. */
            float *t = T + (shared_scale ? pg * n : 0), lo, hi;
            const float *xg = xp + g * cin_g;
#if QC_HAVE_X86
            if (in4) {
                if (p % 4 == 0) tables16x4_avx2(xg, cin, cin_g, M, dsub, cbt, four, lo4, hi4);
                t = four + (p % 4) * n, lo = lo4[p % 4], hi = hi4[p % 4];
            } else
#endif
            build(xg, cin_g, M, dsub, cbt + (size_t)g * M * dsub * 16, t, &lo, &hi);
            offset_sum[pg] = lo;             /* the offset for now; times M at the end */
            scale[pg] = hi - lo;
            widest_all = hi - lo > widest_all ? hi - lo : widest_all;
            if (!shared_scale) {
                float s = hi > lo ? (hi - lo) / 255.f : 1.f;
                uint8_t *q = Q + pg * Mp * 16;
                quant(t, n, lo, 1.f / s, q);
                memset(q + n, 0, (size_t)(Mp - M) * 16);
                scale[pg] = s;
                offset_sum[pg] = lo * (float)M;
                if (debias) {
                    const uint16_t *cg = counts + (size_t)g * M * 16;
                    offset_sum[pg] = debiased_offset(ops, xg, wmean + (size_t)g * cin_g, cin_g, q, cg, M, table_total(cg), s);
                }
            }
        }
    }
    if (!shared_scale)
        return;
    const float s = widest_all > 0.f ? widest_all / 255.f : 1.f;
    for (size_t p = 0, pg = 0; p < (size_t)npix; p++)
        for (int g = 0; g < groups; g++, pg++) {
            uint8_t *q = Q + pg * Mp * 16;
            quant(T + pg * n, n, offset_sum[pg], 1.f / s, q);
            memset(q + n, 0, (size_t)(Mp - M) * 16);
            scale[pg] = s;
            offset_sum[pg] *= (float)M;
            if (debias) {
                const uint16_t *cg = counts + (size_t)g * M * 16;
                offset_sum[pg] = debiased_offset(ops, x + p * cin + g * cin_g, wmean + (size_t)g * cin_g, cin_g, q, cg, M,
                                                 table_total(cg), s);
            }
        }
}

void qc_fs_tables_u8(const float *x, int npix, int cin, int groups, int M, int dsub, const float *cbt,
                     const float *wmean, const uint16_t *counts, int shared_scale, float *T, uint8_t *Q,
                     float *scale, float *offset_sum) {
    const fs_pixels rows = {x, (size_t)cin, 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL};
    tables_u8(&rows, npix, groups, M, dsub, cbt, wmean, counts, shared_scale, T, Q, scale, offset_sum);
}

void qc_fs_tables_u8_windows(const float *img, int w, int c, int kh, int kw, int sh, int sw, int oy0, int oh, int ow,
                             int M, int dsub, const float *cbt, const float *wmean, const uint16_t *counts, float *T,
                             uint8_t *Q, float *scale, float *offset_sum, float *buf) {
    const fs_pixels windows = {img, (size_t)kh * kw * c, 1, w, c, kh, kw, sh, sw, ow, oy0, buf};
    tables_u8(&windows, oh * ow, 1, M, dsub, cbt, wmean, counts, 0, T, Q, scale, offset_sum);
}

/* The second pass of two-pass fast-scan: what the uint8 tables Q of qc_fs_tables_u8 (shared
 * scale, no rounding correction) left out of T, r = T - (offset + scale * Q), lies within half a
 * step of zero, and is itself quantized to uint8 with 1/255 of that step.  The lookups run once on
 * Q and once on R, and the two sums together are as precise as 16-bit tables would be (the
 * rounding error per entry falls from step / 2 to step / 510) at twice the lookups.  r overwrites
 * T (clamped at -step / 2 against float rounding, so that it never rounds below 0) and goes
 * through the same quantizer as the tables, SIMD variants and all. */
void qc_fs_residual_u8(float *T, int npg, int M, const uint8_t *Q, const float *scale, const float *offset_sum,
                       uint8_t *R, float *scale_r, float *offset_r) {
    static const quant_fn quants[QC_ISA_COUNT] = QC_VARIANTS(quant_scalar, quant_avx2, quant_avx512, quant_neon);
    const quant_fn quant = quants[qc_isa()];
    const int Mp = 4 * quads_of(M);
    const size_t n = (size_t)M * 16;
    for (int pg = 0; pg < npg; pg++) {
        const float s = scale[pg], lo = offset_sum[pg] / (float)M, half = .5f * s;
        float *t = T + (size_t)pg * n;
        const uint8_t *q = Q + (size_t)pg * Mp * 16;
        uint8_t *r = R + (size_t)pg * Mp * 16;
        for (size_t i = 0; i < n; i++) {
            const float v = t[i] - (lo + s * (float)q[i]);
            t[i] = v < -half ? -half : v;
        }
        quant(t, n, -half, 255.f / s, r);
        memset(r + n, 0, (size_t)(Mp - M) * 16);
        scale_r[pg] = s / 255.f;
        offset_r[pg] = -half * (float)M;
    }
}

static inline size_t quad_bytes(int layout) { return layout == QC_FS_NIBBLES ? 64 : 128; }

size_t qc_fs_packed_size(int kh, int kw, int groups, int M, int cout, int layout) {
    size_t nblk = (size_t)(cout / groups + QC_FS_BLOCK - 1) / QC_FS_BLOCK;
    return (size_t)groups * kh * kw * nblk * quads_of(M) * quad_bytes(layout);
}

void qc_fs_pack_codes(const uint8_t *codes, int kh, int kw, int groups, int M, int cout, int layout,
                      uint8_t *packed) {
    const int cout_g = cout / groups, nblk = (cout_g + QC_FS_BLOCK - 1) / QC_FS_BLOCK, quads = quads_of(M);
    const int taps = kh * kw, nibbles = layout == QC_FS_NIBBLES;
    const size_t qb = quad_bytes(layout), size = qc_fs_packed_size(kh, kw, groups, M, cout, layout);
    /* Code 0 everywhere first: in the dot layout that is index 16 * h, subspace h's own entry 0. */
    for (size_t i = 0; i < size; i++)
        packed[i] = layout == QC_FS_DOT ? (uint8_t)(16 * (i % 4)) : 0;
    for (int g = 0; g < groups; g++)
        for (int t = 0; t < taps; t++)
            for (int b = 0; b < nblk; b++)
                for (int u = 0; u < quads; u++) {
                    uint8_t *dst = packed + ((((size_t)g * taps + t) * nblk + b) * quads + u) * qb;
                    for (int h = 0; h < 4 && 4 * u + h < M; h++)
                        for (int l = 0; l < 16; l++)
                            for (int half = 0; half < 2; half++) {
                                int ch = b * QC_FS_BLOCK + 16 * half + perm16(l);
                                if (ch >= cout_g) continue;
                                uint8_t code = codes[((size_t)t * M + 4 * u + h) * cout + g * cout_g + ch];
                                if (layout == QC_FS_DOT)
                                    dst[64 * half + 4 * perm16(l) + h] = (uint8_t)(16 * h + code);
                                else if (nibbles)
                                    dst[16 * h + l] |= (uint8_t)((code & 15) << (4 * half));
                                else
                                    dst[64 * half + 16 * h + l] = code;
                            }
                }
}

/* The valid taps of one output pixel, gathered once and shared by all its blocks and groups. */
typedef struct {
    int n;
    size_t pix[QC_FS_MAX_TAPS];          /* input pixel index */
    int tap[QC_FS_MAX_TAPS];             /* kernel offset index */
    size_t lut[QC_FS_MAX_TAPS];          /* pix * groups * quads * 64: that pixel's tables in Q */
    size_t cd[QC_FS_MAX_TAPS];           /* tap * tap_stride: that offset's codes */
} fs_taps;

/* How the integer sums of a block become outputs: y[c] = act(s * sum[c] + osum + bias[c]), c < n. */
typedef struct {
    float s, osum;
    const float *bias;                   /* NULL or the block's first channel */
    float *y;                            /* the block's first output */
    int n, act;
} fs_out;

static void store_scalar(const uint32_t sum[QC_FS_BLOCK], const fs_out *o) {
    for (int c = 0; c < o->n; c++)
        o->y[c] = qc_act(fmaf(o->s, (float)sum[c], o->osum) + (o->bias ? o->bias[c] : 0.f), o->act);
}

/* One (output pixel, group) and nb <= FS_NB consecutive blocks of 32 channels: integer sums over
 * all valid taps, then stored.  Blocks are handled together so that they share each table load
 * and the loop overhead, which dominates when a layer has few subspaces per kernel offset. */
#define FS_NB 4         /* blocks per pass: AVX-512 keeps 16 accumulators in registers, AVX2 takes pairs */
/* CALL(nb, flag) with both as compile-time constants, nb in 1..FS_NB, flag 0 or 1: each pass
 * shape gets its own unrolled instantiation with the accumulators in registers. */
#define FS_SPECIALISE(nb, flag, CALL)                                                              \
    switch ((nb) + FS_NB * !!(flag)) {                                                             \
    case 1: CALL(1, 0); break;                                                                     \
    case 2: CALL(2, 0); break;                                                                     \
    case 3: CALL(3, 0); break;                                                                     \
    case 4: CALL(4, 0); break;                                                                     \
    case 5: CALL(1, 1); break;                                                                     \
    case 6: CALL(2, 1); break;                                                                     \
    case 7: CALL(3, 1); break;                                                                     \
    default: CALL(4, 1); break;                                                                    \
    }
_Static_assert(FS_NB == 4, "FS_SPECIALISE lists the pass widths 1..4");
typedef void (*blocks_fn)(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                          int nibbles, int nb, int g, const fs_taps *tp, const fs_out *out);

static void blocks_scalar(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                          int nibbles, int nb, int g, const fs_taps *tp, const fs_out *out) {
    qc_ran(QC_FAMILY_FS_LOOKUPS, QC_ISA_SCALAR);
    const size_t qb = quad_bytes(nibbles ? QC_FS_NIBBLES : QC_FS_BYTES);
    for (int b = 0; b < nb; b++) {
        uint32_t sum[QC_FS_BLOCK] = {0};
        const uint8_t *codes_b = codes + (size_t)b * quads * qb;
        for (int k = 0; k < tp->n; k++) {
            const uint8_t *lut = Q + (tp->pix[k] * groups + g) * quads * 64;
            const uint8_t *cd = codes_b + (size_t)tp->tap[k] * tap_stride;
            for (int u = 0; u < quads; u++)
                for (int i = 0; i < 64; i += 16)
                    for (int l = 0; l < 16; l++) {
                        const uint8_t *c = cd + u * qb + i + l;
                        uint8_t lo = nibbles ? c[0] & 15 : c[0], hi = nibbles ? c[0] >> 4 : c[64];
                        sum[perm16(l)] += lut[u * 64 + i + lo];
                        sum[16 + perm16(l)] += lut[u * 64 + i + hi];
                    }
        }
        store_scalar(sum, out + b);
    }
}

/* The dot layout: each code byte indexes the quad's 64 table bytes directly. */
static void dot_scalar(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                       int unused, int nb, int g, const fs_taps *tp, const fs_out *out) {
    (void)unused;
    qc_ran(QC_FAMILY_FS_LOOKUPS, QC_ISA_SCALAR);
    for (int b = 0; b < nb; b++) {
        uint32_t sum[QC_FS_BLOCK] = {0};
        const uint8_t *codes_b = codes + (size_t)b * quads * 128;
        for (int k = 0; k < tp->n; k++) {
            const uint8_t *lut = Q + (tp->pix[k] * groups + g) * quads * 64;
            const uint8_t *cd = codes_b + (size_t)tp->tap[k] * tap_stride;
            for (int u = 0; u < quads; u++)
                for (int i = 0; i < 128; i++)
                    sum[i / 4] += lut[u * 64 + (cd[u * 128 + i] & 63)];
        }
        store_scalar(sum, out + b);
    }
}

#if QC_HAVE_X86
QC_AVX2 static inline __m256i widen2(__m256i a) {
    return _mm256_add_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(a)),
                            _mm256_cvtepu16_epi32(_mm256_extracti128_si256(a, 1)));
}

/* The float epilogue of one block from its 32-bit sums t[0..3] (channels 0-7, 8-15, 16-23,
 * 24-31), 8 channels at a time; the same fused multiply-add as store_scalar. */
QC_AVX2 static void store_avx2(const __m256i t[4], const fs_out *o) {
    if (o->n < QC_FS_BLOCK) {
        uint32_t sum[QC_FS_BLOCK];
        for (int i = 0; i < 4; i++) _mm256_storeu_si256((__m256i *)(sum + 8 * i), t[i]);
        store_scalar(sum, o);
        return;
    }
    const __m256 s = _mm256_set1_ps(o->s), osum = _mm256_set1_ps(o->osum);
    const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
    for (int i = 0; i < 4; i++) {
        __m256 v = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(t[i]), osum);
        if (o->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(o->bias + 8 * i));
        if (o->act != QC_ACT_NONE) v = _mm256_max_ps(v, zero);
        if (o->act == QC_ACT_RELU6) v = _mm256_min_ps(v, six);
        _mm256_storeu_ps(o->y + 8 * i, v);
    }
}

/* 16-bit accumulators of one block: all/odd for the low 16 channels (codes bytes 0..63 of a
 * quad) and for the high 16 (bytes 64..127).  even = all - (odd << 8); both are widened with the
 * lanes (subspaces) summed into the 32-bit totals t (even 0-7, odd 8-15, even 16-23, odd 24-31).
 * The accumulators are named variables, not arrays: arrays of vectors were kept on the stack,
 * and the store-to-load round trip per add cost more than the shuffles. */
#define FS_FLUSH_INTO(W, SUB, SHL, t, A0, A1, A2, A3)                                       \
    do {                                                                                    \
        (t)[0] = _mm256_add_epi32((t)[0], W(SUB(A0, SHL(A1, 8))));                           \
        (t)[1] = _mm256_add_epi32((t)[1], W(A1));                                            \
        (t)[2] = _mm256_add_epi32((t)[2], W(SUB(A2, SHL(A3, 8))));                           \
        (t)[3] = _mm256_add_epi32((t)[3], W(A3));                                            \
    } while (0)

/* One 256-bit half of a quad of one block: shuffle the table by the codes, accumulate. */
#define FS256_STEP(c, A0, A1, A2, A3)                                                          \
    do {                                                                                       \
        __m256i clo_ = _mm256_loadu_si256((const __m256i *)(c)), chi_;                        \
        if (nibbles) {                                                                         \
            chi_ = _mm256_and_si256(_mm256_srli_epi16(clo_, 4), nib);                          \
            clo_ = _mm256_and_si256(clo_, nib);                                                \
        } else {                                                                               \
            chi_ = _mm256_loadu_si256((const __m256i *)((c) + 64));                            \
        }                                                                                      \
        __m256i rlo_ = _mm256_shuffle_epi8(l, clo_), rhi_ = _mm256_shuffle_epi8(l, chi_);      \
        A0 = _mm256_add_epi16(A0, rlo_);                                                       \
        A1 = _mm256_add_epi16(A1, _mm256_srli_epi16(rlo_, 8));                                 \
        A2 = _mm256_add_epi16(A2, rhi_);                                                       \
        A3 = _mm256_add_epi16(A3, _mm256_srli_epi16(rhi_, 8));                                 \
        FS_KEEP(A0); FS_KEEP(A1); FS_KEEP(A2); FS_KEEP(A3);                                    \
    } while (0)
/* An empty asm that "changes" a sum: GCC can no longer reassociate the adds into a sum's chain
 * (it added the two halves of a quad first, which took more live registers than the 16 and
 * spilled three sums to the stack on every quad). */
#define FS_KEEP(A) __asm__("" : "+x"(A))

/* FC layers (nibbles) read each code once per image, from L3 or memory: prefetching each block's
 * codes 2 KB (32 quads) ahead made AVX2's fc6 and fc7 lookups 1.06-1.09x faster with warm L3
 * (1 KB: 1.04-1.06x, 8 KB: none) and AVX-512's fc6 1.13-1.24x faster in `qcnn bench`. */
#define FS_PF 2048
/* One quad u of the (tap) tables lut and codes c, for one block (A*) or two (B* too). */
#define FS256_QUAD(lut, c, u)                                                                  \
    do {                                                                                       \
        const __m256i l0_ = _mm256_loadu_si256((const __m256i *)((lut) + (size_t)(u) * 64));   \
        const __m256i l1_ = _mm256_loadu_si256((const __m256i *)((lut) + (size_t)(u) * 64 + 32)); \
        const uint8_t *cq_ = (c) + (size_t)(u) * qb;                                           \
        if (nibbles) {                                                                         \
            _mm_prefetch((const char *)cq_ + FS_PF, _MM_HINT_T0);                              \
            if (nb == 2) _mm_prefetch((const char *)cq_ + bstride + FS_PF, _MM_HINT_T0);       \
        }                                                                                      \
        {                                                                                      \
            const __m256i l = l0_;                                                             \
            FS256_STEP(cq_, a0, a1, a2, a3);                                                   \
            if (nb == 2) FS256_STEP(cq_ + bstride, b0, b1, b2, b3);                            \
        }                                                                                      \
        {                                                                                      \
            const __m256i l = l1_;                                                             \
            FS256_STEP(cq_ + 32, a0, a1, a2, a3);                                              \
            if (nb == 2) FS256_STEP(cq_ + bstride + 32, b0, b1, b2, b3);                       \
        }                                                                                      \
    } while (0)

#define FS256_WIDEN()                                                                          \
    do {                                                                                       \
        FS_FLUSH_INTO(widen2, _mm256_sub_epi16, _mm256_slli_epi16, t[0], a0, a1, a2, a3);      \
        if (nb == 2) FS_FLUSH_INTO(widen2, _mm256_sub_epi16, _mm256_slli_epi16, t[1], b0, b1, b2, b3); \
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = zero;                                          \
    } while (0)

QC_AVX2 QC_INLINE void blocks_avx2_n(const uint8_t *Q, int groups, int quads, const uint8_t *codes,
                                     size_t tap_stride, const int nibbles, const int nb, int g, const fs_taps *tp,
                                     const fs_out *out) {
    (void)groups, (void)tap_stride;
    const __m256i zero = _mm256_setzero_si256(), nib = _mm256_set1_epi8(0x0f);
    __m256i t[2][4] = {{zero, zero, zero, zero}, {zero, zero, zero, zero}};
    __m256i a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
    const size_t qb = quad_bytes(nibbles ? QC_FS_NIBBLES : QC_FS_BYTES), bstride = (size_t)quads * qb;
    const uint8_t *Qg = Q + (size_t)g * quads * 64;
    /* The widening is taken out of the loops over quads and taps: with a count inside, GCC moved
     * the sums between registers and spilled some on every quad, and the per-tap bookkeeping
     * mattered on layers with few quads per tap (AlexNet conv2: 3).  A layer with fewer than
     * FS_FLUSH quads per tap widens after runs of whole taps; one with more (FC layers) in chunks
     * of a tap. */
    if (quads < FS_FLUSH) {
        const int per = FS_FLUSH / quads;
        for (int k0 = 0; k0 < tp->n; k0 += per) {
            const int k1 = tp->n - k0 < per ? tp->n : k0 + per;
            for (int k = k0; k < k1; k++) {
                const uint8_t *lut = Qg + tp->lut[k], *cd = codes + tp->cd[k];
                /* Unrolled: the loop counter and pointer updates run on the vector ports too;
                 * conv2 (3 quads per tap) 1.06x faster with two per iteration, 1.01-1.03x more
                 * with four. */
                _Pragma("GCC unroll 4")
                for (int u = 0; u < quads; u++) FS256_QUAD(lut, cd, u);
            }
            FS256_WIDEN();
        }
    } else {
        for (int k = 0; k < tp->n; k++) {
            const uint8_t *lut = Qg + tp->lut[k], *cd = codes + tp->cd[k];
            for (int u0 = 0; u0 < quads; u0 += FS_FLUSH) {
                const int u1 = quads - u0 < FS_FLUSH ? quads : u0 + FS_FLUSH;
                for (int u = u0; u < u1; u++) FS256_QUAD(lut, cd, u);
                FS256_WIDEN();
            }
        }
    }
    store_avx2(t[0], out);
    if (nb == 2) store_avx2(t[1], out + 1);
}

QC_AVX2 static void blocks_avx2(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                                int nibbles, int nb, int g, const fs_taps *tp, const fs_out *out) {
    qc_ran(QC_FAMILY_FS_LOOKUPS, QC_ISA_AVX2);
    /* Constant arguments let the inlined body specialise: accumulators stay in registers.  Sixteen
     * 256-bit registers hold the accumulators of two blocks, so larger groups go in pairs. */
    const size_t bstride = (size_t)quads * quad_bytes(nibbles ? QC_FS_NIBBLES : QC_FS_BYTES);
    for (int b = 0; b < nb; b += 2) {
        const uint8_t *c = codes + b * bstride;
        if (nibbles)
            nb - b >= 2 ? blocks_avx2_n(Q, groups, quads, c, tap_stride, 1, 2, g, tp, out + b)
                        : blocks_avx2_n(Q, groups, quads, c, tap_stride, 1, 1, g, tp, out + b);
        else
            nb - b >= 2 ? blocks_avx2_n(Q, groups, quads, c, tap_stride, 0, 2, g, tp, out + b)
                        : blocks_avx2_n(Q, groups, quads, c, tap_stride, 0, 1, g, tp, out + b);
    }
}

/* Sum of the four 128-bit lanes of 16-bit counts, widened: 8 x u32. */
QC_AVX512 static inline __m256i widen4(__m512i a) {
    __m512i w = _mm512_add_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(a)),
                                 _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(a, 1)));
    return _mm256_add_epi32(_mm512_castsi512_si256(w), _mm512_extracti64x4_epi64(w, 1));
}

#define FS512_STEP(c, A0, A1, A2, A3)                                                          \
    do {                                                                                       \
        __m512i clo_ = _mm512_loadu_si512((const void *)(c)), chi_;                            \
        if (nibbles) {                                                                         \
            chi_ = _mm512_and_si512(_mm512_srli_epi16(clo_, 4), nib);                          \
            clo_ = _mm512_and_si512(clo_, nib);                                                \
        } else {                                                                               \
            chi_ = _mm512_loadu_si512((const void *)((c) + 64));                               \
        }                                                                                      \
        __m512i rlo_ = _mm512_shuffle_epi8(l, clo_), rhi_ = _mm512_shuffle_epi8(l, chi_);      \
        A0 = _mm512_add_epi16(A0, rlo_);                                                       \
        A1 = _mm512_add_epi16(A1, _mm512_srli_epi16(rlo_, 8));                                 \
        A2 = _mm512_add_epi16(A2, rhi_);                                                       \
        A3 = _mm512_add_epi16(A3, _mm512_srli_epi16(rhi_, 8));                                 \
    } while (0)

#define FS512_QUAD(lut, c, u)                                                                  \
    do {                                                                                       \
        const __m512i l = _mm512_loadu_si512((const void *)((lut) + (size_t)(u) * 64));        \
        const uint8_t *cq_ = (c) + (size_t)(u) * qb;                                           \
        if (nibbles) {                                                                         \
            _mm_prefetch((const char *)cq_ + FS_PF, _MM_HINT_T0);                              \
            if (nb >= 2) _mm_prefetch((const char *)cq_ + bstride + FS_PF, _MM_HINT_T0);       \
            if (nb >= 3) _mm_prefetch((const char *)cq_ + 2 * bstride + FS_PF, _MM_HINT_T0);   \
            if (nb >= 4) _mm_prefetch((const char *)cq_ + 3 * bstride + FS_PF, _MM_HINT_T0);   \
        }                                                                                      \
        FS512_STEP(cq_, a0, a1, a2, a3);                                                       \
        if (nb >= 2) FS512_STEP(cq_ + bstride, b0, b1, b2, b3);                                \
        if (nb >= 3) FS512_STEP(cq_ + 2 * bstride, c0, c1, c2, c3);                            \
        if (nb >= 4) FS512_STEP(cq_ + 3 * bstride, d0, d1, d2, d3);                            \
    } while (0)

#define FS512_WIDEN()                                                                          \
    do {                                                                                       \
        FS_FLUSH_INTO(widen4, _mm512_sub_epi16, _mm512_slli_epi16, t[0], a0, a1, a2, a3);      \
        if (nb >= 2) FS_FLUSH_INTO(widen4, _mm512_sub_epi16, _mm512_slli_epi16, t[1], b0, b1, b2, b3); \
        if (nb >= 3) FS_FLUSH_INTO(widen4, _mm512_sub_epi16, _mm512_slli_epi16, t[2], c0, c1, c2, c3); \
        if (nb >= 4) FS_FLUSH_INTO(widen4, _mm512_sub_epi16, _mm512_slli_epi16, t[3], d0, d1, d2, d3); \
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = zero;  \
    } while (0)

/* Widened after runs of whole taps or chunks of one, as blocks_avx2_n. */
QC_AVX512 QC_INLINE void blocks_avx512_n(const uint8_t *Q, int groups, int quads, const uint8_t *codes,
                                         size_t tap_stride, const int nibbles, const int nb, int g,
                                         const fs_taps *tp, const fs_out *out) {
    (void)groups, (void)tap_stride;
    const __m256i z = _mm256_setzero_si256();
    const __m512i zero = _mm512_setzero_si512(), nib = _mm512_set1_epi8(0x0f);
    __m256i t[FS_NB][4] = {{z, z, z, z}, {z, z, z, z}, {z, z, z, z}, {z, z, z, z}};
    __m512i a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
    __m512i c0 = zero, c1 = zero, c2 = zero, c3 = zero, d0 = zero, d1 = zero, d2 = zero, d3 = zero;
    const size_t qb = quad_bytes(nibbles ? QC_FS_NIBBLES : QC_FS_BYTES), bstride = (size_t)quads * qb;
    const uint8_t *Qg = Q + (size_t)g * quads * 64;
    if (quads < FS_FLUSH) {
        const int per = FS_FLUSH / quads;
        for (int k0 = 0; k0 < tp->n; k0 += per) {
            const int k1 = tp->n - k0 < per ? tp->n : k0 + per;
            for (int k = k0; k < k1; k++) {
                const uint8_t *lut = Qg + tp->lut[k], *cd = codes + tp->cd[k];
                for (int u = 0; u < quads; u++) FS512_QUAD(lut, cd, u);
            }
            FS512_WIDEN();
        }
    } else {
        for (int k = 0; k < tp->n; k++) {
            const uint8_t *lut = Qg + tp->lut[k], *cd = codes + tp->cd[k];
            for (int u0 = 0; u0 < quads; u0 += FS_FLUSH) {
                const int u1 = quads - u0 < FS_FLUSH ? quads : u0 + FS_FLUSH;
                for (int u = u0; u < u1; u++) FS512_QUAD(lut, cd, u);
                FS512_WIDEN();
            }
        }
    }
    for (int b = 0; b < nb; b++) store_avx2(t[b], out + b);
}

QC_AVX512 static void blocks_avx512(const uint8_t *Q, int groups, int quads, const uint8_t *codes,
                                    size_t tap_stride, int nibbles, int nb, int g, const fs_taps *tp,
                                    const fs_out *out) {
    qc_ran(QC_FAMILY_FS_LOOKUPS, QC_ISA_AVX512);
#define FS512_CALL(NB, NIB) blocks_avx512_n(Q, groups, quads, codes, tap_stride, NIB, NB, g, tp, out)
    FS_SPECIALISE(nb, nibbles, FS512_CALL);
#undef FS512_CALL
}

/* The epilogue of one block from its 32-bit sums (channels 0-15, 16-31): store_scalar's fused
 * multiply-add, 16 channels at a time, masked at the group's end. */
QC_VNNI QC_INLINE void store_dot(__m512i s0, __m512i s1, const fs_out *o) {
    const __m512 s = _mm512_set1_ps(o->s), osum = _mm512_set1_ps(o->osum);
    const __m512i sums[2] = {s0, s1};
    for (int i = 0; i < 2 && 16 * i < o->n; i++) {
        const int n = o->n - 16 * i;
        const __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
        __m512 v = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(sums[i]), osum);
        if (o->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o->bias + 16 * i));
        _mm512_mask_storeu_ps(o->y + 16 * i, m, qc_act512(v, o->act));
    }
}

/* One quad of one block for one or two pixels: the codes are loaded once and permute each pixel's
 * table (LA, LB).  Reading codes, not the arithmetic, bounds these lookups: a second pixel per
 * pass measured 1.3x faster on AlexNet's conv layers. */
#define FSD_STEP(c, A0, A1, E0, E1)                                                               \
    do {                                                                                          \
        const __m512i x0_ = _mm512_loadu_si512((const void *)(c));                               \
        const __m512i x1_ = _mm512_loadu_si512((const void *)((c) + 64));                        \
        A0 = _mm512_dpbusd_epi32(A0, _mm512_permutexvar_epi8(x0_, la), ones);                    \
        A1 = _mm512_dpbusd_epi32(A1, _mm512_permutexvar_epi8(x1_, la), ones);                    \
        if (two) {                                                                                \
            E0 = _mm512_dpbusd_epi32(E0, _mm512_permutexvar_epi8(x0_, lb), ones);                \
            E1 = _mm512_dpbusd_epi32(E1, _mm512_permutexvar_epi8(x1_, lb), ones);                \
        }                                                                                         \
    } while (0)

/* nb <= FS_NB blocks of one pixel, or of two (`two`: the second pixel's tables are pstep bytes
 * after the first's, its outputs in outb). */
QC_VNNI QC_INLINE void dot_vnni_n(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                                  const int nb, const int two, int g, const fs_taps *tp, size_t pstep,
                                  const fs_out *out, const fs_out *outb) {
    const __m512i ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    __m512i a0 = zero, a1 = zero, b0 = zero, b1 = zero, c0 = zero, c1 = zero, d0 = zero, d1 = zero;
    __m512i e0 = zero, e1 = zero, f0 = zero, f1 = zero, g0 = zero, g1 = zero, h0 = zero, h1 = zero;
    const size_t bs = (size_t)quads * 128;
    for (int k = 0; k < tp->n; k++) {
        const uint8_t *lut = Q + (tp->pix[k] * groups + g) * quads * 64;
        const uint8_t *cd = codes + (size_t)tp->tap[k] * tap_stride;
        for (int u = 0; u < quads; u++) {
            const __m512i la = _mm512_loadu_si512((const void *)(lut + (size_t)u * 64));
            const __m512i lb = two ? _mm512_loadu_si512((const void *)(lut + pstep + (size_t)u * 64)) : la;
            const uint8_t *c = cd + (size_t)u * 128;
            FSD_STEP(c, a0, a1, e0, e1);
            if (nb >= 2) FSD_STEP(c + bs, b0, b1, f0, f1);
            if (nb >= 3) FSD_STEP(c + 2 * bs, c0, c1, g0, g1);
            if (nb >= 4) FSD_STEP(c + 3 * bs, d0, d1, h0, h1);
        }
    }
    store_dot(a0, a1, out);
    if (nb >= 2) store_dot(b0, b1, out + 1);
    if (nb >= 3) store_dot(c0, c1, out + 2);
    if (nb >= 4) store_dot(d0, d1, out + 3);
    if (two) {
        store_dot(e0, e1, outb);
        if (nb >= 2) store_dot(f0, f1, outb + 1);
        if (nb >= 3) store_dot(g0, g1, outb + 2);
        if (nb >= 4) store_dot(h0, h1, outb + 3);
    }
}

QC_VNNI static void dot_pair(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                             int nb, int g, const fs_taps *tp, size_t pstep, const fs_out *out, const fs_out *outb) {
    qc_ran(QC_FAMILY_FS_LOOKUPS, QC_ISA_AVX512VNNI);
#define FSD_CALL(NB, TWO) dot_vnni_n(Q, groups, quads, codes, tap_stride, NB, TWO, g, tp, pstep, out, outb)
    FS_SPECIALISE(nb, outb != NULL, FSD_CALL);
#undef FSD_CALL
}

QC_VNNI static void dot_vnni(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                             int unused, int nb, int g, const fs_taps *tp, const fs_out *out) {
    (void)unused;
    dot_pair(Q, groups, quads, codes, tap_stride, nb, g, tp, 0, out, NULL);
}
#endif

#if QC_HAVE_NEON
/* NEON lookups.  Bytes and nibbles layouts: the quad's four tables are four registers, and
 * vqtbl1q_u8 looks up 16 codes of subspace h in table h (an index past 15 would give 0, so nibbles
 * are masked).  The bytes are widened into 16-bit sums with vaddw: per half of a block (16
 * channels), `lo` takes lanes l = 0..7 and `hi` lanes 8..15, the four subspaces of a quad into the
 * same sums, so a lane gains at most 4 * 255 per quad and the sums are widened into 32 bits every
 * FS_FLUSH_NEON = 64 quads (65280 < 65536).  Lane l holds channel perm(l), so lo's even lanes
 * then hi's are channels 0-7 and their odd lanes 8-15: vuzp1q / vuzp2q put them in order. */
#define FS_FLUSH_NEON 64

/* sum[0..15] += the 16 channels of one half, from its 16-bit sums lo and hi. */
QC_INLINE void widen_neon(uint32_t *sum, uint16x8_t lo, uint16x8_t hi) {
    const uint16x8_t e = vuzp1q_u16(lo, hi), o = vuzp2q_u16(lo, hi);
    vst1q_u32(sum, vaddw_u16(vld1q_u32(sum), vget_low_u16(e)));
    vst1q_u32(sum + 4, vaddw_high_u16(vld1q_u32(sum + 4), e));
    vst1q_u32(sum + 8, vaddw_u16(vld1q_u32(sum + 8), vget_low_u16(o)));
    vst1q_u32(sum + 12, vaddw_high_u16(vld1q_u32(sum + 12), o));
}

/* store_scalar's fused multiply-add, four channels at a time; a partial block goes to it. */
QC_INLINE void store_neon(const uint32_t sum[QC_FS_BLOCK], const fs_out *o) {
    if (o->n < QC_FS_BLOCK) {
        store_scalar(sum, o);
        return;
    }
    const float32x4_t s = vdupq_n_f32(o->s), osum = vdupq_n_f32(o->osum);
    for (int i = 0; i < QC_FS_BLOCK; i += 4) {
        float32x4_t v = vfmaq_f32(osum, s, vcvtq_f32_u32(vld1q_u32(sum + i)));
        if (o->bias) v = vaddq_f32(v, vld1q_f32(o->bias + i));
        vst1q_f32(o->y + i, qc_act128(v, o->act));
    }
}

/* Subspace h of one quad of one block: table T, 32 lookups (16 channels of each half) into the
 * 16-bit sums A0, A1 (channels 0-15) and A2, A3 (16-31). */
#define FSN_SUB(T, c, A0, A1, A2, A3)                                                              \
    do {                                                                                           \
        uint8x16_t c0_, c1_;                                                                       \
        if (nibbles) {                                                                             \
            const uint8x16_t b_ = vld1q_u8(c);                                                     \
            c0_ = vandq_u8(b_, vdupq_n_u8(15));                                                    \
            c1_ = vshrq_n_u8(b_, 4);                                                               \
        } else {                                                                                   \
            c0_ = vld1q_u8(c);                                                                     \
            c1_ = vld1q_u8((c) + 64);                                                              \
        }                                                                                          \
        const uint8x16_t r0_ = vqtbl1q_u8(T, c0_), r1_ = vqtbl1q_u8(T, c1_);                       \
        A0 = vaddw_u8(A0, vget_low_u8(r0_));                                                       \
        A1 = vaddw_high_u8(A1, r0_);                                                               \
        A2 = vaddw_u8(A2, vget_low_u8(r1_));                                                       \
        A3 = vaddw_high_u8(A3, r1_);                                                               \
    } while (0)

/* One quad of one block: 128 lookups (two halves of 16 channels, four subspaces).  The sums are
 * named variables, not arrays: GCC stored arrays of them to the stack after every quad. */
#define FSN_STEP(c, A0, A1, A2, A3)                                                                \
    do {                                                                                           \
        FSN_SUB(l.val[0], (c), A0, A1, A2, A3);                                                    \
        FSN_SUB(l.val[1], (c) + 16, A0, A1, A2, A3);                                               \
        FSN_SUB(l.val[2], (c) + 32, A0, A1, A2, A3);                                               \
        FSN_SUB(l.val[3], (c) + 48, A0, A1, A2, A3);                                               \
    } while (0)

#define FSN_WIDEN(sum, A0, A1, A2, A3)                                                             \
    do {                                                                                           \
        widen_neon(sum, A0, A1);                                                                   \
        widen_neon((sum) + 16, A2, A3);                                                            \
        A0 = A1 = A2 = A3 = vdupq_n_u16(0);                                                        \
    } while (0)

QC_INLINE void blocks_neon_n(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                             const int nibbles, const int nb, int g, const fs_taps *tp, const fs_out *out) {
    uint32_t sum[2][QC_FS_BLOCK];
    memset(sum, 0, sizeof sum);
    const uint16x8_t z = vdupq_n_u16(0);
    uint16x8_t a0 = z, a1 = z, a2 = z, a3 = z, b0 = z, b1 = z, b2 = z, b3 = z;
    const size_t qb = quad_bytes(nibbles ? QC_FS_NIBBLES : QC_FS_BYTES), bstride = (size_t)quads * qb;
    int pending = 0;
    for (int k = 0; k < tp->n; k++) {
        const uint8_t *lut = Q + (tp->pix[k] * groups + g) * quads * 64;
        const uint8_t *cd = codes + (size_t)tp->tap[k] * tap_stride;
        for (int u = 0; u < quads; u++) {
            const uint8x16x4_t l = vld1q_u8_x4(lut + (size_t)u * 64);
            FSN_STEP(cd + (size_t)u * qb, a0, a1, a2, a3);
            if (nb == 2) FSN_STEP(cd + bstride + (size_t)u * qb, b0, b1, b2, b3);
            if (++pending == FS_FLUSH_NEON) {
                FSN_WIDEN(sum[0], a0, a1, a2, a3);
                if (nb == 2) FSN_WIDEN(sum[1], b0, b1, b2, b3);
                pending = 0;
            }
        }
    }
    FSN_WIDEN(sum[0], a0, a1, a2, a3);
    store_neon(sum[0], out);
    if (nb == 2) {
        FSN_WIDEN(sum[1], b0, b1, b2, b3);
        store_neon(sum[1], out + 1);
    }
}

/* Blocks in pairs, as on AVX2: with four per pass, GCC's early loads of the codes took the sums
 * out of the 32 registers (stores in the loop). */
static void blocks_neon(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                        int nibbles, int nb, int g, const fs_taps *tp, const fs_out *out) {
    qc_ran(QC_FAMILY_FS_LOOKUPS, QC_ISA_NEON);
    const size_t bstride = (size_t)quads * quad_bytes(nibbles ? QC_FS_NIBBLES : QC_FS_BYTES);
    for (int b = 0; b < nb; b += 2) {
        const uint8_t *c = codes + b * bstride;
        if (nibbles)
            nb - b >= 2 ? blocks_neon_n(Q, groups, quads, c, tap_stride, 1, 2, g, tp, out + b)
                        : blocks_neon_n(Q, groups, quads, c, tap_stride, 1, 1, g, tp, out + b);
        else
            nb - b >= 2 ? blocks_neon_n(Q, groups, quads, c, tap_stride, 0, 2, g, tp, out + b)
                        : blocks_neon_n(Q, groups, quads, c, tap_stride, 0, 1, g, tp, out + b);
    }
}

/* The dot layout with the ARMv8.2 dot products: one vqtbl4q_u8 looks 16 code bytes up in the
 * quad's four tables at once (the index carries the subspace), one udot against ones adds each
 * channel's four bytes into its 32-bit sum: two instructions per 16 lookups, no widening.  A block
 * is eight sums of four channels, in channel order, one block per pass: with two, the 16 sums, 16
 * code vectors GCC loads ahead and the table took more than the 32 registers (spills in the loop).
 * The sums are named variables: as an array GCC kept them on the stack, a store per udot. */
#define FSND_STEP(c, A0, A1, A2, A3, A4, A5, A6, A7)                                                 \
    do {                                                                                             \
        A0 = qc_udot(A0, vqtbl4q_u8(l, vld1q_u8((c))), ones);                                        \
        A1 = qc_udot(A1, vqtbl4q_u8(l, vld1q_u8((c) + 16)), ones);                                   \
        A2 = qc_udot(A2, vqtbl4q_u8(l, vld1q_u8((c) + 32)), ones);                                   \
        A3 = qc_udot(A3, vqtbl4q_u8(l, vld1q_u8((c) + 48)), ones);                                   \
        A4 = qc_udot(A4, vqtbl4q_u8(l, vld1q_u8((c) + 64)), ones);                                   \
        A5 = qc_udot(A5, vqtbl4q_u8(l, vld1q_u8((c) + 80)), ones);                                   \
        A6 = qc_udot(A6, vqtbl4q_u8(l, vld1q_u8((c) + 96)), ones);                                   \
        A7 = qc_udot(A7, vqtbl4q_u8(l, vld1q_u8((c) + 112)), ones);                                  \
    } while (0)
#define FSND_STORE(o, A0, A1, A2, A3, A4, A5, A6, A7)                                                \
    do {                                                                                             \
        uint32_t sum_[QC_FS_BLOCK];                                                                  \
        vst1q_u32(sum_, A0), vst1q_u32(sum_ + 4, A1), vst1q_u32(sum_ + 8, A2), vst1q_u32(sum_ + 12, A3);     \
        vst1q_u32(sum_ + 16, A4), vst1q_u32(sum_ + 20, A5), vst1q_u32(sum_ + 24, A6), vst1q_u32(sum_ + 28, A7); \
        store_neon(sum_, o);                                                                         \
    } while (0)

QC_DOTPROD static void dot_neondot(const uint8_t *Q, int groups, int quads, const uint8_t *codes, size_t tap_stride,
                                   int unused, int nb, int g, const fs_taps *tp, const fs_out *out) {
    (void)unused;
    qc_ran(QC_FAMILY_FS_LOOKUPS, QC_ISA_NEONDOT);
    const uint8x16_t ones = vdupq_n_u8(1);
    for (int b = 0; b < nb; b++) {
        const uint8_t *codes_b = codes + (size_t)b * quads * 128;
        const uint32x4_t z = vdupq_n_u32(0);
        uint32x4_t a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z;
        for (int k = 0; k < tp->n; k++) {
            const uint8_t *lut = Q + (tp->pix[k] * groups + g) * quads * 64;
            const uint8_t *cd = codes_b + (size_t)tp->tap[k] * tap_stride;
            for (int u = 0; u < quads; u++) {
                const uint8x16x4_t l = vld1q_u8_x4(lut + (size_t)u * 64);
                FSND_STEP(cd + (size_t)u * 128, a0, a1, a2, a3, a4, a5, a6, a7);
            }
        }
        FSND_STORE(out + b, a0, a1, a2, a3, a4, a5, a6, a7);
    }
}
#endif

void qc_pq_conv_fastscan(const uint8_t *Q, const float *scale, const float *offset_sum, int h, int w,
                         int groups, int M, const uint8_t *packed, int kh, int kw, int sh, int sw,
                         int pt, int pl, int cout, const float *bias, float *y, int oh, int ow, int act,
                         int layout) {
    static const blocks_fn variants[QC_ISA_COUNT] = QC_VARIANTS(blocks_scalar, blocks_avx2, blocks_avx512, blocks_neon);
#if QC_HAVE_X86
    const int vnni = qc_isa() >= QC_ISA_AVX512VNNI;
    const blocks_fn dot = vnni ? dot_vnni : dot_scalar;
#elif QC_HAVE_NEON
    const int vnni = 0;
    const blocks_fn dot = qc_isa() == QC_ISA_NEONDOT ? dot_neondot : dot_scalar;
#else
    const int vnni = 0;
    const blocks_fn dot = dot_scalar;
#endif
    const blocks_fn blocks = layout == QC_FS_DOT ? dot : variants[qc_isa()];
    const int nibbles = layout == QC_FS_NIBBLES, pairs = vnni && layout == QC_FS_DOT;
    const int cout_g = cout / groups, nblk = (cout_g + QC_FS_BLOCK - 1) / QC_FS_BLOCK, quads = quads_of(M);
    const size_t qb = quad_bytes(layout), tap_stride = (size_t)nblk * quads * qb;
    const size_t pstep = (size_t)sw * groups * quads * 64;   /* from a pixel's tables to its right neighbour's */
    (void)pstep;
    fs_taps tp;
    for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++) {
            tp.n = 0;
            for (int i = 0; i < kh; i++) {
                int iy = oy * sh - pt + i;
                if (iy < 0 || iy >= h) continue;    /* zero padding contributes nothing */
                for (int j = 0; j < kw; j++) {
                    int ix = ox * sw - pl + j;
                    if (ix < 0 || ix >= w) continue;
                    tp.pix[tp.n] = (size_t)iy * w + ix;
                    tp.lut[tp.n] = tp.pix[tp.n] * groups * quads * 64;
                    tp.cd[tp.n] = (size_t)(i * kw + j) * tap_stride;
                    tp.tap[tp.n++] = i * kw + j;
                }
            }
            /* Output ox + 1 reads the same taps sw pixels to the right when neither window leaves
             * the image sideways: then one pass serves both. */
            const int two = pairs && tp.n && ox + 1 < ow && ox * sw - pl >= 0 && (ox + 1) * sw - pl + kw <= w;
            float *yp = y + ((size_t)oy * ow + ox) * cout;
            for (int g = 0; g < groups; g++) {
                /* Every valid tap shares the scale (one tap, or a shared-scale band). */
                float s = tp.n ? scale[tp.pix[0] * groups + g] : 0.f, osum = 0.f, sb = 0.f, osumb = 0.f;
                for (int k = 0; k < tp.n; k++) osum += offset_sum[tp.pix[k] * groups + g];
                if (two) {
                    sb = scale[(tp.pix[0] + sw) * groups + g];
                    for (int k = 0; k < tp.n; k++) osumb += offset_sum[(tp.pix[k] + sw) * groups + g];
                }
                for (int b = 0; b < nblk; b += FS_NB) {
                    int nb = nblk - b < FS_NB ? nblk - b : FS_NB;
                    fs_out out[FS_NB], outb[FS_NB];
                    for (int j = 0; j < nb; j++) {
                        int c0 = g * cout_g + (b + j) * QC_FS_BLOCK, rest = cout_g - (b + j) * QC_FS_BLOCK;
                        rest = rest < QC_FS_BLOCK ? rest : QC_FS_BLOCK;
                        out[j] = (fs_out){s, osum, bias ? bias + c0 : NULL, yp + c0, rest, act};
                        if (two) outb[j] = (fs_out){sb, osumb, bias ? bias + c0 : NULL, yp + cout + c0, rest, act};
                    }
                    const uint8_t *codes = packed + ((size_t)g * kh * kw * nblk + b) * quads * qb;
#if QC_HAVE_X86
                    if (two) {
                        dot_pair(Q, groups, quads, codes, tap_stride, nb, g, &tp, pstep, out, outb);
                        continue;
                    }
#else
                    (void)outb;
#endif
                    blocks(Q, groups, quads, codes, tap_stride, nibbles, nb, g, &tp, out);
                }
            }
            ox += two;
        }
}
