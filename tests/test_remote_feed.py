"""The adaptive plan fed by a ranking service in another process, through a real 0MQ proxy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from bluesky import RunEngine
from bluesky.callbacks.zmq import Proxy

from endstation.devices import make_endstation
from endstation.sample import SimulatedSample
from plans.adaptive import adaptive_xas_plan
from plans.ranking_feed import RemoteRankingFeed, ranking_from_event
from xas_callbacks.remote import SkipAnalysisRuns, json_deserializer, json_publisher, json_serializer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_documents_cross_as_json_with_numpy_values():
    import numpy as np

    doc = {"data": {"x": np.arange(3), "y": np.float32(1.5)}, "uid": "u"}
    assert json_deserializer(json_serializer(doc)) == {"data": {"x": [0, 1, 2], "y": 1.5}, "uid": "u"}


def test_the_service_never_sees_its_own_analysis_runs():
    seen = []
    skip = SkipAnalysisRuns(lambda name, doc: seen.append((name, doc.get("uid"))))
    skip("start", {"uid": "raw", "xas": {}})
    skip("start", {"uid": "ana", "purpose": "xas-ranking", "parent_uid": "raw"})
    skip("descriptor", {"uid": "d-ana", "run_start": "ana"})
    skip("event", {"uid": "e-ana", "descriptor": "d-ana"})
    skip("descriptor", {"uid": "d-raw", "run_start": "raw"})
    skip("event", {"uid": "e-raw", "descriptor": "d-raw"})
    skip("stop", {"uid": "s-ana", "run_start": "ana"})
    skip("stop", {"uid": "s-raw", "run_start": "raw"})
    assert [uid for _, uid in seen] == ["raw", "d-raw", "e-raw", "s-raw"]


def test_ranking_from_event_reads_the_callbacks_ranking_stream():
    ranking = ranking_from_event(
        {"top_names": ["a", "b", ""], "top_probabilities": [0.7, 0.3, float("nan")],
         "top_log_evidence": [1.0, 0.2, float("nan")], "offset": 0.5, "broadening": 2.0,
         "entropy": 0.6, "n_points": 7, "raw_seq_num": 11}
    )
    assert [r["name"] for r in ranking["ranking"]] == ["a", "b"]
    assert ranking["offset_eV"] == 0.5 and ranking["broadening_eV"] == 2.0
    assert ranking["n_events"] == 11


@pytest.fixture(scope="module")
def library(distinct_cu_library):
    return distinct_cu_library


def test_adaptive_plan_driven_by_a_ranking_service_in_another_process(library, tmp_path):
    in_port, out_port = _free_port(), _free_port()
    proxy = Proxy(in_port, out_port)
    threading.Thread(target=proxy.start, daemon=True).start()
    saved = library.save(tmp_path / "candidates.npz")
    service = subprocess.Popen(
        [sys.executable, "-m", "apps.rank_service", "--listen", f"localhost:{out_port}",
         "--publish", f"localhost:{in_port}", "--candidates", str(saved)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    feed = RemoteRankingFeed(f"localhost:{out_port}")
    publisher = json_publisher(f"localhost:{in_port}")
    try:
        for line in service.stdout:  # log lines first, then the service says it listens
            if "ranking service" in line:
                break
        time.sleep(1.0)  # 0MQ subscriptions take a moment to propagate (slow joiner)
        sample = SimulatedSample.from_spectrum(library.energies, library.mean[3], element="Cu", edge="K")
        es = make_endstation(sample, seed=2, time_scale=0.0, energy_offset=0.5)
        RE = RunEngine({})
        RE.subscribe(publisher)
        docs = []
        RE.subscribe(lambda name, doc: docs.append((name, doc)))
        RE(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=library, dwell_s=0.5,
                             feed=feed, ranking_timeout_s=30.0))
    finally:
        # Close 0MQ contexts explicitly: one left to the garbage collector blocks in term().
        publisher.close()
        feed.close()
        service.terminate()
        service.wait(10)
    decisions = [d["data"] for n, d in docs if n == "event" and "decision_action" in d["data"]]
    assert all(d["decision_action"] != "fallback" for d in decisions)
    assert decisions[-1]["decision_action"] == "stop"
    assert decisions[-1]["decision_top_candidate"] == library.names[3]
    assert docs[-1][1]["exit_status"] == "success"
