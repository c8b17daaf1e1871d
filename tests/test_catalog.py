"""Storage in a real (local) Tiled catalog, read-back, replay, failures, xas-replay."""

import json

import numpy as np
import pytest
from bluesky import RunEngine

from endstation import SimulatedSample, make_endstation, read_xdi
from endstation.catalog import CatalogError, open_catalog
from apps.replay import main
from endstation.replay import normalize_documents, replay
from plans import xafs_scan

GRID = {"bounds": "-150 -20 30 9k", "steps": "10 0.5 0.1k", "times": "0.5 0.5 0.1k"}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    # One local Tiled server per test session (shared with test_profile through the directory).
    return open_catalog(directory=tmp_path_factory.getbasetemp() / "xas-catalog")


@pytest.fixture(scope="module")
def cuo(xdi_library):
    return SimulatedSample.from_xdi(xdi_library / "Cu" / "CuO_tenorite_13K_01.xdi")


@pytest.fixture(scope="module")
def stored_run(catalog, cuo):
    es = make_endstation(cuo, seed=11, time_scale=0)
    RE = RunEngine({})
    live = []
    RE.subscribe(lambda n, d: live.append((n, d)))
    RE.subscribe(catalog)
    (uid,) = RE(xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid=GRID,
                          md={"XDI": {"Sample": {"name": "CuO tenorite (simulated)"}}}))
    assert catalog.failures == []
    return uid, live


def test_normalised_mu_from_catalog_matches_truth(catalog, cuo, stored_run):
    from larch import Group
    from larch.xafs import pre_edge

    uid, _ = stored_run
    run = catalog[uid]
    assert run.metadata["start"]["xas"]["detectors"]["it"] == "It"
    assert run.metadata["stop"]["exit_status"] == "success"
    stream = run["primary"]
    energy = np.asarray(stream["energy"].read(), float)
    i0 = np.asarray(stream["I0"].read(), float)
    it = np.asarray(stream["It"].read(), float)
    mu = np.log(i0 / it)
    e0 = run.metadata["start"]["xas"]["e0"]
    kw = dict(e0=e0, pre1=-150, pre2=-30, norm1=50, norm2=500, nnorm=2)
    measured = Group(energy=energy, mu=mu)
    pre_edge(measured, **kw)
    truth = Group(energy=energy, mu=cuo.total(energy))
    pre_edge(truth, **kw)
    sigma = np.sqrt(1 / i0 + 1 / it) / truth.edge_step
    z = (measured.norm - truth.norm) / sigma
    assert measured.edge_step == pytest.approx(truth.edge_step, rel=0.02)
    assert np.sqrt(np.mean(z**2)) < 2.0  # differences are counting noise
    assert np.max(np.abs(measured.norm - truth.norm)) < 0.03


def test_replay_equals_live_and_validates(catalog, stored_run):
    uid, live = stored_run
    seen = []
    replayed = replay(uid, [lambda n, d: seen.append((n, d))], catalog=catalog)
    assert seen == replayed
    assert [n for n, _ in replayed] == [n for n, _ in live]
    assert normalize_documents(replayed) == normalize_documents(live)
    paged = replay(catalog[uid], [], as_pages=True)
    assert [n for n, _ in paged] == ["start", "descriptor", "event_page", "stop"]
    assert normalize_documents(paged) == normalize_documents(live)


def test_storage_failure_is_counted_and_run_kept(catalog, stored_run, tmp_path):
    uid, live = stored_run
    before = catalog.failure_count
    for name, doc in live:  # the same run again: the catalog refuses the duplicate uid
        catalog(name, doc)
    assert catalog.failure_count == before + 1
    assert catalog.failures[-1].run_uid == uid and catalog.failures[-1].document == "start"
    assert uid in catalog.failed_runs
    assert normalize_documents(catalog.cache.documents(uid)) == normalize_documents(live)
    path = catalog.export(uid, tmp_path / "run.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [n for n, _ in lines] == [n for n, _ in live]
    catalog.retry(uid)
    assert uid not in catalog.failed_runs
    assert normalize_documents(replay(uid, [], catalog=catalog)) == normalize_documents(live)


def test_unreachable_catalog_uri_is_a_clear_error():
    with pytest.raises(CatalogError, match=r"cannot reach the Tiled server at 'http://127\.0\.0\.1:9/api/v1'"):
        open_catalog("http://127.0.0.1:9/api/v1", timeout=2)


def test_xas_replay_cli(catalog, stored_run, tmp_path, capsys):
    uid, live = stored_run
    out = tmp_path / "cli.xdi"
    assert main([uid, "--catalog", str(catalog.server.directory), "--xdi", str(out)]) == 0
    data = read_xdi(out)
    events = [d for n, d in live if n == "event"]
    assert np.array_equal(data.columns["i0"], [e["data"]["I0"] for e in events])
    assert data.metadata["Bluesky"]["uid"] == uid
    assert "exit_status success" in capsys.readouterr().err
    assert main(["no-such-uid", "--catalog", str(catalog.server.directory)]) == 2
    assert "no-such-uid" in capsys.readouterr().err
    assert main([uid, "--catalog", "http://127.0.0.1:9/api/v1"]) == 2
    assert "cannot reach the Tiled server" in capsys.readouterr().err


def test_databroker_v1_api_reads_the_run(catalog, stored_run):
    pytest.importorskip("doct", reason="databroker.Broker (v1 API) needs 'doct' and 'humanize'")
    pytest.importorskip("humanize", reason="databroker.Broker (v1 API) needs 'doct' and 'humanize'")
    from databroker import Broker

    uid, live = stored_run
    header = Broker(catalog.client)[uid]
    assert header.start["xas"]["element"] == "Cu"
    table = header.table()
    events = [d for n, d in live if n == "event"]
    assert list(table["It"]) == [e["data"]["It"] for e in events]
    # and the v2 (xarray) view of bluesky-tiled-plugins
    dataset = catalog.client[uid].v2.primary.read()
    assert np.allclose(dataset["energy"].values, [e["data"]["energy"] for e in events])


def test_replay_reads_the_events_after_databroker_switched_clients_to_the_v2_view(catalog, stored_run):
    # Using databroker.Broker once makes every later client of the process return v2 run views;
    # replay and the demo's read-back must still find the events.
    pytest.importorskip("doct", reason="databroker.Broker (v1 API) needs 'doct' and 'humanize'")
    pytest.importorskip("humanize", reason="databroker.Broker (v1 API) needs 'doct' and 'humanize'")
    from databroker import Broker

    uid, live = stored_run
    Broker(catalog.client)[uid].table()
    fresh = open_catalog(directory=catalog.server.directory)
    assert normalize_documents(replay(uid, [], catalog=fresh)) == normalize_documents(live)


def test_a_second_local_catalog_in_one_process_leaves_the_first_working(tmp_path):
    from ophyd.sim import det, motor

    from bluesky.plans import count

    first = open_catalog(directory=tmp_path / "first")
    second = open_catalog(directory=tmp_path / "second")
    for catalog in (first, second):
        RE = RunEngine({})
        RE.subscribe(catalog)
        (uid,) = RE(count([det, motor]))
        assert catalog.failures == [], catalog.failures
        assert catalog[uid].metadata["stop"]["exit_status"] == "success"
    reopened = open_catalog(directory=tmp_path / "first")  # a new client of the first server
    assert len(reopened) == 1
