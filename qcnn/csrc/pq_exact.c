/* Exact PQ lookups from float tables.  For one output pixel the outputs of group g gather, for
 * every valid kernel offset and subspace, entries of one K-entry table row selected by that
 * offset's codes.  The SIMD variants keep the row in registers and select entries with in-register
 * permutes (K <= 16 on AVX2, K <= 32 on AVX-512) or a gather for larger K. */
#include <string.h>
#include "pq.h"
#include "simd.h"

/* y[c] += row[codes[c]] for c < n. */
typedef void (*add_row_fn)(float *y, const float *row, int ksub, const uint8_t *codes, int n);

static void add_row_scalar(float *y, const float *row, int ksub, const uint8_t *codes, int n) {
    (void)ksub;
    for (int c = 0; c < n; c++)
        y[c] += row[codes[c]];
}

#if QC_HAVE_X86
QC_AVX2 static void add_row_avx2(float *y, const float *row, int ksub, const uint8_t *codes, int n) {
    int c = 0;
    if (ksub <= 16) {
        /* Rows shorter than 16 are copied so the two 8-wide halves can be loaded safely. */
        float buf[16] = {0};
        memcpy(buf, row, (size_t)ksub * sizeof(float));
        const __m256 lo = _mm256_loadu_ps(buf), hi = _mm256_loadu_ps(buf + 8);
        const __m256i seven = _mm256_set1_epi32(7);
        for (; c + 8 <= n; c += 8) {
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + c)));
            __m256 a = _mm256_permutevar8x32_ps(lo, idx);   /* uses the low 3 bits */
            __m256 b = _mm256_permutevar8x32_ps(hi, idx);
            __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, seven));
            _mm256_storeu_ps(y + c, _mm256_add_ps(_mm256_loadu_ps(y + c), _mm256_blendv_ps(a, b, upper)));
        }
    } else {
        for (; c + 8 <= n; c += 8) {
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + c)));
            _mm256_storeu_ps(y + c, _mm256_add_ps(_mm256_loadu_ps(y + c), _mm256_i32gather_ps(row, idx, 4)));
        }
    }
    for (; c < n; c++)
        y[c] += row[codes[c]];
}

QC_AVX512 static void add_row_avx512(float *y, const float *row, int ksub, const uint8_t *codes, int n) {
    int c = 0;
    if (ksub <= 32) {
        float buf[32] = {0};
        memcpy(buf, row, (size_t)ksub * sizeof(float));
        const __m512 lo = _mm512_loadu_ps(buf), hi = _mm512_loadu_ps(buf + 16);
        for (; c + 16 <= n; c += 16) {
            __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + c)));
            _mm512_storeu_ps(y + c, _mm512_add_ps(_mm512_loadu_ps(y + c), _mm512_permutex2var_ps(lo, idx, hi)));
        }
    } else {
        for (; c + 16 <= n; c += 16) {
            __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + c)));
            _mm512_storeu_ps(y + c, _mm512_add_ps(_mm512_loadu_ps(y + c), _mm512_i32gather_ps(idx, row, 4)));
        }
    }
    for (; c < n; c++)
        y[c] += row[codes[c]];
}
#endif

void qc_pq_conv_exact(const float *T, int h, int w, int groups, int M, int ksub, const uint8_t *codes,
                      int kh, int kw, int sh, int sw, int pt, int pl, int cout, const float *bias,
                      float *y, int oh, int ow, int act) {
    static const add_row_fn variants[QC_ISA_COUNT] = QC_VARIANTS(add_row_scalar, add_row_avx2, add_row_avx512);
    const add_row_fn add_row = variants[qc_isa()];
    const int cout_g = cout / groups;
    const size_t pix_stride = (size_t)groups * M * ksub;
    for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++) {
            float *yp = y + ((size_t)oy * ow + ox) * cout;
            if (bias)
                memcpy(yp, bias, (size_t)cout * sizeof(float));
            else
                memset(yp, 0, (size_t)cout * sizeof(float));
            for (int i = 0; i < kh; i++) {
                int iy = oy * sh - pt + i;
                if (iy < 0 || iy >= h) continue;     /* zero padding: table entries are zero */
                for (int j = 0; j < kw; j++) {
                    int ix = ox * sw - pl + j;
                    if (ix < 0 || ix >= w) continue;
                    const float *tp = T + ((size_t)iy * w + ix) * pix_stride;
                    const uint8_t *ct = codes + (size_t)(i * kw + j) * M * cout;
                    for (int m = 0; m < M; m++)
                        for (int g = 0; g < groups; g++)
                            add_row(yp + g * cout_g, tp + (size_t)(g * M + m) * ksub, ksub,
                                    ct + (size_t)m * cout + g * cout_g, cout_g);
                }
            }
            for (int c = 0; c < cout; c++)
                yp[c] = qc_act(yp[c], act);
        }
}
