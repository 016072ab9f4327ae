"""Codebook k-means (qcnn/csrc/pq_kmeans.c through qcnn.pq.kmeans): optimal on tiny cases, seeded per
subspace, weighted, exact with few distinct points, the same on every SIMD variant and with or
without Hamerly's bounds, and as good as scikit-learn's on real-sized problems."""
import itertools

import numpy as np
import pytest

from qcnn import kernels
from qcnn.pq.kmeans import init_codebooks, kmeans, kmeans_batch, subspace_seeds, subvectors
from qcnn.pq.layer import PQSetting


def brute_force(points, weights, k):
    """Lowest weighted squared error over every partition of the points into at most k clusters."""
    best = np.inf
    for labels in itertools.product(range(k), repeat=len(points)):
        labels = np.array(labels)
        err = 0.0
        for c in range(k):
            sel = labels == c
            if sel.any():
                w = weights[sel]
                centre = (w[:, None] * points[sel]).sum(0) / w.sum()
                err += float((w * ((points[sel] - centre) ** 2).sum(1)).sum())
        best = min(best, err)
    return best


def inertia(points, weights, book, codes):
    return float((weights * ((points - book[codes]) ** 2).sum(1)).sum())


@pytest.mark.parametrize("case", range(6))
def test_tiny_problems_reach_the_brute_force_optimum(case):
    rng = np.random.default_rng(100 + case)
    p, d, k = 7, 1 + case % 3, 2 + case % 2
    # a few loose groups, so that the optimum is clear but not trivially separated
    pts = (rng.standard_normal((p, d)) + 3 * rng.integers(0, k, (p, 1))).astype(np.float32)
    w = rng.integers(1, 4, p).astype(np.float32)
    best = brute_force(pts.astype(np.float64), w.astype(np.float64), k)
    book, codes = kmeans(pts, k, seed=case, n_init=8, weights=w)
    assert inertia(pts, w, book, codes) == pytest.approx(best, rel=1e-5)
    # and the codes are the nearest codewords of the returned codebook
    np.testing.assert_array_equal(codes, ((pts[:, None] - book[None]) ** 2).sum(-1).argmin(1))


def test_weights_are_multiplicities():
    rng = np.random.default_rng(1)
    uniq = rng.standard_normal((30, 2)).astype(np.float32)
    counts = rng.integers(1, 6, 30)
    book_w, codes_w = kmeans(uniq, 5, seed=3, weights=counts.astype(np.float32))
    book_r, codes_r = kmeans(np.repeat(uniq, counts, axis=0), 5, seed=3)
    np.testing.assert_array_equal(book_w, book_r)
    np.testing.assert_array_equal(np.repeat(codes_w, counts), codes_r)


def test_weights_move_the_centres():
    pts = np.array([[0.0], [1.0], [10.0], [11.0]], np.float32)
    plain, _ = kmeans(pts, 2, seed=0, n_init=4)
    heavy, _ = kmeans(pts, 2, seed=0, n_init=4, weights=np.array([1, 9, 1, 1], np.float32))
    assert sorted(plain[:, 0]) == pytest.approx([0.5, 10.5])
    assert sorted(heavy[:, 0]) == pytest.approx([0.9, 10.5])
    # a point of weight 0 is ignored: not a centre, not pulling one
    ignored, _ = kmeans(np.vstack([pts, [[100.0]]]), 2, seed=0, n_init=4,
                        weights=np.array([1, 1, 1, 1, 0], np.float32))
    assert sorted(ignored[:, 0]) == pytest.approx([0.5, 10.5])


def test_seeded_determinism_and_per_subspace_seeds():
    rng = np.random.default_rng(5)
    pts = rng.random((6, 60, 2)).astype(np.float32)      # no cluster structure: the seed decides
    seeds = subspace_seeds(7, 6)
    a = kmeans_batch(pts, 4, seeds)
    b = kmeans_batch(pts, 4, seeds)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # each problem depends on its own points and seed only: alone, or in another order, the same
    for s in range(6):
        alone = kmeans_batch(pts[s:s + 1], 4, seeds[s:s + 1])
        np.testing.assert_array_equal(alone[0][0], a[0][s])
        np.testing.assert_array_equal(alone[1][0], a[1][s])
    order = [3, 0, 5, 1, 4, 2]
    shuffled = kmeans_batch(pts[order], 4, seeds[order])
    np.testing.assert_array_equal(shuffled[0], a[0][order])
    # the seeds differ per subspace: the same points in two subspaces get their own runs
    same = kmeans_batch(np.repeat(pts[:1], 6, axis=0), 4, seeds)[0]
    assert len({book.tobytes() for book in same}) > 1
    assert not np.array_equal(kmeans_batch(pts, 4, subspace_seeds(8, 6))[0], a[0])


