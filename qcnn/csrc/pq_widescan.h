/* Wide-codebook PQ lookups (K = 32, 64, 128, 256) from uint8 tables held in SIMD registers
 * (pq_widescan.c documents the tables and the code layout).  Shapes are validated by
 * qcnn/pq/widescan.py. */
#ifndef QCNN_PQ_WIDESCAN_H
#define QCNN_PQ_WIDESCAN_H

#include "qcnn.h"

#define QC_WS_BLOCK 64
#define QC_WS_MAX_TAPS 121

/* Whether the lookups support ksub codewords (32, 64, 128 or 256). */
int qc_ws_supported(int ksub);

/* Tables built and quantized to uint8 with one offset and one step per (pixel, group), or one step
 * for all pixels when shared_scale: table ~ offset + scale * Q.
 * x: (npix, cin); cbt: transposed codebooks (groups * M, dsub, ksub); Q: (npix, groups, M, ksub);
 * scale, offset_sum: (npix, groups); T: float scratch of 4 * M * ksub floats.
 * counts: (groups, M, ksub) code counts, every table's summing to the same total <= 32767, and
 * wmean: (groups, cin / groups) mean weights, as qc_fs_tables_u8 takes them (pq.h): with both,
 * offset_sum removes the expected rounding error; with either NULL it is M * offset. */
void qc_ws_tables_u8(const float *x, int npix, int cin, int groups, int M, int dsub, int ksub, const float *cbt,
                     const float *wmean, const uint16_t *counts, int shared_scale, float *T, uint8_t *Q,
                     float *scale, float *offset_sum);

/* Codes (kh, kw, M, cout) uint8, every code < ksub, into the lookups' block layout. */
size_t qc_ws_packed_size(int kh, int kw, int groups, int M, int cout);
void qc_ws_pack_codes(const uint8_t *codes, int kh, int kw, int groups, int M, int cout, uint8_t *packed);

/* Lookups for a convolution (FC: 1x1 on a 1x1 map); y: (oh, ow, cout).  Needs kh * kw <=
 * QC_WS_MAX_TAPS and a shared scale whenever kh * kw > 1. */
void qc_pq_conv_widescan(const uint8_t *Q, const float *scale, const float *offset_sum, int h, int w, int groups,
                         int M, int ksub, const uint8_t *packed, int kh, int kw, int sh, int sw, int pt, int pl,
                         int cout, const float *bias, float *y, int oh, int ow, int act);

#endif
