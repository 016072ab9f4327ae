/* Weighted k-means for many small problems at once: the codebooks of every subspace of a layer
 * (the paper's Sec. 3.1), one call per layer instead of one library fit per subspace.
 *
 * Per problem: greedy k-means++ seeding (each new centre is the best of 2 + ln K candidates drawn
 * with probability weight * squared distance to the closest centre so far, as in Arthur and
 * Vassilvitskii's paper and scikit-learn), then Lloyd iterations until no code changes or the
 * centres move less than tol times the points' mean variance (scikit-learn's rule).  A point of
 * weight w counts as w copies of itself, so duplicates may be passed once with their multiplicity.
 * When the weighted potential reaches zero before K centres are chosen, every point coincides with
 * a centre: the distinct points are the codebook, repeated in turn to fill K, and the quantization
 * is exact.  An empty cluster takes over the point farthest from its centre.
 *
 * The assignment step uses Hamerly's bounds (2010), which change no result: a point whose
 * distance to its own centre is at most its lower bound on the distance to every other centre,
 * or half the distance from its centre to the nearest other one, keeps its code without its K
 * distances being computed.  Bounds are stored relative to the centres' accumulated movement, so
 * a point that keeps its code costs a few reads; cluster sums change only for points that move.
 *
 * Each problem draws from its own splitmix64 stream, started from its seed, so its result does
 * not depend on the other problems of the call.  Sums are kept in double, distances in float.
 * Centres are kept transposed, (d, Kpad) with K padded to 16 by +inf, so the K distances of a
 * point are whole vectors: nearest_scalar is the reference, the AVX2, AVX-512 and NEON variants
 * compute the same sums in the same order (ISO C: no fused multiply-adds) and give the same bits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "pq_kmeans.h"
#include "simd.h"

#define MAX_K 256
#define LANES 16                    /* K is padded to a multiple of this */
#define BLOCK 64                    /* points per partial sum when drawing a seeding candidate */
/* Rounding must never make a bound too tight: upper bounds are inflated, lower ones deflated. */
#define UP (1 + 1e-6)
#define DOWN (1 - 1e-6)

QC_INLINE uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]: never 0, so a draw never lands on a point of zero share (see draw). */
QC_INLINE double uniform01(uint64_t *s) { return (double)((splitmix64(s) >> 11) + 1) * 0x1.0p-53; }

QC_INLINE float sqdist(const float *a, const float *b, int d) {
    float s = 0.f;
    for (int j = 0; j < d; j++) {
        float t = a[j] - b[j];
        s += t * t;
    }
    return s;
}

/* ---------------------------------------------------------------------------- nearest centre */

/* Index of the centre nearest to x (ties: the lowest), its squared distance b1 and the second
 * smallest one b2; ct: (d, kpad) transposed centres, padded with +inf. */
typedef int (*nearest_fn)(const float *x, const float *ct, int d, int kpad, float *b1, float *b2);

QC_INLINE int nearest_scalar(const float *x, const float *ct, int d, int kpad, float *b1, float *b2) {
    float dist[MAX_K];
    for (int k = 0; k < kpad; k++) {
        float t = x[0] - ct[k];
        dist[k] = t * t;
    }
    for (int j = 1; j < d; j++)
        for (int k = 0; k < kpad; k++) {
            float t = x[j] - ct[(size_t)j * kpad + k];
            dist[k] += t * t;
        }
    int best = 0;
    float m1 = dist[0], m2 = INFINITY;
    for (int k = 1; k < kpad; k++) {
        if (dist[k] < m1) {
            m2 = m1;
            m1 = dist[k];
            best = k;
        } else if (dist[k] < m2) {
            m2 = dist[k];
        }
    }
    *b1 = m1;
    *b2 = m2;
    return best;
}

