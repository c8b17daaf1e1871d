"""XDI 1.0 files: a strict reader and a writer for stored Bluesky XAS runs.

The reader accepts XDI 1.0 (and the ``#XDI/1.1`` variant of some beamlines), returns an
:class:`XDIData` and raises :class:`XDIError` naming the file and line of anything it cannot
read.  The writer turns a stored run (Tiled run, list of documents or
:class:`endstation.catalog.DocumentCache` entry) into an XDI 1.0 file readable by larch's
``read_xdi``; it writes to a temporary file and renames it, so nothing half-written is left.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .modes import MODE_ROLES, XDI_LABELS, mu_from_counts

__all__ = ["XDIData", "XDIError", "read_xdi", "write_xdi"]

_VERSION = re.compile(r"^#\s*XDI/(\d+\.\d+)", re.IGNORECASE)
_FIELD = re.compile(r"^#\s*([A-Za-z_][\w]*)\.([\w]+)\s*:\s*(.*?)\s*$")


class XDIError(ValueError):
    """An XDI file that cannot be read; the message names the file and line."""


@dataclass
class XDIData:
    """The content of an XDI file.

    Attributes
    ----------
    path : str
        The file read.
    version : str
        XDI version of the first line, e.g. ``"1.0"``.
    columns : dict of str -> numpy.ndarray
        Data columns by (lower-case) label, in file order.
    metadata : dict of str -> dict of str -> str
        Header fields by family and key, e.g. ``metadata["Element"]["symbol"] == "Cu"``.
    labels : list of str
        Column labels in file order.
    units : dict of str -> str
        Units given in the ``Column.N`` fields, where given.
    comments : str
        Free-text comment lines between ``///`` and the ``---`` line.
    """

    path: str
    version: str
    columns: dict[str, np.ndarray]
    metadata: dict[str, dict[str, str]]
    labels: list[str]
    units: dict[str, str] = field(default_factory=dict)
    comments: str = ""

    @property
    def energy(self) -> np.ndarray:
        """The first column (energy by XDI convention)."""
        return self.columns[self.labels[0]]

    @property
    def element(self) -> str | None:
        return self.metadata.get("Element", {}).get("symbol")

    @property
    def edge(self) -> str | None:
        return self.metadata.get("Element", {}).get("edge")

    def mu_transmission(self) -> np.ndarray:
        """``ln(i0 / itrans)`` from the raw columns (``mutrans`` where no raw columns)."""
        if "i0" in self.columns and "itrans" in self.columns:
            return _log_ratio(self.columns["i0"], self.columns["itrans"], "transmission", self.path)
        if "mutrans" in self.columns:
            return self.columns["mutrans"]
        raise XDIError(f"{self.path}: no i0 and itrans (or mutrans) columns; has {self.labels}")

    def mu_reference(self) -> np.ndarray | None:
        """``ln(itrans / irefer)`` of the reference foil, or None without an ``irefer`` column."""
        if "itrans" in self.columns and "irefer" in self.columns:
            return _log_ratio(self.columns["itrans"], self.columns["irefer"], "reference", self.path)
        if "murefer" in self.columns:
            return self.columns["murefer"]
        return None


def _log_ratio(num: np.ndarray, den: np.ndarray, mode: str, path: str) -> np.ndarray:
    """mu of ``mode`` from two raw columns; a non-positive count is an error naming its row."""
    first, second = MODE_ROLES[mode]
    mu, _, bad = mu_from_counts(mode, **{_ARG[first]: num, _ARG[second]: den})
    if bad.any():
        labels = f"{XDI_LABELS[first]}/{XDI_LABELS[second]}"
        raise XDIError(f"{path}: {labels} is not positive at data row {int(np.flatnonzero(bad)[0]) + 1}")
    return mu


_ARG = {"i0": "i0", "it": "it", "ir": "ir", "if": "if_"}


def read_xdi(path: str | os.PathLike) -> XDIData:
    """Read an XDI file.

    Parameters
    ----------
    path : path-like
        The file.

    Returns
    -------
    XDIData

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    XDIError
        A ``ValueError`` naming the file, the line number and the problem (no XDI version line,
        a data value that is not a number, a row with the wrong number of columns, no data).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", errors="strict") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as exc:
        raise XDIError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    if not lines:
        raise XDIError(f"{path}, line 1: empty file, expected '# XDI/1.0'")
    match = _VERSION.match(lines[0])
    if match is None:
        raise XDIError(f"{path}, line 1: expected an XDI version line '# XDI/1.0', got {lines[0][:60]!r}")
    version = match.group(1)
    metadata: dict[str, dict[str, str]] = {}
    columns_named: dict[int, tuple[str, str]] = {}
    comments: list[str] = []
    in_comments = False
    label_line: list[str] | None = None
    rows: list[list[float]] = []
    row_lines: list[int] = []
    after_dashes = False
    for number, line in enumerate(lines[1:], start=2):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if rows:
                raise XDIError(f"{path}, line {number}: header line after the data started: {stripped[:60]!r}")
            body = stripped[1:].strip()
            if body.startswith("///"):
                in_comments = True
                continue
            if body.startswith("---"):
                in_comments = False
                after_dashes = True
                continue
            if after_dashes:
                label_line = body.split()
                continue
            if in_comments:
                comments.append(body)
                continue
            field_match = _FIELD.match(stripped)
            if field_match is None:
                if body:
                    comments.append(body)
                continue
            family, key, value = field_match.groups()
            if family.lower() == "column":
                try:
                    index = int(key)
                except ValueError:
                    raise XDIError(f"{path}, line {number}: column field {family}.{key} is not numbered") from None
                parts = value.split()
                if not parts:
                    raise XDIError(f"{path}, line {number}: Column.{index} has no label")
                columns_named[index] = (parts[0].lower(), " ".join(parts[1:]))
            metadata.setdefault(family, {})[key] = value
            continue
        try:
            values = [float(token) for token in stripped.split()]
        except ValueError:
            bad = next(t for t in stripped.split() if not _is_float(t))
            raise XDIError(f"{path}, line {number}: data value {bad!r} is not a number") from None
        if rows and len(values) != len(rows[0]):
            raise XDIError(
                f"{path}, line {number}: {len(values)} values but the first data row "
                f"(line {row_lines[0]}) has {len(rows[0])}"
            )
        rows.append(values)
        row_lines.append(number)
    if not rows:
        raise XDIError(f"{path}, line {len(lines)}: no data rows")
    data = np.asarray(rows, dtype=float)
    ncol = data.shape[1]
    labels: list[str] = []
    units: dict[str, str] = {}
    for index in range(1, ncol + 1):
        if index in columns_named:
            name, unit = columns_named[index]
        elif label_line is not None and len(label_line) == ncol:
            name, unit = label_line[index - 1].lower(), ""
        else:
            name, unit = f"col{index}", ""
        if name in labels:
            name = f"{name}_{index}"
        labels.append(name)
        if unit:
            units[name] = unit
    extra = sorted(i for i in columns_named if i > ncol)
    if extra:
        raise XDIError(f"{path}: header names Column.{extra[0]} but the data rows have {ncol} columns")
    columns = {name: data[:, i].copy() for i, name in enumerate(labels)}
    return XDIData(
        path=path,
        version=version,
        columns=columns,
        metadata=metadata,
        labels=labels,
        units=units,
        comments="\n".join(comments),
    )


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- writing


