/* Depthwise convolution in NHWC.
 *
 * Channels are the contiguous axis, so every output pixel is a sum over its taps of
 * (input pixel's channel vector) * (tap's weight vector), vectorised across channels.  Work goes
 * output row by output row; within a row, channel block by channel block, sweeping the row's pixels:
 *
 *  - For the common kernels (3x3 and 5x5, column stride 1 or 2) the kernel size and stride are
 *    compile-time constants, so the block's kh*kw weight vectors are loaded once per row and kept
 *    in registers (spilled to the stack where the register file is too small — still one load),
 *    and Q neighbouring output pixels are computed together: an input vector is loaded once and
 *    feeds every output whose window covers it, and the Q accumulators are independent chains.
 *  - Padding is never materialised.  Output columns whose window lies inside the input row
 *    ("interior") run without any bounds checks; the few border columns skip their out-of-range
 *    taps one by one; tap rows outside the input are dropped for the whole output row.
 *  - Other kernel shapes and the channel tail (c not a multiple of the vector width) take a
 *    generic per-pixel path: clipped tap ranges, weights read from memory, masked loads.
 *  - Groups of up to 8 pixels (dw256_group, dw512_group) instead, where that scheme loses: only the
 *    current tap row's weights in registers, 8 accumulator chains (AVX2's 16 registers leave 4
 *    for the scheme above), border pixels inside clipped groups (skipping the same taps as the
 *    reference, not one pixel at a time as a single dependent chain), the last group overlapping
 *    the one before.  Used on narrow rows (Lite0's 14- and 7-pixel 5x5 layers: 1.3-2.3x) and,
 *    pixel-major (each group through all channel blocks), on wide maps, where sweeping the tap rows
 *    once per channel block ran into cache-set conflicts.  The choice per shape is measured (see
 *    dw_row_avx2, dw_row_avx512); every path sums the same taps in the same order.
 *
 * The scalar reference below is deliberately plain; the tests hold the SIMD variants to it. */
#include <stddef.h>
#include "qcnn.h"
#include "simd.h"

/* Largest specialised kernel side and pixels per step (sizes of the register arrays). */
#define DW_MAXK 5
#define DW_MAXQ 4

typedef struct {
    const float *x, *wt, *bias;
    float *y;
    int n, h, w, c, kh, kw, sh, sw, pt, pl, oh, ow, act;
} dw_args;

/* Valid tap range [lo, hi) along one axis for output coordinate o (empty when the window lies
 * entirely in the padding). */
static inline void tap_range(int o, int stride, int pad, int k, int size, int *lo, int *hi) {
    int start = o * stride - pad;
    *lo = start < 0 ? -start : 0;
    *hi = start + k > size ? size - start : k;
}

/* Output columns [lo, hi) whose whole window lies inside the input row: the interior. */
static inline void interior_cols(const dw_args *a, int *lo, int *hi) {
    int l = (a->pl + a->sw - 1) / a->sw;          /* first ox with ox * sw - pl >= 0 */
    int span = a->w + a->pl - a->kw;              /* last window start that still fits */
    int h = span < 0 ? 0 : span / a->sw + 1;
    if (l > a->ow) l = a->ow;
    if (h > a->ow) h = a->ow;
    *lo = l;
    *hi = h < l ? l : h;
}

/* ---- scalar reference ------------------------------------------------------------------------ */

static void dw_row_scalar(const dw_args *a, int b, int oy) {
    const size_t c = (size_t)a->c;
    const float *xb = a->x + (size_t)b * a->h * a->w * c;
    float *yr = a->y + ((size_t)b * a->oh + oy) * a->ow * c;
    const int iy = oy * a->sh - a->pt;
    int i0, i1;
    tap_range(oy, a->sh, a->pt, a->kh, a->h, &i0, &i1);
    for (int ox = 0; ox < a->ow; ox++) {
        const int ix = ox * a->sw - a->pl;
        int j0, j1;
        tap_range(ox, a->sw, a->pl, a->kw, a->w, &j0, &j1);
        /* Accumulate in the output pixel itself, tap after tap, channels innermost: the same sums
         * in the same order as the SIMD variants, and loops the compiler can vectorise. */
        float *yp = yr + (size_t)ox * c;
        for (size_t ch = 0; ch < c; ch++)
            yp[ch] = a->bias ? a->bias[ch] : 0.f;
        for (int i = i0; i < i1; i++)
            for (int j = j0; j < j1; j++) {
                const float *xp = xb + ((size_t)(iy + i) * a->w + (size_t)(ix + j)) * c;
                const float *wp = a->wt + ((size_t)i * a->kw + j) * c;
                for (size_t ch = 0; ch < c; ch++)
                    yp[ch] += xp[ch] * wp[ch];
            }
        for (size_t ch = 0; ch < c; ch++)
            yp[ch] = qc_act(yp[ch], a->act);
    }
}

#if QC_HAVE_X86

/* (The SIMD variants' 8-pixel groups:) does the window of pixels ox .. ox + q - 1 reach outside
 * the input row? */
static inline int dw_group_clipped(const dw_args *a, int ox, int q) {
    const int first = ox * a->sw - a->pl, last = (ox + q - 1) * a->sw - a->pl + a->kw;
    return first < 0 || last > a->w;
}

/* ---- AVX-512: 16 channels per vector, 32 registers ------------------------------------------- */