#if QC_HAVE_X86
QC_AVX512 QC_INLINE int nearest_avx512(const float *x, const float *ct, int d, int kpad, float *b1, float *b2) {
    int best = 0;
    float m1 = INFINITY, m2 = INFINITY;
    for (int c = 0; c < kpad; c += 16) {
        __m512 t = _mm512_sub_ps(_mm512_set1_ps(x[0]), _mm512_loadu_ps(ct + c));
        __m512 acc = _mm512_mul_ps(t, t);
        for (int j = 1; j < d; j++) {
            t = _mm512_sub_ps(_mm512_set1_ps(x[j]), _mm512_loadu_ps(ct + (size_t)j * kpad + c));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(t, t));
        }
        float lo = _mm512_reduce_min_ps(acc);
        int lane = __builtin_ctz(_mm512_cmp_ps_mask(acc, _mm512_set1_ps(lo), _CMP_EQ_OQ));
        float next = _mm512_reduce_min_ps(_mm512_mask_mov_ps(acc, (__mmask16)(1u << lane), _mm512_set1_ps(INFINITY)));
        if (lo < m1) {
            m2 = m1 < next ? m1 : next;
            m1 = lo;
            best = c + lane;
        } else {
            m2 = m2 < lo ? m2 : lo;
        }
    }
    *b1 = m1;
    *b2 = m2;
    return best;
}

QC_AVX2 QC_INLINE float hmin256(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

QC_AVX2 QC_INLINE int nearest_avx2(const float *x, const float *ct, int d, int kpad, float *b1, float *b2) {
    int best = 0;
    float m1 = INFINITY, m2 = INFINITY;
    const __m256 inf = _mm256_set1_ps(INFINITY);
    for (int c = 0; c < kpad; c += 8) {
        __m256 t = _mm256_sub_ps(_mm256_set1_ps(x[0]), _mm256_loadu_ps(ct + c));
        __m256 acc = _mm256_mul_ps(t, t);
        for (int j = 1; j < d; j++) {
            t = _mm256_sub_ps(_mm256_set1_ps(x[j]), _mm256_loadu_ps(ct + (size_t)j * kpad + c));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(t, t));
        }
        float lo = hmin256(acc);
        int lane = __builtin_ctz(_mm256_movemask_ps(_mm256_cmp_ps(acc, _mm256_set1_ps(lo), _CMP_EQ_OQ)));
        __m256 one = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                            _mm256_set1_epi32(lane)));
        float next = hmin256(_mm256_blendv_ps(acc, inf, one));
        if (lo < m1) {
            m2 = m1 < next ? m1 : next;
            m1 = lo;
            best = c + lane;
        } else {
            m2 = m2 < lo ? m2 : lo;
        }
    }
    *b1 = m1;
    *b2 = m2;
    return best;
}
#endif

#if QC_HAVE_NEON
/* The K distances four at a time, in the scalar order of operations (the build has no contraction
 * into fused multiply-adds); the pick of the nearest two is the scalar loop, so the bits agree. */
QC_INLINE int nearest_neon(const float *x, const float *ct, int d, int kpad, float *b1, float *b2) {
    float dist[MAX_K];
    for (int c = 0; c < kpad; c += 4) {
        float32x4_t t = vsubq_f32(vdupq_n_f32(x[0]), vld1q_f32(ct + c));
        float32x4_t acc = vmulq_f32(t, t);
        for (int j = 1; j < d; j++) {
            t = vsubq_f32(vdupq_n_f32(x[j]), vld1q_f32(ct + (size_t)j * kpad + c));
            acc = vaddq_f32(acc, vmulq_f32(t, t));
        }
        vst1q_f32(dist + c, acc);
    }
    int best = 0;
    float m1 = dist[0], m2 = INFINITY;
    for (int k = 1; k < kpad; k++) {
        if (dist[k] < m1) {
            m2 = m1;
            m1 = dist[k];
            best = k;
        } else if (dist[k] < m2) {
            m2 = dist[k];
        }
    }
    *b1 = m1;
    *b2 = m2;
    return best;
}
#endif

/* ---------------------------------------------------------------------------- state */

typedef struct {
    int64_t P, nblocks;
    int d, K, kpad, trials;
    int bounded;         /* Hamerly's bounds (-1: when they pay, K taking several vectors) */
    const float *x, *w;  /* (P, d) points, (P) weights of the current problem */
    float *xt;           /* (d, P) the points transposed: the seeding passes vectorise over points */
    float *ones;         /* (P) weights when none are given */
    float *ct;           /* (d, kpad) centres, transposed, +inf beyond K */
    float *cent;         /* (K, d) centres */
    float *old;          /* (K, d) centres before the last update */
    float *mind;         /* (P) weight * squared distance to the closest chosen centre (seeding) */
    float *cand;         /* (trials, P) the same with one candidate centre added */
    double *bsum;        /* (1 + trials, nblocks) partial sums of mind and of each cand */
    double *ub, *lb;     /* (P) bounds on the distance to the own centre and to any other one,
                          * relative: ub + cum_move[code], lb - cum_max */
    double *sums;        /* (K, d) weighted sums of the points of each cluster */
    double *wsum;        /* (K) weight of each cluster */
    double *cum_move;    /* (K) how far each centre moved in all, */
    double cum_max;      /* and the sum over updates of the largest move */
    double *half;        /* (K) half the distance from each centre to its nearest other centre */
    int64_t *count;      /* (K) points of positive weight in each cluster */
    int32_t *codes;      /* (P) */
} work_t;

