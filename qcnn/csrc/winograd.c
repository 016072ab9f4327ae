/* 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) and F(4x4, 3x3) (Lavin &
 * Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each MT x MT tile of output
 * pixels comes from a P x P patch of input (P = MT + 2) in P^2 products per (input, output channel)
 * pair instead of 9 MT^2: 16 for 4 pixels, or 36 for 16 (2.25 per pixel instead of 4, at the price
 * of 2.25x the transformed weights and larger rounding; qcnn/kernels.py winograd_tile chooses).
 *
 *   Y = A^T [ (G g G^T) .* (B^T d B) ] A, elementwise over the P x P "frequencies" e, so that for
 *   each e the products over channels are one GEMM: M[e] (tiles x cout) = V[e] (tiles x cc) @ U[e].
 *
 * U[e] = (G g G^T)[e] is made once per layer (qcnn/kernels.py winograd_weights) and packed as the
 * pointwise kernel wants it, so the GEMMs run on pointwise.c's microkernels; this file only adds
 * the input transform (V = B^T d B per tile and channel, zeros outside the padded input) and the
 * output transform (A^T M A, with bias and activation fused, pixels past the output dropped).
 * Both transforms run along the contiguous channel axis; tiles go in chunks so that V and M of a
 * chunk stay in L2/L3 between the transform and the GEMMs.
 *
 *   F(2x2, 3x3):  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]    A^T = [1 1 1 0; 0 1 -1 -1]
 *   F(4x4, 3x3):  see WG4_BT and WG4_AT.
 *
 * Variants: the transforms are written once (WG_TRANSFORMS) and compiled three times, plain,
 * for AVX2 and for AVX-512 (twice on ARM: plain and NEON), so the compiler vectorises each for its
 * width; they only add, subtract and scale by constants, in the same order in every variant (no
 * FMA contraction under -std=c11), so every variant's transforms give the same bits.  The GEMMs
 * differ as pointwise.c's variants do. */
#include <stdlib.h>
#include "qcnn.h"
#include "simd.h"

#define WG_CHUNK 256   /* F(2x2) tiles per chunk: V and M of 64-channel layers ~1 MB each */

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

/* Input transform of channels [ch, ch + sizeof(T)/4) of one tile: v[e * plane + ch] = (B^T d B)[e],
 * F(2x2, 3x3): a 4x4 patch. */
#define WG2_IN_STEP(T)                                                                                \
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

/* F(4x4, 3x3): a 6x6 patch, B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0;
 * 0 2 -1 -2 1 0; 0 4 0 -5 0 1], applied to the six values x0..x5 of a column (then of a row) in
 * this factored form. */
#define WG4_BT(T, x, y)                                                                               \
    do {                                                                                              \
        const T s13_ = x[4] - x[2] * 4.f, s24_ = x[3] - x[1] * 4.f;                                   \
        const T s42_ = x[4] - x[2], s31_ = (x[3] - x[1]) * 2.f;                                       \
        y[0] = x[0] * 4.f - x[2] * 5.f + x[4];                                                        \
        y[1] = s13_ + s24_;                                                                           \
        y[2] = s13_ - s24_;                                                                           \
        y[3] = s42_ + s31_;                                                                           \
        y[4] = s42_ - s31_;                                                                           \
        y[5] = x[1] * 4.f - x[3] * 5.f + x[5];                                                        \
    } while (0)

#define WG4_IN_STEP(T)                                                                                \
    do {                                                                                              \
        T r[6][6];                                                                                    \
        for (int j = 0; j < 6; j++) {      /* B^T d, a column at a time */                            \
            T x[6], y[6];                                                                             \
            for (int i = 0; i < 6; i++) x[i] = WG_LD(T, px[i][j] + ch);                               \
            WG4_BT(T, x, y);                                                                          \
            for (int i = 0; i < 6; i++) r[i][j] = y[i];                                               \
        }                                                                                             \
        for (int i = 0; i < 6; i++) {      /* (B^T d) B */                                            \
            T y[6];                                                                                   \
            WG4_BT(T, r[i], y);                                                                       \
            for (int j = 0; j < 6; j++) WG_ST(T, v + (size_t)(i * 6 + j) * plane + ch, y[j]);         \
        }                                                                                             \
    } while (0)

/* c ? x : y, for a float (WG_SEL1) or lane by lane for GCC vectors, c a comparison's mask (WG_SELV). */
#define WG_SEL1(c, x, y) ((c) ? (x) : (y))
#define WG_SELV(c, x, y) ((__typeof__(x))(((c) & (__typeof__(c))(x)) | (~(c) & (__typeof__(c))(y))))

