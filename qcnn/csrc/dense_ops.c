/* Cross-channel LRN and max / average pooling in NHWC, with the semantics of qcnn/layers.py
 * (LRN and Pool2D: Caffe / ONNX), vectorised across the contiguous channels.  Each keeps the order
 * of floating-point operations of the numpy layer, so the scalar reference and the SIMD variants
 * agree with it to the last bit in the common cases, except the AVX-512 and AVX2 LRN's root (below).
 *
 * LRN: y = x / (k + alpha/size * sum of x^2 over channels [ch - (size-1)/2, ch + size/2])^beta.
 * The window sums are taken straight from x (squaring each neighbour again rather than keeping a
 * padded buffer of squares: a few more FMAs, no scratch memory); lanes whose neighbour falls
 * outside [0, c) are masked to zero.  beta = 0.75 is x / (sqrt(s) * sqrt(sqrt(s))) as in the layer;
 * any other beta goes through powf lane by lane.  The AVX-512 and AVX2 variants take
 * s^-0.75 = q * q * r with q = s^-1/2 and r = q^-1/2 from the 14-bit (AVX2: 12-bit) reciprocal square
 * root refined by one Newton step each: with plain loads, the exact roots and division made the whole
 * layer 1.3-1.6x slower (AVX2: 1.4x on AlexNet's norm1), and the result stays within 1e-6 relative
 * of the exact formula (tests: measured at most 5e-7 on AVX2); a positive k keeps s > 0.
 *
 * Pooling: the window of each output pixel is clipped to the image (padding never wins a max and
 * adds zeros to a sum); an average divides by the number of window positions inside the image, or
 * inside the declared padding with count_include_pad (the ceil-mode overhang never counts). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include "qcnn.h"
#include "simd.h"

/* ---- LRN ---------------------------------------------------------------------------------------- */

typedef struct {
    const float *x;
    float *y;
    size_t npix;
    int c, size, lo;   /* window: channels [ch - lo, ch - lo + size) */
    float scale, k, beta;
} lrn_args;

static inline float lrn_scalar_one(const lrn_args *a, const float *xp, int ch) {
    float s = 0.f;
    for (int d = 0; d < a->size; d++) {
        const int j = ch - a->lo + d;
        const float v = j >= 0 && j < a->c ? xp[j] : 0.f;
        s += v * v;
    }
    s = s * a->scale;
    s = s + a->k;
    if (a->beta == 0.75f) {
        const float r = sqrtf(s);
        return xp[ch] / (r * sqrtf(r));
    }
    return xp[ch] * powf(s, -a->beta);
}

static void lrn_scalar(const lrn_args *a) {
    for (size_t p = 0; p < a->npix; p++) {
        const float *xp = a->x + p * a->c;
        float *yp = a->y + p * a->c;
        for (int ch = 0; ch < a->c; ch++)
            yp[ch] = lrn_scalar_one(a, xp, ch);
    }
}

#if QC_HAVE_X86

/* 1/sqrt(a) to about 2^-22 relative: the 14-bit estimate and one Newton step. */
QC_AVX512 static inline __m512 rsqrt512(__m512 a) {
    const __m512 y = _mm512_rsqrt14_ps(a);
    const __m512 hy = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), a), y);
    return _mm512_mul_ps(y, _mm512_fnmadd_ps(hy, y, _mm512_set1_ps(1.5f)));
}

/* The fields in locals: stores through y may alias the struct's floats, which would make the
 * compiler reload them after every store.  SIZE is a constant for the usual window of 5. */