/* Squared distances acc[i] of the n <= BLOCK points from p0 to centre c, points side by side in
 * the vector lanes (from the transposed points).  Same sums in the same order as nearest_scalar. */
QC_INLINE void block_distances(const work_t *wk, const float *c, int64_t p0, int64_t n, int d, float *acc) {
    for (int64_t i = 0; i < n; i++) {
        float t = wk->xt[p0 + i] - c[0];
        acc[i] = t * t;
    }
    for (int j = 1; j < d; j++) {
        const float *xj = wk->xt + (size_t)j * wk->P + p0, cj = c[j];
        for (int64_t i = 0; i < n; i++) {
            float t = xj[i] - cj;
            acc[i] += t * t;
        }
    }
}

/* call(N, D) for a block of n points of width d, with N and D compile-time constants for whole
 * blocks of the common widths: the compiler then specialises the block loops and keeps a
 * block's arrays in registers (AlexNet fc6-like problems: 1.6x). */
#define WITH_CONSTANT_SIZES(n, d, call) \
    do { \
        if ((n) < BLOCK) call((n), (d)); \
        else if ((d) == 1) call(BLOCK, 1); \
        else if ((d) == 2) call(BLOCK, 2); \
        else if ((d) == 4) call(BLOCK, 4); \
        else call(BLOCK, (d)); \
    } while (0)

/* ---------------------------------------------------------------------------- seeding */

/* out[p] = min(mind[p], w[p] * |x_p - c|^2) for n <= BLOCK points from p0; returns their sum.
 * Sixteen float lanes, whatever the vector width, then double: the same bits everywhere. */
QC_INLINE double candidate_block(const work_t *wk, const float *c, int64_t p0, int64_t n, int d, float *out) {
    float acc[BLOCK], lane[LANES] = {0};
    block_distances(wk, c, p0, n, d, acc);
    for (int64_t i = 0; i < n; i++) {
        float v = wk->w[p0 + i] * acc[i], m = wk->mind[p0 + i];
        out[p0 + i] = v < m ? v : m;
    }
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)      /* lane l sums points l, l + 16, ...: one vector add */
        for (int l = 0; l < LANES; l++)
            lane[l] += out[p0 + i + l];
    for (int l = 0; i + l < n; l++)
        lane[l] += out[p0 + i + l];
    double s = 0.0;
    for (int l = 0; l < LANES; l++)
        s += lane[l];
    return s;
}

/* with_candidate over all points, with partial sums per block in bsum; returns the total. */
QC_INLINE double with_candidate(work_t *wk, const float *c, float *out, double *bsum) {
    const int64_t P = wk->P;
    const int d = wk->d;
    double total = 0.0;
    for (int64_t b = 0; b < wk->nblocks; b++) {
        const int64_t p0 = b * BLOCK, n = P - p0 < BLOCK ? P - p0 : BLOCK;
        double s;
#define CANDIDATE(N, D) s = candidate_block(wk, c, p0, N, D, out)
        WITH_CONSTANT_SIZES(n, d, CANDIDATE);
#undef CANDIDATE
        bsum[b] = s;
        total += s;
    }
    return total;
}

/* A point drawn with probability share[p] / total, 0 < r <= total: the first whose running sum
 * reaches r, so its own share is > 0 (a point on a chosen centre is never drawn). */
