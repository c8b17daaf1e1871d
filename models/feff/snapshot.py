"""Snapshots of computed QM9 FEFF10 spectra into the project's ``data/`` folder (``xas-feff snapshot``).

The background batches (``xas-feff qm9 --start ...``) append one JSON line per molecule to a file
outside the repository. A snapshot copies what they have computed into the repository, so the data
outlast the machine that computed them:

* one gzip-compressed JSON-lines file, ``qm9_<El>_<edge>_feff10.jsonl.gz``, with the keys of the
  shared QM9 sets (``models.readers.read_qm9_jsonl`` reads it), one molecule a line;
* lines sorted by their position in the fixed QM9 order (:func:`models.feff.qm9.qm9_positions`),
  compact JSON and a gzip header without time stamp or file name, so the same lines always give
  the same bytes and a later snapshot only appends lines in the diff;
* a provenance ``README.md`` beside it (commands, cards, positions, counts, cost, versions).

A snapshot *merges*: lines already in the destination are kept (a re-snapshot from a machine that
lost the batch output removes nothing), a FEFF failure is replaced by a later success of the same
molecule, and the first success of a molecule wins over later duplicates.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

#: Largest total size of the project's ``data/`` folder a snapshot may leave, MB (10^6 bytes).
DATA_LIMIT_MB = 50.0
#: Keys of a line of the shared QM9 sets (a failure line has ``error`` instead of ``sites``).
LINE_KEYS = ("qm9_index", "smiles", "elements", "xyz_angstrom", "absorber", "edge", "sites", "seconds")


class SnapshotError(ValueError):
    """Input lines that cannot be snapshotted, or a snapshot over the size limit; the message says
    which file and line, or by how much."""


@dataclass
class SnapshotSummary:
    """What a snapshot wrote.

    Attributes
    ----------
    path, readme
        The JSON-lines file (``.jsonl.gz``) and its ``README.md``.
    absorber, edge
        Of every line.
    positions
        Positions in the fixed QM9 order of all lines (molecules and failures), increasing.
    n_molecules, n_sites, n_failures
        Molecules with spectra, their absorber sites, failure lines.
    median_seconds
        Median FEFF wall time per molecule with spectra (``None`` if none).
    added
        Lines new to the destination in this snapshot (including failures replaced by successes).
    sha256, bytes
        Of the written ``.jsonl.gz``.
    changed
        ``False`` when the file already held exactly these lines (nothing was rewritten).
    sources
        The input files read.
    """

    path: Path
    readme: Path
    absorber: str
    edge: str
    positions: list[int]
    n_molecules: int
    n_sites: int
    n_failures: int
    median_seconds: float | None
    added: int
    sha256: str
    bytes: int
    changed: bool
    sources: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        state = "written" if self.changed else "unchanged"
        return (f"{self.path}: {state}, {self.n_molecules} molecules ({self.n_sites} {self.absorber} sites), "
                f"{self.n_failures} failures, positions {format_positions(self.positions)}, "
                f"{self.added} new lines, {self.bytes / 1e6:.2f} MB")


def format_positions(positions: Sequence[int]) -> str:
    """``"989-1020, 1022-1100"`` for sorted integer positions (``"none"`` if empty)."""
    if not positions:
        return "none"
    runs, start, prev = [], positions[0], positions[0]
    for p in positions[1:]:
        if p != prev + 1:
            runs.append((start, prev))
            start = p
        prev = p
    runs.append((start, prev))
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def source_files(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """The JSON-lines files of ``sources``: a file itself, or a folder's ``*.jsonl``/``*.jsonl.gz``.

    Raises
    ------
    SnapshotError
        A source that does not exist, or a folder without JSON-lines files.
    """
    files: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            found = sorted(p for p in src.iterdir() if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz")))
            if not found:
                raise SnapshotError(f"{src}: folder holds no *.jsonl or *.jsonl.gz file")
            files.extend(found)
        elif src.is_file():
            files.append(src)
        else:
            raise SnapshotError(f"{src}: no such file or folder")
    return files


def iter_lines(path: Path) -> Iterator[tuple[str, dict]]:
    """``(file:line, document)`` for every non-blank line of a (gzip-compressed) JSON-lines file.

    A last line without its newline that is not valid JSON is a line still being written by a
    running batch and is left out; any other malformed line raises :class:`SnapshotError`.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    last = len(lines)  # after split, the text after the final newline ("" when complete)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == last:  # torn: the batch is appending this line right now
                continue
            raise SnapshotError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(doc, dict):
            raise SnapshotError(f"{where}: line is not a JSON object")
        yield where, doc


