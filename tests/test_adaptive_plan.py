"""adaptive_xas_plan with a real RunEngine on the simulated endstation; synthetic candidates
(``tests/synthetic.py``), so these run without the shared data."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import event_model
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted

from endstation.devices import make_endstation
from endstation.sample import SimulatedSample
from plans.adaptive import adaptive_xas_plan, seed_energies
from plans.grids import make_grid
from plans.ranking_feed import RemoteRankingFeed
from xas_callbacks.candidates import CandidateLibrary


@pytest.fixture(scope="module")
def library(synthetic_library):
    return synthetic_library


def _endstation(library, true_index, *, seed=3, offset=1.0):
    sample = SimulatedSample.from_spectrum(
        library.energies, library.mean[true_index], element="Cu", edge="K", name=library.names[true_index]
    )
    return make_endstation(sample, seed=seed, time_scale=0.0, energy_offset=offset)


def _run(plan):
    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(plan)
    return RE, docs


def _stream(docs, stream):
    descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == stream}
    return [d for n, d in docs if n == "event" and d["descriptor"] in descriptors]


@pytest.mark.parametrize("true_index", [2, 6])
def test_identifies_the_sample_with_fewer_points_than_a_conventional_scan(library, true_index):
    es = _endstation(library, true_index)
    RE, docs = _run(
        adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library, dwell_s=0.5)
    )
    start = docs[0][1]
    assert start["plan_name"] == "adaptive_xas_plan"
    assert start["xas"]["candidates"]["names"] == library.names
    assert start["xas"]["candidates"]["sha256"] == library.provenance["candidates_sha256"]
    assert start["xas"]["policy"]["confidence"] == 0.95

    decisions = _stream(docs, "decision")
    last = decisions[-1]["data"]
    assert last["decision_action"] == "stop"
    assert last["decision_top_candidate"] == library.names[true_index]
    assert last["decision_top_probability"] >= 0.95
    assert "reached p=" in last["decision_reason"]

    readings = _stream(docs, "primary")
    conventional = make_grid("Cu", "K", None)
    assert len(readings) < 0.5 * len(conventional.energies)
    assert docs[-1][1]["exit_status"] == "success"


def test_every_document_is_valid_and_decisions_precede_their_readings(library):
    es = _endstation(library, 4)
    _, docs = _run(
        adaptive_xas_plan(
            es.detectors, es.energy, element="Cu", edge="K", candidates=library, dwell_s=0.2, seed={"coarse_points": 3}
        )
    )
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
    measured = [ev["data"]["energy"] for ev in _stream(docs, "primary")]
    for decision in _stream(docs, "decision"):
        data = decision["data"]
        if data["decision_action"] == "measure":
            n = data["decision_n_points"]
            # The reading taken right after the decision is at the energy it chose.
            assert measured[n] == pytest.approx(data["decision_next_energies"][0], abs=0.01)
            assert data["decision_expected_gain"][0] > 0


def test_pause_and_resume_neither_lose_nor_repeat_decisions(library):
    es = _endstation(library, 5)
    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    paused = {"done": False}
    n_seed = len(seed_energies(8979.0, library.energies, {"coarse_points": 3}))

    def pause_once(name, doc):
        # As Ctrl-C would: from another thread (request_pause waits on the RunEngine's loop).
        # After the second adaptive reading, so that decisions lie on both sides of the pause.
        if name == "event" and doc["seq_num"] == n_seed + 2 and not paused["done"]:
            paused["done"] = True
            threading.Thread(target=RE.request_pause, kwargs={"defer": True}).start()

    RE.subscribe(pause_once)
    with pytest.raises(RunEngineInterrupted):
        RE(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library, dwell_s=0.2,
                             seed={"coarse_points": 3}))
    assert RE.state == "paused"
    RE.resume()
    assert docs[-1][1]["exit_status"] == "success"
    decisions = [d["data"]["decision_n_points"] for d in _stream(docs, "decision")]
    assert decisions == sorted(set(decisions)), "a decision was repeated or reordered"
    counts = defaultdict(int)
    for ev in _stream(docs, "decision"):
        counts[ev["seq_num"]] += 1
    assert max(counts.values()) == 1


def test_no_ranking_in_time_falls_back_to_the_conventional_grid_and_says_so(library):
    es = _endstation(library, 1)
    feed = RemoteRankingFeed("localhost:5")  # nothing publishes there
    try:
        _, docs = _run(
            adaptive_xas_plan(
                es.detectors, es.energy, element="Cu", edge="K", candidates=library, dwell_s=0.1,
                feed=feed, ranking_timeout_s=0.3,
            )
        )
    finally:
        feed.close()
    decisions = [d["data"] for d in _stream(docs, "decision")]
    assert decisions[0]["decision_action"] == "fallback"
    assert "no ranking" in decisions[0]["decision_reason"]
    n_seed = len(seed_energies(8979.0, library.energies))
    assert len(_stream(docs, "primary")) > n_seed + 20
    assert docs[-1][1]["exit_status"] == "success"


def test_energies_outside_the_monochromator_limits_are_refused_before_anything_moves(library):
    sample = SimulatedSample.from_spectrum(library.energies, library.mean[0], element="Cu", edge="K")
    es = make_endstation(sample, time_scale=0.0, limits=(8950.0, 9050.0))
    start = es.energy.position
    with pytest.raises(ValueError, match="outside the limits"):
        RunEngine({})(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library))
    assert es.energy.position == start


def test_the_space_filling_baseline_drives_the_same_plan_and_says_why(library):
    es = _endstation(library, 2)
    _, docs = _run(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library,
                                     dwell_s=0.1, max_points=14, confidence=0.999999,
                                     agent="space-filling"))
    start = docs[0][1]
    assert start["xas"]["policy"]["agent"] == "SpaceFillingAgent"
    assert start["xas"]["policy"]["agent_settings"]["min_separation_eV"] == 2.0
    measured = [d["data"]["decision_reason"] for d in _stream(docs, "decision")
                if d["data"]["decision_action"] == "measure"]
    assert measured and all("farthest from every reading" in r for r in measured)
    energies = np.sort([d["data"]["energy"] for d in _stream(docs, "primary")])
    assert np.diff(energies).min() >= 2.0 - 1e-6


def test_an_unknown_agent_name_is_refused_before_anything_moves(library):
    es = _endstation(library, 0)
    before = es.energy.position
    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append(name))
    with pytest.raises(ValueError, match="agent must be one of"):
        RE(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library,
                             agent="greedy"))
    assert docs == [] and es.energy.position == before


def test_a_sample_no_candidate_explains_is_flagged_in_the_stop_reason(library):
    e = library.energies
    alien = library.mean[0] + 0.6 * np.exp(-0.5 * ((e - e[len(e) // 3]) / 3.0) ** 2)  # a feature none has
    sample = SimulatedSample.from_spectrum(e, alien, element="Cu", edge="K", name="alien")
    es = make_endstation(sample, seed=3, time_scale=0.0, energy_offset=0.5)
    _, docs = _run(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library,
                                     dwell_s=0.2, max_points=20))
    last = _stream(docs, "decision")[-1]["data"]
    assert last["decision_action"] == "stop"
    assert last["decision_top_reduced_chi2"] > 4.0
    assert "none of the candidates" in last["decision_reason"]


def test_the_true_candidate_fits_within_the_expected_misfit(library):
    es = _endstation(library, 1)
    _, docs = _run(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library,
                                     dwell_s=0.2, max_points=20))
    last = _stream(docs, "decision")[-1]["data"]
    assert last["decision_top_candidate"] == library.names[1]
    assert last["decision_top_reduced_chi2"] < 4.0 and "none of the candidates" not in last["decision_reason"]


def test_a_beam_dump_suspends_the_plan_which_resumes_without_repeating_a_decision(library):
    from bluesky.suspenders import SuspendFloor
    from ophyd import Signal

    es = _endstation(library, 4)
    ring_current = Signal(name="ring_current", value=400.0)
    RE = RunEngine({})
    RE.install_suspender(SuspendFloor(ring_current, suspend_thresh=100.0, resume_thresh=300.0, sleep=0.2))
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    n_seed = len(seed_energies(8979.0, library.energies, {"coarse_points": 3}))
    dumped = {"done": False, "restored_at": None}

    def restore():
        dumped["restored_at"] = time.time()
        ring_current.put(400.0)

    def beam_dump(name, doc):
        if name == "event" and doc["seq_num"] == n_seed + 1 and not dumped["done"]:
            dumped["done"] = True
            dumped["dumped_at"] = time.time()
            ring_current.put(0.0)
            threading.Timer(0.5, restore).start()

    RE.subscribe(beam_dump)
    # The sample has a twin among the candidates: the plan cannot stop on confidence, only on its budget.
    twins = CandidateLibrary.from_spectra(library.names + ["syn-4-twin"], library.energies,
                                          np.vstack([library.mean, library.mean[4]]), default_std=0.01,
                                          provenance={"element": "Cu", "edge": "K"})
    RE(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=twins, dwell_s=0.2,
                         seed={"coarse_points": 3}, max_points=n_seed + 6))
    assert dumped["done"] and dumped["restored_at"] is not None
    assert docs[-1][1]["exit_status"] == "success"
    # Nothing was measured while the beam was down.
    times = [d["time"] for d in _stream(docs, "primary")]
    assert not any(dumped["dumped_at"] + 0.05 < t < dumped["restored_at"] for t in times)
    decisions = [d["data"]["decision_n_points"] for d in _stream(docs, "decision")]
    assert decisions == sorted(set(decisions)), "a decision was repeated after the suspension"
    assert decisions[-1] == n_seed + 6  # the point budget counted every reading once


def test_arguments_the_queue_server_sends_as_json_drive_the_plan(library, tmp_path):
    # The queue server passes everything but the devices as JSON: a saved candidate library by
    # path, the agent by name, the tail grid and md as plain dicts.
    saved = library.save(tmp_path / "candidates.npz")
    kwargs = json.loads(json.dumps({
        "element": "Cu", "edge": "K", "candidates": str(saved), "dwell_s": 0.1, "max_points": 14,
        "confidence": 0.99, "agent": "information-gain", "agent_kwargs": {"min_separation_eV": 3.0},
        "tail": {"bounds": "40 60", "steps": "10", "times": "0.1"}, "md": {"proposal": "P-1234"},
    }))
    es = _endstation(library, 3)
    _, docs = _run(adaptive_xas_plan(es.detectors, es.energy, **kwargs))
    start = docs[0][1]
    json.dumps(start)  # the start document, plan_args included, is JSON
    assert start["proposal"] == "P-1234"
    assert start["plan_args"]["candidates"] == str(saved)
    assert start["xas"]["policy"]["agent_settings"]["min_separation_eV"] == 3.0
    actions = [d["data"]["decision_action"] for d in _stream(docs, "decision")]
    assert actions[-1] == "tail" and docs[-1][1]["exit_status"] == "success"


def test_user_metadata_is_merged_into_the_plans_own_never_replacing_it(library):
    es = _endstation(library, 3)
    _, docs = _run(adaptive_xas_plan(
        es.detectors, es.energy, element="Cu", edge="K", candidates=library, dwell_s=0.1, max_points=12,
        md={"xas": {"sample_note": "pressed pellet"}, "XDI": {"Sample": {"name": "unknown powder"}}}))
    start = docs[0][1]
    assert start["xas"]["sample_note"] == "pressed pellet"
    assert start["xas"]["detectors"] == {"i0": "I0", "it": "It", "ir": "Ir", "if": "If"}
    assert start["XDI"]["Sample"]["name"] == "unknown powder"
    assert start["XDI"]["Element"] == {"symbol": "Cu", "edge": "K"}
    actions = [d["data"]["decision_action"] for d in _stream(docs, "decision")]
    assert "fallback" not in actions and actions[-1] == "stop"  # the ranking found its detectors


@pytest.mark.parametrize("kwargs, message", [
    ({"element": "Fe"}, "not Fe"),
    ({"edge": "L3"}, "not L3-edge"),
    ({"mode": "xes"}, "mode must be one of"),
    ({"candidates": "missing/folder"}, "does not exist"),
])
def test_a_plan_that_cannot_work_is_refused_before_anything_moves(library, kwargs, message):
    es = _endstation(library, 0)
    before = es.energy.position
    args = {"element": "Cu", "edge": "K", "candidates": library, **kwargs}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        adaptive_xas_plan(es.detectors, es.energy, **args)
    assert es.energy.position == before


def test_a_model_for_another_edge_is_refused_before_the_candidates_are_predicted(library, tmp_path):
    es = _endstation(library, 0)
    (tmp_path / "water.xyz").write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    with pytest.raises(ValueError, match="model 'o-k' predicts the O K-edge, not the Cu K-edge"):
        adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=str(tmp_path), model="o-k")


def test_a_fallback_grid_outside_the_limits_is_refused_before_anything_moves(library):
    sample = SimulatedSample.from_spectrum(library.energies, library.mean[0], element="Cu", edge="K")
    # The seed fits in these limits, the conventional grid the plan falls back to does not.
    es = make_endstation(sample, time_scale=0.0, limits=(8965.0, 9095.0))
    with pytest.raises(ValueError, match="outside the limits"):
        adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library,
                          seed={"pre_edge": [], "post_edge": []})


def test_per_step_hook_takes_every_reading(library):
    from bluesky import plan_stubs as bps

    seen = []

    def per_step(detectors, step, pos_cache):
        seen.append(list(step.values())[0])
        yield from bps.one_nd_step(detectors, step, pos_cache)

    es = _endstation(library, 5)
    _, docs = _run(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library,
                                     dwell_s=0.1, max_points=12, per_step=per_step))
    measured = [d["data"]["energy"] for d in _stream(docs, "primary")]
    assert seen == pytest.approx(measured, abs=1e-6) and len(seen) >= 6


def test_the_decision_stream_reads_back_as_numbers_and_strings(library, catalog):
    es = _endstation(library, 2)
    RE = RunEngine({})
    RE.subscribe(catalog)
    (uid,) = RE(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library,
                                  dwell_s=0.1, max_points=12, confidence=0.999999))
    assert catalog.failures == []
    stream = catalog[uid]["decision"]
    names = stream["decision_ranking_names"].read()
    probabilities = stream["decision_ranking_probabilities"].read()
    energies = stream["decision_next_energies"].read()
    assert names.dtype.kind == "U" and names.shape[1] == 10
    assert names[-1][0] == library.names[2]
    assert probabilities.dtype.kind == "f" and probabilities[-1][0] > 0.5
    actions = list(stream["decision_action"].read())
    assert actions[-1] == "stop" and "measure" in actions
    assert energies.dtype.kind == "f"
    assert all(np.isfinite(e[0]) == (a == "measure") for e, a in zip(energies, actions))