def test_init_codebooks_seeds_every_group_and_subspace_apart():
    w = np.zeros((1, 1, 4, 40), np.float32)
    w[0, 0, :, :] = np.random.default_rng(2).random(40)      # every subspace sees the same points
    books, _ = init_codebooks(w.reshape(1, 1, 4, 40), 2, PQSetting(2, 4), seed=1)
    flat = books.reshape(4, 4, 2)
    assert len({b.tobytes() for b in flat}) == 4            # (group, subspace) -> its own seed
    pts = subvectors(w, 2, 2).reshape(4, -1, 2)
    direct, _, _ = kmeans_batch(pts, 4, subspace_seeds(1, 4))
    np.testing.assert_array_equal(direct, flat)


def test_fewer_distinct_points_than_k_is_exact_and_cycles():
    pts = np.repeat(np.array([[1.0, 2.0], [0.0, 0.0], [-3.0, 0.5]], np.float32), [5, 40, 1], axis=0)
    book, codes = kmeans(pts, 8, seed=0)
    np.testing.assert_array_equal(book[codes], pts)
    distinct = {tuple(r) for r in pts}
    assert {tuple(r) for r in book} == distinct
    # the codebook is the distinct points repeated in turn
    first = [tuple(r) for r in book[:3]]
    assert [tuple(r) for r in book] == [first[i % 3] for i in range(8)]


def test_one_point_one_subspace_and_k_one():
    book, codes = kmeans(np.array([[2.5, -1.0]], np.float32), 4)
    assert (book == [2.5, -1.0]).all() and codes.tolist() == [0]
    pts = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    book, codes = kmeans(pts, 1)
    np.testing.assert_allclose(book[0], pts.mean(0), atol=1e-6)
    assert not codes.any()


@pytest.mark.parametrize("k,d", [(16, 1), (16, 4), (32, 2), (64, 3), (128, 8), (256, 1), (5, 2)])
def test_simd_variants_and_bounds_give_the_same_bits(k, d):
    rng = np.random.default_rng(k + d)
    pts = rng.standard_normal((4, 300, d)).astype(np.float32)
    if d == 1:
        pts = np.round(pts * 4) / 4            # ties between centres
    seeds = subspace_seeds(0, 4)
    ref = None
    before = kernels.isa()
    try:
        for isa in ("scalar", "avx2", "avx512"):
            if kernels.set_isa(isa) != isa:
                continue
            for bounds in (True, False):
                out = kmeans_batch(pts, k, seeds, bounds=bounds)
                if ref is None:
                    ref = out
                for x, y in zip(out, ref):
                    np.testing.assert_array_equal(x, y, err_msg=f"{isa}, bounds {bounds}")
    finally:
        kernels.set_isa(before)


@pytest.mark.parametrize("k", [8, 48])
def test_an_empty_cluster_takes_the_farthest_point(k):
    """Starting centres far from every point leave clusters empty (k-means++ seeding almost never
    does): each one is moved onto a point, with and without bounds alike."""
    rng = np.random.default_rng(k)
    pts = rng.standard_normal((3, 400, 2)).astype(np.float32)
    init = pts[:, :k].copy()
    init[:, k // 2:] = 1000 + np.arange(k - k // 2)[None, :, None]
    results = [kmeans_batch(pts, k, subspace_seeds(0, 3), init=init, bounds=b) for b in (True, False)]
    for x, y in zip(*results):
        np.testing.assert_array_equal(x, y)
    books, codes, _ = results[0]
    assert (np.abs(books) < 10).all()
    assert all(len(np.unique(c)) == k for c in codes)


def test_as_good_as_scikit_learn():
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((16, 4)) * 2
    pts = (centres[rng.integers(0, 16, (8, 500))] + rng.standard_normal((8, 500, 4))).astype(np.float32)
    ours = kmeans_batch(pts, 16, subspace_seeds(0, 8))[2].sum()
    with threadpool_limits(1):      # its per-fit thread start-up would dominate
        theirs = sum(KMeans(16, n_init=1, random_state=i).fit(p.astype(np.float64)).inertia_
                     for i, p in enumerate(pts))
    assert ours < 1.01 * theirs


def test_bad_input_is_refused_before_c():
    ok = np.zeros((1, 5, 2), np.float32)
    seeds = subspace_seeds(0, 1)
    with pytest.raises(ValueError, match="finite"):
        kmeans_batch(np.full((1, 5, 2), np.nan, np.float32), 2, seeds)
    with pytest.raises(ValueError, match="K"):
        kmeans_batch(ok, 257, seeds)
    with pytest.raises(ValueError, match="seed"):
        kmeans_batch(ok, 2, subspace_seeds(0, 2))
    with pytest.raises(ValueError, match="weights"):
        kmeans_batch(ok, 2, seeds, weights=-np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match="points"):
        kmeans_batch(np.zeros((1, 0, 2), np.float32), 2, seeds)
    with pytest.raises(ValueError, match="seed"):
        subspace_seeds(2**32, 1)
    with pytest.raises(ValueError, match="init"):
        kmeans_batch(ok, 2, seeds, init=np.zeros((1, 3, 2), np.float32))
