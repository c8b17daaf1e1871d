"""Posterior over candidate structures given a (partially) measured spectrum.

For candidate ``c`` with predicted normalised spectrum ``m_c(E)`` and model 1-sigma ``s_c(E)``,
measured points ``(E_i, y_i)`` with counting variance ``sigma_i^2`` are modelled as::

    y_i = a * m_c(E_i + dE; w) + b + delta(E_i) + n_i,   n_i ~ N(0, sigma_i^2 + floor^2)

* ``delta`` -- the theory-experiment discrepancy, CORRELATED over energy: constant within
  blocks of ``discrepancy_block_eV`` of measured energy, independent between blocks, with
  variance ``tau^2 + s_c^2`` (a discrepancy level ``tau`` plus the model's own calibrated
  variance at the block). A systematic error shared by many readings of one feature is counted
  once per block, not once per reading, so three hundred readings do not multiply it into
  certainty. ``tau`` takes a few levels (``discrepancy_sd``), marginalised like the nuisances;
  the last level, much wider (``none_sd``, prior ``none_prior``), is the alternative that the
  sample is *none* of the candidates but resembles them: its posterior mass is ``p_none``.
* ``dE`` -- ONE energy-calibration offset shared by all candidates (a grid with a Gaussian
  prior, marginalised numerically; the prior is set from the data, see
  :func:`data_offset_prior`). A per-candidate shift would erase chemical shifts.
* ``w`` -- extra Gaussian broadening FWHM of the candidates, shared (a small grid, marginalised).
* ``a, b`` -- amplitude (edge-step scale) and background, Gaussian priors; they and every block's
  discrepancy are marginalised analytically (closed-form linear-Gaussian evidence).

The reported ``p_none`` and candidate probabilities are a calibrated read-out of this posterior
where the model's settings have one (``RankingConfig.confidence``, :func:`calibrated_result`):
a logistic model of the ranking's statistics, fitted on validation data, and the candidates'
evidence tempered by the leader's misfit. The explicit alternative's own posterior stays in
``RankingResult.p_none_raw``.

Everything is vectorised over (level, broadening, offset, candidate) cells. The spectra are
resampled once onto a uniform fine grid of step ``h``; offsets are integer multiples of ``h`` so
that, for one measured point, the shifted spectra of all offsets are a strided view of that grid.
A new point changes three sums per cell, one block sum and, per level, three block-marginalised
sums (only its own block's term changes), so an update is O(cells), independent of the number
of points already seen. The same points in the same order give the same results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from models.normalization import flatten, flattening, normalize
from models.spectra import edge_half_height, gaussian_broaden_uniform
from xas_callbacks.likelihood import LOG2PI, add_reading, add_readings, log_evidence, posterior_sums

logger = logging.getLogger(__name__)

__all__ = [
    "rank_spectrum",
    "data_offset_prior",
    "RankingConfig",
    "RankingResult",
    "RankingEngine",
    "RankingTables",
    "ranking_tables",
    "linear_gaussian_log_evidence",
]


@dataclass(frozen=True)
class RankingConfig:
    """Settings of the ranking model.

    Parameters
    ----------
    offset_min, offset_max, offset_step
        Grid of the common calibration offset dE (eV); measured E corresponds to model E + dE.
        ``offset_step`` is rounded to a multiple of ``grid_step``; the grid always holds
        ``offset_min`` rounded down to a multiple of ``grid_step``. The range covers absolute
        energy errors of computed spectra of +-15 eV and more around the data's own estimate.
    offset_prior_mean, offset_prior_sd
        Gaussian prior of dE (eV) until the data set one (:func:`data_offset_prior`).
    broadenings
        Extra Gaussian broadening FWHM values (eV) of the candidates, marginalised with
        ``broadening_prior`` (None: uniform).
    amplitude_prior, background_prior
        (mean, sd) of the Gaussian priors on ``a`` and ``b`` (normalised units).
    model_floor, model_white
        The white (uncorrelated within a block) part of the misfit, added in quadrature to every
        reading's counting noise: a constant 1-sigma (normalised units) and a fraction of the
        candidates' typical (median) model 1-sigma at the reading's energy.
    discrepancy_block_eV
        Width (eV of measured energy) of the blocks within which the discrepancy is one value:
        its correlation length.
    discrepancy_sd, discrepancy_prior
        1-sigma levels of the discrepancy when the sample IS the candidate (normalised units; the
        candidate's own calibrated model variance is added to each), marginalised with their
        prior weights (None: equal).
    temperature
        The log evidences are divided by it (1: none): what the block model leaves of the
        correlation of the misfit between blocks is absorbed here.
    none_sd, none_prior, none_gamma
        "None of the candidates" is an explicit alternative: the sample's spectrum is a
        candidate's plus a wide discrepancy of 1-sigma ``none_sd`` (a spectrum of the same
        family that the library lacks), with prior probability ``none_prior``; ``none_gamma``
        adds half the excess of the cell's misfit ``D^2`` over the number of readings (``D^2``
        is chi-square distributed with that many degrees of freedom when the cell is the truth)
        to its evidence, so that a misfit beyond the typical one counts for the alternative.
    confidence, confidence_temperature, confidence_chi2_power
        The calibrated read-out ("How the ranking treats real measurements" in the README), set
        on validation data by ``xas-bench calibrate``. The log evidences are read at the
        temperature ``T = confidence_temperature * max(1, chi2)**confidence_chi2_power``, where
        ``chi2`` is the leading candidate's reduced chi^2: a misfit beyond the noise scales the
        evidence down, as inflating the errors by it would. ``confidence`` is the intercept and
        the coefficients of a logistic model that maps the statistics of the ranking named in
        :data:`CONFIDENCE_FEATURES` to the probability that the sample is among the candidates
        (``1 - p_none``); the candidates share it in proportion to ``exp(log evidence / T)``.
        None (the default): the explicit alternative's posterior is reported as it is.
    flatten
        Flatten measured and computed spectra alike (:func:`models.normalization.flatten`): the
        same post-edge polynomial removed over the same window relative to each one's own edge
        (from 30 eV above it to the end of the candidates' grid).
    extrapolation_sd
        Extra 1-sigma where a shifted model is evaluated outside its own energy range (it is
        extended with its end values there).
    grid_step
        Step (eV) of the uniform fine grid onto which candidates are resampled.
    pre_pad
        How far (eV) below the model grid a measured point may lie and still be used.
    full_every, prune_eps, prune_mass
        Pruning. Full evaluations happen when the number of points has doubled since the last
        one, at least every ``full_every`` points, whenever posterior mass reaches the edge of
        the active window, and whenever the pruned mass could exceed ``prune_mass`` (below).
        In between, only the offsets and broadenings that held more than ``prune_eps`` of the
        maximum mass at the last full evaluation (plus two cells each side), and the candidates
        above ``prune_eps`` of the leader (at least the 32 leading ones), are updated and
        evaluated; the others catch up at the next full evaluation. 1: always full.
        The bound: a reading's predictive density in any cell is at most ``sqrt(w / 2 pi)``
        (its white variance ``1/w`` is independent of everything before it), so the pruned
        cells' total mass can grow, relative to the evaluated ones, by at most that per reading
        (tempered; see :func:`reading_log_bound`). A pruned evaluation is used only while this
        bound on the pruned cells' exact posterior mass is at most ``prune_mass`` (else the
        update is full); pruned candidates are then reported with probability 0, so every
        probability (each candidate's, "none of these", each offset's and broadening's) is
        within ``prune_mass`` of the exact posterior (total variation <= ``prune_mass``). A
        pruning whose mass at the full evaluation exceeds ``PRUNE_HEADROOM * prune_mass`` is
        not made. The bound is in :attr:`RankingResult.pruned_mass_bound`.

    The discrepancy and offset settings were chosen on validation data (README, "How the ranking
    treats real measurements").
    """

    offset_min: float = -20.0
    offset_max: float = 20.0
    offset_step: float = 0.5
    offset_prior_mean: float = 0.0
    offset_prior_sd: float = 8.0
    broadenings: tuple[float, ...] = (0.0, 1.5, 3.0, 4.5, 6.0)
    broadening_prior: tuple[float, ...] | None = None
    amplitude_prior: tuple[float, float] = (1.0, 0.5)
    background_prior: tuple[float, float] = (0.0, 0.5)
    model_floor: float = 0.01
    model_white: float = 0.5
    discrepancy_block_eV: float = 6.0
    discrepancy_sd: tuple[float, ...] = (0.02, 0.06)
    discrepancy_prior: tuple[float, ...] | None = None
    temperature: float = 1.0
    none_sd: float = 0.1
    none_prior: float = 0.1
    none_gamma: float = 0.0
    confidence: tuple[float, ...] | None = None
    confidence_temperature: float = 1.0
    confidence_chi2_power: float = 0.0
    flatten: bool = True
    extrapolation_sd: float = 0.05
    grid_step: float = 0.5
    pre_pad: float = 20.0
    full_every: int = 100
    prune_eps: float = 1e-10
    prune_mass: float = 1e-6

    def __post_init__(self) -> None:
        if self.confidence is not None:
            c = self.confidence
            if (not isinstance(c, (tuple, list)) or len(c) != len(CONFIDENCE_FEATURES) + 1
                    or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in c)):
                raise ValueError(f"confidence must be {len(CONFIDENCE_FEATURES) + 1} finite numbers (intercept, then "
                                 f"one per {', '.join(CONFIDENCE_FEATURES)}), got {c!r}")
            object.__setattr__(self, "confidence", tuple(float(v) for v in c))
        t = self.confidence_temperature
        if not (isinstance(t, (int, float)) and np.isfinite(t) and t > 0):
            raise ValueError(f"confidence_temperature must be a finite number > 0, got {t!r}")
        k = self.confidence_chi2_power
        if not (isinstance(k, (int, float)) and np.isfinite(k) and k >= 0):
            raise ValueError(f"confidence_chi2_power must be a finite number >= 0, got {k!r}")

    @classmethod
    def for_model(cls, model: str | None, **overrides) -> "RankingConfig":
        """The settings chosen on validation data for candidates predicted by ``model``
        (:data:`SETTINGS_FILE`, written by ``xas-bench calibrate``), with ``overrides``; the
        class defaults for a model the file does not name (e.g. computed FEFF spectra).
        Settings the class rejects raise a ValueError naming the file and the model."""
        settings = _calibrated_settings().get(str(model), {})
        if settings:
            _warn_if_retrained(str(model))
        try:
            return cls(**{**settings, **overrides})
        except (TypeError, ValueError) as err:
            if not settings:
                raise
            raise ValueError(f"{SETTINGS_FILE}: the settings of model {model!r} are not usable ({err}); "
                             f"rerun `xas-bench calibrate --model {model} --write`") from err

    @classmethod
    def for_library(cls, library, **overrides) -> "RankingConfig":
        """:meth:`for_model` of the model that predicted ``library`` (its provenance)."""
        return cls.for_model(getattr(library, "provenance", {}).get("model"), **overrides)

    @property
    def levels(self) -> np.ndarray:
        """Discrepancy 1-sigma of every level, "none of these" last."""
        return np.array(list(self.discrepancy_sd) + [self.none_sd], dtype=float)

    @property
    def log_prior_levels(self) -> np.ndarray:
        """Log prior of every level: the candidate levels share ``1 - none_prior``."""
        k = len(self.discrepancy_sd)
        w = np.ones(k) if self.discrepancy_prior is None else np.asarray(self.discrepancy_prior, dtype=float)
        return np.log(np.append((1.0 - self.none_prior) * w / w.sum(), self.none_prior))


#: Per-model ranking settings chosen on validation data by ``xas-bench calibrate --write``.
SETTINGS_FILE = Path(__file__).with_name("ranking_settings.json")


def _calibrated_settings() -> dict:
    """model -> RankingConfig fields, from :data:`SETTINGS_FILE` (tuples restored)."""
    if not SETTINGS_FILE.is_file():
        return {}
    raw = json.loads(SETTINGS_FILE.read_text())
    known = {f.name for f in fields(RankingConfig)}
    return {model: {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
            for model, values in raw.get("models", {}).items()}


_WARNED: set = set()


def _warn_if_retrained(model: str) -> None:
    """Say (once) when ``model``'s weights are not the ones its settings were calibrated with."""
    if model in _WARNED:
        return
    _WARNED.add(model)
    recorded = json.loads(SETTINGS_FILE.read_text())["models"][model].get("weights_sha256")
    try:
        from models.predictor import model_card

        current = model_card(model).get("weights_sha256")
    except Exception:  # noqa: BLE001 -- a model without a card has nothing to compare
        return
    if recorded and current and recorded != current:
        logger.warning("ranking settings of %r were calibrated for other weights (%s..., now %s...): run "
                       "`xas-bench calibrate --model %s --write`", model, recorded[:12], current[:12], model)


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
    #: probability that the sample is none of the candidates (``probabilities`` sum to 1 - p_none);
    #: the calibrated read-out's where the settings have one (``RankingConfig.confidence``)
    p_none: float = 0.0
    #: the explicit "none of these" alternative's own posterior, before the calibrated read-out
    p_none_raw: float = float("nan")
    #: its log odds, log(p_none_raw / (1 - p_none_raw)), computed without underflow
    log_odds_none_raw: float = float("nan")
    #: the statistics the calibrated read-out used (:data:`CONFIDENCE_FEATURES`); empty without it
    confidence_features: dict = field(default_factory=dict)
    #: posterior of the discrepancy levels (``RankingConfig.levels``), "none of these" last
    level_posterior: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    #: what the caller should know: e.g. the offset posterior reaching the end of its grid
    warnings: list[str] = field(default_factory=list)
    #: Gaussian FWHM (eV) the measurement was broadened with because it was sharper than the
    #: candidates (high-energy-resolution fluorescence); 0 when it was not
    measurement_broadening_eV: float = 0.0
    #: the offset prior in use: mean and sd (eV) and where it came from ("foil", "edges", "config")
    offset_prior: tuple = (0.0, 0.0, "config")
    #: upper bound on the exact posterior mass of the cells and candidates this update did not
    #: evaluate (reported with probability 0; their ``log_evidence`` is an upper bound): 0 when
    #: every cell was evaluated (``RankingConfig.prune_mass``)
    pruned_mass_bound: float = 0.0

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
            "p_none": float(self.p_none),
            "p_none_raw": float(self.p_none_raw),
            "log_odds_none_raw": float(self.log_odds_none_raw),
            "confidence_features": {k: float(v) for k, v in self.confidence_features.items()},
            "pruned_mass_bound": float(self.pruned_mass_bound),
            "measurement_broadening_eV": float(self.measurement_broadening_eV),
            "offset_prior": {"mean_eV": float(self.offset_prior[0]), "sd_eV": float(self.offset_prior[1]),
                             "from": str(self.offset_prior[2])},
            "warnings": list(self.warnings),
        }


#: The statistics of a ranking that the calibrated read-out (``RankingConfig.confidence``) maps
#: to the probability that the sample is among the candidates, in the order of its coefficients:
#: the explicit alternative's log odds ``log p_none_raw / (1 - p_none_raw)`` over the read-out
#: temperature ``T`` (:func:`readout_temperature`); the log of the leading candidate's reduced
#: chi^2 (:meth:`RankingEngine.reduced_chi2`); the log-evidence margin of the leader over the
#: second, over ``T``; ``log(1 + blocks)``, the independent discrepancy blocks measured. Each is
#: clipped to +-:data:`CONFIDENCE_CLIP`.
CONFIDENCE_FEATURES = ("log_odds_none", "log_reduced_chi2", "log_evidence_margin", "log_blocks")
CONFIDENCE_CLIP = 30.0
#: The log odds and the margin are clipped to +-this (nats) before they are divided by ``T``: a
#: pruned update (``prune_mass`` 1e-6 of the mass, candidates below ``prune_eps`` of the leader,
#: both far beyond e^-10) then gives the same statistics as the exact one, so the read-out keeps
#: the pruned posterior within its bound; beyond 10 nats neither says more.
CONFIDENCE_LOG_CLIP = 10.0


def readout_temperature(config: RankingConfig, top_reduced_chi2: float) -> float:
    """``confidence_temperature * max(1, chi2)**confidence_chi2_power`` (chi2 NaN: taken as 1)."""
    chi2 = float(top_reduced_chi2) if np.isfinite(top_reduced_chi2) else 1.0
    return float(config.confidence_temperature * max(1.0, chi2) ** config.confidence_chi2_power)


def confidence_features(log_odds_none: float, log_posterior_sorted, top_reduced_chi2: float, n_blocks: int,
                        temperature: float = 1.0) -> np.ndarray:
    """The :data:`CONFIDENCE_FEATURES` of a ranking from the explicit alternative's raw log odds,
    the candidates' log evidence plus log prior in ranking order, the leader's reduced chi^2,
    the number of discrepancy blocks measured and the read-out temperature."""
    log_odds = float(np.clip(log_odds_none, -CONFIDENCE_LOG_CLIP, CONFIDENCE_LOG_CLIP)) if not np.isnan(log_odds_none) else 0.0
    chi2 = float(top_reduced_chi2)
    log_chi2 = float(np.log(max(chi2, 1e-6))) if np.isfinite(chi2) else 0.0
    lp = np.asarray(log_posterior_sorted, dtype=float)
    margin = float(lp[0] - lp[1]) if lp.size > 1 and np.all(np.isfinite(lp[:2])) else np.inf
    margin = min(margin, CONFIDENCE_LOG_CLIP)
    x = np.array([log_odds / temperature, log_chi2, margin / temperature, np.log1p(max(int(n_blocks), 0))])
    return np.clip(x, -CONFIDENCE_CLIP, CONFIDENCE_CLIP)


def p_in_candidates(config: RankingConfig, features) -> float:
    """The calibrated probability that the sample is among the candidates (1 - ``p_none``)."""
    c = np.asarray(config.confidence, dtype=float)
    z = float(c[0] + np.dot(c[1:], features))
    return float(0.5 * (1.0 + np.tanh(0.5 * z)))  # the logistic function, without overflow


def calibrated_result(res: "RankingResult", config: RankingConfig, log_prior_sorted, n_blocks: int) -> "RankingResult":
    """``res`` read out with the calibrated confidence (``config.confidence``; unchanged without
    it, or without readings): ``p_none = 1 - p_in`` from :func:`p_in_candidates`, the candidates'
    probabilities ``p_in`` times the softmax of their log evidence plus log prior over the
    read-out temperature (:func:`readout_temperature`). The raw ``p_none`` stays in ``p_none_raw``.

    Candidates the update did not evaluate (probability 0, log evidence an upper bound) stay at 0;
    their tempered share, from those upper bounds, is added to ``pruned_mass_bound``.
    ``log_prior_sorted``: the candidates' log prior in ``res``'s order.
    """
    res.p_none_raw = float(res.p_none)
    if config.confidence is None or res.n_points == 0 or not len(res.names):
        return res
    lp = np.asarray(res.log_evidence, dtype=float) + np.asarray(log_prior_sorted, dtype=float)
    temperature = readout_temperature(config, res.top_reduced_chi2)
    x = confidence_features(res.log_odds_none_raw, lp, res.top_reduced_chi2, n_blocks, temperature)
    p_in = p_in_candidates(config, x)
    s = lp / temperature
    s = s - np.max(s[np.isfinite(s)]) if np.isfinite(s).any() else np.zeros_like(s)
    q = np.exp(np.where(np.isfinite(s), s, -np.inf))
    pruned = (np.asarray(res.probabilities) == 0) & (res.pruned_mass_bound > 0)
    pruned_share = float(q[pruned].sum() / q.sum()) if pruned.any() else 0.0
    q[pruned] = 0.0
    q = q / q.sum()
    probs = p_in * q
    nz = probs[probs > 0]
    return replace(
        res, probabilities=probs, p_none=1.0 - p_in, entropy=float(-np.sum(nz * np.log(nz))),
        confidence_features={**dict(zip(CONFIDENCE_FEATURES, map(float, x))), "temperature": temperature},
        pruned_mass_bound=max(float(res.pruned_mass_bound), p_in * pruned_share))


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


#: A measurement whose edge rises within this fraction of the candidates' 20-80 % rise (their
#: :data:`HERFD_RISE_PERCENTILE`-th percentile) is treated as sharper than them (HERFD); the
#: models' own predictions are smoother than FEFF's, so ordinary transmission data must not count.
HERFD_RISE_RATIO = 0.5
#: Which of the candidates' rises the measurement's is held against: a low percentile, because a
#: strong white line just above the edge shortens a rise (a candidate measured as it is computed
#: must not count as sharper), while a HERFD measurement is sharper than the core-hole lifetime
#: broadening that every computed spectrum carries.
HERFD_RISE_PERCENTILE = 10.0

#: Gaussian FWHM (eV) a measurement sharper than the candidates may be broadened with.
MEASUREMENT_BROADENINGS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)

