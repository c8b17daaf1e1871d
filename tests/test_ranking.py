"""Posterior math of the ranking engine on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from models.spectra import gaussian_broaden_uniform

from xas_callbacks.ranking import (
    RankingConfig,
    RankingEngine,
    linear_gaussian_log_evidence,
)

GRID = np.arange(8970.0, 9100.0, 0.5)


def _edge(center, width=1.5, peak=0.0, peak_at=None, osc=0.0):
    """Arctan edge with an optional white-line peak and post-edge oscillation."""
    x = GRID
    mu = 0.5 + np.arctan((x - center) / width) / np.pi
    if peak:
        pa = center + 4 if peak_at is None else peak_at
        mu = mu + peak * np.exp(-0.5 * ((x - pa) / 2.0) ** 2)
    if osc:
        mu = mu + osc * np.sin((x - center) / 9.0) * (x > center)
    return mu


def _library():
    names = ["A", "B", "C", "D"]
    mean = np.array([
        _edge(8990, peak=0.5),
        _edge(8992, peak=0.3, osc=0.05),  # chemically shifted by +2 eV
        _edge(8990, peak=0.1, osc=0.1),
        _edge(8988, peak=0.6, peak_at=8996),
    ])
    return names, mean


def _measure(mean_true, shift, noise=0.005, a=1.0, b=0.0, seed=0, fwhm=0.0, step=0.7):
    rng = np.random.default_rng(seed)
    E = np.arange(8960.0, 9070.0, step)
    m = gaussian_broaden_uniform(mean_true, 0.5, fwhm) if fwhm else mean_true
    y = a * np.interp(E + shift, GRID, m) + b + rng.normal(0, noise, E.size)
    return E, y, np.full(E.size, noise**2)


def _cfg(**kw):
    base = dict(offset_min=-6, offset_max=6, offset_step=0.5, offset_prior_sd=4.0,
                broadenings=(0.0, 1.0, 2.0, 3.0, 4.0), model_floor=0.005)
    base.update(kw)
    return RankingConfig(**base)


@pytest.mark.parametrize("true", [0, 1, 2, 3])
def test_true_candidate_wins(true):
    names, mean = _library()
    eng = RankingEngine(names, GRID, mean, np.full_like(mean, 0.01), config=_cfg())
    E, y, v = _measure(mean[true], shift=0.0, seed=true)
    eng.add_points(E, y, v)
    res = eng.result()
    assert res.names[0] == names[true]
    assert res.probabilities[0] > 0.95
    assert np.isclose(res.probabilities.sum() + res.p_none, 1.0)
    assert np.all(np.diff(res.probabilities) <= 0)


def test_common_shift_recovered():
    names, mean = _library()
    eng = RankingEngine(names, GRID, mean, config=_cfg())
    E, y, v = _measure(mean[0], shift=3.2)  # measured E corresponds to model E + 3.2
    eng.add_points(E, y, v)
    res = eng.result()
    assert res.names[0] == "A"
    assert abs(res.offset_mean - 3.2) < 0.35
    assert res.offset_sd < 0.5


def test_per_candidate_shift_is_not_absorbed():
    """B is A's shape shifted by +2 eV (a chemical shift). With the common offset pinned by a
    narrow prior (a reference foil), a sample that is B must not be explained by A+shift."""
    a = _edge(8990, peak=0.5)
    b = _edge(8992, peak=0.5, peak_at=8996)  # same shape, +2 eV
    c = _edge(8990, peak=0.2, osc=0.1)
    eng = RankingEngine(["A", "B", "C"], GRID, np.array([a, b, c]),
                        config=_cfg(offset_prior_mean=0.0, offset_prior_sd=0.3))
    E, y, v = _measure(b, shift=0.0)
    eng.add_points(E, y, v)
    res = eng.result()
    assert res.names[0] == "B"
    assert res.probabilities[0] > 0.99
    assert abs(res.offset_mean) < 0.5


def test_shift_is_shared_between_candidates():
    """With a broad offset prior, a shifted A still ranks A first and the offset found is the
    one shared by all candidates (not one per candidate)."""
    names, mean = _library()
    eng = RankingEngine(names, GRID, mean, config=_cfg(offset_prior_sd=10))
    E, y, v = _measure(mean[3], shift=-2.5)
    eng.add_points(E, y, v)
    res = eng.result()
    assert res.names[0] == "D"
    assert res.offset_posterior.shape == eng.offsets.shape
    assert abs(res.offset_mean + 2.5) < 0.35


@pytest.mark.parametrize("a,b", [(1.0, 0.0), (0.6, 0.3), (1.4, -0.2)])
def test_amplitude_and_background_do_not_change_ranking(a, b):
    names, mean = _library()
    cfg = _cfg(amplitude_prior=(1.0, 1.0), background_prior=(0.0, 1.0))
    ranks = []
    for aa, bb in [(1.0, 0.0), (a, b)]:
        eng = RankingEngine(names, GRID, mean, config=cfg)
        E, y, v = _measure(mean[1], shift=0.0, a=aa, b=bb, noise=0.005 * aa)
        eng.add_points(E, y, v)
        ranks.append(eng.result().names)
    assert ranks[0] == ranks[1]
    assert ranks[0][0] == "B"


def test_broadening_recovered_approximately():
    names, mean = _library()
    eng = RankingEngine(names, GRID, mean, config=_cfg())
    E, y, v = _measure(mean[0], shift=0.0, fwhm=3.0, noise=0.002, step=0.4)
    eng.add_points(E, y, v)
    res = eng.result()
    assert res.names[0] == "A"
    assert abs(res.broadening_mean - 3.0) <= 1.0
    assert res.broadening_map in (2.0, 3.0, 4.0)


def test_closed_form_evidence_matches_brute_force_integration():
    rng = np.random.default_rng(3)
    n = 6
    m = rng.uniform(0, 1.2, n)
    y = 0.8 * m + 0.1 + rng.normal(0, 0.05, n)
    var = rng.uniform(0.002, 0.01, n)
    w = 1.0 / var
    (ma, sa), (mb, sb) = (1.0, 0.5), (0.0, 0.5)
    closed = linear_gaussian_log_evidence(
        np.sum(w), np.sum(w * m), np.sum(w * m * m), np.sum(w * y), np.sum(w * m * y),
        np.sum(w * y * y), np.sum(np.log(w)), n, (ma, sa), (mb, sb))

    def integrand(b, a):
        r = y - a * m - b
        loglik = -0.5 * np.sum(r * r * w) + 0.5 * np.sum(np.log(w)) - 0.5 * n * np.log(2 * np.pi)
        logpa = -0.5 * ((a - ma) / sa) ** 2 - np.log(sa * np.sqrt(2 * np.pi))
        logpb = -0.5 * ((b - mb) / sb) ** 2 - np.log(sb * np.sqrt(2 * np.pi))
        return np.exp(loglik + logpa + logpb - closed)  # scaled so the integral is ~1

    val, err = integrate.dblquad(integrand, -1.0, 3.0, -2.0, 2.0, epsabs=1e-10, epsrel=1e-8)
    assert val == pytest.approx(1.0, rel=1e-5)


def test_incremental_equals_batch_and_is_deterministic():
    names, mean = _library()
    std = np.full_like(mean, 0.02)
    E, y, v = _measure(mean[2], shift=1.0, seed=5)
    e1 = RankingEngine(names, GRID, mean, std, config=_cfg())
    e2 = RankingEngine(names, GRID, mean, std, config=_cfg())
    for k in range(E.size):
        e1.add_point(E[k], y[k], v[k])
    e2.rebuild(E, y, v)
    r1, r2 = e1.result(), e2.result()
    assert r1.names == r2.names
    assert np.array_equal(r1.probabilities, r2.probabilities)
    assert np.array_equal(r1.log_evidence, r2.log_evidence)
    assert r1.offset_mean == r2.offset_mean


def test_model_std_tempers_the_evidence():
    """A candidate with a large predictive std is not punished as hard for a misfit."""
    names, mean = _library()
    E, y, v = _measure(mean[0], shift=0.0)
    std = np.full_like(mean, 0.005)
    tight = _cfg(discrepancy_sd=(0.001,), model_white=0.0)
    eng_tight = RankingEngine(names, GRID, mean, std, config=tight)
    std_loose = std.copy()
    std_loose[1] = 0.2
    eng_loose = RankingEngine(names, GRID, mean, std_loose, config=tight)
    for eng in (eng_tight, eng_loose):
        eng.add_points(E, y, v)
    lt = dict(zip(eng_tight.result().names, eng_tight.result().log_evidence))
    ll = dict(zip(eng_loose.result().names, eng_loose.result().log_evidence))
    assert ll["B"] > lt["B"]
    assert eng_loose.result().names[0] == "A"


def test_float32_engine_agrees_with_float64():
    names, mean = _library()
    std = np.full_like(mean, 0.02)
    E, y, v = _measure(mean[1], shift=-1.0, seed=9)
    r = []
    for dt in (np.float64, np.float32):
        eng = RankingEngine(names, GRID, mean, std, config=_cfg(), dtype=dt)
        eng.add_points(E, y, v)
        r.append(eng.result())
    assert r[0].names == r[1].names
    np.testing.assert_allclose(r[0].log_evidence, r[1].log_evidence, atol=0.5)
    assert abs(r[0].offset_mean - r[1].offset_mean) < 0.05


def test_points_outside_window_and_bad_values_are_counted():
    names, mean = _library()
    eng = RankingEngine(names, GRID, mean, config=_cfg())
    assert not eng.add_point(7000.0, 0.5, 1e-4)
    assert not eng.add_point(8990.0, np.nan, 1e-4)
    assert not eng.add_point(8990.0, 0.5, -1.0)
    assert eng.add_point(8990.0, 0.5, 1e-4)
    assert eng.n_outside == 3 and eng.n_points == 1
    res = eng.result()
    assert np.isfinite(res.entropy)


def test_no_points_gives_prior():
    names, mean = _library()
    eng = RankingEngine(names, GRID, mean, config=_cfg())
    res = eng.result()
    np.testing.assert_allclose(res.probabilities, 0.25 * (1 - eng.config.none_prior))
    assert res.p_none == pytest.approx(eng.config.none_prior)
    assert res.names == names  # ties keep library order


def test_reduced_chi2_is_near_one_for_the_truth_and_large_when_no_candidate_explains_the_data():
    names, mean = _library()
    eng = RankingEngine(names[:3], GRID, mean[:3], np.full_like(mean[:3], 0.005), config=_cfg())
    eng.add_points(*_measure(mean[0], 1.0, noise=0.005))
    res = eng.result(full=True)
    assert res.names[0] == "A"
    chi2 = eng.reduced_chi2(int(res.order[0]), res.offset_map, res.broadening_map)
    assert 0.2 < chi2 < 2.0
    # D (a white line 6 eV above the others') is not among the candidates: the best of them
    # still wins the ranking, but its fit is far outside what noise and model error allow.
    eng.reset()
    eng.add_points(*_measure(mean[3], 1.0, noise=0.005))
    res = eng.result(full=True)
    assert eng.reduced_chi2(int(res.order[0]), res.offset_map, res.broadening_map) > 10.0


def test_log_evidence_is_the_gaussian_marginal_likelihood_of_the_block_model():
    """Each cell's evidence equals the dense multivariate-normal likelihood of the readings with
    a, b and every block's discrepancy integrated out."""
    from scipy.stats import multivariate_normal

    names, mean = _library()
    std = np.linspace(0.01, 0.03, mean.size).reshape(mean.shape)
    cfg = _cfg(discrepancy_sd=(0.02, 0.05), discrepancy_block_eV=3.0, model_floor=0.004, model_white=0.5)
    eng = RankingEngine(names, GRID, mean, std, config=cfg)
    E, y, v = _measure(mean[1], shift=0.7, noise=0.004, seed=3)
    y = y + 0.04 * np.sin(E / 4.0)  # a smooth systematic discrepancy
    eng.add_points(E, y, v)
    cells = eng.log_evidence_cells()  # (levels, N, W, O)
    (ma, sa), (mb, sb) = cfg.amplitude_prior, cfg.background_prior
    typical = np.interp(E + eng.offset_prior[0], eng.grid, eng.tables.median_var)
    noise = v + cfg.model_floor**2 + cfg.model_white**2 * typical
    blocks = np.floor((E - eng.window[0]) / cfg.discrepancy_block_eV).astype(int)
    for level, n, b, o in [(0, 1, 0, 13), (1, 2, 3, 4), (2, 0, 1, 20)]:
        m, _ = eng.model_at(n, E, eng.offsets[o], eng.broadenings[b])
        keys = sorted(set(blocks))
        prior_var = np.array([1.0 / eng._P[k][level, n] for k in keys])
        phi = (blocks[:, None] == np.array(keys)[None, :]).astype(float)
        X = np.stack([m, np.ones_like(m)], axis=1)
        C = np.diag(noise) + phi @ np.diag(prior_var) @ phi.T + X @ np.diag([sa**2, sb**2]) @ X.T
        dense = multivariate_normal(ma * m + mb, C).logpdf(y)
        assert cells[level, n, b, o] == pytest.approx(dense, abs=1e-6)


