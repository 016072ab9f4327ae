/* GEMM convolutions: pointwise (1x1) convolution as a GEMM, and any other convolution as an
 * "implicit" GEMM that reads its patches straight from the (padded) input instead of an im2col copy.
 *
 * c (m x n) = act(a (m x k) @ b (k x n) + bias).  In NHWC a 1x1 convolution is exactly this product
 * with one row of `a` per pixel, so the activations are used in place.  For a kh x kw convolution
 * row r of `a` is the patch of output pixel r: its k = kh*kw*cc values sit at fixed offsets
 * koff[k] from the pixel's window origin, and neighbouring pixels of an output row have origins
 * sw*c floats apart — so the same microkernel serves both, with one extra (cached) table load per
 * step of k when the offsets are not simply 0, 1, 2, ...  (The AVX2 tiles take the offsets as runs
 * of contiguous values instead, one per kernel tap or kernel row: see pw256_kernel.)
 *
 * b is rearranged once, when the layer is built (qcnn/kernels.py): panels of QC_PW_PANEL = 32
 * output channels, each stored k-major (k rows of 32 floats, zero past column n).  A microkernel
 * computes an MR x 32 tile of c in registers: per step of k it loads one row of the panel (two
 * 16-lane or four 8-lane vectors), broadcasts MR values of a, and does 2*MR (or 4*MR) FMAs; the
 * bias is the accumulators' starting value and the activation is applied on the way to memory,
 * so c is written exactly once.
 *
 * Blocking: rows are taken in blocks of about 256 KB of `a` (stays in L2); for each block every
 * panel of b sweeps over it tile by tile, so a panel (k x 128 bytes) is fetched once per block and
 * then reused from L1/L2 -- unless all of b fits in L1, in which case each tile goes through all
 * panels (see pw_block).  Rows are split into "segments" that a tile may not cross (a whole block
 * for a GEMM, one output row for a convolution, whose next row starts elsewhere), and each segment
 * into tiles of equal height.  No blocking along k: the largest k we hand these kernels (AlexNet's
 * 2304, see kernels.py's BLAS rule) keeps an MR-row slice of a and a panel within L2.
 *
 * Variants: a scalar reference (plain loops), AVX2+FMA (6 x 16 tiles: 12 accumulators) and AVX-512
 * (12 x 32 tiles: 24 accumulators).  Tile heights are compile-time constants (one specialised copy
 * per height, for the last rows too) so the accumulators never leave the registers. */
#include <stdint.h>
#include <stdlib.h>
#include "qcnn.h"
#include "simd.h"

#define PANEL QC_PW_PANEL

/* Software prefetch distance along a weight panel, in bytes (32 steps of k ahead).  Inside a
 * network the weights of a layer were last used a whole inference ago and come from DRAM; the
 * hardware prefetchers restart at every 4 KB page of the panel stream, and the first tile over a
 * panel then stalls on every page.  Measured: 49x1152 -> 320 with cold weights 0.55 -> 0.45 ms,
 * the whole Lite0 forward 9.5 -> 8.8 ms.  (Prefetching the input rows and output lines of the next
 * tile as well helped in isolation with cold data but cost 2-3% in the network, so it is not done.) */
#define PW_PREFETCH 4096

/* Prefetch address computed as an integer: it may run past the end of the packed weights, which
 * is harmless for a prefetch but would be undefined behaviour as pointer arithmetic. */
#define PW_PREFETCH_AT(p, bytes) _mm_prefetch((const char *)((uintptr_t)(p) + (bytes)), _MM_HINT_T0)

/* Rows per block: about 256 KB of `a`. */
#define PW_BLOCK_FLOATS (64 * 1024)

int qc_pw_panel(void) { return PANEL; }

typedef struct {
    const float *bp, *bias;
    const int *koff;   /* NULL: a row's k values are contiguous; else value kk sits at koff[kk] */
    size_t lda, ldc;   /* distance between consecutive rows of a (of c) within a segment */
    int k, act;
    /* The same offsets as runs: k = ntap * tapk values, run t contiguous from toff[t] (NULL: one
     * run from 0).  A convolution's run is one kernel tap's channels. */
    const int *toff;
    int ntap, tapk;
} pw_args;

/* A variant: tile height and the function computing `rows` (<= mr) rows of panel p, the first
 * starting at a (row 0 of the tile in `a`) and c (row 0, column 0 of the tile's rows in c); only
 * the first `cols` (<= PANEL) columns of the panel are real. */
