/* Every SIMD variant this CPU runs against the scalar reference, through the kernels' public entry
 * points, over the odd shapes of the Python kernel tests (cases.h, written by gen_cases.py).
 *
 * It exists for the architectures this project's Python tests cannot run on here: built for
 * AArch64 and run under qemu-aarch64 by scripts/check-arm.sh, it tests the NEON variants on an x86
 * machine; it builds and runs natively on x86 as well.  Outputs must equal the scalar reference
 * bit for bit wherever the x86 variants do (table build, exact and fast-scan lookups, LRN with
 * exact roots, pooling, channel affine, k-means); depthwise and the GEMM convolutions fuse multiply-adds in their SIMD
 * variants and are held to 1e-5 (relative and absolute), the AVX-512 LRN's refined roots to 1e-6,
 * as in the Python tests, the element-wise activations' polynomials to 2e-6.  A variant that
 * equals the scalar reference everywhere in those fused families has not run: that fails too.
 *
 * Usage: variants_vs_scalar [--expect LEVEL]: with --expect, the best level the run-time detection
 * finds must be LEVEL (scalar, avx2, avx512, avx512vnni, neon, neondot).  Prints one line per kernel
 * and level with the number of cases compared, then "N passed, M failed" (cases); exit 1 on any
 * failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pq.h"
#include "elementwise.h"
#include "pq_kmeans.h"
#include "pq_widescan.h"
#include "cases.h"

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const char *const NAMES[QC_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512vnni", "neon", "neondot"};

/* ---- data ------------------------------------------------------------------------------------ */

static uint64_t rng_state = 88172645463325252ull;

static uint32_t next_u32(void) {          /* xorshift64 */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* Roughly normal (a sum of four uniforms, variance 1), times `scale`. */
static float *randf(size_t n, float scale) {
    float *a = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        float s = 0.f;
        for (int j = 0; j < 4; j++) s += (float)next_u32() / 4294967296.f;
        a[i] = (s - 2.f) * 1.7320508f * scale;
    }
    return a;
}

static uint8_t *randu8(size_t n, int lo, int hi) {   /* uniform in [lo, hi) */
    uint8_t *a = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) a[i] = (uint8_t)(lo + next_u32() % (uint32_t)(hi - lo));
    return a;
}

static float *fill(size_t n, float v) {
    float *a = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) a[i] = v;
    return a;
}

/* ---- bookkeeping ------------------------------------------------------------------------------ */

typedef struct {
    const char *kernel;
    int cases, failed, identical;   /* identical: cases whose output equals the reference bit for bit */
    double worst;                   /* largest |got - ref| / (1 + |ref|) */
} tally;

static int total_passed, total_failed;

/* Compares got with ref (n floats): bit for bit when tol == 0, else |got - ref| <= tol * (1 + |ref|). */
static void compare(tally *t, const float *ref, const float *got, size_t n, double tol, const char *what) {
    int ok = 1, same = memcmp(ref, got, n * sizeof(float)) == 0;
    for (size_t i = 0; i < n && !same; i++) {
        double d = fabs((double)got[i] - (double)ref[i]) / (1.0 + fabs((double)ref[i]));
        int nan_both = isnan(ref[i]) && isnan(got[i]);
        if (!nan_both && d > t->worst) t->worst = d;
        if (tol == 0 ? memcmp(ref + i, got + i, sizeof(float)) != 0 : (!nan_both && !(d <= tol))) {
            if (ok) printf("  FAIL %s %s: [%zu] %.9g, scalar %.9g\n", t->kernel, what, i, got[i], ref[i]);
            ok = 0;
        }
    }
    t->cases++;
    t->identical += same;
    t->failed += !ok;
}

static void compare_u8(tally *t, const uint8_t *ref, const uint8_t *got, size_t n, const char *what) {
    int same = memcmp(ref, got, n) == 0;
    if (!same) {
        size_t i = 0;
        while (ref[i] == got[i]) i++;
        printf("  FAIL %s %s: byte [%zu] %d, scalar %d\n", t->kernel, what, i, got[i], ref[i]);
    }
    t->cases++;
    t->identical += same;
    t->failed += !same;
}

static void report(const tally *t, int isa, int fused) {
    /* fused families must differ somewhere: else the variant table sent this level to scalar */
    int idle = fused && t->cases > 0 && t->identical == t->cases;
    printf("%-10s %-22s %5d cases compared, %5d bit-identical, worst rel. diff %.2g%s%s\n", NAMES[isa], t->kernel,
           t->cases, t->identical, t->worst, t->failed ? ", FAILED" : "",
           idle ? ", FAILED: never differs from scalar (did the variant run?)" : "");
    total_failed += t->failed + idle;
    total_passed += t->cases - t->failed - idle;
}

/* Runs CALL once with the scalar reference and once with `isa`. */
#define BOTH(isa, CALL_REF, CALL_GOT) \
    do {                              \
        qc_set_isa(QC_ISA_SCALAR);    \
        CALL_REF;                     \
        qc_set_isa(isa);              \
        CALL_GOT;                     \
    } while (0)

static const int ACTS[3] = {QC_ACT_NONE, QC_ACT_RELU, QC_ACT_RELU6};

/* ---- dense kernels ---------------------------------------------------------------------------- */

