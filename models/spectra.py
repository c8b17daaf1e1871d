"""Spectra as plain numpy arrays: grids, resampling, peaks, edge position, metrics, broadening.

This module is the *one* definition of these operations; training, benchmarks, the ranking
engine and plots all call it. Conventions:

- ``energy`` is absolute photon energy in eV, strictly increasing, shape (E,).
- ``mu`` is normalised absorption with a unit edge step (FEFF's normalised ``mu``, the model's
  output, and measured spectra after ``xas_callbacks`` normalisation), shape (E,) or (N, E).
- Peak prominences are in these normalised units, i.e. in units of the edge step.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import signal, stats

#: Default peak prominence, in units of the edge step. XANES features of computed Cu K and O K
#: spectra that a chemist would call a peak (white line, shoulders resolved as maxima, the first
#: EXAFS-like oscillations) have prominences >= ~0.05 of the step; smaller maxima are mostly
#: grid ripple of FEFF's k-grid and flicker between nearly identical spectra.
PEAK_PROMINENCE = 0.05
#: Default tolerance (eV) within which :func:`resample` pads with the edge value.
PAD_TOLERANCE_EV = 1.0
#: Gaussian sigma (eV) of the light smoothing used by :func:`edge_position`.
EDGE_SMOOTH_EV = 0.5
#: Tolerances (eV) of the peak-position metrics.
PEAK_TOLERANCES_EV = (1.0, 0.5)
#: Gaussian sigma per unit FWHM.
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


class GridCoverageError(ValueError):
    """The requested grid extends beyond a spectrum by more than the padding tolerance."""


def _as_energy(energy: np.ndarray, name: str = "energy") -> np.ndarray:
    energy = np.asarray(energy, dtype=float)
    if energy.ndim != 1 or energy.size < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 points, got shape {energy.shape}")
    if not np.all(np.isfinite(energy)):
        raise ValueError(f"{name} holds NaN/inf")
    if np.any(np.diff(energy) <= 0):
        i = int(np.flatnonzero(np.diff(energy) <= 0)[0])
        raise ValueError(
            f"{name} must increase strictly; point {i + 1} ({energy[i + 1]} eV) follows {energy[i]} eV"
        )
    return energy


def make_grid(start: float, stop: float, n: int) -> np.ndarray:
    """An evenly spaced absolute energy grid: ``n`` points from ``start`` to ``stop`` eV."""
    if not (np.isfinite(start) and np.isfinite(stop)) or stop <= start:
        raise ValueError(f"grid needs finite start < stop, got start={start}, stop={stop}")
    if int(n) < 2:
        raise ValueError(f"grid needs at least 2 points, got n={n}")
    return np.linspace(float(start), float(stop), int(n))


def _energy_ranges(records: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) of every spectrum in records, site spectra or (energy, mu) pairs."""
    starts, stops = [], []
    for item in records:
        if hasattr(item, "sites"):  # SpectrumRecord
            energies = [s.energy for s in item.sites]
        elif hasattr(item, "energy"):  # SiteSpectrum
            energies = [item.energy]
        else:  # (energy, mu) pair or a bare energy array
            energies = [item[0] if isinstance(item, tuple) else item]
        for e in energies:
            starts.append(float(e[0]))
            stops.append(float(e[-1]))
    if not starts:
        raise ValueError("common_grid: no spectra given")
    return np.asarray(starts), np.asarray(stops)


def common_grid(records: Iterable, n: int, quantile: float = 0.01, decimals: int = 1) -> np.ndarray:
    """A fixed absolute grid covered by (nearly) all spectra of a data set.

    The grid starts at the ``1 - quantile`` quantile of the spectra's first energies and stops
    at the ``quantile`` quantile of their last energies (rounded inwards to ``decimals``), so
    all but about ``quantile`` of the spectra at each end cover it; those few are padded by
    :func:`resample` if within its tolerance, or rejected with a clear error otherwise.

    Parameters
    ----------
    records
        ``SpectrumRecord`` s, ``SiteSpectrum`` s, ``(energy, mu)`` pairs or energy arrays.
    n
        Number of grid points.
    quantile
        Fraction of spectra allowed not to cover each end, in [0, 0.5).
    decimals
        Round the ends inwards to this many decimals (eV).
    """
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
    starts, stops = _energy_ranges(records)
    scale = 10.0**decimals
    start = np.ceil(np.quantile(starts, 1.0 - quantile) * scale) / scale
    stop = np.floor(np.quantile(stops, quantile) * scale) / scale
    return make_grid(start, stop, n)


