"""The inner loops of the ranking, compiled with numba: one reading into the sufficient statistics
of a region of cells, and the log evidence of the cells summed over the nuisances.

The model and the meaning of the sums are in :mod:`xas_callbacks.ranking`. Per cell (broadening
``b``, offset ``o``, candidate ``n``) the arrays hold, contiguously:

* ``S[b, o, n, :]``: ``sum w m``, ``sum w m^2``, ``sum w m y`` over the readings;
* ``Q[b, o, n, l, :]``: per discrepancy level ``l``, the block-marginalised sums
  ``sum_k T_k^2 / B_k``, ``sum_k T_k F_k / B_k``, ``sum_k T_k Fy_k / B_k``, with the block sums
  ``T_k = sum_{i in k} w_i m_i`` (per cell, ``T[k][b, o, n]``), ``F_k = sum w``, ``Fy_k = sum w y``
  (shared) and ``B_k = F_k + P_k``, ``P_k`` the prior precision of block ``k``'s discrepancy.

A reading in block ``k`` changes only block ``k``'s terms, which :func:`add_reading` replaces:
an update costs the same whatever the number of readings already taken.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["add_reading", "add_readings", "log_evidence", "posterior_sums", "LOG2PI"]

LOG2PI = float(np.log(2.0 * np.pi))


@njit(cache=True, nogil=True)
def add_reading(M, dM, j, t, stride, w, y, S, T, Q, coef, b_lo, b_hi, o_lo, o_hi, cands):  # pragma: no cover
    """Add one reading (weight ``w``, normalised value ``y``) to the cells ``[b_lo:b_hi, o_lo:o_hi]``
    of the candidates ``cands`` (indices).

    The candidates' model values are ``M[b, g] + t * dM[b, g]`` with ``g = j + o * stride``; ``T``
    is the block sums of the reading's block (updated); ``coef[l]`` holds the per-candidate
    coefficients ``(1/B_new, 1/B_old, F_new/B_new, F_old/B_old, Fy_new/B_new, Fy_old/B_old)`` of
    level ``l``.
    """
    for b in range(b_lo, b_hi):
        for o in range(o_lo, o_hi):
            g = j + o * stride
            for n in cands:
                _add_to_cell(M, dM, g, t, w, y, S, T, Q, coef, b, o, n)


@njit(cache=True, nogil=True, inline="always")
def _add_to_cell(M, dM, g, t, w, y, S, T, Q, coef, b, o, n):  # pragma: no cover - compiled
    """One reading into one cell's sums (:func:`add_reading`)."""
    m = M[b, g, n] + t * dM[b, g, n]
    wm = w * m
    S[b, o, n, 0] += wm
    S[b, o, n, 1] += wm * m
    S[b, o, n, 2] += wm * y
    told = T[b, o, n]
    tnew = told + wm
    T[b, o, n] = tnew
    t2o = told * told
    t2n = tnew * tnew
    for l in range(Q.shape[3]):
        Q[b, o, n, l, 0] += t2n * coef[l, 0, n] - t2o * coef[l, 1, n]
        Q[b, o, n, l, 1] += tnew * coef[l, 2, n] - told * coef[l, 3, n]
        Q[b, o, n, l, 2] += tnew * coef[l, 4, n] - told * coef[l, 5, n]


@njit(cache=True, nogil=True, inline="always")
def _cell(S, Q, shared, logdet, const, la, ma, lb, mb, b, o, n, l):  # pragma: no cover - compiled
    """The cell's log evidence and its misfit ``D^2 = (y - E[y])^T C^-1 (y - E[y])`` (chi-square
    with as many degrees of freedom as readings when the cell is the truth)."""
    a11 = S[b, o, n, 1] - Q[b, o, n, l, 0] + la
    a12 = S[b, o, n, 0] - Q[b, o, n, l, 1]
    h1 = S[b, o, n, 2] - Q[b, o, n, l, 2] + la * ma
    a22 = shared[l, 0, n] + lb
    h2 = shared[l, 1, n] + lb * mb
    det = a11 * a22 - a12 * a12
    quad = (a22 * h1 * h1 - 2.0 * a12 * h1 * h2 + a11 * h2 * h2) / det
    d2 = shared[l, 2, n] + la * ma * ma + lb * mb * mb - quad
    return const - 0.5 * np.log(det) - 0.5 * d2 - 0.5 * logdet[l, n], d2


@njit(cache=True, nogil=True)
def _constant(n, slogw, priors):  # pragma: no cover - compiled
    return -0.5 * n * LOG2PI + 0.5 * slogw + 0.5 * (np.log(priors[1]) + np.log(priors[3]))