/* Generic path: one output pixel, channels [cb, cb + 16) under mask m, any kernel size. */
QC_AVX512 static void dw512_pixel(const dw_args *a, const float *xb, int oy, int ox, int cb, __mmask16 m,
                                  float *yp) {
    const size_t c = (size_t)a->c;
    const int iy = oy * a->sh - a->pt, ix = ox * a->sw - a->pl;
    int i0, i1, j0, j1;
    tap_range(oy, a->sh, a->pt, a->kh, a->h, &i0, &i1);
    tap_range(ox, a->sw, a->pl, a->kw, a->w, &j0, &j1);
    __m512 acc = a->bias ? _mm512_maskz_loadu_ps(m, a->bias + cb) : _mm512_setzero_ps();
    for (int i = i0; i < i1; i++) {
        const float *xr = xb + ((size_t)(iy + i) * a->w + (size_t)(ix + j0)) * c + cb;
        const float *wr = a->wt + ((size_t)i * a->kw + j0) * c + cb;
        for (int j = j0; j < j1; j++, xr += c, wr += c)
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, xr), _mm512_maskz_loadu_ps(m, wr), acc);
    }
    _mm512_mask_storeu_ps(yp + cb, m, qc_act512(acc, a->act));
}

/* One border pixel: taps outside the input row are skipped one by one (few pixels per row). */
QC_AVX512 QC_INLINE void dw512_border(const dw_args *a, const float *const *rows, float *yr, const __m512 *W, __m512 B,
                                     size_t cb, int ox, const int KH, const int KW, const int SW, const int FULL) {
    const size_t c = (size_t)a->c;
    const int ix = ox * SW - a->pl;
    const int j0 = ix < 0 ? -ix : 0, j1 = ix + KW > a->w ? a->w - ix : KW;
    __m512 acc = B;
#pragma GCC unroll 8
    for (int i = 0; i < KH; i++) {
        if (!FULL && !rows[i]) continue;
#pragma GCC unroll 8
        for (int j = 0; j < KW; j++)
            if (j >= j0 && j < j1)  /* index formed as an integer first: ix may be negative */
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(&rows[i][(ptrdiff_t)(ix + j) * (ptrdiff_t)c + (ptrdiff_t)cb]),
                                      W[i * KW + j], acc);
    }
    _mm512_storeu_ps(yr + (size_t)ox * c + cb, qc_act512(acc, a->act));
}

/* Fixed kernel KH x KW, column stride SW, Q outputs per step.  rows[i] is input row i of the
 * window (NULL outside the image); FULL promises every row is present, removing the row tests. */
QC_AVX512 QC_INLINE void dw512_fixed(const dw_args *a, const float *const *rows, float *yr, int lo, int hi,
                                    const int KH, const int KW, const int SW, const int Q, const int FULL) {
    const size_t c = (size_t)a->c;
    const int pl = a->pl, act = a->act;
    for (size_t cb = 0; cb + 16 <= c; cb += 16) {
        __m512 W[DW_MAXK * DW_MAXK];  /* fixed size, not a VLA: only a real array can become registers */
#pragma GCC unroll 32
        for (int t = 0; t < KH * KW; t++)
            W[t] = _mm512_loadu_ps(a->wt + (size_t)t * c + cb);
        const __m512 B = a->bias ? _mm512_loadu_ps(a->bias + cb) : _mm512_setzero_ps();
        int ox = 0;
        for (; ox < lo; ox++)
            dw512_border(a, rows, yr, W, B, cb, ox, KH, KW, SW, FULL);
        /* Interior: Q pixels at a time; each input vector is loaded once per row of taps and
         * feeds every one of the Q outputs whose window covers it. */
        for (; ox + Q <= hi; ox += Q) {
            const size_t col = (size_t)(ox * SW - pl) * c + cb;
            __m512 acc[DW_MAXQ];
#pragma GCC unroll 8
            for (int q = 0; q < Q; q++) acc[q] = B;
#pragma GCC unroll 8
            for (int i = 0; i < KH; i++) {
                if (!FULL && !rows[i]) continue;
                const float *r = rows[i] + col;
#pragma GCC unroll 32
                for (int t = 0; t < (Q - 1) * SW + KW; t++) {
                    const __m512 v = _mm512_loadu_ps(r + (size_t)t * c);
#pragma GCC unroll 8
                    for (int q = 0; q < Q; q++) {
                        const int j = t - q * SW;
                        if (j >= 0 && j < KW) acc[q] = _mm512_fmadd_ps(v, W[i * KW + j], acc[q]);
                    }
                }
            }
#pragma GCC unroll 8
            for (int q = 0; q < Q; q++)
                _mm512_storeu_ps(yr + (size_t)(ox + q) * c + cb, qc_act512(acc[q], act));
        }
        for (; ox < hi; ox++) {
            const size_t col = (size_t)(ox * SW - pl) * c + cb;
            __m512 acc = B;
#pragma GCC unroll 8
            for (int i = 0; i < KH; i++) {
                if (!FULL && !rows[i]) continue;
#pragma GCC unroll 8
                for (int j = 0; j < KW; j++)
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(rows[i] + col + (size_t)j * c), W[i * KW + j], acc);
            }
            _mm512_storeu_ps(yr + (size_t)ox * c + cb, qc_act512(acc, act));
        }
        for (; ox < a->ow; ox++)
            dw512_border(a, rows, yr, W, B, cb, ox, KH, KW, SW, FULL);
    }
}

/* As dw256_wide on AVX2 (see there): groups of Q <= 8 output pixels, each through all the channel
 * blocks before the next, the current tap row's weights reloaded per block; Q independent
 * accumulator chains.  (Block-major on 112 x 112 x 32 stride 1: 50 GF/s, 120 on 56 x 56.) */