def resample(
    energy: np.ndarray, mu: np.ndarray, grid: np.ndarray, tolerance: float = PAD_TOLERANCE_EV
) -> np.ndarray:
    """Linear interpolation of ``mu(energy)`` onto ``grid``.

    Grid points up to ``tolerance`` eV outside the data take the nearest edge value; a grid
    further outside raises :class:`GridCoverageError` (a ``ValueError``) saying by how much.

    Parameters
    ----------
    energy
        (E,) strictly increasing.
    mu
        (E,) or (N, E) on ``energy``.
    grid
        (G,) target energies.
    tolerance
        Largest extrapolation (eV) padded with the edge value.

    Returns
    -------
    np.ndarray
        (G,) or (N, G).
    """
    energy = _as_energy(energy)
    grid = np.asarray(grid, dtype=float)
    mu = np.asarray(mu, dtype=float)
    if mu.shape[-1] != energy.size:
        raise ValueError(f"mu has {mu.shape[-1]} points along its last axis, energy has {energy.size}")
    below = energy[0] - grid.min()
    above = grid.max() - energy[-1]
    if below > tolerance or above > tolerance:
        raise GridCoverageError(
            f"grid [{grid.min():.2f}, {grid.max():.2f}] eV extends beyond the spectrum "
            f"[{energy[0]:.2f}, {energy[-1]:.2f}] eV by "
            f"{max(below, above):.2f} eV (tolerance {tolerance} eV)"
        )
    if mu.ndim == 1:
        return np.interp(grid, energy, mu)
    flat = mu.reshape(-1, energy.size)
    out = np.stack([np.interp(grid, energy, row) for row in flat])
    return out.reshape(mu.shape[:-1] + (grid.size,))


