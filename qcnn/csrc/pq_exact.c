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
    qc_ran(QC_FAMILY_PQ_EXACT, QC_ISA_SCALAR);
    (void)ksub;
    for (int c = 0; c < n; c++)
        y[c] += row[codes[c]];
}

#if QC_HAVE_X86
QC_AVX2 static void add_row_avx2(float *y, const float *row, int ksub, const uint8_t *codes, int n) {
    qc_ran(QC_FAMILY_PQ_EXACT, QC_ISA_AVX2);
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
    qc_ran(QC_FAMILY_PQ_EXACT, QC_ISA_AVX512);
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

#if QC_HAVE_NEON
/* No gather on NEON, but a row of up to 64 floats is up to four sets of four registers, and a
 * byte table lookup reads them: the bytes of entry `code` sit at 4 * code + 0..3, so one
 * vqtbl4q_u8 fetches four entries of a 16-float set, and each further set fills in with vqtbx4q_u8
 * the lanes whose index, less 64 per set, falls into it (an index out of range leaves the lane
 * as it was).  NT sets, a constant in each instantiation so the tables stay in registers; rows of
 * more than 64 entries take scalar loads. */
QC_INLINE void add_row_neon_n(float *y, const float *row, int ksub, const uint8_t *codes, int n, const int NT) {
    const float *src = row;
    float buf[64];
    if (ksub < 16 * NT) {                  /* a shorter row is copied: the loads may not run past it */
        memset(buf, 0, sizeof(float) * 16 * NT);
        memcpy(buf, row, (size_t)ksub * sizeof(float));
        src = buf;
    }
    uint8x16x4_t tab[4];
    for (int t = 0; t < NT; t++)
        tab[t] = vld1q_u8_x4((const uint8_t *)(src + 16 * t));
    /* output j of a group of four takes code j: its byte b reads code j's entry at byte 4 * code + b */
    static const uint8_t spread[4][16] = {{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
                                          {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
                                          {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
                                          {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
    static const uint8_t within[16] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
    const uint8x16_t byte = vld1q_u8(within), set = vdupq_n_u8(64);
    int c = 0;
    for (; c + 16 <= n; c += 16) {
        const uint8x16_t k4 = vshlq_n_u8(vld1q_u8(codes + c), 2);      /* codes < 64: no overflow */
        for (int q = 0; q < 4; q++) {
            uint8x16_t idx = vaddq_u8(vqtbl1q_u8(k4, vld1q_u8(spread[q])), byte);
            uint8x16_t v = vqtbl4q_u8(tab[0], idx);
            for (int t = 1; t < NT; t++) {
                idx = vsubq_u8(idx, set);
                v = vqtbx4q_u8(v, tab[t], idx);
            }
            float *yq = y + c + 4 * q;
            vst1q_f32(yq, vaddq_f32(vld1q_f32(yq), vreinterpretq_f32_u8(v)));
        }
    }
    for (; c < n; c++)
        y[c] += row[codes[c]];
}

static void add_row_neon(float *y, const float *row, int ksub, const uint8_t *codes, int n) {
    qc_ran(QC_FAMILY_PQ_EXACT, QC_ISA_NEON);
    if (ksub <= 16)
        add_row_neon_n(y, row, ksub, codes, n, 1);
    else if (ksub <= 32)
        add_row_neon_n(y, row, ksub, codes, n, 2);
    else if (ksub <= 64)
        add_row_neon_n(y, row, ksub, codes, n, 4);
    else
        add_row_scalar(y, row, ksub, codes, n);
}
#endif

void qc_pq_conv_exact(const float *T, int h, int w, int groups, int M, int ksub, const uint8_t *codes,
                      int kh, int kw, int sh, int sw, int pt, int pl, int cout, const float *bias,
                      float *y, int oh, int ow, int act) {
    static const add_row_fn variants[QC_ISA_COUNT] = QC_VARIANTS(add_row_scalar, add_row_avx2, add_row_avx512, add_row_neon);
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