QC_INLINE int64_t draw(const float *share, const double *bsum, int64_t P, int64_t nblocks, double r) {
    int64_t b = 0;
    for (; b < nblocks - 1 && r > bsum[b]; b++)
        r -= bsum[b];
    int64_t end = (b + 1) * BLOCK < P ? (b + 1) * BLOCK : P, last = -1;
    for (int64_t p = b * BLOCK; p < end; p++) {
        if (share[p] > 0) {
            last = p;
            if (r <= share[p]) return p;
            r -= share[p];
        }
    }
    for (int64_t p = P - 1; last < 0 && p >= 0; p--)   /* rounding left a sliver past the end */
        if (share[p] > 0) last = p;
    return last;
}

/* Greedy k-means++ into wk->cent; returns the number of distinct centres chosen. */
QC_INLINE int seed_centres(work_t *wk, uint64_t *rng) {
    const int64_t P = wk->P;
    const int d = wk->d, K = wk->K;
    double pot = 0.0;
    for (int64_t b = 0; b < wk->nblocks; b++) {   /* the first centre: drawn by weight */
        wk->bsum[b] = 0.0;
        for (int64_t p = b * BLOCK; p < P && p < (b + 1) * BLOCK; p++)
            wk->bsum[b] += wk->w[p];
        pot += wk->bsum[b];
    }
    if (!(pot > 0)) {                       /* no point counts: any centres will do */
        memset(wk->cent, 0, sizeof(float) * K * d);
        return K;
    }
    int64_t first = draw(wk->w, wk->bsum, P, wk->nblocks, uniform01(rng) * pot);
    memcpy(wk->cent, wk->x + first * d, sizeof(float) * d);
    for (int64_t p = 0; p < P; p++)
        wk->mind[p] = INFINITY;
    pot = with_candidate(wk, wk->cent, wk->mind, wk->bsum);   /* in place: min(inf, v) = v */
    int chosen = 1;
    for (; chosen < K && pot > 0; chosen++) {
        double best_pot = INFINITY;
        int best_t = 0;
        int64_t best_i = 0;
        for (int t = 0; t < wk->trials; t++) {
            int64_t i = draw(wk->mind, wk->bsum, P, wk->nblocks, uniform01(rng) * pot);
            double np = with_candidate(wk, wk->x + i * d, wk->cand + (size_t)t * P,
                                       wk->bsum + (size_t)(t + 1) * wk->nblocks);
            if (np < best_pot) {
                best_pot = np;
                best_t = t;
                best_i = i;
            }
        }
        memcpy(wk->cent + (size_t)chosen * d, wk->x + best_i * d, sizeof(float) * d);
        memcpy(wk->mind, wk->cand + (size_t)best_t * P, sizeof(float) * P);
        memcpy(wk->bsum, wk->bsum + (size_t)(best_t + 1) * wk->nblocks, sizeof(double) * wk->nblocks);
        pot = best_pot;
    }
    for (int c = chosen; c < K; c++)        /* fewer distinct points than K: repeat them */
        memcpy(wk->cent + (size_t)c * d, wk->cent + (size_t)(c % chosen) * d, sizeof(float) * d);
    return chosen;
}

/* ---------------------------------------------------------------------------- Lloyd */

QC_INLINE void transpose_centres(work_t *wk) {
    for (int j = 0; j < wk->d; j++) {
        float *row = wk->ct + (size_t)j * wk->kpad;
        for (int k = 0; k < wk->K; k++)
            row[k] = wk->cent[(size_t)k * wk->d + j];
        for (int k = wk->K; k < wk->kpad; k++)
            row[k] = INFINITY;
    }
}

QC_INLINE void move_point(work_t *wk, int64_t p, int from, int to) {
    const float *x = wk->x + p * wk->d;
    double wp = wk->w[p];
    if (!(wp > 0)) return;
    if (from >= 0) {
        wk->count[from]--;
        wk->wsum[from] -= wp;
        for (int j = 0; j < wk->d; j++)
            wk->sums[(size_t)from * wk->d + j] -= wp * x[j];
    }
    wk->count[to]++;
    wk->wsum[to] += wp;
    for (int j = 0; j < wk->d; j++)
        wk->sums[(size_t)to * wk->d + j] += wp * x[j];
}

/* Nearest centre of point p, with fresh bounds; returns 1 if its code changed. */
QC_INLINE int assign_point(work_t *wk, int64_t p, nearest_fn nearest) {
    float b1, b2;
    int best = nearest(wk->x + p * wk->d, wk->ct, wk->d, wk->kpad, &b1, &b2);
    int old = wk->codes[p];
    if (old != best) {
        move_point(wk, p, old, best);
        wk->codes[p] = best;
    }
    wk->ub[p] = sqrt((double)b1) * UP - wk->cum_move[best];
    wk->lb[p] = sqrt((double)b2) * DOWN + wk->cum_max;
    return old != best;
}

