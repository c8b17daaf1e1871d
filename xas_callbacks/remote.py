"""The ranking callback in another process: a 0MQ ranking service.

At a beamline the RunEngine publishes its documents to a 0MQ proxy (Bluesky's ``Proxy`` /
``bluesky-0MQ-proxy``). The ranking service, on any host that reaches the proxy (a GPU node for
large candidate sets), subscribes to it, ranks each XAS run with an :class:`XASRankingCallback`
and publishes the linked ``xas-ranking`` analysis run back to the proxy, where the adaptive
plan's :class:`plans.ranking_feed.RemoteRankingFeed` (and any catalog writer) picks it up.

Documents cross the wire as JSON, never pickle: no process unpickles bytes from the network.

Start it with::

    xas-rank-service --listen proxy-host:5568 --publish proxy-host:5567 \\
        [--candidates PATH --model cu-k]

Without ``--candidates`` each run's candidates are taken from its start document.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from models.jsonable import json_default

__all__ = ["json_serializer", "json_deserializer", "json_publisher", "SkipAnalysisRuns", "ranking_service"]

logger = logging.getLogger(__name__)


def json_serializer(doc: dict) -> bytes:
    """A document as JSON bytes (numpy arrays and scalars as lists and numbers)."""
    return json.dumps(doc, default=json_default).encode()


def json_deserializer(data: bytes) -> dict:
    """The inverse of :func:`json_serializer`."""
    return json.loads(data)


def json_publisher(address: Any, *, prefix: bytes = b""):
    """A Bluesky 0MQ ``Publisher`` that sends JSON instead of pickle."""
    from bluesky.callbacks.zmq import Publisher

    return Publisher(address, prefix=prefix, serializer=json_serializer)


class SkipAnalysisRuns:
    """Passes on the documents of every run except ``xas-ranking`` analysis runs.

    A proxy broadcasts everything, the service's own ranking runs included; the ranking callback
    must not see those interleaved with the raw run it is ranking.
    """

    def __init__(self, callback: Callable[[str, dict], Any]):
        self.callback = callback
        self._runs: set[str] = set()
        self._descriptors: set[str] = set()

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start" and doc.get("purpose") == "xas-ranking":
            self._runs.add(doc["uid"])
            return
        if name == "descriptor" and doc.get("run_start") in self._runs:
            self._descriptors.add(doc["uid"])
            return
        if name in ("event", "event_page") and doc.get("descriptor") in self._descriptors:
            return
        if name == "stop" and doc.get("run_start") in self._runs:
            self._runs.discard(doc["run_start"])
            return
        self.callback(name, doc)


def ranking_service(listen: Any, publish: Any, *, library=None, prefix: bytes = b"", **callback_kwargs):
    """A ``RemoteDispatcher`` on ``listen`` whose ranking callback publishes to ``publish``.

    Call ``.start()`` on the result (it blocks; ``.stop()`` from another thread ends it).
    """
    from bluesky.callbacks.zmq import RemoteDispatcher

    from xas_callbacks.callback import XASRankingCallback

    callback = XASRankingCallback(library, emit=json_publisher(publish, prefix=prefix), **callback_kwargs)
    dispatcher = RemoteDispatcher(listen, prefix=prefix, deserializer=json_deserializer)
    dispatcher.subscribe(SkipAnalysisRuns(callback))
    dispatcher.ranking_callback = callback
    return dispatcher
