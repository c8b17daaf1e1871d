"""Edge-step normalisation of mu(E), from a handful of live points to a full spectrum.

A plain function over arrays, in the manner of ``larch.xafs``: :func:`normalize` finds E0, the
edge step, the pre-edge line and the post-edge polynomial like Larch's ``pre_edge``. It calls
:func:`larch.xafs.pre_edge` when asked and the pre- and post-edge regions hold enough points,
and otherwise falls back to robust least-squares lines that work with a handful of irregular
points (the first points of a live scan).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.spectra import edge_position

__all__ = ["Normalization", "normalize", "flattening", "flatten"]


@dataclass
class Normalization:
    """Result of :func:`normalize`; ``norm = (mu - pre(E)) / edge_step``."""

    e0: float
    edge_step: float
    pre_coefs: tuple[float, float]  # offset, slope of the pre-edge line at E - e0
    post_coefs: tuple[float, ...]  # polynomial in (E - e0), highest power last
    method: str  # "larch", "linear" or "provisional"
    n_points: int
    norm: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def pre_line(self, energy) -> np.ndarray:
        """Pre-edge line at ``energy``."""
        x = np.asarray(energy, dtype=float) - self.e0
        return self.pre_coefs[0] + self.pre_coefs[1] * x

    def apply(self, energy, mu, var=None):
        """Normalise ``mu`` (and its variance) with these parameters."""
        y = (np.asarray(mu, dtype=float) - self.pre_line(energy)) / self.edge_step
        if var is None:
            return y
        return y, np.asarray(var, dtype=float) / self.edge_step**2

    def close_to(self, other: "Normalization", rtol: float = 0.03) -> bool:
        """Whether ``other`` normalises the same data to within ``rtol`` of the edge step."""
        if other is None:
            return False
        if abs(other.edge_step - self.edge_step) > rtol * abs(self.edge_step):
            return False
        d_off = abs(other.pre_line(self.e0) - self.pre_line(self.e0))
        return d_off <= rtol * abs(self.edge_step)


def _robust_line(x, y, deg: int = 1):
    """Least squares polynomial with one pass of 3-MAD outlier rejection; lower degree when
    few points."""
    deg = min(deg, max(x.size - 1, 0))
    if x.size == 0:
        return None
    if deg == 0 or np.ptp(x) < 1e-9:
        return np.array([np.median(y)] + [0.0] * deg)
    c = np.polynomial.polynomial.polyfit(x, y, deg)
    r = y - np.polynomial.polynomial.polyval(x, c)
    mad = np.median(np.abs(r - np.median(r))) * 1.4826
    keep = np.abs(r) <= 3 * mad + 1e-12
    if mad > 0 and keep.sum() > deg + 1 and not keep.all():
        c = np.polynomial.polynomial.polyfit(x[keep], y[keep], deg)
    return c


def normalize(
    energy,
    mu,
    e0: float | None = None,
    *,
    pre1: float = -150.0,
    pre2: float = -20.0,
    norm1: float = 30.0,
    norm2: float | None = None,
    nnorm: int = 1,
    use_larch: bool = True,
    min_points: int = 4,
) -> Normalization:
    """Edge-step normalisation that works from a few points to a full spectrum.

    Parameters
    ----------
    energy, mu : array_like
        Points in any order; non-finite ones are ignored.
    e0 : float, optional
        Edge energy. None: the maximum of the derivative.
    pre1, pre2, norm1, norm2 : float
        Pre-edge and normalisation ranges relative to ``e0`` (eV), as in Larch.
    nnorm : int
        Degree of the post-edge polynomial (Larch's ``nnorm``).
    use_larch : bool
        Call :func:`larch.xafs.pre_edge` when both ranges hold ``>= 2 * min_points`` points.
    min_points : int
        Fewer points than this in a range lower the degree of its fit.

    Returns
    -------
    Normalization
        ``method`` says which path was taken: ``"larch"``, ``"linear"`` (robust fits of both
        ranges) or ``"provisional"`` (a range is empty: the pre-edge is the lowest point or the
        step the full range of the points, refined once the scan crosses the edge).
    """
    energy = np.asarray(energy, dtype=float).ravel()
    mu = np.asarray(mu, dtype=float).ravel()
    ok = np.isfinite(energy) & np.isfinite(mu)
    E, y = energy[ok], mu[ok]
    order = np.argsort(E, kind="stable")
    E, y = E[order], y[order]
    n = E.size
    if n == 0:
        return Normalization(float(e0 or np.nan), 1.0, (0.0, 0.0), (1.0,), "provisional", 0,
                             np.full(energy.shape, np.nan))
    if e0 is None or not np.isfinite(e0):
        e0 = _edge_of_points(E, y)
    e0 = float(e0)
    x = E - e0
    pre = (x >= pre1) & (x <= pre2)
    post = (x >= norm1) & ((x <= norm2) if norm2 is not None else True)

    if use_larch and pre.sum() >= 2 * min_points and post.sum() >= 2 * min_points and n >= 20:
        try:
            from larch import Group
            from larch.xafs import pre_edge

            _, uniq = np.unique(E, return_index=True)
            grp = Group(energy=E[uniq], mu=y[uniq])
            pre_edge(grp, e0=e0, pre1=pre1, pre2=pre2, norm1=norm1,
                     norm2=norm2 if norm2 is not None else float(x.max()), nnorm=nnorm)
            det = grp.pre_edge_details
            step = float(grp.edge_step)
            slope = float(det.pre_slope)
            off = float(det.pre_offset) + slope * e0  # Larch's line is in absolute E
            post = tuple(float(getattr(det, f"norm_c{k}")) for k in range(nnorm + 1)
                         if hasattr(det, f"norm_c{k}"))
            if np.isfinite(step) and step != 0:
                res = Normalization(e0, step, (off, slope), post, "larch", n)
                res.norm = res.apply(energy, mu)
                return res
        except Exception:  # noqa: BLE001 -- fall back to the robust fits below
            pass

    cpre = _robust_line(x[pre], y[pre], 1 if pre.sum() >= min_points else 0)
    if cpre is None:
        below = x < 0
        cpre = np.array([float(np.min(y[below] if below.any() else y)), 0.0])
    cpre = np.array([cpre[0], cpre[1] if cpre.size > 1 else 0.0])
    cpost = _robust_line(x[post], y[post], nnorm if post.sum() >= min_points + nnorm else 0)
    method = "linear"
    if cpost is None or pre.sum() == 0:
        method = "provisional"
    if cpost is None:
        above = x > 0
        top = float(np.max(y[above])) if above.any() else float(np.max(y))
        cpost = np.array([top])
        step = top - cpre[0]
    else:
        step = float(cpost[0] - cpre[0])
    if not np.isfinite(step) or abs(step) < 1e-12:
        step = float(np.ptp(y)) or 1.0
        method = "provisional"
    res = Normalization(e0, float(step), (float(cpre[0]), float(cpre[1])),
                        tuple(float(c) for c in cpost), method, n)
    res.norm = res.apply(energy, mu)
    return res


def _edge_of_points(energy: np.ndarray, mu: np.ndarray) -> float:
    """E0 of sorted, possibly repeated and sparse points (:func:`models.spectra.edge_position`
    of their per-energy means)."""
    unique, inverse = np.unique(energy, return_inverse=True)
    if unique.size < 3:
        return float(np.mean(unique))
    means = np.bincount(inverse, weights=mu) / np.bincount(inverse)
    return edge_position(unique, means, smooth_eV=0.0 if unique.size < 7 else 0.5)


def flattening(energy, norm, e0: float, window: tuple[float, float], degree: int = 1):
    """The post-edge polynomial (coefficients in ``E - e0``) that :func:`flatten` removes: a
    robust fit of normalised ``norm`` over ``e0 + window``; None with too few points there."""
    x = np.asarray(energy, dtype=float) - e0
    y = np.asarray(norm, dtype=float)
    sel = (x >= window[0]) & (x <= window[1]) & np.isfinite(y)
    if sel.sum() < degree + 2:
        return None
    return _robust_line(x[sel], y[sel], degree)


def flatten(energy, norm, e0: float, coefs) -> np.ndarray:
    """``norm`` with the post-edge polynomial's curvature and slope removed above ``e0`` (as
    Larch's ``flat``): ``norm - (P(E - e0) - P(0))`` for ``E > e0``; unchanged without ``coefs``.

    Measured and computed spectra are flattened over the same window relative to their own edge
    (:func:`flattening`), so a post-edge slope from self-absorption, detector drift or a
    different normalisation range does not count as a difference between them.
    """
    norm = np.asarray(norm, dtype=float)
    if coefs is None:
        return norm.copy()
    x = np.asarray(energy, dtype=float) - e0
    poly = np.polynomial.polynomial.polyval(x, coefs) - coefs[0]
    return norm - np.where(x > 0, poly, 0.0)
