"""The local catalog shared by processes: one server per folder, private files, the key kept out of
URLs and logs, storage failures that fail the plan, read-back with plain Tiled and databroker."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky.plans import count
from ophyd.sim import det, motor

from endstation.catalog import StorageError, open_catalog
from endstation.catalog_server import SERVER_FILE, stop_server
from endstation.replay import normalize_documents

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("shared") / "catalog"


@pytest.fixture(scope="module")
def catalog(folder):
    return open_catalog(directory=folder)


def _run(catalog, plan, *, checked=True):
    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(catalog)
    if checked:
        RE.preprocessors.append(catalog.checked)
    return RE, RE(plan), docs


def _python(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)


def test_the_catalog_folder_is_private_and_the_key_is_in_no_url_and_no_log(catalog, folder):
    _, (uid,), _ = _run(catalog, count([det], num=3))
    key = catalog.server.api_key
    assert len(key) >= 32
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {oct(mode)}: others may read it"
    # The key is written once, in the owner-only server file, and sent in a header.
    for text in (catalog.uri, catalog.client.uri, catalog.server.uri, repr(catalog.server), repr(catalog.client)):
        assert key not in text
    holders = [p.name for p in folder.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert holders == [SERVER_FILE]
    access = (folder / "access.log").read_text()
    assert f"/metadata/{uid}" in access or uid in access  # the log is written, without the key
    # Without the key, the server refuses.
    import httpx

    assert httpx.get(f"{catalog.server.uri}/metadata/{uid}", trust_env=False).status_code == 401


def test_another_process_reads_while_this_one_writes(catalog, folder):
    _, (first,), first_docs = _run(catalog, count([det, motor], num=4))
    seen = {}

    def plan():  # a run open and being written here while other processes read the catalog
        yield from bps.open_run()
        yield from bps.trigger_and_read([det])
        seen["replay"] = _python("-m", "apps.replay", first, "--catalog", str(folder), "--print")
        seen["list"] = _python("-c", (
            "import sys; from endstation.catalog import open_catalog; c = open_catalog(sys.argv[1]); "
            "print(len(c), float(c[sys.argv[2]]['primary']['det'].read().sum()))"), str(folder), first)
        yield from bps.trigger_and_read([det])
        yield from bps.close_run()

    _, (second,), _ = _run(catalog, plan())
    assert seen["replay"].returncode == 0, seen["replay"].stderr
    assert "exit_status success" in seen["replay"].stderr
    assert "Traceback" not in seen["replay"].stderr
    replayed = [json.loads(line) for line in seen["replay"].stdout.splitlines()]
    assert [n for n, _ in replayed] == [n for n, _ in first_docs]
    assert [d["data"] for n, d in replayed if n == "event"] == [d["data"] for n, d in first_docs if n == "event"]
    assert seen["list"].returncode == 0, seen["list"].stderr
    n_runs, total = seen["list"].stdout.split()
    assert int(n_runs) >= 2  # the first run and the one still open
    events = [d for n, d in first_docs if n == "event"]
    assert float(total) == pytest.approx(sum(e["data"]["det"] for e in events))
    assert catalog[second].metadata["stop"]["exit_status"] == "success"
    # Everyone used the one server of the folder.
    assert json.loads((folder / SERVER_FILE).read_text())["pid"] == catalog.server.pid


def test_a_stale_server_file_is_replaced_and_a_lost_server_is_rejoined(tmp_path):
    folder = tmp_path / "catalog"
    folder.mkdir(mode=0o755)  # as an older version left it: world-readable
    (folder / "access.log").write_text("old log\n")
    os.chmod(folder / "access.log", 0o644)
    catalog = open_catalog(directory=folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "access.log").stat().st_mode) == 0o600
    _, (uid,), _ = _run(catalog, count([det]))
    old = catalog.server
    assert stop_server(folder)
    # A server file left behind by a server that is gone (killed, machine restarted).
    (folder / SERVER_FILE).write_text(json.dumps({"uri": old.uri, "api_key": old.api_key, "pid": old.pid}))
    os.chmod(folder / SERVER_FILE, 0o600)
    _, (later,), _ = _run(catalog, count([det]))  # this session joins a new server at the next run
    assert catalog.failures == []
    assert catalog.server.pid != old.pid
    reader = open_catalog(directory=folder)
    assert reader.server.pid == catalog.server.pid
    assert uid in reader and later in reader
    assert stop_server(folder)


def test_a_storage_failure_fails_the_plan_and_marks_the_run(catalog, tmp_path):
    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(catalog)
    RE.preprocessors.append(catalog.checked)

    def plan():
        uid = yield from bps.open_run()
        catalog.flush()
        catalog.client[uid].delete(recursive=True, external_only=False)  # storage loses the run
        yield from bps.trigger_and_read([det])
        yield from bps.close_run()

    with pytest.raises(StorageError, match="not stored") as info:
        RE(plan())
    (uid,) = info.value.run_uids
    assert uid == docs[0][1]["uid"] and uid in catalog.failed_runs
    assert "catalog.retry(uid)" in str(info.value)
    stop = docs[-1][1]
    assert stop["exit_status"] == "fail"
    assert "storage failure" in stop["reason"] and "descriptor" in stop["reason"]
    # The run is kept in memory, stop document included.
    assert normalize_documents(catalog.cache.documents(uid)) == normalize_documents(docs)
    assert len(catalog.export(uid, tmp_path / "kept.jsonl").read_text().splitlines()) == len(docs)
    # The next plan is not blamed for it.
    _, (good,), _ = _run(catalog, count([det]))
    assert catalog[good].metadata["stop"]["exit_status"] == "success"


def test_run_documents_databroker_and_scan_ids_read_back(catalog):
    pytest.importorskip("doct", reason="databroker.Broker (v1 API) needs 'doct' and 'humanize'")
    from databroker import Broker

    _, (uid,), live = _run(catalog, count([det, motor], num=3, md={"sample": "documents"}))
    run = catalog[uid]
    documents = list(run.documents())  # JSON-seq export of the local server
    assert [name for name, _ in documents] == [name for name, _ in live]
    assert documents[0][1] == json.loads(json.dumps(live[0][1]))
    assert [d["data"]["det"] for n, d in documents if n == "event"] == [d["data"]["det"] for n, d in live if n == "event"]
    db = Broker(catalog.client)
    assert db[-1].start["uid"] == uid
    scan_id = live[0][1]["scan_id"]
    assert db[scan_id].start["uid"] == uid
    assert catalog.client.scan_id[scan_id].metadata["start"]["uid"] == uid
    assert list(db[-1].table()["det"]) == [d["data"]["det"] for n, d in live if n == "event"]
    assert [name for name, _ in db[-1].documents()] == [name for name, _ in live]


def test_the_newest_scan_leaves_analysis_runs_out(catalog):
    pytest.importorskip("doct", reason="databroker.Broker (v1 API) needs 'doct' and 'humanize'")
    from databroker import Broker
    from event_model import compose_run

    _, (uid,), _ = _run(catalog, count([det]))
    analysis = compose_run(metadata={"purpose": "xas-ranking", "parent_uid": uid})
    catalog("start", analysis.start_doc)
    catalog("stop", analysis.compose_stop())
    assert Broker(catalog.client)[-1].start["uid"] == analysis.start_doc["uid"]  # the newest run
    assert Broker(catalog.scans)[-1].start["uid"] == uid  # the newest scan


def test_write_stats_count_the_documents(catalog):
    before = catalog.write_stats
    _, _, docs = _run(catalog, count([det], num=5))
    after = catalog.write_stats
    assert after["documents"] - before["documents"] == len(docs)
    assert after["callback_s"] >= before["callback_s"] and after["write_s"] > before["write_s"]
    assert set(after) >= {"callback_ms_per_document", "write_ms_per_document", "batch_size"}


def test_an_analysis_run_is_named_in_its_parents_metadata(catalog):
    from event_model import compose_run

    RE = RunEngine({})
    RE.subscribe(catalog)

    def analysis(name, doc):  # a stand-in for a ranking callback emitting its run into the catalog
        if name == "start":
            analysis.bundle = compose_run(metadata={"purpose": "xas-ranking", "parent_uid": doc["uid"]})
            catalog("start", analysis.bundle.start_doc)
        elif name == "stop":
            catalog("stop", analysis.bundle.compose_stop())

    RE.subscribe(analysis)
    (uid,) = RE(count([det]))
    linked = catalog[uid].metadata["analysis_runs"]
    assert linked == {"xas-ranking": analysis.bundle.start_doc["uid"]}
    assert catalog[linked["xas-ranking"]].metadata["start"]["parent_uid"] == uid
    assert np.isfinite(catalog[uid]["primary"]["det"].read()).all()


def test_xas_replay_refuses_a_folder_without_a_catalog(tmp_path, capsys):
    from apps.replay import main

    assert main(["some-uid", "--catalog", str(tmp_path / "typo")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"xas-replay: error: there is no local catalog in {tmp_path / 'typo'}"
    assert not (tmp_path / "typo").exists()  # a mistyped folder is not made into a new catalog
