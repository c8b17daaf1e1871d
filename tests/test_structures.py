"""Loading structures from objects, files and SMILES, with errors that say where."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Molecule, Structure

from models.structures import StructureError, load_structure, structure_name

EXAMPLES = Path(__file__).resolve().parent.parent / "models" / "examples"


def test_example_crystals_load_with_textbook_geometry():
    cu2o = load_structure(EXAMPLES / "Cu2O.cif")
    assert isinstance(cu2o, Structure)
    assert cu2o.composition.reduced_formula == "Cu2O"
    assert cu2o.lattice.a == pytest.approx(4.2696, abs=1e-4)
    cu = [i for i, s in enumerate(cu2o) if s.specie.symbol == "Cu"][0]
    nearest = min(n.nn_distance for n in cu2o.get_neighbors(cu2o[cu], 2.5))
    assert nearest == pytest.approx(4.2696 * np.sqrt(3) / 4, abs=1e-3)  # linear O-Cu-O, 1.849 A

    cuo = load_structure(str(EXAMPLES / "CuO.cif"))
    assert cuo.composition.reduced_formula == "CuO"
    metal = load_structure(EXAMPLES / "Cu_POSCAR")
    assert metal.composition.reduced_formula == "Cu" and len(metal) == 4


@pytest.mark.parametrize("name, formula", [("ethanol", "C2H6O"), ("acetone", "C3H6O"), ("furan", "C4H4O")])
def test_example_molecules_load(name, formula):
    mol = load_structure(EXAMPLES / f"{name}.xyz")
    assert isinstance(mol, Molecule)
    assert mol.composition == Composition(formula)
    assert structure_name(EXAMPLES / f"{name}.xyz") == name
    assert structure_name(mol) == formula


def test_smiles_is_embedded_in_3d_deterministically():
    a = load_structure("CC(=O)O")
    b = load_structure("CC(=O)O")
    assert isinstance(a, Molecule)
    assert a.composition == Composition("C2H4O2")
    np.testing.assert_allclose(a.cart_coords, b.cart_coords)  # fixed seed
    assert np.ptp(a.cart_coords, axis=0).min() > 0.5  # really 3-D, not flat
    d = a.distance_matrix
    c_o = d[[i for i, s in enumerate(a) if s.specie.symbol == "C"]][:, [i for i, s in enumerate(a) if s.specie.symbol == "O"]]
    assert 1.15 < c_o.min() < 1.30  # a C=O double bond after MMFF
    assert structure_name("CC(=O)O") == "CC(=O)O"


def test_pymatgen_objects_pass_through_as_copies():
    s = Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]])
    out = load_structure(s)
    assert out == s and out is not s
    assert structure_name(s) == "Cu"


def test_pymatgen_json_round_trip(tmp_path):
    s = load_structure(EXAMPLES / "CuO.cif")
    path = tmp_path / "tenorite.json"
    path.write_text(json.dumps(s.as_dict()))
    assert load_structure(path) == s
    mpath = tmp_path / "mol.json"
    mol = load_structure(EXAMPLES / "furan.xyz")
    mpath.write_text(json.dumps(mol.as_dict()))
    assert isinstance(load_structure(mpath), Molecule)
    assert structure_name(path) == "tenorite"


def test_bad_cif_names_the_file(tmp_path):
    path = tmp_path / "broken.cif"
    path.write_text("data_x\n_cell_length_a 3.0\nloop_\n_atom_site_label\n")
    with pytest.raises(StructureError, match="broken.cif"):
        load_structure(path)


def test_bad_xyz_names_file_and_line(tmp_path):
    path = tmp_path / "bad.xyz"
    path.write_text("3\ncomment\nO 0 0 0\nH 0.9 zero 0\nH 0 0.9 0\n")
    with pytest.raises(StructureError, match=r"bad\.xyz:4: coordinates must be numbers"):
        load_structure(path)
    short = tmp_path / "short.xyz"
    short.write_text("5\ncomment\nO 0 0 0\n")
    with pytest.raises(StructureError, match=r"short\.xyz: says 5 atoms but has only 1"):
        load_structure(short)
    nocount = tmp_path / "nocount.xyz"
    nocount.write_text("O 0 0 0\n")
    with pytest.raises(StructureError, match=r"nocount\.xyz:1"):
        load_structure(nocount)


def test_bad_poscar_and_json_name_the_file(tmp_path):
    poscar = tmp_path / "POSCAR"
    poscar.write_text("Cu\n1.0\n3 0 0\n0 3\n")
    with pytest.raises(StructureError, match="POSCAR"):
        load_structure(poscar)
    js = tmp_path / "x.json"
    js.write_text('{"a": 1,\n "b": }')
    with pytest.raises(StructureError, match=r"x\.json:2: invalid JSON"):
        load_structure(js)


def test_bad_smiles_names_the_smiles():
    with pytest.raises(StructureError, match=r"SMILES 'C1CC\(': .*invalid"):
        load_structure("C1CC(")


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(StructureError, match="no_such.cif: no such structure file"):
        load_structure(tmp_path / "no_such.cif")
    other = tmp_path / "data.txt"
    other.write_text("hello")
    with pytest.raises(StructureError, match="unknown structure file type"):
        load_structure(other)
    with pytest.raises(StructureError, match="cannot load a structure from int"):
        load_structure(42)


def test_disordered_crystal_is_refused(tmp_path):
    s = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    with pytest.raises(StructureError, match="disordered.*partial occupancy"):
        load_structure(s)
    path = tmp_path / "alloy.cif"
    from pymatgen.io.cif import CifWriter

    CifWriter(s).write_file(path)
    with pytest.raises(StructureError, match="alloy.cif: disordered"):
        load_structure(path)