def _check_line(where: str, doc: dict) -> int:
    if doc.get("qm9_index") is None:
        raise SnapshotError(f"{where}: line has no qm9_index (not a `xas-feff qm9` line)")
    try:
        index = int(doc["qm9_index"])
    except (TypeError, ValueError):
        raise SnapshotError(f"{where}: qm9_index {doc['qm9_index']!r} is not an integer") from None
    if "error" not in doc:
        missing = [k for k in LINE_KEYS if k not in doc]
        if missing:
            raise SnapshotError(f"{where}: line lacks key(s) {', '.join(missing)}")
    return index


def merge_lines(docs: Iterable[tuple[str, dict]]) -> dict[int, tuple[str, dict]]:
    """One line per QM9 index: the first success, else the first failure.

    Parameters
    ----------
    docs
        ``(where, document)`` in priority order (the existing snapshot first).

    Returns
    -------
    dict
        ``{qm9_index: (where, document)}``.
    """
    chosen: dict[int, tuple[str, dict]] = {}
    for where, doc in docs:
        index = _check_line(where, doc)
        have = chosen.get(index)
        if have is None or ("error" in have[1] and "error" not in doc):
            chosen[index] = (where, doc)
    return chosen


def _gzip_bytes(lines: Sequence[str]) -> bytes:
    buffer = io.BytesIO()
    # no file name and mtime 0 in the header: the same lines give the same bytes
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        for line in lines:
            gz.write(line.encode("utf-8") + b"\n")
    return buffer.getvalue()


def _folder_bytes(folder: Path, skip: set[Path]) -> int:
    if not folder.is_dir():
        return 0
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if path.resolve() not in skip and path.is_file():
                total += path.stat().st_size
    return total


def _feff10_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("feff10-rs")
    except metadata.PackageNotFoundError:
        return "not installed"


def snapshot(
    sources: Sequence[str | os.PathLike],
    dest: str | os.PathLike,
    *,
    positions: Mapping[int, int] | None = None,
    qm9_folder: str | os.PathLike | None = None,
    command: str | None = None,
    feff_command: str | None = None,
    data_root: str | os.PathLike | None = None,
    limit_mb: float = DATA_LIMIT_MB,
    today: str | None = None,
) -> SnapshotSummary:
    """Merge the computed lines of ``sources`` into ``dest`` (gzip JSON lines + README).

    Parameters
    ----------
    sources
        JSON-lines files of ``xas-feff qm9`` or folders holding them.
    dest
        Destination folder, e.g. ``data/qm9_o_k_feff10_ext``; created if absent. An existing
        snapshot there is merged with the new lines (its lines win).
    positions
        ``{qm9_index: position}`` of the fixed order; default
        :func:`models.feff.qm9.qm9_positions` of the lines' absorber (needs ``qm9pack``).
    qm9_folder
        qm9pack ``data`` folder for the default ``positions``.
    command
        The snapshot command, for the README (default: an equivalent ``xas-feff snapshot`` line).
    feff_command
        The command that computed the lines, for the README (default: ``xas-feff qm9`` with the
        first position and the default cards).
    data_root
        The folder whose total size is limited (default: the parent of ``dest``, the project's
        ``data/``).
    limit_mb
        Largest total size of ``data_root`` after the snapshot, MB.
    today
        Date written in the README (default: today, UTC).

    Returns
    -------
    SnapshotSummary

    Raises
    ------
    SnapshotError
        Malformed lines (naming file and line), lines of different absorbers or edges, a QM9
        index outside the fixed order of the absorber, or a snapshot that would make
        ``data_root`` larger than ``limit_mb`` (nothing is written then).
    """
    dest = Path(dest)
    files = source_files(sources)
    existing: list[tuple[str, dict]] = []
    for old in sorted(dest.glob("qm9_*_feff10.jsonl.gz")) if dest.is_dir() else []:
        existing.extend(iter_lines(old))
    fresh = [item for path in files for item in iter_lines(path)]
    merged = merge_lines(existing + fresh)
    if not merged:
        raise SnapshotError(f"no QM9 lines in {', '.join(map(str, files))}")
    kinds = {}
    for where, doc in merged.values():
        kinds.setdefault((doc.get("absorber"), doc.get("edge")), where)
    if len(kinds) > 1:
        shown = "; ".join(f"absorber {a!r} edge {e!r} at {w}" for (a, e), w in kinds.items())
        raise SnapshotError(f"lines of different absorbers/edges cannot share a snapshot: {shown}")
    (absorber, edge), = kinds
    if not isinstance(absorber, str) or not isinstance(edge, str):
        raise SnapshotError(f"lines lack 'absorber'/'edge' (e.g. {next(iter(kinds.values()))})")
    name = f"qm9_{absorber}_{edge}_feff10.jsonl.gz"
    if positions is None:
        from models.feff.qm9 import qm9_positions

        positions = qm9_positions(absorber, folder=None if qm9_folder is None else Path(qm9_folder))
    unknown = [(w, i) for i, (w, _) in merged.items() if i not in positions]
    if unknown:
        w, i = unknown[0]
        raise SnapshotError(f"{w}: qm9_index {i} is not a QM9 molecule containing {absorber} "
                            f"({len(unknown)} such line(s))")
    order = sorted(merged, key=lambda i: positions[i])
    text = [json.dumps(merged[i][1], separators=(",", ":")) for i in order]
    data = _gzip_bytes(text)
    out = dest / name
    before = merge_lines(existing)
    added = sum(1 for i in order if i not in before or ("error" in before[i][1]) != ("error" in merged[i][1]))
    changed = not (out.is_file() and out.read_bytes() == data)
    root = Path(data_root) if data_root is not None else dest.parent
    total = _folder_bytes(root, {out.resolve(), (dest / "README.md").resolve()}) + len(data)
    if total > limit_mb * 1e6:
        raise SnapshotError(
            f"{root} would hold {total / 1e6:.3f} MB with this snapshot (limit {limit_mb:g} MB): "
            "release the computed lines as a shared data set instead and start a new extension")
    good = [merged[i][1] for i in order if "error" not in merged[i][1]]
    seconds = [float(d["seconds"]) for d in good if isinstance(d.get("seconds"), (int, float))]
    summary = SnapshotSummary(
        path=out, readme=dest / "README.md", absorber=absorber, edge=edge,
        positions=[positions[i] for i in order], n_molecules=len(good),
        n_sites=sum(len(d["sites"]) for d in good), n_failures=len(order) - len(good),
        median_seconds=statistics.median(seconds) if seconds else None, added=added,
        sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), changed=changed, sources=files,
    )
    if not changed:
        return summary
    dest.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    if command is None:
        command = f"xas-feff snapshot {' '.join(f'--from {f}' for f in files)} --to {dest}"
    summary.readme.write_text(_readme(summary, command, feff_command, today))
    return summary