typedef void (*pw_tile_fn)(const pw_args *, const float *a, int rows, float *c, int p, int cols);
typedef struct {
    int mr;
    pw_tile_fn tile;
} pw_traits;

/* ---- scalar reference ------------------------------------------------------------------------ */

static void pw_tile_scalar(const pw_args *g, const float *a, int rows, float *c, int p, int cols) {
    const float *b = g->bp + (size_t)p * g->k * PANEL;
    for (int r = 0; r < rows; r++) {
        const float *ar = a + (size_t)r * g->lda;
        float acc[PANEL];
        for (int j = 0; j < PANEL; j++)
            acc[j] = g->bias && j < cols ? g->bias[(size_t)p * PANEL + j] : 0.f;
        for (int kk = 0; kk < g->k; kk++) {
            const float av = ar[g->koff ? g->koff[kk] : kk];
            for (int j = 0; j < PANEL; j++)  /* whole panel: the padding columns are zeros */
                acc[j] += av * b[(size_t)kk * PANEL + j];
        }
        float *cr = c + (size_t)r * g->ldc + (size_t)p * PANEL;
        for (int j = 0; j < cols; j++)
            cr[j] = qc_act(acc[j], g->act);
    }
}

/* Switch on the tile height so each case inlines the kernel with a constant MR:
 * CALL(MR, NV) expands to the kernel call. */
#define PW_HEIGHTS_6(CALL, NV)                                                                    \
    case 1: CALL(1, NV); break;                                                                   \
    case 2: CALL(2, NV); break;                                                                   \
    case 3: CALL(3, NV); break;                                                                   \
    case 4: CALL(4, NV); break;                                                                   \
    case 5: CALL(5, NV); break;                                                                   \
    case 6: CALL(6, NV); break;
#define PW_HEIGHTS_12(CALL, NV)                                                                   \
    PW_HEIGHTS_6(CALL, NV)                                                                        \
    case 7: CALL(7, NV); break;                                                                   \
    case 8: CALL(8, NV); break;                                                                   \
    case 9: CALL(9, NV); break;                                                                   \
    case 10: CALL(10, NV); break;                                                                 \
    case 11: CALL(11, NV); break;                                                                 \
    case 12: CALL(12, NV); break;

#if QC_HAVE_X86

/* ---- AVX-512: MR x (NV * 16) tiles, NV = 2 for a full panel, 1 when at most 16 columns are real */

QC_AVX512 QC_INLINE void pw512_kernel(const pw_args *g, const float *a, float *c, int p, int cols,
                                      const int MR, const int NV, const int IMPLICIT) {
    const size_t lda = g->lda, ldc = g->ldc;
    const int act = g->act;  /* local copies: the stores to c might alias *g for all the compiler knows */
    const int *koff = g->koff;
    const float *b = g->bp + (size_t)p * g->k * PANEL;
    c += (size_t)p * PANEL;
    /* Store masks for a partial last panel (the padding columns of b are zero, so computing them
     * is harmless; only the stores must stop at n). */
    const __mmask16 m0 = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
    const __mmask16 m1 = cols >= 32 ? (__mmask16)0xFFFF : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (g->bias) {
        b0 = _mm512_maskz_loadu_ps(m0, g->bias + (size_t)p * PANEL);
        if (NV == 2) b1 = _mm512_maskz_loadu_ps(m1, g->bias + (size_t)p * PANEL + 16);
    }
    __m512 acc0[12], acc1[12];  /* fixed size, not a VLA, so they can live in registers */
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        acc0[r] = b0;
        acc1[r] = b1;
    }
    for (int kk = 0; kk < g->k; kk++) {
        PW_PREFETCH_AT(b + (size_t)kk * PANEL, PW_PREFETCH);
        PW_PREFETCH_AT(b + (size_t)kk * PANEL, PW_PREFETCH + 64);
        const __m512 w0 = _mm512_loadu_ps(b + (size_t)kk * PANEL);
        const __m512 w1 = NV == 2 ? _mm512_loadu_ps(b + (size_t)kk * PANEL + 16) : _mm512_setzero_ps();
        const float *ak = a + (IMPLICIT ? (size_t)koff[kk] : (size_t)kk);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            const __m512 av = _mm512_set1_ps(ak[(size_t)r * lda]);
            acc0[r] = _mm512_fmadd_ps(av, w0, acc0[r]);
            if (NV == 2) acc1[r] = _mm512_fmadd_ps(av, w1, acc1[r]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        _mm512_mask_storeu_ps(c + (size_t)r * ldc, m0, qc_act512(acc0[r], act));
        if (NV == 2) _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16, m1, qc_act512(acc1[r], act));
    }
}