def _refine_vertex(energy: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sub-grid position of extrema at ``idx`` by a parabola through three neighbours."""
    out = energy[idx].astype(float)
    inner = (idx > 0) & (idx < energy.size - 1)
    i = idx[inner]
    x0, x1, x2 = energy[i - 1], energy[i], energy[i + 1]
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / np.where(denom == 0, 1, denom)
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / np.where(denom == 0, 1, denom)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(a != 0, -b / (2 * a), x1)
    out[inner] = np.clip(vertex, x0, x2)
    return out


def find_peaks(
    energy: np.ndarray, mu: np.ndarray, prominence: float = PEAK_PROMINENCE
) -> np.ndarray:
    """Energies of the peaks (local maxima) of a normalised spectrum.

    ``scipy.signal.find_peaks`` with a prominence threshold in units of the edge step
    (:data:`PEAK_PROMINENCE` = 0.05 by default; spectra must be normalised to unit step), each
    peak refined to sub-grid precision by a parabola through its three points.

    Returns
    -------
    np.ndarray
        Peak energies, eV, increasing.
    """
    energy = _as_energy(energy)
    mu = np.asarray(mu, dtype=float)
    if mu.shape != energy.shape:
        raise ValueError(f"mu shape {mu.shape} differs from energy shape {energy.shape}")
    if not np.all(np.isfinite(mu)):
        raise ValueError("mu holds NaN/inf")
    idx, _ = signal.find_peaks(mu, prominence=prominence)
    return _refine_vertex(energy, mu, idx)


def match_peaks(true_peaks: np.ndarray, pred_peaks: np.ndarray) -> np.ndarray:
    """``|dE|`` from each true peak to the nearest predicted peak (``inf`` if none predicted)."""
    true_peaks = np.asarray(true_peaks, dtype=float).ravel()
    pred_peaks = np.asarray(pred_peaks, dtype=float).ravel()
    if pred_peaks.size == 0:
        return np.full(true_peaks.size, np.inf)
    return np.min(np.abs(true_peaks[:, None] - pred_peaks[None, :]), axis=1)


def gaussian_kernel(energy: np.ndarray, sigma: float, out: np.ndarray | None = None) -> np.ndarray:
    """Row-normalised Gaussian convolution matrix (sigma in eV) on a possibly uneven grid
    (trapezoid weights): ``kernel @ mu`` is ``mu`` broadened."""
    out = energy if out is None else out
    widths = np.gradient(energy)
    kernel = np.exp(-0.5 * ((out[:, None] - energy[None, :]) / sigma) ** 2) * widths[None, :]
    return kernel / kernel.sum(axis=1, keepdims=True)


def gaussian_broaden(energy: np.ndarray, mu: np.ndarray, fwhm_eV: float) -> np.ndarray:
    """Convolve with a unit-area Gaussian of ``fwhm_eV`` (works on uneven grids).

    The kernel is renormalised near the ends, so a flat spectrum stays flat and the edge step
    is preserved. ``mu`` may be (E,) or (N, E); ``fwhm_eV = 0`` returns a copy.
    """
    energy = _as_energy(energy)
    mu = np.asarray(mu, dtype=float)
    if mu.shape[-1] != energy.size:
        raise ValueError(f"mu has {mu.shape[-1]} points along its last axis, energy has {energy.size}")
    if fwhm_eV < 0 or not np.isfinite(fwhm_eV):
        raise ValueError(f"fwhm_eV must be finite and >= 0, got {fwhm_eV}")
    if fwhm_eV == 0:
        return mu.copy()
    sigma = fwhm_eV * FWHM_TO_SIGMA
    return mu @ gaussian_kernel(energy, sigma).T


def gaussian_broaden_uniform(mu: np.ndarray, step: float, fwhm: float) -> np.ndarray:
    """Convolve spectra on a uniform grid with a normalised Gaussian of ``fwhm`` (eV).

    Parameters
    ----------
    mu : ndarray, shape (..., G)
        Spectra on a uniform grid of ``step`` eV; edges are extended with their end values.
    step, fwhm : float
        Grid step and Gaussian FWHM (eV). ``fwhm <= 0`` returns a copy.
    """
    mu = np.asarray(mu, dtype=float)
    if fwhm <= 0:
        return mu.copy()
    sigma = fwhm * FWHM_TO_SIGMA / step
    half = int(np.ceil(4 * sigma))
    x = np.arange(-half, half + 1)
    kern = np.exp(-0.5 * (x / sigma) ** 2)
    kern /= kern.sum()
    padded = np.concatenate(
        [np.repeat(mu[..., :1], half, axis=-1), mu, np.repeat(mu[..., -1:], half, axis=-1)], axis=-1
    )
    # direct convolution (no FFT) along the last axis: deterministic
    from scipy.ndimage import correlate1d

    return correlate1d(padded, kern, axis=-1, mode="nearest")[..., half:-half]


def edge_position(energy: np.ndarray, mu: np.ndarray, smooth_eV: float = EDGE_SMOOTH_EV) -> float:
    """Edge energy E0: the maximum of d(mu)/dE of the lightly smoothed spectrum.

    The spectrum is resampled onto an even 0.05 eV grid, smoothed with a Gaussian of sigma
    ``smooth_eV`` (0.5 eV), differentiated, and the maximum refined by a parabola. This is the
    usual (Athena/Larch ``pre_edge``) definition of E0. For spectra that start above the edge,
    the result is near the first energy; callers should then not rely on it.
    """
    energy = _as_energy(energy)
    mu = np.asarray(mu, dtype=float)
    if mu.shape != energy.shape:
        raise ValueError(f"mu shape {mu.shape} differs from energy shape {energy.shape}")
    step = 0.05
    even = np.arange(energy[0], energy[-1] + step / 2, step)
    y = np.interp(even, energy, mu)
    if smooth_eV > 0:
        from scipy.ndimage import gaussian_filter1d

        y = gaussian_filter1d(y, smooth_eV / step, mode="nearest")
    dy = np.gradient(y, even)
    i = int(np.argmax(dy))
    return float(_refine_vertex(even, dy, np.array([i]))[0])


def edge_energy(element: str, edge: str) -> float:
    """Tabulated edge energy (eV) of ``element``/``edge`` from xraydb.

    Raises
    ------
    ValueError
        Naming the element or the edge when xraydb does not know it.
    """
    import xraydb

    if not isinstance(element, str) or not element.strip():
        raise ValueError(f"element must be a chemical symbol such as 'Cu', got {element!r}")
    symbol = element.strip()
    try:
        xraydb.atomic_number(symbol)
    except Exception:
        raise ValueError(f"unknown element {element!r}: not a chemical symbol known to xraydb") from None
    if symbol.isdigit() or symbol[0].islower():
        # xraydb accepts atomic numbers and lower case names; beamline metadata wants symbols.
        symbol = xraydb.atomic_symbol(xraydb.atomic_number(symbol))
    edges = xraydb.xray_edges(symbol)
    key = str(edge).strip()
    match = {name.upper(): name for name in edges}.get(key.upper())
    if match is None:
        known = ", ".join(sorted(edges))
        raise ValueError(f"unknown edge {edge!r} for element {symbol!r}; xraydb knows: {known}")
    return float(edges[match].energy)


def edge_half_height(energy, mu, level: float = 0.5) -> float:
    """Edge energy as the first rise of normalised ``mu`` through ``level`` (half the edge step),
    interpolated linearly; NaN when the points never cross it.

    Unlike :func:`edge_position` (the derivative's maximum) it needs no dense data, so it serves
    sparse live points too, and it does not jump between a pre-edge shoulder and the white line.
    Points may come in any order; a crossing must hold for the next two points (a noise spike
    is not an edge).
    """
    energy = np.asarray(energy, dtype=float)
    mu = np.asarray(mu, dtype=float)
    ok = np.isfinite(energy) & np.isfinite(mu)
    order = np.argsort(energy[ok], kind="stable")
    e, m = energy[ok][order], mu[ok][order]
    above = m >= level
    for i in range(1, e.size):
        if above[i] and not above[i - 1] and above[i:i + 3].all():
            return float(e[i - 1] + (level - m[i - 1]) * (e[i] - e[i - 1]) / (m[i] - m[i - 1]))
    return float("nan")


def spectrum_metrics(
    energy: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    prominence: float = PEAK_PROMINENCE,
) -> dict:
    """Accuracy of predicted spectra against reference spectra on one grid.

    Parameters
    ----------
    energy
        (E,) grid.
    true, pred
        (N, E) reference and predicted normalised spectra.
    prominence
        Peak prominence for :func:`find_peaks`.

    Returns
    -------
    dict
        ``mse`` (mean over all points), ``median_pearson``, ``median_spearman`` (per spectrum,
        median over spectra), ``peaks_within_1eV`` and ``peaks_within_0.5eV`` (fraction of
        true peaks whose nearest predicted peak lies within the tolerance; NaN when there are
        no true peaks), ``n_true_peaks``, ``edge_mae_eV`` (mean absolute difference of
        :func:`edge_position`), ``n_spectra``.
    """
    energy = _as_energy(energy)
    true = np.atleast_2d(np.asarray(true, dtype=float))
    pred = np.atleast_2d(np.asarray(pred, dtype=float))
    if true.shape != pred.shape or true.shape[1] != energy.size:
        raise ValueError(
            f"true {true.shape} and pred {pred.shape} must both be (N, {energy.size})"
        )
    if not (np.all(np.isfinite(true)) and np.all(np.isfinite(pred))):
        raise ValueError("true/pred hold NaN/inf")
    n = true.shape[0]
    if n == 0:
        raise ValueError("spectrum_metrics: no spectra")
    tc = true - true.mean(axis=1, keepdims=True)
    pc = pred - pred.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = (tc * pc).sum(1) / np.sqrt((tc**2).sum(1) * (pc**2).sum(1))
        tr = stats.rankdata(true, axis=1)
        pr = stats.rankdata(pred, axis=1)
        tr -= tr.mean(axis=1, keepdims=True)
        pr -= pr.mean(axis=1, keepdims=True)
        spearman = (tr * pr).sum(1) / np.sqrt((tr**2).sum(1) * (pr**2).sum(1))
    distances = [
        match_peaks(find_peaks(energy, t, prominence), find_peaks(energy, p, prominence))
        for t, p in zip(true, pred)
    ]
    dE = np.concatenate(distances) if distances else np.zeros(0)
    edges = np.array([[edge_position(energy, t), edge_position(energy, p)] for t, p in zip(true, pred)])
    out = {
        "mse": float(np.mean((true - pred) ** 2)),
        "median_pearson": float(np.nanmedian(pearson)) if np.any(np.isfinite(pearson)) else float("nan"),
        "median_spearman": float(np.nanmedian(spearman)) if np.any(np.isfinite(spearman)) else float("nan"),
    }
    for tol in PEAK_TOLERANCES_EV:
        key = f"peaks_within_{tol:g}eV"
        out[key] = float(np.mean(dE <= tol)) if dE.size else float("nan")
    out["n_true_peaks"] = int(dE.size)
    out["edge_mae_eV"] = float(np.mean(np.abs(edges[:, 0] - edges[:, 1])))
    out["n_spectra"] = int(n)
    return out
