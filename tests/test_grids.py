"""Energy grids: BMM-style strings and dicts, E0 from xraydb, clear errors on bad input."""

import numpy as np
import pytest

from plans.grids import DEFAULT_GRID, ETOK, edge_energy, etok, ktoe, make_grid, parse_grid


def test_edge_energy_from_xraydb():
    assert edge_energy("Cu", "K") == pytest.approx(8979.0, abs=1.0)
    assert edge_energy("Fe", "k") == pytest.approx(7112.0, abs=1.0)


@pytest.mark.parametrize("element", ["Xx", "", "Cuu"])
def test_unknown_element_named(element):
    with pytest.raises(ValueError, match="element"):
        make_grid(element, "K")


def test_unknown_edge_named():
    with pytest.raises(ValueError, match=r"unknown edge 'Q9'.*'Cu'"):
        make_grid("Cu", "Q9")


def test_bmm_default_grid_regions():
    g = make_grid("Cu", "K")
    e0 = edge_energy("Cu", "K")
    rel = g.energies - e0
    assert np.all(np.diff(g.energies) > 0)
    assert rel[0] == pytest.approx(-200.0)
    assert rel[-1] == pytest.approx(ktoe(13.0))
    # pre-edge steps of 10 eV, XANES steps 0.3 eV, EXAFS constant steps of 0.05 in k
    pre = rel[rel < -30]
    assert np.allclose(np.diff(pre), 10.0)
    xanes = rel[(rel >= -10) & (rel < 25)]
    assert np.allclose(np.diff(xanes), 0.3)
    k = etok(rel[rel >= 25])
    assert np.allclose(np.diff(k)[:-1], 0.05)
    # k-weighted dwell: 0.25 s * k in the EXAFS region, 0.5 s elsewhere
    assert np.allclose(g.dwell[rel >= 25], 0.25 * k)
    assert np.allclose(g.dwell[rel < 25], 0.5)
    assert g.spec["bounds"] == "-200 -30 -10 25 13k"
    assert g.e0 == pytest.approx(e0)


def test_dict_with_lists_and_e0_override():
    g = make_grid("Cu", "K", {"bounds": [-20, 0, 10], "steps": [5, 2], "times": [1, 2]}, e0=9000.0)
    assert list(g.energies) == pytest.approx([8980, 8985, 8990, 8995, 9000, 9002, 9004, 9006, 9008, 9010])
    assert list(g.dwell) == pytest.approx([1, 1, 1, 1, 2, 2, 2, 2, 2, 2])


def test_k_bound_and_ev_step():
    g = parse_grid("0 5k", "10", "1", 9000.0)
    assert g.energies[-1] == pytest.approx(9000.0 + 5.0**2 / ETOK)
    assert np.all(np.diff(g.energies) > 0)


@pytest.mark.parametrize(
    "steps, match",
    [
        ("10 -2 0.3 0.05k", r"step 2 \(-2\).*positive"),
        ("10 0 0.3 0.05k", r"step 2 \(0\).*positive"),
        ("10 2 0.3 -0.05k", r"step 4 \(-0.05k\).*positive"),
    ],
)
def test_bad_steps_named(steps, match):
    with pytest.raises(ValueError, match=match):
        make_grid("Cu", "K", {**DEFAULT_GRID, "steps": steps})


def test_non_increasing_bounds_named():
    with pytest.raises(ValueError, match=r"bound 3 \(-40, -40 eV\) is not above bound 2 \(-30"):
        make_grid("Cu", "K", {**DEFAULT_GRID, "bounds": "-200 -30 -40 25 13k"})


def test_wrong_counts_and_garbage_named():
    with pytest.raises(ValueError, match="5 bounds make 4 regions but 3 steps"):
        make_grid("Cu", "K", {**DEFAULT_GRID, "steps": "10 2 0.3"})
    with pytest.raises(ValueError, match="cannot read 'abc'"):
        make_grid("Cu", "K", {**DEFAULT_GRID, "times": "0.5 abc 0.5 0.25k"})
    with pytest.raises(ValueError, match="k step 0.05k.*below E0"):
        parse_grid("-20 10", "0.05k", "1", 9000.0)
    with pytest.raises(ValueError, match="missing steps"):
        make_grid("Cu", "K", {"bounds": "-10 10", "times": "1"})
