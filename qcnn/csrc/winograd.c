/* 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast
 * Algorithms for Convolutional Neural Networks", 2016): each 2x2 tile of output pixels comes from
 * a 4x4 patch of input in 16 products per (input, output channel) pair instead of 36.
 *
 *   Y = A^T [ (G g G^T) .* (B^T d B) ] A, elementwise over the 4x4 "frequencies" e, so that for
 *   each e the products over channels are one GEMM: M[e] (tiles x cout) = V[e] (tiles x cc) @ U[e].
 *
 * U[e] = (G g G^T)[e] is made once per layer (qcnn/kernels.py winograd_weights) and packed as the
 * pointwise kernel wants it, so the 16 GEMMs run on pointwise.c's microkernels; this file only
 * adds the input transform (V = B^T d B per tile and channel, zeros outside the padded input) and
 * the output transform (A^T M A, with bias and activation fused, pixels past the output dropped).
 * Both transforms run along the contiguous channel axis; tiles go in chunks so that V and M of a
 * chunk stay in L2/L3 between the transform and the GEMMs.
 *
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]    A^T = [1 1 1 0; 0 1 -1 -1]
 *
 * Variants: the transforms are written once (wg_input, wg_output) and compiled three times, plain,
 * for AVX2 and for AVX-512 (twice on ARM: plain and NEON), so the compiler vectorises each for its width; they only add and
 * subtract, in the same order in every variant (no FMA contraction under -std=c11), so every
 * variant's transforms give the same bits.  The GEMMs differ as pointwise.c's variants do. */
#include <stdlib.h>
#include "qcnn.h"
#include "simd.h"

#define WG_CHUNK 256   /* tiles per chunk: V and M of 64-channel layers ~1 MB each */

typedef struct {
    const float *xp;
    int hp, wp, c, c0, cc;
    int cout, ldy, oh, ow, act;
    const float *bias, *zeros;   /* zeros: cc of them, read for taps past the padded input */
    float *y;          /* output of image b: (oh * ow) rows of ldy floats */
} wg_args;

/* Memory <-> a value of type T (float, or a GCC vector of floats), unaligned. */
#define WG_LD(T, p) ({ T v_; __builtin_memcpy(&v_, (p), sizeof(T)); v_; })
#define WG_ST(T, p, v) do { T v_ = (v); __builtin_memcpy((p), &v_, sizeof(T)); } while (0)

/* Input transform of channels [ch, ch + sizeof(T)/4) of one tile: v[e * plane + ch] = (B^T d B)[e]. */
#define WG_IN_STEP(T)                                                                                 \
    do {                                                                                              \
        T d[4][4], r[4][4];                                                                           \
        for (int i = 0; i < 4; i++)                                                                   \
            for (int j = 0; j < 4; j++) d[i][j] = WG_LD(T, px[i][j] + ch);                            \
        for (int j = 0; j < 4; j++) {      /* B^T d */                                                \
            r[0][j] = d[0][j] - d[2][j];                                                              \
            r[1][j] = d[1][j] + d[2][j];                                                              \
            r[2][j] = d[2][j] - d[1][j];                                                              \
            r[3][j] = d[1][j] - d[3][j];                                                              \
        }                                                                                             \
        for (int i = 0; i < 4; i++) {      /* (B^T d) B */                                            \
            WG_ST(T, v + (size_t)(i * 4 + 0) * plane + ch, r[i][0] - r[i][2]);                        \
            WG_ST(T, v + (size_t)(i * 4 + 1) * plane + ch, r[i][1] + r[i][2]);                        \
            WG_ST(T, v + (size_t)(i * 4 + 2) * plane + ch, r[i][2] - r[i][1]);                        \
            WG_ST(T, v + (size_t)(i * 4 + 3) * plane + ch, r[i][1] - r[i][3]);                        \
        }                                                                                             \
    } while (0)

/* c ? x : y, for a float (WG_SEL1) or lane by lane for GCC vectors, c a comparison's mask (WG_SELV). */
#define WG_SEL1(c, x, y) ((c) ? (x) : (y))
#define WG_SELV(c, x, y) ((__typeof__(x))(((c) & (__typeof__(c))(x)) | (~(c) & (__typeof__(c))(y))))