@njit(cache=True, nogil=True)
def log_evidence(S, Q, shared, logdet, n, slogw, priors, b_lo, b_hi, o_lo, o_hi):  # pragma: no cover - compiled
    """log p(y | level, broadening, offset, candidate), shape (L, b_hi - b_lo, o_hi - o_lo, N).

    ``shared[l, :, n]`` holds ``S0 - Q11``, ``Sy - Q1y``, ``Syy - Qyy`` of candidate ``n`` at
    level ``l``; ``logdet[l, n]`` the sum over blocks of ``log(B_k / P_k)``; ``priors`` is
    ``(amplitude mean, amplitude precision, background mean, background precision)``.
    """
    L, N = Q.shape[3], S.shape[2]
    const = _constant(n, slogw, priors)
    out = np.empty((L, b_hi - b_lo, o_hi - o_lo, N))
    for l in range(L):
        for b in range(b_lo, b_hi):
            for o in range(o_lo, o_hi):
                for k in range(N):
                    out[l, b - b_lo, o - o_lo, k] = _cell(S, Q, shared, logdet, const, priors[1], priors[0],
                                                          priors[3], priors[2], b, o, k, l)[0]
    return out


@njit(cache=True, nogil=True)
def posterior_sums(S, Q, shared, logdet, n, slogw, priors, lp_b, lp_o, lp_ln, inv_t, gamma,
                   b_lo, b_hi, o_lo, o_hi, cands):  # pragma: no cover - compiled
    """The posterior sums of the cells ``[b_lo:b_hi, o_lo:o_hi]`` of the candidates ``cands``.

    The last level is "none of these": its cells' evidence gets ``gamma * (D^2 - n) / 2`` added
    (the misfit beyond the typical one of a true cell, ``D^2 = n``, counts for the alternative).
    All evidences are tempered by ``inv_t`` and weighted by the log priors ``lp_b``, ``lp_o`` and
    ``lp_ln[l, k]`` (level and candidate).

    Returns ``lz`` (L, N): log sums over broadenings and offsets per level and candidate (-inf
    outside ``cands``; without ``lp_ln``); ``total``: the log of the sum over everything;
    ``mass`` (L, b_hi - b_lo, o_hi - o_lo): the posterior mass of each cell, summed over the
    candidates. One evaluation and one exp per cell.
    """
    L, N = Q.shape[3], S.shape[2]
    nb, no, nc = b_hi - b_lo, o_hi - o_lo, cands.size
    const = _constant(n, slogw, priors)
    v = np.empty((nb, no, nc, L))
    mx = np.full((L, N), -np.inf)
    for b in range(b_lo, b_hi):
        for o in range(o_lo, o_hi):
            p = lp_b[b] + lp_o[o]
            for i in range(nc):
                k = cands[i]
                for l in range(L):
                    z, d2 = _cell(S, Q, shared, logdet, const, priors[1], priors[0], priors[3], priors[2], b, o, k, l)
                    if l == L - 1:
                        z += 0.5 * gamma * (d2 - n)
                    x = z * inv_t + p
                    v[b - b_lo, o - o_lo, i, l] = x
                    if x > mx[l, k]:
                        mx[l, k] = x
    acc = np.zeros((L, N))
    for b in range(nb):
        for o in range(no):
            for i in range(nc):
                k = cands[i]
                for l in range(L):
                    e = np.exp(v[b, o, i, l] - mx[l, k])
                    v[b, o, i, l] = e
                    acc[l, k] += e
    lz = mx + np.log(acc)
    top = -np.inf
    for l in range(L):
        for i in range(nc):
            top = max(top, lz[l, cands[i]] + lp_ln[l, cands[i]])
    total = 0.0
    for l in range(L):
        for i in range(nc):
            total += np.exp(lz[l, cands[i]] + lp_ln[l, cands[i]] - top)
    total = top + np.log(total)
    factor = np.exp(mx + lp_ln - total)
    mass = np.zeros((L, nb, no))
    for b in range(nb):
        for o in range(no):
            for i in range(nc):
                k = cands[i]
                for l in range(L):
                    mass[l, b, o] += v[b, o, i, l] * factor[l, k]
    return lz, total, mass


@njit(cache=True, nogil=True)
def add_readings(M, dM, js, ts, stride, ws, ys, ks, S, T, Q, coefs, b_lo, b_hi, o_lo, o_hi, cands):  # pragma: no cover
    """Several readings at once: for every cell, the same operations in the same order as
    :func:`add_reading` for each reading in turn (so the same sums), but one pass over the cells.

    ``js, ts, ws, ys`` hold each reading's grid index, fraction, weight and value; ``ks[r]`` the
    row of ``T`` (blocks, W, O, N) of its block; ``coefs[r]`` its ``coef``.
    """
    for b in range(b_lo, b_hi):
        for o in range(o_lo, o_hi):
            for r in range(js.size):
                Tk, coef = T[ks[r]], coefs[r]
                for n in cands:
                    _add_to_cell(M, dM, js[r] + o * stride, ts[r], ws[r], ys[r], S, Tk, Q, coef, b, o, n)
