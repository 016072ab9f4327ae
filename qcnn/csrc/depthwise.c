/* Depthwise convolution in NHWC.  Channels are the contiguous axis, so each output pixel is a
 * sum over its valid taps of (input pixel row) * (tap weights), vectorised across channels with
 * the accumulator kept in registers.  Padding is never materialised: the valid tap range is
 * clipped per output pixel. */
#include <stddef.h>
#include "qcnn.h"
#include "simd.h"

typedef struct {
    int h, w, c, kh, kw, sh, sw, pt, pl;
} dw_geom;

/* Valid tap range [lo, hi) along one axis for output coordinate o. */
static inline void tap_range(int o, int stride, int pad, int k, int size, int *lo, int *hi) {
    int start = o * stride - pad;
    *lo = start < 0 ? -start : 0;
    *hi = start + k > size ? size - start : k;
}

static void dw_pixel_scalar(const float *x, const float *wt, const float *bias, const dw_geom *g,
                            int oy, int ox, float *yp, int act) {
    int i0, i1, j0, j1;
    tap_range(oy, g->sh, g->pt, g->kh, g->h, &i0, &i1);
    tap_range(ox, g->sw, g->pl, g->kw, g->w, &j0, &j1);
    for (int ch = 0; ch < g->c; ch++) {
        float acc = bias ? bias[ch] : 0.f;
        for (int i = i0; i < i1; i++) {
            const float *xr = x + ((size_t)(oy * g->sh - g->pt + i) * g->w + (ox * g->sw - g->pl)) * g->c + ch;
            const float *wr = wt + (size_t)i * g->kw * g->c + ch;
            for (int j = j0; j < j1; j++)
                acc += xr[(size_t)j * g->c] * wr[(size_t)j * g->c];
        }
        yp[ch] = qc_act(acc, act);
    }
}

#if QC_HAVE_X86
QC_AVX2 static void dw_pixel_avx2(const float *x, const float *wt, const float *bias, const dw_geom *g,
                                  int oy, int ox, float *yp, int act) {
    int i0, i1, j0, j1;
    tap_range(oy, g->sh, g->pt, g->kh, g->h, &i0, &i1);
    tap_range(ox, g->sw, g->pl, g->kw, g->w, &j0, &j1);
    const size_t c = (size_t)g->c;
    const float *x0 = x + ((size_t)(oy * g->sh - g->pt) * g->w + (ox * g->sw - g->pl)) * c;
    const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
    size_t ch = 0;
    for (; ch + 8 <= c; ch += 8) {
        __m256 acc = bias ? _mm256_loadu_ps(bias + ch) : zero;
        for (int i = i0; i < i1; i++) {
            const float *xr = x0 + (size_t)i * g->w * c + ch;
            const float *wr = wt + (size_t)i * g->kw * c + ch;
            for (int j = j0; j < j1; j++)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(xr + j * c), _mm256_loadu_ps(wr + j * c), acc);
        }
        if (act != QC_ACT_NONE) acc = _mm256_max_ps(acc, zero);
        if (act == QC_ACT_RELU6) acc = _mm256_min_ps(acc, six);
        _mm256_storeu_ps(yp + ch, acc);
    }
    for (; ch < c; ch++) {  /* channel tail: same sum, one lane at a time */
        float acc = bias ? bias[ch] : 0.f;
        for (int i = i0; i < i1; i++)
            for (int j = j0; j < j1; j++)
                acc += x0[((size_t)i * g->w + j) * c + ch] * wt[((size_t)i * g->kw + j) * c + ch];
        yp[ch] = qc_act(acc, act);
    }
}
#endif

void qc_depthwise_f32(const float *x, int n, int h, int w, int c, const float *wt, const float *bias,
                      int kh, int kw, int sh, int sw, int pt, int pl, float *y, int oh, int ow, int act) {
    dw_geom g = {h, w, c, kh, kw, sh, sw, pt, pl};
    void (*pixel)(const float *, const float *, const float *, const dw_geom *, int, int, float *, int) =
        dw_pixel_scalar;
#if QC_HAVE_X86
    if (qc_isa() >= QC_ISA_AVX2) pixel = dw_pixel_avx2;
#endif
    for (int b = 0; b < n; b++) {
        const float *xb = x + (size_t)b * h * w * c;
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++)
                pixel(xb, wt, bias, &g, oy, ox, y + (((size_t)b * oh + oy) * ow + ox) * c, act);
    }
}