#: Where the flattening window starts above the edge (eV), as Larch's default ``norm1``.
FLATTEN_FROM_EV = 30.0

#: 1-sigma (eV) of aligning two edges of different shape at half height (data_offset_prior).
OFFSET_ALIGNMENT_SD = 3.0

#: Width (eV) over which a candidate's first value decays into the pre-edge below its grid.
PRE_EDGE_DECAY_EV = 2.0

#: Candidates always evaluated between full evaluations, however small their posterior.
MIN_ACTIVE_CANDIDATES = 32

#: A pruning is made only when the pruned mass is at most this fraction of ``prune_mass``: the
#: rest is the room the bound may grow into before the next full evaluation.
PRUNE_HEADROOM = 1e-3


def reading_log_bound(w: float, temperature: float = 1.0, none_gamma: float = 0.0) -> float:
    """Upper bound on how much one reading of weight ``w`` (1 / its white variance) can raise
    the tempered log evidence of any cell: ``(log sqrt(w / 2 pi) + max(0, -gamma / 2)) / T``.

    In a cell the reading is ``a m + b + delta + n`` with ``n ~ N(0, 1/w)`` independent of the
    amplitude, background, discrepancy and earlier readings, so its predictive density given the
    earlier readings is Gaussian with variance at least ``1/w``. The "none of these" level adds
    ``gamma / 2`` times the reading's squared standardised innovation less one; for
    ``gamma <= 1`` the sum stays below the bound; for ``gamma > 1`` there is none (inf).
    """
    if none_gamma > 1.0:
        return float("inf")
    return (0.5 * float(np.log(w / (2.0 * np.pi))) + max(0.0, -0.5 * none_gamma)) / temperature


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
        #: post-edge window (eV above each spectrum's own edge) over which measured and computed
        #: spectra are flattened alike; None: not flattened
        self.flat_window = None
        if cfg.flatten and N:
            edges = np.array([edge_half_height(energies, m) for m in mean])
            span = float(np.nanmedian(energies[-1] - edges)) - 5.0 if np.isfinite(edges).any() else 0.0
            if span > FLATTEN_FROM_EV + 10.0:
                self.flat_window = (FLATTEN_FROM_EV, span)
                mean = np.array([flatten(energies, m, e, flattening(energies, m, e, self.flat_window))
                                 if np.isfinite(e) else m for m, e in zip(mean, edges)])
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
        vfine = np.empty((N, G))
        mfine = extended(energies, mean, self.grid)
        for i in range(N):  # np.interp extends with end values
            vfine[i] = np.interp(self.grid, energies, std[i])
        vfine = vfine**2 + np.where(outside, cfg.extrapolation_sd**2, 0.0)[None, :]
        # (W, G, N): candidates innermost, so every per-cell array is (W, O, N)
        self.M = np.empty((W, G, N), dtype=dtype)
        self.V = np.empty((W, G, N), dtype=dtype)
        for j, fw in enumerate(self.broadenings):
            self.M[j] = gaussian_broaden_uniform(mfine, h, fw).T
            self.V[j] = gaussian_broaden_uniform(vfine, h, fw).T
        #: the candidates' median model variance (no extra broadening) on the fine grid
        self.median_var = np.median(self.V[0], axis=1).astype(float)
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


    def take(self, indices) -> "RankingTables":
        """The tables of the candidates ``indices`` only (copies), with this set's median model
        variance (so readings get the same weights) and the candidates' prior renormalised
        over them."""
        idx = np.asarray(indices, dtype=np.int64)
        sub = object.__new__(RankingTables)
        sub.__dict__.update(self.__dict__)
        sub.names = tuple(self.names[i] for i in idx)
        run = idx.size and idx[-1] - idx[0] + 1 == idx.size and np.all(np.diff(idx) == 1)
        pick = slice(int(idx[0]), int(idx[-1]) + 1) if run else idx  # a range: a copy, not a gather
        for name in ("M", "V", "dM", "dV"):
            setattr(sub, name, np.ascontiguousarray(getattr(self, name)[:, :, pick]))
        lp = self.log_prior_candidates[idx]
        sub.log_prior_candidates = lp - _logsumexp(lp) if idx.size else lp
        for value in vars(sub).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
        return sub