QC_AVX512 static void pw_tile_avx512(const pw_args *g, const float *a, int rows, float *c, int p, int cols) {
#define CALL512(MR, NV) pw512_kernel(g, a, c, p, cols, MR, NV, 0)
#define CALL512I(MR, NV) pw512_kernel(g, a, c, p, cols, MR, NV, 1)
    if (g->koff) {
        if (cols > 16) {
            switch (rows) { PW_HEIGHTS_12(CALL512I, 2) default: break; }
        } else {
            switch (rows) { PW_HEIGHTS_12(CALL512I, 1) default: break; }
        }
    } else if (cols > 16) {
        switch (rows) { PW_HEIGHTS_12(CALL512, 2) default: break; }
    } else {
        switch (rows) { PW_HEIGHTS_12(CALL512, 1) default: break; }
    }
#undef CALL512
#undef CALL512I
}

/* ---- AVX2 + FMA: MR x (NV * 8) tiles over one half (16 columns) of a panel at a time ---------- */

/* One step of k: a row of the half panel (two vectors), MR broadcasts, 2 * MR FMAs.  Row r's value
 * is at ar[r][o], so each broadcast is one load with a base and an index register. */
#define PW256_STEP(bk, o)                                                                         \
    do {                                                                                          \
        const __m256 w0 = _mm256_loadu_ps(bk);                                                    \
        const __m256 w1 = NV == 2 ? _mm256_loadu_ps((bk) + 8) : _mm256_setzero_ps();              \
        _Pragma("GCC unroll 16") for (int r = 0; r < MR; r++) {                                   \
            const __m256 av = _mm256_broadcast_ss(ar[r] + (o));                                   \
            acc0[r] = _mm256_fmadd_ps(av, w0, acc0[r]);                                           \
            if (NV == 2) acc1[r] = _mm256_fmadd_ps(av, w1, acc1[r]);                              \
        }                                                                                         \
    } while (0)

/* Columns [half * 16, half * 16 + hc) of panel p, hc <= 8 * NV.  At 16 lanes per cycle the 12 FMAs
 * of a 6-row step take 6 cycles, into which its 8 loads, a prefetch and the loop's own bookkeeping
 * must fit (two loads and about five instructions per cycle): so k goes in runs of contiguous
 * values (a convolution's tap, g->toff), four steps at a time with constant displacements, and no
 * per-step offset table is read.  (Stepping one k at a time through g->koff ran at half the speed of
 * the AVX-512 tiles.) */
QC_AVX2 QC_INLINE void pw256_kernel(const pw_args *g, const float *a, float *c, int p, int half, int hc,
                                    const int MR, const int NV) {
    const size_t lda = g->lda, ldc = g->ldc;
    const int act = g->act, ntap = g->ntap, tapk = g->tapk;
    const int *toff = g->toff;
    const float *b = g->bp + (size_t)p * g->k * PANEL + half * 16;
    c += (size_t)p * PANEL + half * 16;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(hc), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(hc - 8), lane);
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    if (g->bias) {
        b0 = _mm256_maskload_ps(g->bias + (size_t)p * PANEL + half * 16, m0);
        if (NV == 2) b1 = _mm256_maskload_ps(g->bias + (size_t)p * PANEL + half * 16 + 8, m1);
    }
    __m256 acc0[6], acc1[6];
    const float *ar[6];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        acc0[r] = b0;
        acc1[r] = b1;
        ar[r] = a + (size_t)r * lda;
        /* The lines of c the next tile stores (it starts where this one ends, in both blocking
         * orders): a layer's output is usually not in cache, and a store that misses stalls. */
        PW_PREFETCH_AT(c + (size_t)(MR + r) * ldc, 0);
    }
    for (int t = 0; t < ntap; t++) {
        const size_t o = toff ? (size_t)toff[t] : 0;
        int kk = 0;
        for (; kk + 4 <= tapk; kk += 4, b += 4 * PANEL) {
            /* this half's lines, 32 rows ahead */
            PW_PREFETCH_AT(b, PW_PREFETCH);
            PW_PREFETCH_AT(b + PANEL, PW_PREFETCH);
            PW_PREFETCH_AT(b + 2 * PANEL, PW_PREFETCH);
            PW_PREFETCH_AT(b + 3 * PANEL, PW_PREFETCH);
            PW256_STEP(b, o + kk);
            PW256_STEP(b + PANEL, o + kk + 1);
            PW256_STEP(b + 2 * PANEL, o + kk + 2);
            PW256_STEP(b + 3 * PANEL, o + kk + 3);
        }
        for (; kk < tapk; kk++, b += PANEL) {
            PW_PREFETCH_AT(b, PW_PREFETCH);
            PW256_STEP(b, o + kk);
        }
    }
    const int whole = hc == 8 * NV;
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        float *cr = c + (size_t)r * ldc;
        if (whole) {  /* masked stores are slow on AVX2: keep them for the last columns */
            _mm256_storeu_ps(cr, qc_act256(acc0[r], act));
            if (NV == 2) _mm256_storeu_ps(cr + 8, qc_act256(acc1[r], act));
        } else {
            _mm256_maskstore_ps(cr, m0, qc_act256(acc0[r], act));
            if (NV == 2) _mm256_maskstore_ps(cr + 8, m1, qc_act256(acc1[r], act));
        }
    }
}
#undef PW256_STEP

