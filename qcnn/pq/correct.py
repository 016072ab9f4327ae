"""Error correction (the paper's Sec. 3.2 for FC, 3.3 for conv): minimise a layer's RESPONSE error.

Given calibration inputs X (taken from the partly quantized network) and targets Y (the dense
network's pre-activation responses, bias included), find codebooks, codes and a bias minimising

    f = || Y - X W(codebooks, codes) - b ||^2           summed over sampled output positions.

Alternating minimisation, each step exact for its block of unknowns, so f never increases:
  (a) codebook of one subspace, everything else fixed: a linear least-squares problem;
  (b) code of one (kernel offset, subspace) for every output channel at once (the channels are
      independent given the inputs), exhaustive over the K codewords;
  (b') codewords no code selects are re-seeded from the weight sub-vectors the current codebook
      represents worst: this leaves f unchanged and gives the next (b) step something to use;
  and, when the layer has a bias, the optimal bias for the current weights (done implicitly by
  centring X and Y).  The best iterate seen is returned.

Everything runs per group.  Columns of X are kept in (subspace, kernel offset, channel) order with
each subspace zero-padded to dsub channels, so a subspace is a contiguous block of columns.  When
there are more sampled rows R than columns D, the problem is first reduced to D rows with a
Cholesky factor of X^T X (same objective up to a constant), so the cost of a sweep no longer grows
with the number of calibration rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.linalg import cho_factor, cho_solve, cholesky, solve_triangular

from ..layers import Conv2D, Dense, conv_geometry, im2col, pad_nhwc


@dataclass
class ConvView:
    """A Conv2D or Dense layer seen as a (possibly 1x1 on a 1x1 map) grouped convolution."""

    weight: np.ndarray                 # (KH, KW, C_in/g, C_out)
    bias: np.ndarray | None
    stride: tuple[int, int]
    pads: tuple | str
    groups: int
    activation: str | None
    kind_of: str                       # "conv" or "fc"

    @classmethod
    def of(cls, layer) -> "ConvView":
        if isinstance(layer, Dense):
            return cls(layer.weight.reshape(1, 1, *layer.weight.shape), layer.bias, (1, 1), (0, 0, 0, 0), 1,
                       layer.activation, "fc")
        if isinstance(layer, Conv2D):
            return cls(layer.weight, layer.bias, layer.stride, layer.pads, layer.groups, layer.activation, "conv")
        raise TypeError(f"cannot quantize a {type(layer).__name__}")

    def nhwc(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], 1, 1, -1) if self.kind_of == "fc" else x

    def patches(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(R, KH, KW, C_in) input patches at flat output positions (n, oh, ow)."""
        x = self.nhwc(x)
        n, h, w, _ = x.shape
        kh, kw = self.weight.shape[:2]
        sh, sw = self.stride
        pads, oh, ow = conv_geometry(h, w, (kh, kw), self.stride, self.pads)
        cols = im2col(pad_nhwc(x, pads), kh, kw, sh, sw, oh, ow)
        ni, hi, wi = np.unravel_index(positions, (n, oh, ow))
        return cols[ni, hi, wi]

    def num_positions(self, x: np.ndarray) -> int:
        x = self.nhwc(x)
        _, oh, ow = conv_geometry(x.shape[1], x.shape[2], self.weight.shape[:2], self.stride, self.pads)
        return x.shape[0] * oh * ow