def test_repeated_readings_of_one_feature_do_not_multiply_into_certainty():
    """Two candidates that differ by a plateau within one discrepancy block: a hundred readings
    of it are worth little more than ten, because the model may be off there by as much; were
    the same errors independent, they would count about ten times as much."""
    x = GRID
    base = 0.5 + np.arctan((x - 8990) / 1.5) / np.pi
    rng = np.random.default_rng(1)

    def log_odds(correlated, n_feature):
        # the same variance per reading, correlated within the block or white
        sd, floor = (0.02, 0.002) if correlated else (1e-4, float(np.hypot(0.02, 0.002)))
        cfg = _cfg(discrepancy_sd=(sd,), discrepancy_block_eV=6.0, model_floor=floor, model_white=0.0,
                   offset_min=-1, offset_max=1, broadenings=(0.0,), none_prior=1e-6,
                   amplitude_prior=(1.0, 1e-4), background_prior=(0.0, 1e-4))  # no nuisance absorbs the plateau
        probe = RankingEngine(["a"], GRID, base[None, :], config=cfg)
        lo = probe.window[0] + 10 * 6.0  # one discrepancy block of measured energy, above the edge
        plateau = 0.03 * ((x >= lo) & (x < lo + 6.0))
        mean = np.array([base + plateau, base])
        E = np.concatenate([np.linspace(8970, 9060, 30), np.linspace(lo + 0.5, lo + 5.5, n_feature)])
        y = np.interp(E, x, mean[0]) + rng.normal(0, 0.002, E.size)
        eng = RankingEngine(["plateau", "plain"], GRID, mean, np.zeros_like(mean), config=cfg)
        eng.add_points(E, y, np.full(E.size, 0.002**2))
        p = dict(zip(*[(r := eng.result(full=True)).names, r.probabilities]))
        return np.log(p["plateau"] / p["plain"])

    correlated = {n: log_odds(True, n) for n in (10, 100)}
    independent = {n: log_odds(False, n) for n in (10, 100)}
    # bounded by how unlikely the plateau is as a discrepancy: (0.03 / 0.02)^2 / 2 nats and change
    assert 0 < correlated[10] < correlated[100] < 3.0
    assert independent[100] > 5 * independent[10] > 0


