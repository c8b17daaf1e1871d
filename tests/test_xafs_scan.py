"""xafs_scan with a real RunEngine on the simulated endstation (no catalog here)."""

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted
from event_model import DocumentNames, schema_validators
from ophyd import Signal

from endstation import SimulatedSample, make_endstation
from plans import make_grid, xafs_scan

GRID = {"bounds": "-30 -5 15 4k", "steps": "5 1 0.25k", "times": "0.5 1 0.2k"}


def _sample():
    energy = np.linspace(8800.0, 9700.0, 901)
    mu = 1.0 / (1.0 + np.exp(-(energy - 8979.0) / 2.0))
    return SimulatedSample.from_spectrum(energy, mu, element="Cu", edge="K")


@pytest.fixture
def es():
    return make_endstation(_sample(), seed=1, time_scale=0)


@pytest.fixture
def RE():
    engine = RunEngine({}, call_returns_result=False)
    docs = []
    engine.subscribe(lambda name, doc: docs.append((name, doc)))
    engine.docs = docs
    return engine


def _validate(docs):
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)


def test_start_document_and_events(RE, es):
    RE(xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid=GRID,
                 md={"XDI": {"Sample": {"name": "step"}}, "operator": "test"}))
    docs = RE.docs
    _validate(docs)
    names = [n for n, _ in docs]
    assert names[0] == "start" and names[1] == "descriptor" and names[-1] == "stop"
    start = docs[0][1]
    grid = make_grid("Cu", "K", GRID)
    assert start["plan_name"] == "xafs_scan"
    assert start["plan_args"]["element"] == "Cu" and start["plan_args"]["grid"]["bounds"] == "-30 -5 15 4k"
    assert start["XDI"]["Element"] == {"symbol": "Cu", "edge": "K"}
    assert start["XDI"]["Mono"]["name"] == "Si(111)"
    assert start["XDI"]["Sample"] == {"name": "step"}
    assert start["operator"] == "test"
    xas = start["xas"]
    assert xas["element"] == "Cu" and xas["edge"] == "K" and xas["mode"] == "transmission"
    assert xas["e0"] == pytest.approx(8979.0, abs=1)
    assert xas["energy_field"] == "energy" and xas["dwell_field"] == "dwell_time"
    assert xas["detectors"] == {"i0": "I0", "it": "It", "ir": "Ir", "if": "If"}
    assert xas["grid"]["steps"] == "5 1 0.25k" and xas["grid"]["num_points"] == len(grid)
    assert list(start["hints"]["dimensions"][0][0]) == ["energy"]
    events = [d for n, d in docs if n == "event"]
    assert len(events) == len(grid)
    energies = np.array([e["data"]["energy"] for e in events])
    dwell = np.array([e["data"]["dwell_time"] for e in events])
    assert np.allclose(energies, grid.energies)
    assert np.allclose(dwell, grid.dwell)  # per-point dwell set before each trigger
    i0 = np.array([e["data"]["I0"] for e in events])
    assert np.allclose(i0 / (1e7 * dwell), 1.0, rtol=0.01)  # counts scale with the dwell
    assert docs[-1][1]["exit_status"] == "success"


def test_out_of_limits_refused_before_anything_moves(RE):
    es = make_endstation(_sample(), time_scale=0, limits=(8000.0, 9000.0), init_energy=8500.0)
    with pytest.raises(ValueError, match=r"energy 90\d\d\.\d+ eV is outside the limits of 'energy' \[8000, 9000\] eV"):
        xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid=GRID)
    assert es.energy.position == 8500.0
    assert es.energy.setpoint.get() == 8500.0
    assert RE.docs == []


def test_bad_element_edge_and_mode(es):
    with pytest.raises(ValueError, match="unknown element 'Zz'"):
        xafs_scan(es.detectors, es.energy, element="Zz", edge="K", grid=GRID)
    with pytest.raises(ValueError, match="unknown edge 'K9'"):
        xafs_scan(es.detectors, es.energy, element="Cu", edge="K9", grid=GRID)
    with pytest.raises(ValueError, match="mode must be one of"):
        xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid=GRID, mode="xes")
    with pytest.raises(ValueError, match=r"needs detector roles \['i0', 'if'\]; missing \['if'\]"):
        xafs_scan([es.I0, es.It, es.dwell_time], es.energy, element="Cu", edge="K", grid=GRID,
                  mode="fluorescence")
    plain = [Signal(name="I0", value=1), Signal(name="It", value=1)]  # counters without a timer
    with pytest.raises(ValueError, match="no dwell-time signal"):
        xafs_scan(plain, es.energy, element="Cu", edge="K", grid=GRID)


def _pause_after_checkpoint(plan, n):
    """Forward ``plan``, pausing the RunEngine right after its ``n``-th checkpoint (what
    ``RE.request_pause()`` does from a terminal, made deterministic)."""
    count = 0
    reply = None
    while True:
        try:
            msg = plan.send(reply)
        except StopIteration as stop:
            return stop.value
        reply = yield msg
        if msg.command == "checkpoint":
            count += 1
            if count == n:
                yield from bps.pause()


def test_pause_at_checkpoint_and_resume(RE, es):
    with pytest.raises(RunEngineInterrupted):
        RE(_pause_after_checkpoint(xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid=GRID), 5))
    assert RE.state == "paused"
    assert [n for n, _ in RE.docs][-1] == "event"  # run still open
    RE.resume()
    assert RE.state == "idle"
    _validate(RE.docs)
    events = [d for n, d in RE.docs if n == "event"]
    n = len(make_grid("Cu", "K", GRID))
    assert [e["seq_num"] for e in events] == list(range(1, n + 1))  # nothing lost, nothing doubled
    assert RE.docs[-1][0] == "stop" and RE.docs[-1][1]["exit_status"] == "success"


def test_abort_leaves_a_closed_run(RE, es):
    with pytest.raises(RunEngineInterrupted):
        RE(_pause_after_checkpoint(xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid=GRID), 4))
    assert RE.state == "paused"
    RE.abort(reason="operator stopped the scan")
    assert RE.state == "idle"
    _validate(RE.docs)
    name, stop = RE.docs[-1]
    assert name == "stop"
    assert stop["exit_status"] == "abort" and "operator stopped" in stop["reason"]
    assert stop["num_events"]["primary"] == 3


def test_cuo_scan_recovers_the_truth(RE, xdi_library):
    sample = SimulatedSample.from_xdi(xdi_library / "Cu" / "CuO_tenorite_13K_01.xdi")
    es = make_endstation(sample, seed=0, time_scale=0)
    RE(xafs_scan(es.detectors, es.energy, element="Cu", edge="K",
                 grid={"bounds": "-150 -20 30 10k", "steps": "10 0.5 0.05k", "times": "1 1 0.2k"}))
    events = [d for n, d in RE.docs if n == "event"]
    energy = np.array([e["data"]["energy"] for e in events])
    mu = np.log(np.array([e["data"]["I0"] for e in events], float) / np.array([e["data"]["It"] for e in events], float))
    truth = sample.total(energy)
    sigma = np.sqrt(1 / np.array([e["data"]["I0"] for e in events]) + 1 / np.array([e["data"]["It"] for e in events]))
    z = (mu - truth) / sigma
    assert abs(z.mean()) < 0.3 and 0.7 < z.std() < 1.3  # scatter is the counting noise, no bias
