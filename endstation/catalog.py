"""Where runs are stored: a local Tiled catalog by default, a facility Tiled server on request.

* Default: the local catalog in ``models.paths.user_data_dir()/catalog``, served by one Tiled
  server process per folder that every process of the user joins
  (:mod:`endstation.catalog_server`): the queue server's worker writes while ``xas-replay``, a
  notebook or a second IPython read. The folder is private to its owner (``0700``, files ``0600``)
  and the server's key travels in a request header, never in a URL or a log.
* ``XAS_TILED_URI`` (and ``XAS_TILED_API_KEY``) point at a facility's Tiled server instead.

Runs are written with ``bluesky_tiled_plugins.TiledWriter``. :class:`XASCatalog` is the RunEngine
callback: every document first goes to a :class:`DocumentCache` (memory), then to a queue that a
writer thread empties into Tiled, so a reading costs the RunEngine microseconds, not an HTTP round
trip; events are written ``batch_size`` at a time. A run's stop document waits until the run is
written, so when ``RE(...)`` returns the run is in the catalog (or its failure is recorded).

A storage failure is logged and recorded, never raised into the RunEngine, and the run stays in
memory so that :meth:`XASCatalog.retry` or :meth:`XASCatalog.export` can save it. With the plan
wrapped by :meth:`XASCatalog.checked` (the profile puts it in ``RE.preprocessors``), a run whose
documents could not all be written closes with ``exit_status="fail"`` and a reason naming the
failure, and the plan ends with :class:`StorageError`: the queue server reports the plan as failed.

After a run's stop document its event uids are recorded in the run's metadata (``event_uids``), so
:func:`endstation.replay.replay` re-emits the very same documents; a run that an analysis run names
as its parent (``parent_uid``, e.g. the ``xas-ranking`` run of an adaptive scan) gets
``analysis_runs = {purpose: uid}`` in its metadata.

Cost of storage: :attr:`XASCatalog.write_stats` (documents, seconds in the RunEngine's thread and
in the writer thread, milliseconds per document).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.jsonable import json_default

__all__ = [
    "CatalogError",
    "DocumentCache",
    "StorageError",
    "StorageFailure",
    "XASCatalog",
    "open_catalog",
    "default_catalog_dir",
    "DEFAULT_BATCH_SIZE",
    "URI_ENV",
    "API_KEY_ENV",
]

logger = logging.getLogger(__name__)

URI_ENV = "XAS_TILED_URI"
API_KEY_ENV = "XAS_TILED_API_KEY"

#: Events per write to Tiled. One write costs about as much for 1 row as for 20 (an HTTP round
#: trip and a DuckDB append, 15-60 ms on the 2-core test machine); see ``XASCatalog.write_stats``.
DEFAULT_BATCH_SIZE = 20

_FLUSH = object()


class CatalogError(RuntimeError):
    """The catalog cannot be opened or reached; the message names the URI or directory."""


class StorageError(RuntimeError):
    """A run could not be (completely) stored; its documents are kept in memory.

    Attributes
    ----------
    run_uids : list of str
        The runs concerned (``XASCatalog.retry(uid)`` / ``.export(uid, path)`` save them).
    """

    def __init__(self, message: str, run_uids: list[str]):
        super().__init__(message)
        self.run_uids = list(run_uids)


@dataclass
class StorageFailure:
    """One failed write: the run, the document kind and the error."""

    run_uid: str | None
    document: str
    error: str


class DocumentCache:
    """Callback keeping the documents of the last ``max_runs`` runs in memory, in order.

    Parameters
    ----------
    max_runs : int
        How many runs to keep (oldest dropped first).
    """

    def __init__(self, max_runs: int = 20) -> None:
        self.max_runs = int(max_runs)
        self._runs: OrderedDict[str, list[tuple[str, dict]]] = OrderedDict()
        self._descriptor_run: dict[str, str] = {}
        self._resource_run: dict[str, str] = {}

    def __call__(self, name: str, doc: dict) -> None:
        uid = self._run_of(name, doc)
        if uid is None:
            return
        if name == "start":
            self._runs[uid] = []
            while len(self._runs) > self.max_runs:
                old, _ = self._runs.popitem(last=False)
                self._descriptor_run = {k: v for k, v in self._descriptor_run.items() if v != old}
                self._resource_run = {k: v for k, v in self._resource_run.items() if v != old}
        elif name == "descriptor":
            self._descriptor_run[doc["uid"]] = uid
        elif name in ("resource", "stream_resource"):
            self._resource_run[doc["uid"]] = uid
        if uid in self._runs:
            self._runs[uid].append((name, doc))

    def _run_of(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc["uid"]
        if name in ("stop", "descriptor", "resource", "stream_resource"):
            return doc.get("run_start")
        if name in ("event", "event_page"):
            return self._descriptor_run.get(doc["descriptor"])
        if name in ("datum", "datum_page"):
            return self._resource_run.get(doc.get("resource"))
        if name == "stream_datum":
            return self._resource_run.get(doc.get("stream_resource"))
        return None

    def __contains__(self, uid: object) -> bool:
        return uid in self._runs

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def documents(self, uid: str) -> list[tuple[str, dict]]:
        """The documents of run ``uid`` in emission order (``KeyError`` naming it if absent)."""
        try:
            return list(self._runs[uid])
        except KeyError:
            raise KeyError(f"run {uid!r} is not in the in-memory document cache") from None

    def export(self, uid: str, path: str | os.PathLike) -> Path:
        """Write run ``uid`` as JSON lines ``[name, doc]`` (temporary file renamed when complete)."""
        docs = self.documents(uid)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        with open(tmp, "w", encoding="utf-8") as handle:
            for name, doc in docs:
                handle.write(json.dumps([name, doc], default=json_default) + "\n")
        os.replace(tmp, path)
        return path


def default_catalog_dir() -> Path:
    """``models.paths.user_data_dir()/catalog``."""
    from models.paths import user_data_dir

    return user_data_dir() / "catalog"


class XASCatalog:
    """A Tiled catalog of XAS runs and the RunEngine callback that fills it.

    Use ``RE.subscribe(catalog)`` (and ``RE.preprocessors.append(catalog.checked)`` so that a
    storage failure fails the plan); read runs with ``catalog[uid]`` (a bluesky-tiled-plugins
    ``BlueskyRun``) or ``catalog.client``.

    Parameters
    ----------
    client : tiled.client container
        Where runs are read (and, without ``connect``, written).
    uri : str
        For messages (no api key in it).
    server : endstation.catalog_server.LocalServer, optional
        The local server, when this is the local catalog.
    connect : callable, optional
        ``connect() -> (client, server)``: a new connection for the writer thread, and again after
        the local server was lost (default: ``client`` for both).
    cache : DocumentCache, optional
        In-memory copy of the documents (default: a new one).
    batch_size : int
        Events per write (1: every event written when it comes).
    stop_timeout_s : float
        How long a run's stop document waits for the run to be written before the RunEngine
        carries on (the writes go on, and a failure is still recorded and reported).
    """

    def __init__(self, client: Any, *, uri: str = "", server: Any = None,
                 connect: Callable[[], tuple[Any, Any]] | None = None,
                 cache: DocumentCache | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 stop_timeout_s: float = 300.0) -> None:
        # zarr warns, for every string array written, that its string dtype has no V3 specification
        # yet: nothing a user can act on, printed into the live table.
        warnings.filterwarnings("ignore", message=r"The data type .* does not have a Zarr V3 specification")
        self.client = client
        self.uri = uri
        self.server = server
        self.cache = cache if cache is not None else DocumentCache()
        self.stop_timeout_s = float(stop_timeout_s)
        self._batch_size = int(batch_size)
        self._connect = connect
        self._lock = threading.Lock()
        self.failures: list[StorageFailure] = []
        self._failed_runs: dict[str, StorageFailure] = {}
        self._run_order: list[str] = []
        self._callback_s = 0.0
        self._write_s = 0.0
        self._n_documents = 0
        # writer-thread state
        self._writer: Any = None
        self._write_client: Any = None
        self._lost = False
        self._event_uids: dict[str, dict[str, list[str]]] = {}
        self._children: dict[str, dict[str, str]] = {}
        self._finished: set[str] = set()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._write_loop, name="xas-catalog-writer", daemon=True)
        self._thread.start()
        _open_catalogs.add(self)

    # ------------------------------------------------------------------ callback (RunEngine thread)
    def __call__(self, name: str, doc: dict) -> None:
        t0 = time.perf_counter()
        self.cache(name, doc)
        run_uid = self.cache._run_of(name, doc)
        if name == "start":
            self._run_order.append(doc["uid"])
        with self._lock:
            self._pending += 1
        self._queue.put((name, doc, run_uid))
        self._callback_s += time.perf_counter() - t0
        if name == "stop":  # the run is complete in storage (or its failure recorded) when RE returns
            if not self.flush(self.stop_timeout_s):
                logger.warning("storage: run %s is still being written to %s after %.0f s; the RunEngine "
                               "carries on, the writes go on", run_uid, self.uri or "<client>", self.stop_timeout_s)
            self._callback_s += 0.0

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document received so far is written (or failed); ``False`` on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _flush_future(self) -> Any:
        """An asyncio future (of the running loop) set once the documents received so far are written."""
        import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done() -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

        with self._lock:
            self._pending += 1
        self._queue.put((_FLUSH, done, None))
        return future

    # ------------------------------------------------------------------ writer thread
    def _write_loop(self) -> None:
        while True:
            name, doc, run_uid = self._queue.get()
            try:
                if name is _FLUSH:
                    doc()
                else:
                    t0 = time.perf_counter()
                    self._write(name, doc, run_uid)
                    self._write_s += time.perf_counter() - t0
                    self._n_documents += 1
            except Exception:  # pragma: no cover - _write records its own failures
                logger.exception("storage: unexpected error in the catalog writer")
            finally:
                with self._idle:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.notify_all()

    def _ensure_writer(self) -> None:
        if self._writer is not None and not self._lost:
            return
        from bluesky_tiled_plugins import TiledWriter

        if self._connect is not None:
            client, _ = self._connect()
            if self._lost:  # the local server was lost: readers join the new one too
                self.client, self.server = self._connect()
        else:
            client = self.client
        self._write_client = client
        self._writer = TiledWriter(client, batch_size=self._batch_size)
        self._lost = False

    def _write(self, name: str, doc: dict, run_uid: str | None) -> None:
        if run_uid is not None and run_uid in self._failed_runs:
            return
        try:
            if name == "start":
                self._event_uids[run_uid] = {}
            elif name == "event":
                self._event_uids.setdefault(run_uid, {}).setdefault(doc["descriptor"], []).append(doc["uid"])
            elif name == "event_page":
                self._event_uids.setdefault(run_uid, {}).setdefault(doc["descriptor"], []).extend(doc["uid"])
            if name == "start" and self.server is not None and self._writer is not None and not self._lost:
                self._lost = not self.server.answers()  # restarted between runs? join the new one
            if self._writer is None or (self._lost and name == "start"):
                self._ensure_writer()
            self._writer(name, doc)
            if name == "start" and doc.get("parent_uid") and doc.get("purpose"):
                self._link(doc["parent_uid"], doc["purpose"], doc["uid"])
            if name == "stop" and run_uid is not None:
                md = {"event_uids": self._event_uids.pop(run_uid, {})}
                if run_uid in self._children:
                    md["analysis_runs"] = dict(self._children[run_uid])
                self._write_client[run_uid].update_metadata(md)
                self._finished.add(run_uid)
        except Exception as exc:  # storage must never stop the experiment
            self._fail(run_uid, name, exc)

    def _link(self, parent: str, purpose: str, uid: str) -> None:
        """Name analysis run ``uid`` in its parent's metadata (now, if the parent is already stored)."""
        self._children.setdefault(parent, {})[purpose] = uid
        if parent in self._finished and parent not in self._failed_runs:
            try:
                self._write_client[parent].update_metadata({"analysis_runs": dict(self._children[parent])})
            except Exception as exc:
                self._fail(parent, "metadata", exc)

    def _fail(self, run_uid: str | None, name: str, exc: BaseException) -> None:
        import httpx

        failure = StorageFailure(run_uid, name, f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.failures.append(failure)
            if run_uid is not None:
                self._failed_runs.setdefault(run_uid, failure)
        if isinstance(exc, httpx.TransportError) and self.server is not None:
            self._lost = True  # the local server is gone: the next run starts or joins a new one
        logger.error(
            "storage failure: could not write the %r document of run %s to Tiled at %s (%s); "
            "the run is kept in memory: XASCatalog.retry(%r) or .export(%r, path)",
            name, run_uid, self.uri or "<client>", failure.error, run_uid, run_uid,
        )

    # ------------------------------------------------------------------ the plan's view
    def checked(self, plan: Any) -> Any:
        """``plan``, with its runs checked in storage (a RunEngine preprocessor).

        Before each ``close_run`` the documents so far are written (waiting without blocking the
        RunEngine); if any of the run's documents could not be written, the run closes with
        ``exit_status="fail"`` and a reason naming the failure. Once the plan is done, if any run
        it opened, or any run stored meanwhile (the ranking run of an adaptive scan), is not
        completely stored, it raises :class:`StorageError` naming the runs and how to save them;
        the queue server then reports the plan as failed. The runs stay in :attr:`cache`.
        """
        from bluesky import plan_stubs as bps
        from bluesky import preprocessors as bpp
        from bluesky.run_engine import WaitForTimeoutError

        first = len(self._run_order)
        open_runs: dict[Any, str] = {}

        def opened(msg):
            uid = yield msg
            open_runs[msg.run] = uid
            return uid

        def closing(msg):
            try:
                yield from bps.wait_for([self._flush_future], timeout=self.stop_timeout_s)
            except WaitForTimeoutError:
                logger.warning("storage: the run is still being written when it closes")
            uid = open_runs.pop(msg.run, None)
            failure = self._failed_runs.get(uid) if uid is not None else None
            if failure is not None:
                reason = f"storage failure: the {failure.document!r} document was not written ({failure.error})"
                kwargs = dict(msg.kwargs)
                if kwargs.get("reason"):
                    reason = f"{kwargs['reason']}; {reason}"
                kwargs["exit_status"] = "fail" if kwargs.get("exit_status") in (None, "success") else kwargs["exit_status"]
                kwargs["reason"] = reason
                msg = msg._replace(kwargs=kwargs)
            return (yield msg)

        def route(msg):
            if msg.command == "open_run":
                return opened(msg), None
            if msg.command == "close_run":
                return closing(msg), None
            return None, None

        result = yield from bpp.plan_mutator(plan, route)
        unstored = [uid for uid in self._run_order[first:] if uid in self._failed_runs]
        if unstored:
            details = "; ".join(f"{uid}: {self._failed_runs[uid].document!r} document: {self._failed_runs[uid].error}"
                                for uid in unstored)
            raise StorageError(
                f"{len(unstored)} run(s) not stored in {self.uri or 'the catalog'} ({details}); the documents are "
                f"kept in memory: catalog.retry(uid) or catalog.export(uid, path)", unstored)
        return result

    # ------------------------------------------------------------------ measures and failures
    @property
    def write_stats(self) -> dict[str, float]:
        """What storage costs: ``documents`` written, ``callback_s`` (time the RunEngine's thread
        spent in this callback, stop documents' wait excluded), ``write_s`` (time the writer
        thread spent writing) and both per document in milliseconds (``callback_ms_per_document``,
        ``write_ms_per_document``)."""
        n = max(self._n_documents, 1)
        return {
            "documents": self._n_documents,
            "batch_size": self._batch_size,
            "callback_s": self._callback_s,
            "write_s": self._write_s,
            "callback_ms_per_document": 1e3 * self._callback_s / n,
            "write_ms_per_document": 1e3 * self._write_s / n,
        }

    @property
    def failure_count(self) -> int:
        return len(self.failures)

    @property
    def failed_runs(self) -> list[str]:
        """Runs not (completely) stored; their documents are in :attr:`cache`."""
        self.flush(self.stop_timeout_s)
        return sorted(self._failed_runs)

    # ------------------------------------------------------------------ recovery
    def retry(self, uid: str) -> None:
        """Write run ``uid`` again from the in-memory cache (removing a partial copy first)."""
        from bluesky_tiled_plugins import TiledWriter

        self.flush(self.stop_timeout_s)
        docs = self.cache.documents(uid)
        if self._lost or self._writer is None:
            self._ensure_writer()
        client = self._write_client
        try:
            if uid in client:
                client[uid].delete(recursive=True, external_only=False)
        except Exception as exc:
            raise CatalogError(f"cannot remove the partial copy of run {uid} at {self.uri}: {exc}") from exc
        writer = TiledWriter(client, batch_size=max(self._batch_size, len(docs)))
        event_uids: dict[str, list[str]] = {}
        for name, doc in docs:
            if name == "event":
                event_uids.setdefault(doc["descriptor"], []).append(doc["uid"])
            elif name == "event_page":
                event_uids.setdefault(doc["descriptor"], []).extend(doc["uid"])
            writer(name, doc)
        md: dict[str, Any] = {"event_uids": event_uids}
        if uid in self._children:
            md["analysis_runs"] = dict(self._children[uid])
        client[uid].update_metadata(md)
        with self._lock:
            self._failed_runs.pop(uid, None)
        self._finished.add(uid)

    def export(self, uid: str, path: str | os.PathLike) -> Path:
        """JSON-lines copy of run ``uid`` from the in-memory cache."""
        return self.cache.export(uid, path)

    # ------------------------------------------------------------------ reading
    def __getitem__(self, uid: str) -> Any:
        """The stored run ``uid`` in its v3 view (``run["primary"]["I0"]``), also after databroker's v1
        API has switched the process's Tiled clients to v2 views."""
        self.flush(self.stop_timeout_s)
        run = self.client[uid]
        return getattr(run, "v3", run)

    @property
    def scans(self) -> Any:
        """The catalog without analysis runs (no ``purpose`` in the start document): for
        ``databroker.Broker(catalog.scans)[-1]``, the newest scan, not its ranking run."""
        from tiled.queries import KeyPresent

        self.flush(self.stop_timeout_s)
        return self.client.search(KeyPresent("start.purpose", exists=False))

    def __contains__(self, uid: object) -> bool:
        self.flush(self.stop_timeout_s)
        return uid in self.client

    def __len__(self) -> int:
        self.flush(self.stop_timeout_s)
        return len(self.client)

    def close(self, timeout: float | None = 60.0) -> None:
        """Write what is pending and forget this catalog (a local server keeps serving its other
        clients, and stops by itself once none is left)."""
        self.flush(timeout)
        _open_catalogs.discard(self)
        self.client = None


_open_catalogs: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for catalog in list(_open_catalogs):
        if not catalog.flush(30.0):
            logger.error("storage: %s still had documents to write at exit", catalog.uri)


def _probe(uri: str, api_key: str | None, timeout: float) -> None:
    import httpx

    headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
    try:
        response = httpx.get(uri, headers=headers, timeout=timeout, follow_redirects=True, trust_env=False)
    except httpx.HTTPError as exc:
        raise CatalogError(
            f"cannot reach the Tiled server at {uri!r} ({type(exc).__name__}: {exc}); "
            f"check {URI_ENV} or unset it to use the local catalog"
        ) from exc
    if response.status_code == 401 or response.status_code == 403:
        raise CatalogError(f"the Tiled server at {uri!r} refused the api key (HTTP {response.status_code}); set {API_KEY_ENV}")
    if response.status_code >= 400:
        raise CatalogError(f"the Tiled server at {uri!r} answered HTTP {response.status_code}")


def _is_url(text: str) -> bool:
    return "://" in text


def open_catalog(
    uri: str | os.PathLike | None = None,
    *,
    api_key: str | None = None,
    directory: str | os.PathLike | None = None,
    timeout: float = 10.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    create: bool = True,
) -> XASCatalog:
    """Open the catalog runs are written to.

    Parameters
    ----------
    uri : str or path-like, optional
        A Tiled server (e.g. ``https://tiled.facility.gov/api/v1/metadata/xas/raw``) or a local
        catalog folder; default ``$XAS_TILED_URI``; with neither, the local catalog.
    api_key : str, optional
        For a Tiled server; default ``$XAS_TILED_API_KEY``. (The local catalog's key is read
        from the catalog folder.)
    directory : path-like, optional
        Local catalog folder; default ``models.paths.user_data_dir()/catalog``.
    timeout : float
        Seconds to wait for a remote server before :class:`CatalogError`.
    batch_size : int
        Events per write.
    create : bool
        Create the local catalog folder if there is none (False for readers: a mistyped folder
        is an error, not a new empty catalog).

    Raises
    ------
    CatalogError
        Naming the URI (unreachable, refused key) or the directory (none there, or its server
        cannot start).
    """
    from tiled.client import from_uri

    uri = uri or os.environ.get(URI_ENV) or None
    if uri is not None and not _is_url(str(uri)):
        directory, uri = uri, None
    if uri:
        uri = str(uri)
        api_key = api_key or os.environ.get(API_KEY_ENV) or None
        _probe(uri, api_key, timeout)

        def connect_remote() -> tuple[Any, Any]:
            return from_uri(uri, api_key=api_key), None

        try:
            client, _ = connect_remote()
        except Exception as exc:
            raise CatalogError(f"cannot open the Tiled catalog at {uri!r}: {exc}") from exc
        return XASCatalog(client, uri=uri, connect=connect_remote, batch_size=batch_size)

    from .catalog_server import ServerError, join_server

    folder = Path(directory) if directory is not None else default_catalog_dir()
    if not create and not (folder / "catalog.db").exists():
        raise CatalogError(f"there is no local catalog in {folder}")

    def connect_local() -> tuple[Any, Any]:
        try:
            server = join_server(folder)
        except ServerError as exc:
            raise CatalogError(str(exc)) from exc
        return from_uri(server.uri, api_key=server.api_key), server

    try:
        client, server = connect_local()
    except CatalogError:
        raise
    except Exception as exc:
        raise CatalogError(f"cannot connect to the local Tiled catalog in {folder}: {exc}") from exc
    return XASCatalog(client, uri=f"local catalog {server.directory}", server=server, connect=connect_local,
                      batch_size=batch_size)
