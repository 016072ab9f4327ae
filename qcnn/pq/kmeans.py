"""Codebook initialisation: k-means on a layer's weight sub-vectors (the paper's Sec. 3.1 / 3.3).

For group g and subspace m the points are every weight sub-vector W[kh, kw, m-slice, c] of that
group, over all kernel offsets and output channels: one codebook per subspace, shared by the
offsets.  The last subspace is zero-padded to `dsub` channels, so its codewords end in zeros.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Callable

import numpy as np
# Imported here, not inside the one-thread limit below: an OpenMP runtime first loaded inside
# threadpool_limits escapes it, and its spinning threads slowed a first quantization ~20x.
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from .layer import PQSetting


_state = threading.local()


@contextlib.contextmanager
def _one_thread():
    """Limit BLAS/OpenMP to one thread, once for a whole loop of fits: sklearn's per-fit thread
    set-up costs more than clustering a few hundred small points (and spins on a busy machine)."""
    if getattr(_state, "active", False):
        yield
        return
    _state.active = True
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        _state.active = False


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


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 1,
           max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(K, d) codebook and (P,) codes for the rows of `points`.

    Duplicate rows are clustered once with their multiplicity as weight (same result, less
    work).  With at most K distinct rows the codebook is the distinct rows themselves -- the
    quantization is exact -- padded to K by cycling through them (spare copies cost nothing
    and error correction may later move them somewhere useful)."""
    points = np.asarray(points, np.float64)
    uniq, inverse, counts = np.unique(points, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if len(uniq) <= k:
        book = uniq[np.arange(k) % len(uniq)]
        return book.astype(np.float32), inverse.astype(np.int64)
    with _one_thread(), warnings.catch_warnings():
        # Ties between equally weighted points can leave k-means "converged" with fewer
        # distinct centres than asked; sklearn warns, the result is still usable.
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed,
                    algorithm="lloyd").fit(uniq, sample_weight=counts)
    return km.cluster_centers_.astype(np.float32), km.labels_[inverse].astype(np.int64)


def init_codebooks(weight: np.ndarray, groups: int, setting: PQSetting, seed: int = 0, n_init: int = 1,
                   check: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means codebooks (G, M, K, dsub) and canonical codes (KH, KW, M, C_out) for a weight
    (KH, KW, C_in/g, C_out).  Each subspace gets its own seed derived from `seed`, so the
    result does not depend on the order subspaces are visited in."""
    kh, kw = weight.shape[:2]
    pts = subvectors(weight, groups, setting.dsub)
    g, m, p, d = pts.shape
    books = np.empty((g, m, setting.ksub, d), np.float32)
    codes = np.empty((g, m, p), np.int64)
    with _one_thread():
        for gi in range(g):
            for mi in range(m):
                if check is not None:
                    check()
                books[gi, mi], codes[gi, mi] = kmeans(pts[gi, mi], setting.ksub,
                                                      seed=(seed * 1_000_003 + gi * m + mi) % 2**32, n_init=n_init)
    return books, codes_to_canonical(codes, kh, kw)
