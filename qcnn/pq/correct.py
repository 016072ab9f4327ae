"""Error correction (the paper's Sec. 3.2 for FC, 3.3 for conv): minimise a layer's RESPONSE error.

Given calibration inputs X (taken from the partly quantized network) and targets Y (the dense
network's pre-activation responses, bias included), find codebooks, codes and a bias minimising

    f = || Y - X W(codebooks, codes) - b ||^2 + alpha || W - W_dense ||^2

summed over sampled output positions (alpha: see `shrinkage` in correct()).  Alternating
minimisation over blocks of unknowns, every step never increasing f:
  (a) codebooks: for a chunk of subspaces, each subspace's least-squares codebook with everything
      else fixed (solved for all of them at once), then one exact line search along the combined
      change, so the chunk's joint step cannot overshoot;
  (b) codes: for a chunk of (subspace, kernel offset) "atoms", each atom's best codeword for every
      output channel with everything else fixed (exhaustive over K); in a channel where applying
      all of the chunk's changes together would raise f, only its single best change is applied;
  (b') codewords no code selects are re-seeded from the weight sub-vectors the current codebook
      represents worst: f is unchanged and the next (b) step has something to use;
  and, when the layer has a bias, the optimal bias for the current weights (done implicitly by
  centring X and Y).  The best iterate seen is returned.
Chunks are up to 64 (codebooks) or 16 (codes) columns wide: each costs one product with the
residual to read it and one to update it, so a sweep costs two passes over the data however
narrow the subspaces are, and the Python overhead is per chunk, not per subspace (Lite0's 1x1
layers have up to 1152 subspaces).  Measured on Lite0's layers, the final objective stays within
about 1 % of one-subspace-at-a-time sweeps (sometimes below: the paths reach different local
optima), at a quarter to a fifth of the time on the widest layers.

Groups of a grouped convolution are independent problems, solved side by side (a leading axis).
Columns of X are kept in (subspace, kernel offset, channel) order with each subspace zero-padded
to dsub channels, so a subspace is a contiguous block of columns.  When there are more sampled
rows R than columns D, the problem is first reduced to D rows with a Cholesky factor of X^T X
(same objective up to a constant), so the cost of a sweep does not grow with the rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.linalg import cholesky, solve_triangular

from ..layers import Conv2D, Dense, conv_geometry, im2col, pad_nhwc

# Columns of X per step at most (see the module doc): the code step's changes interfere within a
# chunk, the codebook step's line search makes up for that; and at least CHUNKS steps per sweep
# where the layer has that many units (a small layer is then solved one subspace at a time).
CODEBOOK_COLUMNS, CODE_COLUMNS, CHUNKS = 64, 16, 48


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

    def grouped_weight(self) -> np.ndarray:
        """(G, KH*KW, C_in/g, C_out/g): each group's weights."""
        kh, kw, cin_g, cout = self.weight.shape
        g = self.groups
        return np.ascontiguousarray(self.weight.reshape(kh * kw, cin_g, g, cout // g).transpose(2, 0, 1, 3))


def sample_rows(view: ConvView, x_quant: np.ndarray, x_dense: np.ndarray, max_rows: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(X (G, R, KH*KW, C_in/g) inputs from the quantized network, Y (G, R, C_out/g) dense
    pre-activation targets, bias included) at up to `max_rows` output positions drawn without
    replacement.  The targets come from the DENSE inputs: the quantized layer is fitted to
    answer the quantized network's inputs the way the dense layer answers the dense ones."""
    total = view.num_positions(x_dense)
    pos = np.arange(total) if total <= max_rows else np.sort(rng.choice(total, max_rows, replace=False))
    kh, kw, cin_g, cout = view.weight.shape
    g = view.groups

    def grouped(x):                   # (R, KH, KW, C_in) -> (G, R, KH*KW, C_in/g)
        p = view.patches(x, pos).reshape(len(pos), kh * kw, g, cin_g)
        return np.ascontiguousarray(p.transpose(2, 0, 1, 3))

    xq, xd = grouped(x_quant), grouped(x_dense)
    w = view.grouped_weight()
    y = np.matmul(xd.reshape(g, len(pos), -1), w.reshape(g, -1, cout // g))
    if view.bias is not None:
        y += view.bias.reshape(g, 1, -1)
    return xq, y.astype(np.float32, copy=False)


@dataclass
class Correction:
    codebook: np.ndarray               # (G, M, K, d)
    codes: np.ndarray                  # (G, O, M, C) int64
    bias: np.ndarray | None            # (G, C)
    history: list[float] = field(default_factory=list)   # objective: k-means start, then each iteration


def _to_internal(x: np.ndarray, m: int, d: int) -> np.ndarray:
    """(G, R, O, cin) -> (G, R, M*O*d): subspace-major columns, each subspace zero-padded to d."""
    g, r, o, cin = x.shape
    xp = np.zeros((g, r, o, m * d), np.float32)
    xp[..., :cin] = x
    return np.ascontiguousarray(xp.reshape(g, r, o, m, d).transpose(0, 1, 3, 2, 4)).reshape(g, r, -1)


def _expand_dense(weight: np.ndarray, m: int, d: int) -> np.ndarray:
    """Dense (G, O, cin, C) weights -> (G, M*O*d, C) in the internal order."""
    g, o, cin, c = weight.shape
    wp = np.zeros((g, o, m * d, c), np.float32)
    wp[:, :, :cin] = weight
    return np.ascontiguousarray(wp.reshape(g, o, m, d, c).transpose(0, 2, 1, 3, 4)).reshape(g, -1, c)


def _expand(codebook: np.ndarray, atom_codes: np.ndarray, o: int) -> np.ndarray:
    """Weights (G, A*d, C) in the internal order from codebooks (G, M, K, d) and the codes of the
    A = M*O atoms (G, A, C); atom a belongs to subspace a // O."""
    g, m, k, d = codebook.shape
    a, c = atom_codes.shape[1:]
    row = (np.arange(g)[:, None, None] * m + (np.arange(a) // o)[None, :, None]) * k + atom_codes
    w = np.take(codebook.reshape(-1, d), row, axis=0)                                # (G, A, C, d)
    return np.ascontiguousarray(w.transpose(0, 1, 3, 2)).reshape(g, -1, c)


def _chunks(count: int, width: int, columns: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `count` units `width` columns wide: at most `columns` columns and,
    where there are enough units, at least CHUNKS ranges (>= 1 unit each)."""
    step = max(1, min(columns // width, count // CHUNKS))
    return [(s, min(count, s + step)) for s in range(0, count, step)]


def _reduce_rows(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """min ||T - X W||^2 == min ||L^-1 X^T T - L^T W||^2 + const with L L^T = X^T X: (L^T, the
    reduced targets, const) for one group."""
    dim = x.shape[1]
    x64 = x.astype(np.float64)
    gram = x64.T @ x64
    h = x64.T @ t.astype(np.float64)
    jitter = 1e-7 * max(np.trace(gram) / dim, 1e-30)
    for _ in range(8):  # padded or dead channels make X^T X singular
        try:
            low = cholesky(gram + jitter * np.eye(dim), lower=True)
            break
        except np.linalg.LinAlgError:
            jitter *= 100
    t64 = solve_triangular(low, h, lower=True)
    const = float((t.astype(np.float64) ** 2).sum() - (t64 ** 2).sum())
    return np.ascontiguousarray(low.T, dtype=np.float32), t64.astype(np.float32), const


def correct(x: np.ndarray, y: np.ndarray, codebook: np.ndarray, codes: np.ndarray, dense_weight: np.ndarray,
            bias: np.ndarray | None, iterations: int = 4, shrinkage: float = 1.0,
            check: Callable[[], None] | None = None,
            on_step: Callable[[float], None] | None = None) -> Correction:
    """Error-correct one layer's groups.  x: (G, R, O, cin) inputs; y: (G, R, C) targets;
    codebook (G, M, K, d) and codes (G, O, M, C) from k-means; dense_weight (G, O, cin, C) the
    layer's dense weights; bias (G, C) or None.

    `shrinkage` weighs a prior alpha * ||W - W_dense||^2 added to f, with alpha = shrinkage *
    ||X||^2 / (R + D): in an isotropic world, the prior counts as D/(R + D) of the data.  It keeps
    the directions the calibration rows do not explore near the dense weights; without it an FC
    layer fed by 200 images (R = 200 << D = 1280) fits those images perfectly and little else."""
    check = check or (lambda: None)
    g, r, o, cin = x.shape
    _, m, k, d = codebook.shape
    c = y.shape[2]
    a_count, dim = m * o, m * o * d
    cb = codebook.astype(np.float64)
    ac = np.ascontiguousarray(codes.transpose(0, 2, 1, 3)).reshape(g, a_count, c).astype(np.int64)   # atom codes
    xin = _to_internal(x, m, d)
    w0 = _expand_dense(dense_weight, m, d).astype(np.float64)

    # Centring X and Y makes the bias drop out: for any W the best bias is mean(Y) - mean(X) W.
    if bias is not None:
        mu_x = xin.mean(1, dtype=np.float64)                 # (G, D)
        mu_y = y.mean(1, dtype=np.float64)                   # (G, C)
        xin = (xin - mu_x[:, None]).astype(np.float32)
        tgt = (y - mu_y[:, None]).astype(np.float32)
    else:
        tgt = np.asarray(y, np.float32)
    alpha = shrinkage * (xin.astype(np.float64) ** 2).sum((1, 2)) / (r + o * cin)      # (G,)

    const = np.zeros(g)
    if r > dim:
        reduced = [_reduce_rows(xin[gi], tgt[gi]) for gi in range(g)]
        u = np.stack([t[0] for t in reduced])
        tgt = np.stack([t[1] for t in reduced])
        const = np.array([t[2] for t in reduced])
    else:
        u = xin
    del xin
    rows = u.shape[1]
    od = o * d
    # Diagonal blocks of U^T U: per subspace (G, M, Od, Od), and per atom (G, A, d, d) inside them.
    ub = np.ascontiguousarray(u.reshape(g, rows, m, od).transpose(0, 2, 1, 3)).astype(np.float64)
    sub_gram = np.matmul(ub.transpose(0, 1, 3, 2), ub)
    del ub
    blocks = sub_gram.reshape(g, m, o, d, o, d)
    atom_gram = blocks[:, :, np.arange(o), :, np.arange(o), :]                          # (O, G, M, d, d)
    atom_gram = np.ascontiguousarray(atom_gram.transpose(1, 2, 0, 3, 4)).reshape(g, a_count, d, d)
    eye_d = np.eye(d)
    al = alpha[:, None, None, None]

    sub_chunks = _chunks(m, od, CODEBOOK_COLUMNS)
    atom_chunks = _chunks(a_count, d, CODE_COLUMNS)

    def chunk_gram(c0, c1):
        uc = u[:, :, c0:c1].astype(np.float64)
        return np.matmul(uc.transpose(0, 2, 1), uc)
    sub_chunk_gram = [chunk_gram(s0 * od, s1 * od) for s0, s1 in sub_chunks]
    atom_chunk_gram = [chunk_gram(a0 * d, a1 * d) for a0, a1 in atom_chunks]

    def objective(err, w):
        return ((err.astype(np.float64) ** 2).sum((1, 2)) + alpha * ((w - w0) ** 2).sum((1, 2)) + const)

    w = _expand(cb, ac, o)                                   # float64 (G, D, C)
    err = tgt - np.matmul(u, w.astype(np.float32))
    f0 = objective(err, w)
    best = Correction(cb.copy(), ac.copy(), None, [float(f0.sum())])
    best_f = f0.copy()
    steps = max(iterations, 0) * (len(sub_chunks) + len(atom_chunks))
    done = 0

    def step_done():
        nonlocal done
        done += 1
        if on_step:
            on_step(done / steps)

    for _ in range(iterations):
        for (s0, s1), gc in zip(sub_chunks, sub_chunk_gram):          # (a) codebooks
            check()
            cols = slice(s0 * od, s1 * od)
            uc = u[:, :, cols]
            sc = np.matmul(uc.transpose(0, 2, 1), err).astype(np.float64)         # (G, B, C)
            wc = w[:, cols]
            n = s1 - s0
            q = (sc.reshape(g, n, od, c) + np.matmul(sub_gram[:, s0:s1], wc.reshape(g, n, od, c))
                 + al * w0[:, cols].reshape(g, n, od, c))
            new = _solve_codebooks(sub_gram[:, s0:s1] + al * np.eye(od), q,
                                   ac[:, s0 * o:s1 * o].reshape(g, n, o, c), cb[:, s0:s1])
            dw = _expand(new - cb[:, s0:s1], ac[:, s0 * o:s1 * o], o)            # W is linear in the codebooks
            num = (sc * dw).sum((1, 2)) - alpha * ((wc - w0[:, cols]) * dw).sum((1, 2))
            den = (dw * np.matmul(gc, dw)).sum((1, 2)) + alpha * (dw ** 2).sum((1, 2))
            beta = np.where((den > 0) & (num > 0), num / np.where(den > 0, den, 1.0), 0.0)
            cb[:, s0:s1] += beta[:, None, None, None] * (new - cb[:, s0:s1])
            dw *= beta[:, None, None]
            w[:, cols] += dw
            err -= np.matmul(uc, dw.astype(np.float32))
            step_done()
        for (a0, a1), gc in zip(atom_chunks, atom_chunk_gram):        # (b) codes
            check()
            cols = slice(a0 * d, a1 * d)
            uc = u[:, :, cols]
            n = a1 - a0
            sc = np.matmul(uc.transpose(0, 2, 1), err).astype(np.float64)
            wa = w[:, cols].reshape(g, n, d, c)
            ga = atom_gram[:, a0:a1]
            q = sc.reshape(g, n, d, c) + np.matmul(ga, wa) + al * w0[:, cols].reshape(g, n, d, c)
            books = cb[:, np.arange(a0, a1) // o]                                   # (G, n, K, d)
            reg = ga + al * eye_d
            # f changes by c^T (G_aa + alpha I) c - 2 c^T q (+ const) when an atom's code selects c.
            quad = np.einsum("gnkd,gnde,gnke->gnk", books, reg, books)
            lin = np.matmul(books, q)                                                # (G, n, K, C)
            c_old = np.einsum("gndc,gnde,gnec->gnc", wa, reg, wa) - 2.0 * (wa * q).sum(2)
            old = ac[:, a0:a1]
            c_new, new = c_old.copy(), old.copy()
            for kk in range(k):                  # argmin over K, K passes over contiguous rows
                ck = quad[:, :, kk, None] - 2.0 * lin[:, :, kk]
                lower = ck < c_new
                np.copyto(c_new, ck, where=lower)
                new[lower] = kk
            gain = c_old - c_new
            moving = gain > 1e-12 * (np.abs(c_old) + 1e-30)
            if not moving.any():
                step_done()
                continue
            gi, ni, ci = np.nonzero(moving)
            delta = np.zeros((g, n, d, c))
            delta[gi, ni, :, ci] = books[gi, ni, new[gi, ni, ci]] - wa[gi, ni, :, ci]
            delta = delta.reshape(g, n * d, c)
            # Jacobi check per channel: f's change with all of the chunk's moves applied together.
            rise = ((delta * np.matmul(gc, delta)).sum(1) - 2.0 * (sc * delta).sum(1)
                    + alpha[:, None] * (2.0 * ((w[:, cols] - w0[:, cols]) * delta).sum(1) + (delta ** 2).sum(1)))
            bad = rise > 0
            if bad.any():
                top = gain.argmax(1)                                                 # (G, C)
                keep = ~bad[:, None, :] | (np.arange(n)[None, :, None] == top[:, None, :])
                moving &= keep
                delta = np.where(np.repeat(moving, d, axis=1), delta, 0.0)
            ac[:, a0:a1] = np.where(moving, new, old)
            w[:, cols] += delta
            err -= np.matmul(uc, delta.astype(np.float32))
            step_done()
        _reseed_unused(cb, ac, w0, w, o, d)
        err = tgt - np.matmul(u, w.astype(np.float32))               # drop accumulated rounding
        f = objective(err, w)
        best.history.append(float(f.sum()))
        better = f < best_f
        if better.any():
            best_f = np.where(better, f, best_f)
            best.codebook[better] = cb[better]
            best.codes[better] = ac[better]
    codes_out = best.codes.reshape(g, m, o, c).transpose(0, 2, 1, 3)
    if bias is not None:
        best.bias = (mu_y - np.einsum("gd,gdc->gc", mu_x, _expand(best.codebook, best.codes, o))).astype(np.float32)
    best.codebook = best.codebook.astype(np.float32)
    best.codes = np.ascontiguousarray(codes_out)
    return best


def correct_group(x: np.ndarray, y: np.ndarray, codebook: np.ndarray, codes: np.ndarray, dense_weight: np.ndarray,
                  bias: np.ndarray | None, **options) -> Correction:
    """correct() for one group: x (R, O, cin), y (R, C), codebook (M, K, d), codes (O, M, C),
    dense_weight (O, cin, C), bias (C,) or None; the result without the group axis."""
    res = correct(x[None], y[None], codebook[None], codes[None], dense_weight[None],
                  None if bias is None else bias[None], **options)
    return Correction(res.codebook[0], res.codes[0], None if res.bias is None else res.bias[0], res.history)


def _solve_codebooks(gram: np.ndarray, q: np.ndarray, codes: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Least-squares codebooks (G, n, K, d) of n subspaces, each with the others fixed.

    With a subspace's weights written as W_m = P(codes) c (c = stacked codewords), the objective
    is c^T A c - 2 c^T b + const with A = sum_ch P_ch^T G P_ch and b = sum_ch P_ch^T q_ch, where G
    (G, n, Od, Od) is the Gram matrix of the subspace's input columns (plus alpha I) and q
    (G, n, Od, C) = X_m^T (residual + X_m W_m) + alpha W_dense.  codes: (G, n, O, C).  A small
    ridge towards the old codebook keeps codewords no code selects where they are (and the
    system well posed)."""
    g, n, k, d = old.shape
    o, c = codes.shape[2:]
    od = o * d
    lam = 1e-6 * np.maximum(np.trace(gram, axis1=2, axis2=3) / od, 1e-30)          # (G, n)
    if o == 1:  # 1x1 conv / FC: A is block-diagonal, one d x d block per codeword
        slot = codes[:, :, 0] + (np.arange(g * n) * k).reshape(g, n, 1)             # (G, n, C)
        counts = np.bincount(slot.ravel(), minlength=g * n * k).reshape(g, n, k)
        idx = (slot[:, :, None, :] * d + np.arange(d)[:, None]).ravel()              # like q: (G, n, d, C)
        rhs = np.bincount(idx, weights=q.ravel(), minlength=g * n * k * d).reshape(g, n, k, d)
        rhs += lam[..., None, None] * old
        a = counts[..., None, None] * gram[:, :, None] + lam[..., None, None, None] * np.eye(d)
        return np.linalg.solve(a, rhs[..., None])[..., 0]
    # General k x k kernel: offsets of one output channel couple their codewords.
    kd = k * d
    rows = (codes[..., None] * d + np.arange(d)).transpose(0, 1, 3, 2, 4).reshape(g * n, c, od)  # (Gn, C, O*d)
    base = np.arange(g * n)[:, None, None] * kd
    rhs = np.bincount((rows + base).ravel(), weights=q.reshape(g * n, od, c).transpose(0, 2, 1).ravel(),
                      minlength=g * n * kd).reshape(g, n, kd)
    a = np.zeros(g * n * kd * kd)
    grams = gram.reshape(g * n, od, od)
    step = max(1, 4_000_000 // (od * od * g * n))
    for s in range(0, c, step):
        r_ = rows[:, s:s + step]                                                    # (Gn, c', O*d)
        idx = (r_[:, :, :, None] * kd + r_[:, :, None, :]) + np.arange(g * n)[:, None, None, None] * kd * kd
        a += np.bincount(idx.ravel(), weights=np.broadcast_to(grams[:, None], idx.shape).ravel(),
                         minlength=g * n * kd * kd)
    a = a.reshape(g, n, kd, kd)
    a[..., np.arange(kd), np.arange(kd)] += lam[..., None]
    sol = np.linalg.solve(a, (rhs + lam[..., None] * old.reshape(g, n, kd))[..., None])[..., 0]
    return sol.reshape(g, n, k, d)


def _reseed_unused(cb: np.ndarray, ac: np.ndarray, w0: np.ndarray, w: np.ndarray, o: int, d: int) -> None:
    """Point codewords no code selects at the dense sub-vectors represented worst (in place).
    cb (G, M, K, d); ac (G, A, C) atom codes; w0, w (G, D, C) dense and current weights."""
    g, m, k, _ = cb.shape
    c = ac.shape[2]
    sub = np.arange(g)[:, None, None] * m + (np.arange(ac.shape[1]) // o)[None, :, None]
    counts = np.bincount((sub * k + ac).ravel(), minlength=g * m * k).reshape(g, m, k)
    unused = counts == 0
    gs, ms = np.nonzero(unused.any(-1))
    if not len(gs):
        return
    # Points of those subspaces: their O*C dense sub-vectors, (S, O*C, d).
    def points(x):
        return x.reshape(g, m, o, d, c)[gs, ms].transpose(0, 1, 3, 2).reshape(len(gs), o * c, d)
    pts, cur = points(w0), points(w)
    worst = np.argsort(-((pts - cur) ** 2).sum(-1), axis=-1, kind="stable")        # (S, O*C)
    rank = np.cumsum(unused[gs, ms], axis=-1) - 1                                   # r-th unused codeword
    si, ki = np.nonzero(unused[gs, ms] & (rank < o * c))
    cb[gs[si], ms[si], ki] = pts[si, worst[si, rank[si, ki]]]
