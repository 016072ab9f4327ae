/* Product-quantized layers: the paper's test phase.  For every input pixel and subspace a table of
 * inner products with the K codewords is built once (pq_tables.c); each output is then a sum of
 * table entries selected by the codes, either from float tables (pq_exact.c) or from tables
 * quantized to uint8 and read sixteen-wide with byte shuffles (pq_fastscan.c).
 *
 * Vocabulary (FAISS's): M subspaces of dsub channels per group, ksub codewords each; "gm" indexes
 * (group, subspace) pairs, g * M + m.  Shapes are validated by qcnn/pq/kernels.py. */
#ifndef QCNN_PQ_H
#define QCNN_PQ_H

#include "qcnn.h"

/* Tables for npix pixels: T[p, gm, k] = <x[p, channels of (g, m)], codeword k of (g, m)>.
 * x: (npix, cin) with cin = groups * cin_g; cbt: codebooks transposed to (groups * M, dsub, ksub),
 * the last subspace of a group may be narrower than dsub (its padded rows are ignored);
 * T: (npix, groups * M, ksub). */
void qc_pq_tables_f32(const float *x, int npix, int cin, int groups, int M, int dsub, int ksub,
                      const float *cbt, float *T);

/* The tables of one (pixel, group): t[m, k] for m < M, from the group's channels xg and its
 * transposed codebooks cbt_g.  (Internal: used by the fast-scan quantizer.) */
typedef void (*qc_rows_fn)(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t);
void qc_pq_table_rows(const float *xg, int cin_g, int M, int dsub, int ksub, const float *cbt_g, float *t);

/* Exact lookups for a convolution (an FC layer is a 1x1 one on a 1x1 map).
 * T: tables of the (h, w) input map of one image, (h * w, groups * M, ksub);
 * codes: canonical (kh, kw, M, cout) uint8, every code < ksub; y: (oh, ow, cout). */
void qc_pq_conv_exact(const float *T, int h, int w, int groups, int M, int ksub, const uint8_t *codes,
                      int kh, int kw, int sh, int sw, int pt, int pl, int cout, const float *bias,
                      float *y, int oh, int ow, int act);

/* Fast-scan tables (K = 16) built and quantized to uint8 with one offset and one scale per (pixel,
 * group), or one scale for all pixels when shared_scale: tables ~ offset + scale * Q.
 * Q: (npix, groups, Mp, 16) with Mp = M rounded up to a multiple of 4 (padding rows are zero);
 * scale, offset_sum: (npix, groups): what a sum over the M tables adds besides scale * sum(Q).
 * counts: (groups, M, 16), how often each code occurs in the layer (over kernel offsets and the
 * group's outputs), scaled so that every table's counts have the same sum, at most 32767; wmean: (groups, cin_g),
 * the group's weights averaged over its outputs and kernel offsets (sum_k counts[m, k] / total *
 * codeword k, channel by channel).  With both, offset_sum removes the expected rounding error
 * (pq_fastscan.c); with either NULL it is M * offset (the plain uint8 tables).
 * T: float scratch of M * 16 floats, or npix * groups * M * 16 when shared_scale. */
void qc_fs_tables_u8(const float *x, int npix, int cin, int groups, int M, int dsub, const float *cbt,
                     const float *wmean, const uint16_t *counts, int shared_scale, float *T, uint8_t *Q,
                     float *scale, float *offset_sum);

/* qc_fs_tables_u8 (one group, a step per pixel) for a 1x1 layer over the (kh, kw, c) windows of a
 * convolution (subspaces across kernel offsets, qcnn/pq/taps.py), read from the padded image
 * (rows of w pixels of c channels) instead of an im2col copy: the pixels are the oh x ow outputs
 * from output row oy0 on, pixel (oy, ox)'s window starting at row (oy0 + oy) * sh, column ox * sw.
 * buf: 4 * kh * kw * c floats of scratch. */
void qc_fs_tables_u8_windows(const float *img, int w, int c, int kh, int kw, int sh, int sw, int oy0, int oh, int ow,
                             int M, int dsub, const float *cbt, const float *wmean, const uint16_t *counts, float *T,
                             uint8_t *Q, float *scale, float *offset_sum, float *buf);

/* Two-pass fast-scan's residual tables (pq_fastscan.c): from qc_fs_tables_u8's T, Q, scale and
 * offset_sum of npg (pixel, group) pairs, made with shared_scale and no rounding correction, R
 * (laid out as Q) with scale_r and offset_r: T ~ offset + scale * Q + offset_r / M + scale_r * R.
 * T is overwritten (with the residual in float). */
void qc_fs_residual_u8(float *T, int npg, int M, const uint8_t *Q, const float *scale, const float *offset_sum,
                       uint8_t *R, float *scale_r, float *offset_r);

/* (Internal: the rounding correction, shared by fast-scan and wide-scan.)  The offset sum of one
 * (pixel, group) xg whose uint8 tables q (rows of 16 entries: M * ksub / 16 of them) have step
 * `step`: <xg, wmean_g> - step * sum(counts_g * q) / total, counts_g laid out as q, each table's
 * counts summing to total <= 32767. */
float qc_u8_debiased_offset(const float *xg, const float *wmean_g, int cin_g, const uint8_t *q, const uint16_t *counts_g,
                            int rows, uint32_t total, float step);

/* Fast-scan lookups, K = 16.  packed: codes in one of the block layouts of qc_fs_pack_codes,
 * documented in pq_fastscan.c: one code per byte, two per byte, or one per byte with four
 * subspaces side by side for byte dot products (fast with QC_ISA_AVX512VNNI; the scalar reference
 * reads every layout).  Needs kh * kw <= QC_FS_MAX_TAPS, and a shared scale whenever kh * kw > 1. */
enum { QC_FS_BYTES = 0, QC_FS_NIBBLES = 1, QC_FS_DOT = 2 };
#define QC_FS_BLOCK 32
#define QC_FS_MAX_TAPS 121
size_t qc_fs_packed_size(int kh, int kw, int groups, int M, int cout, int layout);
void qc_fs_pack_codes(const uint8_t *codes, int kh, int kw, int groups, int M, int cout, int layout,
                      uint8_t *packed);
void qc_pq_conv_fastscan(const uint8_t *Q, const float *scale, const float *offset_sum, int h, int w,
                         int groups, int M, const uint8_t *packed, int kh, int kw, int sh, int sw,
                         int pt, int pl, int cout, const float *bias, float *y, int oh, int ow, int act,
                         int layout);

#endif