_TABLES: OrderedDict = OrderedDict()
_TABLES_LOCK = threading.Lock()


#: The settings the tables depend on; the rest (discrepancy, floor, priors of a and b) only act
#: at ranking time, so configurations that differ in those share tables.
TABLE_SETTINGS = ("offset_min", "offset_max", "offset_step", "offset_prior_mean", "offset_prior_sd", "broadenings",
                  "broadening_prior", "flatten", "extrapolation_sd", "grid_step", "pre_pad")


def ranking_tables(names, energies, mean, std=None, config: RankingConfig | None = None,
                   log_prior=None, dtype=np.float64, *, max_cached: int = 2) -> RankingTables:
    """The :class:`RankingTables` of these candidates, built once and shared, keyed by content.

    The key is a sha256 of the names, energies, spectra, prior, settings and dtype, so two
    callbacks given the same library (or two copies of it) share one immutable table set, and a
    changed library never gets a stale one. The ``max_cached`` most recent sets are kept.
    """
    config = config or RankingConfig()
    table_settings = tuple(getattr(config, name) for name in TABLE_SETTINGS)
    digest = hashlib.sha256(repr((tuple(map(str, names)), table_settings, np.dtype(dtype).str)).encode())
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
        Prepared tables (e.g. from :func:`ranking_tables`) instead of the arrays above; ``config``
        may then differ from theirs in the settings that act at ranking time only.
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
        self.config = config if config is not None else t.config
        if any(getattr(self.config, name) != getattr(t.config, name) for name in TABLE_SETTINGS):
            raise ValueError("config and tables disagree on the settings the tables were built with")
        self.names = list(t.names)
        self.offsets, self.broadenings, self.grid, self.window = t.offsets, t.broadenings, t.grid, t.window
        self._stride, self._g0, self._h = t.stride, t.g0, t.h
        self._M, self._V, self._dM, self._dV = t.M, t.V, t.dM, t.dV
        self._log_prior_offset = t.log_prior_offset
        self._log_prior_broadening = t.log_prior_broadening
        self._log_prior_cand = t.log_prior_candidates
        self.offset_prior = (t.config.offset_prior_mean, t.config.offset_prior_sd)
        self._lp_levels = self.config.log_prior_levels
        self.reset()

    # ------------------------------------------------------------------ state
    @property
    def n_candidates(self) -> int:
        return len(self.names)

    def reset(self, keep_window: bool = False) -> None:
        """Forget all points (``keep_window``: keep updating only the cells the last posterior
        found alive, as :meth:`rebuild` does; the others catch up at the next full evaluation)."""
        W, _, N = self._M.shape
        O, L = self.offsets.size, self.config.levels.size
        self._S = np.zeros((W, O, N, 3))  # sum w m, sum w m^2, sum w m y
        self._Q = np.zeros((W, O, N, L, 3))  # block-marginalised sums, see xas_callbacks.likelihood
        self._T: dict[int, np.ndarray] = {}  # block -> sum over its readings of w m, per cell
        self._F: dict[int, float] = {}  # block -> sum w
        self._Fy: dict[int, float] = {}  # block -> sum w y
        self._P: dict[int, np.ndarray] = {}  # block -> prior precision of its discrepancy, (L, N)
        self._shared = np.zeros((L, 3, N))  # sum_k F^2/B, F Fy/B, Fy^2/B per level and candidate
        self._logdet = np.zeros((L, N))  # sum_k log(B_k / P_k)
        self._S0 = self._Sy = self._Syy = self._Slogw = 0.0
        self._readings: list[tuple] = []  # what add_reading needs, to bring stale cells up to date
        if not keep_window or getattr(self, "_active", None) is None:
            self._live = (0, W, 0, O, np.arange(N))
            self._active = None
            self._compact = None
        else:  # the pruned cells' mass was for other readings: the next evaluation is full
            self._active["log_pruned"] = np.inf
            if self._compact is not None:
                self._make_compact(self._compact["b"], self._compact["o"], self._compact["n"])
        self._log_bound = 0.0  # sum over the readings of reading_log_bound
        self._stale_from = 0  # readings from here on are missing in the cells outside _live
        self.n_points = 0
        self.n_outside = 0
        self._pts_E: list[float] = []
        self._pts_y: list[float] = []
        self._pts_v: list[float] = []

    @property
    def log_bound(self) -> float:
        """The sum of :func:`reading_log_bound` over the readings so far."""
        return self._log_bound

    def set_offset_prior(self, mean: float, sd: float) -> None:
        """Centre the Gaussian prior of the common offset on ``mean`` eV with ``sd`` (e.g. from
        :func:`data_offset_prior`); the sufficient statistics are unchanged."""
        if not (np.isfinite(mean) and np.isfinite(sd) and sd > 0):
            raise ValueError(f"offset prior needs a finite mean and a positive sd, got {mean}, {sd}")
        lp = -0.5 * ((self.offsets - mean) / sd) ** 2
        self._log_prior_offset = lp - _logsumexp(lp)
        self.offset_prior = (float(mean), float(sd))
        self._active = None

    def in_window(self, energy: float) -> bool:
        """Whether a measured energy can be compared with the models for every offset."""
        return bool(self.window[0] <= energy <= self.window[1])

    def block_of(self, energy: float) -> int:
        """The discrepancy block of a measured energy."""
        return int(np.floor((energy - self.window[0]) / self.config.discrepancy_block_eV))

    def _block_precision(self, block: int) -> np.ndarray:
        """Prior precision (L, N) of a block's discrepancy: 1 / (level^2 + the candidate's model
        variance at the block's centre, read at the prior's offset)."""
        cfg = self.config
        centre = self.window[0] + (block + 0.5) * cfg.discrepancy_block_eV + self.offset_prior[0]
        return 1.0 / (cfg.levels[:, None] ** 2 + self._variance_at(centre)[None, :])

    def _variance_at(self, energy: float) -> np.ndarray:
        """The candidates' model variance (no extra broadening) at model energy ``energy``."""
        pos = min(max((energy - self._g0) / self._h, 0.0), self._V.shape[1] - 1.0)
        j = min(int(pos), self._V.shape[1] - 2)
        return np.asarray(self._V[0, j] + (pos - j) * self._dV[0, j], dtype=float)

    def add_point(self, energy: float, y: float, var: float) -> bool:
        """Add one measured point (normalised ``y`` with variance ``var``).

        Returns False (and counts it in ``n_outside``) when the energy lies outside
        :attr:`window` or a value is not finite.
        """
        reading = self._prepare(energy, y, var)
        if reading is None:
            return False
        j, t, w, y, k, coef = reading
        if k not in self._T:
            self._T[k] = np.zeros(self._S.shape[:3])
        c = self._compact
        if c is None:
            add_reading(self._M, self._dM, j, t, self._stride, w, y, self._S, self._T[k], self._Q, coef, *self._live)
        else:  # only the live cells, in their contiguous copy
            if k not in c["T"]:
                c["T"][k] = np.zeros(c["S"].shape[:3])
            add_reading(c["M"], c["dM"], j, t, self._stride, w, y, c["S"],
                        c["T"][k], c["Q"], np.ascontiguousarray(coef[:, :, c["n"]]), 0, c["S"].shape[0], 0,
                        c["S"].shape[1], c["every"])
        return True

    def _prepare(self, energy: float, y: float, var: float):
        """Everything of a reading but the per-cell sums: its weight, block and coefficients,
        and the sums shared by all cells. None (counted in ``n_outside``) when it is unusable."""
        energy, y, var = float(energy), float(y), float(var)
        if not (np.isfinite(energy) and np.isfinite(y) and np.isfinite(var) and var >= 0):
            self.n_outside += 1
            return None
        if not self.in_window(energy):
            self.n_outside += 1
            return None
        pos = (energy + self.offsets[0] - self._g0) / self._h
        j = int(np.floor(pos))
        cfg = self.config
        typical = np.interp(energy + self.offset_prior[0], self.grid, self.tables.median_var)
        w = 1.0 / (var + cfg.model_floor**2 + cfg.model_white**2 * typical)
        k = self.block_of(energy)
        if k not in self._F:
            self._F[k] = self._Fy[k] = 0.0
            self._P[k] = self._block_precision(k)
        P = self._P[k]
        f_old, fy_old = self._F[k], self._Fy[k]
        f_new, fy_new = f_old + w, fy_old + w * y
        inv_old, inv_new = 1.0 / (f_old + P), 1.0 / (f_new + P)
        coef = np.stack([inv_new, inv_old, f_new * inv_new, f_old * inv_old, fy_new * inv_new, fy_old * inv_old], axis=1)
        reading = (j, float(pos - j), w, y, k, coef)
        self._readings.append(reading)
        self._shared[:, 0] += f_new * f_new * inv_new - f_old * f_old * inv_old
        self._shared[:, 1] += f_new * fy_new * inv_new - f_old * fy_old * inv_old
        self._shared[:, 2] += fy_new * fy_new * inv_new - fy_old * fy_old * inv_old
        self._logdet += np.log(f_new + P) - np.log(f_old + P)
        self._F[k], self._Fy[k] = f_new, fy_new
        self._S0 += w
        self._Sy += w * y
        self._Syy += w * y * y
        self._Slogw += np.log(w)
        self._log_bound += reading_log_bound(w, cfg.temperature, cfg.none_gamma)
        self.n_points += 1
        self._pts_E.append(energy)
        self._pts_y.append(y)
        self._pts_v.append(var)
        return reading

    def add_points(self, energy, y, var) -> int:
        """Add several points in order; returns the number used. The same sums as
        :meth:`add_point` for each in turn, in one pass over the cells (unless pruned)."""
        triples = zip(np.atleast_1d(energy), np.atleast_1d(y), np.atleast_1d(var))
        if self._compact is not None:
            return sum(self.add_point(e, yy, vv) for e, yy, vv in triples)
        readings = [r for r in (self._prepare(e, yy, vv) for e, yy, vv in triples) if r is not None]
        if readings:
            blocks = sorted({r[4] for r in readings})
            T = np.zeros((len(blocks),) + self._S.shape[:3])
            for i, k in enumerate(blocks):
                if k in self._T:
                    T[i] = self._T[k]
            row = {k: i for i, k in enumerate(blocks)}
            add_readings(self._M, self._dM, np.array([r[0] for r in readings], dtype=np.int64),
                         np.array([r[1] for r in readings]), self._stride, np.array([r[2] for r in readings]),
                         np.array([r[3] for r in readings]), np.array([row[r[4]] for r in readings], dtype=np.int64),
                         self._S, T, self._Q, np.stack([r[5] for r in readings]), *self._live)
            for i, k in enumerate(blocks):
                self._T[k] = T[i]
        return len(readings)

    def rebuild(self, energy, y, var) -> int:
        """Replace all points (e.g. after a re-normalisation); same result as adding in order."""
        self.reset(keep_window=True)
        return self.add_points(energy, y, var)

    def _catch_up(self) -> None:
        """Bring the cells outside the live region up to date: replay the readings they missed."""
        W, O, N = self._S.shape[:3]
        c = self._compact
        if c is not None:  # the live cells' sums back into the full arrays
            b, o, n = c["b"], c["o"], c["n"]
            self._S[b, o][:, :, n] = c["S"]
            self._Q[b, o][:, :, n] = c["Q"]
            for k, T in c["T"].items():
                self._T[k][b, o][:, :, n] = T
            self._compact = None
        b_lo, b_hi, o_lo, o_hi, live = self._live
        every, others = np.arange(N), np.setdiff1d(np.arange(N), live)
        stale = [r for r in ((0, b_lo, 0, O, every), (b_hi, W, 0, O, every), (b_lo, b_hi, 0, o_lo, every),
                             (b_lo, b_hi, o_hi, O, every), (b_lo, b_hi, o_lo, o_hi, others))
                 if r[0] < r[1] and r[2] < r[3] and r[4].size]
        if stale:
            for j, t, w, y, k, coef in self._readings[self._stale_from:]:
                for region in stale:
                    add_reading(self._M, self._dM, j, t, self._stride, w, y, self._S, self._T[k], self._Q, coef,
                                *region)
        self._live = (0, W, 0, O, every)
        self._stale_from = len(self._readings)

    @property
    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(energy, y, var) of the points in use."""
        return np.array(self._pts_E), np.array(self._pts_y), np.array(self._pts_v)

    # --------------------------------------------------------------- posterior
    def log_evidence_cells(self, sl_b: slice = slice(None), sl_o: slice = slice(None)) -> np.ndarray:
        """log p(y | level, c, w, dE) for every cell, shape (L, N, W, O) (or the sub-grid given)."""
        self._catch_up()
        b = range(self.broadenings.size)[sl_b]
        o = range(self.offsets.size)[sl_o]
        out = log_evidence(self._S, self._Q, self._shared_effective(), self._logdet, float(self.n_points),
                           float(self._Slogw), self._ab_priors(), b.start, b.stop, o.start, o.stop)
        return np.moveaxis(out, -1, 1)

    def _shared_effective(self) -> np.ndarray:
        return np.stack([self._S0 - self._shared[:, 0], self._Sy - self._shared[:, 1],
                         self._Syy - self._shared[:, 2]], axis=1)

    def _ab_priors(self) -> np.ndarray:
        (ma, sa), (mb, sb) = self.config.amplitude_prior, self.config.background_prior
        return np.array([ma, sa**-2, mb, sb**-2])

    def _need_full(self) -> bool:
        act = self._active
        if act is None or self.config.full_every <= 1 or act["log_pruned"] in (np.inf, -np.inf):
            return True  # (-inf: nothing was pruned, a full evaluation costs no more and may prune)
        since = self.n_points - act["at"]
        return since >= min(self.config.full_every, max(act["at"], 1)) or act["edge_mass"] > 1e-7

    def result(self, full: bool | None = None, raw: bool = False) -> RankingResult:
        """The posterior over candidates (and "none of these"), offset and broadening given the
        points so far, with the leader's reduced chi^2 and read out with the calibrated confidence
        where the settings have one (:func:`calibrated_result`).

        Parameters
        ----------
        raw : bool
            The explicit alternative's posterior, without the calibrated read-out nor the chi^2
            (for engines that combine several results, :class:`~xas_callbacks.screening.ScreeningEngine`).
        full : bool, optional
            Evaluate every (offset, broadening) cell. By default the full grid is evaluated
            every ``config.full_every`` points (and whenever posterior mass reaches the edge of
            the active window); in between, only the offsets and broadenings that held
            posterior mass above ``config.prune_eps`` at the last full evaluation (plus a margin)
            are evaluated. The choice depends on the data only, so results stay deterministic.
        """
        if full is None:
            full = self._need_full()
        if not full:
            sl_b, sl_o = self._active["b"], self._active["o"]
            evaluated = self._evidence_and_cells(sl_b, sl_o, False)
            bound = self._pruned_mass_bound(evaluated[2])
            if bound <= self.config.prune_mass:
                res = self._posterior(*evaluated, False, sl_b, sl_o)
                res.pruned_mass_bound = bound
                return res if raw else self._read_out(res)
        self._catch_up()
        sl_b, sl_o = slice(0, self.broadenings.size), slice(0, self.offsets.size)
        res = self._posterior(*self._evidence_and_cells(sl_b, sl_o, True), True, sl_b, sl_o)
        return res if raw else self._read_out(res)

    def _read_out(self, res: RankingResult) -> RankingResult:
        """``res`` with the leader's reduced chi^2 and the calibrated confidence."""
        if self.n_points:
            res.top_reduced_chi2 = self.reduced_chi2(int(res.order[0]), res.offset_map, res.broadening_map)
        return calibrated_result(res, self.config, self._log_prior_cand[res.order], self.n_blocks)

    @property
    def n_blocks(self) -> int:
        """Discrepancy blocks that hold at least one reading."""
        return len(self._F)

    def full_log_masses(self) -> tuple[np.ndarray, np.ndarray, float]:
        """At the last full evaluation: each candidate's log evidence (as in
        :attr:`RankingResult.log_evidence`), its log posterior mass over every level ("none of
        these" too) and cell, and the cumulative :func:`reading_log_bound` of the readings then.
        Masses are unnormalised, in the units of :attr:`log_total`."""
        f = self._full
        return f["logZ_c"], f["log_mass"] + f["log_total"], f["log_bound"]

    def _pruned_mass_bound(self, log_total_evaluated: float) -> float:
        """Upper bound on the exact posterior mass of what the active window leaves out, given
        the evaluated cells' log total: the pruned mass at the last full evaluation, grown by
        :func:`reading_log_bound` for every reading since."""
        act = self._active
        log_pruned = act["log_pruned"] + (self._log_bound - act["log_bound"])
        if log_pruned == -np.inf:
            return 0.0
        if not np.isfinite(log_pruned):
            return 1.0
        return float(np.exp(log_pruned - np.logaddexp(log_pruned, log_total_evaluated)))

    def _evidence_and_cells(self, sl_b: slice, sl_o: slice, full: bool):
        """From the cells in ``sl_b, sl_o`` (and, unless ``full``, the active candidates): each
        candidate's log evidence marginalised over the candidate levels and the cells, the log
        evidence (with candidate priors) of "none of these", the log normalising sum, and the
        posterior mass of each (level, broadening, offset) cell."""
        cfg = self.config
        lp_levels = self._lp_levels
        cands = np.arange(len(self.names)) if full else self._active["n"]
        c = self._compact
        if full or c is None:
            lp_ln = lp_levels[:, None] + self._log_prior_cand[None, :]
            lz, total_evaluated, mass = posterior_sums(
                self._S, self._Q, self._shared_effective(), self._logdet, float(self.n_points), float(self._Slogw),
                self._ab_priors(), self._log_prior_broadening, self._log_prior_offset, lp_ln,
                1.0 / cfg.temperature, cfg.none_gamma, sl_b.start, sl_b.stop, sl_o.start, sl_o.stop, cands)
        else:  # the contiguous copy of the live cells
            n = c["n"]
            shared = np.stack([self._S0 - self._shared[:, 0, n], self._Sy - self._shared[:, 1, n],
                               self._Syy - self._shared[:, 2, n]], axis=1)
            lz, total_evaluated, mass = posterior_sums(
                c["S"], c["Q"], shared, np.ascontiguousarray(self._logdet[:, n]), float(self.n_points),
                float(self._Slogw), self._ab_priors(), self._log_prior_broadening[sl_b],
                self._log_prior_offset[sl_o], lp_levels[:, None] + c["lp"][None, :], 1.0 / cfg.temperature,
                cfg.none_gamma, 0, c["S"].shape[0], 0, c["S"].shape[1], c["every"])
            lz = lz + lp_levels[:, None]
            logZ_c = np.full(len(self.names), -np.inf)  # pruned candidates: probability 0
            logZ_c[n] = _logsumexp(lz[:-1], axis=0)
            logZ_none = _logsumexp(lz[-1] + c["lp"])
            self.log_total = float(total_evaluated)
            return logZ_c, logZ_none, total_evaluated, mass
        #: log of the evaluated cells' total (tempered evidence times every prior) at the last update
        self.log_total = float(total_evaluated)
        lz = lz + lp_levels[:, None]
        with np.errstate(divide="ignore"):  # pruned candidates: -inf, probability 0
            logZ_c = _logsumexp(lz[:-1], axis=0)
        logZ_none = _logsumexp(lz[-1, cands] + self._log_prior_cand[cands])
        if full:
            self._full = {"logZ_c": logZ_c, "log_mass": _logsumexp(lz, axis=0) + self._log_prior_cand - total_evaluated,
                          "log_total": float(total_evaluated),
                          "log_bound": self._log_bound}
        return logZ_c, logZ_none, total_evaluated, mass

    def _posterior(self, logZ_c, logZ_none, total, mass, full: bool, sl_b: slice, sl_o: slice) -> RankingResult:
        """The :class:`RankingResult` from :meth:`_evidence_and_cells`' output."""
        offsets = self.offsets[sl_o]
        broadenings = self.broadenings[sl_b]
        post = np.exp(logZ_c + self._log_prior_cand - total)
        live = np.isfinite(logZ_c)  # the evaluated candidates
        log_odds_none = float(logZ_none - _logsumexp(logZ_c[live] + self._log_prior_cand[live])) if live.any() else 0.0
        if not full:  # pruned candidates: probability 0, log evidence its upper bound
            pruned = ~np.isfinite(logZ_c)
            logZ_c = logZ_c.copy()
            logZ_c[pruned] = self._full["logZ_c"][pruned] + (self._log_bound - self._full["log_bound"])
        p_none = float(np.exp(logZ_none - total))
        cell = mass.sum(axis=0)
        p_off_act = cell.sum(axis=0)
        p_b_act = cell.sum(axis=1)
        p_off_act = p_off_act / p_off_act.sum()
        p_b_act = p_b_act / p_b_act.sum()
        p_off = np.zeros(self.offsets.size)
        p_off[sl_o] = p_off_act
        p_b = np.zeros(self.broadenings.size)
        p_b[sl_b] = p_b_act
        levels = mass.sum(axis=(1, 2))
        if full:
            self._set_active(p_b, p_off, mass, total)
        else:
            self._active["edge_mass"] = float(
                (p_off_act[0] if sl_o.start > 0 else 0.0)
                + (p_off_act[-1] if sl_o.stop < self.offsets.size else 0.0)
                + (p_b_act[0] if sl_b.start > 0 else 0.0)
                + (p_b_act[-1] if sl_b.stop < self.broadenings.size else 0.0))
        off_mean = float(np.dot(p_off_act, offsets))
        off_sd = float(np.sqrt(max(np.dot(p_off_act, (offsets - off_mean) ** 2), 0.0)))
        order = np.lexsort((np.arange(post.size), -logZ_c - self._log_prior_cand, -post))  # deterministic ties
        nz = post[post > 0]
        entropy = float(-np.sum(nz * np.log(nz)))
        warnings = []
        if self.n_points and p_off[[0, -1]].max() > 0.01:
            end = "upper" if p_off[-1] > p_off[0] else "lower"
            warnings.append(f"the calibration offset's posterior reaches the {end} end of its grid "
                            f"[{self.offsets[0]:+.1f}, {self.offsets[-1]:+.1f}] eV: the data ask for a "
                            f"larger offset (widen RankingConfig.offset_min/offset_max)")
        if self.n_points and self.broadenings.size > 1 and p_b[-1] > 0.5:
            warnings.append(f"the extra broadening sits at the top of its grid ({self.broadenings[-1]:.1f} eV FWHM): "
                            f"the measurement is broader than every candidate by more, or no candidate has its "
                            f"shape (widen RankingConfig.broadenings)")
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
            p_none=p_none,
            p_none_raw=p_none,
            log_odds_none_raw=log_odds_none,
            level_posterior=levels / levels.sum(),
            warnings=warnings,
        )

    def _set_active(self, p_b: np.ndarray, p_off: np.ndarray, mass: np.ndarray, log_total: float) -> None:
        """Choose the cells and candidates to update until the next full evaluation, and record
        the pruned rest's posterior mass (an upper bound: the cells outside the window plus the
        pruned candidates' total) for :meth:`_pruned_mass_bound`."""
        eps, margin = self.config.prune_eps, 2
        budget = PRUNE_HEADROOM * self.config.prune_mass / 3.0  # for offsets, broadenings, candidates
        cand_mass = np.exp(self._full["log_mass"])  # every level, "none of these" too

        def window(p):
            # drop end cells below eps of the peak while the mass dropped stays within the budget
            lo, hi, dropped = 0, p.size, 0.0
            while hi - lo > 1:
                end = lo if p[lo] <= p[hi - 1] else hi - 1
                if p[end] > eps * p.max() or dropped + p[end] > budget:
                    break
                dropped += p[end]
                lo, hi = (lo + 1, hi) if end == lo else (lo, hi - 1)
            return slice(max(lo - margin, 0), min(hi + margin, p.size))

        by_mass = np.argsort(cand_mass, kind="stable")
        keep = np.ones(cand_mass.size, dtype=bool)
        low = (np.cumsum(cand_mass[by_mass]) <= budget) & (cand_mass[by_mass] <= eps * cand_mass.max())
        keep[by_mass[low]] = False
        keep[by_mass[::-1][:MIN_ACTIVE_CANDIDATES]] = True
        cands = np.flatnonzero(keep).astype(np.int64)
        b, o = window(p_b), window(p_off)
        outside = mass.copy()
        outside[:, b, o] = 0.0
        p_pruned = float(outside.sum() + cand_mass[~keep].sum())
        if self.config.none_gamma > 1.0:
            b, o, cands, p_pruned = slice(0, p_b.size), slice(0, p_off.size), np.arange(cand_mass.size), 0.0
        with np.errstate(divide="ignore"):
            log_pruned = float(np.log(p_pruned)) + log_total
        self._active = {"b": b, "o": o, "n": cands, "at": self.n_points, "edge_mass": 0.0,
                        "log_pruned": log_pruned, "log_bound": self._log_bound}
        # from here on only the cells of the active window are kept up to date per reading
        self._live = (b.start, b.stop, o.start, o.stop, cands)
        self._stale_from = len(self._readings)
        if (b.stop - b.start, o.stop - o.start, cands.size) != (p_b.size, p_off.size, cand_mass.size):
            self._make_compact(b, o, cands)

    def _make_compact(self, b: slice, o: slice, cands: np.ndarray) -> None:
        """Contiguous copies of the live cells' tables and sums (broadenings ``b``, offsets
        ``o``, candidates ``cands``), updated and evaluated in place of the scattered originals
        until :meth:`_catch_up` writes them back."""
        g_hi = min((o.stop - 1) * self._stride + self._M.shape[1] - (self.offsets.size - 1) * self._stride,
                   self._M.shape[1])
        g = slice(o.start * self._stride, g_hi)
        self._compact = {
            "b": b, "o": o, "n": cands, "every": np.arange(cands.size),
            "M": np.ascontiguousarray(self._M[b, g][:, :, cands]),
            "dM": np.ascontiguousarray(self._dM[b, g][:, :, cands]),
            "S": np.ascontiguousarray(self._S[b, o][:, :, cands]),
            "Q": np.ascontiguousarray(self._Q[b, o][:, :, cands]),
            "T": {k: np.ascontiguousarray(T[b, o][:, :, cands]) for k, T in self._T.items()},
            "lp": self._log_prior_cand[cands],
        }

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
        return self._fit_ab(y, var, *self.model_at(index, E, offset, broadening))

    def _fit_ab(self, y, var, m, s):
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
        a, b = self._fit_ab(y, var, m, s)
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