static void check_depthwise(int isa) {
    tally t = {"depthwise", 0, 0, 0, 0};
    for (int i = 0; i < COUNT(DW_CASES); i++) {
        const int *k = DW_CASES[i];
        const int h = k[0], w = k[1], c = k[2], kh = k[3], kw = k[4], sh = k[5], sw = k[6], pt = k[7], pl = k[9];
        const int oh = k[11], ow = k[12], n = 2;
        float *x = randf((size_t)n * h * w * c, 1.f), *wt = randf((size_t)kh * kw * c, 1.f), *b = randf(c, 1.f);
        const size_t ny = (size_t)n * oh * ow * c;
        float *ref = malloc(ny * sizeof(float)), *got = malloc(ny * sizeof(float));
        for (int a = 0; a < 6; a++) {
            const float *bias = a < 3 ? b : NULL;
            BOTH(isa, qc_depthwise_f32(x, n, h, w, c, wt, bias, kh, kw, sh, sw, pt, pl, ref, oh, ow, ACTS[a % 3]),
                 qc_depthwise_f32(x, n, h, w, c, wt, bias, kh, kw, sh, sw, pt, pl, got, oh, ow, ACTS[a % 3]));
            char what[96];
            snprintf(what, sizeof what, "%dx%d c%d k%dx%d s%d,%d act%d%s", h, w, c, kh, kw, sh, sw, a % 3,
                     bias ? "" : " no bias");
            compare(&t, ref, got, ny, 1e-5, what);
        }
        free(x), free(wt), free(b), free(ref), free(got);
    }
    report(&t, isa, 1);
}

/* (k, n) weights packed in panels of QC_PW_PANEL columns, as qcnn.kernels.pack_weights. */
static float *pack(const float *w, int k, int n) {
    const int np = (n + QC_PW_PANEL - 1) / QC_PW_PANEL;
    float *p = calloc((size_t)np * k * QC_PW_PANEL, sizeof(float));
    for (int kk = 0; kk < k; kk++)
        for (int j = 0; j < n; j++)
            p[((size_t)(j / QC_PW_PANEL) * k + kk) * QC_PW_PANEL + j % QC_PW_PANEL] = w[(size_t)kk * n + j];
    return p;
}

static void check_pointwise(int isa) {
    tally t = {"pointwise", 0, 0, 0, 0};
    for (int i = 0; i < COUNT(PW_CASES); i++) {
        const int m = PW_CASES[i][0], k = PW_CASES[i][1], n = PW_CASES[i][2];
        float *a = randf((size_t)m * k, 1.f), *w = randf((size_t)k * n, 1.f), *b = randf(n, 1.f);
        float *bp = pack(w, k, n), *ref = malloc((size_t)m * n * 4), *got = malloc((size_t)m * n * 4);
        for (int act = 0; act < 6; act++) {
            const float *bias = act < 3 ? b : NULL;
            BOTH(isa, qc_pointwise_f32(a, m, k, k, bp, n, bias, ref, n, ACTS[act % 3]),
                 qc_pointwise_f32(a, m, k, k, bp, n, bias, got, n, ACTS[act % 3]));
            char what[64];
            snprintf(what, sizeof what, "%dx%dx%d act%d%s", m, k, n, act % 3, bias ? "" : " no bias");
            compare(&t, ref, got, (size_t)m * n, 1e-5, what);
        }
        free(a), free(w), free(b), free(bp), free(ref), free(got);
    }
    /* rows of `a` spaced out and the output a column slice, as a grouped convolution has them: the
     * columns around the slice must stay untouched */
    {
        const int m = 30, k = 17, n = 21, lda = 50, ldc = 40;
        float *wide = randf((size_t)m * lda, 1.f), *w = randf((size_t)k * n, 1.f), *b = randf(n, 1.f);
        float *bp = pack(w, k, n), *ref = fill((size_t)m * ldc, 7.f), *got = fill((size_t)m * ldc, 7.f);
        BOTH(isa, qc_pointwise_f32(wide + 10, m, k, lda, bp, n, b, ref + 5, ldc, QC_ACT_RELU),
             qc_pointwise_f32(wide + 10, m, k, lda, bp, n, b, got + 5, ldc, QC_ACT_RELU));
        compare(&t, ref, got, (size_t)m * ldc, 1e-5, "strided rows into a column slice");
        for (int r = 0; r < m; r++)
            for (int j = 0; j < ldc; j++)
                if ((j < 5 || j >= 5 + n) && got[(size_t)r * ldc + j] != 7.f) {
                    printf("  FAIL pointwise: wrote column %d of row %d outside the slice\n", j, r);
                    t.failed++;
                    r = m;
                    break;
                }
        free(wide), free(w), free(b), free(bp), free(ref), free(got);
    }
    report(&t, isa, 1);
}

/* x (n, h, w, c) zero-padded to (n, h + pt + pb, w + pl + pr, c). */
static float *pad(const float *x, int n, int h, int w, int c, int pt, int pb, int pl, int pr) {
    const int hp = h + pt + pb, wp = w + pl + pr;
    float *xp = calloc((size_t)n * hp * wp * c, sizeof(float));
    for (int b = 0; b < n; b++)
        for (int i = 0; i < h; i++)
            memcpy(xp + (((size_t)b * hp + i + pt) * wp + pl) * c, x + (((size_t)b * h + i) * w) * c,
                   (size_t)w * c * sizeof(float));
    return xp;
}

