"""Crystal structures of minerals from the American Mineralogist Crystal Structure Database
(AMCSD), as shipped by ``larixite`` (the ``feff`` extra).

A mineral usually has several entries (temperatures, pressures, refinements). :func:`mineral_cifs`
chooses one entry per mineral: the purest (fewest elements; then the lowest AMCSD id) that parses,
holds the elements asked for, and is ordered; a mineral with only partially occupied entries keeps its first parseable one,
which candidate libraries approximate by ordered samples (:mod:`models.disorder`). Every
mineral asked for but not found, or whose entries all fail to parse, is reported with the reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["MineralCif", "mineral_cifs", "minerals_with", "write_cifs", "parse_cif"]


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
        entries = db.find_cifs(mineral_name=str(name).strip())
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
    for cif in db.find_cifs(contains_elements=list(elements)):
        by_mineral.setdefault(_name(cif), []).append(cif)
    chosen, missing = {}, {}
    for name in sorted(by_mineral):
        entry, why = _choose(by_mineral[name], set(elements))
        if entry is None:
            missing[name] = why
        else:
            chosen[name] = entry
    return chosen, missing


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
