"""Regenerate the example structures in this folder (run: ``python -m models.examples.make_examples``).

Crystals are built from textbook lattice parameters and Wyckoff positions, molecules are embedded
from SMILES with RDKit (fixed seed, MMFF), so every file here is reproducible from this script.

- ``Cu2O.cif``: cuprite, Pn-3m, a = 4.2696 A; Cu on 4b, O on 2a (one Cu site, Cu-O 1.85 A).
- ``CuO.cif``: tenorite, C2/c, a = 4.6837, b = 3.4226, c = 5.1288 A, beta = 99.54 deg;
  Cu 4c (1/4, 1/4, 0), O 4e (0, 0.4184, 1/4) (Asbrink & Norrby 1970).
- ``Cu_POSCAR``: fcc copper, a = 3.615 A, conventional cell.
- ``ethanol.xyz``, ``acetone.xyz``, ``furan.xyz``: O-containing molecules (RDKit ETKDG + MMFF).
"""

from __future__ import annotations

from pathlib import Path

from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

from models.structures import molecule_from_smiles

HERE = Path(__file__).resolve().parent
MOLECULES = {"ethanol": "CCO", "acetone": "CC(C)=O", "furan": "c1ccoc1"}


def cu2o() -> Structure:
    """Cuprite in its conventional cubic cell (origin at O), written out in P1 coordinates."""
    cu = [[0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]]
    o = [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]
    return Structure(Lattice.cubic(4.2696), ["Cu"] * 4 + ["O"] * 2, cu + o)


def cuo() -> Structure:
    lattice = Lattice.monoclinic(4.6837, 3.4226, 5.1288, 99.54)
    return Structure.from_spacegroup("C2/c", lattice, ["Cu", "O"], [[0.25, 0.25, 0.0], [0.0, 0.4184, 0.25]])


def cu_metal() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0.0, 0.0, 0.0]])


def main(folder: Path = HERE) -> list[Path]:
    folder = Path(folder)
    written = []
    for name, structure in [("Cu2O", cu2o()), ("CuO", cuo())]:
        path = folder / f"{name}.cif"
        CifWriter(structure, symprec=0.01).write_file(path)
        written.append(path)
    path = folder / "Cu_POSCAR"
    Poscar(cu_metal(), comment="Cu fcc a=3.615").write_file(path)
    written.append(path)
    for name, smiles in MOLECULES.items():
        path = folder / f"{name}.xyz"
        molecule_from_smiles(smiles).to(filename=str(path), fmt="xyz")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in main():
        print(p)