static void check_conv_gemm(int isa) {
    tally t = {"conv_gemm", 0, 0, 0, 0};
    for (int i = 0; i < COUNT(CONV_CASES); i++) {
        const int *q = CONV_CASES[i];
        const int h = q[0], w = q[1], cin = q[2], cout = q[3], kh = q[4], kw = q[5], sh = q[6], sw = q[7];
        const int pt = q[8], pb = q[9], pl = q[10], pr = q[11], oh = q[12], ow = q[13], n = 2;
        const int hp = h + pt + pb, wp = w + pl + pr, k = kh * kw * cin;
        float *x = randf((size_t)n * h * w * cin, 1.f), *wt = randf((size_t)k * cout, 1.f), *b = randf(cout, 1.f);
        float *xp = pad(x, n, h, w, cin, pt, pb, pl, pr), *bp = pack(wt, k, cout);
        const size_t ny = (size_t)n * oh * ow * cout;
        float *ref = malloc(ny * 4), *got = malloc(ny * 4);
        for (int a = 0; a < 3; a++) {
            BOTH(isa, qc_conv_gemm_f32(xp, n, hp, wp, cin, 0, cin, kh, kw, sh, sw, bp, cout, b, ref, cout, oh, ow, ACTS[a]),
                 qc_conv_gemm_f32(xp, n, hp, wp, cin, 0, cin, kh, kw, sh, sw, bp, cout, b, got, cout, oh, ow, ACTS[a]));
            char what[80];
            snprintf(what, sizeof what, "%dx%d %d->%d k%dx%d s%d,%d act%d", h, w, cin, cout, kh, kw, sh, sw, a);
            compare(&t, ref, got, ny, 1e-5, what);
        }
        free(x), free(wt), free(b), free(xp), free(bp), free(ref), free(got);
    }
    /* one group (input channels [3, 7) of 10) into a column slice */
    {
        float *x = randf(6 * 7 * 10, 1.f), *wt = randf(3 * 3 * 4 * 6, 1.f), *bp = pack(wt, 36, 6);
        float *ref = fill(20 * 9, 0.f), *got = fill(20 * 9, 0.f);
        BOTH(isa, qc_conv_gemm_f32(x, 1, 6, 7, 10, 3, 4, 3, 3, 1, 1, bp, 6, NULL, ref + 2, 9, 4, 5, QC_ACT_NONE),
             qc_conv_gemm_f32(x, 1, 6, 7, 10, 3, 4, 3, 3, 1, 1, bp, 6, NULL, got + 2, 9, 4, 5, QC_ACT_NONE));
        compare(&t, ref, got, 20 * 9, 1e-5, "one group into a slice");
        free(x), free(wt), free(bp), free(ref), free(got);
    }
    report(&t, isa, 1);
}

/* (3, 3, cin, cout) weights as qcnn.kernels.winograd_weights makes them for F(mt x mt, 3x3):
 * U[e] = (G g G^T)[e] for the (mt + 2)^2 frequencies e, each (cin, cout) matrix packed, one after
 * the other. */