QC_AVX512 QC_INLINE void lrn_avx512_n(const lrn_args *a, const int size) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 scale = _mm512_set1_ps(a->scale), kk = _mm512_set1_ps(a->k);
    const int c = a->c, lo = a->lo, fast = a->beta == 0.75f && a->k > 0.f, exact = a->beta == 0.75f;
    const float beta = a->beta;
    const __m512i cv = _mm512_set1_epi32(c);
    const float *x = a->x;
    float *y = a->y;
    for (size_t p = 0; p < a->npix; p++) {
        const float *xp = x + p * c;
        float *yp = y + p * c;
        for (int ch = 0; ch < c; ch += 16) {
            const __mmask16 own = _mm512_cmplt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(ch)), cv);
            __m512 s = _mm512_setzero_ps();
            for (int d = 0; d < size; d++) {
                const int j = ch - lo + d;
                __m512 v;
                if (j >= 0 && j + 16 <= c) {     /* the common case: a plain load (a masked one costs more) */
                    v = _mm512_loadu_ps(xp + j);
                } else {
                    /* lanes j + t inside [0, c); the others read nothing (masked loads do not fault) */
                    const __m512i idx = _mm512_add_epi32(lane, _mm512_set1_epi32(j));
                    const __mmask16 m = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512()) &
                                        _mm512_cmplt_epi32_mask(idx, cv);
                    v = _mm512_maskz_loadu_ps(m, (const float *)((uintptr_t)xp + (intptr_t)j * 4));
                }
                s = _mm512_add_ps(s, _mm512_mul_ps(v, v));  /* not fused: the layer squares, then adds */
            }
            s = _mm512_add_ps(_mm512_mul_ps(s, scale), kk);
            const __m512 xv = _mm512_maskz_loadu_ps(own, xp + ch);
            __m512 out;
            if (fast) {
                const __m512 q = rsqrt512(s), r = rsqrt512(_mm512_max_ps(q, _mm512_set1_ps(FLT_MIN)));
                out = _mm512_mul_ps(xv, _mm512_mul_ps(_mm512_mul_ps(q, q), r));
            } else if (exact) {
                const __m512 r = _mm512_sqrt_ps(s);
                out = _mm512_div_ps(xv, _mm512_mul_ps(r, _mm512_sqrt_ps(r)));
            } else {
                float sv[16];
                _mm512_storeu_ps(sv, s);
                for (int t = 0; t < 16; t++) sv[t] = powf(sv[t], -beta);
                out = _mm512_mul_ps(xv, _mm512_loadu_ps(sv));
            }
            _mm512_mask_storeu_ps(yp + ch, own, out);
        }
    }
}

QC_AVX512 static void lrn_avx512(const lrn_args *a) {
    if (a->size == 5)
        lrn_avx512_n(a, 5);
    else
        lrn_avx512_n(a, a->size);
}

/* 1/sqrt(a) to about 2^-22 relative: the 12-bit estimate and one Newton step (the error of the
 * estimate, at most 1.5 * 2^-12, is squared by the step). */
QC_AVX2 static inline __m256 rsqrt256(__m256 a) {
    const __m256 y = _mm256_rsqrt_ps(a);
    const __m256 hy = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), a), y);
    return _mm256_mul_ps(y, _mm256_fnmadd_ps(hy, y, _mm256_set1_ps(1.5f)));
}

/* The AVX-512 variant's scheme 8 lanes wide, the fields in locals for the same reason.  s^-0.75
 * by two Newton-refined reciprocal square roots: the exact path's two square roots and division
 * take the divider about 17 cycles a vector, which made the whole layer 2.3x slower (norm1 of
 * AlexNet, 55 x 55 x 96). */