def _readme(s: SnapshotSummary, command: str, feff_command: str | None, today: str | None) -> str:
    from models.feff.inputs import MOLECULE_CARDS
    from models.feff.qm9 import QM9_ORDER_SEED

    cards = MOLECULE_CARDS.with_(edge=s.edge)
    card_text = ", ".join(f"`{c}`" for c in [f"EDGE {cards.edge}", f"S02 {cards.s02}", *cards.other_cards()])
    first = s.positions[0] if s.positions else 0
    feff_command = feff_command or f"nice -n 19 xas-feff qm9 --absorber {s.absorber} --start {first} --count N --out DIR"
    today = today or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    secs = f"{s.median_seconds:.1f} s" if s.median_seconds is not None else "n/a"
    shared = f"qm9_{s.absorber.lower()}_{s.edge.lower()}_feff10"
    return f"""# QM9 {s.absorber} {s.edge}-edge XANES with FEFF10: the project's extension of `{shared}`

`{s.path.name}`: gzip-compressed JSON lines, one molecule a line, the keys of the shared
QM9 sets (`shared/data/README.md` beside the project): `qm9_index`, `smiles`, `elements`,
`xyz_angstrom`, `absorber`, `edge`, `sites` (`[{{site, omega_eV, mu}}]`), `seconds`; FEFF failures
are kept as lines with an `error` key. `models.readers.read_qm9_jsonl` reads it; training reads
the shared set first and this file after it (a molecule in both is taken from the shared set).

- Molecules: {s.n_molecules} with spectra ({s.n_sites} {s.absorber} absorber sites), {s.n_failures} FEFF failure(s).
- Positions in the fixed order of the QM9 molecules containing {s.absorber} (Python
  `random.Random({QM9_ORDER_SEED}).shuffle` of the list in QM9 index order, the order of the shared
  set): {format_positions(s.positions)}.
- Computed by: `{feff_command}`
  (FEFF10 through `feff10-rs` {_feff10_version()}, the version installed where this snapshot was
  taken). Cards (the defaults of `xas-feff qm9`; the lines themselves do not record them):
  {card_text};
  all atoms of the molecule, absorber at the origin, one potential per element.
- Geometries: QM9 (B3LYP/6-31G(2df,p)) from the CSV files of the `qm9pack` wheel (MIT; QM9 CC0).
- Cost: median {secs} FEFF wall time per molecule (summed over its sites), on a shared machine at nice 19.
- File: {s.bytes:,} bytes, sha256 `{s.sha256}`.
- Snapshot of {today} (UTC):
  `{command}`.
  Running it again merges newly computed lines into this file: lines already here are kept, a
  failure is replaced by a later success; lines are sorted by position and the gzip header
  carries no time, so a re-snapshot adds only the new lines.
"""