QC_AVX512 QC_INLINE void dw512_group(const dw_args *a, const float *const *rows, float *yr, size_t cb, int ox,
                                     __m512 B, const int KH, const int KW, const int SW, const int Q,
                                     const int CHECK, const int FULL) {
    const ptrdiff_t c = a->c;
    const int ix = ox * SW - a->pl, w = a->w, act = a->act;
    __m512 acc[8];
#pragma GCC unroll 8
    for (int q = 0; q < Q; q++) acc[q] = B;
#pragma GCC unroll 8
    for (int i = 0; i < KH; i++) {
        if (!FULL && !rows[i]) continue;
        __m512 W[DW_MAXK];
#pragma GCC unroll 8
        for (int j = 0; j < KW; j++) W[j] = _mm512_loadu_ps(a->wt + ((size_t)i * KW + j) * (size_t)c + cb);
        const float *r = CHECK ? rows[i] : rows[i] + (size_t)ix * (size_t)c + cb;
#pragma GCC unroll 32
        for (int t = 0; t < (Q - 1) * SW + KW; t++) {
            if (CHECK && (unsigned)(ix + t) >= (unsigned)w) continue;
            /* clipped: ix may be negative, so the index is formed as an integer first */
            const __m512 v = _mm512_loadu_ps(CHECK ? &r[(ptrdiff_t)(ix + t) * c + (ptrdiff_t)cb] : r + (size_t)t * (size_t)c);
#pragma GCC unroll 8
            for (int q = 0; q < Q; q++) {
                const int j = t - q * SW;
                if (j >= 0 && j < KW) acc[q] = _mm512_fmadd_ps(v, W[j], acc[q]);
            }
        }
    }
#pragma GCC unroll 8
    for (int q = 0; q < Q; q++)
        _mm512_storeu_ps(yr + (size_t)(ox + q) * (size_t)c + cb, qc_act512(acc[q], act));
}

QC_AVX512 QC_INLINE void dw512_wide(const dw_args *a, const float *const *rows, float *yr,
                                    const int KH, const int KW, const int SW, const int FULL) {
    const size_t c = (size_t)a->c;
    const int ow = a->ow;
    if (ow < 8) {  /* one group of the row's width */
        for (size_t cb = 0; cb + 16 <= c; cb += 16) {
            const __m512 B = a->bias ? _mm512_loadu_ps(a->bias + cb) : _mm512_setzero_ps();
#define DW_NARROW(Q) dw512_group(a, rows, yr, cb, 0, B, KH, KW, SW, Q, 1, FULL)
            QC_CASES8(ow, DW_NARROW)
#undef DW_NARROW
        }
        return;
    }
    for (int ox = 0; ox < ow; ox += 8) {
        const int o = ox + 8 <= ow ? ox : ow - 8;
        const int clipped = dw_group_clipped(a, o, 8);
        for (size_t cb = 0; cb + 16 <= c; cb += 16) {
            const __m512 B = a->bias ? _mm512_loadu_ps(a->bias + cb) : _mm512_setzero_ps();
            if (clipped) dw512_group(a, rows, yr, cb, o, B, KH, KW, SW, 8, 1, FULL);
            else dw512_group(a, rows, yr, cb, o, B, KH, KW, SW, 8, 0, FULL);
        }
    }
}

/* The kernel shapes that get functions of their own (K x K, column stride SW, FULL: every tap row
 * in the image), named PREFIX3s1 .. PREFIX5s2f, and their [K == 5][SW == 2][FULL] table. */
