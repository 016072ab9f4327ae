"""Error correction (qcnn.pq.correct) against least-squares optima worked out with numpy on tiny
layers: when every weight has its own codeword the codebook step IS the least-squares fit, for
1x1 and k x k kernels alike; the target is the dense layer's response to the DENSE inputs; the
groups of a grouped convolution are independent problems; the objective never goes up."""
import numpy as np
import pytest

from qcnn.layers import Conv2D, Dense
from qcnn.pq.correct import ConvView, correct, correct_group, sample_rows
from qcnn.pq.kmeans import init_codebooks
from qcnn.pq.layer import PQSetting
from qcnn.pq.quantize import quantize_layer


def lstsq_error(x, y):
    """min over W, b of ||Y - X W - b||^2, by numpy's least squares on [X 1]."""
    a = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    sol, *_ = np.linalg.lstsq(a, y.astype(np.float64), rcond=None)
    return float(((a @ sol - y) ** 2).sum())


def response_error(layer, x, target):
    pre = layer.to_dense()(x)
    return float(((pre - target) ** 2).sum())


def free_setting(layer):
    """One subspace over all input channels and a codeword for every (offset, output channel):
    the codebooks can hold any weights, so the best codebooks are the least-squares weights."""
    kh, kw, cin, cout = ConvView.of(layer).weight.shape
    return PQSetting(cin, max(2, kh * kw * cout))


def test_fc_codebook_step_is_the_least_squares_fit():
    rng = np.random.default_rng(0)
    fc = Dense(rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32))
    x = rng.standard_normal((40, 6)).astype(np.float32)
    xq = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    target = fc(x)
    pq = quantize_layer(fc, free_setting(fc), xq, x, iterations=1, shrinkage=0.0)
    assert response_error(pq, xq, target) == pytest.approx(lstsq_error(xq, target), rel=1e-4)


