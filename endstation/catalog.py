"""Where runs are stored: a local Tiled catalog by default, a facility Tiled server on request.

* Default: a Tiled server on a background thread (``tiled.server.SimpleTiledServer``) over
  SQLite + files in ``models.paths.user_data_dir()/catalog`` -- persistent across sessions.
* ``XAS_TILED_URI`` (and ``XAS_TILED_API_KEY``) point at a facility's Tiled server instead.

Runs are written with ``bluesky_tiled_plugins.TiledWriter``.  :class:`XASCatalog` is the
RunEngine callback: every document first goes to a :class:`DocumentCache` (memory), then to
the writer.  A storage failure is logged and counted, never raised into the RunEngine, and the
run stays in memory so that :meth:`XASCatalog.retry` or :meth:`XASCatalog.export` can save it.
After a run's stop document the event uids are recorded in the run's metadata
(``event_uids``), so :func:`endstation.replay.replay` re-emits the very same documents.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.jsonable import json_default

__all__ = [
    "CatalogError",
    "DocumentCache",
    "StorageFailure",
    "XASCatalog",
    "open_catalog",
    "default_catalog_dir",
    "URI_ENV",
    "API_KEY_ENV",
]

logger = logging.getLogger(__name__)

URI_ENV = "XAS_TILED_URI"
API_KEY_ENV = "XAS_TILED_API_KEY"

# One local server per directory and process (starting one takes seconds).
_SERVERS: dict[Path, Any] = {}
_SERVERS_LOCK = threading.Lock()
# Tiled's app settings are a process-wide object that every SimpleTiledServer overwrites with its
# own key, so the servers of one process must share one key: with a key each, opening a second
# local catalog made the first one's new clients fail with "401 Invalid API key".
_LOCAL_API_KEY = secrets.token_hex(32)


class CatalogError(RuntimeError):
    """The catalog cannot be opened or reached; the message names the URI or directory."""


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

    Use ``RE.subscribe(catalog)``; read runs with ``catalog[uid]`` (a bluesky-tiled-plugins
    ``BlueskyRun``) or ``catalog.client``.

    Parameters
    ----------
    client : tiled.client container
        Where runs are written.
    uri : str
        For messages (no api key in it).
    server : SimpleTiledServer, optional
        The local server, when this process runs one.
    cache : DocumentCache, optional
        In-memory copy of the documents (default: a new one).
    batch_size : int
        Events per write (1: every event written when it comes, for live readers).
    """

    def __init__(self, client: Any, *, uri: str = "", server: Any = None,
                 cache: DocumentCache | None = None, batch_size: int = 1) -> None:
        from bluesky_tiled_plugins import TiledWriter

        # zarr warns, for every string array written, that its string dtype has no V3 specification
        # yet: nothing a user can act on, printed into the live table.
        warnings.filterwarnings("ignore", message=r"The data type .* does not have a Zarr V3 specification")
        self.client = client
        self.uri = uri
        self.server = server
        self.cache = cache if cache is not None else DocumentCache()
        self._batch_size = batch_size
        self._writer = TiledWriter(client, batch_size=batch_size)
        self.failures: list[StorageFailure] = []
        self._failed_runs: set[str] = set()
        self._event_uids: dict[str, dict[str, list[str]]] = {}
        self._descriptor_run: dict[str, str] = {}

    # ------------------------------------------------------------------ callback
    def __call__(self, name: str, doc: dict) -> None:
        self.cache(name, doc)
        run_uid = self.cache._run_of(name, doc)
        if run_uid is not None and run_uid in self._failed_runs:
            return
        self._note_uids(name, doc, run_uid)
        try:
            self._writer(name, doc)
            if name == "stop" and run_uid is not None:
                self._record_event_uids(run_uid)
        except Exception as exc:  # storage must never stop the experiment
            self._fail(run_uid, name, exc)

    def _note_uids(self, name: str, doc: dict, run_uid: str | None) -> None:
        if run_uid is None:
            return
        if name == "start":
            self._event_uids[run_uid] = {}
        elif name == "event":
            self._event_uids.setdefault(run_uid, {}).setdefault(doc["descriptor"], []).append(doc["uid"])
        elif name == "event_page":
            self._event_uids.setdefault(run_uid, {}).setdefault(doc["descriptor"], []).extend(doc["uid"])

    def _record_event_uids(self, run_uid: str) -> None:
        uids = self._event_uids.pop(run_uid, {})
        self.client[run_uid].update_metadata({"event_uids": uids})

    def _fail(self, run_uid: str | None, name: str, exc: BaseException) -> None:
        failure = StorageFailure(run_uid, name, f"{type(exc).__name__}: {exc}")
        self.failures.append(failure)
        if run_uid is not None:
            self._failed_runs.add(run_uid)
        logger.error(
            "storage failure: could not write the %r document of run %s to Tiled at %s (%s); "
            "the run is kept in memory: XASCatalog.retry(%r) or .export(%r, path)",
            name, run_uid, self.uri or "<client>", failure.error, run_uid, run_uid,
        )

    @property
    def failure_count(self) -> int:
        return len(self.failures)

    @property
    def failed_runs(self) -> list[str]:
        """Runs not (completely) stored; their documents are in :attr:`cache`."""
        return sorted(self._failed_runs)

    # ------------------------------------------------------------------ recovery
    def retry(self, uid: str) -> None:
        """Write run ``uid`` again from the in-memory cache (removing a partial copy first)."""
        docs = self.cache.documents(uid)
        try:
            if uid in self.client:
                self.client[uid].delete(recursive=True, external_only=False)
        except Exception as exc:
            raise CatalogError(f"cannot remove the partial copy of run {uid} at {self.uri}: {exc}") from exc
        from bluesky_tiled_plugins import TiledWriter

        writer = TiledWriter(self.client, batch_size=self._batch_size)
        self._failed_runs.discard(uid)
        self._event_uids.pop(uid, None)
        for name, doc in docs:
            self._note_uids(name, doc, uid)
            writer(name, doc)
        self._record_event_uids(uid)

    def export(self, uid: str, path: str | os.PathLike) -> Path:
        """JSON-lines copy of run ``uid`` from the in-memory cache."""
        return self.cache.export(uid, path)

    # ------------------------------------------------------------------ reading
    def __getitem__(self, uid: str) -> Any:
        return self.client[uid]

    def __contains__(self, uid: object) -> bool:
        return uid in self.client

    def __len__(self) -> int:
        return len(self.client)

    def close(self) -> None:
        """Forget this catalog; a local server keeps running for other users in the process."""
        self.client = None


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