QC_AVX2 static void pw_tile_avx2(const pw_args *g, const float *a, int rows, float *c, int p, int cols) {
#define CALL256(MR, NV) pw256_kernel(g, a, c, p, half, hc, MR, NV)
    for (int half = 0; half * 16 < cols; half++) {
        const int hc = cols - half * 16 < 16 ? cols - half * 16 : 16;  /* real columns in this half */
        if (hc > 8) {
            switch (rows) { PW_HEIGHTS_6(CALL256, 2) default: break; }
        } else {
            switch (rows) { PW_HEIGHTS_6(CALL256, 1) default: break; }
        }
    }
#undef CALL256
}

#endif  /* QC_HAVE_X86 */

#if QC_HAVE_NEON

/* ---- NEON: MR x (NV * 4) tiles over one half (16 columns) of a panel at a time, the AVX2 tile
 * shape: 6 x 16 is 24 accumulators, 4 weight vectors and a broadcast in the 32 registers. ---------- */

/* Columns [half * 16, half * 16 + hc) of panel p, hc <= 4 * NV.  The weights are prefetched as on
 * x86 (distance not tuned on ARM). */
QC_INLINE void pw128_kernel(const pw_args *g, const float *a, float *c, int p, int half, int hc,
                            const int MR, const int NV, const int IMPLICIT) {
    const size_t lda = g->lda, ldc = g->ldc;
    const int act = g->act;
    const int *koff = g->koff;
    const float *b = g->bp + (size_t)p * g->k * PANEL + half * 16;
    c += (size_t)p * PANEL + half * 16;
    float32x4_t bias[4], acc[6][4];
    for (int v = 0; v < NV; v++) {
        bias[v] = vdupq_n_f32(0.f);
        if (g->bias) {
            /* only the real columns: the bias has n entries */
            float tmp[4] = {0.f, 0.f, 0.f, 0.f};
            const float *bp = g->bias + (size_t)p * PANEL + half * 16 + 4 * v;
            if (hc >= 4 * v + 4) bias[v] = vld1q_f32(bp);
            else {
                for (int j = 0; j < 3 && j < hc - 4 * v; j++) tmp[j] = bp[j];
                bias[v] = vld1q_f32(tmp);
            }
        }
    }
QC_UNROLL
    for (int r = 0; r < MR; r++)
QC_UNROLL
        for (int v = 0; v < NV; v++) acc[r][v] = bias[v];
    for (int kk = 0; kk < g->k; kk++) {
        __builtin_prefetch((const void *)((uintptr_t)(b + (size_t)kk * PANEL) + PW_PREFETCH));
        float32x4_t w[4];
QC_UNROLL
        for (int v = 0; v < NV; v++) w[v] = vld1q_f32(b + (size_t)kk * PANEL + 4 * v);
        const float *ak = a + (IMPLICIT ? (size_t)koff[kk] : (size_t)kk);
QC_UNROLL
        for (int r = 0; r < MR; r++) {
            const float32x4_t av = vld1q_dup_f32(ak + (size_t)r * lda);
QC_UNROLL
            for (int v = 0; v < NV; v++) acc[r][v] = vfmaq_f32(acc[r][v], av, w[v]);
        }
    }
QC_UNROLL
    for (int r = 0; r < MR; r++) {
        float *cr = c + (size_t)r * ldc;
QC_UNROLL
        for (int v = 0; v < NV; v++) {
            const float32x4_t out = qc_act128(acc[r][v], act);
            if (hc >= 4 * v + 4) {
                vst1q_f32(cr + 4 * v, out);
            } else {              /* the last real columns: no masked stores on NEON */
                float tmp[4];
                vst1q_f32(tmp, out);
                for (int j = 0; j < 3 && j < hc - 4 * v; j++) cr[4 * v + j] = tmp[j];   /* 1..3 of them */
            }
        }
    }
}