static float *winograd_weights(const float *w, int cin, int cout, int mt) {
    static const double G2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
    static const double G4[6][3] = {{1. / 4, 0, 0}, {-1. / 6, -1. / 6, -1. / 6}, {-1. / 6, 1. / 6, -1. / 6},
                                    {1. / 24, 1. / 12, 1. / 6}, {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};
    const int p = mt + 2;
    const double (*G)[3] = mt == 4 ? G4 : G2;
    const size_t panel = (size_t)(cout + QC_PW_PANEL - 1) / QC_PW_PANEL * cin * QC_PW_PANEL;
    float *up = malloc((size_t)p * p * panel * sizeof(float)), *u = malloc((size_t)cin * cout * sizeof(float));
    for (int e = 0; e < p * p; e++) {
        for (int k = 0; k < cin; k++)
            for (int n = 0; n < cout; n++) {
                double s = 0;
                for (int i = 0; i < 3; i++)
                    for (int j = 0; j < 3; j++)
                        s += G[e / p][i] * w[((size_t)(i * 3 + j) * cin + k) * cout + n] * G[e % p][j];
                u[(size_t)k * cout + n] = (float)s;
            }
        float *pk = pack(u, cin, cout);
        memcpy(up + e * panel, pk, panel * sizeof(float));
        free(pk);
    }
    free(u);
    return up;
}

static void check_winograd(int isa) {
    tally t = {"winograd", 0, 0, 0, 0};
    for (int mt = 2; mt <= 4; mt += 2)
    for (int i = 0; i < COUNT(WINOGRAD_CASES); i++) {
        const int *q = WINOGRAD_CASES[i];
        const int h = q[0], w = q[1], cin = q[2], cout = q[3], pt = q[4], pb = q[5], pl = q[6], pr = q[7];
        const int oh = q[8], ow = q[9], n = 2, hp = h + pt + pb, wp = w + pl + pr;
        float *x = randf((size_t)n * h * w * cin, 1.f), *wt = randf((size_t)9 * cin * cout, 1.f), *b = randf(cout, 1.f);
        float *xp = pad(x, n, h, w, cin, pt, pb, pl, pr), *up = winograd_weights(wt, cin, cout, mt);
        const size_t ny = (size_t)n * oh * ow * cout;
        float *ref = malloc(ny * 4), *got = malloc(ny * 4);
        for (int a = 0; a < 6; a++) {
            const float *bias = a < 3 ? b : NULL;
            BOTH(isa, qc_winograd_f32(xp, n, hp, wp, cin, 0, cin, up, cout, bias, ref, cout, oh, ow, ACTS[a % 3], mt),
                 qc_winograd_f32(xp, n, hp, wp, cin, 0, cin, up, cout, bias, got, cout, oh, ow, ACTS[a % 3], mt));
            char what[80];
            snprintf(what, sizeof what, "F(%d) %dx%d %d->%d act%d%s", mt, h, w, cin, cout, a % 3, bias ? "" : " no bias");
            /* F(4x4)'s output transform multiplies the GEMMs' differences in rounding by up to 8 x 8 */
            compare(&t, ref, got, ny, mt == 2 ? 1e-5 : 2.5e-4, what);
        }
        free(x), free(wt), free(b), free(xp), free(up), free(ref), free(got);
    }
    report(&t, isa, 1);
}

static void check_lrn(int isa) {
    tally t = {"lrn", 0, 0, 0, 0};
    static const float KS[3] = {2.f, 1.f, 0.f};
    for (int i = 0; i < COUNT(LRN_CASES); i++) {
        const int c = LRN_CASES[i][0], size = LRN_CASES[i][1];
        const float beta = (float)LRN_CASES[i][2] / 1000.f;
        const size_t npix = 2 * 5 * 3, nx = npix * c;
        float *x = randf(nx, 3.f), *ref = malloc(nx * 4), *got = malloc(nx * 4);
        for (int j = 0; j < 3; j++) {
            const float scale = 2e-4f, k = KS[j];
            BOTH(isa, qc_lrn_f32(x, npix, c, size, scale, beta, k, ref), qc_lrn_f32(x, npix, c, size, scale, beta, k, got));
            char what[64];
            snprintf(what, sizeof what, "c%d size %d beta %g k %g", c, size, beta, k);
            /* the AVX2 and AVX-512 variants' Newton-refined roots (dense_ops.c), as in the Python tests */
            const int approx = (isa == QC_ISA_AVX2 || isa == QC_ISA_AVX512 || isa == QC_ISA_AVX512VNNI) && beta == 0.75f && k > 0;
            compare(&t, ref, got, nx, approx ? 1e-6 : 0, what);
        }
        free(x), free(ref), free(got);
    }
    report(&t, isa, 0);
}

static void check_pool(int isa) {
    tally t = {"pool", 0, 0, 0, 0};
    for (int i = 0; i < COUNT(POOL_CASES); i++) {
        const int *p = POOL_CASES[i];
        const int avg = p[0], h = p[1], w = p[2], c = p[3], kh = p[4], kw = p[5], sh = p[6], sw = p[7];
        const int pt = p[8], pb = p[9], pl = p[10], pr = p[11], oh = p[12], ow = p[13], inc = p[14], n = 2;
        float *x = randf((size_t)n * h * w * c, 1.f);
        const size_t ny = (size_t)n * oh * ow * c;
        float *ref = malloc(ny * 4), *got = malloc(ny * 4);
        BOTH(isa, qc_pool_f32(x, n, h, w, c, kh, kw, sh, sw, pt, pb, pl, pr, avg, inc, ref, oh, ow),
             qc_pool_f32(x, n, h, w, c, kh, kw, sh, sw, pt, pb, pl, pr, avg, inc, got, oh, ow));
        char what[64];
        snprintf(what, sizeof what, "%s %dx%d c%d k%dx%d s%d,%d", avg ? "avg" : "max", h, w, c, kh, kw, sh, sw);
        compare(&t, ref, got, ny, 0, what);
        free(x), free(ref), free(got);
    }
    report(&t, isa, 0);
}

/* ---- element-wise kernels of imported networks ----------------------------------------------- */

static void check_unary(int isa) {
    /* polynomial exp/erf against libm, held to the Python tests' 2e-6; every length's vector tail */
    tally t = {"unary", 0, 0, 0, 0};
    static const size_t NS[] = {1, 3, 4, 5, 7, 8, 15, 16, 17, 33, 257};
    for (int kind = 0; kind < QC_UNARY_COUNT; kind++)
        for (int i = 0; i < COUNT(NS); i++) {
            const size_t n = NS[i];
            float *x = randf(n, 6.f), *ref = malloc(n * 4), *got = malloc(n * 4);
            BOTH(isa, qc_unary_f32(x, ref, n, kind, 0.2f, 0.5f), qc_unary_f32(x, got, n, kind, 0.2f, 0.5f));
            char what[48];
            snprintf(what, sizeof what, "kind %d n %zu", kind, n);
            compare(&t, ref, got, n, 2e-6, what);
            free(x), free(ref), free(got);
        }
    report(&t, isa, 1);
}

static void check_affine(int isa) {
    tally t = {"affine", 0, 0, 0, 0};
    static const int CS[] = {1, 3, 4, 7, 16, 19, 64};
    for (int i = 0; i < COUNT(CS); i++)
        for (int a = 0; a < 3; a++) {
            const int c = CS[i];
            const size_t npix = 13, nx = npix * c;
            float *x = randf(nx, 4.f), *scale = randf(c, 2.f), *shift = randf(c, 8.f);
            float *ref = malloc(nx * 4), *got = malloc(nx * 4);
            BOTH(isa, qc_affine_f32(x, ref, npix, c, scale, shift, ACTS[a]),
                 qc_affine_f32(x, got, npix, c, scale, shift, ACTS[a]));
            char what[48];
            snprintf(what, sizeof what, "c%d act %d", c, ACTS[a]);
            compare(&t, ref, got, nx, 0, what);
            free(x), free(scale), free(shift), free(ref), free(got);
        }
    report(&t, isa, 0);
}


/* ---- codebook learning -------------------------------------------------------------------------- */

static void check_kmeans(int isa) {
    /* every variant computes the same distance sums in the same order: centres and codes bit for bit */
    tally t = {"kmeans", 0, 0, 0, 0};
    static const int CASES[][3] = {{1, 4, 37}, {2, 16, 200}, {3, 16, 61}, {4, 32, 300}, {8, 64, 500},
                                   {4, 256, 700}, {5, 17, 90}, {2, 16, 10}};   /* d, K, P (P < K too) */
    for (int i = 0; i < COUNT(CASES); i++)
        for (int bounds = -1; bounds <= 1; bounds++) {
            const int d = CASES[i][0], K = CASES[i][1], S = 3;
            const int64_t P = CASES[i][2];
            float *x = randf((size_t)S * P * d, 1.f), *w = randf((size_t)S * P, 1.f);
            for (int64_t j = 0; j < S * P; j++) w[j] = fabsf(w[j]) + (j % 7 == 0 ? 0.f : 0.1f);
            for (int64_t j = 0; j < P * d / 4; j++) x[j + P * d] = x[j];          /* duplicates in problem 1 */
            const uint64_t seeds[3] = {1, 99, 12345};
            float *cref = malloc(sizeof(float) * S * K * d), *cgot = malloc(sizeof(float) * S * K * d);
            int32_t *kref = malloc(sizeof(int32_t) * S * P), *kgot = malloc(sizeof(int32_t) * S * P);
            BOTH(isa, qc_kmeans_f32(x, w, seeds, NULL, S, P, d, K, 1, 50, 1e-4, bounds, cref, kref, NULL),
                 qc_kmeans_f32(x, w, seeds, NULL, S, P, d, K, 1, 50, 1e-4, bounds, cgot, kgot, NULL));
            char what[64];
            snprintf(what, sizeof what, "d%d K%d P%lld bounds %d", d, K, (long long)P, bounds);
            compare(&t, cref, cgot, (size_t)S * K * d, 0, what);
            if (memcmp(kref, kgot, sizeof(int32_t) * S * P) != 0) {
                printf("  FAIL kmeans %s: codes differ\n", what);
                t.failed++;
            }
            free(x), free(w), free(cref), free(cgot), free(kref), free(kgot);
        }
    report(&t, isa, 0);
}


/* ---- product-quantized layers ----------------------------------------------------------------- */

typedef struct {
    int fc, cin, cout, k, dsub, ksub, groups, sh, sw, pt, pl, h, w, oh, ow, M, cin_g;
} pq_case;

static pq_case pq_case_from(const int *q) {
    pq_case c = {q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8], q[9], q[10], q[11], q[12], q[13], q[14], 0, 0};
    c.cin_g = c.cin / c.groups;
    c.M = (c.cin_g + c.dsub - 1) / c.dsub;
    return c;
}

