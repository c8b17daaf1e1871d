"""Ranking of a large candidate library (1e5 candidates and more) with a certified pruning.

Only the candidates that matter are live: a :class:`~xas_callbacks.ranking.RankingEngine` over
their own tables ranks them per reading (pruning offsets, broadenings and candidates within
itself to half of ``RankingConfig.prune_mass``). Every other candidate ``c`` keeps the exact log
posterior mass ``log m_c`` it had at its last exact evaluation, when the readings' cumulative
:func:`~xas_callbacks.ranking.reading_log_bound` was ``B_c``: its mass now is at most
``m_c exp(B - B_c)``. The sum ``U`` of these bounds is one number per reading; while
``U / (U + Z_live)`` plus the live engine's own bound is at most ``prune_mass``, the live ranking
stands and the pruned candidates are reported with probability 0 (their log evidence is then
the upper bound). Otherwise the pruned candidates with the largest bounds are evaluated exactly,
in chunks (an engine over the chunk's tables replaying every reading), until the rest's bound
is within ``PRUNE_HEADROOM * prune_mass / 2``; the candidates that matter join the live set.

Every reported probability is within ``RankingResult.pruned_mass_bound`` (<= ``prune_mass``)
of the exact posterior over all candidates. Memory: the tables of all candidates, the sums of
the live ones (at most ``max_live``; beyond that every update is an exact chunked evaluation)
and one chunk's.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xas_callbacks.ranking import (PRUNE_HEADROOM, MIN_ACTIVE_CANDIDATES, RankingConfig, RankingEngine, RankingResult,
                                   RankingTables, calibrated_result)

__all__ = ["ScreeningEngine"]

#: Candidates in the first exact evaluation of a refresh; each next one doubles, up to ``chunk``.
FIRST_CHUNK = 256


def _lse(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.logaddexp.reduce(x)) if x.size else -np.inf


class ScreeningEngine:
    """Incremental ranking of a large library with certified pruning (module docstring).

    Parameters
    ----------
    tables : RankingTables
        The tables of every candidate (:func:`xas_callbacks.ranking.ranking_tables`).
    config : RankingConfig, optional
        Ranking settings (default: the tables').
    max_live : int
        Most candidates ranked live; while more matter, updates are exact chunked evaluations.
    chunk : int
        Candidates per exact evaluation.
    """

    def __init__(self, tables: RankingTables, config: RankingConfig | None = None, *, max_live: int = 4000,
                 chunk: int = 4000) -> None:
        self.tables = tables
        self.config = config or tables.config
        self.names = list(tables.names)
        self._names = np.array(self.names, dtype=object)
        self.max_live, self.chunk = int(max_live), int(chunk)
        self._cfg_live = dataclasses.replace(self.config, prune_mass=self.config.prune_mass / 2)
        self._cfg_exact = dataclasses.replace(self.config, full_every=1)
        # one candidate's engine: which readings are used, and their cumulative bound
        self._probe = RankingEngine(tables=tables.take([0]), config=self._cfg_exact)
        self.offset_prior = self._probe.offset_prior
        #: exact chunked evaluations so far (candidates evaluated), for benchmarks
        self.n_exact_evaluations = 0
        self.reset()

    @property
    def n_points(self) -> int:
        return self._probe.n_points

    @property
    def n_live(self) -> int:
        return int(self._live_idx.size)

    # the attributes of RankingEngine that XASRankingCallback reads (same values)
    @property
    def n_candidates(self) -> int:
        return len(self.names)

    @property
    def n_outside(self) -> int:
        """Readings outside the tables' energy window (not used), as :attr:`RankingEngine.n_outside`."""
        return self._probe.n_outside

    @property
    def offsets(self) -> np.ndarray:
        return self._probe.offsets

    @property
    def broadenings(self) -> np.ndarray:
        return self._probe.broadenings

    @property
    def window(self) -> tuple[float, float]:
        return self._probe.window

    @property
    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The readings used: energies, values, variances."""
        return self._probe.points

    def reset(self) -> None:
        """Forget all readings."""
        self._probe.reset()
        self._readings: list[tuple[float, float, float]] = []
        self._log_mass0 = self.tables.log_prior_candidates.astype(float).copy()  # exact with no readings
        self._logZc0 = np.zeros(len(self.names))
        self._bound0 = np.zeros(len(self.names))
        self._live_idx = np.zeros(0, dtype=np.int64)
        self._live: RankingEngine | None = None
        self._stale = False  # True: the pruned masses are for another offset prior
        self._set_pruned(np.arange(len(self.names)))

    def set_offset_prior(self, mean: float, sd: float) -> None:
        """As :meth:`RankingEngine.set_offset_prior`; every candidate is evaluated anew."""
        self._probe.set_offset_prior(mean, sd)
        self.offset_prior = self._probe.offset_prior
        self._stale = self.n_points > 0
        if self._live is not None:
            self._live.set_offset_prior(mean, sd)

    def add_point(self, energy: float, y: float, var: float) -> bool:
        """Add one reading (as :meth:`RankingEngine.add_point`)."""
        if not self._probe.add_point(energy, y, var):
            return False
        self._readings.append((float(energy), float(y), float(var)))
        if self._live is not None:
            self._live.add_point(energy, y, var)
        return True

    def rebuild(self, energy, y, var) -> int:
        """Replace all readings (e.g. after a re-normalisation), as :meth:`RankingEngine.rebuild`.

        The pruned candidates' recorded masses belong to the old readings, so the next
        :meth:`result` evaluates every candidate anew (as after :meth:`set_offset_prior`).
        """
        self._probe.reset()
        self._readings = []
        if self._live is not None:
            self._live.reset(keep_window=True)
        used = self.add_points(energy, y, var)
        self._stale = self.n_points > 0
        return used

    def reduced_chi2(self, index: int, offset: float, broadening: float) -> float:
        """As :meth:`RankingEngine.reduced_chi2` for candidate ``index`` of the whole library."""
        return self._engine(np.array([int(index)]), self._cfg_exact).reduced_chi2(0, offset, broadening)

    def add_points(self, energy, y, var) -> int:
        return sum(self.add_point(e, yy, vv) for e, yy, vv in zip(np.atleast_1d(energy), np.atleast_1d(y),
                                                                   np.atleast_1d(var)))

    # ------------------------------------------------------------------ bound
    def _set_pruned(self, pruned: np.ndarray) -> None:
        """Record the pruned set: its bound's log sum and the order it is reported in."""
        self._pruned = pruned
        key = self._log_mass0[pruned] - self._bound0[pruned]
        self._log_key_sum = _lse(key)
        # reported after the live ones, by the upper bound of their log evidence (fixed order)
        self._pruned_order = pruned[np.argsort(-(self._logZc0[pruned] - self._bound0[pruned]), kind="stable")]

    def _outer_bound(self, log_live: float) -> float:
        log_u = self._log_key_sum + self._probe.log_bound
        if log_u == -np.inf:
            return 0.0
        return float(np.exp(log_u - np.logaddexp(log_u, log_live)))

    def _live_log_prior(self) -> float:
        return _lse(self.tables.log_prior_candidates[self._live_idx])

    # --------------------------------------------------------------- posterior
    def result(self, raw: bool = False) -> RankingResult:
        """The posterior over all candidates, within ``pruned_mass_bound`` of the exact one, with
        the leader's reduced chi^2 and the calibrated read-out (as :meth:`RankingEngine.result`;
        ``raw``: without them)."""
        res = None
        if self._live is not None and not self._stale:
            res = self._live.result(raw=True)
            bound = res.pruned_mass_bound + self._outer_bound(self._live.log_total + self._live_log_prior())
            res = self._assemble(res, bound) if bound <= self.config.prune_mass else None
        res = self._refresh() if res is None else res
        if raw or not self.n_points:
            return res
        top = int(res.order[0])
        at = np.searchsorted(self._live_idx, top)
        if self._live is not None and at < self._live_idx.size and self._live_idx[at] == top:
            res.top_reduced_chi2 = self._live.reduced_chi2(int(at), res.offset_map, res.broadening_map)
        else:  # the exact posterior came in chunks: the leader's fit on its own
            res.top_reduced_chi2 = self._engine(np.array([top]), self._cfg_exact).reduced_chi2(
                0, res.offset_map, res.broadening_map)
        return calibrated_result(res, self.config, self.tables.log_prior_candidates[res.order], self._probe.n_blocks)

    def _engine(self, idx: np.ndarray, config: RankingConfig) -> RankingEngine:
        eng = RankingEngine(tables=self.tables.take(idx), config=config)
        if self.offset_prior != (self.tables.config.offset_prior_mean, self.tables.config.offset_prior_sd):
            eng.set_offset_prior(*self.offset_prior)
        if self._readings:
            eng.add_points(*np.array(self._readings).T)  # one pass over the cells
        return eng

    def _evaluate(self, idx: np.ndarray):
        """Exact evaluation of the candidates ``idx``: their masses are recorded; returns the
        chunk's result and its log total in the units of the whole library."""
        eng = self._engine(idx, self._cfg_exact)
        res = eng.result(full=True, raw=True)
        log_z, log_mass, bound = eng.full_log_masses()
        shift = _lse(self.tables.log_prior_candidates[idx])  # the chunk's prior -> the library's
        self._log_mass0[idx] = log_mass + shift
        self._logZc0[idx] = log_z
        self._bound0[idx] = bound
        self.n_exact_evaluations += idx.size
        return res, eng.log_total + shift, idx

    def _refresh(self) -> RankingResult:
        """Exact evaluations until the pruned rest's bound is within the headroom; a new live set."""
        cfg, N = self.config, len(self.names)
        target = PRUNE_HEADROOM * cfg.prune_mass / 2
        B = self._probe.log_bound
        every = self._stale  # the pruned masses are for another offset prior
        if self._live is not None and not self._stale:
            self._live.result(full=True, raw=True)
            log_z, log_mass, _ = self._live.full_log_masses()
            self._log_mass0[self._live_idx] = log_mass + self._live_log_prior()
            self._logZc0[self._live_idx] = log_z
            self._bound0[self._live_idx] = B
            known = self._live_idx
        else:
            known = np.zeros(0, dtype=np.int64)
        rest = np.setdiff1d(np.arange(N), known)
        key = self._log_mass0[rest] - self._bound0[rest]
        order = rest[np.argsort(-key, kind="stable")]
        tail = np.logaddexp.accumulate((np.sort(key)))[::-1] + B  # log bound of order[k:]
        chunks = []
        pos, size = 0, self.chunk if every else min(FIRST_CHUNK, self.chunk)
        while pos < order.size:
            log_z = _lse(self._log_mass0[np.concatenate([known, order[:pos]])])
            if not every and tail[pos] - np.logaddexp(tail[pos], log_z) <= np.log(target):
                break
            idx = order[pos:pos + size]
            chunks.append(self._evaluate(idx))
            pos += idx.size
            size = min(2 * size, self.chunk)  # few when few are needed, in bigger chunks when many are
        exact = np.concatenate([known, order[:pos]])
        # the new live set: all but the least massive exact ones, within the budget
        m = self._log_mass0[exact]
        log_z = _lse(m)
        by_mass = np.argsort(m, kind="stable")
        cum = np.logaddexp.accumulate(m[by_mass]) - log_z
        drop = (cum <= np.log(target)) & (m[by_mass] - m.max() <= np.log(cfg.prune_eps))
        drop[by_mass.size - MIN_ACTIVE_CANDIDATES:] = False
        live = np.sort(exact[by_mass[~drop]])
        self._stale = False
        if live.size > self.max_live:  # too many matter: the exact posterior, chunk by chunk
            if pos < order.size:
                chunks += [self._evaluate(order[k:k + self.chunk]) for k in range(pos, order.size, self.chunk)]
            if known.size:  # the live ones in a chunk of their own
                chunks.append(self._evaluate(known))
            self._live_idx, self._live = np.zeros(0, dtype=np.int64), None
            self._set_pruned(np.arange(N))
            return self._combine(chunks)
        if self._live is None or not np.array_equal(live, self._live_idx):
            self._live_idx = live
            self._live = self._engine(live, self._cfg_live)
        pruned = np.setdiff1d(np.arange(N), live)
        self._set_pruned(pruned)
        res = self._live.result(raw=True)
        bound = res.pruned_mass_bound + self._outer_bound(self._live.log_total + self._live_log_prior())
        return self._assemble(res, bound)

    def _assemble(self, res: RankingResult, bound: float) -> RankingResult:
        """The live engine's result extended to every candidate (pruned: probability 0)."""
        pruned = self._pruned_order
        order = np.concatenate([self._live_idx[res.order], pruned])
        log_ev = np.concatenate([res.log_evidence,
                                 self._logZc0[pruned] + (self._probe.log_bound - self._bound0[pruned])])
        return dataclasses.replace(res, names=self._names[order].tolist(), order=order,
                                   probabilities=np.concatenate([res.probabilities, np.zeros(pruned.size)]),
                                   log_evidence=log_ev, pruned_mass_bound=bound)

    def _combine(self, chunks: list) -> RankingResult:
        """The exact posterior from every chunk's result and log total."""
        totals = np.array([t for _, t, _ in chunks])
        weights = np.exp(totals - _lse(totals))
        offsets = self._probe.offsets
        probs = np.zeros(len(self.names))
        log_ev = np.zeros(len(self.names))
        p_off = sum(w * r.offset_posterior for (r, _, _), w in zip(chunks, weights))
        p_b = sum(w * r.broadening_posterior for (r, _, _), w in zip(chunks, weights))
        levels = sum(w * r.level_posterior for (r, _, _), w in zip(chunks, weights))
        p_none = float(sum(w * r.p_none for (r, _, _), w in zip(chunks, weights)))
        # the chunks' "none" and candidate evidences, each in log, from their totals and log odds
        log_none = _lse([t - np.logaddexp(0.0, -r.log_odds_none_raw) for r, t, _ in chunks])
        log_cands = _lse([t - np.logaddexp(0.0, r.log_odds_none_raw) for r, t, _ in chunks])
        for (r, _, idx), w in zip(chunks, weights):
            probs[idx[r.order]] = w * r.probabilities
            log_ev[idx[r.order]] = r.log_evidence
        order = np.lexsort((np.arange(probs.size), -log_ev, -probs))
        mean = float(np.dot(p_off, offsets))
        nz = probs[probs > 0]
        first = chunks[0][0]
        return dataclasses.replace(
            first, names=self._names[order].tolist(), probabilities=probs[order], log_evidence=log_ev[order],
            order=order, offset_mean=mean, offset_sd=float(np.sqrt(max(np.dot(p_off, (offsets - mean) ** 2), 0.0))),
            offset_map=float(offsets[int(np.argmax(p_off))]),
            broadening_mean=float(np.dot(p_b, self._probe.broadenings)),
            broadening_map=float(self._probe.broadenings[int(np.argmax(p_b))]),
            entropy=float(-np.sum(nz * np.log(nz))), offset_posterior=p_off, broadening_posterior=p_b,
            p_none=p_none, log_odds_none_raw=float(log_none - log_cands), level_posterior=levels,
            pruned_mass_bound=0.0,
            warnings=sorted({w for r, _, _ in chunks for w in r.warnings}))