#define DW_SHAPES(FN, P)                                                                            \
    FN(P##3s1, 3, 1, 0) FN(P##3s1f, 3, 1, 1) FN(P##3s2, 3, 2, 0) FN(P##3s2f, 3, 2, 1)                \
    FN(P##5s1, 5, 1, 0) FN(P##5s1f, 5, 1, 1) FN(P##5s2, 5, 2, 0) FN(P##5s2f, 5, 2, 1)
#define DW_SHAPE_TABLE(P) {{{P##3s1, P##3s1f}, {P##3s2, P##3s2f}}, {{P##5s1, P##5s1f}, {P##5s2, P##5s2f}}}

#define DW512_WIDE_FN(name, K, SW, FULL)                                                            \
    QC_AVX512 __attribute__((noinline)) static void name(const dw_args *a, const float *const *rows, float *yr) { \
        dw512_wide(a, rows, yr, K, K, SW, FULL);                                                    \
    }
DW_SHAPES(DW512_WIDE_FN, dw512_w)
typedef void (*dw512_wide_fn)(const dw_args *, const float *const *, float *);
static const dw512_wide_fn DW512_WIDE[2][2][2] = DW_SHAPE_TABLE(dw512_w);

QC_AVX512 static void dw_row_avx512(const dw_args *a, int b, int oy) {
    const size_t c = (size_t)a->c;
    const float *xb = a->x + (size_t)b * a->h * a->w * c;
    float *yr = a->y + ((size_t)b * a->oh + oy) * a->ow * c;
    int i0, i1, lo, hi;
    tap_range(oy, a->sh, a->pt, a->kh, a->h, &i0, &i1);
    interior_cols(a, &lo, &hi);
    size_t cvec = c & ~(size_t)15;
    if (a->kh == a->kw && (a->kh == 3 || a->kh == 5) && (a->sw == 1 || a->sw == 2)) {
        const float *rows[5] = {0};
        for (int i = i0; i < i1; i++)
            rows[i] = xb + (size_t)(oy * a->sh - a->pt + i) * a->w * c;
        const int full = i0 == 0 && i1 == a->kh;
        /* Q: 4 outputs for 3x3; 2 for 5x5, whose 25 weight vectors leave few spare registers. */
        /* Pixel-major 8-pixel groups on wide maps, and for 5x5 on narrow rows, where the 2-pixel
         * steps below leave the border pixels and the rest as short dependent chains (14 x 14 x 672:
         * 1.5x, 7 x 7 x 1152: 2.3x, 28 x 28 x 240: 1.27x; 56 x 56 x 144 -> 28 x 28 stride 2: 0.94x,
         * so not there). */
        if ((a->w >= 80 && c >= 32 && a->ow >= 8) || (a->kh == 5 && (a->ow < 16 || (a->sw == 1 && a->ow < 32)))) {
            DW512_WIDE[a->kh == 5][a->sw == 2][full](a, rows, yr);
        } else if (a->kh == 3 && a->sw == 1) {
            if (full) dw512_fixed(a, rows, yr, lo, hi, 3, 3, 1, 4, 1); else dw512_fixed(a, rows, yr, lo, hi, 3, 3, 1, 4, 0);
        } else if (a->kh == 3) {
            if (full) dw512_fixed(a, rows, yr, lo, hi, 3, 3, 2, 4, 1); else dw512_fixed(a, rows, yr, lo, hi, 3, 3, 2, 4, 0);
        } else if (a->sw == 1) {
            if (full) dw512_fixed(a, rows, yr, lo, hi, 5, 5, 1, 2, 1); else dw512_fixed(a, rows, yr, lo, hi, 5, 5, 1, 2, 0);
        } else {
            if (full) dw512_fixed(a, rows, yr, lo, hi, 5, 5, 2, 2, 1); else dw512_fixed(a, rows, yr, lo, hi, 5, 5, 2, 2, 0);
        }
    } else {
        cvec = 0;  /* no specialisation: every block goes through the generic path */
    }
    for (size_t cb = cvec; cb < c; cb += 16) {
        const __mmask16 m = c - cb >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (c - cb)) - 1);
        for (int ox = 0; ox < a->ow; ox++)
            dw512_pixel(a, xb, oy, ox, (int)cb, m, yr + (size_t)ox * c);
    }
}

/* ---- AVX2 + FMA: 8 channels per vector, 16 registers ------------------------------------------ */

QC_AVX2 static void dw256_pixel(const dw_args *a, const float *xb, int oy, int ox, int cb, __m256i m,
                                float *yp) {
    const size_t c = (size_t)a->c;
    const int iy = oy * a->sh - a->pt, ix = ox * a->sw - a->pl;
    int i0, i1, j0, j1;
    tap_range(oy, a->sh, a->pt, a->kh, a->h, &i0, &i1);
    tap_range(ox, a->sw, a->pl, a->kw, a->w, &j0, &j1);
    __m256 acc = a->bias ? _mm256_maskload_ps(a->bias + cb, m) : _mm256_setzero_ps();
    for (int i = i0; i < i1; i++) {
        const float *xr = xb + ((size_t)(iy + i) * a->w + (size_t)(ix + j0)) * c + cb;
        const float *wr = a->wt + ((size_t)i * a->kw + j0) * c + cb;
        for (int j = j0; j < j1; j++, xr += c, wr += c)
            acc = _mm256_fmadd_ps(_mm256_maskload_ps(xr, m), _mm256_maskload_ps(wr, m), acc);
    }
    _mm256_maskstore_ps(yp + cb, m, qc_act256(acc, a->act));
}

/* One border pixel: taps outside the input row are skipped one by one (few pixels per row). */
QC_AVX2 QC_INLINE void dw256_border(const dw_args *a, const float *const *rows, float *yr, const __m256 *W, __m256 B,
                                     size_t cb, int ox, const int KH, const int KW, const int SW, const int FULL) {
    const size_t c = (size_t)a->c;
    const int ix = ox * SW - a->pl;
    const int j0 = ix < 0 ? -ix : 0, j1 = ix + KW > a->w ? a->w - ix : KW;
    __m256 acc = B;
#pragma GCC unroll 8
    for (int i = 0; i < KH; i++) {
        if (!FULL && !rows[i]) continue;
#pragma GCC unroll 8
        for (int j = 0; j < KW; j++)
            if (j >= j0 && j < j1)  /* index formed as an integer first: ix may be negative */
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(&rows[i][(ptrdiff_t)(ix + j) * (ptrdiff_t)c + (ptrdiff_t)cb]),
                                      W[i * KW + j], acc);
    }
    _mm256_storeu_ps(yr + (size_t)ox * c + cb, qc_act256(acc, a->act));
}

/* The AVX-512 scheme (dw512_fixed) with 8-lane vectors, 4 pixels per step, the weights loaded once
 * per row (for 5x5 the compiler keeps those that do not fit the 16 registers on the stack).  Only 4
 * accumulator chains, but fewer instructions per FMA than dw256_group; on wide rows (see
 * dw_row_avx2) it was the faster (3x3 stride 1 on 56 x 56 x 32: 73 against 67 GF/s). */