def test_a_sample_that_is_none_of_the_candidates_is_said_to_be_so():
    names, mean = _library()
    cfg = _cfg(discrepancy_sd=(0.01,), none_sd=0.1, none_prior=0.1)
    E, y, v = _measure(mean[3], shift=0.5, noise=0.004, seed=2)
    present = RankingEngine(names, GRID, mean, np.full_like(mean, 0.01), config=cfg)
    present.add_points(E, y, v)
    absent = RankingEngine(names[:3], GRID, mean[:3], np.full_like(mean[:3], 0.01), config=cfg)
    absent.add_points(E, y, v)
    with_truth, without = present.result(full=True), absent.result(full=True)
    assert with_truth.names[0] == "D" and with_truth.p_none < 0.05
    assert without.p_none > 0.9 and without.probabilities[0] < 0.1


def test_a_broadening_at_the_top_of_its_grid_is_reported():
    names, mean = _library()
    eng = RankingEngine(names, GRID, mean, config=_cfg())
    eng.add_points(*_measure(mean[0], shift=0.0, fwhm=3.0, noise=0.002, step=0.4, seed=1))
    assert not any("broadening" in w for w in eng.result(full=True).warnings)
    eng = RankingEngine(names, GRID, mean, config=_cfg())
    eng.add_points(*_measure(mean[0], shift=0.0, fwhm=12.0, noise=0.002, step=0.4, seed=1))
    assert any("top of its grid (4.0 eV" in w for w in eng.result(full=True).warnings)