def _flatten_xdi(block: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for family, entries in block.items():
        if isinstance(entries, Mapping):
            for key, value in entries.items():
                if isinstance(value, Mapping):
                    for sub, subvalue in value.items():
                        out.append((str(family), f"{key}_{sub}", str(subvalue)))
                else:
                    out.append((str(family), str(key), str(value)))
        else:
            out.append(("Scan", str(family), str(entries)))
    return out


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(float(timestamp), tz=datetime.timezone.utc).isoformat(
        timespec="seconds"
    )


def write_xdi(run: Any, path: str | os.PathLike, *, stream: str = "primary") -> Path:
    """Write a stored XAS run as an XDI 1.0 file.

    Parameters
    ----------
    run : tiled BlueskyRun, sequence of (name, doc), or object with ``documents()``
        The run; its start document must hold the ``xas`` block (``energy_field``,
        ``detectors`` role -> data key) of docs/architecture.md.
    path : path-like
        Output file; written to a temporary file beside it and renamed when complete.
    stream : str
        Event stream holding the scan points (default ``"primary"``).

    Returns
    -------
    pathlib.Path
        The path written.

    Notes
    -----
    Columns: ``energy`` (eV), then ``i0``, ``itrans``, ``irefer``, ``ifluor`` for each detector
    role present, then ``mutrans = ln(i0/itrans)`` and/or ``mufluor = ifluor/i0``.  Header: the
    start document's ``XDI`` block, ``Element``/``Scan.edge_energy`` from its ``xas`` block,
    ``Scan.start_time``/``end_time`` and ``Bluesky.uid``/``plan_name``/``exit_status``.
    """
    from .replay import run_documents

    docs = run_documents(run)
    start = next((d for n, d in docs if n == "start"), None)
    if start is None:
        raise ValueError("write_xdi: the run has no start document")
    stop = next((d for n, d in docs if n == "stop"), None)
    xas = start.get("xas")
    if not isinstance(xas, Mapping):
        raise ValueError(f"write_xdi: run {start.get('uid')} has no 'xas' block in its start document")
    energy_key = xas.get("energy_field", "energy")
    roles: Mapping[str, str] = xas.get("detectors", {})
    descriptors = {d["uid"]: d for n, d in docs if n == "descriptor" and d.get("name") == stream}
    events = []
    for name, doc in docs:
        if name == "event" and doc["descriptor"] in descriptors:
            events.append(doc)
        elif name == "event_page" and doc["descriptor"] in descriptors:
            from event_model import unpack_event_page

            events.extend(unpack_event_page(doc))
    if not events:
        raise ValueError(f"write_xdi: run {start.get('uid')} has no events in stream {stream!r}")
    events.sort(key=lambda e: e["seq_num"])
    missing = [key for key in [energy_key, *roles.values()] if key not in events[0]["data"]]
    if missing:
        raise ValueError(
            f"write_xdi: run {start.get('uid')}: data keys {missing} named in the 'xas' block are not "
            f"in stream {stream!r} (has {sorted(events[0]['data'])})"
        )
    columns: list[tuple[str, str, np.ndarray]] = [
        ("energy", "eV", np.array([e["data"][energy_key] for e in events], dtype=float))
    ]
    values: dict[str, np.ndarray] = {}
    for role in ("i0", "it", "ir", "if"):
        if role in roles:
            arr = np.array([e["data"][roles[role]] for e in events], dtype=float)
            values[role] = arr
            columns.append((XDI_LABELS[role], "", arr))
    with np.errstate(divide="ignore", invalid="ignore"):
        if "i0" in values and "it" in values:
            columns.append(("mutrans", "", np.log(values["i0"] / values["it"])))
        if "i0" in values and "if" in values:
            columns.append(("mufluor", "", values["if"] / values["i0"]))
    header = ["# XDI/1.0 steered-xas/0.1"]
    for index, (label, unit, _) in enumerate(columns, start=1):
        header.append(f"# Column.{index}: {label}{(' ' + unit) if unit else ''}")
    fields = _flatten_xdi(start.get("XDI", {}))
    seen = {(f, k) for f, k, _ in fields}

    def add(family: str, key: str, value: Any) -> None:
        if value is not None and (family, key) not in seen:
            fields.append((family, key, str(value)))
            seen.add((family, key))

    add("Element", "symbol", xas.get("element"))
    add("Element", "edge", xas.get("edge"))
    add("Scan", "edge_energy", xas.get("e0"))
    add("Scan", "start_time", _iso(start.get("time")))
    add("Scan", "end_time", _iso(stop.get("time")) if stop else None)
    add("Bluesky", "uid", start.get("uid"))
    add("Bluesky", "plan_name", start.get("plan_name"))
    add("Bluesky", "exit_status", stop.get("exit_status") if stop else "unfinished")
    for family, key, value in fields:
        value = " ".join(value.split())  # one line per field
        header.append(f"# {family}.{key}: {value}")
    header.append("# ///")
    header.append(f"# exported by steered-xas from Bluesky run {start.get('uid')}")
    header.append("#" + "-" * 40)
    header.append("# " + "  ".join(label for label, _, _ in columns))
    table = np.column_stack([c for _, _, c in columns])
    body = []
    for row in table:
        body.append("  ".join(_fmt(v) for v in row))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(header + body) + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "nan"
    return f"{value:.10g}"