QC_AVX2 QC_INLINE void dw256_regs(const dw_args *a, const float *const *rows, float *yr, int lo, int hi,
                                    const int KH, const int KW, const int SW, const int Q, const int FULL) {
    const size_t c = (size_t)a->c;
    const int pl = a->pl, act = a->act;
    for (size_t cb = 0; cb + 8 <= c; cb += 8) {
        __m256 W[DW_MAXK * DW_MAXK];
#pragma GCC unroll 32
        for (int t = 0; t < KH * KW; t++)
            W[t] = _mm256_loadu_ps(a->wt + (size_t)t * c + cb);
        const __m256 B = a->bias ? _mm256_loadu_ps(a->bias + cb) : _mm256_setzero_ps();
        int ox = 0;
        for (; ox < lo; ox++)
            dw256_border(a, rows, yr, W, B, cb, ox, KH, KW, SW, FULL);
        /* Interior: Q pixels at a time; each input vector is loaded once per row of taps and
         * feeds every one of the Q outputs whose window covers it. */
        for (; ox + Q <= hi; ox += Q) {
            const size_t col = (size_t)(ox * SW - pl) * c + cb;
            __m256 acc[DW_MAXQ];
#pragma GCC unroll 8
            for (int q = 0; q < Q; q++) acc[q] = B;
#pragma GCC unroll 8
            for (int i = 0; i < KH; i++) {
                if (!FULL && !rows[i]) continue;
                const float *r = rows[i] + col;
#pragma GCC unroll 32
                for (int t = 0; t < (Q - 1) * SW + KW; t++) {
                    const __m256 v = _mm256_loadu_ps(r + (size_t)t * c);
#pragma GCC unroll 8
                    for (int q = 0; q < Q; q++) {
                        const int j = t - q * SW;
                        if (j >= 0 && j < KW) acc[q] = _mm256_fmadd_ps(v, W[i * KW + j], acc[q]);
                    }
                }
            }
#pragma GCC unroll 8
            for (int q = 0; q < Q; q++)
                _mm256_storeu_ps(yr + (size_t)(ox + q) * c + cb, qc_act256(acc[q], act));
        }
        for (; ox < hi; ox++) {
            const size_t col = (size_t)(ox * SW - pl) * c + cb;
            __m256 acc = B;
#pragma GCC unroll 8
            for (int i = 0; i < KH; i++) {
                if (!FULL && !rows[i]) continue;
#pragma GCC unroll 8
                for (int j = 0; j < KW; j++)
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(rows[i] + col + (size_t)j * c), W[i * KW + j], acc);
            }
            _mm256_storeu_ps(yr + (size_t)ox * c + cb, qc_act256(acc, act));
        }
        for (; ox < a->ow; ox++)
            dw256_border(a, rows, yr, W, B, cb, ox, KH, KW, SW, FULL);
    }
}

/* Q neighbouring output pixels ox .. ox + Q - 1 of one channel block, Q <= 8: Q independent
 * accumulator chains.  With the FMA's latency of 4 cycles and two FMA ports, 8 chains keep both
 * ports busy; the AVX-512 scheme (a row's weights in registers, 4 pixels) leaves only 4 chains in
 * the 16 registers and ran at a third of the FMA peak.  So only the current tap row's KW weights
 * are in registers (8 + 5 + 1 registers for 5x5), reloaded per tap row from L1: each input vector
 * is loaded once per tap row and feeds every one of the Q outputs whose window covers it.
 * CHECK: some of the group's input columns lie outside the row; they are skipped (as the scalar
 * reference skips them: the same taps in the same order).  Rows outside the image are NULL. */
QC_AVX2 QC_INLINE void dw256_group(const dw_args *a, const float *const *rows, float *yr, size_t cb, int ox,
                                   __m256 B, const int KH, const int KW, const int SW, const int Q,
                                   const int CHECK, const int FULL) {
    const ptrdiff_t c = a->c;
    const int ix = ox * SW - a->pl, w = a->w, act = a->act;
    __m256 acc[8];
#pragma GCC unroll 8
    for (int q = 0; q < Q; q++) acc[q] = B;
#pragma GCC unroll 8
    for (int i = 0; i < KH; i++) {
        if (!FULL && !rows[i]) continue;
        const float *wr = a->wt + (size_t)i * KW * (size_t)c + cb;
        __m256 W[DW_MAXK];
#pragma GCC unroll 8
        for (int j = 0; j < KW; j++) W[j] = _mm256_loadu_ps(wr + (size_t)j * (size_t)c);
        /* Unclipped: column t is read at base[t / 3] + (t % 3) * c, one pointer per three columns,
         * so that x86 addressing (base + c * 4 or * 8 bytes) saves an add per load: the loop is
         * bound by instructions issued, not FMAs.  Clipped: ix may be negative, so the index is
         * formed as an integer first. */
        const float *base[(7 * 2 + DW_MAXK + 2) / 3];
        if (!CHECK) {
            base[0] = rows[i] + (size_t)ix * (size_t)c + cb;
#pragma GCC unroll 8
            for (int k = 1; k * 3 < (Q - 1) * SW + KW; k++) base[k] = base[k - 1] + 3 * c;
        }
#pragma GCC unroll 32
        for (int t = 0; t < (Q - 1) * SW + KW; t++) {
            if (CHECK && (unsigned)(ix + t) >= (unsigned)w) continue;
            const __m256 v = _mm256_loadu_ps(CHECK ? &rows[i][(ptrdiff_t)(ix + t) * c + (ptrdiff_t)cb]
                                                   : base[t / 3] + (t % 3) * c);
#pragma GCC unroll 8
            for (int q = 0; q < Q; q++) {
                const int j = t - q * SW;
                if (j >= 0 && j < KW) acc[q] = _mm256_fmadd_ps(v, W[j], acc[q]);
            }
        }
    }
#pragma GCC unroll 8
    for (int q = 0; q < Q; q++)
        _mm256_storeu_ps(yr + (size_t)(ox + q) * (size_t)c + cb, qc_act256(acc[q], act));
}

