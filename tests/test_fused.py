"""The fused ensemble and the chunk graph builder compute what the per-member path computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from models.fused import FusedEnsemble, fuse, supports
from models.fused_painn import FusedPaiNN
from models.graph_batch import (MoleculeSpec, dense_batches, dense_from_graphs, prepare, site_arrays,
                                sparse_batches, sparse_from_graphs)
from models.graphs import BOND_TYPES, perceive_bonds
from models.predictor import load_predictor
from models.structures import load_structure

EXAMPLES = Path(__file__).resolve().parent.parent / "models" / "examples"
SMILES = ["CCO", "OCCO", "CC(=O)O", "c1ccoc1", "OC1=CC=CC=C1", "O=C=O"]
N_SMILES = ["CCN", "NCCO", "CC(=O)N", "c1ccncc1", "N#CC=O", "NC(=O)N"]


@pytest.fixture(scope="module")
def ok():
    return load_predictor("o-k", device="cpu")


@pytest.fixture(scope="module")
def models(ok):
    """The shipped molecule and crystal models by short name, loaded once."""
    return {"ok": ok, "cuk": load_predictor("cu-k", device="cpu"), "nk": load_predictor("n-k", device="cpu")}


def _smiles_of(model):
    return N_SMILES if model == "nk" else SMILES


def _crystals():
    cu = Structure(Lattice.cubic(3.615), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return [load_structure(EXAMPLES / n) for n in ("CuO.cif", "Cu2O.cif", "Cu_POSCAR")] + [cu]


def _per_member(pred, graphs):
    with torch.inference_mode():
        return pred.ensemble.forward_members(Batch.from_data_list(graphs))


@pytest.mark.parametrize("model", ["cuk"])  # o-k and n-k are PaiNN ensembles: models.fused_painn
def test_fused_members_equal_per_member_outputs(model, models):
    pred = models[model]
    assert supports(pred.ensemble)
    structures = [load_structure(s) for s in SMILES] if model == "ok" else _crystals()
    graphs = [g for s in structures for g in pred.builder.structure_graphs(s)[0]]
    ref_mean, ref_std = _per_member(pred, graphs)
    dense = dense_from_graphs(graphs)
    fused = FusedEnsemble(pred.ensemble)
    with torch.inference_mode():
        mean, std = fused.forward_members(dense.x, dense.node_mask, dense.edge_attr, dense.adj)
    assert mean.shape == ref_mean.shape == (len(pred.ensemble.members), len(graphs), len(pred.energies))
    np.testing.assert_allclose(mean.numpy(), ref_mean.numpy(), atol=2e-5)
    np.testing.assert_allclose(std.numpy(), ref_std.numpy(), atol=2e-5)
    # the members differ, so a fused pass that mixed them up would fail above
    assert float((ref_mean[0] - ref_mean[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("model", ["ok", "nk"])
def test_fused_painn_members_equal_per_member_outputs(model, models):
    pred = models[model]
    assert not supports(pred.ensemble) and isinstance(pred.fused, FusedPaiNN)
    graphs = [g for s in _smiles_of(model) for g in pred.builder.structure_graphs(load_structure(s))[0]]
    ref_mean, ref_std = _per_member(pred, graphs)
    fused = FusedPaiNN(pred.ensemble)
    with torch.inference_mode():
        mean, std = fused.forward_block(sparse_from_graphs(graphs))
    assert mean.shape == ref_mean.shape == (len(pred.ensemble.members), len(graphs), len(pred.energies))
    np.testing.assert_allclose(mean.numpy(), ref_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(std.numpy(), ref_std.numpy(), atol=1e-5)
    assert float((ref_mean[0] - ref_mean[1]).abs().max()) > 1e-3  # members differ: no mix-up passes
    # the same through the chunk builder's blocks, several of them (tiny edge budget)
    prepared = [prepare(pred.builder, load_structure(s)) for s in _smiles_of(model)]
    blocks = list(sparse_batches(pred.builder, site_arrays(pred.builder, prepared), max_graphs=4, max_edges=64))
    assert len(blocks) > 2
    out = torch.full_like(ref_mean, float("nan"))
    with torch.inference_mode():
        for block in blocks:
            out[:, torch.from_numpy(block.rows)] = fused.forward_block(block)[0]
    np.testing.assert_allclose(out.numpy(), ref_mean.numpy(), atol=1e-5)


def test_fuse_picks_the_fused_class(models):
    assert isinstance(fuse(models["cuk"].ensemble), FusedEnsemble)
    assert isinstance(fuse(models["ok"].ensemble), FusedPaiNN)
    with pytest.raises(ValueError, match="PaiNNNet members"):
        FusedPaiNN(models["cuk"].ensemble)


@pytest.mark.parametrize("model", ["ok", "nk", "cuk"])
def test_chunk_builder_gives_the_builders_graphs(model, models):
    pred = models[model]
    structures = [load_structure(s) for s in _smiles_of(model)] if model != "cuk" else _crystals()
    prepared = [prepare(pred.builder, s) for s in structures]
    arrays = site_arrays(pred.builder, prepared)
    graphs = [g for s in structures for g in pred.builder.structure_graphs(s)[0]]
    assert len(arrays.nodes) == len(graphs)
    seen = set()
    for block in dense_batches(pred.builder, arrays, max_graphs=3):
        for k, row in enumerate(block.rows):
            g = graphs[row]
            n = int(g.num_nodes)
            assert int(block.node_mask[k].sum()) == n and bool(block.node_mask[k, :n].all())
            np.testing.assert_allclose(block.x[k, :n].numpy(), g.x.numpy(), atol=1e-6)
            src, dst = g.edge_index
            adj = torch.zeros((n, n), dtype=torch.bool)
            adj[dst, src] = True
            assert torch.equal(block.adj[k, :n, :n], adj) and not bool(block.adj[k, n:].any())
            np.testing.assert_allclose(block.edge_attr[k, dst, src].numpy(), g.edge_attr.numpy(), atol=1e-6)
            seen.add(int(row))
    assert seen == set(range(len(graphs)))
    # the sparse blocks (PaiNN): the same nodes, positions and edges, as lists
    seen = set()
    for block in sparse_batches(pred.builder, arrays, max_graphs=3, max_edges=200):
        for k, row in enumerate(block.rows):
            g = graphs[row]
            first = int(block.absorber[k])
            n = int(g.num_nodes)
            assert int((block.batch == k).sum()) == n
            np.testing.assert_allclose(block.x[first:first + n].numpy(), g.x.numpy(), atol=1e-6)
            np.testing.assert_allclose(block.pos[first:first + n].numpy(), g.pos.numpy(), atol=1e-5)
            both = torch.cat([block.edge_attr, block.edge_attr])  # edge h + e reverses edge e
            mine = {(int(a) - first, int(b) - first): e for (a, b), e in
                    zip(block.edge_index.t().tolist(), both) if first <= a < first + n}
            theirs = {(int(a), int(b)): e for (a, b), e in zip(g.edge_index.t().tolist(), g.edge_attr)}
            assert mine.keys() == theirs.keys()
            for key, e in theirs.items():
                np.testing.assert_allclose(mine[key].numpy(), e.numpy(), atol=1e-6)
            seen.add(int(row))
    assert seen == set(range(len(graphs)))


def _fused_and_per_member(pred, structures):
    """``pred``'s predictions of ``structures`` through its fused path and member by member
    (empty caches both times); they must agree to 1e-5."""
    pred.clear_cache()
    fast = pred.predict(structures)
    fused, pred.fused = pred.fused, None
    try:
        pred.clear_cache()
        slow = pred.predict(structures)
    finally:
        pred.fused = fused
        pred.clear_cache()
    np.testing.assert_allclose(fast.mean, slow.mean, atol=1e-5)
    np.testing.assert_allclose(fast.std, slow.std, atol=1e-5)
    return fast, slow


def test_predict_fused_equals_per_member_path(models):
    for pred, structures in ((models["ok"], [load_structure(s) for s in SMILES]),
                             (models["nk"], [load_structure(s) for s in N_SMILES]), (models["cuk"], _crystals())):
        _fused_and_per_member(pred, structures)


def test_molecule_spec_equals_pymatgen_molecule(ok):
    mols = [load_structure(s) for s in SMILES[:4]]
    specs = [MoleculeSpec(tuple(str(site.specie) for site in m), m.cart_coords, 0, f"m{i}") for i, m in enumerate(mols)]
    a = ok.predict_prepared([prepare(ok.builder, m) for m in mols])
    b = ok.predict_prepared([prepare(ok.builder, s) for s in specs])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_fast_bond_perception_matches_rdkit_default():
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    for smiles in ("c1ccoc1", "CC(=O)O", "C#CC=O", "OC1=CC=CC=C1", "[NH3+]CC([O-])=O"):
        mol = load_structure(smiles)
        symbols = [str(site.specie) for site in mol]
        charge = int(round(mol.charge))
        ours = perceive_bonds(symbols, mol.cart_coords, charge=charge)
        block = f"{len(symbols)}\n\n" + "\n".join(
            f"{s} {x:.8f} {y:.8f} {z:.8f}" for s, (x, y, z) in zip(symbols, mol.cart_coords.tolist()))
        ref = Chem.RWMol(Chem.MolFromXYZBlock(block))
        rdDetermineBonds.DetermineBonds(ref, charge=charge)
        order = Chem.GetAdjacencyMatrix(ref, useBO=True)
        expect = np.full(order.shape, BOND_TYPES.index("none"))
        for value, kind in ((1.0, "single"), (1.5, "aromatic"), (2.0, "double"), (3.0, "triple")):
            expect[order == value] = BOND_TYPES.index(kind)
        np.testing.assert_array_equal(ours, expect)
    assert (perceive_bonds([str(s.specie) for s in load_structure("c1ccoc1")],
                           load_structure("c1ccoc1").cart_coords) == BOND_TYPES.index("aromatic")).sum() == 10


def test_fused_painn_keeps_the_card_metrics_on_validation_molecules(ok, qm9_o_k_jsonl):
    """Every validation molecule of the o-k card's split: the fused and per-member predictions
    agree to 1e-5, so the metrics computed from them (the card's) are the same."""
    from models.readers import split_ids
    from models.spectra import spectrum_metrics
    from models.training import default_data_paths, read_records

    # the card's data: the shared set (the fixture skips without it) plus the extension under data/,
    # as many records as the card saw (later snapshots append molecules to the extension)
    records, _ = read_records("o-k", default_data_paths("o-k"), limit=int(ok.card["data"]["records"]))
    val = set(split_ids([r.record_id for r in records], seed=int(ok.card.get("seed", 0)))["val"])
    molecules = [r.structure for r in records if r.record_id in val]
    assert len(molecules) == ok.card["split"]["val_records"]
    fast, slow = _fused_and_per_member(ok, molecules)
    m = spectrum_metrics(ok.energies, slow.mean, fast.mean)
    assert m["mse"] < 1e-10 and m["median_pearson"] > 1 - 1e-9


def test_compiled_pass_equals_eager_pass(ok):
    """``Predictor.compile`` (torch.compile of the fused pass) changes the speed, not the spectra;
    compiling twice is a no-op."""
    from models.predictor import Predictor

    fresh = Predictor(ok.path, torch.device("cpu"))  # not the cached predictor the other tests use
    prepared = [prepare(fresh.builder, load_structure(s)) for s in SMILES]
    eager = fresh.predict_prepared(prepared)
    assert fresh.compile() is fresh and fresh.compiled
    forward = fresh._forward_block
    assert fresh.compile()._forward_block is forward
    compiled = fresh.predict_prepared(prepared)
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_compile_needs_a_fused_pass(ok):
    from models.predictor import Predictor

    fresh = Predictor(ok.path, torch.device("cpu"))
    fresh.fused = None
    with pytest.raises(ValueError, match="no fused pass to compile"):
        fresh.compile()
