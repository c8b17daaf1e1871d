"""Where the adaptive plan gets its rankings: in-process, or from a callback in another process.

Both feeds offer the same two plan-side generators:

``subscribed(plan)``
    runs ``plan`` with whatever subscription the feed needs;
``wait_for_ranking(n_points, timeout_s)``
    returns the ranking (``RankingResult.as_dict()`` layout plus ``n_points``) that covers at
    least ``n_points`` readings, or ``None`` if none arrives within ``timeout_s``.

:class:`InProcessRankingFeed` subscribes an :class:`~xas_callbacks.callback.XASRankingCallback`
to the RunEngine for the duration of the plan. The RunEngine dispatches each event before
``save`` returns, so the ranking is already there when the plan asks; nothing waits.

:class:`RemoteRankingFeed` listens on a 0MQ proxy (Bluesky's ``Publisher``/``RemoteDispatcher``)
for the ``xas-ranking`` analysis run that a callback in another process (another host, a GPU
node) publishes for this run, and the plan waits for it with ``bluesky.plan_stubs.wait_for`` and
a timeout, so the RunEngine's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator
from typing import Any, Protocol

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.run_engine import WaitForTimeoutError

__all__ = ["RankingFeed", "InProcessRankingFeed", "RemoteRankingFeed", "ranking_from_event"]


class RankingFeed(Protocol):
    def subscribed(self, plan: Generator) -> Generator: ...

    def wait_for_ranking(self, n_points: int, timeout_s: float) -> Generator: ...


class InProcessRankingFeed:
    """Rankings from an :class:`XASRankingCallback` subscribed for the duration of the plan.

    Parameters
    ----------
    callback : XASRankingCallback
        The ranking callback. If it is already subscribed to the RunEngine (e.g. by the
        profile, so that its ranking documents are stored), pass ``subscribe=False``.
    subscribe : bool
        Subscribe ``callback`` around the plan.
    """

    def __init__(self, callback, *, subscribe: bool = True):
        self.callback = callback
        self.subscribe = subscribe

    def subscribed(self, plan: Generator) -> Generator:
        if self.subscribe:
            return (yield from bpp.subs_wrapper(plan, self.callback))
        return (yield from plan)

    def wait_for_ranking(self, n_points: int, timeout_s: float) -> Generator:
        yield from bps.null()
        result = self.callback.latest_ranking
        if result is None:
            return None
        ranking = result.as_dict(k=len(result.names))
        ranking["entropy"] = float(result.entropy)
        ranking["n_points"] = int(result.n_points)
        return ranking


def ranking_from_event(data: dict) -> dict:
    """The ranking dict from the data of one event of an ``xas-ranking`` run's ``ranking`` stream.

    ``raw_seq_num`` (the raw event the ranking has seen up to) says which reading it answers;
    rankings from callbacks that do not record it are taken as covering ``n_points`` readings.
    """
    names = [str(n) for n in data["top_names"]]
    probabilities = [float(p) for p in data["top_probabilities"]]
    log_evidence = [float(v) for v in data.get("top_log_evidence", [float("nan")] * len(names))]
    ranked = [
        {"name": n, "probability": p, "log_evidence": e}
        for n, p, e in zip(names, probabilities, log_evidence)
        if n and p == p
    ]
    return {
        "ranking": ranked,
        "offset_eV": float(data.get("offset", 0.0)),
        "broadening_eV": float(data.get("broadening", 0.0)),
        "entropy": float(data.get("entropy", float("nan"))),
        "top_reduced_chi2": float(data.get("top_reduced_chi2", float("nan"))),
        "n_points": int(data.get("n_points", 0)),
        "n_events": int(data.get("raw_seq_num", data.get("n_points", 0))),
    }


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
        self._dispatcher = RemoteDispatcher(address, prefix=prefix, deserializer=json_deserializer)
        self._lock = threading.Lock()
        self._raw_uid: str | None = None
        self._analysis_uids: set[str] = set()
        self._descriptors: set[str] = set()
        self._latest: dict | None = None
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

    def wait_for_ranking(self, n_points: int, timeout_s: float) -> Generator:
        def future_factory():
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            with self._lock:
                if self._latest is not None and self._latest["n_events"] >= n_points:
                    future.set_result(self._latest)
                else:
                    self._waiters.append((n_points, loop, future))
            return future

        try:
            (task,) = yield from bps.wait_for([future_factory], timeout=timeout_s)
        except WaitForTimeoutError:
            return None
        return task.result()

    # -- on the dispatcher's thread ------------------------------------------------------------
    def _on_document(self, name: str, doc: dict) -> None:
        with self._lock:
            if name == "start":
                if doc.get("purpose") == "xas-ranking":
                    if doc.get("parent_uid") == self._raw_uid:
                        self._analysis_uids.add(doc["uid"])
                elif "xas" in doc:
                    self._raw_uid = doc["uid"]
                    self._latest = None
            elif name == "descriptor" and doc.get("run_start") in self._analysis_uids:
                if doc.get("name") == "ranking":
                    self._descriptors.add(doc["uid"])
            elif name == "event" and doc.get("descriptor") in self._descriptors:
                self._publish(ranking_from_event(doc["data"]))
            elif name == "event_page" and doc.get("descriptor") in self._descriptors:
                keys = list(doc["data"])
                for i in range(len(doc["seq_num"])):
                    self._publish(ranking_from_event({k: doc["data"][k][i] for k in keys}))

    def _publish(self, ranking: dict) -> None:
        self._latest = ranking
        still_waiting = []
        for n_points, loop, future in self._waiters:
            if ranking["n_events"] >= n_points:
                loop.call_soon_threadsafe(_set_if_pending, future, ranking)
            else:
                still_waiting.append((n_points, loop, future))
        self._waiters = still_waiting


def _set_if_pending(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)
