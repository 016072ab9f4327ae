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

static void tables_scalar(const float *x, int npix, int cin, int groups, int M, int dsub, int ksub,
                          const float *cbt, float *T) {
    int cin_g = cin / groups;
    for (int p = 0; p < npix; p++) {
        const float *xp = x + (size_t)p * cin;
        float *tp = T + (size_t)p * groups * M * ksub;
        for (int g = 0; g < groups; g++)
            for (int m = 0; m < M; m++) {
                const float *xs = xp + g * cin_g + m * dsub;
                const float *cb = cbt + (size_t)(g * M + m) * dsub * ksub;
                float *t = tp + (size_t)(g * M + m) * ksub;
                int dm = sub_width(m, dsub, cin_g);
                for (int k = 0; k < ksub; k++) {
                    float acc = 0.f;
                    for (int d = 0; d < dm; d++)
                        acc = fmaf(xs[d], cb[(size_t)d * ksub + k], acc);
                    t[k] = acc;
                }
            }
    }
}

#if QC_HAVE_X86
QC_AVX2 static void tables_avx2(const float *x, int npix, int cin, int groups, int M, int dsub, int ksub,
                                const float *cbt, float *T) {
    int cin_g = cin / groups;
    for (int p = 0; p < npix; p++) {
        const float *xp = x + (size_t)p * cin;
        float *tp = T + (size_t)p * groups * M * ksub;
        for (int g = 0; g < groups; g++)
            for (int m = 0; m < M; m++) {
                const float *xs = xp + g * cin_g + m * dsub;
                const float *cb = cbt + (size_t)(g * M + m) * dsub * ksub;
                float *t = tp + (size_t)(g * M + m) * ksub;
                int dm = sub_width(m, dsub, cin_g);
                int k = 0;
                for (; k + 8 <= ksub; k += 8) {
                    __m256 acc = _mm256_setzero_ps();
                    for (int d = 0; d < dm; d++)
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(xs[d]), _mm256_loadu_ps(cb + (size_t)d * ksub + k), acc);
                    _mm256_storeu_ps(t + k, acc);
                }
                for (; k < ksub; k++) {
                    float acc = 0.f;
                    for (int d = 0; d < dm; d++)
                        acc = fmaf(xs[d], cb[(size_t)d * ksub + k], acc);
                    t[k] = acc;
                }
            }
    }
}
#endif

typedef void (*tables_fn)(const float *, int, int, int, int, int, int, const float *, float *);

void qc_pq_tables_f32(const float *x, int npix, int cin, int groups, int M, int dsub, int ksub,
                      const float *cbt, float *T) {
    static const tables_fn variants[QC_ISA_COUNT] = {
        tables_scalar,
#if QC_HAVE_X86
        tables_avx2, tables_avx2,
#else
        tables_scalar, tables_scalar,
#endif
    };
    variants[qc_isa()](x, npix, cin, groups, M, dsub, ksub, cbt, T);
}