static pq_case pq_case_at(int i) { return pq_case_from(PQ_CASES[i]); }

/* Transposed codebooks (groups * M, dsub, ksub): the padded rows of a narrow last subspace stay
 * random (the kernels must ignore them); fast-scan pads to 16 codewords with copies of codeword 0. */
static float *codebooks(const pq_case *c, int ksub_out) {
    float *cbt = randf((size_t)c->groups * c->M * c->dsub * ksub_out, 1.f);
    for (size_t r = 0; r < (size_t)c->groups * c->M * c->dsub; r++)
        for (int k = c->ksub; k < ksub_out; k++) cbt[r * ksub_out + k] = cbt[r * ksub_out];
    return cbt;
}

static void check_pq(int isa) {
    tally tt = {"pq_tables", 0, 0, 0, 0}, te = {"pq_exact", 0, 0, 0, 0};
    tally tq = {"fastscan_tables_u8", 0, 0, 0, 0}, tf = {"fastscan_lookups", 0, 0, 0, 0};
    tally tr2 = {"fastscan_residual_u8", 0, 0, 0, 0};
    static const char *const LAYOUT[3] = {"bytes", "nibbles", "dot"};
    for (int i = 0; i < COUNT(PQ_CASES); i++) {
        const pq_case c = pq_case_at(i);
        const int npix = c.h * c.w, taps = c.k * c.k, gm = c.groups * c.M;
        char what[96];
        snprintf(what, sizeof what, "case %d: %s %d->%d k%d C_s'%d K%d g%d s%d on %dx%d", i, c.fc ? "fc" : "conv",
                 c.cin, c.cout, c.k, c.dsub, c.ksub, c.groups, c.sh, c.h, c.w);
        uint8_t *codes = randu8((size_t)taps * c.M * c.cout, 0, c.ksub);
        float *bias = randf(c.cout, 1.f);
        const size_t ny = (size_t)c.oh * c.ow * c.cout, nt = (size_t)npix * gm * c.ksub;
        float *yref = malloc(ny * 4), *ygot = malloc(ny * 4);
        for (int img = 0; img < 2; img++) {
            float *x = randf((size_t)npix * c.cin, 1.f), *cbt = codebooks(&c, c.ksub);
            float *tref = malloc(nt * 4), *tgot = malloc(nt * 4);
            BOTH(isa, qc_pq_tables_f32(x, npix, c.cin, c.groups, c.M, c.dsub, c.ksub, cbt, tref),
                 qc_pq_tables_f32(x, npix, c.cin, c.groups, c.M, c.dsub, c.ksub, cbt, tgot));
            compare(&tt, tref, tgot, nt, 0, what);
            for (int a = 0; a < 3; a++) {      /* the lookups read the reference tables in both runs */
                BOTH(isa, qc_pq_conv_exact(tref, c.h, c.w, c.groups, c.M, c.ksub, codes, c.k, c.k, c.sh, c.sw, c.pt,
                                           c.pl, c.cout, bias, yref, c.oh, c.ow, ACTS[a]),
                     qc_pq_conv_exact(tref, c.h, c.w, c.groups, c.M, c.ksub, codes, c.k, c.k, c.sh, c.sw, c.pt, c.pl,
                                      c.cout, bias, ygot, c.oh, c.ow, ACTS[a]));
                compare(&te, yref, ygot, ny, 0, what);
            }
            free(cbt), free(tref), free(tgot);
            if (c.ksub > 16) {
                free(x);
                continue;
            }
            /* fast-scan: uint8 tables, then every code layout */
            const int Mp = 4 * ((c.M + 3) / 4), shared = taps > 1;
            const size_t nq = (size_t)npix * c.groups * Mp * 16, ns = (size_t)npix * c.groups;
            float *cb16 = codebooks(&c, 16), *T = malloc((size_t)(shared ? npix : 1) * gm * 16 * 4);
            uint8_t *qref = malloc(nq), *qgot = malloc(nq);
            float *sref = malloc(ns * 4), *sgot = malloc(ns * 4), *oref = malloc(ns * 4), *ogot = malloc(ns * 4);
            /* the rounding correction's inputs, as qcnn/pq/kernels.py makes them: code counts per
             * (group, subspace) over taps and the group's outputs, and a mean weight per channel */
            const int cout_g = c.cout / c.groups, cin_g = c.cin / c.groups;
            uint16_t *counts = calloc((size_t)gm * 16, sizeof *counts);
            for (int t = 0; t < taps; t++)
                for (int m = 0; m < c.M; m++)
                    for (int o = 0; o < c.cout; o++)
                        counts[((size_t)(o / cout_g) * c.M + m) * 16 + codes[((size_t)t * c.M + m) * c.cout + o]]++;
            float *wmean = randf((size_t)c.groups * cin_g, 1.f);
            for (int debias = 0; debias < 2; debias++) {
                const float *wm = debias ? wmean : NULL;
                const uint16_t *cn = debias ? counts : NULL;
                BOTH(isa, qc_fs_tables_u8(x, npix, c.cin, c.groups, c.M, c.dsub, cb16, wm, cn, shared, T, qref, sref, oref),
                     qc_fs_tables_u8(x, npix, c.cin, c.groups, c.M, c.dsub, cb16, wm, cn, shared, T, qgot, sgot, ogot));
                compare_u8(&tq, qref, qgot, nq, what);
                compare(&tq, sref, sgot, ns, 0, what);
                compare(&tq, oref, ogot, ns, 0, what);
            }
            free(counts), free(wmean);
            {   /* two-pass fast-scan's residual tables, from shared-step tables without the correction */
                const size_t nt16 = (size_t)npix * gm * 16;
                float *tr = malloc(nt16 * 4), *tg = malloc(nt16 * 4);
                float *srr = malloc(ns * 4), *srg = malloc(ns * 4), *orr = malloc(ns * 4), *org = malloc(ns * 4);
                uint8_t *rref = malloc(nq), *rgot = malloc(nq);
                qc_set_isa(QC_ISA_SCALAR);
                qc_fs_tables_u8(x, npix, c.cin, c.groups, c.M, c.dsub, cb16, NULL, NULL, 1, tr, qref, sref, oref);
                memcpy(tg, tr, nt16 * 4);       /* the residual overwrites its tables */
                BOTH(isa, qc_fs_residual_u8(tr, npix * c.groups, c.M, qref, sref, oref, rref, srr, orr),
                     qc_fs_residual_u8(tg, npix * c.groups, c.M, qref, sref, oref, rgot, srg, org));
                compare_u8(&tr2, rref, rgot, nq, what);
                compare(&tr2, srr, srg, ns, 0, what);
                compare(&tr2, orr, org, ns, 0, what);
                free(tr), free(tg), free(srr), free(srg), free(orr), free(org), free(rref), free(rgot);
            }
            for (int layout = 0; layout < 3; layout++) {
                uint8_t *packed = malloc(qc_fs_packed_size(c.k, c.k, c.groups, c.M, c.cout, layout));
                qc_fs_pack_codes(codes, c.k, c.k, c.groups, c.M, c.cout, layout, packed);
                for (int a = 0; a < 3; a++) {
                    BOTH(isa, qc_pq_conv_fastscan(qref, sref, oref, c.h, c.w, c.groups, c.M, packed, c.k, c.k, c.sh,
                                                  c.sw, c.pt, c.pl, c.cout, bias, yref, c.oh, c.ow, ACTS[a], layout),
                         qc_pq_conv_fastscan(qref, sref, oref, c.h, c.w, c.groups, c.M, packed, c.k, c.k, c.sh, c.sw,
                                             c.pt, c.pl, c.cout, bias, ygot, c.oh, c.ow, ACTS[a], layout));
                    char lw[128];
                    snprintf(lw, sizeof lw, "%s, %s layout", what, LAYOUT[layout]);
                    compare(&tf, yref, ygot, ny, 0, lw);
                }
                free(packed);
            }
            free(x), free(cb16), free(T), free(qref), free(qgot), free(sref), free(sgot), free(oref), free(ogot);
        }
        free(codes), free(bias), free(yref), free(ygot);
    }
    report(&tt, isa, 0);
    report(&te, isa, 0);
    report(&tq, isa, 0);
    report(&tr2, isa, 0);
    report(&tf, isa, 0);
}

