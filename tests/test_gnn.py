"""The network on small synthetic graphs: shapes, positive std, permutation invariance, loss."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")
from torch_geometric.data import Batch, Data  # noqa: E402

from models.gnn import XASEnsemble, XASNet, combine_members, gaussian_nll  # noqa: E402


def _graph(n: int, seed: int, node_dim: int = 6, edge_dim: int = 5) -> Data:
    g = torch.Generator().manual_seed(seed)
    src, dst = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    mask = src != dst
    edge_index = torch.stack([src[mask], dst[mask]])
    return Data(
        x=torch.randn(n, node_dim, generator=g),
        edge_index=edge_index,
        edge_attr=torch.randn(edge_index.shape[1], edge_dim, generator=g),
        absorber_index=torch.tensor([0]),
    )


@pytest.mark.parametrize("conv", ["nnconv", "transformer"])
@pytest.mark.parametrize("readout", ["set2set", "absorber"])
def test_forward_shapes_and_positive_std(conv, readout):
    torch.manual_seed(0)
    net = XASNet(6, 5, 17, hidden=16, steps=2, edge_hidden=8, conv=conv, readout=readout)
    batch = Batch.from_data_list([_graph(4, 1), _graph(7, 2), _graph(3, 3)])
    mean, std = net(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.absorber_index)
    assert mean.shape == std.shape == (3, 17)
    assert torch.isfinite(mean).all()
    assert (std > 0).all()


def test_batched_equals_single_and_node_order_invariant():
    torch.manual_seed(0)
    net = XASNet(6, 5, 9, hidden=16, steps=2, edge_hidden=8, readout="absorber").eval()
    g = _graph(6, 4)
    single = net(g.x, g.edge_index, g.edge_attr, torch.zeros(6, dtype=torch.long), g.absorber_index)
    batch = Batch.from_data_list([_graph(5, 9), g])
    both = net(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.absorber_index)
    torch.testing.assert_close(both[0][1], single[0][0], atol=1e-5, rtol=1e-5)
    # relabel the nodes: the absorber moves to position 3, the prediction must not change
    perm = torch.tensor([3, 0, 5, 1, 2, 4])  # new -> old
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(6)
    permuted = net(g.x[perm], inv[g.edge_index], g.edge_attr, torch.zeros(6, dtype=torch.long),
                   inv[g.absorber_index])
    torch.testing.assert_close(permuted[0], single[0], atol=1e-5, rtol=1e-5)


def test_absorber_readout_depends_on_absorber_choice():
    torch.manual_seed(0)
    net = XASNet(6, 5, 9, hidden=16, steps=2, edge_hidden=8, readout="absorber").eval()
    g = _graph(5, 7)
    batch = torch.zeros(5, dtype=torch.long)
    a = net(g.x, g.edge_index, g.edge_attr, batch, torch.tensor([0]))[0]
    b = net(g.x, g.edge_index, g.edge_attr, batch, torch.tensor([2]))[0]
    assert not torch.allclose(a, b)


def test_bad_hyper_parameters_are_rejected():
    with pytest.raises(ValueError, match="conv"):
        XASNet(3, 3, 3, conv="gcn")
    with pytest.raises(ValueError, match="readout"):
        XASNet(3, 3, 3, readout="sum")


def test_reset_parameters_reinitialises():
    torch.manual_seed(0)
    net = XASNet(6, 5, 9, hidden=16, steps=1, edge_hidden=8)
    before = [p.detach().clone() for p in net.parameters()]
    net.reset_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_gaussian_nll_prefers_correct_mean_and_std():
    y = torch.zeros(4, 3)
    good = gaussian_nll(torch.zeros(4, 3), torch.full((4, 3), 0.1), y, beta=0.0)
    off = gaussian_nll(torch.ones(4, 3), torch.full((4, 3), 0.1), y, beta=0.0)
    assert good < off
    # for an error of 1, the NLL is minimised at std = 1
    err = torch.ones(4, 3)
    losses = [float(gaussian_nll(err, torch.full((4, 3), s), y, beta=0.0)) for s in (0.3, 1.0, 3.0)]
    assert losses[1] < losses[0] and losses[1] < losses[2]


def test_ensemble_mixture_and_calibration():
    mean = torch.tensor([[[0.0, 1.0]], [[2.0, 1.0]]])  # 2 members, 1 graph, 2 points
    std = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]]])
    mu, sd = combine_members(mean, std, 2.0)
    torch.testing.assert_close(mu, torch.tensor([[1.0, 1.0]]))
    # var = mean var (1) + var of means (1 at point 0, 0 at point 1); times calibration 2
    torch.testing.assert_close(sd, torch.tensor([[2.0 * 2.0**0.5, 2.0]]))


def test_ensemble_state_dict_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = XASNet(6, 5, 9, hidden=16, steps=1, edge_hidden=8).config()
    ens = XASEnsemble(cfg, members=2, offset=torch.linspace(0, 1, 9), scale=0.5, calibration=1.5)
    path = tmp_path / "e.pt"
    torch.save({"config": cfg, "state_dict": ens.state_dict()}, path)
    payload = torch.load(path, weights_only=True)
    other = XASEnsemble(payload["config"], members=2)
    other.load_state_dict(payload["state_dict"])
    batch = Batch.from_data_list([_graph(4, 1), _graph(5, 2)])
    ens.eval(), other.eval()
    a, b = ens(batch), other(batch)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert float(other.calibration) == 1.5
