"""Descriptor baseline: atom-centred symmetry functions around the absorber + an MLP.

The XANESNET recipe (Rankine, Madkhali & Penfold, J. Phys. Chem. A 124, 4263 (2020)): describe
the absorber's environment by Behler-Parrinello symmetry functions (Behler, J. Chem. Phys. 134,
074106 (2011)) and map them to the spectrum with a multilayer perceptron. Here

* radial terms, one set per element ``e`` of the builder's one-hot:
  ``G2[e, s] = sum_{j in e} exp(-((r_j - R_s) / w)^2) fc(r_j)``, ``R_s`` evenly on
  ``[0.8, cutoff]`` A;
* angular terms, resolved in shells and weighted by atomic number (the *weighted* ACSF, wACSF, of
  Gastegger et al., J. Chem. Phys. 148, 241709 (2018)), for two weightings ``w_j = 1`` and
  ``w_j = Z_j / 8``:
  ``G4[c, zeta, lambda, s] = 2^(1-zeta) sum_{j<k} w_j w_k (1 + lambda cos theta_jk)^zeta
  exp(-((r_j - R_s)^2 + (r_k - R_s)^2) / w^2) fc(r_j) fc(r_k)``, theta the angle at the absorber.

Everything is computed in torch from a batch of :class:`models.graphs.SiteGraph` (``x`` for the
element one-hot and Z, ``pos`` for positions), so a trained :class:`DescriptorNet` is a drop-in
member of :class:`models.gnn.XASEnsemble` (``family="acsf"``). Features are standardised with
training-set statistics held as buffers. Angles enter explicitly; rotations, translations and
permutations of the atoms leave the features unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Dropout, Linear, Module, Sequential, SiLU
from torch_geometric.utils import to_dense_batch

from models.heads import mean_std, reset_mean_std
from models.painn import cosine_cutoff

FAMILY = "acsf"
ZETAS = (1.0, 2.0, 4.0, 8.0)
LAMBDAS = (1.0, -1.0)
WEIGHTINGS = 2  # w = 1 and w = Z / 8


def descriptor_dim(n_elements: int, n_radial: int, n_angular: int) -> int:
    """Number of features of :func:`absorber_acsf`."""
    return n_elements * n_radial + WEIGHTINGS * len(ZETAS) * len(LAMBDAS) * n_angular


def absorber_acsf(
    x: Tensor,
    pos: Tensor,
    batch: Tensor,
    absorber_index: Tensor,
    n_elements: int,
    n_radial: int = 24,
    n_angular: int = 8,
    cutoff: float = 6.0,
) -> Tensor:
    """Symmetry functions of each graph's absorber, shape ``(num_graphs, descriptor_dim)``.

    Parameters
    ----------
    x : Tensor
        Node features whose first ``n_elements`` columns are the element one-hot and the next
        column is ``Z / 100`` (the :class:`~models.graphs.GraphBuilder` layout).
    pos : Tensor
        Positions (num_nodes, 3), A.
    batch, absorber_index : Tensor
        Graph of each node; node index of each graph's absorber.
    n_elements, n_radial, n_angular : int
        Element count, radial centres per element, angular shells.
    cutoff : float
        Radius (A) of the cosine cutoff.
    """
    num_graphs = absorber_index.numel()
    rel = pos - pos[absorber_index][batch]
    not_absorber = torch.ones(pos.shape[0], dtype=torch.bool, device=pos.device)
    not_absorber[absorber_index] = False
    dense, mask = to_dense_batch(rel, batch, batch_size=num_graphs)  # (B, N, 3)
    onehot, _ = to_dense_batch(x[:, :n_elements], batch, batch_size=num_graphs)
    z, _ = to_dense_batch(x[:, n_elements] * 100.0, batch, batch_size=num_graphs)
    keep, _ = to_dense_batch(not_absorber, batch, batch_size=num_graphs)
    keep = (keep & mask).to(pos.dtype)
    r = torch.sqrt((dense * dense).sum(-1) + 1e-12)
    fc = cosine_cutoff(r, cutoff) * keep  # (B, N)

    centres = torch.linspace(0.8, cutoff, n_radial, dtype=pos.dtype, device=pos.device)
    width = (cutoff - 0.8) / max(n_radial - 1, 1)
    radial = torch.exp(-(((r.unsqueeze(-1) - centres) / width) ** 2)) * fc.unsqueeze(-1)  # (B, N, R)
    g2 = torch.einsum("bne,bnr->ber", onehot, radial).reshape(num_graphs, -1)

    shells = torch.linspace(1.0, cutoff - 1.0, n_angular, dtype=pos.dtype, device=pos.device)
    swidth = (cutoff - 2.0) / max(n_angular - 1, 1)
    unit = dense / r.unsqueeze(-1)
    cos = torch.einsum("bnc,bmc->bnm", unit, unit).clamp(-1.0, 1.0)  # (B, N, N)
    shell = torch.exp(-(((r.unsqueeze(-1) - shells) / swidth) ** 2)) * fc.unsqueeze(-1)  # (B, N, S)
    n = dense.shape[1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=pos.device), diagonal=1).to(pos.dtype)
    feats = [g2]
    for weights in (torch.ones_like(z), z / 8.0):
        ws = shell * weights.unsqueeze(-1)  # (B, N, S)
        for zeta in ZETAS:
            for lam in LAMBDAS:
                ang = (2.0 ** (1.0 - zeta)) * (1.0 + lam * cos).pow(zeta) * upper  # (B, N, N)
                feats.append(torch.einsum("bnm,bns,bms->bs", ang, ws, ws))
    return torch.cat(feats, dim=-1)


class DescriptorNet(Module):
    r"""MLP from absorber symmetry functions to a spectrum mean and std.

    Parameters
    ----------
    node_dim, edge_dim, out_dim : int
        Node/edge feature widths of the graphs (``edge_dim`` unused; kept so that every family
        is built from the same three sizes) and the output grid size.
    n_elements : int
        Length of the element one-hot at the start of ``x``.
    hidden, layers : int
        Width and number of hidden layers of the MLP.
    n_radial, n_angular : int
        Radial centres per element and angular shells of :func:`absorber_acsf`.
    cutoff : float
        Cutoff radius (A); the graph builder's ``cluster_radius``.
    dropout : float
        Dropout after each hidden layer (training only).
    min_std : float
        Floor of the predicted standard deviation (standardised units).
    """

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        out_dim: int,
        n_elements: int,
        hidden: int = 256,
        layers: int = 2,
        n_radial: int = 24,
        n_angular: int = 8,
        cutoff: float = 6.0,
        dropout: float = 0.1,
        min_std: float = 1e-3,
        family: str = FAMILY,
    ) -> None:
        super().__init__()
        if family != FAMILY:
            raise ValueError(f"DescriptorNet family must be {FAMILY!r}, got {family!r}")
        if not 0 < n_elements < node_dim:
            raise ValueError(f"n_elements={n_elements} must be in (0, node_dim={node_dim})")
        if min(out_dim, hidden, layers, n_radial, n_angular) < 1 or not cutoff > 0:
            raise ValueError("out_dim, hidden, layers, n_radial, n_angular and cutoff must be positive")
        self.node_dim, self.edge_dim, self.out_dim, self.n_elements = node_dim, edge_dim, out_dim, n_elements
        self.hidden, self.layers, self.n_radial, self.n_angular = hidden, layers, n_radial, n_angular
        self.cutoff, self.dropout, self.min_std = float(cutoff), float(dropout), min_std
        dim = descriptor_dim(n_elements, n_radial, n_angular)
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        blocks: list[Module] = []
        width = dim
        for _ in range(layers):
            blocks += [Linear(width, hidden), SiLU(), Dropout(dropout)]
            width = hidden
        self.mlp = Sequential(*blocks)
        self.lin_mean = Linear(hidden, out_dim)
        self.lin_std = Linear(hidden, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise all learnable parameters (the feature statistics are kept)."""
        for layer in self.mlp:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        reset_mean_std(self.lin_mean, self.lin_std)

    def config(self) -> dict[str, Any]:
        """JSON-able hyper-parameters; ``DescriptorNet(**config)`` rebuilds the architecture."""
        return {"family": FAMILY, "node_dim": self.node_dim, "edge_dim": self.edge_dim,
                "out_dim": self.out_dim, "n_elements": self.n_elements, "hidden": self.hidden,
                "layers": self.layers, "n_radial": self.n_radial, "n_angular": self.n_angular,
                "cutoff": self.cutoff, "dropout": self.dropout, "min_std": self.min_std}

    def features(self, x: Tensor, batch: Tensor, absorber_index: Tensor, pos: Tensor) -> Tensor:
        """Raw (unstandardised) descriptors of a batch, ``(num_graphs, descriptor_dim)``."""
        return absorber_acsf(x, pos, batch, absorber_index, self.n_elements, self.n_radial,
                             self.n_angular, self.cutoff)

    @torch.no_grad()
    def set_feature_statistics(self, features: Tensor) -> None:
        """Standardise with the mean and std of (training) ``features``; constant columns keep std 1."""
        self.feature_mean.copy_(features.mean(0))
        std = features.std(0)
        self.feature_std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward_features(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std (standardised targets) from raw descriptors."""
        h = self.mlp((features - self.feature_mean) / self.feature_std)
        return mean_std(self.lin_mean, self.lin_std, h, self.min_std)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        batch: Tensor,
        absorber_index: Tensor,
        pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predict one spectrum per graph; arguments as :meth:`models.painn.PaiNNNet.forward`."""
        if pos is None:
            raise ValueError("DescriptorNet needs atom positions: site graphs must carry 'pos'")
        return self.forward_features(self.features(x, batch, absorber_index, pos))