QC_AVX2 QC_INLINE void lrn_avx2_n(const lrn_args *a, const int size) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 scale = _mm256_set1_ps(a->scale), kk = _mm256_set1_ps(a->k);
    const int c = a->c, lo = a->lo, fast = a->beta == 0.75f && a->k > 0.f, exact = a->beta == 0.75f;
    const float beta = a->beta;
    const __m256i cv = _mm256_set1_epi32(c), minus1 = _mm256_set1_epi32(-1);
    const float *x = a->x;
    float *y = a->y;
    for (size_t p = 0; p < a->npix; p++) {
        const float *xp = x + p * c;
        float *yp = y + p * c;
        for (int ch = 0; ch < c; ch += 8) {
            const __m256i own = _mm256_cmpgt_epi32(cv, _mm256_add_epi32(lane, _mm256_set1_epi32(ch)));
            const int whole = ch + 8 <= c;
            __m256 s = _mm256_setzero_ps();
            for (int d = 0; d < size; d++) {
                const int j = ch - lo + d;
                __m256 v;
                if (j >= 0 && j + 8 <= c) {  /* the common case: no mask, plain load */
                    v = _mm256_loadu_ps(xp + j);
                } else {
                    const __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32(j));
                    const __m256i m = _mm256_and_si256(_mm256_cmpgt_epi32(idx, minus1), _mm256_cmpgt_epi32(cv, idx));
                    v = _mm256_maskload_ps((const float *)((uintptr_t)xp + (intptr_t)j * 4), m);
                }
                s = _mm256_add_ps(s, _mm256_mul_ps(v, v));  /* not fused: the layer squares, then adds */
            }
            s = _mm256_add_ps(_mm256_mul_ps(s, scale), kk);
            const __m256 xv = whole ? _mm256_loadu_ps(xp + ch) : _mm256_maskload_ps(xp + ch, own);
            __m256 out;
            if (fast) {
                const __m256 q = rsqrt256(s), r = rsqrt256(_mm256_max_ps(q, _mm256_set1_ps(FLT_MIN)));
                out = _mm256_mul_ps(xv, _mm256_mul_ps(_mm256_mul_ps(q, q), r));
            } else if (exact) {
                const __m256 r = _mm256_sqrt_ps(s);
                out = _mm256_div_ps(xv, _mm256_mul_ps(r, _mm256_sqrt_ps(r)));
            } else {
                float sv[8];
                _mm256_storeu_ps(sv, s);
                for (int t = 0; t < 8; t++) sv[t] = powf(sv[t], -beta);
                out = _mm256_mul_ps(xv, _mm256_loadu_ps(sv));
            }
            if (whole) _mm256_storeu_ps(yp + ch, out);
            else _mm256_maskstore_ps(yp + ch, own, out);
        }
    }
}

QC_AVX2 static void lrn_avx2(const lrn_args *a) {
    if (a->size == 5)
        lrn_avx2_n(a, 5);
    else
        lrn_avx2_n(a, a->size);
}

#endif  /* QC_HAVE_X86 */

#if QC_HAVE_NEON

/* Four channels of x starting at channel j, zero where j + t falls outside [0, c): NEON has no
 * masked loads, so the window's edges go through a small buffer. */
static inline float32x4_t load4_clipped(const float *xp, int j, int c) {
    if (j >= 0 && j + 4 <= c)
        return vld1q_f32(xp + j);
    float v[4];
    for (int t = 0; t < 4; t++) v[t] = j + t >= 0 && j + t < c ? xp[j + t] : 0.f;
    return vld1q_f32(v);
}

/* The AVX2 variant's operations four lanes wide: exact roots and division, bit-identical to the
 * scalar reference. */
