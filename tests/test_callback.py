"""XASRankingCallback with a real RunEngine, real documents and hypothesis-made streams."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import list_scan
from event_model import compose_run, pack_event_page, schema_validators, DocumentNames
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ophyd.sim import SynAxis, SynSignal

from xas_callbacks.callback import XASRankingCallback
from xas_callbacks.candidates import CandidateLibrary
from xas_callbacks.ranking import RankingConfig

TRUE_INDEX = 5
SHIFT = 1.5  # measured E corresponds to model E + SHIFT
E0 = 8979.0


@pytest.fixture(scope="module")
def feff_library(synthetic_library):
    # Synthetic candidates (tests/synthetic.py): these tests run without the shared data.
    return synthetic_library


CFG = RankingConfig(offset_min=-5, offset_max=5, offset_prior_sd=3.0,
                    broadenings=(0.0, 1.5, 3.0), model_floor=0.01)


def _energy_grid(lib):
    lo = lib.energies[0] - SHIFT
    return np.concatenate([np.arange(lo - 40, lo - 5, 5.0), np.arange(lo - 5, lo + 40, 0.7),
                           np.arange(lo + 40, lib.energies[-1] - 8, 2.5)])


def _xas_md(**extra):
    md = {"element": "Cu", "edge": "K", "e0": E0, "mode": "transmission",
          "energy_field": "energy", "detectors": {"i0": "I0", "it": "It"}}
    md.update(extra)
    return md


def _sim_devices(lib, seed=0, true_index=TRUE_INDEX):
    rng = np.random.default_rng(seed)
    energy = SynAxis(name="energy")
    true = lib.mean[true_index]

    def mu_at(e):
        return 0.3 + 0.9 * np.interp(e + SHIFT, lib.energies, true)

    I0 = SynSignal(func=lambda: float(rng.poisson(2e5)), name="I0")

    def it():
        i0 = I0.get()
        return float(rng.poisson(i0 * np.exp(-mu_at(energy.readback.get()))))

    It = SynSignal(func=it, name="It")
    return energy, I0, It


def _run_scan(lib, callback, seed=0, md=None, true_index=TRUE_INDEX):
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, copy.deepcopy(d))))
    RE.subscribe(callback)
    energy, I0, It = _sim_devices(lib, seed, true_index)
    md = md if md is not None else {"xas": _xas_md()}
    RE(list_scan([I0, It], energy, list(_energy_grid(lib))), **md)
    return docs


def _validate(name, doc):
    schema_validators[DocumentNames[name]].validate(doc)


def _strip(doc):
    """The document without its uids, as JSON text (so that NaN equals NaN)."""
    out = {k: v for k, v in doc.items() if k not in ("uid", "run_start", "descriptor", "parent_uid")}
    return json.dumps(out, sort_keys=True)


def test_scan_ranks_true_candidate_first_and_emits_valid_documents(feff_library):
    emitted = []
    cb = XASRankingCallback(feff_library, emit=lambda n, d: emitted.append((n, d)), config=CFG)
    raw = _run_scan(feff_library, cb)
    res = cb.latest_ranking
    assert res.names[0] == feff_library.names[TRUE_INDEX]
    assert res.probabilities[0] > 0.9
    assert abs(res.offset_mean - SHIFT) < 0.5
    names = [n for n, _ in emitted]
    assert names[0] == "start" and names[1] == "descriptor" and names[-1] == "stop"
    for n, d in emitted:
        _validate(n, d)
    start = emitted[0][1]
    raw_start = raw[0][1]
    assert start["purpose"] == "xas-ranking"
    assert start["parent_uid"] == raw_start["uid"]
    prov = start["provenance"]
    assert prov["candidates_sha256"] == feff_library.provenance["candidates_sha256"]
    assert set(prov) >= {"model", "weights_sha256", "candidates_sha256", "software_version"}
    events = [d for n, d in emitted if n == "event"]
    assert len(events) == len(cb.history)
    counts = cb.summary["counts"]
    # one ranking event answers each usable reading, with the reading's energy and mu
    assert len(events) == counts["points"]
    raw_events = [d for n, d in raw if n == "event"]
    assert [e["data"]["energy"] for e in events] == [e["data"]["energy"] for e in raw_events]
    assert [e["data"]["raw_seq_num"] for e in events] == [e["seq_num"] for e in raw_events]
    first = raw_events[0]["data"]
    assert events[0]["data"]["mu"] == pytest.approx(np.log(first["I0"] / first["It"]))
    last = events[-1]["data"]
    assert last["top_names"][0] == feff_library.names[TRUE_INDEX]
    assert len(last["top_names"]) == cb.last_run.top_k == min(cb.top_k, len(feff_library))
    assert last["n_points"] == res.n_points
    assert emitted[-1][1]["exit_status"] == "success"
    assert cb.summary["counts"].get("callback_errors", 0) == 0


def _replay(docs, cb):
    for n, d in docs:
        cb(n, copy.deepcopy(d))


def test_replay_reproduces_ranking_documents_exactly(feff_library):
    first, second = [], []
    cb = XASRankingCallback(feff_library, emit=lambda n, d: first.append((n, d)), config=CFG)
    raw = _run_scan(feff_library, cb, seed=3)
    cb2 = XASRankingCallback(feff_library, emit=lambda n, d: second.append((n, d)), config=CFG)
    _replay(raw, cb2)
    assert [n for n, _ in first] == [n for n, _ in second]
    for (n1, d1), (n2, d2) in zip(first, second):
        assert _strip(d1) == _strip(d2), n1


def test_event_page_and_event_give_identical_rankings(feff_library):
    cb = XASRankingCallback(feff_library, config=CFG)
    raw = _run_scan(feff_library, cb, seed=4)
    events = [d for n, d in raw if n == "event"]
    paged = [(n, d) for n, d in raw if n != "event"]
    stop_at = [i for i, (n, _) in enumerate(paged) if n == "stop"][0]
    pages = [("event_page", pack_event_page(*events[i:i + 7])) for i in range(0, len(events), 7)]
    paged = paged[:stop_at] + pages + paged[stop_at:]
    a, b = [], []
    _replay(raw, XASRankingCallback(feff_library, emit=lambda n, d: a.append((n, d)), config=CFG))
    _replay(paged, XASRankingCallback(feff_library, emit=lambda n, d: b.append((n, d)), config=CFG))
    assert [_strip(d) for _, d in a] == [_strip(d) for _, d in b]


def test_runs_without_xas_block_are_ignored(feff_library):
    emitted = []
    cb = XASRankingCallback(feff_library, emit=lambda n, d: emitted.append((n, d)), config=CFG)
    _run_scan(feff_library, cb, md={"plan_note": "not xas"})
    assert emitted == []
    assert cb.counts["runs_ignored"] == 1
    assert cb.latest_ranking is None


def test_exception_inside_callback_never_reaches_run_engine(feff_library, caplog):
    def broken_emit(name, doc):
        raise RuntimeError("tiled is down")

    cb = XASRankingCallback(feff_library, emit=broken_emit, config=CFG)
    with caplog.at_level(logging.ERROR):
        raw = _run_scan(feff_library, cb)
    assert raw[-1][0] == "stop" and raw[-1][1]["exit_status"] == "success"
    assert cb.counts["emit_errors"] > 0
    assert cb.latest_ranking.names[0] == feff_library.names[TRUE_INDEX]


def test_library_from_start_document(feff_library, tmp_path, monkeypatch):
    monkeypatch.setenv("XAS_USER_DIR", str(tmp_path))
    path = feff_library.save(tmp_path / "lib.npz")
    md = {"xas": _xas_md(candidates={"source": str(path),
                                     "sha256": feff_library.provenance["candidates_sha256"]},
                         model={"name": "feff9-computed"})}
    cb = XASRankingCallback(None, config=CFG)
    _run_scan(feff_library, cb, md=md)
    assert cb.latest_ranking.names[0] == feff_library.names[TRUE_INDEX]


# ---------------------------------------------------------------- fuzzing
def _stream(lib, n=25, seed=0):
    """A clean stream of real documents (event_model.compose_run) for a transmission run."""
    rng = np.random.default_rng(seed)
    bundle = compose_run(metadata={"xas": _xas_md()}, time=1000.0)
    docs = [("start", bundle.start_doc)]
    dk = {k: {"source": "sim", "dtype": "number", "shape": []} for k in ("energy", "I0", "It")}
    desc = bundle.compose_descriptor(name="primary", data_keys=dk, time=1000.0)
    docs.append(("descriptor", desc.descriptor_doc))
    E = np.linspace(lib.energies[0] - 30, lib.energies[-1] - 10, n)
    for i, e in enumerate(E):
        mu = 0.2 + np.interp(e + SHIFT, lib.energies, lib.mean[TRUE_INDEX])
        i0 = float(rng.poisson(1e5))
        data = {"energy": float(e), "I0": i0, "It": float(rng.poisson(i0 * np.exp(-mu)))}
        docs.append(("event", desc.compose_event(data=data, timestamps={k: 1000.0 + i for k in data},
                                                 seq_num=i + 1, time=1000.0 + i)))
    docs.append(("stop", bundle.compose_stop(time=2000.0)))
    return docs


_corruptions = st.sampled_from(
    ["nan_i0", "zero_i0", "neg_it", "drop_field", "drop_data", "duplicate", "swap", "nan_energy",
     "string_value", "unknown_descriptor", "array_value", "inf_it", "none_value"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_corruptions, st.integers(0, 24)), max_size=12), st.booleans())
def test_fuzzed_streams_never_raise_and_are_counted(feff_library, corruptions, as_pages):
    docs = _stream(feff_library)
    head, events, tail = docs[:2], [d for _, d in docs[2:-1]], docs[-1:]
    for what, i in corruptions:
        i = i % len(events)
        ev = copy.deepcopy(events[i])
        if what != "drop_data":
            ev.setdefault("data", {})
        if what == "nan_i0":
            ev["data"]["I0"] = float("nan")
        elif what == "zero_i0":
            ev["data"]["I0"] = 0.0
        elif what == "neg_it":
            ev["data"]["It"] = -5.0
        elif what == "drop_field":
            ev.setdefault("data", {}).pop("It", None)
        elif what == "drop_data":
            ev.pop("data", None)
        elif what == "nan_energy":
            ev["data"]["energy"] = float("nan")
        elif what == "string_value":
            ev["data"]["I0"] = "oops"
        elif what == "array_value":
            ev["data"]["It"] = [1.0, 2.0]
        elif what == "inf_it":
            ev["data"]["It"] = float("inf")
        elif what == "none_value":
            ev["data"]["energy"] = None
        elif what == "unknown_descriptor":
            ev["descriptor"] = "no-such-descriptor"
        if what == "duplicate":
            events.insert(i, copy.deepcopy(events[i]))
        elif what == "swap" and i + 1 < len(events):
            events[i], events[i + 1] = events[i + 1], events[i]
        else:
            ev["uid"] = ev["uid"] + "-x"
            events[i] = ev
    if as_pages:
        body = []
        for ev in events:
            try:
                body.append(("event_page", pack_event_page(ev)))
            except Exception:  # a page cannot hold an event without data: send it bare
                body.append(("event", ev))
    else:
        body = [("event", ev) for ev in events]
    emitted = []
    cb = XASRankingCallback(feff_library, emit=lambda n, d: emitted.append((n, d)), config=CFG)
    for n, d in head + body + tail:
        cb(n, d)  # must never raise
    counts = cb.summary["counts"]
    assert counts.get("callback_errors", 0) == 0, counts
    n_bad = sum(counts.get(k, 0) for k in ("bad_i0", "bad_counts", "missing_fields", "bad_energy",
                                           "duplicates", "unknown_descriptor"))
    # every event is either used or counted under exactly one reason
    assert counts.get("points", 0) + n_bad == len(events), counts
    # Duplicates in the stream as sent (a later corruption can turn a copied event into another
    # kind of bad event): an event of the known descriptor whose uid or seq_num came before.
    seen, expected_dups = set(), 0
    known = head[1][1]["uid"]
    for ev in events:
        if ev.get("descriptor") != known:
            continue
        keys = {ev.get("uid"), (ev.get("descriptor"), ev.get("seq_num"))}
        expected_dups += bool(keys & seen)
        seen |= keys
    assert counts.get("duplicates", 0) == expected_dups
    assert emitted[-1][0] == "stop"
    for n, d in emitted:
        _validate(n, d)


def test_headless_plot_is_saved_at_the_end_of_the_run(feff_library, tmp_path):
    from xas_callbacks.plotting import LiveRankingPlot

    plot = LiveRankingPlot(save_path=tmp_path / "rank-{uid}.png")
    cb = XASRankingCallback(feff_library, plot=plot, config=CFG)
    raw = _run_scan(feff_library, cb)
    assert len(plot.saved) == 1
    assert plot.saved[0].name == f"rank-{raw[0][1]['uid'][:8]}.png"
    assert plot.saved[0].stat().st_size > 5000
    assert plot.errors == 0


def test_endstation_xafs_scan_ranks_sample_first(feff_library):
    """The project's simulated endstation and xafs_scan (time_scale 0), sample = one FEFF
    candidate with a mono calibration offset."""
    endstation = pytest.importorskip("endstation.devices")
    sample_mod = pytest.importorskip("endstation.sample")
    xafs = pytest.importorskip("plans.xafs")
    sample = sample_mod.SimulatedSample.from_spectrum(
        feff_library.energies, feff_library.mean[TRUE_INDEX], element="Cu", edge="K",
        edge_step=0.8, name=feff_library.names[TRUE_INDEX])
    es = endstation.make_endstation(sample, seed=11, time_scale=0.0, energy_offset=SHIFT)
    grid = {"bounds": "-30 -5 30 135", "steps": "5 0.5 2", "times": "0.1 0.1 0.1"}
    emitted = []
    cb = XASRankingCallback(feff_library, emit=lambda n, d: emitted.append((n, d)), config=CFG)
    RE = RunEngine({})
    RE.subscribe(cb)
    RE(xafs.xafs_scan([es.I0, es.It, es.dwell_time], es.energy, element="Cu", edge="K",
                      grid=grid, e0=E0))
    assert cb.summary["counts"].get("callback_errors", 0) == 0, cb.summary
    res = cb.latest_ranking
    assert res.names[0] == feff_library.names[TRUE_INDEX]
    assert abs(res.offset_mean - SHIFT) < 0.5
    for n, d in emitted:
        _validate(n, d)


def test_tiled_writer_stores_ranking_run_beside_raw_run(feff_library, tmp_path):
    """A RunEngine-subscribed TiledWriter (default settings; DuckDB tables like the local catalog,
    PostgreSQL at a facility: SQLite cannot hold the list columns of small arrays) stores the raw
    run and the linked ranking run; the stored ranking equals the callback's."""
    catalog_mod = pytest.importorskip("tiled.catalog")
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    tw_mod = pytest.importorskip("bluesky_tiled_plugins")
    catalog = catalog_mod.from_uri(f"sqlite:///{tmp_path}/cat.db", init_if_not_exists=True,
                                   writable_storage=[str(tmp_path / "data"), f"duckdb:///{tmp_path}/tab.duckdb"])
    client = from_context(Context.from_app(build_app(catalog)))
    tw = tw_mod.TiledWriter(client)
    cb = XASRankingCallback(feff_library, emit=tw, config=CFG)
    RE = RunEngine({})
    RE.subscribe(tw)
    RE.subscribe(cb)
    energy, I0, It = _sim_devices(feff_library, 0)
    (uid,) = RE(list_scan([I0, It], energy, list(_energy_grid(feff_library))), xas=_xas_md())
    assert cb.counts.get("emit_errors", 0) == 0, cb.counts
    ranking_runs = [k for k in client if client[k].metadata["start"].get("purpose") == "xas-ranking"]
    assert len(ranking_runs) == 1
    run = client[ranking_runs[0]]
    assert run.metadata["start"]["parent_uid"] == uid
    stream = run["ranking"]
    names = stream["top_names"].read()
    probs = stream["top_probabilities"].read()
    k = cb.last_run.top_k
    assert names.shape == (len(cb.history), k)
    assert list(names[-1]) == cb.latest_ranking.names[:k]
    np.testing.assert_array_equal(probs[-1], cb.latest_ranking.probabilities[:k])
    assert run.metadata["stop"]["exit_status"] == "success"


