"""PaiNN-style equivariant network that predicts an absorber's spectrum (mean and std).

Schütt, Unke & Gastegger, ICML 2021 ("Equivariant message passing for the prediction of tensorial
properties and molecular spectra"). Every node carries scalar features ``s`` (F) and vector
features ``v`` (3 x F). Messages along an edge ``j -> i`` mix the neighbour's scalars with a filter
of the edge (its radial basis and bond one-hot from :class:`models.graphs.GraphBuilder`, times a
cosine cutoff) and move vectors along the unit bond direction, so the scalars see bond *angles*
(through the norms and dot products of the accumulated vectors), which a distance-only MPNN
(:mod:`models.gnn`) cannot. The readout uses scalars only, so the spectrum is invariant under
rotations and translations of the input and under permutations of its atoms.

The head is that of :class:`models.gnn.XASNet`: the absorber's final scalars concatenated with
the mean over nodes, an MLP, and a mean and softplus standard deviation per energy point, so the
network is a drop-in member of :class:`models.gnn.XASEnsemble` (``family="painn"``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import Linear, Module, ModuleList, Sequential, SiLU
from torch_geometric.utils import scatter

from models.heads import mean_std, reset_mean_std

FAMILY = "painn"


def cosine_cutoff(r: Tensor, cutoff: float) -> Tensor:
    """``0.5 (cos(pi r / cutoff) + 1)`` inside the cutoff, 0 outside."""
    return 0.5 * (torch.cos(r * math.pi / cutoff) + 1.0) * (r < cutoff).to(r.dtype)


class _Message(Module):
    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.phi = Sequential(Linear(hidden, hidden), SiLU(), Linear(hidden, 3 * hidden))
        self.filter = Linear(edge_dim, 3 * hidden)

    def reset_parameters(self) -> None:
        for layer in (self.phi[0], self.phi[2], self.filter):
            layer.reset_parameters()

    def forward(self, s, v, edge_index, edge_feat, fcut, unit):
        src, dst = edge_index
        x = self.phi(s)[src] * self.filter(edge_feat) * fcut.unsqueeze(-1)
        xs, xvv, xvs = torch.split(x, self.hidden, dim=-1)
        dv = v[src] * xvv.unsqueeze(1) + xvs.unsqueeze(1) * unit.unsqueeze(-1)
        n = s.shape[0]
        ds = scatter(xs, dst, dim=0, dim_size=n, reduce="sum")
        dv = scatter(dv, dst, dim=0, dim_size=n, reduce="sum")
        return s + ds, v + dv


class _Update(Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.lin_uv = Linear(hidden, 2 * hidden, bias=False)
        self.mlp = Sequential(Linear(2 * hidden, hidden), SiLU(), Linear(hidden, 3 * hidden))

    def reset_parameters(self) -> None:
        for layer in (self.lin_uv, self.mlp[0], self.mlp[2]):
            layer.reset_parameters()

    def forward(self, s, v):
        uv, vv = torch.split(self.lin_uv(v), self.hidden, dim=-1)
        norm = torch.sqrt((vv * vv).sum(1) + 1e-8)
        a = self.mlp(torch.cat([s, norm], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, self.hidden, dim=-1)
        s = s + a_ss + a_sv * (uv * vv).sum(1)
        v = v + a_vv.unsqueeze(1) * uv
        return s, v


class PaiNNNet(Module):
    r"""PaiNN trunk with the absorber readout and mean-variance head of :class:`~models.gnn.XASNet`.

    Parameters
    ----------
    node_dim, edge_dim, out_dim : int
        Widths of node features, edge features and the output energy grid.
    hidden : int
        Width ``F`` of scalar and vector features.
    layers : int
        Message/update rounds (separate weights per round).
    cutoff : float
        Radius (A) of the cosine envelope on the filters; the graph builder's ``edge_cutoff``.
    min_std : float
        Floor of the predicted standard deviation (standardised units).
    """

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        out_dim: int,
        hidden: int = 64,
        layers: int = 3,
        cutoff: float = 4.0,
        min_std: float = 1e-3,
        family: str = FAMILY,
    ) -> None:
        super().__init__()
        if family != FAMILY:
            raise ValueError(f"PaiNNNet family must be {FAMILY!r}, got {family!r}")
        if min(node_dim, edge_dim, out_dim, hidden, layers) < 1 or not cutoff > 0:
            raise ValueError("node_dim, edge_dim, out_dim, hidden, layers and cutoff must be positive")
        self.node_dim, self.edge_dim, self.out_dim = node_dim, edge_dim, out_dim
        self.hidden, self.layers, self.cutoff, self.min_std = hidden, layers, float(cutoff), min_std
        self.lin_in = Linear(node_dim, hidden)
        self.messages = ModuleList([_Message(hidden, edge_dim) for _ in range(layers)])
        self.updates = ModuleList([_Update(hidden) for _ in range(layers)])
        self.head = Sequential(Linear(2 * hidden, 2 * hidden), SiLU(), Linear(2 * hidden, 2 * hidden), SiLU())
        self.lin_mean = Linear(2 * hidden, out_dim)
        self.lin_std = Linear(2 * hidden, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise all learnable parameters."""
        self.lin_in.reset_parameters()
        for block in (*self.messages, *self.updates):
            block.reset_parameters()
        for layer in self.head:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        reset_mean_std(self.lin_mean, self.lin_std)

    def config(self) -> dict[str, Any]:
        """JSON-able hyper-parameters; ``PaiNNNet(**config)`` rebuilds the architecture."""
        return {"family": FAMILY, "node_dim": self.node_dim, "edge_dim": self.edge_dim,
                "out_dim": self.out_dim, "hidden": self.hidden, "layers": self.layers,
                "cutoff": self.cutoff, "min_std": self.min_std}

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        batch: Tensor,
        absorber_index: Tensor,
        pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predict one spectrum per graph; arguments as :meth:`models.gnn.XASNet.forward` plus
        ``pos`` (num_nodes, 3), the atoms' Cartesian positions (A)."""
        if pos is None:
            raise ValueError("PaiNNNet needs atom positions: site graphs must carry 'pos'")
        num_graphs = absorber_index.numel()
        src, dst = edge_index
        vec = pos[dst] - pos[src]
        r = torch.sqrt((vec * vec).sum(-1) + 1e-12)
        unit = vec / r.unsqueeze(-1)
        fcut = cosine_cutoff(r, self.cutoff)
        s = torch.nn.functional.silu(self.lin_in(x))
        v = torch.zeros(s.shape[0], 3, self.hidden, dtype=s.dtype, device=s.device)
        for message, update in zip(self.messages, self.updates):
            s, v = message(s, v, edge_index, edge_attr, fcut, unit)
            s, v = update(s, v)
        pooled = scatter(s, batch, dim=0, dim_size=num_graphs, reduce="mean")
        g = self.head(torch.cat([s[absorber_index], pooled], dim=-1))
        return mean_std(self.lin_mean, self.lin_std, g, self.min_std)