/* A^T of F(2x2, 3x3), [1 1 1 0; 0 1 -1 -1], on four values x0..x3 (a column, then a row of M). */
#define WG2_AT(T, x, y)                                                                               \
    do {                                                                                              \
        y[0] = x[0] + x[1] + x[2];                                                                    \
        y[1] = x[1] - x[2] - x[3];                                                                    \
    } while (0)

/* A^T of F(4x4, 3x3), [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1], factored. */
#define WG4_AT(T, x, y)                                                                               \
    do {                                                                                              \
        const T a_ = x[1] + x[2], b_ = x[1] - x[2], c_ = x[3] + x[4], d_ = x[3] - x[4];              \
        y[0] = x[0] + a_ + c_;                                                                        \
        y[1] = b_ + d_ * 2.f;                                                                         \
        y[2] = a_ + c_ * 4.f;                                                                         \
        y[3] = b_ + d_ * 8.f + x[5];                                                                  \
    } while (0)

/* Output transform of channels [co, co + sizeof(T)/4) of one tile of MT x MT pixels from a P x P
 * patch (P = MT + 2): A^T M A + bias, activated as qc_act does, only the rows x cols pixels inside
 * the output stored.  AT is WG2_AT or WG4_AT; ZERO and SIX are T values; SEL selects. */
#define WG_OUT_STEP(T, MT, AT, ZERO, SIX, SEL)                                                        \
    do {                                                                                              \
        T s[MT][MT + 2];                                                                              \
        for (int j = 0; j < MT + 2; j++) { /* A^T M, a column at a time */                            \
            T x[MT + 2], y[MT];                                                                       \
            for (int i = 0; i < MT + 2; i++) x[i] = WG_LD(T, m + (size_t)(i * (MT + 2) + j) * plane + co); \
            AT(T, x, y);                                                                              \
            for (int i = 0; i < MT; i++) s[i][j] = y[i];                                              \
        }                                                                                             \
        const T b = a->bias ? WG_LD(T, a->bias + co) : ZERO;                                          \
        for (int i = 0; i < rows; i++) {   /* (A^T M) A */                                            \
            T o[MT];                                                                                  \
            AT(T, s[i], o);                                                                           \
            for (int j = 0; j < cols; j++) {                                                          \
                T q_ = o[j] + b;                                                                      \
                if (act != QC_ACT_NONE) q_ = SEL(q_ > ZERO, q_, ZERO);                                \
                if (act == QC_ACT_RELU6) q_ = SEL(q_ < SIX, q_, SIX);                                 \
                WG_ST(T, y0 + ((size_t)i * a->ow + j) * ldy + co, q_);                                \
            }                                                                                         \
        }                                                                                             \
    } while (0)

/* The two transforms over tiles [t0, t0 + nt) of an image for output tiles of MT x MT pixels (tile t
 * at row MT * (t / tw), column MT * (t % tw)), W channels at a time in a T (a GCC vector of W
 * floats), the rest one by one. */
#define WG_TRANSFORMS_MT(SFX, ATTR, T, W, SEL, MT, IN_STEP, AT)                                       \
    ATTR static void wg_input##MT##_##SFX(const wg_args *a, const float *xb, int t0, int nt, int tw, float *V) { \
        const size_t cc = (size_t)a->cc, plane = (size_t)nt * cc;                                     \
        for (int t = 0; t < nt; t++) {                                                                \
            const int ty = (t0 + t) / tw * MT, tx = (t0 + t) % tw * MT;                               \
            const float *px[MT + 2][MT + 2];                                                          \
            for (int i = 0; i < MT + 2; i++)                                                          \
                for (int j = 0; j < MT + 2; j++)                                                      \
                    px[i][j] = ty + i < a->hp && tx + j < a->wp                                       \
                        ? xb + ((size_t)(ty + i) * a->wp + (size_t)(tx + j)) * a->c + a->c0 : a->zeros; \
            float *v = V + (size_t)t * cc;                                                            \
            size_t ch = 0;                                                                            \
            for (; ch + W <= cc; ch += W) IN_STEP(T);                                                 \
            for (; ch < cc; ch++) IN_STEP(float);                                                     \
        }                                                                                             \
    }                                                                                                 \
    ATTR static void wg_output##MT##_##SFX(const wg_args *a, const float *M, int t0, int nt, int tw) { \
        const size_t cout = (size_t)a->cout, plane = (size_t)nt * cout, ldy = (size_t)a->ldy;         \
        const int act = a->act;                                                                       \
        const T zero = (T){0} * 0.f, six = zero + 6.f;                                                \
        for (int t = 0; t < nt; t++) {                                                                \
            const int oy = (t0 + t) / tw * MT, ox = (t0 + t) % tw * MT;                               \
            const int rows = a->oh - oy < MT ? a->oh - oy : MT, cols = a->ow - ox < MT ? a->ow - ox : MT; \
            float *y0 = a->y + ((size_t)oy * a->ow + ox) * ldy;                                       \
            const float *m = M + (size_t)t * cout;                                                    \
            size_t co = 0;                                                                            \
            for (; co + W <= cout; co += W) WG_OUT_STEP(T, MT, AT, zero, six, SEL);                   \
            for (; co < cout; co++) WG_OUT_STEP(float, MT, AT, 0.f, 6.f, WG_SEL1);                    \
        }                                                                                             \
    }