def extended(energies, mean, at) -> np.ndarray:
    """Spectra ``mean`` (N, E) on ``energies`` read at ``at``, beyond their grid too: above it the
    last value holds; below it a normalised spectrum is its pre-edge, so the first value decays
    to zero over :data:`PRE_EDGE_DECAY_EV` (a grid that starts at the foot of the edge, as
    cu-k's does, would otherwise continue the edge foot flat into the pre-edge)."""
    energies, at = np.asarray(energies, dtype=float), np.asarray(at, dtype=float)
    mean = np.atleast_2d(np.asarray(mean, dtype=float))
    j = np.clip(np.searchsorted(energies, at) - 1, 0, energies.size - 2)
    t = np.clip((at - energies[j]) / (energies[j + 1] - energies[j]), 0.0, 1.0)
    out = mean[:, j] * (1.0 - t) + mean[:, j + 1] * t
    below = at < energies[0]
    out[:, below] *= np.exp(-0.5 * ((at[below] - energies[0]) / PRE_EDGE_DECAY_EV) ** 2)[None, :]
    return out


def flatten_like_candidates(energy, y, tables: RankingTables) -> np.ndarray:
    """Normalised readings flattened as the candidates were (same window above the edge, here the
    readings' own half-height edge); unchanged while the edge or the window has too few points."""
    if tables.flat_window is None:
        return np.asarray(y, dtype=float)
    edge = edge_half_height(energy, y)
    if not np.isfinite(edge):
        return np.asarray(y, dtype=float)
    return flatten(energy, y, edge, flattening(energy, y, edge, tables.flat_window))