static void pw_tile_neon(const pw_args *g, const float *a, int rows, float *c, int p, int cols) {
#define CALL128(MR, NV) pw128_kernel(g, a, c, p, half, hc, MR, NV, 0)
#define CALL128I(MR, NV) pw128_kernel(g, a, c, p, half, hc, MR, NV, 1)
    for (int half = 0; half * 16 < cols; half++) {
        const int hc = cols - half * 16 < 16 ? cols - half * 16 : 16;  /* real columns in this half */
        const int nv = (hc + 3) / 4;
        if (g->koff) {
            switch (nv) {
            case 1: switch (rows) { PW_HEIGHTS_6(CALL128I, 1) default: break; } break;
            case 2: switch (rows) { PW_HEIGHTS_6(CALL128I, 2) default: break; } break;
            case 3: switch (rows) { PW_HEIGHTS_6(CALL128I, 3) default: break; } break;
            default: switch (rows) { PW_HEIGHTS_6(CALL128I, 4) default: break; } break;
            }
        } else {
            switch (nv) {
            case 1: switch (rows) { PW_HEIGHTS_6(CALL128, 1) default: break; } break;
            case 2: switch (rows) { PW_HEIGHTS_6(CALL128, 2) default: break; } break;
            case 3: switch (rows) { PW_HEIGHTS_6(CALL128, 3) default: break; } break;
            default: switch (rows) { PW_HEIGHTS_6(CALL128, 4) default: break; } break;
            }
        }
    }
#undef CALL128
#undef CALL128I
}

#endif  /* QC_HAVE_NEON */

/* ---- dispatch and blocking --------------------------------------------------------------------- */

static const pw_traits PW[QC_ISA_COUNT] = {
    [QC_ISA_SCALAR] = {4, pw_tile_scalar},
#if QC_HAVE_X86
    [QC_ISA_AVX2] = {6, pw_tile_avx2},
    [QC_ISA_AVX512] = {12, pw_tile_avx512},
    [QC_ISA_AVX512VNNI] = {12, pw_tile_avx512},
#else
    [QC_ISA_AVX2] = {4, pw_tile_scalar},
    [QC_ISA_AVX512] = {4, pw_tile_scalar},
    [QC_ISA_AVX512VNNI] = {4, pw_tile_scalar},
#endif
#if QC_HAVE_NEON
    [QC_ISA_NEON] = {6, pw_tile_neon},
    [QC_ISA_NEONDOT] = {6, pw_tile_neon},
#else
    [QC_ISA_NEON] = {4, pw_tile_scalar},
    [QC_ISA_NEONDOT] = {4, pw_tile_scalar},
#endif
};

/* Rows a tile must not cross: `rows` rows starting at a (pitch lda) and c (pitch ldc). */
typedef struct {
    const float *a;
    float *c;
    int rows;
} pw_seg;

/* Weights up to this size (16 KB, a third of L1) stay in L1 through a whole block. */
#define PW_SMALL_WEIGHTS_BYTES (16 * 1024)

/* One block.  Each segment is cut into tiles of equal height rather than full ones and a short
 * last one (a 1-row tile runs at the FMA latency, not its throughput: 49 rows go as 10+10+10+10+9,
 * not 4x12+1).  Order: normally every panel sweeps all tiles of the block, so a panel is fetched
 * once per block; but when all of b fits in L1 anyway (small k and n: the early 1x1 layers, whose
 * outputs are the largest), each tile runs through all panels in turn, so its output rows are
 * written whole and in address order (12544x16 -> 96: 0.57 -> 0.50 ms warm, 1.0 -> 0.81 cold). */
