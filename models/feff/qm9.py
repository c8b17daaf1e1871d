"""QM9 molecules for FEFF generation, in the fixed random order of the shared QM9 sets.

The geometries come from the CSV files inside the ``qm9pack`` 1.0.3 wheel (MIT; QM9 itself is
CC0), read directly: importing ``qm9pack`` needs ``pkg_resources`` and is avoided.

Order: all QM9 molecules that contain an element, in QM9 index order, shuffled once with
``random.Random(20200716).shuffle`` (see ``qm9_o_k_feff10/README.md`` of the shared data). The
first molecules of this order form a released set; generating more continues the same order and
never changes the molecules already released.
"""

from __future__ import annotations

import csv
import importlib.util
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pymatgen.core import Molecule

#: Seed of the shuffle that fixes the order of the QM9 sets.
QM9_ORDER_SEED = 20200716
#: The CSV parts of the qm9pack wheel, in QM9 index order.
QM9_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")


class QM9DataError(RuntimeError):
    """The qm9pack CSV files are missing or malformed; the message names the file."""


@dataclass(frozen=True)
class QM9Molecule:
    """One QM9 molecule as stored in qm9pack.

    Attributes
    ----------
    index
        QM9 index (1..133885; ``dsgdb9nsd_<index>.xyz``).
    smiles
        QM9's SMILES string.
    elements
        Element symbols, one per atom, QM9's atom order.
    xyz
        Cartesian coordinates in Angstrom (QM9 B3LYP/6-31G(2df,p) geometry), one per atom.
    """

    index: int
    smiles: str
    elements: tuple[str, ...]
    xyz: tuple[tuple[float, float, float], ...] = field(repr=False)

    @property
    def name(self) -> str:
        """``qm9-<index>``, the record id used by :func:`models.readers.read_qm9_jsonl`."""
        return f"qm9-{self.index}"

    def to_molecule(self) -> Molecule:
        """A pymatgen ``Molecule`` with ``smiles``, ``name`` and ``qm9_index`` properties."""
        return Molecule(
            list(self.elements),
            [list(c) for c in self.xyz],
            properties={"smiles": self.smiles, "name": self.name, "qm9_index": self.index},
        )


def qm9pack_data_dir() -> Path:
    """The ``data`` folder of the installed ``qm9pack`` wheel (found without importing it).

    Raises
    ------
    QM9DataError
        If ``qm9pack`` is not installed (``pip install steered-xas[qm9]``) or lacks its CSVs.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise QM9DataError(
            "qm9pack is not installed: install the 'qm9' extra (pip install 'steered-xas[qm9]'; "
            "qm9pack may be installed with --no-deps, its CSV files are read directly)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [p for p in QM9_PARTS if not (folder / p).is_file()]
    if missing:
        raise QM9DataError(f"{folder}: qm9pack data folder lacks {', '.join(missing)}")
    return folder


def _parse_elements(text: str) -> tuple[str, ...]:
    # "['C','H','H']" -> ("C", "H", "H")
    return tuple(t.strip().strip("'\"") for t in text.strip().strip("[]").split(",") if t.strip())


def _parse_xyz(text: str, n_atoms: int, where: str) -> tuple[tuple[float, float, float], ...]:
    values = [float(v) for v in text.replace("[", " ").replace("]", " ").replace(",", " ").split()]
    if len(values) != 3 * n_atoms:
        raise QM9DataError(f"{where}: XYZ_Ang holds {len(values)} numbers for {n_atoms} atoms")
    return tuple((values[3 * i], values[3 * i + 1], values[3 * i + 2]) for i in range(n_atoms))


def _iter_rows(folder: Path) -> Iterator[tuple[int, str, tuple[str, ...], str, str]]:
    """``(index, smiles, elements, xyz_text, where)`` for every row of the CSV parts, in order."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    for part in QM9_PARTS:
        path = folder / part
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            try:
                i_index, i_smiles = header.index("Index"), header.index("SMILES")
                i_elem, i_xyz = header.index("Elements"), header.index("XYZ_Ang")
            except ValueError as exc:
                raise QM9DataError(f"{path}: header lacks a column: {exc}") from None
            for lineno, row in enumerate(reader, start=2):
                yield int(row[i_index]), row[i_smiles], _parse_elements(row[i_elem]), row[i_xyz], f"{path}:{lineno}"