def rise_width(energy, y) -> float:
    """Energy from 20 % to 80 % of the edge step on the first rise: how sharp an edge is."""
    return edge_half_height(energy, y, 0.8) - edge_half_height(energy, y, 0.2)


def candidates_rise_width(model_energies, model_mean, at_most: int = 1000) -> float:
    """The :data:`HERFD_RISE_PERCENTILE`-th percentile of the candidates' :func:`rise_width`
    (over every ``len // at_most``-th of them)."""
    mean = np.atleast_2d(model_mean)
    widths = [rise_width(model_energies, m) for m in mean[:: max(1, len(mean) // at_most)]]
    return float(np.nanpercentile(widths, HERFD_RISE_PERCENTILE)) if np.isfinite(widths).any() else float("nan")


def sharper_measurement_broadening(energy, y, model_energies, model_mean, typical: float | None = None) -> float:
    """The Gaussian FWHM (eV, from :data:`MEASUREMENT_BROADENINGS`) that brings a measurement
    whose edge rises more steeply than the candidates' (high-energy-resolution fluorescence,
    HERFD) to their rise (``typical``, else :func:`candidates_rise_width`); 0 for a measurement
    as broad as them or broader, where the candidates are broadened instead (the ranking's
    broadening nuisance)."""
    measured = rise_width(energy, y)
    if typical is None:
        typical = candidates_rise_width(model_energies, model_mean)
    if not (np.isfinite(measured) and np.isfinite(typical)) or measured >= HERFD_RISE_RATIO * typical:
        return 0.0
    from models.spectra import gaussian_broaden

    widths = [rise_width(energy, gaussian_broaden(energy, y, fwhm)) for fwhm in MEASUREMENT_BROADENINGS]
    return float(MEASUREMENT_BROADENINGS[int(np.nanargmin(np.abs(np.asarray(widths) - typical)))])


def broaden_readings(energy, y, var, fwhm: float):
    """Readings (sorted by energy) convolved with a Gaussian of ``fwhm`` eV, and the variance
    that leaves of their counting noise."""
    from models.spectra import FWHM_TO_SIGMA, gaussian_kernel

    energy = np.asarray(energy, dtype=float)
    kernel = gaussian_kernel(energy, fwhm * FWHM_TO_SIGMA)
    return kernel @ np.asarray(y, dtype=float), (kernel**2) @ np.asarray(var, dtype=float)


def data_offset_prior(energy, y, model_energies, model_mean, alignment_sd: float = OFFSET_ALIGNMENT_SD,
                      search_eV: float = 20.0):
    """The common offset's prior from the data: the shift that best lines the readings up with
    the candidates, or None while the readings do not hold the edge yet (none below half the
    step and two above it).

    Each candidate is shifted over +-``search_eV`` (0.5 eV steps) against the readings, with a
    least-squares scale and background at each shift (the readings may be few and uneven);
    ``mean`` is the median of the candidates' best shifts, ``sd`` combines ``alignment_sd`` (how
    far spectra of different shape misalign) with the spread of those shifts (chemical shifts:
    the true one is somewhere among them). Pre-edge peaks (the pi* resonances of K-edges of light
    elements) do not confuse it as a half-height criterion would. Returns ``(mean, sd)`` in eV
    (measured E + offset = model E).
    """
    energy, y = np.asarray(energy, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(energy) & np.isfinite(y)
    energy, y = energy[ok], y[ok]
    if (y < 0.5).sum() < 1 or (y > 0.5).sum() < 2:
        return None
    mean = np.atleast_2d(np.asarray(model_mean, dtype=float))
    shifts = np.arange(-search_eV, search_eV + 1e-9, 0.5)
    # the same readings for every shift: those around the measured edge
    edge = edge_half_height(energy, y)
    sel = (energy > edge - 30.0) & (energy < edge + 60.0) if np.isfinite(edge) else np.ones(energy.size, bool)
    if sel.sum() < 4:
        return None
    e, yy = energy[sel], y[sel]
    n = yy.size
    cost = np.full((shifts.size, mean.shape[0]), np.inf)
    for i, s in enumerate(shifts):
        x = extended(model_energies, mean, e + s)  # (N, n): every candidate at once
        sx, sy, sxx, sxy = x.sum(1), yy.sum(), (x * x).sum(1), x @ yy
        det = n * sxx - sx * sx
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a candidate flat here: det ~ 0
            a = (n * sxy - sx * sy) / det
            b = (sy - a * sx) / n
            sse = (yy @ yy) - 2 * (a * sxy + b * sy) + a * a * sxx + 2 * a * b * sx + n * b * b
        cost[i] = np.where((a > 0) & np.isfinite(sse), sse / n, np.inf)
    usable = np.isfinite(cost).any(axis=0)
    if not usable.any():
        return None
    best = shifts[np.argmin(cost[:, usable], axis=0)]
    best = np.asarray(best)
    spread = 1.4826 * np.median(np.abs(best - np.median(best))) if best.size > 2 else np.ptp(best) / 2
    return float(np.median(best)), float(np.hypot(alignment_sd, spread))


def rank_spectrum(spectrum: dict, library, config: RankingConfig | None = None,
                  e0: float | None = None, dtype=np.float32, offset_prior: tuple | None = None):
    """Normalise a measured spectrum and rank ``library`` against it.

    The spectrum is normalised and flattened like the candidates; broadened when sharper than
    them (:func:`sharper_measurement_broadening`); the common offset's prior is ``offset_prior``
    ``(mean, sd)`` in eV, or ``(mean, sd, source)``, when given -- a calibration the user knows,
    or the reference foil's (:func:`xas_callbacks.foil.foil_offset_prior`) -- else the edges'
    (:func:`data_offset_prior`).

    Returns
    -------
    engine, result, normalization
    """
    E = np.asarray(spectrum["energy"], dtype=float)
    order = np.argsort(E, kind="stable")
    E, mu, var = E[order], np.asarray(spectrum["mu"])[order], np.asarray(spectrum["var"])[order]
    nm = normalize(E, mu, e0 if e0 is not None else spectrum.get("e0"))
    y, v = nm.apply(E, mu, var)
    config = config or RankingConfig.for_library(library)
    eng = RankingEngine(config=config, tables=ranking_tables(library.names, library.energies, library.mean,
                                                             library.std, config, dtype=dtype))
    y = flatten_like_candidates(E, y, eng.tables)
    fwhm = sharper_measurement_broadening(E, y, library.energies, library.mean)
    if fwhm > 0:
        y, v = broaden_readings(E, y, v, fwhm)
    source = "config"
    prior = None
    if offset_prior is not None:
        prior, source = (float(offset_prior[0]), float(offset_prior[1])), str(
            offset_prior[2] if len(offset_prior) > 2 else "user")
    if prior is None:
        prior, source = data_offset_prior(E, y, library.energies, library.mean), "edges"
    if prior is not None:
        eng.set_offset_prior(*prior)
    else:
        source = "config"
    eng.add_points(E, y, v)
    res = eng.result(full=True)
    res.measurement_broadening_eV = fwhm
    res.offset_prior = (*eng.offset_prior, source)
    return eng, res, nm
