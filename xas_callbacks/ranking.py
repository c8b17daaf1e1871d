"""Posterior over candidate structures given a (partially) measured spectrum.

For candidate ``c`` with predicted normalised spectrum ``m_c(E)`` and model 1-sigma ``s_c(E)``,
measured points ``(E_i, y_i)`` with counting variance ``sigma_i^2`` are modelled as::

    y_i = a * m_c(E_i + dE; w) + b + n_i,   n_i ~ N(0, sigma_i^2 + s_c(E_i + dE; w)^2 + floor^2)

* ``dE`` -- ONE energy-calibration offset shared by all candidates (a grid with a Gaussian
  prior, marginalised numerically). A per-candidate shift would erase chemical shifts.
* ``w`` -- extra Gaussian broadening FWHM shared by all candidates (a small grid, marginalised
  numerically).
* ``a, b`` -- amplitude (edge-step scale) and background, Gaussian priors, marginalised
  analytically (closed-form linear-Gaussian evidence).

Everything is vectorised over (candidate, broadening, offset) cells. The spectra are resampled
once onto a uniform fine grid of step ``h``; offsets are integer multiples of ``h`` so that, for
one measured point, the shifted spectra of all offsets are a strided view of that grid. Each
new point updates seven sufficient statistics per cell, so an update is O(cells), independent of
the number of points already seen. The arithmetic is plain float64 numpy in a fixed order:
the same points in the same order give bit-identical results.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from models.normalization import normalize
from models.spectra import gaussian_broaden_uniform

__all__ = [
    "rank_spectrum",
    "RankingConfig",
    "RankingResult",
    "RankingEngine",
    "RankingTables",
    "ranking_tables",
    "linear_gaussian_log_evidence",
]

LOG2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class RankingConfig:
    """Settings of the ranking model.

    Parameters
    ----------
    offset_min, offset_max, offset_step
        Grid of the common calibration offset dE (eV); measured E corresponds to model E + dE.
        ``offset_step`` is rounded to a multiple of ``grid_step``; the grid always holds
        ``offset_min`` rounded down to a multiple of ``grid_step``.
    offset_prior_mean, offset_prior_sd
        Gaussian prior of dE (eV). A reference-foil measurement or the model card narrows it.
    broadenings
        Extra Gaussian broadening FWHM values (eV), marginalised with ``broadening_prior``
        (None: uniform).
    amplitude_prior, background_prior
        (mean, sd) of the Gaussian priors on ``a`` and ``b`` (normalised units).
    model_floor
        1-sigma model-misfit floor added in quadrature to every point (normalised units).
    extrapolation_sd
        Extra 1-sigma where a shifted model is evaluated outside its own energy range (it is
        extended with its end values there).
    grid_step
        Step (eV) of the uniform fine grid onto which candidates are resampled.
    pre_pad
        How far (eV) below the model grid a measured point may lie and still be used.
    full_every, prune_eps
        Between full evaluations (every ``full_every`` points) the posterior is evaluated only
        on offsets/broadenings that held more than ``prune_eps`` of the maximum mass at the last
        full one, plus two cells each side (see :meth:`RankingEngine.result`). 1: always full.
    """

    offset_min: float = -12.0
    offset_max: float = 12.0
    offset_step: float = 0.5
    offset_prior_mean: float = 0.0
    offset_prior_sd: float = 6.0
    broadenings: tuple[float, ...] = (0.0, 1.5, 3.0, 4.5, 6.0)
    broadening_prior: tuple[float, ...] | None = None
    amplitude_prior: tuple[float, float] = (1.0, 0.5)
    background_prior: tuple[float, float] = (0.0, 0.5)
    model_floor: float = 0.03
    extrapolation_sd: float = 0.05
    grid_step: float = 0.5
    pre_pad: float = 40.0
    full_every: int = 25
    prune_eps: float = 1e-10


@dataclass
class RankingResult:
    """One ranking update, candidates ordered by posterior probability (descending)."""

    names: list[str]
    probabilities: np.ndarray
    log_evidence: np.ndarray
    order: np.ndarray
    offset_mean: float
    offset_sd: float
    offset_map: float
    broadening_mean: float
    broadening_map: float
    entropy: float
    n_points: int
    offset_posterior: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    broadening_posterior: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    #: chi^2 per reading of the leading candidate's best fit (noise, model std and floor as
    #: variance): about 1 when it explains the readings, much more when no candidate does.
    top_reduced_chi2: float = float("nan")

    def top(self, k: int = 5) -> list[tuple[str, float, float]]:
        """The first ``k`` (name, probability, log-evidence)."""
        return [
            (self.names[i], float(self.probabilities[i]), float(self.log_evidence[i]))
            for i in range(min(k, len(self.names)))
        ]

    def as_dict(self, k: int | None = None) -> dict:
        """JSON-ready summary (top ``k`` or all)."""
        k = len(self.names) if k is None else min(k, len(self.names))
        return {
            "ranking": [
                {
                    "name": self.names[i],
                    "probability": float(self.probabilities[i]),
                    "log_evidence": float(self.log_evidence[i]),
                }
                for i in range(k)
            ],
            "offset_eV": float(self.offset_mean),
            "offset_sd_eV": float(self.offset_sd),
            "offset_map_eV": float(self.offset_map),
            "broadening_eV": float(self.broadening_mean),
            "broadening_map_eV": float(self.broadening_map),
            "entropy": float(self.entropy),
            "n_points": int(self.n_points),
            "top_reduced_chi2": float(self.top_reduced_chi2),
        }


def linear_gaussian_log_evidence(
    Sw, Sm, Smm, Sy, Smy, Syy, Slogw, n, amplitude_prior=(1.0, 0.5), background_prior=(0.0, 0.5)
):
    """Closed-form log marginal likelihood of ``y = a m + b + noise`` with a, b integrated out.

    Parameters
    ----------
    Sw, Sm, Smm, Sy, Smy, Syy : array_like
        Weighted sums over points with weights ``w_i = 1/var_i``: sum w, sum w m, sum w m^2,
        sum w y, sum w m y, sum w y^2.
    Slogw : array_like
        sum log w_i.
    n : int
        Number of points.
    amplitude_prior, background_prior : (mean, sd)
        Gaussian priors on ``a`` and ``b``.

    Returns
    -------
    ndarray
        ``log p(y | m)`` broadcast over the inputs.

    Notes
    -----
    With ``Phi = [m, 1]``, prior precision ``L0 = diag(1/sa^2, 1/sb^2)`` and mean ``mu0``::

        A = L0 + Phi^T W Phi,   h = L0 mu0 + Phi^T W y
        log Z = -n/2 log 2pi + 1/2 sum log w + 1/2 log det L0 - 1/2 log det A
                - 1/2 (y^T W y + mu0^T L0 mu0 - h^T A^-1 h)
    """
    ma, sa = amplitude_prior
    mb, sb = background_prior
    la, lb = 1.0 / sa**2, 1.0 / sb**2
    A11 = Smm + la
    A12 = Sm
    A22 = Sw + lb
    h1 = Smy + la * ma
    h2 = Sy + lb * mb
    det = A11 * A22 - A12 * A12
    quad = (A22 * h1 * h1 - 2.0 * A12 * h1 * h2 + A11 * h2 * h2) / det
    return (
        -0.5 * n * LOG2PI
        + 0.5 * Slogw
        + 0.5 * (np.log(la) + np.log(lb))
        - 0.5 * np.log(det)
        - 0.5 * (Syy + la * ma * ma + lb * mb * mb - quad)
    )


class RankingTables:
    """The candidates' spectra prepared for ranking: immutable, shared by every run that ranks
    the same candidates with the same settings (see :func:`ranking_tables`).

    The spectra are resampled once onto a uniform fine grid of step ``config.grid_step``,
    broadened for every broadening of the grid, and laid out (W, G, N) so that, for one measured
    point, the shifted spectra of all offsets are a strided (W, O, N) view.

    Parameters
    ----------
    names, energies, mean, std, config, log_prior, dtype
        As for :class:`RankingEngine`.
    """

    def __init__(self, names, energies, mean, std=None, config: RankingConfig | None = None,
                 log_prior=None, dtype=np.float64) -> None:
        self.config = cfg = config or RankingConfig()
        self.names = tuple(str(n) for n in names)
        energies = np.asarray(energies, dtype=float)
        mean = np.atleast_2d(np.asarray(mean, dtype=float))
        std = np.zeros_like(mean) if std is None else np.atleast_2d(np.asarray(std, dtype=float))
        if mean.shape != std.shape or mean.shape != (len(self.names), energies.size):
            raise ValueError(
                f"shapes disagree: names {len(self.names)}, energies {energies.shape}, "
                f"mean {mean.shape}, std {std.shape}"
            )
        if np.any(np.diff(energies) <= 0):
            raise ValueError("candidate energies must increase strictly")
        self.energies = energies
        N = len(self.names)
        h = float(cfg.grid_step)
        stride = max(1, int(round(cfg.offset_step / h)))
        k_lo = int(np.floor(cfg.offset_min / h))
        n_off = int(np.floor((cfg.offset_max - k_lo * h) / (stride * h))) + 1
        self.offsets = (k_lo + stride * np.arange(n_off)) * h
        self.stride = stride
        self.broadenings = np.asarray(cfg.broadenings, dtype=float)
        W = self.broadenings.size

        # fine uniform grid covering the model range plus the pre-edge extension
        g0 = np.floor((energies[0] - cfg.pre_pad) / h) * h
        G = int(np.ceil((energies[-1] - g0) / h)) + 1
        self.g0, self.h = g0, h
        self.grid = g0 + h * np.arange(G)
        #: usable measured-energy window: E + dE inside the grid for every offset
        self.window = (float(self.grid[0] - self.offsets[0]), float(self.grid[-1] - self.offsets[-1] - h))

        outside = (self.grid < energies[0]) | (self.grid > energies[-1])
        mfine = np.empty((N, G))
        vfine = np.empty((N, G))
        for i in range(N):  # np.interp extends with end values
            mfine[i] = np.interp(self.grid, energies, mean[i])
            vfine[i] = np.interp(self.grid, energies, std[i])
        vfine = vfine**2 + np.where(outside, cfg.extrapolation_sd**2, 0.0)[None, :]
        # (W, G, N): candidates innermost, so every per-cell array is (W, O, N)
        self.M = np.empty((W, G, N), dtype=dtype)
        self.V = np.empty((W, G, N), dtype=dtype)
        for j, fw in enumerate(self.broadenings):
            self.M[j] = gaussian_broaden_uniform(mfine, h, fw).T
            self.V[j] = gaussian_broaden_uniform(vfine, h, fw).T
        # differences to the next grid point, for one-multiply linear interpolation
        self.dM = np.zeros_like(self.M)
        self.dM[:, :-1] = np.diff(self.M, axis=1)
        self.dV = np.zeros_like(self.V)
        self.dV[:, :-1] = np.diff(self.V, axis=1)

        lp_off = -0.5 * ((self.offsets - cfg.offset_prior_mean) / cfg.offset_prior_sd) ** 2
        self.log_prior_offset = lp_off - _logsumexp(lp_off)
        if cfg.broadening_prior is None:
            self.log_prior_broadening = np.full(W, -np.log(W))
        else:
            bp = np.asarray(cfg.broadening_prior, dtype=float)
            self.log_prior_broadening = np.log(bp / bp.sum())
        if log_prior is None:
            self.log_prior_candidates = np.full(N, -np.log(max(N, 1)))
        else:
            lpc = np.asarray(log_prior, dtype=float)
            self.log_prior_candidates = lpc - _logsumexp(lpc)
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)


_TABLES: OrderedDict = OrderedDict()
_TABLES_LOCK = threading.Lock()


def ranking_tables(names, energies, mean, std=None, config: RankingConfig | None = None,
                   log_prior=None, dtype=np.float64, *, max_cached: int = 2) -> RankingTables:
    """The :class:`RankingTables` of these candidates, built once and shared, keyed by content.

    The key is a sha256 of the names, energies, spectra, prior, settings and dtype, so two
    callbacks given the same library (or two copies of it) share one immutable table set, and a
    changed library never gets a stale one. The ``max_cached`` most recent sets are kept.
    """
    config = config or RankingConfig()
    digest = hashlib.sha256(repr((tuple(map(str, names)), config, np.dtype(dtype).str)).encode())
    for array in (energies, mean, std, log_prior):
        if array is not None:
            digest.update(np.ascontiguousarray(np.asarray(array, dtype=float)).tobytes())
    key = digest.hexdigest()
    with _TABLES_LOCK:
        tables = _TABLES.get(key)
        if tables is not None:
            _TABLES.move_to_end(key)
            return tables
    tables = RankingTables(names, energies, mean, std, config, log_prior, dtype)
    with _TABLES_LOCK:
        _TABLES[key] = tables
        while len(_TABLES) > max_cached:
            _TABLES.popitem(last=False)
    return tables


class RankingEngine:
    """Incremental Bayesian ranking of candidate spectra against measured points.

    The engine holds the state of ONE ranking (the points and their sufficient statistics);
    the candidate tables it reads are immutable and may be shared (:class:`RankingTables`).

    Parameters
    ----------
    names : list of str
        Candidate names (N).
    energies : ndarray, shape (E,)
        Absolute energy grid (eV, increasing) of the candidate spectra.
    mean, std : ndarray, shape (N, E)
        Predicted normalised spectra and their 1-sigma.
    config : RankingConfig, optional
    log_prior : ndarray, shape (N,), optional
        Log prior over candidates (default uniform).
    dtype : numpy dtype
        Dtype of the candidate tables and per-point arithmetic. float64 (default) is exact to
        rounding; float32 halves memory and time, accumulating 16-point blocks in float32 that
        are flushed into float64 totals (log-evidence then good to ~1e-2).
    tables : RankingTables, optional
        Prepared tables (e.g. from :func:`ranking_tables`) instead of the arrays above.
    """

    def __init__(
        self,
        names=None,
        energies=None,
        mean=None,
        std=None,
        config: RankingConfig | None = None,
        log_prior=None,
        dtype=np.float64,
        *,
        tables: RankingTables | None = None,
    ) -> None:
        if tables is None:
            tables = RankingTables(names, energies, mean, std, config, log_prior, dtype)
        self.tables = t = tables
        self.config = t.config
        self.names = list(t.names)
        self.offsets, self.broadenings, self.grid, self.window = t.offsets, t.broadenings, t.grid, t.window
        self._stride, self._g0, self._h = t.stride, t.g0, t.h
        self._M, self._V, self._dM, self._dV = t.M, t.V, t.dM, t.dV
        self._log_prior_offset = t.log_prior_offset
        self._log_prior_broadening = t.log_prior_broadening
        self._log_prior_cand = t.log_prior_candidates
        self.reset()

    # ------------------------------------------------------------------ state
    @property
    def n_candidates(self) -> int:
        return len(self.names)

    def reset(self) -> None:
        """Forget all points."""
        W, _, N = self._M.shape
        O = self.offsets.size
        # stats: Sw, Sm, Smm, Sy, Smy, Syy, Slogw
        self._S = np.zeros((7, W, O, N))
        if self._M.dtype == np.float64:
            self._Sblock = self._S
            self._flush_every = 1 << 62
        else:  # low-precision partial sums over short blocks, flushed into float64 totals
            self._Sblock = np.zeros((7, W, O, N), dtype=self._M.dtype)
            self._flush_every = 16
        self._n_block = 0
        self._buf = [np.empty((W, O, N), dtype=self._M.dtype) for _ in range(4)]
        self.n_points = 0
        self.n_outside = 0
        self._active = None
        self._pts_E: list[float] = []
        self._pts_y: list[float] = []
        self._pts_v: list[float] = []

    def in_window(self, energy: float) -> bool:
        """Whether a measured energy can be compared with the models for every offset."""
        return bool(self.window[0] <= energy <= self.window[1])

    def add_point(self, energy: float, y: float, var: float) -> bool:
        """Add one measured point (normalised ``y`` with variance ``var``).

        Returns False (and counts it in ``n_outside``) when the energy lies outside
        :attr:`window` or a value is not finite.
        """
        energy, y, var = float(energy), float(y), float(var)
        if not (np.isfinite(energy) and np.isfinite(y) and np.isfinite(var) and var >= 0):
            self.n_outside += 1
            return False
        if not self.in_window(energy):
            self.n_outside += 1
            return False
        pos = (energy + self.offsets[0] - self._g0) / self._h
        j = int(np.floor(pos))
        dt = self._M.dtype.type
        t = dt(pos - j)
        s = self._stride
        sl = slice(j, j + s * (self.offsets.size - 1) + 1, s)
        m, v, w, tmp = self._buf
        np.multiply(self._dM[:, sl], t, out=m)
        m += self._M[:, sl]
        np.multiply(self._dV[:, sl], t, out=v)
        v += self._V[:, sl]
        v += dt(var + self.config.model_floor**2)
        np.reciprocal(v, out=w)
        S = self._Sblock
        yy = dt(y)
        S[0] += w
        np.multiply(w, yy, out=tmp)
        S[3] += tmp
        tmp *= yy
        S[5] += tmp
        np.multiply(w, m, out=tmp)  # w m
        S[1] += tmp
        m *= tmp  # w m^2
        S[2] += m
        tmp *= yy  # w m y
        S[4] += tmp
        np.log(w, out=w)
        S[6] += w
        self._n_block += 1
        if self._n_block >= self._flush_every:
            self._flush()
        self.n_points += 1
        self._pts_E.append(energy)
        self._pts_y.append(y)
        self._pts_v.append(var)
        return True

    def _flush(self) -> None:
        if self._Sblock is self._S:
            self._n_block = 0
            return
        self._S += self._Sblock
        self._Sblock[...] = 0
        self._n_block = 0

    def add_points(self, energy, y, var) -> int:
        """Add several points in order; returns the number used."""
        used = 0
        for e, yy, vv in zip(np.atleast_1d(energy), np.atleast_1d(y), np.atleast_1d(var)):
            used += self.add_point(e, yy, vv)
        return used

    def rebuild(self, energy, y, var) -> int:
        """Replace all points (e.g. after a re-normalisation); same result as adding in order."""
        self.reset()
        return self.add_points(energy, y, var)

    @property
    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(energy, y, var) of the points in use."""
        return np.array(self._pts_E), np.array(self._pts_y), np.array(self._pts_v)

    # --------------------------------------------------------------- posterior
    def log_evidence_cells(self, sl_b: slice = slice(None), sl_o: slice = slice(None)) -> np.ndarray:
        """log p(y | c, dE, w) for every cell, shape (N, W, O) (or the sub-grid given)."""
        return np.moveaxis(self._log_evidence_won(sl_b, sl_o), -1, 0)

    def _log_evidence_won(self, sl_b: slice, sl_o: slice) -> np.ndarray:
        """As :meth:`log_evidence_cells`, laid out (W, O, N)."""
        cfg = self.config
        S = self._S[:, sl_b, sl_o]
        if self._Sblock is not self._S and self._n_block:
            S = S + self._Sblock[:, sl_b, sl_o]  # float64 totals + open float32 block
        return linear_gaussian_log_evidence(
            S[0], S[1], S[2], S[3], S[4], S[5], S[6], self.n_points,
            cfg.amplitude_prior, cfg.background_prior,
        )

    def _need_full(self) -> bool:
        act = self._active
        if act is None or self.config.full_every <= 1:
            return True
        return self.n_points - act["at"] >= self.config.full_every or act["edge_mass"] > 1e-7

    def result(self, full: bool | None = None) -> RankingResult:
        """The posterior over candidates, offset and broadening given the points so far.

        Parameters
        ----------
        full : bool, optional
            Evaluate every (offset, broadening) cell. By default the full grid is evaluated
            every ``config.full_every`` points (and whenever posterior mass reaches the edge of
            the active window); in between, only the offsets and broadenings that held
            posterior mass above ``config.prune_eps`` at the last full evaluation (plus a margin)
            are evaluated. The choice depends on the data only, so results stay deterministic.
        """
        if full is None:
            full = self._need_full()
        if full:
            sl_b, sl_o = slice(0, self.broadenings.size), slice(0, self.offsets.size)
        else:
            sl_b, sl_o = self._active["b"], self._active["o"]
        logZ_c, cell = self._evidence_and_cells(sl_b, sl_o)
        return self._posterior(logZ_c, cell, full, sl_b, sl_o)

    def _evidence_and_cells(self, sl_b: slice, sl_o: slice) -> tuple[np.ndarray, np.ndarray]:
        """Log evidence of each candidate, marginalised over the (broadening, offset) cells in
        ``sl_b, sl_o``, and the (unnormalised) posterior mass of each cell summed over the
        candidates: the heavy part of :meth:`result`, one exp pass over (W, O, N)."""
        L = self._log_evidence_won(sl_b, sl_o)  # (W, O, N)
        L += (self._log_prior_offset[sl_o][None, :] + self._log_prior_broadening[sl_b][:, None])[:, :, None]
        N = L.shape[-1]
        flat = L.reshape(-1, N)
        mx = flat.max(axis=0)
        mx = np.where(np.isfinite(mx), mx, 0.0)
        ex = np.exp(flat - mx[None, :])
        logZ_c = np.log(ex.sum(axis=0)) + mx
        total = _logsumexp(logZ_c + self._log_prior_cand)
        # cell posterior = ex * exp(mx + prior_c - total), summed over candidates
        scale = np.exp(mx + self._log_prior_cand - total)
        cell = (ex * scale[None, :]).sum(axis=1).reshape(L.shape[:2])  # (W, O)
        return logZ_c, cell

    def _posterior(self, logZ_c: np.ndarray, cell: np.ndarray, full: bool, sl_b: slice,
                   sl_o: slice) -> RankingResult:
        """The :class:`RankingResult` from :meth:`_evidence_and_cells`' output."""
        offsets = self.offsets[sl_o]
        broadenings = self.broadenings[sl_b]
        joint = logZ_c + self._log_prior_cand
        post = np.exp(joint - _logsumexp(joint))
        p_off_act = cell.sum(axis=0)
        p_b_act = cell.sum(axis=1)
        p_off_act = p_off_act / p_off_act.sum()
        p_b_act = p_b_act / p_b_act.sum()
        p_off = np.zeros(self.offsets.size)
        p_off[sl_o] = p_off_act
        p_b = np.zeros(self.broadenings.size)
        p_b[sl_b] = p_b_act
        if full:
            self._set_active(p_b, p_off)
        else:
            self._active["edge_mass"] = float(
                (p_off_act[0] if sl_o.start > 0 else 0.0)
                + (p_off_act[-1] if sl_o.stop < self.offsets.size else 0.0)
                + (p_b_act[0] if sl_b.start > 0 else 0.0)
                + (p_b_act[-1] if sl_b.stop < self.broadenings.size else 0.0))
        off_mean = float(np.dot(p_off_act, offsets))
        off_sd = float(np.sqrt(max(np.dot(p_off_act, (offsets - off_mean) ** 2), 0.0)))
        order = np.lexsort((np.arange(post.size), -post))  # stable, deterministic ties
        nz = post[post > 0]
        entropy = float(-np.sum(nz * np.log(nz)))
        return RankingResult(
            names=[self.names[i] for i in order],
            probabilities=post[order],
            log_evidence=logZ_c[order],
            order=order,
            offset_mean=off_mean,
            offset_sd=off_sd,
            offset_map=float(self.offsets[int(np.argmax(p_off))]),
            broadening_mean=float(np.dot(p_b_act, broadenings)),
            broadening_map=float(self.broadenings[int(np.argmax(p_b))]),
            entropy=entropy,
            n_points=self.n_points,
            offset_posterior=p_off,
            broadening_posterior=p_b,
        )

    def _set_active(self, p_b: np.ndarray, p_off: np.ndarray) -> None:
        eps, margin = self.config.prune_eps, 2

        def window(p):
            idx = np.flatnonzero(p > eps * p.max())
            if idx.size == 0:
                return slice(0, p.size)
            return slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + margin + 1, p.size))

        self._active = {"b": window(p_b), "o": window(p_off), "at": self.n_points, "edge_mass": 0.0}

    def model_at(self, index: int, energy, offset: float, broadening: float):
        """Candidate ``index`` mean and 1-sigma at measured ``energy`` for a given offset and
        broadening (nearest grid broadening), for plots."""
        jb = int(np.argmin(np.abs(self.broadenings - broadening)))
        e = np.asarray(energy, dtype=float) + offset
        m = np.interp(e, self.grid, self._M[jb, :, index])
        v = np.interp(e, self.grid, self._V[jb, :, index])
        return m, np.sqrt(np.maximum(v, 0.0))

    def best_fit(self, index: int, offset: float, broadening: float):
        """Posterior-mean amplitude and background (a, b) of candidate ``index``."""
        E, y, var = self.points
        if E.size == 0:
            return self.config.amplitude_prior[0], self.config.background_prior[0]
        m, s = self.model_at(index, E, offset, broadening)
        w = 1.0 / (var + s**2 + self.config.model_floor**2)
        (ma, sa), (mb, sb) = self.config.amplitude_prior, self.config.background_prior
        A = np.array([[np.sum(w * m * m) + sa**-2, np.sum(w * m)], [np.sum(w * m), np.sum(w) + sb**-2]])
        h = np.array([np.sum(w * m * y) + ma / sa**2, np.sum(w * y) + mb / sb**2])
        a, b = np.linalg.solve(A, h)
        return float(a), float(b)

    def reduced_chi2(self, index: int, offset: float, broadening: float) -> float:
        """chi^2 per reading of candidate ``index``'s best fit (:meth:`best_fit`), with the
        variance the likelihood uses (noise + model std^2 + floor^2); NaN without readings.

        Near 1 when the candidate explains the readings; a leading candidate far above it means
        the ranking is the best of poor fits: the sample may be none of the candidates.
        """
        E, y, var = self.points
        if E.size == 0:
            return float("nan")
        m, s = self.model_at(index, E, offset, broadening)
        a, b = self.best_fit(index, offset, broadening)
        r2 = (y - a * m - b) ** 2 / (var + s**2 + self.config.model_floor**2)
        return float(np.sum(r2) / E.size)


def _logsumexp(x: np.ndarray, axis=None) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    mx = np.max(x, axis=axis, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    out = np.log(np.sum(np.exp(x - mx), axis=axis, keepdims=True)) + mx
    if axis is None:
        return float(out.reshape(()))
    return np.squeeze(out, axis=axis)


def rank_spectrum(spectrum: dict, library, config: RankingConfig | None = None,
                  e0: float | None = None, dtype=np.float32):
    """Normalise a measured spectrum and rank ``library`` against it.

    Returns
    -------
    engine, result, normalization
    """
    E = np.asarray(spectrum["energy"], dtype=float)
    order = np.argsort(E, kind="stable")
    E, mu, var = E[order], np.asarray(spectrum["mu"])[order], np.asarray(spectrum["var"])[order]
    nm = normalize(E, mu, e0 if e0 is not None else spectrum.get("e0"))
    y, v = nm.apply(E, mu, var)
    eng = RankingEngine(library.names, library.energies, library.mean, library.std,
                        config=config, dtype=dtype)
    eng.add_points(E, y, v)
    return eng, eng.result(), nm