static void lrn_neon(const lrn_args *a) {
    const float32x4_t scale = vdupq_n_f32(a->scale), kk = vdupq_n_f32(a->k);
    const int c = a->c, lo = a->lo, size = a->size;
    const float beta = a->beta;
    const float *x = a->x;
    float *y = a->y;
    for (size_t p = 0; p < a->npix; p++) {
        const float *xp = x + p * c;
        float *yp = y + p * c;
        for (int ch = 0; ch < c; ch += 4) {
            float32x4_t s = vdupq_n_f32(0.f);
            for (int d = 0; d < size; d++) {
                const float32x4_t v = load4_clipped(xp, ch - lo + d, c);
                s = vaddq_f32(s, vmulq_f32(v, v));      /* not fused: the layer squares, then adds */
            }
            s = vaddq_f32(vmulq_f32(s, scale), kk);
            const float32x4_t xv = load4_clipped(xp, ch, c);
            float32x4_t out;
            if (beta == 0.75f) {
                const float32x4_t r = vsqrtq_f32(s);
                out = vdivq_f32(xv, vmulq_f32(r, vsqrtq_f32(r)));
            } else {
                float sv[4];
                vst1q_f32(sv, s);
                for (int t = 0; t < 4; t++) sv[t] = powf(sv[t], -beta);
                out = vmulq_f32(xv, vld1q_f32(sv));
            }
            if (ch + 4 <= c) {
                vst1q_f32(yp + ch, out);
            } else {
                float o[4];
                vst1q_f32(o, out);
                for (int t = 0; ch + t < c; t++) yp[ch + t] = o[t];
            }
        }
    }
}

#endif  /* QC_HAVE_NEON */

typedef void (*lrn_fn)(const lrn_args *);
static const lrn_fn LRN[QC_ISA_COUNT] = QC_VARIANTS(lrn_scalar, lrn_avx2, lrn_avx512, lrn_neon);

void qc_lrn_f32(const float *x, size_t npix, int c, int size, float scale, float beta, float k, float *y) {
    const lrn_args a = {x, y, npix, c, size, (size - 1) / 2, scale, k, beta};
    LRN[qc_isa()](&a);
}

/* ---- pooling ------------------------------------------------------------------------------------ */

typedef struct {
    int h, w, c, kh, kw, sh, sw, pt, pl, pb, pr, avg, include_pad;
} pool_args;

/* Window of output (oy, ox) clipped to the image: rows [i0, i1), cols [j0, j1) in input
 * coordinates, and 1 / (positions counted for an average). */
typedef struct {
    int i0, i1, j0, j1;
    float inv;
} pool_win;

static inline int imax(int a, int b) { return a > b ? a : b; }
static inline int imin(int a, int b) { return a < b ? a : b; }

static pool_win pool_window(const pool_args *a, int oy, int ox) {
    const int y0 = oy * a->sh - a->pt, x0 = ox * a->sw - a->pl;
    pool_win win = {imax(y0, 0), imin(y0 + a->kh, a->h), imax(x0, 0), imin(x0 + a->kw, a->w), 1.f};
    if (a->avg) {
        int count;
        if (a->include_pad)
            count = imax(imin(y0 + a->kh, a->h + a->pb) - imax(y0, -a->pt), 0) *
                    imax(imin(x0 + a->kw, a->w + a->pr) - imax(x0, -a->pl), 0);
        else
            count = imax(win.i1 - win.i0, 0) * imax(win.j1 - win.j0, 0);
        win.inv = 1.f / (float)(count > 1 ? count : 1);
    }
    return win;
}

/* Each variant pools one output pixel: xb is its image, yp its channels. */
typedef void (*pool_px_fn)(const pool_args *a, const float *xb, const pool_win *win, float *yp);

/* Channels [ch0, c) of one pixel; the NEON variant pools its last few channels here too. */
static void pool_scalar_from(const pool_args *a, const float *xb, const pool_win *win, float *yp, size_t ch0) {
    const size_t c = (size_t)a->c;
    for (size_t ch = ch0; ch < c; ch++) {
        float acc = a->avg ? 0.f : -INFINITY;
        for (int i = win->i0; i < win->i1; i++)
            for (int j = win->j0; j < win->j1; j++) {
                const float v = xb[((size_t)i * a->w + j) * c + ch];
                acc = a->avg ? acc + v : (v > acc ? v : acc);
            }
        yp[ch] = a->avg ? acc * win->inv : acc;
    }
}

static void pool_scalar(const pool_args *a, const float *xb, const pool_win *win, float *yp) {
    pool_scalar_from(a, xb, win, yp, 0);
}

#if QC_HAVE_X86