/* Fast-scan lookups on tables of large bytes (192..255, and all 255): the integer sums reach what
 * the 16-bit accumulators of the SIMD variants can hold between their widening flushes, on the
 * Python tests' longest sums (25 taps x 96 channels; 2100 FC inputs) and longer ones. */
static void check_fastscan_limits(int isa) {
    tally t = {"fastscan_large_sums", 0, 0, 0, 0};
    static const int SHAPES[][6] = {  /* fc, cin, cout, k, dsub, map side */
        {0, 96, 64, 5, 4, 6}, {1, 2100, 40, 1, 4, 1}, {1, 4096, 70, 1, 4, 1}, {0, 256, 40, 3, 2, 3}, {1, 8192, 33, 1, 2, 1}};
    for (int i = 0; i < 2 * COUNT(SHAPES); i++) {
        const int lowest = i < COUNT(SHAPES) ? 192 : 255;
        const int *sh = SHAPES[i % COUNT(SHAPES)];
        const int cin = sh[1], cout = sh[2], k = sh[3], dsub = sh[4], side = sh[5];
        const int M = (cin + dsub - 1) / dsub, Mp = 4 * ((M + 3) / 4), npix = side * side, pad0 = k / 2;
        uint8_t *Q = randu8((size_t)npix * Mp * 16, lowest, 256), *codes = randu8((size_t)k * k * M * cout, 0, 16);
        float *scale = fill(npix, 0.01f), *osum = fill(npix, -1.f), *bias = randf(cout, 1.f);
        const size_t ny = (size_t)npix * cout;
        float *ref = malloc(ny * 4), *got = malloc(ny * 4);
        for (int layout = 0; layout < 3; layout++) {
            uint8_t *packed = malloc(qc_fs_packed_size(k, k, 1, M, cout, layout));
            qc_fs_pack_codes(codes, k, k, 1, M, cout, layout, packed);
            BOTH(isa, qc_pq_conv_fastscan(Q, scale, osum, side, side, 1, M, packed, k, k, 1, 1, pad0, pad0, cout, bias,
                                          ref, side, side, QC_ACT_NONE, layout),
                 qc_pq_conv_fastscan(Q, scale, osum, side, side, 1, M, packed, k, k, 1, 1, pad0, pad0, cout, bias, got,
                                     side, side, QC_ACT_NONE, layout));
            char what[64];
            snprintf(what, sizeof what, "%d taps x %d subspaces, bytes >= %d, layout %d", k * k, M, lowest, layout);
            compare(&t, ref, got, ny, 0, what);
            free(packed);
        }
        free(Q), free(codes), free(scale), free(osum), free(bias), free(ref), free(got);
    }
    report(&t, isa, 0);
}

