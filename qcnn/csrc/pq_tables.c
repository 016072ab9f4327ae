/* Lookup tables of the paper's test phase: for each input pixel and subspace, the inner products
 * of the pixel's sub-vector with every codeword.  Built once per input pixel and reused by every
 * output position and kernel offset that reads the pixel.  Codebooks arrive transposed,
 * (gm, dsub, ksub), so the inner loop runs over codewords and vectorises.  Every variant sums with
 * fused multiply-adds in the same order, so all of them build bit-identical tables. */
#include <math.h>
#include "pq.h"
#include "simd.h"

/* Width of subspace m of a group of cin_g channels: the last one may be narrower. */
static inline int sub_width(int m, int dsub, int cin_g) {
    int rest = cin_g - m * dsub;
    return rest < dsub ? rest : dsub;
}

static void rows_scalar(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t) {
    qc_ran(QC_FAMILY_PQ_TABLES, QC_ISA_SCALAR);
    for (int m = 0; m < M; m++) {
        const float *xs = xg + m * dsub, *cb = cbt_g + (size_t)m * dsub * ksub;
        int dm = sub_width(m, dsub, cin_g);
        for (int k = 0; k < ksub; k++) {
            float acc = 0.f;
            for (int d = 0; d < dm; d++)
                acc = fmaf(xs[d], cb[(size_t)d * ksub + k], acc);
            t[(size_t)m * ksub + k] = acc;
        }
    }
}

#if QC_HAVE_X86
QC_AVX2 static void rows_avx2(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t) {
    qc_ran(QC_FAMILY_PQ_TABLES, QC_ISA_AVX2);
    for (int m = 0; m < M; m++) {
        const float *xs = xg + m * dsub, *cb = cbt_g + (size_t)m * dsub * ksub;
        float *tm = t + (size_t)m * ksub;
        int dm = sub_width(m, dsub, cin_g), k = 0;
        for (; k + 16 <= ksub; k += 16) {     /* two independent chains per row */
            __m256 a = _mm256_setzero_ps(), b = a;
            for (int d = 0; d < dm; d++) {
                __m256 xv = _mm256_set1_ps(xs[d]);
                a = _mm256_fmadd_ps(xv, _mm256_loadu_ps(cb + (size_t)d * ksub + k), a);
                b = _mm256_fmadd_ps(xv, _mm256_loadu_ps(cb + (size_t)d * ksub + k + 8), b);
            }
            _mm256_storeu_ps(tm + k, a);
            _mm256_storeu_ps(tm + k + 8, b);
        }
        for (; k < ksub; k++) {
            float acc = 0.f;
            for (int d = 0; d < dm; d++)
                acc = fmaf(xs[d], cb[(size_t)d * ksub + k], acc);
            tm[k] = acc;
        }
    }
}

/* K = 16 is one register per table: four subspaces at a time keep four chains in flight. */
QC_AVX512 static void rows_avx512(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g,
                                  float *t) {
    if (ksub != 16) {
        rows_avx2(xg, cin_g, M, dsub, ksub, cbt_g, t);
        return;
    }
    qc_ran(QC_FAMILY_PQ_TABLES, QC_ISA_AVX512);
    int m = 0;
    const int full = cin_g / dsub;            /* subspaces of full width */
    for (; m + 4 <= full; m += 4) {
        __m512 acc[4];
        for (int j = 0; j < 4; j++) acc[j] = _mm512_setzero_ps();
        for (int d = 0; d < dsub; d++)
            for (int j = 0; j < 4; j++)
                acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(xg[(m + j) * dsub + d]),
                                         _mm512_loadu_ps(cbt_g + ((size_t)(m + j) * dsub + d) * 16), acc[j]);
        for (int j = 0; j < 4; j++) _mm512_storeu_ps(t + (size_t)(m + j) * 16, acc[j]);
    }
    for (; m < M; m++) {
        __m512 acc = _mm512_setzero_ps();
        int dm = sub_width(m, dsub, cin_g);
        for (int d = 0; d < dm; d++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(xg[m * dsub + d]), _mm512_loadu_ps(cbt_g + ((size_t)m * dsub + d) * 16), acc);
        _mm512_storeu_ps(t + (size_t)m * 16, acc);
    }
}
#endif

#if QC_HAVE_NEON
/* Sixteen codewords (four vectors) per pass: four independent chains, one broadcast per channel. */
static void rows_neon(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t) {
    qc_ran(QC_FAMILY_PQ_TABLES, QC_ISA_NEON);
    for (int m = 0; m < M; m++) {
        const float *xs = xg + m * dsub, *cb = cbt_g + (size_t)m * dsub * ksub;
        float *tm = t + (size_t)m * ksub;
        int dm = sub_width(m, dsub, cin_g), k = 0;
        for (; k + 16 <= ksub; k += 16) {
            float32x4_t a = vdupq_n_f32(0.f), b = a, c = a, d = a;
            for (int e = 0; e < dm; e++) {
                const float32x4_t xv = vdupq_n_f32(xs[e]);
                const float *row = cb + (size_t)e * ksub + k;
                a = vfmaq_f32(a, xv, vld1q_f32(row));
                b = vfmaq_f32(b, xv, vld1q_f32(row + 4));
                c = vfmaq_f32(c, xv, vld1q_f32(row + 8));
                d = vfmaq_f32(d, xv, vld1q_f32(row + 12));
            }
            vst1q_f32(tm + k, a);
            vst1q_f32(tm + k + 4, b);
            vst1q_f32(tm + k + 8, c);
            vst1q_f32(tm + k + 12, d);
        }
        for (; k + 4 <= ksub; k += 4) {
            float32x4_t a = vdupq_n_f32(0.f);
            for (int e = 0; e < dm; e++)
                a = vfmaq_f32(a, vdupq_n_f32(xs[e]), vld1q_f32(cb + (size_t)e * ksub + k));
            vst1q_f32(tm + k, a);
        }
        for (; k < ksub; k++) {
            float acc = 0.f;
            for (int e = 0; e < dm; e++)
                acc = fmaf(xs[e], cb[(size_t)e * ksub + k], acc);
            tm[k] = acc;
        }
    }
}
#endif

void qc_pq_table_rows(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t) {
    static const qc_rows_fn variants[QC_ISA_COUNT] = QC_VARIANTS(rows_scalar, rows_avx2, rows_avx512, rows_neon);
    variants[qc_isa()](xg, cin_g, M, dsub, ksub, cbt_g, t);
}

void qc_pq_tables_f32(const float *x, int npix, int cin, int groups, int M, int dsub, int ksub,
                      const float *cbt, float *T) {
    const int cin_g = cin / groups;
    for (int p = 0; p < npix; p++)
        for (int g = 0; g < groups; g++)
            qc_pq_table_rows(x + (size_t)p * cin + g * cin_g, cin_g, M, dsub, ksub, cbt + (size_t)g * M * dsub * ksub,
                             T + ((size_t)p * groups + g) * M * ksub);
}
