"""Absorber-centred graphs: invariances, periodic images, multiplicities, bonds, errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Molecule, Structure
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch

from models.graphs import BOND_TYPES, GraphBuilder, NoAbsorberError, UnsupportedElementError
from models.structures import load_structure

EXAMPLES = Path(__file__).resolve().parent.parent / "models" / "examples"
ORGANIC = ["H", "C", "N", "O", "F"]


def _crystal_builder(**kw) -> GraphBuilder:
    return GraphBuilder("Cu", ["O", "Cu", "Ag", "Cl"], "crystal", **kw)


def _mol_builder(**kw) -> GraphBuilder:
    return GraphBuilder("O", ORGANIC, "molecule", **kw)


def _edge_multiset(g) -> np.ndarray:
    rows = np.round(g.edge_attr.numpy().astype(float), 4)
    return rows[np.lexsort(rows.T[::-1])]


def _assert_same_graph(a, b):
    assert a.num_nodes == b.num_nodes and a.num_edges == b.num_edges
    np.testing.assert_allclose(a.x.numpy(), b.x.numpy(), atol=1e-5)
    np.testing.assert_allclose(a.absorber_distance.numpy(), b.absorber_distance.numpy(), atol=1e-5)
    np.testing.assert_allclose(_edge_multiset(a), _edge_multiset(b), atol=2e-4)
    # degree sequence in canonical node order also matches
    deg_a = torch.bincount(a.edge_index[0], minlength=a.num_nodes)
    deg_b = torch.bincount(b.edge_index[0], minlength=b.num_nodes)
    assert torch.equal(deg_a.sort().values, deg_b.sort().values)
    assert int(a.absorber_index) == 0 and a.x[0, len(a.x[0]) - 1] == b.x[0, len(b.x[0]) - 1]


def test_crystal_graph_invariant_to_rotation_translation_order_and_cell():
    cuo = load_structure(EXAMPLES / "CuO.cif")
    builder = _crystal_builder()
    site = [i for i, s in enumerate(cuo) if s.specie.symbol == "Cu"][0]
    ref = builder.site_graph(cuo, site)

    rot = Rotation.from_euler("xyz", [31, -47, 112], degrees=True).as_matrix()
    rotated = Structure(Lattice(cuo.lattice.matrix @ rot.T), cuo.species, cuo.frac_coords + [0.13, -0.41, 0.27])
    _assert_same_graph(ref, builder.site_graph(rotated, site))

    perm = np.random.default_rng(0).permutation(len(cuo))
    permuted = Structure(cuo.lattice, [cuo.species[i] for i in perm], cuo.frac_coords[perm])
    _assert_same_graph(ref, builder.site_graph(permuted, int(np.flatnonzero(perm == site)[0])))

    supercell = cuo * (2, 1, 2)  # a bigger cell, same crystal: same cluster
    _assert_same_graph(ref, builder.site_graph(supercell, site * 4))


def test_molecule_graph_invariant_to_rotation_translation_and_order():
    mol = load_structure(EXAMPLES / "acetone.xyz")
    builder = _mol_builder()
    o = [i for i, s in enumerate(mol) if s.specie.symbol == "O"][0]
    ref = builder.site_graph(mol, o)
    rng = np.random.default_rng(1)
    rot = Rotation.random(random_state=7).as_matrix()
    perm = rng.permutation(len(mol))
    coords = mol.cart_coords[perm] @ rot.T + [3.0, -2.0, 10.0]
    moved = Molecule([mol.species[i] for i in perm], coords)
    _assert_same_graph(ref, builder.site_graph(moved, int(np.flatnonzero(perm == o)[0])))


def test_periodic_images_fill_the_cluster_of_a_one_atom_cell():
    fcc = Structure(Lattice([[0, 1.8075, 1.8075], [1.8075, 0, 1.8075], [1.8075, 1.8075, 0]]), ["Cu"], [[0, 0, 0]])
    g = _crystal_builder(cluster_radius=6.0).site_graph(fcc, 0)
    # fcc shells within 6 A for a = 3.615 A: 12 + 6 + 24 + 12 + 24 neighbours
    assert g.num_nodes == 1 + 78
    d = g.absorber_distance.numpy()
    assert d[0] == 0 and np.all(np.diff(d) >= -1e-6)
    np.testing.assert_allclose(d[1:13], 3.615 / np.sqrt(2), atol=1e-4)
    assert np.all(d[13:] > 3.0)
    # the absorber's edges within 4 A: first two shells
    assert int((g.edge_index[0] == 0).sum()) == 18
    assert g.edge_length.min() == pytest.approx(3.615 / np.sqrt(2), abs=1e-4)


def test_multiplicity_weights_known_cases():
    builder = _crystal_builder()
    cu2o = load_structure(EXAMPLES / "Cu2O.cif")
    assert builder.absorber_sites(cu2o) == [(0, 1.0)]  # one Cu site in cuprite
    metal = load_structure(EXAMPLES / "Cu_POSCAR")
    assert builder.absorber_sites(metal) == [(0, 1.0)]

    doped = cu2o * (2, 1, 1)
    doped.replace(0, "Ag")  # 7 Cu left, no longer all equivalent
    sites = builder.absorber_sites(doped)
    weights = np.array([w for _, w in sites])
    assert len(sites) > 1 and weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights * 7, np.round(weights * 7), atol=1e-9)
    # equivalent sites really give identical graphs
    for group in builder.absorber_groups(doped):
        graphs = [builder.site_graph(doped, i) for i in group]
        for g in graphs[1:]:
            _assert_same_graph(graphs[0], g)


def test_structure_graphs_of_molecule_weights_every_absorber_equally():
    acid = load_structure("OC(=O)CC(=O)O")  # malonic acid: four O atoms
    graphs, weights = _mol_builder().structure_graphs(acid)
    assert len(graphs) == 4
    np.testing.assert_allclose(weights, 0.25)


def test_node_and_edge_dims_and_feature_layout():
    builder = _mol_builder(num_rbf=12)
    acetone = load_structure(EXAMPLES / "acetone.xyz")
    g = builder.site_graph(acetone, acetone.indices_from_symbol("O")[0])
    assert g.x.shape[1] == builder.node_dim and g.edge_attr.shape[1] == builder.edge_dim
    assert builder.edge_dim == 12 + len(BOND_TYPES)
    assert g.x.dtype == torch.float32 and g.edge_index.dtype == torch.long
    # absorber flag only on node 0; one-hot of O at the absorber
    flag = len(ORGANIC) + 5
    assert g.x[0, flag] == 1 and g.x[1:, flag].sum() == 0
    assert g.x[0, ORGANIC.index("O")] == 1
    # the absorber's C=O neighbour is joined by a double-bond edge, C-H edges are single
    bond = g.edge_attr[:, 12:]
    from_abs = g.edge_index[0] == 0
    nearest = int(torch.argmin(torch.where(from_abs, g.edge_length, torch.tensor(99.0))))
    assert bond[nearest, BOND_TYPES.index("double")] == 1
    assert g.edge_length[nearest] == pytest.approx(1.22, abs=0.05)
    assert torch.all(bond.sum(1) == 1)
    crystal = _crystal_builder()
    assert crystal.edge_dim == crystal.num_rbf


def test_aromatic_bonds_are_perceived():
    furan = load_structure(EXAMPLES / "furan.xyz")
    g = _mol_builder().site_graph(furan, furan.indices_from_symbol("O")[0])
    counts = g.edge_attr[:, -len(BOND_TYPES):].sum(0)
    assert counts[BOND_TYPES.index("aromatic")] == 10  # five ring bonds, both directions
    assert counts[BOND_TYPES.index("double")] == 0


def test_config_round_trip_through_json():
    builder = _crystal_builder(cluster_radius=5.0, edge_cutoff=3.5, num_rbf=10, absorber_distance_rbf=False)
    again = GraphBuilder.from_config(json.loads(json.dumps(builder.config())))
    assert again.config() == builder.config()
    assert again.node_dim == builder.node_dim == 4 + 5 + 1
    with pytest.raises(ValueError, match="unknown keys"):
        GraphBuilder.from_config({**builder.config(), "radius": 3})


def test_unsupported_element_and_missing_absorber_errors():
    builder = _crystal_builder()
    cus = Structure(Lattice.cubic(4.0), ["Cu", "S"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnsupportedElementError, match=r"element\(s\) S not supported.*knows O, Cu, Ag, Cl"):
        builder.structure_graphs(cus)
    nacl = Structure(Lattice.cubic(4.0), ["Ag", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(NoAbsorberError, match=r"AgCl.*no Cu atom"):
        builder.absorber_sites(nacl)
    cu2o = load_structure(EXAMPLES / "Cu2O.cif")
    with pytest.raises(NoAbsorberError, match="site 4 is O, not the absorber Cu"):
        builder.site_graph(cu2o, 4)
    with pytest.raises(TypeError, match="needs a periodic pymatgen Structure"):
        builder.site_graph(Molecule(["Cu"], [[0, 0, 0]]), 0)
    with pytest.raises(ValueError, match="absorber 'Zn' must be in elements"):
        GraphBuilder("Zn", ["O"], "crystal")


def test_batching_shifts_absorber_index_but_not_site_index():
    builder = _crystal_builder()
    cuo = load_structure(EXAMPLES / "CuO.cif")
    graphs = [builder.site_graph(cuo, 0), builder.site_graph(load_structure(EXAMPLES / "Cu2O.cif"), 0)]
    for g, site in zip(graphs, (0, 0)):
        g.site_index = site + 3
    batch = Batch.from_data_list(graphs)
    assert batch.absorber_index.tolist() == [0, graphs[0].num_nodes]
    assert batch.site_index.tolist() == [3, 3]


def test_qm9_molecules_build_without_bond_warnings(qm9_o_k_jsonl):
    from models.readers import read_qm9_jsonl

    records, _ = read_qm9_jsonl(qm9_o_k_jsonl, limit=40)
    builder = _mol_builder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rec in records:
            graphs, weights = builder.structure_graphs(rec.structure)
            assert [int(g.absorber_distance[0]) for g in graphs] == [0] * len(graphs)
            assert len(graphs) == len(rec.sites)
            assert {i for i, _ in builder.absorber_sites(rec.structure)} == {s.site_index for s in rec.sites}


def test_cu_crystals_from_shared_data_build(cu_k_dir):
    from models.readers import read_feff_materials

    records, _ = read_feff_materials(cu_k_dir, limit=10, progress=False)
    elements = sorted({e for r in records for e in r.structure.symbol_set})
    builder = GraphBuilder("Cu", elements, "crystal")
    for rec in records:
        for site in rec.sites:
            g = builder.site_graph(rec.structure, site.site_index)
            assert g.num_nodes > 10
            assert g.absorber_distance[1] > 1.5  # nearest neighbour, no overlapping images
            assert g.absorber_distance.max() <= 6.0 + 1e-5


def test_overconnected_qm9_cage_gets_bond_orders_after_pruning(qm9_o_k_jsonl, tmp_path):
    """qm9-103334 (CCC1(C)C2CC1C2O): covalent radii give a five-bonded C; pruning fixes it."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    from models.graphs import perceive_bonds
    from models.readers import read_qm9_jsonl

    with open(qm9_o_k_jsonl) as fh:
        line = next((ln for ln in fh if ln.startswith('{"qm9_index": 103334,')), None)
    if line is None:
        pytest.skip("qm9-103334 not in this release of the QM9 file")
    (tmp_path / "one.jsonl").write_text(line)
    records, _ = read_qm9_jsonl(tmp_path / "one.jsonl")
    rec = records[0]
    symbols = [s.specie.symbol for s in rec.structure]
    cart = rec.structure.cart_coords
    raw = Chem.RWMol(Chem.MolFromXYZBlock(f"{len(symbols)}\n\n" + "\n".join(
        f"{s} {x} {y} {z}" for s, (x, y, z) in zip(symbols, cart))))
    with pytest.raises(ValueError):  # RDKit alone finds no neutral bond ordering
        rdDetermineBonds.DetermineBonds(raw, charge=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bonds = perceive_bonds(symbols, cart)
    bonded = bonds != BOND_TYPES.index("none")
    degree = bonded.sum(1)
    assert max(degree[i] for i, s in enumerate(symbols) if s == "C") == 4
    assert np.all(bonds[bonded] == BOND_TYPES.index("single"))  # a saturated alcohol
    from_smiles = Chem.AddHs(Chem.MolFromSmiles("CCC1(C)C2CC1C2O"))
    assert bonded.sum() // 2 == from_smiles.GetNumBonds()  # same bonds as the QM9 SMILES


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_molecule_graph_invariance_property(seed):
    mol = load_structure(EXAMPLES / "furan.xyz")
    builder = _mol_builder()
    o = mol.indices_from_symbol("O")[0]
    ref = builder.site_graph(mol, o)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(mol))
    rot = Rotation.random(random_state=seed % (2**32)).as_matrix()
    coords = mol.cart_coords[perm] @ rot.T + rng.normal(scale=20.0, size=3)
    moved = Molecule([mol.species[i] for i in perm], coords)
    _assert_same_graph(ref, builder.site_graph(moved, int(np.flatnonzero(perm == o)[0])))


def test_charged_molecule_from_smiles_keeps_its_bond_orders():
    acetate = load_structure("CC(=O)[O-]")
    assert acetate.charge == -1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to connectivity-only
        graphs, _ = _mol_builder().structure_graphs(acetate)
    kinds = [g.edge_attr[g.edge_index[0] == 0, -len(BOND_TYPES):].argmax(1).tolist() for g in graphs]
    # each O has exactly one bond (to C); one is C=O, the other C-O(-)
    bonded = sorted(k for ks in kinds for k in ks if k != BOND_TYPES.index("none"))
    assert bonded == [BOND_TYPES.index("single"), BOND_TYPES.index("double")]
