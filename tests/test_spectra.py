"""Spectrum functions on synthetic spectra with known peaks, edges and grids."""

from __future__ import annotations

import numpy as np
import pytest

from models.readers import SiteSpectrum
from models.spectra import (
    PEAK_PROMINENCE,
    common_grid,
    edge_position,
    find_peaks,
    gaussian_broaden,
    make_grid,
    match_peaks,
    resample,
    spectrum_metrics,
)


def synthetic(energy, edge=8990.0, peaks=((9000.0, 0.6, 2.0), (9030.0, 0.25, 4.0)), width=1.5):
    """Arctan step of unit height at ``edge`` plus Gaussian peaks (centre, height, sigma)."""
    mu = 0.5 + np.arctan((energy - edge) / width) / np.pi
    for centre, height, sigma in peaks:
        mu = mu + height * np.exp(-0.5 * ((energy - centre) / sigma) ** 2)
    return mu


def uneven_grid():
    # fine near the edge, coarse above, like FEFF's output
    return np.unique(np.concatenate([np.arange(8975, 9000, 0.3), 9000 + 0.02 * np.arange(0, 100) ** 2]))


def test_make_grid_and_errors():
    g = make_grid(8980, 9000, 41)
    assert g.shape == (41,) and g[1] - g[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="start < stop"):
        make_grid(9000, 8980, 10)
    with pytest.raises(ValueError, match="at least 2 points"):
        make_grid(0, 1, 1)


def test_common_grid_covered_by_nearly_all():
    rng = np.random.default_rng(0)
    spectra = []
    for _ in range(200):
        start = 8984 + rng.uniform(0, 1.5)
        e = np.linspace(start, start + 140, 50)
        spectra.append(SiteSpectrum(0, e, np.ones_like(e)))
    spectra.append(SiteSpectrum(0, np.linspace(8999, 9100, 50), np.ones(50)))  # one outlier
    grid = common_grid(spectra, 100, quantile=0.01)
    starts = np.array([s.energy[0] for s in spectra])
    stops = np.array([s.energy[-1] for s in spectra])
    covered = (starts <= grid[0]) & (stops >= grid[-1])
    assert covered.mean() >= 0.97
    assert grid[0] < 8986 and grid[-1] > 9120  # the outlier did not shrink the grid
    assert len(grid) == 100
    tuples = common_grid([(s.energy, s.mu) for s in spectra], 100, quantile=0.01)
    np.testing.assert_allclose(tuples, grid)