/* Give each empty cluster the point farthest from its centre that is not on it already (with
 * fewer distinct points than K the spare copies stay copies); returns how many moved. */
QC_INLINE int relocate_empty(work_t *wk) {
    int moved = 0;
    for (int k = 0; k < wk->K; k++) {
        if (wk->count[k] > 0) continue;
        int64_t far = -1;
        float fd = 0.f;
        for (int64_t p = 0; p < wk->P; p++) {
            if (!(wk->w[p] > 0) || wk->count[wk->codes[p]] < 2) continue;
            float e = sqdist(wk->x + p * wk->d, wk->cent + (size_t)wk->codes[p] * wk->d, wk->d);
            if (e > fd) {
                fd = e;
                far = p;
            }
        }
        if (far < 0) break;
        move_point(wk, far, wk->codes[far], k);
        wk->codes[far] = k;
        float *c = wk->cent + (size_t)k * wk->d;
        double jump = sqrt((double)sqdist(c, wk->x + far * wk->d, wk->d)) * UP;
        wk->cum_move[k] += jump;            /* every bound must see the jump */
        wk->cum_max += jump;
        memcpy(c, wk->x + far * wk->d, sizeof(float) * wk->d);
        wk->ub[far] = -wk->cum_move[k];    /* on its centre; its lower bound: none */
        wk->lb[far] = wk->cum_max;
        moved++;
    }
    if (moved) transpose_centres(wk);
    return moved;
}

/* Centres from the cluster sums; returns the sum of their squared moves and updates the bounds'
 * reference movements and the half distances between centres. */
QC_INLINE double update_centres(work_t *wk) {
    const int d = wk->d, K = wk->K;
    memcpy(wk->old, wk->cent, sizeof(float) * K * d);
    double shift = 0.0, r1 = 0.0;
    for (int k = 0; k < K; k++) {
        float *c = wk->cent + (size_t)k * d;
        if (wk->count[k] > 0)
            for (int j = 0; j < d; j++)
                c[j] = (float)(wk->sums[(size_t)k * d + j] / wk->wsum[k]);
        double m2 = sqdist(c, wk->old + (size_t)k * d, d), m = sqrt(m2) * UP;
        shift += m2;
        wk->cum_move[k] += m;
        if (m > r1) r1 = m;
    }
    wk->cum_max += r1;
    transpose_centres(wk);
    for (int k = 0; k < K; k++) {
        float nearest = INFINITY;
        for (int o = 0; o < K; o++) {
            float e = sqdist(wk->cent + (size_t)k * d, wk->cent + (size_t)o * d, d);
            if (o != k && e < nearest) nearest = e;
        }
        wk->half[k] = 0.5 * sqrt((double)nearest) * DOWN;
    }
    return shift;
}

/* Without bounds: the nearest centre of n <= BLOCK points from p0 (ties: the lowest index), the
 * centres in the loop and the points in the vector lanes, so no horizontal reductions: the same
 * codes as nearest_scalar. */
QC_INLINE void nearest_block(const work_t *wk, int64_t p0, int64_t n, int d, int32_t *best) {
    float acc[BLOCK], m1[BLOCK];
    for (int64_t i = 0; i < n; i++) {
        m1[i] = INFINITY;
        best[i] = 0;
    }
    for (int k = 0; k < wk->K; k++) {
        block_distances(wk, wk->cent + (size_t)k * d, p0, n, d, acc);
        for (int64_t i = 0; i < n; i++) {
            int lt = acc[i] < m1[i];
            m1[i] = lt ? acc[i] : m1[i];
            best[i] = lt ? k : best[i];
        }
    }
}

/* All points without bounds; returns how many codes changed. */
QC_INLINE int64_t assign_all(work_t *wk) {
    const int64_t P = wk->P;
    const int d = wk->d;
    int64_t changed = 0;
    for (int64_t p0 = 0; p0 < P; p0 += BLOCK) {
        int32_t best[BLOCK];
        const int64_t n = P - p0 < BLOCK ? P - p0 : BLOCK;
#define NEAREST(N, D) nearest_block(wk, p0, N, D, best)
        WITH_CONSTANT_SIZES(n, d, NEAREST);
#undef NEAREST
        for (int64_t i = 0; i < n; i++) {
            int a = wk->codes[p0 + i];
            if (best[i] != a) {
                move_point(wk, p0 + i, a, best[i]);
                wk->codes[p0 + i] = best[i];
                changed++;
            }
        }
    }
    return changed;
}

