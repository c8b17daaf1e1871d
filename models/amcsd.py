"""Crystal structures of minerals from the American Mineralogist Crystal Structure Database
(AMCSD), as shipped by ``larixite`` (the ``feff`` extra).

A mineral usually has several entries (temperatures, pressures, refinements). :func:`mineral_cifs`
chooses one entry per mineral: the purest (fewest elements; then the lowest AMCSD id) that parses,
holds the elements asked for, and is ordered; a mineral with only partially occupied entries keeps its first parseable one,
which candidate libraries approximate by ordered samples (:mod:`models.disorder`). Every
mineral asked for but not found, or whose entries all fail to parse, is reported with the reason.

:func:`distinct_structures` instead yields every distinct structure among the entries holding some
elements, minerals and unnamed (synthetic) compounds alike: a mineral's entries that
``StructureMatcher`` finds alike (refinements, temperature or pressure series) give one, a phase
transition another (used by the ``amcsd:`` candidate source, :mod:`models.sources`).
"""

from __future__ import annotations

import io
import random
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

__all__ = ["MineralCif", "mineral_cifs", "minerals_with", "write_cifs", "parse_cif", "distinct_structures",
           "MAX_MATCHES"]

#: Most entries one database query returns (larixite's default, 1000, would cut e.g. all O entries).
MAX_MATCHES = 1_000_000


@dataclass(frozen=True)
class MineralCif:
    """One chosen AMCSD entry of a mineral."""

    mineral: str  # lower-case mineral name, e.g. "tenorite"
    amcsd_id: int
    formula: str  # as the database writes it
    ordered: bool
    text: str  # the CIF

    @property
    def label(self) -> str:
        """``mineral (AMCSD id)``."""
        return f"{self.mineral} (AMCSD {self.amcsd_id})"


@lru_cache(maxsize=1)
def _database():
    try:
        import larixite.amcsd as amcsd
    except ImportError as exc:  # pragma: no cover - the feff extra is in the test install
        raise RuntimeError("the AMCSD needs larixite: pip install 'steered-xas[feff]'") from exc
    return amcsd.AMCSD(str(Path(amcsd.__file__).parent / "amcsd_cif1.db"), read_only=True)


def parse_cif(text: str):
    """The pymatgen Structure of a CIF text (occupancies as written, no primitive reduction)."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser(io.StringIO(text), occupancy_tolerance=1.0).parse_structures(primitive=False)[0]


def _name(cif) -> str:
    mineral = cif.mineral
    return str(mineral[1] if isinstance(mineral, tuple) else getattr(mineral, "name", mineral)).lower()


def _choose(entries, elements: set[str] | None) -> tuple[MineralCif | None, str]:
    """The entry to use among a mineral's ``entries`` and, if none, why."""
    fallback, reasons = None, []
    # ordered entries first; among equals the purest (fewest elements: e.g. Cu2S chalcocite before
    # a Bi-bearing one), then the lowest id
    for cif in sorted(entries, key=lambda c: (len(str(c.formula).split()), c.ams_id)):
        try:
            structure = parse_cif(cif.ciftext)
        except Exception as exc:  # noqa: BLE001 -- pymatgen raises many kinds on bad CIFs
            reasons.append(f"AMCSD {cif.ams_id}: unparsable ({type(exc).__name__})")
            continue
        have = {el.symbol for el in structure.composition.elements}
        if elements is not None and not elements <= have:
            reasons.append(f"AMCSD {cif.ams_id}: lacks {sorted(elements - have)}")
            continue
        entry = MineralCif(_name(cif), int(cif.ams_id), str(cif.formula), bool(structure.is_ordered), cif.ciftext)
        if entry.ordered:
            return entry, ""
        fallback = fallback or entry
    return fallback, "; ".join(reasons) or "no entry"


def mineral_cifs(minerals, *, contains: tuple[str, ...] = ()) -> tuple[dict[str, MineralCif], dict[str, str]]:
    """One AMCSD entry per mineral name (case-insensitive), and the reasons for those not found.

    ``contains``: elements the chosen entry must hold (e.g. ``("Cu",)``).
    """
    db = _database()
    elements = set(contains) or None
    chosen, missing = {}, {}
    for name in minerals:
        entries = db.find_cifs(mineral_name=str(name).strip(), max_matches=MAX_MATCHES)
        entry, why = _choose(entries, elements) if entries else (None, "not in the AMCSD")
        if entry is None:
            missing[str(name).lower()] = why
        else:
            chosen[entry.mineral] = entry
    return chosen, missing