def qm9_rows(folder: Path | None = None) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """``(index, smiles, elements)`` of every QM9 molecule in QM9 index order, geometries not
    parsed (``folder`` and errors as in :func:`qm9_records`)."""
    return ((index, smiles, elements) for index, smiles, elements, _, _ in
            _iter_rows(qm9pack_data_dir() if folder is None else Path(folder)))


def qm9_records(folder: Path | None = None,
                keep: Callable[[int, str, tuple[str, ...]], bool] | None = None) -> Iterator[QM9Molecule]:
    """Every QM9 molecule, lazily, in QM9 index order (one CSV row at a time in memory).

    Parameters
    ----------
    folder
        qm9pack ``data`` folder; default :func:`qm9pack_data_dir`.
    keep
        ``keep(index, smiles, elements)``: only the molecules it is true for are built (the
        geometry of the others is never parsed).

    Raises
    ------
    QM9DataError
        qm9pack missing or malformed.
    """
    folder = qm9pack_data_dir() if folder is None else Path(folder)
    for index, smiles, elements, xyz, where in _iter_rows(folder):
        if keep is None or keep(index, smiles, elements):
            yield QM9Molecule(index, smiles, elements, _parse_xyz(xyz, len(elements), where))


def qm9_order(element: str, seed: int = QM9_ORDER_SEED, folder: Path | None = None) -> list[QM9Molecule]:
    """All QM9 molecules containing ``element``, in the fixed random order of the QM9 sets.

    Parameters
    ----------
    element
        Element symbol, e.g. ``"O"`` or ``"N"``.
    seed
        Seed of ``random.Random(seed).shuffle``; the default reproduces the shared sets.
    folder
        qm9pack ``data`` folder; default :func:`qm9pack_data_dir`.

    Returns
    -------
    list of QM9Molecule
        The molecules in QM9 index order shuffled with the seed.

    Raises
    ------
    QM9DataError
        qm9pack missing or malformed; also if no QM9 molecule contains ``element``.
    """
    molecules = list(qm9_records(folder, lambda index, smiles, elements: element in elements))
    if not molecules:
        raise QM9DataError(f"no QM9 molecule contains element {element!r} (QM9 has only H, C, N, O, F)")
    molecules.sort(key=lambda m: m.index)
    random.Random(seed).shuffle(molecules)
    return molecules


def qm9_positions(element: str, seed: int = QM9_ORDER_SEED, folder: Path | None = None) -> dict[int, int]:
    """``{qm9_index: position}`` in the fixed order of :func:`qm9_order` (geometries not parsed).

    Parameters
    ----------
    element, seed, folder
        As in :func:`qm9_order`.

    Raises
    ------
    QM9DataError
        As :func:`qm9_order`.
    """
    indices = sorted(index for index, _, elements in qm9_rows(folder) if element in elements)
    if not indices:
        raise QM9DataError(f"no QM9 molecule contains element {element!r} (QM9 has only H, C, N, O, F)")
    random.Random(seed).shuffle(indices)
    return {index: position for position, index in enumerate(indices)}


def qm9_molecules(
    element: str,
    count: int | None = None,
    start: int = 0,
    seed: int = QM9_ORDER_SEED,
    folder: Path | None = None,
) -> list[QM9Molecule]:
    """A slice ``[start, start + count)`` of :func:`qm9_order` for ``element``.

    Parameters
    ----------
    element
        Element the molecules must contain (the absorber).
    count
        Number of molecules; ``None``: all from ``start``.
    start
        Position in the fixed order to start at.
    seed, folder
        As in :func:`qm9_order`.
    """
    if start < 0 or (count is not None and count < 0):
        raise ValueError(f"start and count must be non-negative, got start={start}, count={count}")
    order = qm9_order(element, seed=seed, folder=folder)
    stop = None if count is None else start + count
    return order[start:stop]