def test_renormalisation_rebuilds_are_bounded(feff_library, monkeypatch):
    """Re-normalising rebuilds the statistics from all points; the geometric schedule keeps the
    total rebuilt work within a constant factor of the number of points."""
    from xas_callbacks.ranking import RankingEngine

    sizes = []
    orig = RankingEngine.rebuild

    def counting(self, E, y, v):
        sizes.append(len(E))
        return orig(self, E, y, v)

    monkeypatch.setattr(RankingEngine, "rebuild", counting)
    cb = XASRankingCallback(feff_library, config=CFG, renorm_growth=1.25)
    _run_scan(feff_library, cb)
    n = cb.summary["counts"]["points"]
    assert sum(sizes) <= 6 * n
    assert cb.latest_ranking.names[0] == feff_library.names[TRUE_INDEX]


def test_library_built_from_start_document_through_predictor(cu_k_dir, tmp_path, monkeypatch):
    """xas.candidates names a folder of structure files and xas.model the shipped predictor:
    the callback predicts the candidates itself, lists the failures and records provenance."""
    try:
        from models import available_models
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"models.predictor not importable: {exc}")
    if "cu-k" not in available_models():
        pytest.skip("no shipped 'cu-k' weights yet")
    monkeypatch.setenv("XAS_USER_DIR", str(tmp_path / "user"))
    folder = tmp_path / "candidates"
    folder.mkdir()
    for mid in ("mp-1692", "mp-361", "mp-23733"):
        (folder / f"{mid}.vasp").write_text((cu_k_dir / mid / "POSCAR").read_text())
    (folder / "no-copper.xyz").write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    truth = CandidateLibrary.from_feff(cu_k_dir, ids=["mp-1692"], weights="equal", cache=False)
    emitted = []
    cb = XASRankingCallback(None, emit=lambda n, d: emitted.append((n, d)), config=CFG)
    md = {"xas": _xas_md(candidates={"source": str(folder)}, model={"name": "cu-k"})}
    _run_scan(truth, cb, md=md, true_index=0)
    start = emitted[0][1]
    assert start["provenance"]["model"] == "cu-k"
    assert len(start["provenance"]["weights_sha256"]) == 64
    assert "no-copper" in start["failures"]
    assert set(cb.latest_ranking.names) == {"mp-1692", "mp-361", "mp-23733"}
    assert cb.latest_ranking.names[0] == "mp-1692"


