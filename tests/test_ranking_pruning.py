"""Pruning in the ranking: what it may change is bounded, and the bound holds.

Between full evaluations the engine updates only the live cells (offsets, broadenings and
candidates with non-negligible posterior). ``RankingConfig.prune_mass`` bounds the exact
posterior mass of the rest; the reported posterior must then be within it of the exact one.
"""

from __future__ import annotations

import numpy as np
import pytest

from synthetic import E0, ENERGIES, random_spectra
from xas_callbacks.ranking import RankingConfig, RankingEngine, reading_log_bound

SMALL_GRID = dict(offset_min=-4.0, offset_max=4.0, offset_prior_sd=3.0, broadenings=(0.0, 2.0, 4.0))


def _readings(truth, seed, n=80, shift=1.0, noise=0.01, order="random"):
    rng = np.random.default_rng(seed)
    E = np.linspace(E0 - 15.0, ENERGIES[-1] - 12.0, n)
    if order == "random":
        E = rng.permutation(E)
    y = np.interp(E + shift, ENERGIES, truth) + rng.normal(0.0, noise, E.size)
    return E, y, np.full(E.size, noise**2)


def test_one_reading_raises_no_cells_evidence_by_more_than_the_bound():
    """The bound's premise: a reading's predictive density is at most sqrt(w / 2 pi) in every
    (level, candidate, broadening, offset) cell, whatever the readings before it."""
    mean = random_spectra(12, seed=1)
    eng = RankingEngine([f"c{i}" for i in range(12)], ENERGIES, mean, np.full_like(mean, 0.02),
                        config=RankingConfig(**SMALL_GRID, full_every=1))
    E, y, v = _readings(mean[0] * 1.1 + 0.05, seed=1, n=60)
    before = eng.log_evidence_cells()
    rises = []
    for e, yy, vv in zip(E, y, v):
        if not eng.add_point(e, yy, vv):
            continue
        w = eng._readings[-1][2]
        after = eng.log_evidence_cells()
        rises.append(np.max(after - before) - reading_log_bound(w))
        before = after
    assert len(rises) > 40
    assert max(rises) <= 1e-9
    assert max(rises) > -3.0  # and it is not a loose bound for the best-fitting cells


def test_the_bound_is_tempered_and_absent_when_the_none_level_may_gain_without_limit():
    assert reading_log_bound(1e4, temperature=2.0) == pytest.approx(reading_log_bound(1e4) / 2)
    assert reading_log_bound(1e4, none_gamma=-1.0) == pytest.approx(reading_log_bound(1e4) + 0.5)
    assert reading_log_bound(1e4, none_gamma=2.0) == np.inf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_posterior_is_within_the_stated_bound_of_the_exact_one(seed):
    """2,000 random candidates: after every reading, the pruned engine's posterior (candidates,
    "none of these", offsets, broadenings) differs from the exact one by at most its
    ``pruned_mass_bound``, which never exceeds ``prune_mass``."""
    n = 2000
    mean = random_spectra(n, seed=100 + seed)
    std = np.full_like(mean, 0.02)
    names = [f"c{i}" for i in range(n)]
    prune_mass = 1e-6
    pruned = RankingEngine(names, ENERGIES, mean, std, config=RankingConfig(**SMALL_GRID, prune_mass=prune_mass))
    exact = RankingEngine(names, ENERGIES, mean, std, config=RankingConfig(**SMALL_GRID, full_every=1))
    truth = int(np.random.default_rng(seed).integers(n))
    E, y, v = _readings(mean[truth], seed=seed)
    bounds, errors = [], []
    for e, yy, vv in zip(E, y, v):
        pruned.add_point(e, yy, vv)
        exact.add_point(e, yy, vv)
        rp, re_ = pruned.result(), exact.result()
        assert re_.pruned_mass_bound == 0.0
        p_pruned = np.empty(n)
        p_pruned[rp.order] = rp.probabilities
        p_exact = np.empty(n)
        p_exact[re_.order] = re_.probabilities
        err = max(np.max(np.abs(p_pruned - p_exact)), abs(rp.p_none - re_.p_none),
                  np.max(np.abs(rp.offset_posterior - re_.offset_posterior)),
                  np.max(np.abs(rp.broadening_posterior - re_.broadening_posterior)))
        l1 = np.sum(np.abs(p_pruned - p_exact)) + abs(rp.p_none - re_.p_none)
        assert err <= rp.pruned_mass_bound + 1e-12
        assert l1 <= 2 * rp.pruned_mass_bound + 1e-12
        assert rp.pruned_mass_bound <= prune_mass
        bounds.append(rp.pruned_mass_bound)
        errors.append(err)
    assert sum(b > 0 for b in bounds) > len(bounds) / 2  # it did prune, most of the time
    assert pruned.result().names[0] == exact.result().names[0] == names[truth]
    assert len(pruned._active["n"]) < n / 10