def minerals_with(elements: tuple[str, ...]) -> tuple[dict[str, MineralCif], dict[str, str]]:
    """One entry for every mineral whose AMCSD entries contain all ``elements`` (e.g. ``("Cu",)``:
    875 entries of 225 minerals), and the reasons for minerals without a usable entry."""
    db = _database()
    by_mineral: dict[str, list] = {}
    for cif in db.find_cifs(contains_elements=list(elements), max_matches=MAX_MATCHES):
        by_mineral.setdefault(_name(cif), []).append(cif)
    chosen, missing = {}, {}
    for name in sorted(by_mineral):
        entry, why = _choose(by_mineral[name], set(elements))
        if entry is None:
            missing[name] = why
        else:
            chosen[name] = entry
    return chosen, missing


def _title_of(mineral: str | None, formula_title: str | None, formula: str) -> str:
    """The mineral name (lower case), or for an unnamed (synthetic) compound its formula title,
    e.g. ``beta-Cu7PSe6``, else its formula."""
    if mineral and mineral != "<missing>":
        return str(mineral).lower()
    title = str(formula_title or "").strip()
    return title if title and title != "<missing>" else "".join(str(formula).split())


@lru_cache(maxsize=1)
def _entry_index() -> tuple[dict[int, tuple[str, str]], dict[int, frozenset[str]]]:
    """AMCSD id -> (title, formula) of every entry, and id -> its elements, read without building
    the entries (larixite's ``find_cifs`` builds each one it returns)."""
    from sqlalchemy import select

    db = _database()
    cif, mineral = db.tables["cif"], db.tables["minerals"]
    rows = db.execall(select(cif.c.id, mineral.c.name, cif.c.formula_title, cif.c.formula)
                      .where(cif.c.mineral_id == mineral.c.id))
    titles = {int(i): (_title_of(name, title, formula), str(formula)) for i, name, title, formula in rows}
    elements = {int(i): frozenset(els) for i, els in db.get_cif_elems().items()}
    return titles, elements


def distinct_structures(elements: tuple[str, ...] = (), *, minerals: tuple[str, ...] = (), ids: tuple[int, ...] = (),
                        seed: int | None = None,
                        skipped: dict[str, str] | None = None) -> Iterator[tuple[MineralCif, object, list[int]]]:
    """Every distinct structure among the AMCSD entries asked for, lazily, one mineral at a time.

    Entries are grouped by mineral (unnamed compounds by their formula title) and read one group
    at a time. Entries that pymatgen's ``StructureMatcher`` (default tolerances) finds alike are
    one structure: within a group the ordered one represents it if any, then the purest, then
    the lowest AMCSD id; an entry alike to one of an earlier group (e.g. synthetic CuI and
    marshite) is that one's duplicate, added to the list already yielded with it.

    Parameters
    ----------
    elements : tuple of str
        Elements every entry holds (e.g. ``("Cu",)``: 875 entries).
    minerals : tuple of str
        Only these minerals or compound titles (case-insensitive); one not in the selection raises.
    ids : tuple of int
        Only these AMCSD ids (no de-duplication among them).
    seed : int, optional
        Visit the groups in the order of ``random.Random(seed).shuffle``; default alphabetical.
    skipped : dict, optional
        Filled with ``"<title> (AMCSD <id>)" -> reason`` for entries that cannot be used
        (unparsable CIF, elements lacking from the atom sites).

    Yields
    ------
    entry : MineralCif
        The representative entry (``mineral``: the mineral name or compound title).
    structure : pymatgen Structure
        As written in the CIF, partial occupancies included.
    duplicates : list of int
        AMCSD ids of the entries found alike and left out.

    Raises
    ------
    ValueError
        Nothing selected, or a mineral or id asked for is not among the entries.

    Notes
    -----
    A selection read to the end is kept for the session (the last four): asked again, it is
    given from memory (copies of the structures), its skipped entries reported again.
    """
    if not (elements or minerals or ids):
        raise ValueError("give elements, minerals or AMCSD ids: the whole AMCSD is too much")
    skipped = {} if skipped is None else skipped
    key = (tuple(elements), tuple(sorted(str(m).strip().lower() for m in minerals)), tuple(ids), seed)
    if key in _DISTINCT:
        found, lost = _DISTINCT[key]
        skipped.update(lost)
        for entry, structure, duplicates in found:
            yield entry, structure.copy(), list(duplicates)
        return
    before = set(skipped)
    found = []
    for entry, structure, duplicates in _distinct(elements, minerals, ids, seed, skipped):
        found.append((entry, structure.copy(), duplicates))  # the list grows with later duplicates
        yield entry, structure, duplicates
    # read to the end: kept for the session (a plan called again with amcsd:Cu need not re-read 875 CIFs)
    while len(_DISTINCT) >= 4:
        _DISTINCT.pop(next(iter(_DISTINCT)))
    _DISTINCT[key] = (found, {k: v for k, v in skipped.items() if k not in before})


