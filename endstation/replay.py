"""Replay a stored run: re-emit its documents, in order, to callbacks; ``xas-replay`` CLI.

The documents are rebuilt from the Tiled catalog on the client side (start and stop from the
run's metadata, descriptors with ``bluesky_tiled_plugins.exporters.build_descriptor_docs``,
events from the stream's table), so this works against any Tiled server, including one that
does not offer the JSON-seq export.  Event uids come from the run's ``event_uids`` metadata
written by :class:`endstation.catalog.XASCatalog`; runs written by another writer get the
exporter's synthetic ``event-<descriptor>-<seq_num>`` uids.

Content equals the live documents after a JSON round trip (tuples become lists).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from models.jsonable import to_jsonable

__all__ = ["replay", "run_documents", "normalize_documents"]

Document = tuple[str, dict]


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_to_builtin(v) for v in value]
    return value


def _documents_from_tiled(run: Any) -> list[Document]:
    from bluesky_tiled_plugins.exporters import build_descriptor_docs

    # The v3 view has the event tables this reads. databroker's v1 API switches the clients of
    # the whole process to the v2 view once used, so ask for v3 whichever the client gives.
    run = getattr(run, "v3", run)
    metadata = run.metadata
    start = to_jsonable(dict(metadata["start"]), nan_as_none=False)
    stop = metadata.get("stop")
    event_uids = metadata.get("event_uids") or {}
    timed: list[tuple[float, int, str, dict]] = []
    for stream in list(run):
        node = run[stream]
        descriptors = build_descriptor_docs(to_jsonable(dict(node.metadata), nan_as_none=False), stream, start["uid"])
        for desc in descriptors:
            timed.append((float(desc["time"]), 0, "descriptor", desc))
        base = getattr(node, "base", node)
        if "internal" not in base:
            continue
        table = base["internal"].read()
        keys = [k for k in table.columns if k not in ("seq_num", "time") and not k.startswith("ts_")]
        for row in table.to_dict(orient="records"):
            seq_num = int(row["seq_num"])
            row_time = float(row["time"])
            desc_uid = descriptors[0]["uid"]
            for later in descriptors[1:]:
                if later["time"] <= row_time:
                    desc_uid = later["uid"]
            uids = event_uids.get(desc_uid)
            uid = uids[seq_num - 1] if uids and seq_num - 1 < len(uids) else f"event-{desc_uid}-{seq_num}"
            event = {
                "uid": uid,
                "time": row_time,
                "data": {k: _to_builtin(row[k]) for k in keys},
                "timestamps": {k: float(row[f"ts_{k}"]) for k in keys if f"ts_{k}" in row},
                "seq_num": seq_num,
                "filled": {},
                "descriptor": desc_uid,
            }
            timed.append((row_time, 1, "event", event))
    timed.sort(key=lambda item: (item[0], item[1]))
    docs: list[Document] = [("start", start)]
    docs.extend((name, doc) for _, _, name, doc in timed)
    if stop is not None:
        docs.append(("stop", to_jsonable(dict(stop), nan_as_none=False)))
    return docs


def run_documents(run: Any) -> list[Document]:
    """The documents of ``run`` in emission order.

    Parameters
    ----------
    run : tiled BlueskyRun, sequence of (name, doc), or object with ``documents()``
        A stored run.
    """
    if isinstance(run, (list, tuple)):
        return [(name, doc) for name, doc in run]
    if hasattr(run, "metadata") and "start" in getattr(run, "metadata", {}):
        return _documents_from_tiled(run)
    if hasattr(run, "documents"):
        return [(name, doc) for name, doc in run.documents()]
    raise TypeError(f"cannot get documents from a {type(run).__name__}")


def normalize_documents(docs: Iterable[Document]) -> list[Document]:
    """Documents in comparable form: event pages unpacked into events, JSON round trip.

    Two streams of documents with equal normalised forms carry the same uids, data,
    timestamps and metadata, whatever their event/event_page packing.
    """
    from event_model import unpack_event_page

    out: list[Document] = []
    for name, doc in docs:
        if name == "event_page":
            out.extend(("event", to_jsonable(event, nan_as_none=False)) for event in unpack_event_page(doc))
        else:
            out.append((name, to_jsonable(doc, nan_as_none=False)))
    for _, doc in out:
        if "filled" in doc and not doc["filled"]:
            del doc["filled"]
    return out


def _resolve(run_or_uid: Any, catalog: Any) -> Any:
    if not isinstance(run_or_uid, str):
        return run_or_uid
    from .catalog import XASCatalog, open_catalog

    if catalog is None or isinstance(catalog, str):
        catalog = open_catalog(catalog)
    client = catalog.client if isinstance(catalog, XASCatalog) else catalog
    if isinstance(catalog, XASCatalog) and run_or_uid in catalog.cache:
        # Prefer the copy in storage; fall back to memory where storage failed.
        if run_or_uid in catalog.failed_runs:
            return catalog.cache.documents(run_or_uid)
    try:
        return client[run_or_uid]
    except KeyError:
        where = getattr(catalog, "uri", None) or getattr(client, "uri", "the catalog")
        raise KeyError(f"run {run_or_uid!r} is not in {where}") from None


def replay(
    run_or_uid: Any,
    callbacks: Callable[[str, dict], Any] | Sequence[Callable[[str, dict], Any]],
    catalog: Any = None,
    *,
    as_pages: bool = False,
    validate: bool = True,
) -> list[Document]:
    """Re-emit a stored run's documents, in order, to ``callbacks``.

    Parameters
    ----------
    run_or_uid : str, tiled BlueskyRun or sequence of (name, doc)
        The run, or its uid in ``catalog``.
    callbacks : callable or list of callables
        Each called as ``callback(name, doc)`` for every document.
    catalog : XASCatalog, tiled client or URI, optional
        Where to look a uid up; default :func:`endstation.catalog.open_catalog`.
    as_pages : bool
        Emit each descriptor's events as one ``event_page`` instead of ``event`` documents.
    validate : bool
        Check every document against event-model's JSON schemas before emitting anything.

    Returns
    -------
    list of (name, doc)
        The documents emitted.
    """
    from event_model import DocumentNames, pack_event_page, schema_validators

    run = _resolve(run_or_uid, catalog)
    docs = run_documents(run)
    if as_pages:
        paged: list[Document] = []
        pending: dict[str, list[dict]] = {}
        order: list[str] = []
        for name, doc in docs:
            if name == "event":
                if doc["descriptor"] not in pending:
                    pending[doc["descriptor"]] = []
                    order.append(doc["descriptor"])
                pending[doc["descriptor"]].append(doc)
            elif name == "stop":
                paged.extend(("event_page", pack_event_page(*pending[d])) for d in order)
                paged.append((name, doc))
            else:
                paged.append((name, doc))
        if not any(name == "stop" for name, _ in docs):
            paged.extend(("event_page", pack_event_page(*pending[d])) for d in order)
        docs = paged
    if validate:
        for name, doc in docs:
            schema_validators[DocumentNames[name]].validate(doc)
    if callable(callbacks):
        callbacks = [callbacks]
    for name, doc in docs:
        for callback in callbacks:
            callback(name, doc)
    return docs