/* Output transform of channels [co, co + sizeof(T)/4) of one tile: A^T M A + bias, activated as
 * qc_act does.  ZERO and SIX are T values; SEL selects. */
#define WG_OUT_STEP(T, ZERO, SIX, SEL)                                                                     \
    do {                                                                                              \
        T s[2][4], o[2][2];                                                                           \
        for (int j = 0; j < 4; j++) {      /* A^T M */                                                \
            const T m0 = WG_LD(T, m + (size_t)j * plane + co), m1 = WG_LD(T, m + (size_t)(4 + j) * plane + co); \
            const T m2 = WG_LD(T, m + (size_t)(8 + j) * plane + co), m3 = WG_LD(T, m + (size_t)(12 + j) * plane + co); \
            s[0][j] = m0 + m1 + m2;                                                                   \
            s[1][j] = m1 - m2 - m3;                                                                   \
        }                                                                                             \
        const T b = a->bias ? WG_LD(T, a->bias + co) : ZERO;                                          \
        for (int i = 0; i < 2; i++) {      /* (A^T M) A */                                            \
            o[i][0] = s[i][0] + s[i][1] + s[i][2] + b;                                                \
            o[i][1] = s[i][1] - s[i][2] - s[i][3] + b;                                                \
            for (int j = 0; j < 2; j++) {                                                             \
                if (act != QC_ACT_NONE) o[i][j] = SEL(o[i][j] > ZERO, o[i][j], ZERO);                 \
                if (act == QC_ACT_RELU6) o[i][j] = SEL(o[i][j] < SIX, o[i][j], SIX);                  \
            }                                                                                         \
        }                                                                                             \
        WG_ST(T, y0 + co, o[0][0]);                                                                   \
        if (cols > 1) WG_ST(T, y0 + ldy + co, o[0][1]);                                               \
        if (rows > 1) WG_ST(T, y1 + co, o[1][0]);                                                     \
        if (rows > 1 && cols > 1) WG_ST(T, y1 + ldy + co, o[1][1]);                                   \
    } while (0)

/* The two transforms over tiles [t0, t0 + nt) of an image (tile t at row 2 * (t / tw), column
 * 2 * (t % tw)), W channels at a time in a T (a GCC vector of W floats), the rest one by one. */
#define WG_TRANSFORMS(SFX, ATTR, T, W, SEL)                                                                \
    ATTR static void wg_input_##SFX(const wg_args *a, const float *xb, int t0, int nt, int tw, float *V) { \
        const size_t cc = (size_t)a->cc, plane = (size_t)nt * cc;                                     \
        for (int t = 0; t < nt; t++) {                                                                \
            const int ty = (t0 + t) / tw * 2, tx = (t0 + t) % tw * 2;                                 \
            const float *px[4][4];                                                                    \
            for (int i = 0; i < 4; i++)                                                               \
                for (int j = 0; j < 4; j++)                                                           \
                    px[i][j] = ty + i < a->hp && tx + j < a->wp                                       \
                        ? xb + ((size_t)(ty + i) * a->wp + (size_t)(tx + j)) * a->c + a->c0 : a->zeros; \
            float *v = V + (size_t)t * cc;                                                            \
            size_t ch = 0;                                                                            \
            for (; ch + W <= cc; ch += W) WG_IN_STEP(T);                                              \
            for (; ch < cc; ch++) WG_IN_STEP(float);                                                  \
        }                                                                                             \
    }                                                                                                 \
    ATTR static void wg_output_##SFX(const wg_args *a, const float *M, int t0, int nt, int tw) {      \
        const size_t cout = (size_t)a->cout, plane = (size_t)nt * cout, ldy = (size_t)a->ldy;         \
        const int act = a->act;                                                                       \
        const T zero = (T){0} * 0.f, six = zero + 6.f;                                                \
        for (int t = 0; t < nt; t++) {                                                                \
            const int oy = (t0 + t) / tw * 2, ox = (t0 + t) % tw * 2;                                 \
            const int rows = oy + 1 < a->oh ? 2 : 1, cols = ox + 1 < a->ow ? 2 : 1;                   \
            float *y0 = a->y + ((size_t)oy * a->ow + ox) * ldy, *y1 = y0 + (size_t)a->ow * ldy;       \
            const float *m = M + (size_t)t * cout;                                                    \
            size_t co = 0;                                                                            \
            for (; co + W <= cout; co += W) WG_OUT_STEP(T, zero, six, SEL);                           \
            for (; co < cout; co++) WG_OUT_STEP(float, 0.f, 6.f, WG_SEL1);                            \
        }                                                                                             \
    }

