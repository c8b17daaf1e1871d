"""Choosing the next energies to measure: expected information gain per second of beam time.

The question an adaptive XAS scan asks is *which candidate is the sample?*, not *what is the
spectrum?*. So the next energy is the one whose measurement is expected to tell the leading
candidates apart best, per second of beam time spent to get it (dwell, monochromator travel,
settling).

For a candidate ``c`` the measured value at energy ``E`` is predicted as a Gaussian
``N(a_c t_c(E) + b_c, a_c^2 s_c(E)^2 + sigma^2(E))`` where ``t_c`` is the model spectrum shifted
by the common calibration offset (a reading at ``E`` sees the model at ``E + dE``, as in
:mod:`xas_callbacks.ranking`) and broadened by the common extra broadening, ``s_c`` its model
uncertainty, ``a_c, b_c`` the edge-step scale and background fitted to the points measured so far,
and ``sigma`` the counting noise expected for the dwell. The mutual information between the next
reading and the candidate's identity has no closed form for a mixture of Gaussians; we use the
pairwise-distance bound of Kolchinsky & Tracey (Entropy 19, 361 (2017)) with the Bhattacharyya
distance, which is exact in the limits of identical and of perfectly separated candidates and
costs ``O(K^2 M)`` for ``K`` leading candidates and ``M`` energies.

Both agents implement bluesky-adaptive's protocols (``bluesky_adaptive.protocols.Optimizer``:
``suggest``, ``ingest``, ``get_best_points``; ``SupportsStoppingCriteria``: ``should_stop``;
``CanRegisterSuggestions``: ``register_suggestions``), so ``adaptive_xas_plan`` and
bluesky-adaptive's ``optimize``/``optimize_in_run`` (with :class:`plans.evaluation.XASEvaluation`)
drive the same agent. What ``ingest`` takes is one outcome per reading, exactly what
:func:`plans.ranking_feed.outcome_from_ranking` (and so the evaluation function) returns: the
reading (``energy``, ``mu``, ``mu_sigma``) and the posterior after it (``top_names``,
``top_probabilities``, ``offset_eV``, ``broadening_eV``, ``window_eV``), flat, so that
bluesky-adaptive can also record it as event data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from endstation.beamtime import beam_time_cost
from models.spectra import gaussian_broaden_uniform

__all__ = [
    "bhattacharyya_distance",
    "pairwise_information_gain",
    "EnergySelectionAgent",
    "SpaceFillingAgent",
    "AGENTS",
]


def bhattacharyya_distance(mean_i, var_i, mean_j, var_j):
    """Bhattacharyya distance between 1-D Gaussians (broadcasting)."""
    var_sum = var_i + var_j
    return 0.25 * (mean_i - mean_j) ** 2 / var_sum + 0.5 * np.log(
        0.5 * var_sum / np.sqrt(var_i * var_j)
    )


def pairwise_information_gain(mean: np.ndarray, var: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Lower bound on the information (nats) one reading gives about the candidate's identity.

    Parameters
    ----------
    mean, var : ndarray, shape (K, M)
        Predictive mean and variance of the reading for each of ``K`` candidates at ``M`` energies.
    weights : ndarray, shape (K,)
        Current probabilities of the candidates (renormalised here).

    Returns
    -------
    ndarray, shape (M,)
        ``-sum_i p_i log sum_j p_j exp(-D_ij)``, zero where all candidates predict the same.
    """
    # float32 and one logarithm per pair: this is the hot loop of every decision (K^2 M terms).
    mean = np.asarray(mean, dtype=np.float32)
    var = np.asarray(var, dtype=np.float32)
    p = np.asarray(weights, dtype=np.float64)
    p = (p / p.sum()).astype(np.float32)
    log_var = np.log(var)
    var_sum = var[:, None, :] + var[None, :, :]
    distance = np.square(mean[:, None, :] - mean[None, :, :])
    distance *= 0.25
    distance /= var_sum
    np.log(var_sum, out=var_sum)
    var_sum -= np.float32(np.log(2.0))
    var_sum *= 0.5
    distance += var_sum
    distance -= 0.25 * (log_var[:, None, :] + log_var[None, :, :])
    np.negative(distance, out=distance)
    np.exp(distance, out=distance)
    inner = np.einsum("j,ijm->im", p, distance)
    gain = -(p[:, None] * np.log(inner)).sum(axis=0, dtype=np.float64)
    return np.maximum(gain, 0.0)