/* Up to eight vectors of channels per pass, each with its own accumulator, the window's rows
 * and columns outside; NV and AVG are constants in each instantiation. */
QC_AVX512 QC_INLINE void pool_pass512(const pool_args *a, const float *xb, const pool_win *win, float *yp,
                                      size_t ch, const int nv, const int avg) {
    const size_t c = (size_t)a->c, w = (size_t)a->w;
    __mmask16 m[8];
    __m512 acc[8];
    for (int v = 0; v < nv; v++) {
        size_t rest = c - ch - 16 * v;
        m[v] = rest >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rest) - 1);
        acc[v] = avg ? _mm512_setzero_ps() : _mm512_set1_ps(-INFINITY);
    }
    /* Plain loads for whole vectors: masked ones cost more (measured on the LRN), even with every
     * lane set. */
    const int tail = m[nv - 1] != 0xFFFF;
    for (int i = win->i0; i < win->i1; i++) {
        const float *xr = xb + ((size_t)i * w + win->j0) * c + ch;
        for (int j = win->j0; j < win->j1; j++, xr += c)
            for (int v = 0; v < nv; v++) {
                const __m512 x = v == nv - 1 && tail ? _mm512_maskz_loadu_ps(m[v], xr + 16 * v)
                                                     : _mm512_loadu_ps(xr + 16 * v);
                acc[v] = avg ? _mm512_add_ps(acc[v], x) : _mm512_max_ps(acc[v], x);
            }
    }
    for (int v = 0; v < nv; v++)
        _mm512_mask_storeu_ps(yp + ch + 16 * v, m[v], avg ? _mm512_mul_ps(acc[v], _mm512_set1_ps(win->inv)) : acc[v]);
}

QC_AVX512 static void pool_avx512(const pool_args *a, const float *xb, const pool_win *win, float *yp) {
    const size_t c = (size_t)a->c;
    for (size_t ch = 0; ch < c; ch += 128) {
        const size_t vecs = (c - ch + 15) / 16;
#define POOL_PASS(NV) (a->avg ? pool_pass512(a, xb, win, yp, ch, NV, 1) : pool_pass512(a, xb, win, yp, ch, NV, 0))
        QC_CASES8(vecs, POOL_PASS)
#undef POOL_PASS
    }
}

/* The AVX-512 variant's scheme with 8-lane vectors: up to eight vectors (64 channels) per pass,
 * each its own accumulator, so the window's maxima or sums run as independent chains (one vector at
 * a time they were a single chain of dependent 4-cycle operations: 2.3x the AVX-512 time on
 * AlexNet's pool1, 55 x 55 x 96); plain loads for whole vectors, a mask for the channel tail only. */
QC_AVX2 QC_INLINE void pool_pass256(const pool_args *a, const float *xb, const pool_win *win, float *yp,
                                    size_t ch, const int nv, const int avg) {
    const size_t c = (size_t)a->c, w = (size_t)a->w;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    /* real lanes of the last vector (all of them but at the channel tail) */
    const int rest = (int)(c - ch - 8 * (size_t)(nv - 1)) >= 8 ? 8 : (int)(c - ch - 8 * (size_t)(nv - 1));
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(rest), lane);
    const int tail = rest != 8;
    __m256 acc[8];
    for (int v = 0; v < nv; v++) acc[v] = avg ? _mm256_setzero_ps() : _mm256_set1_ps(-INFINITY);
    for (int i = win->i0; i < win->i1; i++) {
        const float *xr = xb + ((size_t)i * w + win->j0) * c + ch;
        for (int j = win->j0; j < win->j1; j++, xr += c)
            for (int v = 0; v < nv; v++) {
                const __m256 x = v == nv - 1 && tail ? _mm256_maskload_ps(xr + 8 * v, m) : _mm256_loadu_ps(xr + 8 * v);
                acc[v] = avg ? _mm256_add_ps(acc[v], x) : _mm256_max_ps(acc[v], x);
            }
    }
    for (int v = 0; v < nv; v++) {
        const __m256 out = avg ? _mm256_mul_ps(acc[v], _mm256_set1_ps(win->inv)) : acc[v];
        if (v == nv - 1 && tail) _mm256_maskstore_ps(yp + ch + 8 * v, m, out);
        else _mm256_storeu_ps(yp + ch + 8 * v, out);
    }
}