static int qc_isa_for_both;   /* the level check_widescan_case compares with scalar */

/* Wide-scan (K = 32..256): uint8 tables, then lookups, over the PQ shapes with K > 16 and the
 * wide-scan tests' own (WS_CASES, K already padded to a supported size). */
static void check_widescan_case(const pq_case *c, tally *tq, tally *tl, const char *what) {
    const int npix = c->h * c->w, taps = c->k * c->k, shared = taps > 1;
    const size_t nq = (size_t)npix * c->groups * c->M * c->ksub, ns = (size_t)npix * c->groups;
    const size_t ny = (size_t)c->oh * c->ow * c->cout;
    uint8_t *codes = randu8((size_t)taps * c->M * c->cout, 0, c->ksub);
    float *bias = randf(c->cout, 1.f), *x = randf((size_t)npix * c->cin, 1.f), *cbt = codebooks(c, c->ksub);
    float *T = malloc((size_t)4 * c->M * c->ksub * 4), *yref = malloc(ny * 4), *ygot = malloc(ny * 4);
    uint8_t *qref = malloc(nq), *qgot = malloc(nq);
    float *sref = malloc(ns * 4), *sgot = malloc(ns * 4), *oref = malloc(ns * 4), *ogot = malloc(ns * 4);
    /* the rounding correction's inputs, as qcnn/pq/kernels.py makes them (see check_pq) */
    const int cout_g = c->cout / c->groups, cin_g = c->cin / c->groups, K = c->ksub;
    uint16_t *counts = calloc((size_t)c->groups * c->M * K, sizeof *counts);
    for (int t = 0; t < taps; t++)
        for (int m = 0; m < c->M; m++)
            for (int o = 0; o < c->cout; o++)
                counts[((size_t)(o / cout_g) * c->M + m) * K + codes[((size_t)t * c->M + m) * c->cout + o]]++;
    float *wmean = randf((size_t)c->groups * cin_g, 1.f);
    for (int debias = 0; debias < 2; debias++) {     /* the lookups below read the corrected tables */
        const float *wm = debias ? wmean : NULL;
        const uint16_t *cn = debias ? counts : NULL;
        BOTH(qc_isa_for_both, qc_ws_tables_u8(x, npix, c->cin, c->groups, c->M, c->dsub, K, cbt, wm, cn, shared, T, qref, sref, oref),
             qc_ws_tables_u8(x, npix, c->cin, c->groups, c->M, c->dsub, K, cbt, wm, cn, shared, T, qgot, sgot, ogot));
        compare_u8(tq, qref, qgot, nq, what);
        compare(tq, sref, sgot, ns, 0, what);
        compare(tq, oref, ogot, ns, 0, what);
    }
    free(counts), free(wmean);
    uint8_t *packed = malloc(qc_ws_packed_size(c->k, c->k, c->groups, c->M, c->cout));
    qc_ws_pack_codes(codes, c->k, c->k, c->groups, c->M, c->cout, packed);
    for (int a = 0; a < 3; a++) {   /* both runs read the reference tables */
        BOTH(qc_isa_for_both, qc_pq_conv_widescan(qref, sref, oref, c->h, c->w, c->groups, c->M, c->ksub, packed, c->k, c->k,
                                                   c->sh, c->sw, c->pt, c->pl, c->cout, bias, yref, c->oh, c->ow, ACTS[a]),
             qc_pq_conv_widescan(qref, sref, oref, c->h, c->w, c->groups, c->M, c->ksub, packed, c->k, c->k, c->sh, c->sw,
                                 c->pt, c->pl, c->cout, bias, ygot, c->oh, c->ow, ACTS[a]));
        compare(tl, yref, ygot, ny, 0, what);
    }
    free(codes), free(bias), free(x), free(cbt), free(T), free(yref), free(ygot), free(packed);
    free(qref), free(qgot), free(sref), free(sgot), free(oref), free(ogot);
}

