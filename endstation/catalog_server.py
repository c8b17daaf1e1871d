"""One local Tiled server process per catalog folder, which every process of the user joins.

The embedded catalog keeps its runs in SQLite, DuckDB and Zarr files that one process at a time may
open for writing: with a server inside each process (``tiled.server.SimpleTiledServer``), the queue
server's worker locked the catalog and ``xas-replay``, a notebook or a second IPython could not read
it. Here the first process that opens a catalog folder starts a server process for it
(``python -m endstation.catalog_server FOLDER``); every process, that one included, talks to it over
HTTP on the loopback interface, so one writes while others read.

Files in the catalog folder (the folder is made ``0700``; the server runs with umask ``077``, so
the databases, data files and logs it creates are ``0600``):

``server.json``
    ``{"uri", "api_key", "pid"}`` of the running server, written by the server once it answers.
    Its owner alone may read it, and it is the only place the key is written: clients send the
    key in the ``Authorization`` header, never in a URL, so the access log does not contain it.
``.server.lock``
    ``flock`` held while a process looks for, starts or stops the server (no two servers).
``clients/<pid>``
    One empty file per process that uses the server. The server exits once none of these processes
    has been alive for :data:`GRACE_S` seconds (and removes ``server.json``); the next process to
    open the catalog starts it again. A ``server.json`` whose server does not answer (killed,
    machine restarted) is stale: it is removed and a new server started.
``access.log``, ``error.log``, ``server.log``
    The server's request log, its error log, and its standard output and error.

The root of the catalog is a ``CatalogOfBlueskyRuns`` (spec version 3), so a Tiled client offers
``client[-1]`` and ``client.scan_id[...]``, and ``databroker.Broker(client)`` works; a stored run's
documents export as JSON-seq (``run.documents()``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LocalServer",
    "ServerError",
    "GRACE_S",
    "SERVER_FILE",
    "join_server",
    "stop_server",
    "private_folder",
    "serve",
    "main",
]

SERVER_FILE = "server.json"
LOCK_FILE = ".server.lock"
CLIENTS_DIR = "clients"
#: Seconds the server waits, once no client process is alive, before it exits.
GRACE_S = 30.0
#: Seconds a process waits for a server it started to answer (a cold start imports Tiled,
#: SQLAlchemy, DuckDB and Zarr: 4-8 s on the 2-core test machine).
START_TIMEOUT_S = 120.0


class ServerError(RuntimeError):
    """The local catalog server cannot be started or reached; the message names the folder."""


@dataclass(frozen=True)
class LocalServer:
    """A running local catalog server: where it listens and the key it wants (in a header)."""

    directory: Path
    uri: str
    api_key: str
    pid: int

    def answers(self, timeout: float = 10.0) -> bool:
        """Whether the server is alive and accepts the key."""
        return _answers({"uri": self.uri, "api_key": self.api_key, "pid": self.pid}, timeout)

    def __repr__(self) -> str:  # never show the key
        return f"LocalServer(directory={str(self.directory)!r}, uri={self.uri!r}, pid={self.pid})"


# --------------------------------------------------------------------------- shared helpers
def private_folder(directory: str | os.PathLike) -> Path:
    """Create ``directory`` (and its parents) if needed and make it ``0700``; return it resolved."""
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reuses the pid: not our client
        return False
    return True


def _read_server_file(directory: Path) -> dict | None:
    try:
        info = json.loads((directory / SERVER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not {"uri", "api_key", "pid"} <= set(info):
        return None
    return info


def _answers(info: dict, timeout: float = 5.0) -> bool:
    """Whether the server in ``info`` is alive and accepts its key (sent in a header)."""
    import httpx

    if not _alive(int(info["pid"])):
        return False
    try:
        response = httpx.get(f"{info['uri']}/metadata/", headers={"Authorization": f"Apikey {info['api_key']}"},
                             timeout=timeout, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _register_client(directory: Path, pid: int | None = None) -> None:
    clients = directory / CLIENTS_DIR
    clients.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(clients / str(pid or os.getpid()), os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)


def _live_clients(directory: Path) -> list[int]:
    """Pids of the registered clients still alive; the files of dead ones are removed."""
    live = []
    clients = directory / CLIENTS_DIR
    if not clients.is_dir():
        return live
    for entry in clients.iterdir():
        try:
            pid = int(entry.name)
        except ValueError:
            continue
        if _alive(pid):
            live.append(pid)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return live


# --------------------------------------------------------------------------- client side
def join_server(directory: str | os.PathLike, *, start_timeout_s: float = START_TIMEOUT_S) -> LocalServer:
    """The server of catalog folder ``directory``, started if none answers; this process is
    registered as one of its clients.

    Raises
    ------
    ServerError
        Naming the folder, when no server could be started (with the end of its log).
    """
    try:
        directory = private_folder(directory)
    except OSError as exc:
        raise ServerError(f"cannot create the catalog folder {directory}: {exc}") from exc
    with _locked(directory):
        info = _read_server_file(directory)
        if info is not None and not _answers(info):
            (directory / SERVER_FILE).unlink(missing_ok=True)  # stale: its server is gone
            info = None
        if info is None:
            info = _start(directory, start_timeout_s)
        _register_client(directory)
    return LocalServer(directory, info["uri"], info["api_key"], int(info["pid"]))


def _start(directory: Path, timeout_s: float) -> dict:
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    log_fd = os.open(directory / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "endstation.catalog_server", str(directory), "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=env, cwd=str(directory),
            start_new_session=True,  # a Ctrl-C in the session that started it does not stop it
        )
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"the local catalog server for {directory} exited (status {process.returncode}): "
                              f"{_log_tail(directory)}")
        info = _read_server_file(directory)
        if info is not None and int(info["pid"]) == process.pid:
            return info
        time.sleep(0.05)
    process.terminate()
    raise ServerError(f"the local catalog server for {directory} did not answer within {timeout_s:.0f} s: "
                      f"{_log_tail(directory)}")


def _log_tail(directory: Path, n: int = 2) -> str:
    try:
        lines = (directory / "server.log").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no log"
    lines = [line.strip() for line in lines if line.strip() and not set(line.strip()) <= set("^~ ")]
    return " | ".join(lines[-n:]) or "empty log"


def stop_server(directory: str | os.PathLike, *, timeout_s: float = 30.0) -> bool:
    """Stop the server of catalog folder ``directory``; ``True`` if one was running.

    Its clients lose it; the next :func:`join_server` starts a new one.
    """
    directory = Path(directory).expanduser().resolve()
    if not directory.is_dir():
        return False
    with _locked(directory):
        info = _read_server_file(directory)
        if info is None:
            return False
        pid = int(info["pid"])
        (directory / SERVER_FILE).unlink(missing_ok=True)
    if not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        time.sleep(0.05)
    return True


# --------------------------------------------------------------------------- server side
def _tighten(directory: Path) -> None:
    """Catalogs made before the folder was private: files at the top ``0600``, folders ``0700``."""
    for entry in directory.iterdir():
        with contextlib.suppress(OSError):
            os.chmod(entry, 0o700 if entry.is_dir() else 0o600)


def _log_config(directory: Path) -> dict:
    import copy

    from tiled.server.logging_config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for handler, filename in (("access", "access.log"), ("default", "error.log")):
        config["handlers"][handler]["class"] = "logging.FileHandler"
        config["handlers"][handler].pop("stream", None)
        config["handlers"][handler]["filename"] = str(directory / filename)
    for formatter in config["formatters"].values():
        formatter["use_colors"] = False
    return config


def _build_app(directory: Path, api_key: str):
    import copy

    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.config import Authentication, StreamingCacheConfig
    from tiled.media_type_registration import default_serialization_registry
    from tiled.server.app import build_app
    from tiled.utils import ensure_uri

    (directory / "data").mkdir(mode=0o700, exist_ok=True)
    catalog_db = directory / "catalog.db"
    tree = catalog_from_uri(
        catalog_db,
        writable_storage=[directory / "data", ensure_uri(f"duckdb:///{directory / 'storage.duckdb'}")],
        init_if_not_exists=not _initialised(catalog_db),
        specs=[{"name": "CatalogOfBlueskyRuns", "version": "3.0"}],
        cache_config=StreamingCacheConfig(uri="memory").model_dump(),
    )
    serializers = copy.deepcopy(default_serialization_registry)
    # The documents of a stored run (BlueskyRun.documents()); Tiled serves no JSON-seq without it (406).
    serializers.register("BlueskyRun", "application/json-seq", json_seq_exporter)
    return build_app(tree, authentication=Authentication(single_user_api_key=api_key),
                     serialization_registry=serializers)


def _initialised(catalog_db: Path) -> bool:
    """Create the catalog's tables in this process if it is new (Tiled would start a second Python,
    ``tiled catalog init``, for it: seconds); ``False`` if that failed and Tiled must do it."""
    if catalog_db.exists():
        return True
    try:
        from tiled.commandline._catalog import init

        init(str(catalog_db), if_not_exists=True)
    except Exception as exc:  # noqa: BLE001 -- Tiled's own way still works, only slower
        print(f"catalog_server: creating {catalog_db} in this process failed ({exc}); Tiled will", file=sys.stderr)
        return False
    return True


def serve(directory: str | os.PathLike, *, grace_s: float = GRACE_S, parent: int | None = None) -> None:
    """Run the server of catalog folder ``directory`` until no client is left (or SIGTERM).

    ``parent`` is registered as a client before the server answers, so that the process that
    started it is never left without it.
    """
    import httpx
    import uvicorn

    os.umask(0o077)
    directory = private_folder(directory)
    _tighten(directory)
    api_key = secrets.token_hex(32)
    if parent is not None:
        _register_client(directory, parent)
    app = _build_app(directory, api_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, loop="asyncio", log_config=_log_config(directory)))
    uri = f"http://127.0.0.1:{port}/api/v1"
    announced = threading.Event()

    def watch() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        with httpx.Client(trust_env=False) as http:
            while not server.should_exit:
                try:
                    if http.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        # No lock here: the process that started this server holds it while it waits for this file.
        _write_private(directory / SERVER_FILE, json.dumps({"uri": uri, "api_key": api_key, "pid": os.getpid()}))
        announced.set()
        alone_since = None
        while not server.should_exit:
            time.sleep(1.0)
            if _live_clients(directory):
                alone_since = None
                continue
            alone_since = alone_since or time.monotonic()
            if time.monotonic() - alone_since < grace_s:
                continue
            with _locked(directory):  # a client joining now waits, then finds no server file
                if _live_clients(directory):
                    alone_since = None
                    continue
                _forget(directory)
                server.should_exit = True

    watcher = threading.Thread(target=watch, name="catalog-clients", daemon=True)
    watcher.start()
    try:
        server.run(sockets=[sock])
    finally:
        server.should_exit = True
        if announced.is_set():
            with _locked(directory):
                _forget(directory)


def _forget(directory: Path) -> None:
    """Remove ``server.json`` if it names this process."""
    info = _read_server_file(directory)
    if info is not None and int(info["pid"]) == os.getpid():
        (directory / SERVER_FILE).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m endstation.catalog_server FOLDER [--grace-s S] [--parent PID]``."""
    parser = argparse.ArgumentParser(prog="python -m endstation.catalog_server",
                                     description="Serve one local XAS catalog folder to the processes of its owner.")
    parser.add_argument("directory")
    parser.add_argument("--grace-s", type=float, default=float(os.environ.get("XAS_CATALOG_GRACE_S", GRACE_S)),
                        help=f"seconds to stay up once no client is alive (default {GRACE_S:g})")
    parser.add_argument("--parent", type=int, help="pid of the process that starts the server (a client)")
    args = parser.parse_args(argv)
    serve(args.directory, grace_s=args.grace_s, parent=args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
