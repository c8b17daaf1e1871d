"""The IPython profile's startup files, executed in order without IPython."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _loader():
    spec = importlib.util.spec_from_file_location("profile_loader", ROOT / "profile_collection" / "loader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_startup_files_are_numbered_in_order():
    names = [p.name for p in _loader().startup_files()]
    assert names == ["00-base.py", "10-endstation.py", "20-models.py", "30-plans.py", "40-callbacks.py"]


SAMPLE = 3  # the synthetic candidate the simulated sample is


@pytest.fixture(scope="module")
def profile(synthetic_library, catalog, tmp_path_factory):
    from synthetic import write_sample_xdi

    sample = write_sample_xdi(tmp_path_factory.mktemp("sample") / "sample.xdi", synthetic_library.mean[SAMPLE])
    mp = pytest.MonkeyPatch()
    mp.setenv("XAS_TIME_SCALE", "0")
    mp.setenv("XAS_PLOTS", "0")
    mp.setenv("XAS_SAMPLE_XDI", str(sample))
    try:
        yield _loader().load_profile({"catalog": catalog})
    finally:
        mp.undo()


def test_profile_defines_the_endstation(profile):
    for name in ("RE", "catalog", "bec", "energy", "I0", "It", "Ir", "If", "dwell_time", "detectors",
                 "xafs", "adaptive", "xafs_scan", "predictor", "enable_ranking"):
        assert name in profile, name
    assert [d.name for d in profile["detectors"]] == ["I0", "It", "Ir", "If", "dwell_time"]
    assert profile["energy"].name == "energy"
    assert profile["_predictors"] == {}  # models are loaded lazily, not at startup


def test_profile_scan_is_stored_with_endstation_metadata(profile):
    RE, catalog = profile["RE"], profile["catalog"]
    (uid,) = RE(profile["xafs"]("Cu", "K", grid={"bounds": "-30 0 20", "steps": "10 5", "times": "0.2 0.2"},
                                md={"XDI": {"Sample": {"name": "CuO in the profile"}}}))
    start = catalog[uid].metadata["start"]
    assert start["plan_name"] == "xafs_scan"
    assert start["XDI"]["Mono"]["name"] == "Si(111)"
    assert start["XDI"]["Sample"]["name"] == "CuO in the profile"
    assert start["XDI"]["Element"] == {"symbol": "Cu", "edge": "K"}
    assert start["beamline_id"] == "sim-xas"
    assert catalog[uid].metadata["stop"]["exit_status"] == "success"


def test_ranking_hook_is_guarded(profile):
    cls = profile["XASRankingCallback"]
    if cls is None:
        with pytest.raises(RuntimeError, match="not available"):
            profile["enable_ranking"]()
    else:
        assert profile["ranking_callback"] is None  # nothing subscribed until asked


def test_adaptive_plan_in_the_profile_stores_the_run_and_its_ranking(profile, synthetic_library):
    RE, catalog = profile["RE"], profile["catalog"]
    (uid,) = RE(profile["adaptive"](synthetic_library, "Cu", "K", dwell_s=0.1, max_points=16,
                                    md={"XDI": {"Sample": {"name": "unknown powder"}}}))
    run = catalog[uid]
    start = run.metadata["start"]
    assert start["plan_name"] == "adaptive_xas_plan"
    assert start["XDI"]["Mono"]["name"] == "Si(111)" and start["XDI"]["Sample"]["name"] == "unknown powder"
    assert start["xas"]["candidates"]["names"] == list(synthetic_library.names)
    assert start["xas"]["detectors"]["it"] == "It" and start["XDI"]["Element"]["symbol"] == "Cu"
    assert "decision" in run and run.metadata["stop"]["exit_status"] == "success"
    # The ranking run the callback made for this run is stored beside it, linked by uid.
    client = catalog.client
    linked = [k for k in list(client)[-5:] if client[k].metadata["start"].get("parent_uid") == uid]
    assert len(linked) == 1
    assert client[linked[0]].metadata["start"]["purpose"] == "xas-ranking"
    ranking = client[linked[0]]["ranking"]
    assert list(ranking["top_names"].read()[-1])[0] == synthetic_library.names[SAMPLE]


@pytest.mark.parametrize("how", ["start documents", "a saved library path"])
def test_adaptive_ranks_through_the_subscribed_callback(profile, synthetic_library, tmp_path, how):
    RE, catalog = profile["RE"], profile["catalog"]
    if how == "start documents":
        candidates = synthetic_library.save(tmp_path / "candidates.npz")
        callback = profile["enable_ranking"]()  # no candidates: each run's start document names them
    else:
        candidates = synthetic_library.save(tmp_path / "candidates.npz")
        callback = profile["enable_ranking"](str(candidates))
    try:
        (uid,) = RE(profile["adaptive"](str(candidates), "Cu", "K", dwell_s=0.1, max_points=14))
    finally:
        profile["disable_ranking"]()
    assert callback.last_run.run_start["uid"] == uid
    assert callback.latest_ranking.names[0] == synthetic_library.names[SAMPLE]
    linked = [k for k in list(catalog.client)[-5:] if catalog.client[k].metadata["start"].get("parent_uid") == uid]
    assert len(linked) == 1  # the subscribed callback's ranking run, no second one



def test_adaptive_in_the_profile_takes_a_candidate_source(profile):
    RE, catalog = profile["RE"], profile["catalog"]
    before = len(list(catalog.client))
    with pytest.raises(ValueError, match="unknown option 'cout'"):  # refused before any run opens
        RE(profile["adaptive"]("amcsd:Cu?minerals=tenorite,cuprite&cout=2", "Cu", "K"))
    assert len(list(catalog.client)) == before
    (uid,) = RE(profile["adaptive"]("amcsd:Cu?minerals=tenorite,cuprite", "Cu", "K", dwell_s=0.1, max_points=6))
    start = catalog[uid].metadata["start"]
    assert start["xas"]["candidates"]["source"] == "amcsd:Cu?minerals=tenorite,cuprite"
    assert [n.split(" (AMCSD")[0] for n in start["xas"]["candidates"]["names"]] == ["cuprite", "tenorite"]
    assert catalog[uid].metadata["stop"]["exit_status"] == "success"
