"""Where the adaptive plan gets its rankings: the ``xas-ranking`` documents a ranking callback
publishes, in this process or in another one.

A ranking callback (:class:`xas_callbacks.callback.XASRankingCallback`) answers every usable
reading of a run with one event of its linked analysis run (the reading's energy, mu and sigma,
the posterior's leading candidates, offset, broadening...). :class:`RankingListener` follows those
documents and keeps the rankings of the newest analysis run, one per reading. Both feeds are such
listeners and offer the same two plan-side generators:

``subscribed(plan)``
    runs ``plan`` with whatever subscription the feed needs;
``wait_for_rankings(n_readings, timeout_s)``
    returns the rankings of the run so far (one dict per reading, in order) once they cover at
    least ``n_readings`` readings, or ``None`` if that does not happen within ``timeout_s``.

:class:`InProcessRankingFeed` listens to a callback in this process, subscribed to the RunEngine
for the plan's duration (or already subscribed, e.g. by the profile). The RunEngine dispatches each
event before ``save`` returns, so the ranking is there when the plan asks; nothing waits.

:class:`RemoteRankingFeed` listens on a 0MQ proxy (Bluesky's ``Publisher``/``RemoteDispatcher``)
for the analysis run a callback in another process (another host, a GPU node) publishes for this
run; the plan waits with ``bluesky.plan_stubs.wait_for`` and a timeout, so the RunEngine's event
loop never blocks.

:func:`outcome_from_ranking` turns one ranking into the outcome the energy-selection agent
ingests (bluesky-adaptive's ``ingest(points)``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator, Mapping
from typing import Any, Protocol

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.run_engine import WaitForTimeoutError

__all__ = [
    "RankingFeed",
    "RankingListener",
    "InProcessRankingFeed",
    "RemoteRankingFeed",
    "ranking_from_event",
    "outcome_from_ranking",
]


class RankingFeed(Protocol):
    def subscribed(self, plan: Generator) -> Generator: ...

    def wait_for_rankings(self, n_readings: int, timeout_s: float) -> Generator: ...


def ranking_from_event(data: Mapping) -> dict:
    """The ranking dict of one event of an ``xas-ranking`` run's ``ranking`` stream.

    Keys: ``ranking`` (list of ``name``, ``probability``, ``log_evidence``), ``offset_eV``,
    ``broadening_eV``, ``entropy``, ``top_reduced_chi2``, ``p_none``, ``warnings``, ``n_points`` (readings the posterior
    used), ``n_events`` (the raw event it answers, ``raw_seq_num``) and the reading itself:
    ``energy``, ``mu``, ``mu_sigma``.
    """
    names = [str(n) for n in data["top_names"]]
    probabilities = [float(p) for p in data["top_probabilities"]]
    log_evidence = [float(v) for v in data.get("top_log_evidence", [float("nan")] * len(names))]
    ranked = [
        {"name": n, "probability": p, "log_evidence": e}
        for n, p, e in zip(names, probabilities, log_evidence)
        if n and p == p
    ]
    nan = float("nan")
    return {
        "ranking": ranked,
        "offset_eV": float(data.get("offset", 0.0)),
        "broadening_eV": float(data.get("broadening", 0.0)),
        "entropy": float(data.get("entropy", nan)),
        "top_reduced_chi2": float(data.get("top_reduced_chi2", nan)),
        "p_none": float(data.get("p_none", 0.0)),
        "warnings": str(data.get("warnings", "") or ""),
        "n_points": int(data.get("n_points", 0)),
        "n_events": int(data.get("raw_seq_num", data.get("n_points", 0))),
        "energy": float(data.get("energy", nan)),
        "mu": float(data.get("mu", nan)),
        "mu_sigma": float(data.get("mu_sigma", nan)),
    }


def outcome_from_ranking(ranking: Mapping, _id: Any = None) -> dict:
    """The outcome of one reading, as the agent's ``ingest`` takes it: the reading and the
    posterior after it.

    ``{"_id", "energy", "mu", "mu_sigma", "top_names", "top_probabilities", "p_none",
    "offset_eV", "broadening_eV", "window_eV"}``: flat, numbers, strings and arrays of them, so that
    bluesky-adaptive's ``optimize`` can record it as event data (``window_eV`` is ``[nan, nan]``
    when the ranking run did not state it).
    """
    ranked = ranking.get("ranking", [])
    window = ranking.get("window_eV")
    nan = float("nan")
    return {
        "_id": _id,
        "energy": float(ranking["energy"]),
        "mu": float(ranking["mu"]),
        "mu_sigma": float(ranking["mu_sigma"]),
        "top_names": [str(r["name"]) for r in ranked],
        "top_probabilities": [float(r["probability"]) for r in ranked],
        "p_none": float(ranking.get("p_none", 0.0)),
        "offset_eV": float(ranking.get("offset_eV", 0.0)),
        "broadening_eV": float(ranking.get("broadening_eV", 0.0)),
        "window_eV": [float(w) for w in window] if window is not None else [nan, nan],
    }


class RankingListener:
    """Follows ``xas-ranking`` analysis runs in a document stream; keeps the newest run's rankings.

    Call it with every document (a subscriber). When it also sees the raw runs (a 0MQ proxy
    carries both), it follows only the analysis run of the newest raw XAS run.

    Attributes
    ----------
    rankings : list of dict
        :func:`ranking_from_event` of each ranking event of the newest analysis run, each with
        the run's ``window_eV`` (the measured energies the ranking can use).
    """

    def __init__(self) -> None:
        self.raw_uid: str | None = None
        self.run_uid: str | None = None
        self.window_eV: list[float] | None = None
        self.rankings: list[dict] = []
        self._descriptor: str | None = None

    @property
    def covered(self) -> int:
        """The raw readings the rankings answer so far (the last one's ``raw_seq_num``)."""
        return self.rankings[-1]["n_events"] if self.rankings else 0

    def __call__(self, name: str, doc: dict) -> list[dict]:
        """Take one document; returns the rankings it added (none for most documents)."""
        if name == "start":
            if doc.get("purpose") == "xas-ranking":
                if self.raw_uid is None or doc.get("parent_uid") == self.raw_uid:
                    self.run_uid = doc["uid"]
                    self.window_eV = (doc.get("ranking_config") or {}).get("window_eV")
                    self.rankings = []
                    self._descriptor = None
            elif "xas" in doc:
                self.raw_uid = doc["uid"]
                self.run_uid, self.rankings, self._descriptor = None, [], None
        elif name == "descriptor":
            if doc.get("run_start") == self.run_uid and doc.get("name") == "ranking":
                self._descriptor = doc["uid"]
        elif self._descriptor is None or doc.get("descriptor") != self._descriptor:
            return []
        elif name == "event":
            return self._take([doc["data"]])
        elif name == "event_page":
            data = doc["data"]
            return self._take([{k: data[k][i] for k in data} for i in range(len(doc["seq_num"]))])
        return []

    def _take(self, events: list[Mapping]) -> list[dict]:
        added = [{**ranking_from_event(data), "window_eV": self.window_eV} for data in events]
        self.rankings.extend(added)
        return added


class InProcessRankingFeed:
    """Rankings from an :class:`XASRankingCallback` in this process.

    Parameters
    ----------
    callback : XASRankingCallback
        The ranking callback. If it is already subscribed to the RunEngine (e.g. by the
        profile, so that its ranking documents are stored), pass ``subscribe=False``.
    subscribe : bool
        Subscribe ``callback`` to the RunEngine around the plan.
    """

    def __init__(self, callback, *, subscribe: bool = True):
        self.callback = callback
        self.subscribe = subscribe
        self.listener = RankingListener()

    def subscribed(self, plan: Generator) -> Generator:
        token = self.callback.subscribe(self.listener)
        try:
            if self.subscribe:
                return (yield from bpp.subs_wrapper(plan, self.callback))
            return (yield from plan)
        finally:
            self.callback.unsubscribe(token)

    def wait_for_rankings(self, n_readings: int, timeout_s: float) -> Generator:
        yield from bps.null()
        return list(self.listener.rankings) or None


class RemoteRankingFeed:
    """Rankings published by a ranking callback in another process, through a 0MQ proxy.

    Parameters
    ----------
    address : str or tuple
        The proxy's outbound address, as for :class:`bluesky.callbacks.zmq.RemoteDispatcher`
        (e.g. ``"localhost:5568"``).
    prefix : bytes
        0MQ topic prefix (as given to the publishers).

    Documents are JSON (:func:`xas_callbacks.remote.json_publisher` on the publishing side);
    nothing received from the network is unpickled.
    """

    def __init__(self, address: Any, *, prefix: bytes = b""):
        from bluesky.callbacks.zmq import RemoteDispatcher

        from xas_callbacks.remote import json_deserializer

        self.address = address
        self.listener = RankingListener()
        self._dispatcher = RemoteDispatcher(address, prefix=prefix, deserializer=json_deserializer)
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._dispatcher.subscribe(self._on_document)
        self._thread = threading.Thread(target=self._listen, name="xas-ranking-feed", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            self._dispatcher.start()
        except asyncio.CancelledError:
            pass  # closed

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening (from any thread)."""
        task = getattr(self._dispatcher, "_task", None)
        if task is not None and not self._dispatcher.closed:
            self._dispatcher.loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout_s)

    def subscribed(self, plan: Generator) -> Generator:
        return (yield from plan)

    def wait_for_rankings(self, n_readings: int, timeout_s: float) -> Generator:
        def future_factory():
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            with self._lock:
                if self.listener.covered >= n_readings:
                    future.set_result(list(self.listener.rankings))
                else:
                    self._waiters.append((n_readings, loop, future))
            return future

        try:
            (task,) = yield from bps.wait_for([future_factory], timeout=timeout_s)
        except WaitForTimeoutError:
            return None
        return task.result()

    # -- on the dispatcher's thread ------------------------------------------------------------
    def _on_document(self, name: str, doc: dict) -> None:
        with self._lock:
            if not self.listener(name, doc):
                return
            covered, rankings = self.listener.covered, list(self.listener.rankings)
            still_waiting = []
            for n_readings, loop, future in self._waiters:
                if covered >= n_readings:
                    loop.call_soon_threadsafe(_set_if_pending, future, rankings)
                else:
                    still_waiting.append((n_readings, loop, future))
            self._waiters = still_waiting


def _set_if_pending(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)
