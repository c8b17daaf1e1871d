"""The PaiNN-style and descriptor families: shapes, invariances, a training step, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric")
from torch_geometric.data import Batch  # noqa: E402

from models.descriptors import DescriptorNet, absorber_acsf, descriptor_dim  # noqa: E402
from models.fit import feature_batches, feature_forward, fit_member, graph_forward, prebuild_batches  # noqa: E402
from models.gnn import XASEnsemble, build_net, gaussian_nll  # noqa: E402
from models.graphs import GraphBuilder  # noqa: E402
from models.painn import PaiNNNet  # noqa: E402

ELEMENTS = ["C", "H", "N", "O"]


def _builder() -> GraphBuilder:
    return GraphBuilder("O", ELEMENTS, kind="molecule")


def _molecule(smiles: str):
    from models.structures import load_structure

    return load_structure(smiles)


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _configs(builder: GraphBuilder, out_dim: int = 11) -> dict[str, dict]:
    base = {"node_dim": builder.node_dim, "edge_dim": builder.edge_dim, "out_dim": out_dim}
    return {
        "painn": {**base, "family": "painn", "hidden": 16, "layers": 2, "cutoff": builder.edge_cutoff},
        "acsf": {**base, "family": "acsf", "n_elements": len(builder.elements), "hidden": 32, "layers": 2,
                 "n_radial": 6, "n_angular": 3, "cutoff": builder.cluster_radius, "dropout": 0.0},
    }


def _batch(graphs):
    return Batch.from_data_list(graphs)


def _run(net, batch):
    with torch.no_grad():
        return graph_forward(net.eval(), batch)


@pytest.fixture(scope="module")
def graphs():
    b = _builder()
    out = []
    for smiles in ("CC(=O)O", "OCCO", "O=CNC"):
        gs, _ = b.structure_graphs(_molecule(smiles))
        out.extend(gs)
    return out


def test_site_graphs_carry_positions_relative_to_the_absorber(graphs):
    for g in graphs:
        assert g.pos.shape == (g.num_nodes, 3)
        torch.testing.assert_close(g.pos[0], torch.zeros(3))
        torch.testing.assert_close(g.pos.norm(dim=1), g.absorber_distance, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["painn", "acsf"])
def test_forward_shapes_and_positive_std(graphs, family):
    torch.manual_seed(0)
    net = build_net(_configs(_builder())[family])
    mean, std = _run(net, _batch(graphs))
    assert mean.shape == std.shape == (len(graphs), 11)
    assert torch.isfinite(mean).all() and (std > 0).all()
    assert net.config()["family"] == family


@pytest.mark.parametrize("family", ["painn", "acsf"])
def test_spectrum_invariant_to_rotation_and_atom_order(family):
    torch.manual_seed(0)
    b = _builder()
    net = build_net(_configs(b)[family]).eval()
    mol = _molecule("OCC(=O)N")
    ref, _ = b.structure_graphs(mol)
    rotated = mol.copy()
    rotated.translate_sites(list(range(len(mol))), [0.3, -1.2, 2.0])
    from pymatgen.core import Molecule

    rot = Molecule([s.specie for s in rotated], rotated.cart_coords @ _rotation(3).T)
    order = np.random.default_rng(1).permutation(len(rot))
    shuffled = Molecule([rot[i].specie for i in order], rot.cart_coords[order])
    got, _ = b.structure_graphs(shuffled)
    # the same absorbers, possibly in another order: compare the sets of spectra
    a = _run(net, _batch(ref))[0]
    c = _run(net, _batch(got))[0]
    for row in a:
        assert torch.min((c - row).abs().max(1).values) < 1e-4


def test_painn_sees_angles_that_distances_do_not_show():
    """Water bent at two angles, edges cut below the H-H distance: node and edge features are the
    same, so a distance-only network cannot tell them apart; PaiNN can (by far more than the
    float noise of rotating one of them)."""
    from pymatgen.core import Molecule

    torch.manual_seed(0)
    b = _builder()
    cutoff = 1.5
    net = PaiNNNet(**{**_configs(b)["painn"], "cutoff": cutoff}).eval()

    def graph(theta, rotation=None):
        coords = np.array([[0, 0, 0], [0.96, 0, 0], [0.96 * math.cos(theta), 0.96 * math.sin(theta), 0]])
        if rotation is not None:
            coords = coords @ rotation.T
        g = b.site_graph(Molecule(["O", "H", "H"], coords), 0)
        keep = g.edge_length < cutoff
        g.edge_index, g.edge_attr = g.edge_index[:, keep], g.edge_attr[keep]
        return g

    g1, g2, g1r = graph(math.radians(104.5)), graph(math.radians(140.0)), graph(math.radians(104.5), _rotation(5))
    torch.testing.assert_close(g1.x, g2.x)
    torch.testing.assert_close(g1.edge_attr, g2.edge_attr)
    m1, m2, m1r = (_run(net, _batch([g]))[0] for g in (g1, g2, g1r))
    noise = float((m1 - m1r).abs().max())
    assert float((m1 - m2).abs().max()) > 20 * max(noise, 1e-7)


def test_acsf_features_shape_and_angular_part_changes_with_angle():
    from pymatgen.core import Molecule

    b = _builder()
    g = [b.site_graph(Molecule(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [0.96 * math.cos(t), 0.96 * math.sin(t), 0]]), 0)
         for t in (math.radians(104.5), math.radians(140.0))]
    batch = _batch(g)
    f = absorber_acsf(batch.x, batch.pos, batch.batch, batch.absorber_index, 4, n_radial=6, n_angular=3)
    assert f.shape == (2, descriptor_dim(4, 6, 3))
    radial = 4 * 6
    torch.testing.assert_close(f[0, :radial], f[1, :radial])
    assert not torch.allclose(f[0, radial:], f[1, radial:])


@pytest.mark.parametrize("family", ["painn", "acsf"])
def test_training_steps_reduce_the_loss(graphs, family):
    torch.manual_seed(0)
    cfg = _configs(_builder())[family]
    net = build_net(cfg)
    y = torch.randn(len(graphs), 11, generator=torch.Generator().manual_seed(1))
    for g, row in zip(graphs, y):
        g.y = row.view(1, -1)
    batch = _batch(graphs)
    if family == "acsf":
        net.set_feature_statistics(net.features(batch.x, batch.batch, batch.absorber_index, batch.pos))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = gaussian_nll(*graph_forward(net.train(), batch), batch.y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1


def test_fit_member_early_stops_and_returns_the_best_state(graphs):
    torch.manual_seed(0)
    b = _builder()
    net = build_net(_configs(b)["acsf"])
    y = torch.randn(len(graphs), 11, generator=torch.Generator().manual_seed(2))
    f = net.features(*(lambda bt: (bt.x, bt.batch, bt.absorber_index, bt.pos))(_batch(graphs)))
    net.set_feature_statistics(f)
    train = feature_batches(f, y, 4, seed=0)
    val = feature_batches(f, y, 64, shuffle=False)
    state, summary = fit_member(net, train, val, y, torch.zeros(11), 1.0, forward=feature_forward,
                                patience=5, max_epochs=400, seed=0)
    assert summary["stopped"] in ("early_stopping", "max_epochs")
    assert summary["best_val_mse"] == min(h["val_mse"] for h in summary["history"]) or \
        abs(summary["best_val_mse"] - min(h["val_mse"] for h in summary["history"])) < 1e-6
    assert summary["best_val_mse"] < float((y**2).mean())


def test_prebuilt_batches_cover_every_graph_once(graphs):
    batches = prebuild_batches(graphs, 2, seed=3)
    assert sum(bt.num_graphs for bt in batches) == len(graphs)
    assert all(hasattr(bt, "pos") for bt in batches)


@pytest.mark.parametrize("family", ["painn", "acsf"])
def test_ensemble_save_load_roundtrip_weights_only(graphs, family, tmp_path):
    torch.manual_seed(0)
    cfg = _configs(_builder())[family]
    ens = XASEnsemble(cfg, members=2, offset=torch.linspace(0, 1, 11), scale=0.5, calibration=1.3)
    if family == "acsf":
        batch = _batch(graphs)
        for m in ens.members:
            m.set_feature_statistics(m.features(batch.x, batch.batch, batch.absorber_index, batch.pos) + 1.0)
    path = tmp_path / "w.pt"
    torch.save({"config": {"net": cfg}, "state_dict": ens.state_dict()}, path)
    payload = torch.load(path, weights_only=True)
    back = XASEnsemble(payload["config"]["net"], members=2)
    back.load_state_dict(payload["state_dict"])
    batch = _batch(graphs)
    a = ens.eval()(batch)
    c = back.eval()(batch)
    torch.testing.assert_close(a[0], c[0])
    torch.testing.assert_close(a[1], c[1])


def test_unknown_family_and_missing_positions_are_rejected(graphs):
    with pytest.raises(ValueError, match="family"):
        build_net({"family": "dimenet", "node_dim": 3, "edge_dim": 3, "out_dim": 3})
    net = build_net(_configs(_builder())["painn"])
    batch = _batch(graphs)
    with pytest.raises(ValueError, match="pos"):
        net(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.absorber_index)
    with pytest.raises(ValueError, match="n_elements"):
        DescriptorNet(5, 3, 4, n_elements=9)