static void check_widescan(int isa) {
    tally tq = {"widescan_tables_u8", 0, 0, 0, 0}, tl = {"widescan_lookups", 0, 0, 0, 0};
    qc_isa_for_both = isa;
    for (int src = 0; src < 2; src++)
        for (int i = 0; i < (src ? COUNT(WS_CASES) : COUNT(PQ_CASES)); i++) {
            pq_case c = src ? pq_case_from(WS_CASES[i]) : pq_case_at(i);
            if (!qc_ws_supported(c.ksub)) continue;
            char what[96];
            snprintf(what, sizeof what, "%s case %d: %s %d->%d k%d C_s'%d K%d g%d s%d on %dx%d", src ? "WS" : "PQ", i,
                     c.fc ? "fc" : "conv", c.cin, c.cout, c.k, c.dsub, c.ksub, c.groups, c.sh, c.h, c.w);
            for (int img = 0; img < 2; img++) check_widescan_case(&c, &tq, &tl, what);
        }
    report(&tq, isa, 0);
    report(&tl, isa, 0);
}

/* Wide-scan lookups on tables of large bytes (192..255, and all 255): the integer sums reach what
 * the 16-bit accumulators hold between their widening flushes (every 256 subspaces), for each K. */
static void check_widescan_limits(int isa) {
    tally t = {"widescan_large_sums", 0, 0, 0, 0};
    static const int SHAPES[][6] = {  /* fc, cin, cout, k, dsub, map side */
        {0, 96, 70, 5, 4, 6}, {1, 2100, 130, 1, 4, 1}, {1, 8192, 33, 1, 2, 1}, {0, 256, 40, 3, 2, 3}};
    static const int KS[4] = {32, 64, 128, 256};
    for (int i = 0; i < 2 * COUNT(SHAPES); i++)
        for (int kk = 0; kk < 4; kk++) {
            const int lowest = i < COUNT(SHAPES) ? 192 : 255, K = KS[kk];
            const int *sh = SHAPES[i % COUNT(SHAPES)];
            const int cin = sh[1], cout = sh[2], k = sh[3], dsub = sh[4], side = sh[5];
            const int M = (cin + dsub - 1) / dsub, npix = side * side, pad0 = k / 2;
            uint8_t *Q = randu8((size_t)npix * M * K, lowest, 256), *codes = randu8((size_t)k * k * M * cout, 0, K);
            float *scale = fill(npix, 0.01f), *osum = fill(npix, -1.f), *bias = randf(cout, 1.f);
            const size_t ny = (size_t)npix * cout;
            float *ref = malloc(ny * 4), *got = malloc(ny * 4);
            uint8_t *packed = malloc(qc_ws_packed_size(k, k, 1, M, cout));
            qc_ws_pack_codes(codes, k, k, 1, M, cout, packed);
            BOTH(isa, qc_pq_conv_widescan(Q, scale, osum, side, side, 1, M, K, packed, k, k, 1, 1, pad0, pad0, cout, bias,
                                          ref, side, side, QC_ACT_NONE),
                 qc_pq_conv_widescan(Q, scale, osum, side, side, 1, M, K, packed, k, k, 1, 1, pad0, pad0, cout, bias, got,
                                     side, side, QC_ACT_NONE));
            char what[64];
            snprintf(what, sizeof what, "%d taps x %d subspaces, K %d, bytes >= %d", k * k, M, K, lowest);
            compare(&t, ref, got, ny, 0, what);
            free(Q), free(codes), free(scale), free(osum), free(bias), free(ref), free(got), free(packed);
        }
    report(&t, isa, 0);
}

int main(int argc, char **argv) {
    const char *expect = argc == 3 && strcmp(argv[1], "--expect") == 0 ? argv[2] : NULL;
    if (argc != 1 && !expect) {
        fprintf(stderr, "usage: %s [--expect LEVEL]\n", argv[0]);
        return 2;
    }
    const int best = qc_isa_best();
    printf("best SIMD level detected: %s\n", NAMES[best]);
    if (expect) {                                      /* the detection is a case too */
        const int ok = strcmp(expect, NAMES[best]) == 0;
        if (!ok) printf("FAIL: expected the run-time detection to find %s\n", expect);
        total_passed += ok;
        total_failed += !ok;
    }
    for (int isa = 1; isa < QC_ISA_COUNT; isa++) {
        if (qc_set_isa(isa) != isa) continue;          /* not on this CPU */
        check_depthwise(isa);
        check_pointwise(isa);
        check_conv_gemm(isa);
        check_winograd(isa);
        check_lrn(isa);
        check_pool(isa);
        check_unary(isa);
        check_affine(isa);
        check_kmeans(isa);
        check_pq(isa);
        check_fastscan_limits(isa);
        check_widescan(isa);
        check_widescan_limits(isa);
    }
    printf("%d passed, %d failed\n", total_passed, total_failed);
    return total_failed ? 1 : 0;
}