typedef struct {
    void (*input)(const wg_args *, const float *, int, int, int, float *);
    void (*output)(const wg_args *, const float *, int, int, int);
} wg_traits;

WG_TRANSFORMS(scalar, , float, 1, WG_SEL1)
#if QC_HAVE_X86
typedef float wg_f8 __attribute__((vector_size(32)));
typedef float wg_f16 __attribute__((vector_size(64)));
WG_TRANSFORMS(avx2, QC_AVX2, wg_f8, 8, WG_SELV)
WG_TRANSFORMS(avx512, QC_AVX512, wg_f16, 16, WG_SELV)
#endif
#if QC_HAVE_NEON
typedef float wg_f4 __attribute__((vector_size(16)));
WG_TRANSFORMS(neon, , wg_f4, 4, WG_SELV)
#endif

static const wg_traits WG[QC_ISA_COUNT] = {
    [QC_ISA_SCALAR] = {wg_input_scalar, wg_output_scalar},
#if QC_HAVE_X86
    [QC_ISA_AVX2] = {wg_input_avx2, wg_output_avx2},
    [QC_ISA_AVX512] = {wg_input_avx512, wg_output_avx512},
    [QC_ISA_AVX512VNNI] = {wg_input_avx512, wg_output_avx512},
#else
    [QC_ISA_AVX2] = {wg_input_scalar, wg_output_scalar},
    [QC_ISA_AVX512] = {wg_input_scalar, wg_output_scalar},
    [QC_ISA_AVX512VNNI] = {wg_input_scalar, wg_output_scalar},
#endif
#if QC_HAVE_NEON
    [QC_ISA_NEON] = {wg_input_neon, wg_output_neon},
    [QC_ISA_NEONDOT] = {wg_input_neon, wg_output_neon},
#else
    [QC_ISA_NEON] = {wg_input_scalar, wg_output_scalar},
    [QC_ISA_NEONDOT] = {wg_input_scalar, wg_output_scalar},
#endif
};

int qc_winograd_f32(const float *xp, int n, int hp, int wp, int c, int c0, int cc, const float *up, int cout,
                    const float *bias, float *y, int ldy, int oh, int ow, int act) {
    const wg_traits *t = &WG[qc_isa()];
    const int th = (oh + 1) / 2, tw = (ow + 1) / 2, tiles = th * tw;
    const int chunk = tiles < WG_CHUNK ? tiles : WG_CHUNK;
    const size_t panel = (size_t)(cout + QC_PW_PANEL - 1) / QC_PW_PANEL * cc * QC_PW_PANEL;
    float *V = malloc((size_t)16 * chunk * cc * sizeof(float));
    float *M = malloc((size_t)16 * chunk * cout * sizeof(float));
    float *zeros = calloc((size_t)cc, sizeof(float));
    if (!V || !M || !zeros) {
        free(V);
        free(M);
        free(zeros);
        return -1;
    }
    for (int b = 0; b < n; b++) {
        const wg_args a = {xp, hp, wp, c, c0, cc, cout, ldy, oh, ow, act, bias, zeros, y + (size_t)b * oh * ow * ldy};
        const float *xb = xp + (size_t)b * hp * wp * c;
        for (int t0 = 0; t0 < tiles; t0 += chunk) {
            const int nt = tiles - t0 < chunk ? tiles - t0 : chunk;
            t->input(&a, xb, t0, nt, tw, V);
            for (int e = 0; e < 16; e++)
                qc_pointwise_f32(V + (size_t)e * nt * cc, nt, cc, cc, up + e * panel, cout, NULL,
                                 M + (size_t)e * nt * cout, cout, QC_ACT_NONE);
            t->output(&a, M, t0, nt, tw);
        }
    }
    free(V);
    free(M);
    free(zeros);
    return 0;
}