def _close_at_exit(server: Any) -> None:
    """Stop the server's (non-daemon) thread when the interpreter exits."""

    def close() -> None:
        try:
            server.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass

    register = getattr(threading, "_register_atexit", None)  # runs before non-daemon joins
    if register is not None:
        register(close)
    else:  # pragma: no cover
        import atexit

        atexit.register(close)


def _local_server(directory: Path) -> Any:
    from tiled.server import SimpleTiledServer

    directory = directory.expanduser().resolve()
    with _SERVERS_LOCK:
        server = _SERVERS.get(directory)
        if server is None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                server = SimpleTiledServer(directory, api_key=_LOCAL_API_KEY)
            except Exception as exc:
                raise CatalogError(f"cannot start the local Tiled catalog in {directory}: {exc}") from exc
            _SERVERS[directory] = server
            _close_at_exit(server)
        return server


def open_catalog(
    uri: str | None = None,
    *,
    api_key: str | None = None,
    directory: str | os.PathLike | None = None,
    timeout: float = 10.0,
    batch_size: int = 1,
) -> XASCatalog:
    """Open the catalog runs are written to.

    Parameters
    ----------
    uri : str, optional
        A Tiled server (e.g. ``https://tiled.facility.gov/api/v1/metadata/xas/raw``); default
        ``$XAS_TILED_URI``; with neither, the local catalog.
    api_key : str, optional
        Default ``$XAS_TILED_API_KEY``.
    directory : path-like, optional
        Local catalog folder; default ``models.paths.user_data_dir()/catalog``.
    timeout : float
        Seconds to wait for a remote server before :class:`CatalogError`.
    batch_size : int
        Events per write.

    Raises
    ------
    CatalogError
        Naming the URI (unreachable, refused key) or the directory (cannot start).
    """
    from tiled.client import from_uri

    uri = uri or os.environ.get(URI_ENV) or None
    if uri:
        api_key = api_key or os.environ.get(API_KEY_ENV) or None
        _probe(uri, api_key, timeout)
        try:
            client = from_uri(uri, api_key=api_key)
        except Exception as exc:
            raise CatalogError(f"cannot open the Tiled catalog at {uri!r}: {exc}") from exc
        return XASCatalog(client, uri=uri, batch_size=batch_size)
    folder = Path(directory) if directory is not None else default_catalog_dir()
    server = _local_server(folder)
    try:
        client = from_uri(server.uri)
    except Exception as exc:
        raise CatalogError(f"cannot connect to the local Tiled catalog in {folder}: {exc}") from exc
    return XASCatalog(client, uri=f"local catalog {server.directory}", server=server, batch_size=batch_size)
