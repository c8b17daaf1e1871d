"""Load structures from anything a user may hand us: pymatgen objects, files or SMILES.

``load_structure`` is the one entry point used by the predictor, the readers' users and the
ranking engine. It returns a pymatgen :class:`~pymatgen.core.Structure` (periodic crystal) or
:class:`~pymatgen.core.Molecule` (finite cluster), and raises :class:`StructureError` with a
message naming the file (and line where known) or the SMILES string and what went wrong.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from pymatgen.core import IMolecule, IStructure, Molecule, Structure

StructureLike = Union[Structure, Molecule, str, os.PathLike]

#: Seed of RDKit's ETKDG embedding, fixed so a SMILES always gives the same geometry.
SMILES_EMBED_SEED = 20240229

_CIF_SUFFIXES = {".cif", ".mcif"}
_POSCAR_SUFFIXES = {".vasp", ".poscar", ".contcar"}
_XYZ_SUFFIXES = {".xyz"}
_JSON_SUFFIXES = {".json"}
_POSCAR_NAMES = ("POSCAR", "CONTCAR")


class StructureError(ValueError):
    """A structure could not be loaded; the message names the file, line or SMILES."""


def _is_poscar_name(path: Path) -> bool:
    name = path.name.upper()
    return path.suffix.lower() in _POSCAR_SUFFIXES or any(n in name for n in _POSCAR_NAMES)


def _looks_like_path(text: str) -> bool:
    path = Path(text)
    suffix = path.suffix.lower()
    known = _CIF_SUFFIXES | _POSCAR_SUFFIXES | _XYZ_SUFFIXES | _JSON_SUFFIXES
    return suffix in known or _is_poscar_name(path) or os.path.exists(text)


def _check_ordered(structure: Structure | Molecule, where: str, allow_disordered: bool = False) -> Structure | Molecule:
    if not structure.is_ordered and not allow_disordered:
        disordered = [
            f"site {i} ({site.species})" for i, site in enumerate(structure) if not site.is_ordered
        ]
        raise StructureError(
            f"{where}: disordered structure (partial occupancy at {', '.join(disordered[:5])}"
            f"{', ...' if len(disordered) > 5 else ''}); candidate libraries approximate it by ordered "
            "samples (models.disorder.ordered_samples); order it yourself for a single structure"
        )
    if len(structure) == 0:
        raise StructureError(f"{where}: structure has no atoms")
    return structure


def _read_cif(path: Path) -> Structure:
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = CifParser(path, occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False)
    except Exception as exc:  # pymatgen raises ValueError/KeyError/IndexError on bad CIFs
        raise StructureError(f"{path}: could not parse CIF: {exc}") from exc
    if not structures:
        raise StructureError(f"{path}: CIF holds no structure")
    if len(structures) > 1:
        raise StructureError(f"{path}: CIF holds {len(structures)} structures; give one per file")
    return structures[0]


def _read_poscar(path: Path) -> Structure:
    from pymatgen.io.vasp import Poscar

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Poscar.from_file(path, check_for_potcar=False).structure
    except Exception as exc:
        raise StructureError(f"{path}: could not parse POSCAR: {exc}") from exc


def _read_xyz(path: Path) -> Molecule:
    """A plain XYZ reader that says which line is wrong (pymatgen's does not)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StructureError(f"{path}: cannot read XYZ file: {exc}") from exc
    if not lines or not lines[0].strip():
        raise StructureError(f"{path}:1: XYZ file must start with the number of atoms")
    try:
        n_atoms = int(lines[0].split()[0])
    except ValueError:
        raise StructureError(
            f"{path}:1: first line must be the number of atoms, found {lines[0].strip()!r}"
        ) from None
    if n_atoms <= 0:
        raise StructureError(f"{path}:1: number of atoms must be positive, found {n_atoms}")
    if len(lines) < n_atoms + 2:
        raise StructureError(
            f"{path}: says {n_atoms} atoms but has only {max(len(lines) - 2, 0)} atom lines"
        )
    species: list[str] = []
    coords = np.empty((n_atoms, 3))
    for i in range(n_atoms):
        lineno = i + 3
        parts = lines[i + 2].split()
        if len(parts) < 4:
            raise StructureError(
                f"{path}:{lineno}: expected 'element x y z', found {lines[i + 2].strip()!r}"
            )
        try:
            coords[i] = [float(v) for v in parts[1:4]]
        except ValueError:
            raise StructureError(
                f"{path}:{lineno}: coordinates must be numbers, found {' '.join(parts[1:4])!r}"
            ) from None
        if not np.all(np.isfinite(coords[i])):
            raise StructureError(f"{path}:{lineno}: non-finite coordinate")
        symbol = parts[0]
        if symbol.isdigit():
            from pymatgen.core import Element

            try:
                symbol = Element.from_Z(int(symbol)).symbol
            except ValueError:
                raise StructureError(f"{path}:{lineno}: unknown atomic number {parts[0]!r}") from None
        species.append(symbol)
    try:
        return Molecule(species, coords)
    except Exception as exc:
        raise StructureError(f"{path}: invalid molecule: {exc}") from exc


def _read_json(path: Path) -> Structure | Molecule:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StructureError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    except OSError as exc:
        raise StructureError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(doc, dict):
        raise StructureError(f"{path}: expected a pymatgen Structure/Molecule dict (as_dict())")
    cls = doc.get("@class")
    try:
        if cls in ("Structure", "IStructure") or (cls is None and "lattice" in doc):
            return Structure.from_dict(doc)
        if cls in ("Molecule", "IMolecule") or (cls is None and "sites" in doc):
            return Molecule.from_dict(doc)
    except Exception as exc:
        raise StructureError(f"{path}: invalid pymatgen {cls or 'structure'} dict: {exc}") from exc
    raise StructureError(
        f"{path}: JSON is not a pymatgen Structure or Molecule (found @class={cls!r})"
    )


def read_structure_file(path: str | os.PathLike, *, allow_disordered: bool = False) -> Structure | Molecule:
    """Read a CIF, POSCAR/CONTCAR/``*.vasp``, XYZ or pymatgen-JSON file.

    Parameters
    ----------
    path
        The file. The format is chosen from the name: ``*.cif``; ``POSCAR*``, ``CONTCAR*``,
        ``*.vasp``; ``*.xyz``; ``*.json`` (``Structure.as_dict()`` / ``Molecule.as_dict()``).

    Raises
    ------
    StructureError
        The file is missing, of unknown type, unparsable, or disordered (unless
        ``allow_disordered``: partially occupied crystals are then returned as read).
    """
    path = Path(path)
    if not path.is_file():
        raise StructureError(f"{path}: no such structure file")
    suffix = path.suffix.lower()
    if suffix in _CIF_SUFFIXES:
        structure = _read_cif(path)
    elif suffix in _XYZ_SUFFIXES:
        structure = _read_xyz(path)
    elif suffix in _JSON_SUFFIXES:
        structure = _read_json(path)
    elif _is_poscar_name(path):
        structure = _read_poscar(path)
    else:
        raise StructureError(
            f"{path}: unknown structure file type {suffix or path.name!r}; expected .cif, "
            "POSCAR/CONTCAR/.vasp, .xyz or pymatgen .json"
        )
    return _check_ordered(structure, str(path), allow_disordered)


def molecule_from_smiles(smiles: str, seed: int = SMILES_EMBED_SEED) -> Molecule:
    """A 3-D :class:`Molecule` from SMILES: RDKit, explicit H, ETKDG (fixed seed), MMFF.

    Raises
    ------
    StructureError
        The SMILES does not parse, or no 3-D geometry can be embedded.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            raise StructureError(f"SMILES {smiles!r}: RDKit cannot parse it (invalid SMILES)")
        mol = Chem.AddHs(mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = seed
        if AllChem.EmbedMolecule(mol, params) != 0:
            params.useRandomCoords = True
            if AllChem.EmbedMolecule(mol, params) != 0:
                raise StructureError(f"SMILES {smiles!r}: RDKit ETKDG could not embed a 3-D geometry")
        if AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
        else:
            AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    finally:
        RDLogger.EnableLog("rdApp.*")
    coords = mol.GetConformer().GetPositions()
    species = [atom.GetSymbol() for atom in mol.GetAtoms()]
    # the net charge travels with the molecule so bond perception can use it (e.g. acetate)
    return Molecule(species, coords, charge=Chem.GetFormalCharge(mol), properties={"smiles": smiles})


def load_structure(source: StructureLike, *, allow_disordered: bool = False) -> Structure | Molecule:
    """A pymatgen ``Structure`` or ``Molecule`` from an object, a file or a SMILES string.

    Parameters
    ----------
    source
        A pymatgen ``Structure``/``Molecule`` (returned as a mutable copy); a path to a CIF,
        POSCAR/CONTCAR/``*.vasp``, XYZ or pymatgen-JSON file; or a SMILES string (embedded in 3-D
        with RDKit: explicit hydrogens, ETKDG with seed :data:`SMILES_EMBED_SEED`, MMFF).
        A string is read as a path when it names an existing file or has a structure-file
        extension or name, otherwise as SMILES.

    Returns
    -------
    Structure or Molecule

    Raises
    ------
    StructureError
        With the file (and line where known) or the SMILES, and what went wrong; also for
        disordered (partially occupied) structures unless ``allow_disordered``.
    """
    if isinstance(source, (Structure, IStructure)):
        return _check_ordered(Structure.from_sites(source), f"structure {source.formula}", allow_disordered)
    if isinstance(source, (Molecule, IMolecule)):
        return _check_ordered(Molecule.from_sites(source), f"molecule {source.formula}", allow_disordered)
    if isinstance(source, os.PathLike):
        return read_structure_file(source, allow_disordered=allow_disordered)
    if isinstance(source, str):
        text = source.strip()
        if not text:
            raise StructureError("empty string is neither a structure file nor a SMILES")
        if _looks_like_path(text):
            return read_structure_file(text, allow_disordered=allow_disordered)
        return molecule_from_smiles(text)
    raise StructureError(
        f"cannot load a structure from {type(source).__name__}; give a pymatgen Structure or "
        "Molecule, a file path or a SMILES string"
    )


def structure_name(source: StructureLike) -> str:
    """A short human-readable name: file stem, the SMILES itself, or the reduced formula."""
    if isinstance(source, (Structure, IStructure, Molecule, IMolecule)):
        props = getattr(source, "properties", None) or {}
        for key in ("name", "material_id", "smiles"):
            if isinstance(props.get(key), str) and props[key]:
                return props[key]
        if isinstance(source, (Structure, IStructure)):
            return source.composition.reduced_formula
        return source.composition.hill_formula.replace(" ", "")
    if isinstance(source, os.PathLike):
        path = Path(source)
        if path.name.upper() in _POSCAR_NAMES and path.parent.name:
            return path.parent.name  # <material-id>/POSCAR
        return path.stem
    if isinstance(source, str):
        text = source.strip()
        if _looks_like_path(text):
            return structure_name(Path(text))
        return text
    raise StructureError(f"cannot name a structure given as {type(source).__name__}")