#define WG_TRANSFORMS(SFX, ATTR, T, W, SEL)                                                           \
    WG_TRANSFORMS_MT(SFX, ATTR, T, W, SEL, 2, WG2_IN_STEP, WG2_AT)                                    \
    WG_TRANSFORMS_MT(SFX, ATTR, T, W, SEL, 4, WG4_IN_STEP, WG4_AT)

typedef void (*wg_input_fn)(const wg_args *, const float *, int, int, int, float *);
typedef void (*wg_output_fn)(const wg_args *, const float *, int, int, int);
typedef struct {
    wg_input_fn input2, input4;
    wg_output_fn output2, output4;
} wg_traits;

#define WG_VARIANT(SFX) {wg_input2_##SFX, wg_input4_##SFX, wg_output2_##SFX, wg_output4_##SFX}

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
    [QC_ISA_SCALAR] = WG_VARIANT(scalar),
#if QC_HAVE_X86
    [QC_ISA_AVX2] = WG_VARIANT(avx2),
    [QC_ISA_AVX512] = WG_VARIANT(avx512),
    [QC_ISA_AVX512VNNI] = WG_VARIANT(avx512),
#else
    [QC_ISA_AVX2] = WG_VARIANT(scalar),
    [QC_ISA_AVX512] = WG_VARIANT(scalar),
    [QC_ISA_AVX512VNNI] = WG_VARIANT(scalar),
#endif
#if QC_HAVE_NEON
    [QC_ISA_NEON] = WG_VARIANT(neon),
    [QC_ISA_NEONDOT] = WG_VARIANT(neon),
#else
    [QC_ISA_NEON] = WG_VARIANT(scalar),
    [QC_ISA_NEONDOT] = WG_VARIANT(scalar),
#endif
};

int qc_winograd_f32(const float *xp, int n, int hp, int wp, int c, int c0, int cc, const float *up, int cout,
                    const float *bias, float *y, int ldy, int oh, int ow, int act, int mt) {
    const wg_traits *t = &WG[qc_isa()];
    if (mt != 2 && mt != 4)
        return -2;
    const wg_input_fn input = mt == 4 ? t->input4 : t->input2;
    const wg_output_fn output = mt == 4 ? t->output4 : t->output2;
    const int ne = (mt + 2) * (mt + 2);   /* frequencies: GEMMs per chunk */
    const int th = (oh + mt - 1) / mt, tw = (ow + mt - 1) / mt, tiles = th * tw;
    const int max_chunk = WG_CHUNK * 16 / ne;   /* the same V and M sizes for both tile sizes */
    const int chunk = tiles < max_chunk ? tiles : max_chunk;
    const size_t panel = (size_t)(cout + QC_PW_PANEL - 1) / QC_PW_PANEL * cc * QC_PW_PANEL;
    float *V = malloc((size_t)ne * chunk * cc * sizeof(float));
    float *M = malloc((size_t)ne * chunk * cout * sizeof(float));
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
            input(&a, xb, t0, nt, tw, V);
            for (int e = 0; e < ne; e++)
                qc_pointwise_f32(V + (size_t)e * nt * cc, nt, cc, cc, up + e * panel, cout, NULL,
                                 M + (size_t)e * nt * cout, cout, QC_ACT_NONE);
            output(&a, M, t0, nt, tw);
        }
    }
    free(V);
    free(M);
    free(zeros);
    return 0;
}