def _read_at(grid: np.ndarray, spectra: np.ndarray, offset_eV: float, at: np.ndarray) -> np.ndarray:
    """Spectra on ``grid`` read at measured energies ``at``.

    The convention is the ranking engine's: a reading at measured energy ``E`` sees the model at
    ``E + offset_eV``.
    """
    x = np.clip(np.asarray(at, dtype=float) + offset_eV, grid[0], grid[-1])
    right = np.clip(np.searchsorted(grid, x), 1, grid.size - 1)
    frac = (x - grid[right - 1]) / (grid[right] - grid[right - 1])
    return spectra[:, right - 1] * (1.0 - frac) + spectra[:, right] * frac


@dataclass
class _Measured:
    energy: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    sigma: list[float] = field(default_factory=list)


class EnergySelectionAgent:
    """Suggests the energies that best separate the leading candidates per unit of beam time.

    Parameters
    ----------
    names : sequence of str
        Candidate names, in the order of the rows of ``mean``.
    energies : ndarray, shape (E,)
        The model's energy grid (eV, absolute).
    mean, std : ndarray, shape (N, E)
        Predicted spectra of the candidates and their 1-sigma model uncertainty.
    dwell_s : float
        Counting time of one reading.
    mono_speed_eV_per_s, settle_s : float
        Monochromator travel speed and settling time, so that far moves cost what they cost.
    top_k : int
        At most this many leading candidates are compared ...
    mass : float
        ... or fewer, once they hold this much of the posterior probability.
    min_separation_eV : float
        Suggested energies stay this far from each other and from energies already measured.
    step_eV : float
        Spacing of the energies considered.
    coarse_step_eV : float
        Spacing of the first, coarse pass of the search.
    confidence : float
        ``should_stop`` answers yes once the top candidate's probability reaches this.
    max_points : int or None
        ``should_stop`` answers yes once this many readings were ingested.
    default_sigma : float
        Noise of a reading (in measured units) assumed until readings with uncertainties arrive.
    model_floor : float
        Model-misfit floor (normalised units) added in quadrature to the model uncertainty, as
        the ranking does: differences smaller than it cannot tell candidates apart.
    window : (float, float), optional
        Measured energies the ranking can use; suggestions stay inside it.
    correlation_length_eV : float
        Length over which the model's error is correlated: a reading within it of one already
        taken counts as partly redundant (see :meth:`_novelty`). 0 treats readings as independent.
    seed : sequence of float, optional
        Energies suggested first, in this order (normalisation anchors and a coarse pass, e.g.
        :func:`plans.adaptive.seed_energies`); ``should_stop`` does not stop before they are all
        measured. ``adaptive_xas_plan`` measures its seed itself and gives none.
    """

    #: Keys of every suggestion besides ``_id`` and ``energy`` (seed suggestions carry NaN), so
    #: that bluesky-adaptive records all suggestions of a run in one event stream.
    suggestion_keys: tuple[str, ...] = ("expected_information_gain", "cost_s", "gain_per_s")

    def __init__(
        self,
        names: Sequence[str],
        energies: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        dwell_s: float = 1.0,
        mono_speed_eV_per_s: float = 50.0,
        settle_s: float = 0.2,
        top_k: int = 32,
        mass: float = 0.999,
        min_separation_eV: float = 2.0,
        step_eV: float = 0.25,
        coarse_step_eV: float = 1.0,
        confidence: float = 0.95,
        max_points: int | None = None,
        default_sigma: float = 0.01,
        model_floor: float = 0.03,
        window: tuple[float, float] | None = None,
        correlation_length_eV: float = 6.0,
        seed: Sequence[float] | None = None,
    ):
        self.names = list(names)
        self.grid = np.asarray(energies, dtype=float)
        self._step = float(np.median(np.diff(self.grid)))
        self.mean = np.asarray(mean, dtype=float)
        self.std = np.asarray(std, dtype=float)
        if self.mean.shape != (len(self.names), self.grid.size) or self.std.shape != self.mean.shape:
            raise ValueError(
                f"mean and std must have shape (n_candidates, n_energies) = "
                f"({len(self.names)}, {self.grid.size}); got {self.mean.shape} and {self.std.shape}"
            )
        self.dwell_s = float(dwell_s)
        self.mono_speed_eV_per_s = float(mono_speed_eV_per_s)
        self.settle_s = float(settle_s)
        self.top_k = int(top_k)
        self.mass = float(mass)
        self.min_separation_eV = float(min_separation_eV)
        self.step_eV = float(step_eV)
        self.coarse_step_eV = float(coarse_step_eV)
        self.confidence = float(confidence)
        self.max_points = max_points
        self.default_sigma = float(default_sigma)
        self.model_floor = float(model_floor)
        self.window = window
        self.correlation_length_eV = float(correlation_length_eV)
        self.seed = [float(e) for e in (seed if seed is not None else [])]
        self._seed_left = list(self.seed)
        self._n_readings = 0  # outcomes of readings ingested, usable or not
        self._measured = _Measured()
        self._suggested = 0
        self.probabilities = np.full(len(self.names), 1.0 / len(self.names))
        self.p_none = 0.0
        self.offset_eV = 0.0
        self.broadening_eV = 0.0
        self.last_gain: np.ndarray | None = None

    # -- bluesky-adaptive protocols --------------------------------------------------------------
    def ingest(self, points: Sequence[Mapping]) -> None:
        """Take the outcomes of readings (:func:`plans.ranking_feed.outcome_from_ranking`).

        Each outcome may hold the reading, ``energy``, ``mu`` and ``mu_sigma`` (mu as the ranking
        callback formed it; a non-finite one is ignored), and the posterior after it:
        ``top_names``, ``top_probabilities`` (which leave ``p_none`` to "none of these"),
        ``p_none``, ``offset_eV``, ``broadening_eV``, ``window_eV`` (``[lo, hi]``, the measured
        energies the ranking can use).
        """
        for point in points:
            if point.get("top_names") is not None and point.get("top_probabilities") is not None:
                self._ingest_ranking(point)
            if "energy" in point and "mu" in point:
                self._n_readings += 1
                energy, value = float(point["energy"]), float(point["mu"])
                sigma = float(point.get("mu_sigma", self.default_sigma) or self.default_sigma)
                if np.isfinite(energy) and np.isfinite(value) and np.isfinite(sigma) and sigma > 0:
                    self._measured.energy.append(energy)
                    self._measured.value.append(value)
                    self._measured.sigma.append(sigma)

    def register_suggestions(self, suggestions: Sequence[Mapping]) -> list[dict]:
        """Give energies chosen by hand (``{"energy": E}``) the ``_id`` of a suggestion, so that
        their outcomes can be ingested (bluesky-adaptive's ``sample_suggestions``)."""
        out = []
        for suggestion in suggestions:
            out.append({**self._blank(), **dict(suggestion), "_id": self._suggested,
                        "energy": float(suggestion["energy"])})
            self._suggested += 1
        return out

    def _blank(self) -> dict:
        return {key: float("nan") for key in self.suggestion_keys}

    def _seed_suggestions(self, num_points: int) -> list[dict]:
        chosen = []
        current = self._measured.energy[-1] if self._measured.energy else None
        while self._seed_left and len(chosen) < num_points:
            energy = self._seed_left.pop(0)
            cost = float(beam_time_cost(np.asarray([energy]), current, self.dwell_s, self.mono_speed_eV_per_s,
                                        self.settle_s)[0])
            chosen.append({**self._blank(), "_id": self._suggested, "energy": energy, "cost_s": cost})
            self._suggested += 1
            current = energy
        return chosen

    def suggest(self, num_points: int | None = 1) -> list[dict]:
        """The next ``num_points`` energies, best first, each with why it was chosen.

        Returns mappings with ``_id``, ``energy``, ``expected_information_gain`` (nats),
        ``cost_s`` and ``gain_per_s``.
        """
        num_points = 1 if num_points is None else int(num_points)
        if self._seed_left:
            return self._seed_suggestions(num_points)
        candidates = self._candidate_energies()
        if candidates.size == 0:
            return []
        # Gain varies on the scale of the spectra's features (eV): evaluate it on a coarse
        # subset, then at full resolution only around the most promising coarse energies.
        stride = max(1, int(round(self.coarse_step_eV / self.step_eV)))
        coarse = np.arange(0, candidates.size, stride)
        gain_coarse = self.information_gain(candidates[coarse])
        best = coarse[np.argsort(gain_coarse)[::-1][: 4 * num_points + 4]]
        near = np.unique(np.clip(best[:, None] + np.arange(-stride, stride + 1)[None, :], 0, candidates.size - 1))
        gain = np.interp(np.arange(candidates.size), coarse, gain_coarse)
        gain[near] = self.information_gain(candidates[near])
        gain = gain * self._novelty(candidates)
        self.last_gain = gain
        chosen: list[dict] = []
        current = self._measured.energy[-1] if self._measured.energy else None
        blocked = np.zeros(candidates.size, dtype=bool)
        for _ in range(num_points):
            cost = beam_time_cost(candidates, current, self.dwell_s, self.mono_speed_eV_per_s, self.settle_s)
            utility = np.where(blocked, -np.inf, gain / cost)
            best = int(np.argmax(utility))
            if not np.isfinite(utility[best]):
                break
            chosen.append(
                {
                    "_id": self._suggested,
                    "energy": float(candidates[best]),
                    "expected_information_gain": float(gain[best]),
                    "cost_s": float(cost[best]),
                    "gain_per_s": float(utility[best]),
                }
            )
            self._suggested += 1
            current = candidates[best]
            blocked |= np.abs(candidates - current) < self.min_separation_eV
        return chosen

    def should_stop(self) -> tuple[bool, str | None]:
        """Stop once the top candidate is confident enough or the point budget is spent (never
        before the seed is measured)."""
        if self._seed_left or self._n_readings < len(self.seed):
            return False, None
        top = int(np.argmax(self.probabilities))
        if self.probabilities[top] >= self.confidence:
            return True, f"{self.names[top]} reached p={self.probabilities[top]:.3f} >= {self.confidence}"
        if self.max_points is not None and len(self._measured.energy) >= self.max_points:
            return True, f"point budget of {self.max_points} spent"
        return False, None

    def get_best_points(self) -> list[tuple[str, dict, dict]]:
        """The leading candidate, as ``(name, {}, {"probability": p})``.

        The answer of this optimisation is a candidate, not an energy: the first element names
        it, and there are no parameters to go back to (``navigate_to_best`` moves nothing).
        """
        top = int(np.argmax(self.probabilities))
        return [(self.names[top], {}, {"probability": float(self.probabilities[top])})]

    # -- the physics ------------------------------------------------------------------------------
    def information_gain(self, energies: np.ndarray) -> np.ndarray:
        """Expected information (nats) of one reading at each of ``energies``."""
        energies = np.asarray(energies, dtype=float)
        order = np.argsort(self.probabilities, kind="stable")[::-1][: self.top_k]
        held = np.cumsum(self.probabilities[order])
        order = order[: int(np.searchsorted(held, self.mass * held[-1])) + 1]
        weights = self.probabilities[order]
        if weights.sum() <= 0 or order.size < 2:
            return np.zeros(energies.size)
        broadened = gaussian_broaden_uniform(self.mean[order], self._step, self.broadening_eV)
        shifted = _read_at(self.grid, broadened, self.offset_eV, energies)
        model_std = _read_at(self.grid, self.std[order], self.offset_eV, energies)
        scale, background = self._fit_scale(broadened)
        mean = scale[:, None] * shifted + background[:, None]
        var = scale[:, None] ** 2 * (model_std**2 + self.model_floor**2) + self._expected_sigma() ** 2
        return pairwise_information_gain(mean, var, weights)

    def _fit_scale(self, spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Edge-step scale and background of each of ``spectra`` (model grid), weighted least
        squares on the readings so far.

        Candidates whose fit is degenerate or gives a non-positive scale keep (1, 0).
        """
        n = spectra.shape[0]
        energy = np.asarray(self._measured.energy)
        if energy.size < 3 or np.ptp(energy) <= 0:
            return np.ones(n), np.zeros(n)
        y = np.asarray(self._measured.value)
        w = 1.0 / np.asarray(self._measured.sigma) ** 2
        m = _read_at(self.grid, spectra, self.offset_eV, energy)
        sw, swy = w.sum(), (w * y).sum()
        swm, swmm, swmy = m @ w, (m * m) @ w, m @ (w * y)
        det = sw * swmm - swm**2
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = (sw * swmy - swm * swy) / det
            background = (swy - scale * swm) / sw
        good = np.isfinite(scale) & np.isfinite(background) & (scale > 0) & (np.abs(det) > 1e-12 * sw * swmm)
        return np.where(good, scale, 1.0), np.where(good, background, 0.0)

    def _novelty(self, energies: np.ndarray) -> np.ndarray:
        """How much of a reading at each energy is new, given the readings so far.

        The model's error is correlated over a few eV (a misplaced peak is wrong at every energy
        of that peak), so a reading next to one already taken mostly re-measures the same model
        error, not the sample: its gain is scaled down by ``1 - max_j exp(-(E - E_j)^2 / 2 l^2)``.
        """
        if self.correlation_length_eV <= 0 or not self._measured.energy:
            return np.ones(energies.size)
        d = energies[:, None] - np.asarray(self._measured.energy)[None, :]
        return 1.0 - np.exp(-0.5 * (d / self.correlation_length_eV) ** 2).max(axis=1)

    def _expected_sigma(self) -> float:
        if self._measured.sigma:
            return float(np.median(self._measured.sigma))
        return self.default_sigma

    def _candidate_energies(self) -> np.ndarray:
        lo, hi = self.grid[0] - self.offset_eV, self.grid[-1] - self.offset_eV
        if self.window is not None:
            lo, hi = max(lo, self.window[0]), min(hi, self.window[1])
        energies = np.arange(lo, hi + 0.5 * self.step_eV, self.step_eV)
        if self._measured.energy:
            measured = np.asarray(self._measured.energy)
            near = np.abs(energies[:, None] - measured[None, :]).min(axis=1) < self.min_separation_eV
            energies = energies[~near]
        return energies

    def _ingest_ranking(self, ranking: Mapping) -> None:
        index = {name: i for i, name in enumerate(self.names)}
        probabilities = np.zeros(len(self.names))
        for name, p in zip(ranking["top_names"], ranking["top_probabilities"]):
            if str(name) in index and np.isfinite(float(p)):
                probabilities[index[str(name)]] = float(p)
        if probabilities.sum() > 0:
            # as published: the candidates' probabilities leave p_none to "none of these", so a
            # sample that may be none of them never reaches the stopping confidence
            self.probabilities = probabilities
        self.p_none = float(ranking.get("p_none", 0.0) or 0.0)
        self.offset_eV = float(ranking.get("offset_eV", self.offset_eV) or 0.0)
        self.broadening_eV = float(ranking.get("broadening_eV", self.broadening_eV) or 0.0)
        window = ranking.get("window_eV")
        if window is not None and len(window) == 2 and np.all(np.isfinite(np.asarray(window, dtype=float))):
            self.window = (float(window[0]), float(window[1]))


class SpaceFillingAgent(EnergySelectionAgent):
    """The same stopping rule, energies chosen without the model: each suggestion is the energy
    farthest from every reading so far (ties: the least travel), which fills the ranking window
    like an ever finer uniform grid.

    The baseline ``adaptive_xas_plan(..., agent="space-filling")`` answers the question the
    information-gain agent must answer: is it the choice of energies, or only the early stop,
    that saves beam time? Parameters as :class:`EnergySelectionAgent`.
    """

    suggestion_keys = ("distance_to_nearest_eV", "cost_s")

    def suggest(self, num_points: int | None = 1) -> list[dict]:
        num_points = 1 if num_points is None else int(num_points)
        if self._seed_left:
            return self._seed_suggestions(num_points)
        candidates = self._candidate_energies()
        measured = list(self._measured.energy)
        current = measured[-1] if measured else None
        chosen: list[dict] = []
        for _ in range(num_points):
            if candidates.size == 0:
                break
            if measured:
                gap = np.abs(candidates[:, None] - np.asarray(measured)[None, :]).min(axis=1)
            else:  # nothing measured: every energy is as far as the window is wide (finite, for the record)
                gap = np.full(candidates.size, float(np.ptp(candidates)))
            cost = beam_time_cost(candidates, current, self.dwell_s, self.mono_speed_eV_per_s, self.settle_s)
            best = int(np.lexsort((cost, -gap))[0])
            chosen.append({"_id": self._suggested, "energy": float(candidates[best]),
                           "distance_to_nearest_eV": float(gap[best]), "cost_s": float(cost[best])})
            self._suggested += 1
            current = float(candidates[best])
            measured.append(current)
            candidates = candidates[np.abs(candidates - current) >= self.min_separation_eV]
        return chosen


#: Agents ``adaptive_xas_plan`` knows by name (a name keeps the plan's arguments JSON-serialisable
#: for the queue server).
AGENTS: dict[str, type[EnergySelectionAgent]] = {
    "information-gain": EnergySelectionAgent,
    "space-filling": SpaceFillingAgent,
}