def test_the_offset_prior_comes_from_the_edges_and_a_pinned_offset_is_reported():
    from xas_callbacks.ranking import data_offset_prior

    names, mean = _library()
    E, y, _ = _measure(mean[0], shift=9.0, seed=4)  # measured E + 9 = model E
    mean_offset, sd = data_offset_prior(E, y, GRID, mean)
    assert abs(mean_offset - 9.0) < 3.0 and 2.0 < sd < 6.0
    eng = RankingEngine(names, GRID, mean, np.full_like(mean, 0.01), config=_cfg(offset_min=-4, offset_max=4))
    eng.add_points(*_measure(mean[0], shift=9.0, seed=4))
    assert any("upper end" in w for w in eng.result(full=True).warnings)


def test_pruned_updates_catch_up_to_the_full_result():
    """Between full evaluations only live cells are updated; a full evaluation replays what the
    others missed, so it equals an engine that updated every cell every time."""
    names, mean = _library()
    std = np.full_like(mean, 0.01)
    E, y, v = _measure(mean[2], shift=-1.0, seed=6)
    pruned = RankingEngine(names, GRID, mean, std, config=_cfg(full_every=20))
    always = RankingEngine(names, GRID, mean, std, config=_cfg(full_every=1))
    for k in range(E.size):
        pruned.add_point(E[k], y[k], v[k])
        always.add_point(E[k], y[k], v[k])
        pruned.result()
        always.result()
    assert pruned._live[:4] != (0, 5, 0, pruned.offsets.size)  # it did prune
    a, b = pruned.result(full=True), always.result(full=True)
    assert a.names == b.names
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-9, atol=1e-12)
    assert a.p_none == pytest.approx(b.p_none, rel=1e-9, abs=1e-12)


def test_settings_per_model_come_from_the_settings_file(tmp_path, monkeypatch):
    import json

    from xas_callbacks import ranking

    path = tmp_path / "ranking_settings.json"
    path.write_text(json.dumps({"models": {"o-k": {"temperature": 4.0, "discrepancy_sd": [0.01, 0.2],
                                                   "calibration": "somewhere.json", "weights_sha256": None}}}))
    monkeypatch.setattr(ranking, "SETTINGS_FILE", path)
    config = ranking.RankingConfig.for_model("o-k", none_prior=0.2)
    assert config.temperature == 4.0 and config.discrepancy_sd == (0.01, 0.2) and config.none_prior == 0.2
    assert ranking.RankingConfig.for_model("n-k") == ranking.RankingConfig()  # not calibrated: the defaults

    class Library:
        provenance = {"model": "o-k"}

    assert ranking.RankingConfig.for_library(Library()).temperature == 4.0
