"""Simulated hardware: mono positioner, counters, sample physics (no catalog, no data needed)."""

import threading

import numpy as np
import pytest
from ophyd.utils import LimitError

from endstation import DwellTime, MonoEnergy, SimulatedSample, make_endstation


def _edge_sample(**kwargs):
    energy = np.linspace(8800.0, 9700.0, 901)
    mu = 1.0 / (1.0 + np.exp(-(energy - 8979.0) / 2.0))  # normalised step at E0
    return SimulatedSample.from_spectrum(energy, mu, element="Cu", edge="K", **kwargs)


def test_mono_moves_reads_and_refuses_outside_limits():
    mono = MonoEnergy(name="energy", limits=(8000, 10000), speed=0, settle_time=0, init_pos=9000)
    status = mono.set(9100.5)
    status.wait(timeout=5)
    assert status.success
    reading = mono.read()
    assert reading["energy"]["value"] == 9100.5
    assert reading["energy_setpoint"]["value"] == 9100.5
    assert mono.hints == {"fields": ["energy"]}
    assert mono.describe()["energy"]["dtype_numpy"] == "<f8"
    with pytest.raises(LimitError, match=r"energy 12000 eV is outside the limits \[8000, 10000\] eV"):
        mono.set(12000)
    assert mono.position == 9100.5  # nothing moved
    with pytest.raises(ValueError):
        MonoEnergy(name="energy", limits=(10, 5))


def test_mono_move_takes_distance_over_speed_plus_settle():
    # speed 1000 eV/s, 50 eV -> 50 ms, settle 20 ms: the status is not done right away
    mono = MonoEnergy(name="energy", limits=(8000, 10000), speed=1000, settle_time=0.02, init_pos=9000)
    done = threading.Event()
    status = mono.set(9050)
    status.add_callback(lambda st: done.set())
    assert not status.done
    assert done.wait(5)
    assert status.success and mono.position == 9050


def test_dwell_time_refuses_negative():
    dwell = DwellTime()
    with pytest.raises(ValueError, match="dwell time must be >= 0"):
        dwell.put(-1)
    dwell.put(0.25)
    assert dwell.read()["dwell_time"]["value"] == 0.25


def test_counts_are_poisson_and_physical():
    sample = _edge_sample(edge_step=1.0, pre_edge_mu=0.5, pre_edge_slope=0.0)
    es = make_endstation(sample, seed=3, time_scale=0, flux=1e6)
    es.dwell_time.put(2.0)
    rows = {}
    for e in (8900.0, 9200.0):
        es.energy.set(e).wait(5)
        draws = []
        for _ in range(200):
            for det in (es.I0, es.It, es.Ir, es.If):
                det.trigger().wait(5)
            draws.append([det.read()[det.name]["value"] for det in (es.I0, es.It, es.Ir, es.If)])
        rows[e] = np.array(draws, dtype=float)
    below, above = rows[8900.0], rows[9200.0]
    # I0 = flux * dwell with Poisson scatter
    assert below[:, 0].mean() == pytest.approx(2e6, rel=1e-3)
    assert below[:, 0].var() == pytest.approx(2e6, rel=0.3)
    # transmission: ln(I0/It) = mu_total (0.5 below the edge, 1.5 above)
    assert np.log(below[:, 0] / below[:, 1]).mean() == pytest.approx(0.5, abs=2e-3)
    assert np.log(above[:, 0] / above[:, 1]).mean() == pytest.approx(1.5, abs=2e-3)
    # reference foil: ln(It/Ir) = reference mu (0.2 below, 1.2 above the edge)
    assert np.log(below[:, 1] / below[:, 2]).mean() == pytest.approx(0.2, abs=5e-3)
    assert np.log(above[:, 1] / above[:, 2]).mean() == pytest.approx(1.2, abs=5e-3)
    # fluorescence grows by the edge step of the absorber
    assert above[:, 3].mean() > 20 * below[:, 3].mean()


def test_seeded_noise_reproducible():
    def run(seed):
        es = make_endstation(_edge_sample(), seed=seed, time_scale=0)
        out = []
        for _ in range(5):
            es.It.trigger().wait(5)
            out.append(es.It.read()["It"]["value"])
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_trigger_waits_for_the_dwell():
    es = make_endstation(_edge_sample(), time_scale=1.0, settle_time=0)
    es.dwell_time.put(0.05)
    status = es.I0.trigger()
    assert not status.done
    status.wait(5)
    assert status.success and es.I0.read()["I0"]["value"] > 0


def test_energy_offset_shifts_the_edge():
    sample = _edge_sample()
    at_e0 = make_endstation(sample, time_scale=0).physics.rates(8979.0)["it"]
    shifted = make_endstation(sample, time_scale=0, energy_offset=5.0).physics.rates(8974.0)["it"]
    assert shifted == pytest.approx(at_e0)


def test_from_spectrum_adds_background_and_step():
    sample = _edge_sample(edge_step=0.8, pre_edge_mu=0.4, pre_edge_slope=-1e-4)
    assert sample.total(8800.0) == pytest.approx(0.4 + 1e-4 * 179, abs=1e-3)
    assert sample.total(9600.0) - sample.total(8800.0) == pytest.approx(0.8 - 1e-4 * 800, abs=1e-2)
    with pytest.raises(ValueError, match="energy must increase"):
        SimulatedSample.from_spectrum([9000, 8990, 9010], [0, 1, 1], element="Cu", edge="K")
    with pytest.raises(ValueError, match="unknown element"):
        SimulatedSample.from_spectrum([9000, 9010], [0, 1], element="Qq", edge="K")


def test_sample_from_measured_xdi(xdi_library):
    sample = SimulatedSample.from_xdi(xdi_library / "Cu" / "CuO_tenorite_13K_01.xdi")
    assert (sample.element, sample.edge) == ("Cu", "K")
    assert np.all(sample.mu_total > 0)
    # the file's edge: a jump of order 1 between 50 eV below and 100 eV above E0
    jump = sample.total(sample.e0 + 100) - sample.total(sample.e0 - 50)
    assert 0.5 < jump < 2.0
    assert sample.absorber(sample.e0 - 100) == pytest.approx(0.0, abs=0.05)
    assert sample.reference(sample.e0 + 100) > sample.reference(sample.e0 - 50)
