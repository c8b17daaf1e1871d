"""Readers of the computed training spectra: FEFF Cu K of Materials Project crystals, QM9 O/N K.

Both readers return ``(records, report)``: a list of :class:`SpectrumRecord` (one per material or
molecule, holding its structure and its per-absorber-site spectra) and a :class:`ReadReport` that
counts what was read and lists, with a reason, everything that was skipped. Nothing is dropped
silently.

A record is skipped as a whole when any of its site spectra is unusable, because a material's
spectrum is the multiplicity-weighted average over *all* its symmetry-distinct absorber sites.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from pymatgen.core import Molecule, Structure

#: Name of a FEFF site folder: ``NNN_<Element>`` with ``NNN`` the 0-based site index in POSCAR.
_SITE_DIR = re.compile(r"^(\d+)_([A-Z][a-z]?)$")
#: Minimum number of energy points for a spectrum to be usable.
MIN_POINTS = 10


@dataclass
class SiteSpectrum:
    """The spectrum of one absorbing site.

    Attributes
    ----------
    site_index
        0-based index of the absorbing atom in the record's structure.
    energy
        Absolute photon energy, eV, strictly increasing, shape (E,).
    mu
        Absorption (FEFF's normalised ``mu``), shape (E,).
    """

    site_index: int
    energy: np.ndarray
    mu: np.ndarray


@dataclass
class SpectrumRecord:
    """One material or molecule with the spectra of its absorbing sites.

    Attributes
    ----------
    record_id
        Materials Project id (``mp-1234``) or ``qm9-<index>``.
    structure
        pymatgen ``Structure`` (crystals) or ``Molecule`` (molecules).
    sites
        Spectra of the absorbing sites given by the data set (crystals: the symmetry-distinct
        ones; molecules: every absorber atom).
    source
        Where it was read from (folder, or ``file:line``).
    """

    record_id: str
    structure: Structure | Molecule
    sites: list[SiteSpectrum]
    source: str


@dataclass
class ReadReport:
    """What a reader read and what it skipped, with reasons.

    Attributes
    ----------
    source
        The folder or file read.
    n_read
        Number of records (materials/molecules) read.
    skipped
        ``(where, reason)`` for every skipped record.
    n_sites
        Number of site spectra in the records read.
    notes
        ``(where, note)`` about records that were kept but adjusted (e.g. renormalised
        weights).
    """

    source: str
    n_read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_sites: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def reason_counts(self) -> Counter:
        """Counts of skip reasons, grouped by their kind (the text before the first ':')."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.skipped)

    def summary(self, examples: int = 3) -> str:
        """A few readable lines: counts read, counts skipped by reason, some examples."""
        lines = [
            f"{self.source}: read {self.n_read} records ({self.n_sites} site spectra), "
            f"skipped {self.n_skipped}"
        ]
        for kind, count in self.reason_counts().most_common():
            shown = [f"{w} ({r})" for w, r in self.skipped if r.split(":", 1)[0] == kind][:examples]
            lines.append(f"  {count} x {kind}: e.g. " + "; ".join(shown))
        if self.notes:
            lines.append(f"  {len(self.notes)} kept with notes: e.g. " + "; ".join(
                f"{w} ({n})" for w, n in self.notes[:examples]))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


class SpectrumFormatError(ValueError):
    """A spectrum file or entry is malformed; the message names the file and line."""


def _check_spectrum(energy: np.ndarray, mu: np.ndarray, where: str) -> None:
    if energy.size == 0:
        raise SpectrumFormatError(f"empty spectrum: {where} has no data points")
    if energy.shape != mu.shape:
        raise SpectrumFormatError(
            f"length mismatch: {where} has {energy.size} energies and {mu.size} mu values"
        )
    if energy.size < MIN_POINTS:
        raise SpectrumFormatError(f"too short: {where} has {energy.size} points (< {MIN_POINTS})")
    if not (np.all(np.isfinite(energy)) and np.all(np.isfinite(mu))):
        bad = int(np.flatnonzero(~(np.isfinite(energy) & np.isfinite(mu)))[0])
        raise SpectrumFormatError(f"non-finite values: {where} point {bad} is NaN/inf")
    if np.any(np.diff(energy) <= 0):
        bad = int(np.flatnonzero(np.diff(energy) <= 0)[0])
        raise SpectrumFormatError(
            f"energies not increasing: {where} point {bad + 1} ({energy[bad + 1]} eV after {energy[bad]} eV)"
        )


def _parse_xmu_lines(path: Path, lines: list[str], start: int) -> np.ndarray:
    """Line-by-line parse (comments and blank lines skipped) that names the first bad line."""
    rows = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        if len(parts) != 6:
            raise SpectrumFormatError(
                f"malformed line: {path}:{lineno} has {len(parts)} columns, expected 6 "
                "(omega e k mu mu0 chi)"
            )
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            raise SpectrumFormatError(
                f"malformed line: {path}:{lineno} is not numeric: {stripped!r}"
            ) from None
    if not rows:
        raise SpectrumFormatError(f"empty spectrum: {path} has no data lines")
    return np.array(rows)


def read_xmu(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(omega, mu)`` from a FEFF ``xmu.dat`` (columns ``omega e k mu mu0 chi``).

    Raises
    ------
    SpectrumFormatError
        Naming the file and the first bad line.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    header = 0
    while header < len(lines) and lines[header].lstrip().startswith("#"):
        header += 1
    body = lines[header:]
    while body and not body[-1].strip():
        body.pop()
    if not body:
        raise SpectrumFormatError(f"empty spectrum: {path} has no data lines")
    rows = [line.split() for line in body]
    table = None
    if all(len(r) == 6 for r in rows):  # fast path: one numeric block after the header
        try:
            table = np.array(rows, dtype=float)
        except ValueError:
            pass
    if table is None:
        table = _parse_xmu_lines(path, lines, header)
    energy, mu = table[:, 0].copy(), table[:, 3].copy()
    _check_spectrum(energy, mu, str(path))
    return energy, mu


def _read_poscar(path: Path) -> Structure:
    """A VASP 5 POSCAR (species line present), parsed directly; anything else via pymatgen.

    ``pymatgen.io.vasp`` costs seconds to import and builds each structure three times; this
    plain parser reads the 2,697 Materials Project POSCARs about 3x faster.
    """
    text = path.read_text()
    lines = text.splitlines()
    try:
        scale = float(lines[1].split()[0])
        lattice = np.array([[float(v) for v in lines[i].split()[:3]] for i in (2, 3, 4)])
        symbols = lines[5].split()
        counts = [int(v) for v in lines[6].split()]
        simple = scale > 0 and all(sym.isalpha() for sym in symbols) and len(symbols) == len(counts)
    except (IndexError, ValueError):
        simple = False
    if simple:
        row = 7
        if lines[row].strip()[:1] in "sS":  # selective dynamics
            row += 1
        cartesian = lines[row].strip()[:1] in "cCkK"
        n = sum(counts)
        coord_lines = lines[row + 1 : row + 1 + n]
        if len(coord_lines) == n:
            try:
                coords = np.array([[float(v) for v in ln.split()[:3]] for ln in coord_lines])
            except ValueError:
                coords = None
            if coords is not None and coords.shape == (n, 3) and np.all(np.isfinite(coords)):
                species = [sym for sym, c in zip(symbols, counts) for _ in range(c)]
                if cartesian:
                    coords = coords * scale
                return Structure(lattice * scale, species, coords, coords_are_cartesian=cartesian)
    from pymatgen.io.vasp import Poscar  # unusual layout: let pymatgen decide (and explain)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Poscar.from_str(text).structure


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="rec", leave=False)


def read_feff_materials(
    root: str | os.PathLike,
    limit: int | None = None,
    progress: bool = True,
    absorber: str = "Cu",
) -> tuple[list[SpectrumRecord], ReadReport]:
    """Read ``<id>/POSCAR`` + ``<id>/FEFF-XANES/NNN_<absorber>/xmu.dat`` folders.

    Parameters
    ----------
    root
        The folder holding one sub-folder per material (e.g. ``data_dir()/CU_K_FEFF``).
    limit
        Read only the first ``limit`` material folders (sorted by name); ``None``: all.
    progress
        Show a tqdm progress bar.
    absorber
        Element of the absorbing sites (the suffix of the site folders).

    Returns
    -------
    records, report
        One :class:`SpectrumRecord` per material with at least one usable spectrum, sites sorted
        by index; the report lists every skipped material with the reason (no spectra, bad
        POSCAR, malformed ``xmu.dat`` with file and line, NaN/empty spectra, site index that is
        not an absorber atom).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: FEFF materials folder does not exist")
    report = ReadReport(source=str(root))
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if limit is not None:
        folders = folders[: int(limit)]
    records: list[SpectrumRecord] = []
    for name in _progress(folders, len(folders), f"FEFF {absorber}", progress):
        folder = root / name
        poscar = folder / "POSCAR"
        if not poscar.is_file():
            report.skipped.append((str(folder), "no POSCAR: material folder lacks POSCAR"))
            continue
        xanes = folder / "FEFF-XANES"
        site_dirs = []
        if xanes.is_dir():
            for entry in os.scandir(xanes):
                m = _SITE_DIR.match(entry.name)
                if entry.is_dir() and m and m.group(2) == absorber:
                    site_dirs.append((int(m.group(1)), Path(entry.path)))
        site_dirs.sort()
        if not site_dirs:
            report.skipped.append((str(folder), f"no spectra: no FEFF-XANES/NNN_{absorber} folders"))
            continue
        try:
            structure = _read_poscar(poscar)
        except Exception as exc:
            report.skipped.append((str(poscar), f"bad POSCAR: {exc}"))
            continue
        try:
            sites = []
            for index, site_dir in site_dirs:
                xmu = site_dir / "xmu.dat"
                if not xmu.is_file():
                    raise SpectrumFormatError(f"no spectra: {xmu} is missing")
                if index >= len(structure) or structure[index].specie.symbol != absorber:
                    found = structure[index].specie.symbol if index < len(structure) else "nothing"
                    raise SpectrumFormatError(
                        f"bad site index: {site_dir.name} points at {found} in a POSCAR of "
                        f"{len(structure)} atoms, expected {absorber}"
                    )
                energy, mu = read_xmu(xmu)
                sites.append(SiteSpectrum(index, energy, mu))
        except SpectrumFormatError as exc:
            report.skipped.append((str(folder), str(exc)))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            report.skipped.append((str(folder), f"unreadable file: {exc}"))
            continue
        structure.properties["material_id"] = name
        records.append(SpectrumRecord(name, structure, sites, str(folder)))
        report.n_sites += len(sites)
    report.n_read = len(records)
    return records, report


def read_qm9_jsonl(
    path: str | os.PathLike, limit: int | None = None
) -> tuple[list[SpectrumRecord], ReadReport]:
    """Read a QM9 K-edge JSON-lines file (one molecule a line), plain or gzip-compressed.

    Parameters
    ----------
    path
        ``qm9_O_K_feff10.jsonl`` (keys ``qm9_index``, ``smiles``, ``elements``, ``xyz_angstrom``,
        ``absorber``, ``sites: [{site, omega_eV, mu}]``), or a ``.gz`` file of such lines (the
        project's snapshots, :mod:`models.feff.snapshot`).
    limit
        Read only the first ``limit`` lines.

    Returns
    -------
    records, report
        Records with ids ``qm9-<index>``; FEFF failures (``error`` key), malformed JSON
        (``file:line``), missing keys and NaN/empty spectra are skipped and listed in the report.
        Lines without a ``qm9_index`` (the ``name``-keyed lines that ``xas-feff structures``
        writes for molecules) are skipped with the reason ``no qm9_index``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: QM9 JSON-lines file does not exist")
    report = ReadReport(source=str(path))
    records: list[SpectrumRecord] = []
    seen: set[str] = set()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if limit is not None and lineno > limit:
                break
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                report.skipped.append((where, f"malformed JSON: {exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(doc, dict):
                report.skipped.append((where, "malformed JSON: line is not an object"))
                continue
            if doc.get("qm9_index") is None:
                # e.g. a line of `xas-feff structures` (keyed by "name"): not a QM9 molecule
                label = f" {doc['name']!r}" if isinstance(doc.get("name"), str) else ""
                report.skipped.append((where, f"no qm9_index: entry{label} is not a QM9 molecule "
                                              "(written by `xas-feff structures`?)"))
                continue
            if "error" in doc:
                report.skipped.append((where, f"FEFF failure: {str(doc['error'])[:200]}"))
                continue
            try:
                record = _qm9_record(doc, where)
            except SpectrumFormatError as exc:
                report.skipped.append((where, str(exc)))
                continue
            except KeyError as exc:
                report.skipped.append((where, f"missing key: {exc}"))
                continue
            except (TypeError, ValueError) as exc:
                msg = str(exc)
                report.skipped.append((where, msg if msg.startswith("bad entry:") else f"bad entry: {msg}"))
                continue
            if record.record_id in seen:
                report.skipped.append((where, f"duplicate id: {record.record_id} already read"))
                continue
            seen.add(record.record_id)
            records.append(record)
            report.n_sites += len(record.sites)
    report.n_read = len(records)
    return records, report


def read_qm9_sets(
    paths: Sequence[str | os.PathLike], limit: int | None = None
) -> tuple[list[SpectrumRecord], ReadReport]:
    """Read several QM9 JSON-lines files as one set (e.g. a shared set and the project's extension).

    Parameters
    ----------
    paths
        Files in priority order: a molecule read from an earlier file is kept and its lines in later
        files are skipped with the reason ``duplicate id`` (a FEFF failure in an earlier file is not
        a molecule read, so a later success of it is used).
    limit
        Keep at most this many records, the first ones of the files in order.

    Returns
    -------
    records, report
        As :func:`read_qm9_jsonl`; the report's source names every file.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_qm9_sets: no files given")
    report = ReadReport(source=" + ".join(str(p) for p in paths))
    records: list[SpectrumRecord] = []
    first: dict[str, str] = {}
    for path in paths:
        if limit is not None and len(records) >= limit:
            break
        recs, rep = read_qm9_jsonl(path)
        report.skipped.extend(rep.skipped)
        report.notes.extend(rep.notes)
        for record in recs:
            if limit is not None and len(records) >= limit:
                break
            if record.record_id in first:
                report.skipped.append((record.source, f"duplicate id: {record.record_id} already read from "
                                                      f"{first[record.record_id]}"))
                continue
            first[record.record_id] = record.source
            records.append(record)
            report.n_sites += len(record.sites)
    report.n_read = len(records)
    return records, report


def _qm9_record(doc: dict, where: str) -> SpectrumRecord:
    record_id = f"qm9-{int(doc['qm9_index'])}"
    elements = list(doc["elements"])
    coords = np.asarray(doc["xyz_angstrom"], dtype=float)
    if coords.shape != (len(elements), 3):
        raise ValueError(
            f"bad entry: {len(elements)} elements but xyz_angstrom has shape {coords.shape}"
        )
    molecule = Molecule(elements, coords, properties={"smiles": doc.get("smiles", ""), "name": record_id})
    absorber = doc.get("absorber", "O")
    raw_sites = doc["sites"]
    if not raw_sites:
        raise SpectrumFormatError("no spectra: entry has an empty 'sites' list")
    sites = []
    for k, site in enumerate(raw_sites):
        index = int(site["site"])
        if not 0 <= index < len(elements) or elements[index] != absorber:
            raise SpectrumFormatError(
                f"bad site index: sites[{k}].site={index} is not a {absorber} atom"
            )
        energy = np.asarray(site["omega_eV"], dtype=float)
        mu = np.asarray(site["mu"], dtype=float)
        _check_spectrum(energy, mu, f"{where} sites[{k}]")
        sites.append(SiteSpectrum(index, energy, mu))
    sites.sort(key=lambda s: s.site_index)
    return SpectrumRecord(record_id, molecule, sites, where)


def _unit_hash(seed: int, record_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_ids(
    ids: Iterable[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Deterministic train/val/test split by record id.

    Each id goes to a split by a hash of ``seed`` and the id alone, so the assignment does not
    depend on the input order, and adding records never moves existing ones between splits
    (fractions are therefore met approximately, not exactly).

    Parameters
    ----------
    ids
        Record ids (duplicates are counted once).
    fractions
        ``(train, val, test)`` fractions, non-negative, summing to 1.
    seed
        Changes the assignment.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 or not math.isfinite(f) for f in fractions):
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions)})")
    bounds = np.cumsum(fractions)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for record_id in sorted(set(ids)):
        u = _unit_hash(seed, record_id)
        key = "train" if u < bounds[0] else "val" if u < bounds[1] else "test"
        out[key].append(record_id)
    return out