/* One output row, fixed kernel KH x KW and column stride SW, the whole vectors of channels.  The
 * row goes in groups of 8 pixels; when 8 does not divide the width, the last group overlaps the one
 * before it (recomputing a few outputs to the same values) rather than leaving pixels to a slower
 * single-pixel path.  Rows narrower than 8 are one group of their width. */
QC_AVX2 QC_INLINE void dw256_fixed(const dw_args *a, const float *const *rows, float *yr,
                                   const int KH, const int KW, const int SW, const int FULL) {
    const size_t c = (size_t)a->c;
    const int ow = a->ow;
    for (size_t cb = 0; cb + 8 <= c; cb += 8) {
        const __m256 B = a->bias ? _mm256_loadu_ps(a->bias + cb) : _mm256_setzero_ps();
        if (ow >= 8) {
            for (int ox = 0; ox < ow; ox += 8) {
                const int o = ox + 8 <= ow ? ox : ow - 8;
                if (dw_group_clipped(a, o, 8)) dw256_group(a, rows, yr, cb, o, B, KH, KW, SW, 8, 1, FULL);
                else dw256_group(a, rows, yr, cb, o, B, KH, KW, SW, 8, 0, FULL);
            }
        } else {
#define DW_NARROW(Q) dw256_group(a, rows, yr, cb, 0, B, KH, KW, SW, Q, 1, FULL)
            QC_CASES8(ow, DW_NARROW)
#undef DW_NARROW
        }
    }
}

/* dw256_fixed with the loops swapped: each group of 8 pixels through all the channel blocks
 * before the next, for rows of at least 8 pixels.  On wide maps the channel-block-major order
 * sweeps the KH input rows once per block, 32 bytes of every pixel at a time, and when a row is a
 * multiple of 4 KB long (112 x 64 channels, 80 x 64) the rows' lines fall into the same cache sets:
 * 112 x 112 x 32 3x3 stride 1 took 0.183 against 0.121 ms here, 112 x 112 x 64 0.55 against 0.30. */
QC_AVX2 QC_INLINE void dw256_wide(const dw_args *a, const float *const *rows, float *yr,
                                  const int KH, const int KW, const int SW, const int FULL) {
    const size_t c = (size_t)a->c;
    const int ow = a->ow;
    for (int ox = 0; ox < ow; ox += 8) {
        const int o = ox + 8 <= ow ? ox : ow - 8;
        const int clipped = dw_group_clipped(a, o, 8);
        for (size_t cb = 0; cb + 8 <= c; cb += 8) {
            const __m256 B = a->bias ? _mm256_loadu_ps(a->bias + cb) : _mm256_setzero_ps();
            if (clipped) dw256_group(a, rows, yr, cb, o, B, KH, KW, SW, 8, 1, FULL);
            else dw256_group(a, rows, yr, cb, o, B, KH, KW, SW, 8, 0, FULL);
        }
    }
}

/* One function per kernel shape, each compiled on its own: inlined into one body, the shapes'
 * register allocations disturbed one another (the same 3x3 code ran 5-15% slower). */
#define DW256_REGS_FN(name, K, SW, FULL)                                                            \
    QC_AVX2 __attribute__((noinline)) static void name(const dw_args *a, const float *const *rows, float *yr, \
                                                       int lo, int hi) {                            \
        dw256_regs(a, rows, yr, lo, hi, K, K, SW, 4, FULL);                                         \
    }
#define DW256_GROUPS_FN(name, K, SW, FULL)                                                          \
    QC_AVX2 __attribute__((noinline)) static void name(const dw_args *a, const float *const *rows, float *yr) { \
        dw256_fixed(a, rows, yr, K, K, SW, FULL);                                                   \
    }
DW_SHAPES(DW256_REGS_FN, dw256_r)
DW_SHAPES(DW256_GROUPS_FN, dw256_g)
#define DW256_WIDE_FN(name, K, SW, FULL)                                                            \
    QC_AVX2 __attribute__((noinline)) static void name(const dw_args *a, const float *const *rows, float *yr) { \
        dw256_wide(a, rows, yr, K, K, SW, FULL);                                                    \
    }
DW_SHAPES(DW256_WIDE_FN, dw256_w)
typedef void (*dw256_regs_fn)(const dw_args *, const float *const *, float *, int, int);
typedef void (*dw256_groups_fn)(const dw_args *, const float *const *, float *);
static const dw256_regs_fn DW256_REGS[2][2][2] = DW_SHAPE_TABLE(dw256_r);
static const dw256_groups_fn DW256_GROUPS[2][2][2] = DW_SHAPE_TABLE(dw256_g);
static const dw256_groups_fn DW256_WIDE[2][2][2] = DW_SHAPE_TABLE(dw256_w);