def test_kxk_conv_codebook_step_is_the_least_squares_fit():
    """The coupled codebook update of k x k kernels (offsets of a channel share a codebook)."""
    rng = np.random.default_rng(1)
    conv = Conv2D(rng.standard_normal((3, 3, 2, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32),
                  (1, 1), (1, 1, 1, 1))
    x = rng.standard_normal((3, 6, 6, 2)).astype(np.float32)
    xq = (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    target = conv(x)
    pq = quantize_layer(conv, free_setting(conv), xq, x, iterations=1, shrinkage=0.0)
    view = ConvView.of(conv)
    patches = view.patches(xq, np.arange(view.num_positions(xq))).reshape(-1, 18)
    best = lstsq_error(patches, target.reshape(-1, 3))
    plain = quantize_layer(conv, free_setting(conv), error_correction=False)
    assert response_error(plain, xq, target) > 1.2 * best         # the dense weights themselves are not it
    assert response_error(pq, xq, target) == pytest.approx(best, rel=1e-4)


def test_several_subspaces_converge_to_the_least_squares_fit():
    """Subspaces are updated a chunk at a time with a line search: with correlated inputs the
    sweeps still converge to the joint optimum, never overshooting it."""
    rng = np.random.default_rng(2)
    fc = Dense(rng.standard_normal((12, 3)).astype(np.float32), np.zeros(3, np.float32))
    mix = np.eye(12) + 0.6 * rng.standard_normal((12, 12))
    x = (rng.standard_normal((200, 12)) @ mix).astype(np.float32)
    xq = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    target = fc(x)
    best = lstsq_error(xq, target)
    errors = [response_error(quantize_layer(fc, PQSetting(2, 4), xq, x, iterations=n, shrinkage=0.0), xq, target)
              for n in (1, 4, 60)]
    assert best * (1 - 1e-6) <= errors[2] <= errors[1] <= errors[0]
    assert errors[2] == pytest.approx(best, rel=2e-3)


def test_the_target_is_the_dense_response_to_dense_inputs():
    """The quantized network's inputs are distorted; the corrected layer answers them the way
    the dense layer answers the undistorted ones (here exactly possible: an invertible mix)."""
    rng = np.random.default_rng(3)
    fc = Dense(rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32))
    x = rng.standard_normal((60, 5)).astype(np.float32)
    distort = (np.eye(5) + 0.4 * rng.standard_normal((5, 5))).astype(np.float32)
    xq = x @ distort
    pq = quantize_layer(fc, free_setting(fc), xq, x, iterations=1, shrinkage=0.0)
    out = pq.to_dense()(xq)
    assert np.abs(out - fc(x)).max() < 1e-3 * np.abs(fc(x)).max()
    assert np.abs(out - fc(xq)).max() > 0.1 * np.abs(fc(x)).max()


def test_groups_are_independent_problems():
    rng = np.random.default_rng(4)
    conv = Conv2D(rng.standard_normal((3, 3, 3, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32),
                  (1, 1), "same", 2)
    x = rng.standard_normal((2, 7, 7, 6)).astype(np.float32)
    view = ConvView.of(conv)
    xs, ys = sample_rows(view, x, x, 60, np.random.default_rng(0))
    books, codes = init_codebooks(conv.weight, 2, PQSetting(2, 4))
    gcodes = codes.reshape(9, 2, 2, 4).transpose(2, 0, 1, 3)
    dense = view.grouped_weight()
    both = correct(xs, ys, books, gcodes, dense, conv.bias.reshape(2, 4), iterations=3)
    for g in range(2):
        one = correct_group(xs[g], ys[g], books[g], gcodes[g], dense[g], conv.bias.reshape(2, 4)[g], iterations=3)
        np.testing.assert_array_equal(both.codes[g], one.codes)
        np.testing.assert_allclose(both.codebook[g], one.codebook, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(both.bias[g], one.bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel,groups,setting", [(1, 1, PQSetting(1, 4)), (3, 1, PQSetting(2, 8)),
                                                    (3, 2, PQSetting(3, 4)), (1, 1, PQSetting(4, 8))])
def test_objective_never_increases_and_ends_lower(kernel, groups, setting):
    rng = np.random.default_rng(kernel * 10 + groups)
    cin, cout = 12, 16
    conv = Conv2D(rng.standard_normal((kernel, kernel, cin // groups, cout)).astype(np.float32),
                  rng.standard_normal(cout).astype(np.float32), (1, 1), "same", groups)
    x = (rng.standard_normal((4, 9, 9, cin)) @ (np.eye(cin) + 0.5 * rng.standard_normal((cin, cin)))).astype(np.float32)
    xq = x + 0.2 * rng.standard_normal(x.shape).astype(np.float32)
    view = ConvView.of(conv)
    xs, ys = sample_rows(view, xq, x, 300, np.random.default_rng(0))
    books, codes = init_codebooks(conv.weight, groups, setting)
    m = codes.shape[2]
    gcodes = codes.reshape(kernel * kernel, m, groups, cout // groups).transpose(2, 0, 1, 3)
    res = correct(xs, ys, books, gcodes, view.grouped_weight(), conv.bias.reshape(groups, -1), iterations=5,
                  shrinkage=0.5)
    h = res.history
    assert len(h) == 6 and all(b <= a * (1 + 1e-9) for a, b in zip(h, h[1:]))
    assert h[-1] < 0.9 * h[0]


@pytest.mark.parametrize("dsub,k,noise,rank,distortion", [(2, 8, 0.01, 4, 0.0),    # codebook steps overshoot
                                                        (1, 2, 0.3, 1, 0.1)])    # code steps overshoot
def test_chunked_steps_do_not_overshoot_on_strongly_correlated_inputs(dsub, k, noise, rank, distortion):
    """With more subspaces than CHUNKS, several are updated at once; on nearly collinear inputs
    their changes add up, and only the line search (codebooks) and the per-channel check (codes)
    keep the objective from going up (both cases rise without them)."""
    rng = np.random.default_rng(6)
    cin, cout = 480, 16
    fc = Dense((rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32), np.zeros(cout, np.float32))
    x = (rng.standard_normal((400, rank)) @ rng.standard_normal((rank, cin))
         + noise * rng.standard_normal((400, cin))).astype(np.float32)
    xq = x + distortion * rng.standard_normal(x.shape).astype(np.float32)
    xs, ys = sample_rows(ConvView.of(fc), xq, x, 400, np.random.default_rng(0))
    books, codes = init_codebooks(fc.weight.reshape(1, 1, cin, cout), 1, PQSetting(dsub, k))
    res = correct(xs, ys, books, codes.reshape(1, 1, cin // dsub, cout), fc.weight.reshape(1, 1, cin, cout), None,
                  iterations=3, shrinkage=0.0)
    h = res.history
    assert all(b <= a * (1 + 1e-9) for a, b in zip(h, h[1:])), h
    assert h[-1] < 0.3 * h[0]