def test_resample_linear_pad_and_refuse():
    e = np.array([0.0, 1.0, 2.0, 4.0])
    mu = np.array([0.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(resample(e, mu, [0.5, 3.0]), [1.0, 6.0])
    # within tolerance: edge value
    np.testing.assert_allclose(resample(e, mu, [-0.5, 4.5], tolerance=1.0), [0.0, 8.0])
    with pytest.raises(ValueError, match=r"extends beyond the spectrum \[0.00, 4.00\] eV by 3.00 eV"):
        resample(e, mu, [0.0, 7.0], tolerance=1.0)
    batch = resample(e, np.stack([mu, 2 * mu]), [3.0])
    np.testing.assert_allclose(batch, [[6.0], [12.0]])
    with pytest.raises(ValueError, match="increase strictly"):
        resample([0, 2, 1], [0, 0, 0], [0.5])


def test_find_peaks_recovers_known_peaks_on_uneven_grid():
    e = uneven_grid()
    mu = synthetic(e)
    peaks = find_peaks(e, mu)
    assert len(peaks) == 2
    np.testing.assert_allclose(peaks, [9000.0, 9030.0], atol=0.2)  # sub-grid refinement
    # a bump smaller than the prominence threshold is not a peak
    small = synthetic(e, peaks=((9000.0, 0.6, 2.0), (9030.0, PEAK_PROMINENCE / 3, 4.0)))
    assert len(find_peaks(e, small)) == 1
    assert len(find_peaks(e, small, prominence=PEAK_PROMINENCE / 10)) == 2


def test_match_peaks():
    d = match_peaks([10.0, 20.0, 30.0], [10.4, 29.0])
    np.testing.assert_allclose(d, [0.4, 9.0, 1.0])
    assert np.all(np.isinf(match_peaks([1.0, 2.0], [])))
    assert match_peaks([], [1.0]).shape == (0,)


def test_edge_position_finds_the_steepest_point():
    e = uneven_grid()
    for edge in (8985.0, 8991.3):
        assert edge_position(e, synthetic(e, edge=edge, peaks=())) == pytest.approx(edge, abs=0.1)
    shifted = edge_position(e, synthetic(e, edge=8992.0, peaks=()))
    assert shifted - edge_position(e, synthetic(e, edge=8990.0, peaks=())) == pytest.approx(2.0, abs=0.1)


def test_gaussian_broaden_preserves_flat_and_area_and_widens():
    e = np.linspace(8950, 9050, 1001)
    flat = np.full_like(e, 0.7)
    np.testing.assert_allclose(gaussian_broaden(e, flat, 3.0), flat, atol=1e-12)
    sigma0 = 1.0
    line = np.exp(-0.5 * ((e - 9000) / sigma0) ** 2)
    fwhm = 2.0
    out = gaussian_broaden(e, line, fwhm)
    sigma_k = fwhm / (2 * np.sqrt(2 * np.log(2)))
    expected = np.sqrt(sigma0**2 + sigma_k**2)
    assert np.trapezoid(out, e) == pytest.approx(np.trapezoid(line, e), rel=1e-6)
    assert out.max() == pytest.approx(sigma0 / expected, rel=1e-3)
    batch = gaussian_broaden(e, np.stack([line, flat]), fwhm)
    np.testing.assert_allclose(batch[0], out)
    np.testing.assert_allclose(gaussian_broaden(e, line, 0.0), line)
    with pytest.raises(ValueError, match="fwhm_eV"):
        gaussian_broaden(e, line, -1.0)


def test_spectrum_metrics_perfect_and_shifted():
    grid = make_grid(8975, 9060, 400)
    true = np.stack([synthetic(grid, edge=8990 + k) for k in range(3)])
    perfect = spectrum_metrics(grid, true, true)
    assert perfect["mse"] == 0.0
    assert perfect["median_pearson"] == pytest.approx(1.0)
    assert perfect["median_spearman"] == pytest.approx(1.0)
    assert perfect["peaks_within_1eV"] == 1.0 and perfect["peaks_within_0.5eV"] == 1.0
    assert perfect["n_true_peaks"] == 6 and perfect["n_spectra"] == 3
    assert perfect["edge_mae_eV"] == pytest.approx(0.0, abs=1e-9)

    # every feature 0.8 eV too high: within 1 eV, not within 0.5 eV; edge off by 0.8 eV
    shifted = np.stack([synthetic(grid, edge=8990.8 + k, peaks=((9000.8, 0.6, 2.0), (9030.8, 0.25, 4.0))) for k in range(3)])
    m = spectrum_metrics(grid, true, shifted)
    assert m["peaks_within_1eV"] == 1.0 and m["peaks_within_0.5eV"] == 0.0
    assert m["edge_mae_eV"] == pytest.approx(0.8, abs=0.1)
    assert 0 < m["mse"] and m["median_pearson"] < 1.0

    # a prediction that misses the second peak entirely
    missing = np.stack([synthetic(grid, edge=8990 + k, peaks=((9000.0, 0.6, 2.0),)) for k in range(3)])
    m = spectrum_metrics(grid, true, missing)
    assert m["peaks_within_1eV"] == pytest.approx(0.5)
    assert set(m) == {"mse", "median_pearson", "median_spearman", "peaks_within_1eV",
                      "peaks_within_0.5eV", "n_true_peaks", "edge_mae_eV", "n_spectra"}


def test_spectrum_metrics_rejects_mismatched_shapes():
    grid = make_grid(0, 10, 20)
    with pytest.raises(ValueError, match=r"must both be \(N, 20\)"):
        spectrum_metrics(grid, np.zeros((2, 20)), np.zeros((3, 20)))