QC_AVX2 static void dw_row_avx2(const dw_args *a, int b, int oy) {
    const size_t c = (size_t)a->c;
    const float *xb = a->x + (size_t)b * a->h * a->w * c;
    float *yr = a->y + ((size_t)b * a->oh + oy) * a->ow * c;
    int i0, i1;
    tap_range(oy, a->sh, a->pt, a->kh, a->h, &i0, &i1);
    size_t cvec = c & ~(size_t)7;
    if (a->kh == a->kw && (a->kh == 3 || a->kh == 5) && (a->sw == 1 || a->sw == 2)) {
        const float *rows[5] = {0};
        for (int i = i0; i < i1; i++)
            rows[i] = xb + (size_t)(oy * a->sh - a->pt + i) * a->w * c;
        /* full: every tap row is in the image, no row tests */
        const int full = i0 == 0 && i1 == a->kh;
        const int k = a->kh, s2 = a->sw == 2;
        /* Which scheme, as measured on Lite0's shapes inside the network: 4 pixels with the
         * weights in registers for 3x3 on rows of 8 pixels or more and for 5x5 on rows of 16 or
         * more (28 x 28 x 240: 0.162 against 0.176 ms; 56 x 56 x 144 -> 28 x 28: 0.111 against
         * 0.124); 8-pixel groups on the narrower rows, mostly border (5x5 on 14 x 14 x 672: 1.2x
         * faster, on 7 x 7 x 1152: 2x). */
        if (a->w >= 80 && c >= 32 && a->ow >= 8) {
            /* wide maps (Lite0's first two: 112 x 112 x 32 stride 1, 1.5x; x 96 stride 2, 1.2x;
             * on 56-pixel rows this order was 0.9x) */
            DW256_WIDE[k == 5][s2][full](a, rows, yr);
        } else if ((k == 3 && a->ow >= 8) || (k == 5 && a->ow >= 16)) {
            int lo, hi;
            interior_cols(a, &lo, &hi);
            DW256_REGS[k == 5][s2][full](a, rows, yr, lo, hi);
        } else {
            DW256_GROUPS[k == 5][s2][full](a, rows, yr);
        }
    } else {
        cvec = 0;
    }
    for (size_t cb = cvec; cb < c; cb += 8) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(c - cb)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int ox = 0; ox < a->ow; ox++)
            dw256_pixel(a, xb, oy, ox, (int)cb, m, yr + (size_t)ox * c);
    }
}

#endif  /* QC_HAVE_X86 */

#if QC_HAVE_NEON

/* ---- NEON: 4 channels per vector, 32 registers (the AVX-512 scheme, narrower vectors) ---------- */

/* Generic path: one output pixel, channels [cb, c), any kernel size; vectors of 4, then the last
 * channels one by one as the scalar reference does them (no masked loads on NEON). */
static void dw128_pixel(const dw_args *a, const float *xb, int oy, int ox, size_t cb, float *yp) {
    const size_t c = (size_t)a->c;
    const int iy = oy * a->sh - a->pt, ix = ox * a->sw - a->pl;
    int i0, i1, j0, j1;
    tap_range(oy, a->sh, a->pt, a->kh, a->h, &i0, &i1);
    tap_range(ox, a->sw, a->pl, a->kw, a->w, &j0, &j1);
    for (; cb + 4 <= c; cb += 4) {
        float32x4_t acc = a->bias ? vld1q_f32(a->bias + cb) : vdupq_n_f32(0.f);
        for (int i = i0; i < i1; i++) {
            const float *xr = xb + ((size_t)(iy + i) * a->w + (size_t)(ix + j0)) * c + cb;
            const float *wr = a->wt + ((size_t)i * a->kw + j0) * c + cb;
            for (int j = j0; j < j1; j++, xr += c, wr += c)
                acc = vfmaq_f32(acc, vld1q_f32(xr), vld1q_f32(wr));
        }
        vst1q_f32(yp + cb, qc_act128(acc, a->act));
    }
    for (; cb < c; cb++) {
        float acc = a->bias ? a->bias[cb] : 0.f;
        for (int i = i0; i < i1; i++)
            for (int j = j0; j < j1; j++)
                acc += xb[((size_t)(iy + i) * a->w + (size_t)(ix + j)) * c + cb] *
                       a->wt[((size_t)i * a->kw + j) * c + cb];
        yp[cb] = qc_act(acc, a->act);
    }
}

/* One border pixel: taps outside the input row are skipped one by one (few pixels per row). */
QC_INLINE void dw128_border(const dw_args *a, const float *const *rows, float *yr, const float32x4_t *W,
                            float32x4_t B, size_t cb, int ox, const int KH, const int KW, const int SW,
                            const int FULL) {
    const size_t c = (size_t)a->c;
    const int ix = ox * SW - a->pl;
    const int j0 = ix < 0 ? -ix : 0, j1 = ix + KW > a->w ? a->w - ix : KW;
    float32x4_t acc = B;
QC_UNROLL
    for (int i = 0; i < KH; i++) {
        if (!FULL && !rows[i]) continue;
QC_UNROLL
        for (int j = 0; j < KW; j++)
            if (j >= j0 && j < j1)  /* index formed as an integer first: ix may be negative */
                acc = vfmaq_f32(acc, vld1q_f32(&rows[i][(ptrdiff_t)(ix + j) * (ptrdiff_t)c + (ptrdiff_t)cb]),
                                W[i * KW + j]);
    }
    vst1q_f32(yr + (size_t)ox * c + cb, qc_act128(acc, a->act));
}