def test_two_callbacks_given_the_same_library_each_count_every_reading_once(feff_library):
    """Each callback owns its run's state; only the immutable candidate tables are shared (this
    is what enable_ranking(lib) plus adaptive_xas_plan(candidates=lib) subscribe)."""
    first, second = XASRankingCallback(feff_library, config=CFG), XASRankingCallback(feff_library, config=CFG)
    RE = RunEngine({})
    RE.subscribe(second)
    raw = _run_scan(feff_library, first, seed=5)  # first is subscribed by _run_scan's own RunEngine
    n_readings = sum(1 for n, _ in raw if n == "event")
    _replay(raw, second)
    for cb in (first, second):
        assert cb.last_run.engine.n_points + cb.last_run.engine.n_outside == n_readings
        assert cb.summary["counts"]["points"] == n_readings
    assert first.last_run.engine.tables is second.last_run.engine.tables
    assert first.latest_ranking.names == second.latest_ranking.names
    np.testing.assert_array_equal(first.latest_ranking.probabilities, second.latest_ranking.probabilities)


def test_two_callbacks_on_one_run_engine_rank_the_same_scan_alike(feff_library):
    a, b = XASRankingCallback(feff_library, config=CFG), XASRankingCallback(feff_library, config=CFG)
    RE = RunEngine({})
    RE.subscribe(a)
    RE.subscribe(b)
    energy, I0, It = _sim_devices(feff_library, 6)
    grid = list(_energy_grid(feff_library))[::4]
    RE(list_scan([I0, It], energy, grid), xas=_xas_md())
    for cb in (a, b):
        assert cb.summary["counts"]["points"] == len(grid)
        engine = cb.last_run.engine
        assert engine.n_points + engine.n_outside == len(grid)  # a shared engine counted each twice
    np.testing.assert_array_equal(a.latest_ranking.probabilities, b.latest_ranking.probabilities)