def sample_rows(view: ConvView, x_quant: np.ndarray, x_dense: np.ndarray, max_rows: int,
                rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group: (X (R, KH*KW, C_in/g) inputs from the quantized network, Y (R, C_out/g) dense
    pre-activation targets) at up to `max_rows` output positions drawn without replacement."""
    total = view.num_positions(x_dense)
    pos = np.arange(total) if total <= max_rows else np.sort(rng.choice(total, max_rows, replace=False))
    pq, pd = view.patches(x_quant, pos), view.patches(x_dense, pos)
    kh, kw, cin_g, cout = view.weight.shape
    g, cout_g = view.groups, cout // view.groups
    out = []
    for gi in range(g):
        ch = slice(gi * cin_g, (gi + 1) * cin_g)
        oc = slice(gi * cout_g, (gi + 1) * cout_g)
        xq = np.ascontiguousarray(pq[..., ch]).reshape(len(pos), kh * kw, cin_g)
        xd = np.ascontiguousarray(pd[..., ch]).reshape(len(pos), kh * kw * cin_g)
        y = xd @ view.weight[..., oc].reshape(-1, cout_g)
        if view.bias is not None:
            y += view.bias[oc]
        out.append((xq, y))
    return out


@dataclass
class Correction:
    codebook: np.ndarray               # (M, K, d)
    codes: np.ndarray                  # (O, M, C) int64
    bias: np.ndarray | None            # (C,)
    history: list[float] = field(default_factory=list)   # objective: k-means start, then each iteration


def _to_internal(x: np.ndarray, m: int, d: int) -> np.ndarray:
    """(R, O, cin) -> (R, M*O*d): subspace-major columns, each subspace zero-padded to d."""
    r, o, cin = x.shape
    xp = np.zeros((r, o, m * d), np.float32)
    xp[:, :, :cin] = x
    return np.ascontiguousarray(xp.reshape(r, o, m, d).transpose(0, 2, 1, 3)).reshape(r, -1)


def _expand(codebook: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Weights (M*O*d, C) in the internal order from a codebook (M, K, d) and codes (O, M, C)."""
    m = codebook.shape[0]
    w = codebook[np.arange(m)[:, None, None], codes.transpose(1, 0, 2)]     # (M, O, C, d)
    return np.ascontiguousarray(w.transpose(0, 1, 3, 2)).reshape(-1, codes.shape[2])


def correct_group(x: np.ndarray, y: np.ndarray, codebook: np.ndarray, codes: np.ndarray, dense_weight: np.ndarray,
                  bias: np.ndarray | None, iterations: int = 4, shrinkage: float = 1.0,
                  check: Callable[[], None] | None = None,
                  on_step: Callable[[float], None] | None = None) -> Correction:
    """Error-correct one group.  x: (R, O, cin) inputs; y: (R, C) targets; codebook (M, K, d) and
    codes (O, M, C) from k-means; dense_weight (O, cin, C) the layer's dense weights.

    `shrinkage` weighs a prior alpha * ||W - W_dense||^2 added to f, with alpha = shrinkage *
    ||X||^2 / (R + D): in an isotropic world, the prior counts as D/(R + D) of the data.  It keeps
    the directions the calibration rows do not explore near the dense weights; without it an FC
    layer fed by 200 images (R = 200 << D = 1280) fits those images perfectly and little else."""
    check = check or (lambda: None)
    r, o, cin = x.shape
    m, k, d = codebook.shape
    cb = codebook.astype(np.float64)
    codes = codes.astype(np.int64).copy()
    xin = _to_internal(x, m, d)
    w0 = _expand_dense(dense_weight, m, d)
    dim = xin.shape[1]

    # Centring X and Y makes the bias drop out: for any W the best bias is mean(Y) - mean(X) W.
    fit_bias = bias is not None
    if fit_bias:
        mu_x = xin.mean(0, dtype=np.float64)
        mu_y = y.mean(0, dtype=np.float64)
        xin = (xin - mu_x).astype(np.float32)
        tgt = (y - mu_y).astype(np.float32)
    else:
        tgt = np.asarray(y, np.float32)

    alpha = shrinkage * float((xin.astype(np.float64) ** 2).sum()) / (r + o * cin)
    const = 0.0
    if r > dim:
        # min ||T - X W||^2 == min ||L^-1 X^T T - L^T W||^2 + const, with L L^T = X^T X.
        x64 = xin.astype(np.float64)
        gram = x64.T @ x64
        h = x64.T @ tgt.astype(np.float64)
        jitter = 1e-7 * max(np.trace(gram) / dim, 1e-30)
        for _ in range(8):  # padded or dead channels make X^T X singular
            try:
                low = cholesky(gram + jitter * np.eye(dim), lower=True)
                break
            except np.linalg.LinAlgError:
                jitter *= 100
        t64 = solve_triangular(low, h, lower=True)
        const = float((tgt.astype(np.float64) ** 2).sum() - (t64 ** 2).sum())
        u = np.ascontiguousarray(low.T, dtype=np.float32)
        tgt = t64.astype(np.float32)
    else:
        u = xin
    block = o * d
    grams = [u[:, i * block:(i + 1) * block].T.astype(np.float64) @ u[:, i * block:(i + 1) * block]
             for i in range(m)]
    # The prior adds alpha * I to every Gram block and alpha * W_dense to every right-hand side.
    regs = [gm + alpha * np.eye(block) for gm in grams]
    w0_64 = w0.astype(np.float64)

    def objective(err, w):
        return float((err.astype(np.float64) ** 2).sum() + alpha * ((w - w0_64) ** 2).sum() + const)

    w = _expand(cb, codes).astype(np.float32)
    err = tgt - u @ w
    best = Correction(cb.copy(), codes.copy(), None, [objective(err, w)])
    best_f = best.history[0]
    steps = max(iterations, 0) * 2 * m
    done = 0
    for _ in range(iterations):
        for mi in range(m):                                  # (a) codebooks
            check()
            sl = slice(mi * block, (mi + 1) * block)
            um = u[:, sl]
            q = (um.T @ err).astype(np.float64) + grams[mi] @ w[sl] + alpha * w0_64[sl]
            cb[mi] = _solve_codebook(regs[mi], q, codes[:, mi], cb[mi])
            w_new = cb[mi][codes[:, mi]].transpose(0, 2, 1).reshape(block, -1).astype(np.float32)
            err -= um @ (w_new - w[sl])
            w[sl] = w_new
            done += 1
            if on_step:
                on_step(done / steps)
        for mi in range(m):                                  # (b) codes
            check()
            book = cb[mi]
            for oi in range(o):
                sl = slice(mi * block + oi * d, mi * block + (oi + 1) * d)
                uo = u[:, sl]
                part = slice(oi * d, (oi + 1) * d)
                go = regs[mi][part, part]
                w_old = w[sl].astype(np.float64)
                q = (uo.T @ err).astype(np.float64) + grams[mi][part, part] @ w_old + alpha * w0_64[sl]
                # f changes by c^T G c - 2 c^T q (+ const) when the code selects codeword c.
                cost = np.einsum("kd,de,ke->k", book, go, book)[:, None] - 2.0 * (book @ q)
                new = cost.argmin(0)
                old = codes[oi, mi]
                cols = np.arange(len(old))
                tol = 1e-12 * (np.abs(cost[old, cols]) + 1e-30)
                changed = np.flatnonzero((new != old) & (cost[new, cols] < cost[old, cols] - tol))
                if changed.size:
                    delta = (book[new[changed]].T - w_old[:, changed]).astype(np.float32)
                    err[:, changed] -= uo @ delta
                    w[sl, changed] = book[new[changed]].T
                    codes[oi, mi, changed] = new[changed]
            _reseed_unused(cb[mi], codes[:, mi], w0[mi * block:(mi + 1) * block], w[mi * block:(mi + 1) * block], d)
            done += 1
            if on_step:
                on_step(done / steps)
        err = tgt - u @ w                                    # drop accumulated rounding
        f = objective(err, w)
        best.history.append(f)
        if f < best_f:
            best_f, best.codebook, best.codes = f, cb.copy(), codes.copy()
    if fit_bias:
        best.bias = (mu_y - mu_x @ _expand(best.codebook, best.codes)).astype(np.float32)
    best.codebook = best.codebook.astype(np.float32)
    return best


def _expand_dense(weight: np.ndarray, m: int, d: int) -> np.ndarray:
    """Dense (O, cin, C) weights -> (M*O*d, C) in the internal order."""
    o, cin, c = weight.shape
    wp = np.zeros((o, m * d, c), np.float32)
    wp[:, :cin] = weight
    return np.ascontiguousarray(wp.reshape(o, m, d, c).transpose(1, 0, 2, 3)).reshape(-1, c)


def _solve_codebook(gram: np.ndarray, q: np.ndarray, codes: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Least-squares codebook (K, d) of one subspace.

    With the subspace's weights written as W_m = P(codes) c (c = stacked codewords), the objective
    is c^T A c - 2 c^T b + const with A = sum_ch P_ch^T G P_ch and b = sum_ch P_ch^T q_ch, where G
    is the Gram matrix of the subspace's input columns and q = X_m^T (residual + X_m W_m).  A small
    ridge towards the old codebook keeps codewords no code selects where they are (and the
    system well posed), and still guarantees f does not increase."""
    k, d = old.shape
    o, c = codes.shape
    lam = 1e-6 * max(np.trace(gram) / gram.shape[0], 1e-30)
    if o == 1:  # 1x1 conv / FC: A is block-diagonal, one d x d block per codeword
        onehot = np.zeros((c, k))
        onehot[np.arange(c), codes[0]] = 1.0
        counts = onehot.sum(0)
        rhs = (q @ onehot).T + lam * old                               # (K, d)
        a = counts[:, None, None] * gram[None] + lam * np.eye(d)[None]
        return np.linalg.solve(a, rhs[..., None])[..., 0]
    # General k x k kernel: offsets of one output channel couple their codewords.
    kd = k * d
    rows = (codes[:, :, None] * d + np.arange(d)).transpose(1, 0, 2).reshape(c, o * d)   # (C, O*d)
    rhs = np.bincount(rows.ravel(), weights=q.T.ravel(), minlength=kd)
    a = np.zeros(kd * kd)
    chunk = max(1, 4_000_000 // (o * d) ** 2)
    for s in range(0, c, chunk):
        r = rows[s:s + chunk]
        idx = (r[:, :, None] * kd + r[:, None, :]).ravel()
        a += np.bincount(idx, weights=np.broadcast_to(gram, (len(r),) + gram.shape).ravel(), minlength=kd * kd)
    a = a.reshape(kd, kd)
    a[np.diag_indices(kd)] += lam
    sol = cho_solve(cho_factor(a, lower=True), rhs + lam * old.ravel())
    return sol.reshape(k, d)


def _reseed_unused(book: np.ndarray, codes: np.ndarray, w0: np.ndarray, w: np.ndarray, d: int) -> None:
    """Point codewords no code selects at the dense sub-vectors represented worst (in place)."""
    k = book.shape[0]
    unused = np.flatnonzero(np.bincount(codes.ravel(), minlength=k) == 0)
    if not unused.size:
        return
    pts = w0.reshape(-1, d, w0.shape[1]).transpose(0, 2, 1).reshape(-1, d)   # (O*C, d)
    cur = w.reshape(-1, d, w.shape[1]).transpose(0, 2, 1).reshape(-1, d)
    worst = np.argsort(-((pts - cur) ** 2).sum(1), kind="stable")[:len(unused)]
    book[unused[:len(worst)]] = pts[worst]
