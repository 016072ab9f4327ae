"""Codebook initialisation: k-means on a layer's weight sub-vectors (the paper's Sec. 3.1 / 3.3).

For group g and subspace m the points are every weight sub-vector W[kh, kw, m-slice, c] of that
group, over all kernel offsets and output channels: one codebook per subspace, shared by the
offsets.  The last subspace is zero-padded to `dsub` channels, so its codewords end in zeros.

All subspaces of a layer are clustered in one C call (qcnn/csrc/pq_kmeans.c: greedy k-means++
seeding, Lloyd iterations, scikit-learn's stopping rule), each from its own seed, so a subspace's
codebook depends only on its points and its seed -- not on the other subspaces or their order.
Duplicate points need no special handling: a point given weight w counts as w copies (kmeans()
takes weights), and with at most K distinct points the codebook is those points, repeated in
turn to fill K (exact; error correction may move the spare copies somewhere useful later).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .._kernels import ffi, lib
from .layer import PQSetting

MAX_ITER = 100
TOL = 1e-4                       # centre movement, relative to the points' variance (sklearn's rule)
_CALL_WORK = 1 << 24             # point x codeword x dim products per C call: cancel checks in between


def subvectors(weight: np.ndarray, groups: int, dsub: int) -> np.ndarray:
    """(KH, KW, C_in/g, C_out) -> (G, M, KH*KW*C_out/g, dsub), points ordered (kh, kw, c)."""
    kh, kw, cin_g, cout = weight.shape
    m = -(-cin_g // dsub)
    wp = np.zeros((kh, kw, m * dsub, cout), np.float32)
    wp[:, :, :cin_g] = weight
    wp = wp.reshape(kh, kw, m, dsub, groups, cout // groups)
    return np.ascontiguousarray(wp.transpose(4, 2, 0, 1, 5, 3)).reshape(groups, m, -1, dsub)


def codes_to_canonical(codes: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """(G, M, KH*KW*C_out/g) point codes -> the canonical (KH, KW, M, C_out) uint8 layout."""
    g, m, _ = codes.shape
    c = codes.reshape(g, m, kh, kw, -1).transpose(2, 3, 1, 0, 4)
    return np.ascontiguousarray(c.reshape(kh, kw, m, -1), dtype=np.uint8)


def subspace_seeds(seed: int, count: int) -> np.ndarray:
    """The seed of each of `count` subspaces (in (group, subspace) order) of a layer: one random
    stream each, derived from the layer's seed and the subspace's index."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in 0..2**32-1, got {seed}")
    return (np.uint64(seed) << np.uint64(32)) + np.arange(count, dtype=np.uint64)


def kmeans_batch(points: np.ndarray, k: int, seeds: np.ndarray, weights: np.ndarray | None = None,
                 n_init: int = 1, max_iter: int = MAX_ITER, tol: float = TOL, bounds: bool | None = None,
                 init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means of S independent point sets: points (S, P, d), seeds (S,), weights (S, P) >= 0 or
    None.  Returns codebooks (S, K, d) float32, codes (S, P) int64 and inertia (S,).  `init`
    (S, K, d): start from these centres instead of k-means++ (one run).  `bounds` forces
    Hamerly's bounds on or off (None: where they pay); it changes the speed only."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 3 or min(points.shape) < 1:
        raise ValueError(f"k-means: points must be (problems, points, dim) and non-empty, got {points.shape}")
    s, p, d = points.shape
    if not 1 <= k <= 256:
        raise ValueError(f"k-means: K must be 1..256, got {k}")
    if n_init < 1 or max_iter < 1 or not tol >= 0:
        raise ValueError("k-means: n_init and max_iter must be >= 1, tol >= 0")
    if not np.isfinite(points).all():
        raise ValueError("k-means: points must be finite")
    seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
    if seeds.shape != (s,):
        raise ValueError(f"k-means: need one seed per problem, {s}, got {seeds.shape}")
    if weights is not None:
        weights = np.ascontiguousarray(weights, dtype=np.float32)
        if weights.shape != (s, p) or not (np.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError(f"k-means: weights must be finite, >= 0 and of shape {(s, p)}")
    if init is not None:
        init = np.ascontiguousarray(init, dtype=np.float32)
        if init.shape != (s, k, d) or not np.isfinite(init).all():
            raise ValueError(f"k-means: init centres must be finite and of shape {(s, k, d)}")
    books = np.empty((s, k, d), np.float32)
    codes = np.empty((s, p), np.int32)
    inertia = np.empty(s, np.float64)
    status = lib.qc_kmeans_f32(ffi.from_buffer("float[]", points),
                               ffi.NULL if weights is None else ffi.from_buffer("float[]", weights),
                               ffi.from_buffer("uint64_t[]", seeds),
                               ffi.NULL if init is None else ffi.from_buffer("float[]", init), s, p, d, k, n_init,
                               max_iter, tol,
                               -1 if bounds is None else int(bool(bounds)),
                               ffi.from_buffer("float[]", books, require_writable=True),
                               ffi.from_buffer("int32_t[]", codes, require_writable=True),
                               ffi.from_buffer("double[]", inertia, require_writable=True))
    if status != 0:
        raise MemoryError(f"k-means: no memory for scratch of {p} points")
    return books, codes.astype(np.int64), inertia


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 1, max_iter: int = MAX_ITER,
           weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(K, d) codebook and (P,) codes for the rows of `points` (weights: each row's multiplicity)."""
    books, codes, _ = kmeans_batch(np.asarray(points, np.float32)[None], k, subspace_seeds(seed, 1),
                                   None if weights is None else np.asarray(weights, np.float32)[None],
                                   n_init=n_init, max_iter=max_iter)
    return books[0], codes[0]


def init_codebooks(weight: np.ndarray, groups: int, setting: PQSetting, seed: int = 0, n_init: int = 1,
                   check: Callable[[], None] | None = None,
                   on_step: Callable[[float], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means codebooks (G, M, K, dsub) and canonical codes (KH, KW, M, C_out) for a weight
    (KH, KW, C_in/g, C_out); subspace i (in (group, subspace) order) uses subspace_seeds(seed)[i]."""
    kh, kw = weight.shape[:2]
    pts = subvectors(weight, groups, setting.dsub)
    g, m, p, d = pts.shape
    flat = pts.reshape(g * m, p, d)
    seeds = subspace_seeds(seed, g * m)
    books = np.empty((g * m, setting.ksub, d), np.float32)
    codes = np.empty((g * m, p), np.int64)
    step = max(1, _CALL_WORK // (p * setting.ksub * d))
    for s in range(0, g * m, step):
        if check is not None:
            check()
        books[s:s + step], codes[s:s + step], _ = kmeans_batch(flat[s:s + step], setting.ksub, seeds[s:s + step],
                                                               n_init=n_init)
        if on_step is not None:
            on_step(min(g * m, s + step) / (g * m))
    return books.reshape(g, m, setting.ksub, d), codes_to_canonical(codes.reshape(g, m, p), kh, kw)
