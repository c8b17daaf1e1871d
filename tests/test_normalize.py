"""mu from counts with Poisson variances; normalisation from few points to full spectra."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from endstation.modes import mu_from_counts
from models.normalization import normalize


def test_transmission_mu_and_variance_match_poisson_simulation():
    rng = np.random.default_rng(0)
    i0_mean, mu_true = 2.0e5, 1.3
    i0 = rng.poisson(i0_mean, 20000).astype(float)
    it = rng.poisson(i0_mean * np.exp(-mu_true), 20000).astype(float)
    mu, var, bad = mu_from_counts("transmission", i0, it)
    assert not bad.any()
    assert np.mean(mu) == pytest.approx(mu_true, abs=1e-3)
    assert np.mean(var) == pytest.approx(np.var(mu), rel=0.05)


def test_fluorescence_and_reference_modes():
    mu, var, bad = mu_from_counts("fluorescence", i0=[1e4, 1e4], if_=[500.0, 2000.0])
    np.testing.assert_allclose(mu, [0.05, 0.2])
    np.testing.assert_allclose(var, mu**2 * (1 / np.array([500.0, 2000.0]) + 1e-4))
    mu, var, bad = mu_from_counts("reference", it=[1e4], ir=[1e3])
    assert mu[0] == pytest.approx(np.log(10))


def test_bad_counts_are_flagged_not_raised():
    mu, var, bad = mu_from_counts("transmission", [1e5, 0.0, -3.0, np.nan, 1e5], [1e4, 1e4, 1e4, 1e4, 0.0])
    assert bad.tolist() == [False, True, True, True, True]
    assert np.isnan(mu[1:]).all() and np.isfinite(mu[0])
    with pytest.raises(ValueError):
        mu_from_counts("xes", [1.0], [1.0])


def _spectrum(E, e0=8979.0, step=1.6, pre=(-1.8, -0.0012)):
    x = E - e0
    return pre[0] + pre[1] * x + step * (0.5 + np.arctan(x / 2.0) / np.pi) * (1 + 0.0002 * np.clip(x, 0, None))


def test_full_spectrum_uses_larch_and_recovers_step():
    E = np.concatenate([np.arange(8800, 8960, 5.0), np.arange(8960, 9000, 0.5), np.arange(9000, 9400, 3.0)])
    mu = _spectrum(E)
    nm = normalize(E, mu, 8979.0)
    assert nm.method == "larch"
    assert nm.edge_step == pytest.approx(1.6, rel=0.05)
    post = nm.norm[E > 9050]
    assert np.all(np.abs(post - 1.0) < 0.15)
    robust = normalize(E, mu, 8979.0, use_larch=False)
    assert robust.method == "linear"
    assert robust.edge_step == pytest.approx(nm.edge_step, rel=0.03)


def test_few_irregular_points_are_provisional_but_finite():
    E = np.array([8950.0, 8990.0, 8930.0])
    nm = normalize(E, _spectrum(E), 8979.0)
    assert nm.method in ("provisional", "linear")
    assert np.all(np.isfinite(nm.norm)) and np.isfinite(nm.edge_step) and nm.edge_step != 0


def test_e0_found_on_the_edge_when_not_given():
    E = np.arange(8950, 9010, 0.5)
    assert abs(normalize(E, _spectrum(E)).e0 - 8979.0) <= 1.0
    sparse = np.array([8950.0, 8970.0, 8978.0, 8980.0, 9000.0, 8978.0])  # unsorted, repeated
    assert abs(normalize(sparse, _spectrum(sparse)).e0 - 8979.0) <= 2.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(8800, 9300), st.one_of(st.floats(-1e3, 1e3), st.just(float("nan")))), max_size=40))
def test_normalize_never_raises(points):
    E = np.array([p[0] for p in points], dtype=float)
    mu = np.array([p[1] for p in points], dtype=float)
    nm = normalize(E, mu, 8979.0)
    assert nm.norm.shape == E.shape
    assert np.isfinite(nm.edge_step)