#: Selections read to the end in this session: key -> (entries, skipped).
_DISTINCT: dict[tuple, tuple[list, dict[str, str]]] = {}


def _distinct(elements, minerals, ids, seed, skipped) -> Iterator[tuple[MineralCif, object, list[int]]]:
    """The generator behind :func:`distinct_structures` (same arguments, ``skipped`` a dict)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    db = _database()
    titles, entry_elements = _entry_index()
    unknown = [i for i in ids if int(i) not in titles]
    if unknown:
        raise ValueError(f"AMCSD id(s) {', '.join(map(str, unknown))} not in the database larixite ships")
    need = set(elements)
    chosen = [int(i) for i in ids] if ids else sorted(
        i for i in titles if need <= entry_elements.get(i, frozenset()))
    groups: dict[str, list[int]] = {}
    for i in chosen:
        groups.setdefault(titles[i][0], []).append(i)
    if minerals:
        wanted = {str(m).strip().lower() for m in minerals}
        have = {k.lower(): k for k in groups}
        missing = sorted(wanted - set(have))
        if missing:
            raise ValueError(f"not among the AMCSD entries{' holding ' + ','.join(elements) if elements else ''}: "
                             f"{', '.join(missing)}")
        groups = {have[w]: groups[have[w]] for w in wanted}
    keys = sorted(groups, key=str.lower)
    if seed is not None:
        random.Random(seed).shuffle(keys)
    matcher = StructureMatcher()
    seen: dict[str, list] = {}  # reduced formula -> structures yielded: synthetic CuI is marshite
    for key in keys:
        parsed = []
        for ams_id in sorted(groups[key]):
            label = f"{key} (AMCSD {ams_id})"
            try:
                cif = db.get_cif(ams_id)
                structure = parse_cif(cif.ciftext)
            except Exception as exc:  # noqa: BLE001 -- pymatgen raises many kinds on bad CIFs
                why = str(exc).splitlines()[0] if str(exc) else ""
                skipped[label] = f"unparsable CIF ({type(exc).__name__}: {why})"
                continue
            have = {el.symbol for el in structure.composition.elements}
            if not set(elements) <= have:
                skipped[label] = f"its atom sites lack {sorted(set(elements) - have)}"
                continue
            parsed.append((MineralCif(key, int(cif.ams_id), str(cif.formula), bool(structure.is_ordered), cif.ciftext),
                           structure, []))
        parsed.sort(key=lambda p: (not p[0].ordered, len(p[0].formula.split()), p[0].amcsd_id))
        fresh: list = []
        for entry, structure, _ in parsed:
            alike = seen.setdefault(structure.composition.reduced_formula, [])
            twin = None if ids else next((k for k in alike if _alike(matcher, k[1], structure)), None)
            if twin is None:
                alike.append((entry, structure, []))
                fresh.append(alike[-1])
            else:
                twin[2].append(entry.amcsd_id)
        yield from fresh


def _alike(matcher, a, b) -> bool:
    try:
        return bool(matcher.fit(a, b))
    except Exception:  # noqa: BLE001 -- StructureMatcher fails on some odd cells: then they differ
        return False


def write_cifs(entries: dict[str, MineralCif], folder: str | Path) -> dict[str, Path]:
    """Write each entry as ``<mineral>.cif`` in ``folder``; returns mineral -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, entry in entries.items():
        path = folder / f"{name.replace(' ', '_')}.cif"
        if not path.exists() or path.read_text() != entry.text:
            path.write_text(entry.text)
        paths[name] = path
    return paths
