/* Public C entry points of qcnn's kernels.  Callers (qcnn/kernels.py) validate every shape and index
 * before calling: the kernels trust their arguments.
 *
 * Every kernel family keeps a portable scalar reference next to its SIMD variants; which variant
 * runs is chosen once from the CPU's features (see isa.c) and can be forced for tests.  Each family
 * holds a small table of variants indexed by qc_isa(), so no kernel tests CPU features itself. */
#ifndef QCNN_H
#define QCNN_H

#include <stddef.h>
#include <stdint.h>

/* AVX512VNNI: AVX-512 plus VBMI byte permutes and VNNI byte dot products (Ice Lake, Sapphire Rapids,
 * Zen 4); only the fast-scan lookups use them, every other family runs its AVX-512 variant there.
 * On 64-bit ARM: NEON (every AArch64 CPU) and NEONDOT, NEON plus the ARMv8.2 byte dot products
 * udot/sdot (Cortex-A55/A76 and later, Apple M1 and later); again only fast-scan tells them apart.
 * Each architecture orders its own levels; a level of another architecture caps to scalar. */
enum { QC_ISA_SCALAR = 0, QC_ISA_AVX2 = 1, QC_ISA_AVX512 = 2, QC_ISA_AVX512VNNI = 3,
       QC_ISA_NEON = 4, QC_ISA_NEONDOT = 5, QC_ISA_COUNT = 6 };
enum { QC_ACT_NONE = 0, QC_ACT_RELU = 1, QC_ACT_RELU6 = 2 };

int qc_isa_best(void);          /* best variant this CPU supports, QCNN_DISABLE_SIMD=1 forces scalar */
int qc_isa_cap(void);           /* qc_isa_best capped by QCNN_ISA (a level's name, as in isa.c) */
int qc_isa(void);               /* variant in use */
int qc_set_isa(int isa);        /* force a variant (capped at qc_isa_cap); returns the one in use */
/* CPUID as the other libraries of this process see it, capped at level isa from now on (Linux
 * x86-64 with CPUID faulting; cpuid_cap.c): 1 if so, 0 where it cannot be. */
int qc_cap_cpuid(int isa);
int qc_cpuid(unsigned leaf, unsigned sub, unsigned out[4]);   /* the instruction (0 off x86) */

/* Which variants of a family ran since the last qc_variants_reset: bit (1 << QC_ISA_x) for each.
 * The variants are bit-identical, so a dispatch table that sends a level to the wrong variant
 * (AVX2 fast-scan to the scalar one: same numbers, 40x slower) shows only here; tests read it.
 * A variant marks itself (not its caller), so the mark says what really ran.  The AVX-512 table
 * and quantization variants also serve AVX512VNNI, the NEON ones NEONDOT. */
enum { QC_FAMILY_FS_TABLES = 0, QC_FAMILY_FS_QUANT = 1, QC_FAMILY_FS_LOOKUPS = 2, QC_FAMILY_PQ_TABLES = 3,
       QC_FAMILY_PQ_EXACT = 4, QC_FAMILY_COUNT = 5 };
int qc_variants_ran(int family);
void qc_variants_reset(void);

/* Depthwise convolution, NHWC.  x: (n, h, w, c); wt: (kh, kw, c); bias: (c) or NULL;
 * y: (n, oh, ow, c).  Zero padding pt/pl before, implied after. */
void qc_depthwise_f32(const float *x, int n, int h, int w, int c, const float *wt, const float *bias,
                      int kh, int kw, int sh, int sw, int pt, int pl, float *y, int oh, int ow, int act);

/* Pointwise (1x1) convolution as a GEMM with bias and activation fused into the store:
 * c[i, j] = act(bias[j] + sum_k a[i, k] * b[k, j]) for i < m, j < n.
 * a: rows of k floats, lda floats apart; c: rows of n floats, ldc apart.
 * bp: b packed by panels of QC_PW_PANEL output channels, (ceil(n / QC_PW_PANEL), k, QC_PW_PANEL),
 * zero beyond column n; bias: (n) or NULL. */
#define QC_PW_PANEL 32
int qc_pw_panel(void);
void qc_pointwise_f32(const float *a, int m, int k, int lda, const float *bp, int n, const float *bias,
                      float *c, int ldc, int act);

/* Any other convolution as an implicit GEMM over the patches of an already padded input (no im2col
 * copy), for one group: input channels [c0, c0 + cc), bp packed as above from the group's
 * (kh * kw * cc, cout) weights, taps in (i, j, channel) order.  xp: (n, hp, wp, c) padded input;
 * y: (n * oh * ow) rows of ldy floats, columns [0, cout) written.  Returns 0, or -1 when out of memory. */
int qc_conv_gemm_f32(const float *xp, int n, int hp, int wp, int c, int c0, int cc, int kh, int kw, int sh, int sw,
                     const float *bp, int cout, const float *bias, float *y, int ldy, int oh, int ow, int act);

/* A 3x3 stride-1 convolution of an already padded input by Winograd's F(mt x mt, 3x3), mt = 2 or 4
 * (winograd.c), for the group of input channels [c0, c0 + cc): up holds the (mt + 2)^2 transformed
 * weight matrices (cc, cout), each packed as for qc_pointwise_f32, one after the other; otherwise as
 * qc_conv_gemm_f32 with kh = kw = 3, sh = sw = 1.  Returns 0, -1 when out of memory, -2 for another mt. */
int qc_winograd_f32(const float *xp, int n, int hp, int wp, int c, int c0, int cc, const float *up, int cout,
                    const float *bias, float *y, int ldy, int oh, int ow, int act, int mt);

/* Cross-channel LRN (Caffe / ONNX): y = x / (k + scale * sum of x^2 over channels
 * [ch - (size-1)/2, ch + size/2] clipped to [0, c))^beta, scale = alpha / size.  x, y: (npix, c). */
void qc_lrn_f32(const float *x, size_t npix, int c, int size, float scale, float beta, float k, float *y);

/* Max (avg = 0) or average (avg = 1) pooling, NHWC.  x: (n, h, w, c), y: (n, oh, ow, c).  Declared
 * zero padding pt/pb/pl/pr; windows are clipped to the image (a window with no pixel gives -inf
 * for max, 0 for average).  Averages divide by the pixels in the window, or with include_pad by
 * its positions inside the declared padding. */
void qc_pool_f32(const float *x, int n, int h, int w, int c, int kh, int kw, int sh, int sw, int pt, int pb,
                 int pl, int pr, int avg, int include_pad, float *y, int oh, int ow);

#endif