def test_each_run_starts_afresh(feff_library):
    cb = XASRankingCallback(feff_library, config=CFG)
    first = _run_scan(feff_library, cb, seed=1, true_index=2)
    assert cb.latest_ranking.names[0] == feff_library.names[2]
    _run_scan(feff_library, cb, seed=2, true_index=6)
    n_readings = sum(1 for n, _ in first if n == "event")
    assert cb.summary["counts"]["points"] == n_readings
    assert cb.latest_ranking.names[0] == feff_library.names[6]
    assert len(cb.runs) == 2 and cb.counts["points"] == 2 * n_readings


def test_provenance_is_available_before_any_run(feff_library):
    assert set(XASRankingCallback(None).provenance()) == {"software_version"}
    prov = XASRankingCallback(feff_library).provenance()
    assert prov["candidates_sha256"] == feff_library.provenance["candidates_sha256"]


def test_large_libraries_switch_to_the_screening_engine(feff_library):
    """Above ``screening_above`` candidates the run ranks with ScreeningEngine (pruning with a
    certified bound); its rankings agree with RankingEngine's within the bounds, reading by reading."""
    from xas_callbacks.ranking import RankingEngine
    from xas_callbacks.screening import ScreeningEngine

    runs = {}
    for label, above in (("plain", None), ("screening", 0)):
        emitted = []
        cb = XASRankingCallback(feff_library, emit=lambda n, d, out=emitted: out.append((n, d)), config=CFG,
                                screening_above=above)
        _run_scan(feff_library, cb)
        runs[label] = (cb, emitted)
    plain, screen = runs["plain"][0], runs["screening"][0]
    assert isinstance(plain.last_run.engine, RankingEngine)
    assert isinstance(screen.last_run.engine, ScreeningEngine)
    assert runs["screening"][1][0][1]["ranking_config"]["engine"] == "ScreeningEngine"
    assert runs["plain"][1][0][1]["ranking_config"]["engine"] == "RankingEngine"
    assert screen.summary["counts"].get("callback_errors", 0) == 0
    assert screen.summary["counts"].get("renormalizations", 0) > 0  # ScreeningEngine.rebuild ran
    tol = 2 * CFG.prune_mass + 1e-9
    assert len(plain.history) == len(screen.history) > 20
    for a, b in zip(plain.history, screen.history):
        assert a["n_points"] == b["n_points"]
        for name, p in a["probabilities"].items():
            assert abs(b["probabilities"].get(name, 0.0) - p) <= tol
    events = {k: [d for n, d in v[1] if n == "event"] for k, v in runs.items()}
    for a, b in zip(events["plain"], events["screening"]):
        assert a["data"]["top_names"][0] == b["data"]["top_names"][0] or \
            abs(a["data"]["top_probabilities"][0] - b["data"]["top_probabilities"][0]) <= tol
        assert a["data"]["top_reduced_chi2"] == pytest.approx(b["data"]["top_reduced_chi2"], rel=1e-6, nan_ok=True)
    assert screen.latest_ranking.names[0] == feff_library.names[TRUE_INDEX]