/* Fixed kernel KH x KW, column stride SW, Q outputs per step, as dw512_fixed. */
QC_INLINE void dw128_fixed(const dw_args *a, const float *const *rows, float *yr, int lo, int hi,
                           const int KH, const int KW, const int SW, const int Q, const int FULL) {
    const size_t c = (size_t)a->c;
    const int pl = a->pl, act = a->act;
    for (size_t cb = 0; cb + 4 <= c; cb += 4) {
        float32x4_t W[DW_MAXK * DW_MAXK];
QC_UNROLL
        for (int t = 0; t < KH * KW; t++)
            W[t] = vld1q_f32(a->wt + (size_t)t * c + cb);
        const float32x4_t B = a->bias ? vld1q_f32(a->bias + cb) : vdupq_n_f32(0.f);
        int ox = 0;
        for (; ox < lo; ox++)
            dw128_border(a, rows, yr, W, B, cb, ox, KH, KW, SW, FULL);
        for (; ox + Q <= hi; ox += Q) {
            const size_t col = (size_t)(ox * SW - pl) * c + cb;
            float32x4_t acc[DW_MAXQ];
QC_UNROLL
            for (int q = 0; q < Q; q++) acc[q] = B;
QC_UNROLL
            for (int i = 0; i < KH; i++) {
                if (!FULL && !rows[i]) continue;
                const float *r = rows[i] + col;
QC_UNROLL
                for (int t = 0; t < (Q - 1) * SW + KW; t++) {
                    const float32x4_t v = vld1q_f32(r + (size_t)t * c);
QC_UNROLL
                    for (int q = 0; q < Q; q++) {
                        const int j = t - q * SW;
                        if (j >= 0 && j < KW) acc[q] = vfmaq_f32(acc[q], v, W[i * KW + j]);
                    }
                }
            }
QC_UNROLL
            for (int q = 0; q < Q; q++)
                vst1q_f32(yr + (size_t)(ox + q) * c + cb, qc_act128(acc[q], act));
        }
        for (; ox < hi; ox++) {
            const size_t col = (size_t)(ox * SW - pl) * c + cb;
            float32x4_t acc = B;
QC_UNROLL
            for (int i = 0; i < KH; i++) {
                if (!FULL && !rows[i]) continue;
QC_UNROLL
                for (int j = 0; j < KW; j++)
                    acc = vfmaq_f32(acc, vld1q_f32(rows[i] + col + (size_t)j * c), W[i * KW + j]);
            }
            vst1q_f32(yr + (size_t)ox * c + cb, qc_act128(acc, act));
        }
        for (; ox < a->ow; ox++)
            dw128_border(a, rows, yr, W, B, cb, ox, KH, KW, SW, FULL);
    }
}

static void dw_row_neon(const dw_args *a, int b, int oy) {
    const size_t c = (size_t)a->c;
    const float *xb = a->x + (size_t)b * a->h * a->w * c;
    float *yr = a->y + ((size_t)b * a->oh + oy) * a->ow * c;
    int i0, i1, lo, hi;
    tap_range(oy, a->sh, a->pt, a->kh, a->h, &i0, &i1);
    interior_cols(a, &lo, &hi);
    size_t cvec = c & ~(size_t)3;
    if (a->kh == a->kw && (a->kh == 3 || a->kh == 5) && (a->sw == 1 || a->sw == 2)) {
        const float *rows[5] = {0};
        for (int i = i0; i < i1; i++)
            rows[i] = xb + (size_t)(oy * a->sh - a->pt + i) * a->w * c;
        const int full = i0 == 0 && i1 == a->kh;
        /* Q: 4 outputs for 3x3; 2 for 5x5, whose 25 weight vectors leave few spare registers. */
        if (a->kh == 3 && a->sw == 1) {
            if (full) dw128_fixed(a, rows, yr, lo, hi, 3, 3, 1, 4, 1); else dw128_fixed(a, rows, yr, lo, hi, 3, 3, 1, 4, 0);
        } else if (a->kh == 3) {
            if (full) dw128_fixed(a, rows, yr, lo, hi, 3, 3, 2, 4, 1); else dw128_fixed(a, rows, yr, lo, hi, 3, 3, 2, 4, 0);
        } else if (a->sw == 1) {
            if (full) dw128_fixed(a, rows, yr, lo, hi, 5, 5, 1, 2, 1); else dw128_fixed(a, rows, yr, lo, hi, 5, 5, 1, 2, 0);
        } else {
            if (full) dw128_fixed(a, rows, yr, lo, hi, 5, 5, 2, 2, 1); else dw128_fixed(a, rows, yr, lo, hi, 5, 5, 2, 2, 0);
        }
    } else {
        cvec = 0;  /* no specialisation: every channel goes through the generic path */
    }
    if (cvec < c)
        for (int ox = 0; ox < a->ow; ox++)
            dw128_pixel(a, xb, oy, ox, cvec, yr + (size_t)ox * c);
}

#endif  /* QC_HAVE_NEON */

/* ---- dispatch ---------------------------------------------------------------------------------- */

typedef void (*dw_row_fn)(const dw_args *, int b, int oy);

static const dw_row_fn DW_ROW[QC_ISA_COUNT] = QC_VARIANTS(dw_row_scalar, dw_row_avx2, dw_row_avx512, dw_row_neon);

void qc_depthwise_f32(const float *x, int n, int h, int w, int c, const float *wt, const float *bias,
                      int kh, int kw, int sh, int sw, int pt, int pl, float *y, int oh, int ow, int act) {
    const dw_args a = {x, wt, bias, y, n, h, w, c, kh, kw, sh, sw, pt, pl, oh, ow, act};
    const dw_row_fn row = DW_ROW[qc_isa()];
    for (int b = 0; b < n; b++)
        for (int oy = 0; oy < oh; oy++)
            row(&a, b, oy);
}