QC_AVX2 static void pool_avx2(const pool_args *a, const float *xb, const pool_win *win, float *yp) {
    const size_t c = (size_t)a->c;
    for (size_t ch = 0; ch < c; ch += 64) {
        const size_t vecs = (c - ch + 7) / 8;
#define POOL_PASS(NV) (a->avg ? pool_pass256(a, xb, win, yp, ch, NV, 1) : pool_pass256(a, xb, win, yp, ch, NV, 0))
        QC_CASES8(vecs, POOL_PASS)
#undef POOL_PASS
    }
}

#endif  /* QC_HAVE_X86 */

#if QC_HAVE_NEON

/* Up to eight vectors of four channels per pass (32 channels), each with its own accumulator, as
 * the AVX-512 variant; the channels past the last whole vector go to the scalar reference.
 * vmaxnmq ignores a NaN as the scalar comparison does. */
QC_INLINE void pool_pass128(const pool_args *a, const float *xb, const pool_win *win, float *yp, size_t ch,
                            const int nv, const int avg) {
    const size_t c = (size_t)a->c, w = (size_t)a->w;
    float32x4_t acc[8];
    for (int v = 0; v < nv; v++) acc[v] = vdupq_n_f32(avg ? 0.f : -INFINITY);
    for (int i = win->i0; i < win->i1; i++) {
        const float *xr = xb + ((size_t)i * w + win->j0) * c + ch;
        for (int j = win->j0; j < win->j1; j++, xr += c)
            for (int v = 0; v < nv; v++) {
                const float32x4_t x = vld1q_f32(xr + 4 * v);
                acc[v] = avg ? vaddq_f32(acc[v], x) : vmaxnmq_f32(acc[v], x);
            }
    }
    for (int v = 0; v < nv; v++)
        vst1q_f32(yp + ch + 4 * v, avg ? vmulq_f32(acc[v], vdupq_n_f32(win->inv)) : acc[v]);
}

static void pool_neon(const pool_args *a, const float *xb, const pool_win *win, float *yp) {
    const size_t c = (size_t)a->c, whole = c & ~(size_t)3;
    for (size_t ch = 0; ch < whole; ch += 32) {
        const size_t vecs = (whole - ch) / 4;
#define POOL_PASS(NV) (a->avg ? pool_pass128(a, xb, win, yp, ch, NV, 1) : pool_pass128(a, xb, win, yp, ch, NV, 0))
        QC_CASES8(vecs, POOL_PASS)
#undef POOL_PASS
    }
    pool_scalar_from(a, xb, win, yp, whole);
}

#endif  /* QC_HAVE_NEON */

static const pool_px_fn POOL_PX[QC_ISA_COUNT] = QC_VARIANTS(pool_scalar, pool_avx2, pool_avx512, pool_neon);

void qc_pool_f32(const float *x, int n, int h, int w, int c, int kh, int kw, int sh, int sw, int pt, int pb,
                 int pl, int pr, int avg, int include_pad, float *y, int oh, int ow) {
    const pool_args a = {h, w, c, kh, kw, sh, sw, pt, pl, pb, pr, avg, include_pad};
    const pool_px_fn px = POOL_PX[qc_isa()];
    float *yp = y;
    for (int b = 0; b < n; b++) {
        const float *xb = x + (size_t)b * h * w * c;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++, yp += c) {
                const pool_win win = pool_window(&a, oy, ox);
                px(&a, xb, &win, yp);
            }
    }
}