static void pw_block(const pw_traits *t, const pw_args *g, const pw_seg *segs, int nseg, int n) {
    const int np = (n + PANEL - 1) / PANEL;
    const int tile_outer = (size_t)g->k * np * PANEL * sizeof(float) <= PW_SMALL_WEIGHTS_BYTES;
    for (int p0 = 0; p0 < np; p0 += tile_outer ? np : 1) {
        const int p1 = tile_outer ? np : p0 + 1;
        for (int s = 0; s < nseg; s++) {
            const int len = segs[s].rows;
            if (len <= 0) continue;
            const int tiles = (len + t->mr - 1) / t->mr, base = len / tiles, extra = len % tiles;
            for (int q = 0, i = 0; q < tiles; q++) {
                const int rows = base + (q < extra);
                for (int p = p0; p < p1; p++) {
                    const int cols = n - p * PANEL < PANEL ? n - p * PANEL : PANEL;
                    t->tile(g, segs[s].a + (size_t)i * g->lda, rows, segs[s].c + (size_t)i * g->ldc, p, cols);
                }
                i += rows;
            }
        }
    }
}

static int block_rows(const pw_traits *t, int k) {
    int mc = PW_BLOCK_FLOATS / (k > 0 ? k : 1) / t->mr * t->mr;
    return mc < t->mr ? t->mr : mc;
}

void qc_pointwise_f32(const float *a, int m, int k, int lda, const float *bp, int n, const float *bias,
                      float *c, int ldc, int act) {
    const pw_args g = {bp, bias, NULL, (size_t)lda, (size_t)ldc, k, act, NULL, 1, k};
    const pw_traits *t = &PW[qc_isa()];
    const int mc = block_rows(t, k);
    for (int i0 = 0; i0 < m; i0 += mc) {
        const pw_seg seg = {a + (size_t)i0 * lda, c + (size_t)i0 * ldc, m - i0 < mc ? m - i0 : mc};
        pw_block(t, &g, &seg, 1, n);
    }
}

#define CONV_MAX_SEGS 64

int qc_conv_gemm_f32(const float *xp, int n, int hp, int wp, int c, int c0, int cc, int kh, int kw, int sh, int sw,
                     const float *bp, int cout, const float *bias, float *y, int ldy, int oh, int ow, int act) {
    const int k = kh * kw * cc;
    int *koff = malloc((size_t)(k + kh * kw) * sizeof(int));
    if (!koff)
        return -1;
    int *toff = koff + k;
    /* Offsets of the patch values from the window origin, in the (i, j, channel) order of the
     * packed weights' rows. */
    for (int i = 0, kk = 0; i < kh; i++)
        for (int j = 0; j < kw; j++)
            for (int ch = 0; ch < cc; ch++)
                koff[kk++] = (i * wp + j) * c + ch;
    /* Runs for the AVX2 tiles: a kernel tap's channels, or a whole kernel row's when the patch
     * takes every channel of the pixels (no groups), e.g. 21 values for a 7x7 stem on RGB. */
    const int run = cc == c ? kw * cc : cc, nrun = k / run;
    for (int r = 0; r < nrun; r++)
        toff[r] = koff[r * run];
    const pw_args g = {bp, bias, koff, (size_t)sw * c, (size_t)ldy, k, act, toff, nrun, run};
    const pw_traits *t = &PW[qc_isa()];
    /* A segment is one output row (split if absurdly long); a block gathers whole rows up to
     * about the usual block size. */
    const int mc = block_rows(t, k);
    const int seg_len = ow < mc ? ow : mc;
    int per_block = mc / seg_len;
    per_block = per_block < 1 ? 1 : per_block > CONV_MAX_SEGS ? CONV_MAX_SEGS : per_block;
    pw_seg segs[CONV_MAX_SEGS];
    int nseg = 0;
    for (int b = 0; b < n; b++)
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox += seg_len) {
                const float *origin = xp + (((size_t)b * hp + (size_t)oy * sh) * wp + (size_t)ox * sw) * c + c0;
                float *yrow = y + (((size_t)b * oh + oy) * ow + ox) * (size_t)ldy;
                segs[nseg++] = (pw_seg){origin, yrow, ow - ox < seg_len ? ow - ox : seg_len};
                if (nseg == per_block) {
                    pw_block(t, &g, segs, nseg, cout);
                    nseg = 0;
                }
            }
    if (nseg)
        pw_block(t, &g, segs, nseg, cout);
    free(koff);
    return 0;
}