QC_INLINE double lloyd(work_t *wk, int max_iter, double tol_abs, nearest_fn nearest) {
    const int64_t P = wk->P;
    const int d = wk->d, K = wk->K;
    memset(wk->sums, 0, sizeof(double) * K * d);
    memset(wk->wsum, 0, sizeof(double) * K);
    memset(wk->count, 0, sizeof(int64_t) * K);
    memset(wk->cum_move, 0, sizeof(double) * K);
    wk->cum_max = 0.0;
    transpose_centres(wk);
    for (int64_t p = 0; p < P; p++)
        wk->codes[p] = -1;
    if (wk->bounded)
        for (int64_t p = 0; p < P; p++)
            assign_point(wk, p, nearest);
    else
        assign_all(wk);
    relocate_empty(wk);
    for (int it = 0; it < max_iter; it++) {
        double shift = update_centres(wk);
        int64_t changed = 0;
        if (!wk->bounded)
            changed = assign_all(wk);
        for (int64_t p = 0; p < P && wk->bounded; p++) {
            int a = wk->codes[p];
            double ub = wk->ub[p] + wk->cum_move[a], lb = wk->lb[p] - wk->cum_max;
            double bound = lb > wk->half[a] ? lb : wk->half[a];
            if (ub <= bound) continue;
            ub = sqrt((double)sqdist(wk->x + p * d, wk->cent + (size_t)a * d, d)) * UP;
            wk->ub[p] = ub - wk->cum_move[a];
            if (ub <= bound) continue;
            changed += assign_point(wk, p, nearest);
        }
        if (relocate_empty(wk) == 0 && (changed == 0 || shift <= tol_abs))
            break;
    }
    double inertia = 0.0;
    for (int64_t p = 0; p < P; p++)
        inertia += (double)wk->w[p] * sqdist(wk->x + p * d, wk->cent + (size_t)wk->codes[p] * d, d);
    return inertia;
}

/* Mean over dimensions of the weighted variance of the points: scikit-learn's scale for tol. */
QC_INLINE double mean_variance(const work_t *wk) {
    double ws = 0.0, var = 0.0;
    for (int64_t p = 0; p < wk->P; p++)
        ws += wk->w[p];
    if (!(ws > 0)) return 0.0;
    for (int j = 0; j < wk->d; j++) {
        double s = 0.0, s2 = 0.0;
        for (int64_t p = 0; p < wk->P; p++) {
            double x = wk->x[p * wk->d + j];
            s += wk->w[p] * x;
            s2 += wk->w[p] * x * x;
        }
        double mu = s / ws, v = s2 / ws - mu * mu;
        var += v > 0 ? v : 0.0;
    }
    return var / wk->d;
}

/* One problem (wk->x, wk->w set): n_init restarts, the best kept in centres and codes. */
QC_INLINE double solve(work_t *wk, const float *init, uint64_t rng, int n_init, int max_iter, double tol,
                       float *centres, int32_t *codes, nearest_fn nearest, int unbounded_k) {
    const int64_t P = wk->P;
    const int d = wk->d, K = wk->K;
    if (wk->bounded < 0) wk->bounded = wk->kpad > unbounded_k;
    for (int64_t p = 0; p < P; p++)
        for (int j = 0; j < d; j++)
            wk->xt[(size_t)j * P + p] = wk->x[p * d + j];
    double tol_abs = tol * mean_variance(wk), best = INFINITY;
    for (int r = 0; r < (init ? 1 : n_init); r++) {
        int distinct = K;
        if (init)
            memcpy(wk->cent, init, sizeof(float) * K * d);
        else
            distinct = seed_centres(wk, &rng);
        double e = lloyd(wk, distinct < K ? 1 : max_iter, tol_abs, nearest);
        if (r == 0 || e < best) {
            best = e;
            memcpy(centres, wk->cent, sizeof(float) * K * d);
            memcpy(codes, wk->codes, sizeof(int32_t) * P);
        }
        if (distinct < K) break;            /* exact: nothing a restart could improve */
    }
    return best;
}