def test_a_pruned_candidate_comes_back_when_the_readings_favour_it():
    """The first readings (up to 25 eV above the edge) are A's, which 60 decoys match as well
    there, and B, which differs from them there, is pruned; the later readings are B's: the
    bound forces full evaluations, B returns and wins, as in the exact posterior."""
    rng = np.random.default_rng(7)
    x = ENERGIES - E0
    a = random_spectra(1, seed=7)[0]
    decoys = [a + rng.uniform(0.03, 0.06) * np.exp(-0.5 * ((x - rng.uniform(40, 80)) / 4.0) ** 2)
              for _ in range(60)]
    b = a + 0.08 * np.exp(-0.5 * ((x - 8.0) / 2.0) ** 2) - 0.3 * np.exp(-0.5 * ((x - 60.0) / 8.0) ** 2)
    mean = np.vstack([a, b, *decoys, random_spectra(200, seed=8)])
    names = [f"c{i}" for i in range(len(mean))]
    std = np.full_like(mean, 0.01)
    pruned = RankingEngine(names, ENERGIES, mean, std, config=RankingConfig(**SMALL_GRID))
    exact = RankingEngine(names, ENERGIES, mean, std, config=RankingConfig(**SMALL_GRID, full_every=1))
    E = np.linspace(E0 - 15.0, ENERGIES[-1] - 12.0, 120)  # in energy order
    truth = np.where(E < E0 + 25.0, np.interp(E, ENERGIES, a), np.interp(E, ENERGIES, b))
    y = truth + np.random.default_rng(3).normal(0.0, 0.005, E.size)
    was_pruned = False
    for e, yy in zip(E, y):
        pruned.add_point(e, yy, 0.005**2)
        exact.add_point(e, yy, 0.005**2)
        rp = pruned.result()
        was_pruned = was_pruned or (rp.pruned_mass_bound > 0 and 1 not in pruned._active["n"])
    final, ref = pruned.result(), exact.result()
    assert was_pruned
    assert final.names[0] == ref.names[0] == "c1"
    assert final.probabilities[0] == pytest.approx(ref.probabilities[0], abs=final.pruned_mass_bound + 1e-12)


def test_screening_a_large_library_stays_within_the_bound_of_the_exact_posterior():
    """ScreeningEngine keeps only the candidates that matter live and re-evaluates the others
    exactly when their bound could exceed ``prune_mass``: after every reading its posterior is
    within the reported bound of the exact one, and it does prune (live set, few evaluations)."""
    from xas_callbacks.ranking import ranking_tables
    from xas_callbacks.screening import ScreeningEngine

    n = 2000
    mean = random_spectra(n, seed=42)
    std = np.full_like(mean, 0.02)
    names = [f"c{i}" for i in range(n)]
    screen = ScreeningEngine(ranking_tables(names, ENERGIES, mean, std, RankingConfig(**SMALL_GRID)),
                             max_live=300, chunk=500)
    exact = RankingEngine(names, ENERGIES, mean, std, config=RankingConfig(**SMALL_GRID, full_every=1))
    E, y, v = _readings(mean[17], seed=5, n=70)
    pruned_updates = 0
    for e, yy, vv in zip(E, y, v):
        assert screen.add_point(e, yy, vv) == exact.add_point(e, yy, vv)
        rs, re_ = screen.result(), exact.result()
        p_s, p_e = np.empty(n), np.empty(n)
        p_s[rs.order], p_e[re_.order] = rs.probabilities, re_.probabilities
        err = max(np.max(np.abs(p_s - p_e)), abs(rs.p_none - re_.p_none),
                  np.max(np.abs(rs.offset_posterior - re_.offset_posterior)),
                  np.max(np.abs(rs.level_posterior - re_.level_posterior)))
        assert err <= rs.pruned_mass_bound + 1e-12
        assert rs.pruned_mass_bound <= 1e-6
        assert sorted(rs.names) == sorted(names)
        pruned_updates += screen.n_live < n / 10
    assert pruned_updates > 20
    assert screen.n_exact_evaluations < 70 * n / 2  # not every candidate at every reading
    assert rs.names[0] == re_.names[0] == "c17"


#: a read-out of the fitted kind (RankingConfig.confidence), for the test below
READOUT = dict(confidence=(4.25, -0.37, 0.15, 0.42, -1.88), confidence_temperature=1.5, confidence_chi2_power=0.8)


def test_pruned_posterior_with_the_calibrated_readout_stays_near_the_exact_one():
    """With the calibrated read-out the candidates' share keeps its bound (the tempered share of
    the pruned candidates is added to it); "none of these" may move by what pruning changes in
    the explicit alternative's log odds, clipped at 10 nats: a few 1e-3 at most."""
    n = 2000
    mean = random_spectra(n, seed=100)
    std = np.full_like(mean, 0.02)
    names = [f"c{i}" for i in range(n)]
    pruned = RankingEngine(names, ENERGIES, mean, std, config=RankingConfig(**SMALL_GRID, **READOUT))
    exact = RankingEngine(names, ENERGIES, mean, std, config=RankingConfig(**SMALL_GRID, **READOUT, full_every=1))
    truth = int(np.random.default_rng(0).integers(n))
    E, y, v = _readings(mean[truth], seed=0)
    worst, bounds = 0.0, []
    for e, yy, vv in zip(E, y, v):
        pruned.add_point(e, yy, vv)
        exact.add_point(e, yy, vv)
        rp, re_ = pruned.result(), exact.result()
        p_pruned = np.empty(n)
        p_pruned[rp.order] = rp.probabilities
        p_exact = np.empty(n)
        p_exact[re_.order] = re_.probabilities
        worst = max(worst, np.max(np.abs(p_pruned - p_exact)) - rp.pruned_mass_bound, abs(rp.p_none - re_.p_none))
        bounds.append(rp.pruned_mass_bound)
    assert sum(b > 0 for b in bounds) > len(bounds) / 2  # it did prune
    assert worst < 5e-3
    assert pruned.result().names[0] == names[truth] and pruned.result().p_none < 0.5
