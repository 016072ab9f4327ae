/* Codebook learning: weighted k-means for many independent point sets at once (one per subspace
 * of a layer), seeded per set so a result never depends on which other sets share the call.
 * Shapes are validated by qcnn/pq/kmeans.py. */
#ifndef QCNN_PQ_KMEANS_H
#define QCNN_PQ_KMEANS_H

#include "qcnn.h"

/* S problems of P points of d floats: points (S, P, d); weights (S, P), each >= 0 (0: the point
 * is ignored), or NULL for all ones; seeds (S), one random stream per problem.  Greedy
 * k-means++ seeding, then Lloyd iterations until no code changes, the centres move less than
 * tol (relative to the points' variance) or max_iter; n_init restarts keep the lowest inertia.
 * With fewer than K distinct points the centres are the distinct points, repeated in turn.
 * Out: centres (S, K, d), codes (S, P) with the nearest centre of every point (ties: the lowest
 * index), inertia (S, weighted squared error) or NULL.  bounds: 1 or 0 forces Hamerly's bounds
 * on or off, -1 uses them where they pay; the results are the same.
 * Returns 0, or -1 when out of memory. */
int qc_kmeans_f32(const float *points, const float *weights, const uint64_t *seeds, const float *init,
                  int64_t S, int64_t P, int d, int K, int n_init, int max_iter, double tol, int bounds,
                  float *centres, int32_t *codes, double *inertia);

#endif