/* Bounds or not changes no result, only the speed: with K <= unbounded_k (one or two vectors of
 * distances) computing all K distances of every point is cheaper than keeping bounds (measured:
 * AVX-512, AlexNet-like fc6 problems, K = 16: 2.1x; K = 128: bounds 1.3x faster). */
typedef double (*solve_fn)(work_t *, const float *, uint64_t, int, int, double, float *, int32_t *);

static double solve_scalar(work_t *wk, const float *init, uint64_t rng, int n_init, int max_iter, double tol,
                           float *c, int32_t *codes) {
    return solve(wk, init, rng, n_init, max_iter, tol, c, codes, nearest_scalar, 16);
}

#if QC_HAVE_X86
QC_AVX2 static double solve_avx2(work_t *wk, const float *init, uint64_t rng, int n_init, int max_iter, double tol,
                                 float *c, int32_t *codes) {
    return solve(wk, init, rng, n_init, max_iter, tol, c, codes, nearest_avx2, 16);
}

QC_AVX512 static double solve_avx512(work_t *wk, const float *init, uint64_t rng, int n_init, int max_iter,
                                     double tol, float *c, int32_t *codes) {
    return solve(wk, init, rng, n_init, max_iter, tol, c, codes, nearest_avx512, 32);
}
#endif

#if QC_HAVE_NEON
static double solve_neon(work_t *wk, const float *init, uint64_t rng, int n_init, int max_iter, double tol,
                         float *c, int32_t *codes) {
    return solve(wk, init, rng, n_init, max_iter, tol, c, codes, nearest_neon, 16);
}
#endif

int qc_kmeans_f32(const float *points, const float *weights, const uint64_t *seeds, const float *init,
                  int64_t S, int64_t P, int d, int K, int n_init, int max_iter, double tol, int bounds,
                  float *centres, int32_t *codes, double *inertia) {
    static const solve_fn variants[QC_ISA_COUNT] = QC_VARIANTS(solve_scalar, solve_avx2, solve_avx512, solve_neon);
    work_t wk = {.P = P, .nblocks = (P + BLOCK - 1) / BLOCK, .d = d, .K = K,
                 .kpad = (K + LANES - 1) / LANES * LANES, .trials = 2 + (int)log((double)K)};
    size_t kd = (size_t)K * d, pd = (size_t)P * d, nb = (size_t)wk.nblocks;
    float *fl = malloc(sizeof(float) * (pd + (size_t)wk.kpad * d + 2 * kd + P * (2 + (size_t)wk.trials)));
    double *db = malloc(sizeof(double) * (nb * (1 + wk.trials) + 2 * (size_t)P + kd + 3 * (size_t)K));
    int64_t *count = malloc(sizeof(int64_t) * K);
    int32_t *work_codes = malloc(sizeof(int32_t) * P);
    int status = 0;
    if (!fl || !db || !count || !work_codes) {
        status = -1;
        goto done;
    }
    wk.xt = fl;
    wk.ones = wk.xt + pd;
    wk.ct = wk.ones + P;
    wk.cent = wk.ct + (size_t)wk.kpad * d;
    wk.old = wk.cent + kd;
    wk.mind = wk.old + kd;
    wk.cand = wk.mind + P;
    wk.bsum = db;
    wk.ub = wk.bsum + nb * (1 + wk.trials);
    wk.lb = wk.ub + P;
    wk.sums = wk.lb + P;
    wk.wsum = wk.sums + kd;
    wk.cum_move = wk.wsum + K;
    wk.half = wk.cum_move + K;
    wk.count = count;
    wk.codes = work_codes;
    for (int64_t p = 0; p < P; p++)
        wk.ones[p] = 1.f;
    const solve_fn run = variants[qc_isa()];
    for (int64_t s = 0; s < S; s++) {
        wk.x = points + s * pd;
        wk.w = weights ? weights + s * P : wk.ones;
        wk.bounded = bounds;
        double e = run(&wk, init ? init + s * kd : NULL, seeds[s], n_init, max_iter, tol, centres + s * kd,
                       codes + s * P);
        if (inertia) inertia[s] = e;
    }
done:
    free(fl);
    free(db);
    free(count);
    free(work_codes);
    return status;
}
