"""Message-passing network that predicts an XANES spectrum with a per-point uncertainty.

The reference design follows Carbone, Topsakal, Lu & Yoo, PRL 124, 156401 (2020): an MPNN whose
messages come from an *edge network* (``torch_geometric.nn.NNConv``: a small MLP maps each edge's
features to a ``hidden x hidden`` matrix), node states updated by a GRU whose weights are shared
over ``steps`` rounds, and a ``Set2Set`` readout.  Alternatives selectable through the same class:

* ``readout="absorber"``: the graphs are absorber-centred, so the absorber's final node state
  (concatenated with the mean over all nodes) summarises exactly the environment the spectrum
  belongs to; cheaper than Set2Set and insensitive to how many far atoms the cluster holds.
* ``conv="transformer"``: an attention convolution (``TransformerConv`` with edge features) in
  place of the edge network.

The head returns a mean and a standard deviation per energy point (a mean-variance network,
trained with a Gaussian negative log-likelihood, see :func:`gaussian_nll`).  Several
independently seeded members make a deep ensemble (:class:`XASEnsemble`).

All tensors are in *standardised* target units; :class:`XASEnsemble` holds the per-point offset
and the scalar scale that map them back to normalised mu.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch.nn import GRU, Linear, Module, ModuleList, Sequential, SiLU
from torch_geometric.nn import NNConv, Set2Set, TransformerConv
from torch_geometric.utils import scatter

from models.heads import mean_std, reset_mean_std  # noqa: F401 -- also imported from here

CONVS = ("nnconv", "transformer")
READOUTS = ("set2set", "absorber")


class XASNet(Module):
    r"""MPNN mapping an absorber-centred graph to a spectrum (mean and std) on a fixed grid.

    Parameters
    ----------
    node_dim : int
        Number of node (atom) features.
    edge_dim : int
        Number of edge features.
    out_dim : int
        Number of energy points of the output grid.
    hidden : int
        Width of node states.
    steps : int
        Message-passing rounds (convolution and GRU weights are shared across rounds, as in
        the MPNN of Gilmer et al. used by Carbone et al.).
    edge_hidden : int
        Width of the hidden layer of the edge network (``conv="nnconv"``).
    conv : {"nnconv", "transformer"}
        Message function.
    readout : {"set2set", "absorber"}
        Graph readout.
    set2set_steps : int
        Processing steps of ``Set2Set``.
    heads : int
        Attention heads (``conv="transformer"``).
    min_std : float
        Floor of the predicted standard deviation (standardised units).
    """

    def __init__(
        self,
        node_dim: int,
        edge_dim: int,
        out_dim: int,
        hidden: int = 64,
        steps: int = 3,
        edge_hidden: int = 64,
        conv: str = "nnconv",
        readout: str = "absorber",
        set2set_steps: int = 3,
        heads: int = 4,
        min_std: float = 1e-3,
    ) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ValueError(f"conv={conv!r} is not one of {CONVS}")
        if readout not in READOUTS:
            raise ValueError(f"readout={readout!r} is not one of {READOUTS}")
        if min(node_dim, edge_dim, out_dim, hidden, steps) < 1:
            raise ValueError("node_dim, edge_dim, out_dim, hidden and steps must be positive")
        self.node_dim, self.edge_dim, self.out_dim = node_dim, edge_dim, out_dim
        self.hidden, self.steps, self.edge_hidden = hidden, steps, edge_hidden
        self.conv_kind, self.readout_kind = conv, readout
        self.set2set_steps, self.heads, self.min_std = set2set_steps, heads, min_std

        self.lin_in = Linear(node_dim, hidden)
        if conv == "nnconv":
            edge_net = Sequential(
                Linear(edge_dim, edge_hidden), SiLU(), Linear(edge_hidden, hidden * hidden)
            )
            self.conv = NNConv(hidden, hidden, edge_net, aggr="mean")
        else:
            self.conv = TransformerConv(
                hidden, hidden // heads, heads=heads, edge_dim=edge_dim, concat=True
            )
        self.gru = GRU(hidden, hidden)
        if readout == "set2set":
            self.set2set = Set2Set(hidden, processing_steps=set2set_steps)
        self.head = Sequential(
            Linear(2 * hidden, 2 * hidden), SiLU(), Linear(2 * hidden, 2 * hidden), SiLU()
        )
        self.lin_mean = Linear(2 * hidden, out_dim)
        self.lin_std = Linear(2 * hidden, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise all learnable parameters."""
        self.lin_in.reset_parameters()
        self.conv.reset_parameters()
        self.gru.reset_parameters()
        if self.readout_kind == "set2set":
            self.set2set.reset_parameters()
        for layer in self.head:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        reset_mean_std(self.lin_mean, self.lin_std)

    def config(self) -> dict[str, Any]:
        """JSON-able hyper-parameters; ``XASNet(**config)`` rebuilds the architecture."""
        return {
            "node_dim": self.node_dim,
            "edge_dim": self.edge_dim,
            "out_dim": self.out_dim,
            "hidden": self.hidden,
            "steps": self.steps,
            "edge_hidden": self.edge_hidden,
            "conv": self.conv_kind,
            "readout": self.readout_kind,
            "set2set_steps": self.set2set_steps,
            "heads": self.heads,
            "min_std": self.min_std,
        }

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        batch: Tensor,
        absorber_index: Tensor,
        pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predict one spectrum per graph.

        Parameters
        ----------
        x : Tensor
            Node features, shape ``(num_nodes, node_dim)``.
        edge_index : Tensor
            Edges, shape ``(2, num_edges)``.
        edge_attr : Tensor
            Edge features, shape ``(num_edges, edge_dim)``.
        batch : Tensor
            Graph index of every node, shape ``(num_nodes,)``.
        absorber_index : Tensor
            Node index (in the batch) of each graph's absorber, shape ``(num_graphs,)``.
        pos : Tensor, optional
            Atom positions; unused (accepted so that every family has one call signature).

        Returns
        -------
        mean, std : Tensor
            Each of shape ``(num_graphs, out_dim)``, standardised units; ``std > 0``.
        """
        num_graphs = absorber_index.numel()
        out = torch.nn.functional.silu(self.lin_in(x))
        h = out.unsqueeze(0)
        for _ in range(self.steps):
            m = torch.nn.functional.silu(self.conv(out, edge_index, edge_attr))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        if self.readout_kind == "set2set":
            g = self.set2set(out, batch, dim_size=num_graphs)
        else:
            pooled = scatter(out, batch, dim=0, dim_size=num_graphs, reduce="mean")
            g = torch.cat([out[absorber_index], pooled], dim=-1)
        return mean_std(self.lin_mean, self.lin_std, self.head(g), self.min_std)


def gaussian_nll(mean: Tensor, std: Tensor, target: Tensor, beta: float = 0.5) -> Tensor:
    r"""Beta-weighted Gaussian negative log-likelihood (Seitzer et al., ICLR 2022).

    ``loss = mean( var.detach()**beta * (0.5 * log var + (y - mu)**2 / (2 var)) )``.
    ``beta = 0`` is the plain NLL; ``beta = 0.5`` keeps the mean fit close to an MSE fit while
    still learning a variance.

    Parameters
    ----------
    mean, std, target : Tensor
        Same shape.
    beta : float
        Weighting exponent in ``[0, 1]``.
    """
    var = std.pow(2)
    nll = 0.5 * torch.log(var) + 0.5 * (target - mean).pow(2) / var
    if beta:
        nll = nll * var.detach().pow(beta)
    return nll.mean()


def derivative_mse(mean: Tensor, target: Tensor) -> Tensor:
    r"""Mean squared error of the spectra's slopes: ``mean((d mean/dE - d target/dE)**2)``.

    The slopes are first differences along the last (energy) axis, per grid step (on a uniform
    grid, ``dE`` times the derivative), in the units of ``mean`` and ``target`` (standardised mu
    in training). Added to the loss it penalises a prediction that is smoother than the target
    across the edge and the peaks (``--derivative-loss`` of ``python -m models.finetune``,
    ``benchmarks/cuk_gradient_loss_pilot.py``).
    """
    return (mean.diff(dim=-1) - target.diff(dim=-1)).pow(2).mean()


class XASEnsemble(Module):
    r"""Deep ensemble of :class:`XASNet` members plus the target standardisation.

    The predictive distribution is the uniform mixture of the members' Gaussians, summarised by
    its mean and total variance (aleatoric, the mean of the members' variances, plus epistemic,
    the variance of the members' means), mapped to normalised mu as
    ``mu = offset + scale * z`` and ``std = calibration * scale * std_z``.

    Parameters
    ----------
    net_config : dict
        Keyword arguments of the member network (:func:`build_net`; ``family`` selects it).
    members : int
        Number of ensemble members.
    offset : Tensor or None
        Per-point offset (the training mean spectrum), shape ``(out_dim,)``.
    scale : float
        Scalar target scale.
    calibration : float
        Multiplier of the predicted standard deviation, fitted on validation.
    """

    def __init__(
        self,
        net_config: dict[str, Any],
        members: int = 3,
        offset: Tensor | None = None,
        scale: float = 1.0,
        calibration: float = 1.0,
    ) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.net_config = dict(net_config)
        self.members = ModuleList([build_net(net_config) for _ in range(members)])
        out_dim = int(net_config["out_dim"])
        self.register_buffer(
            "offset", torch.zeros(out_dim) if offset is None else offset.detach().float().clone()
        )
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("calibration", torch.tensor(float(calibration)))

    def reset_parameters(self) -> None:
        """Re-initialise every member."""
        for member in self.members:
            member.reset_parameters()

    def forward_members(self, data) -> tuple[Tensor, Tensor]:
        """Standardised mean and std of every member, each ``(members, num_graphs, out_dim)``."""
        pos = getattr(data, "pos", None)
        outs = [
            m(data.x, data.edge_index, data.edge_attr, data.batch, data.absorber_index.view(-1), pos)
            for m in self.members
        ]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def to_mu(self, mean_z: Tensor, std_z: Tensor) -> tuple[Tensor, Tensor]:
        """Map per-member standardised predictions to normalised mu (before calibration)."""
        return self.offset + self.scale * mean_z, self.scale * std_z

    def forward(self, data) -> tuple[Tensor, Tensor]:
        """Calibrated site spectra: mean and std in normalised mu, each ``(num_graphs, out_dim)``."""
        mean_z, std_z = self.forward_members(data)
        mean, std = self.to_mu(mean_z, std_z)
        return combine_members(mean, std, self.calibration)


def build_net(net_config: dict[str, Any]) -> Module:
    """The member network of a config: ``family`` "mpnn" (default, :class:`XASNet`), "painn"
    (:class:`models.painn.PaiNNNet`) or "acsf" (:class:`models.descriptors.DescriptorNet`)."""
    family = net_config.get("family", "mpnn")
    if family == "mpnn":
        return XASNet(**{k: v for k, v in net_config.items() if k != "family"})
    if family == "painn":
        from models.painn import PaiNNNet

        return PaiNNNet(**net_config)
    if family == "acsf":
        from models.descriptors import DescriptorNet

        return DescriptorNet(**net_config)
    raise ValueError(f"net config family {family!r} is not one of 'mpnn', 'painn', 'acsf'")


def combine_members(mean: Tensor, std: Tensor, calibration: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """Mixture mean and calibrated std of ensemble predictions of shape ``(M, N, E)``."""
    mu = mean.mean(0)
    var = std.pow(2).mean(0) + mean.var(0, unbiased=False)
    return mu, calibration * var.sqrt()


def aggregate_sites(
    mean: torch.Tensor,
    std: torch.Tensor,
    groups: Sequence[int],
    weights: Sequence[float],
    num_groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weighted average of site predictions into material/molecule predictions, per member.

    ``mean`` and ``std`` have shape ``(M, S, E)`` (members, sites, energies). For each member the
    material mean is :math:`\sum_i w_i \mu_i / \sum_i w_i` and the material std is the same
    weighted average of the site stds, i.e. site errors are treated as fully correlated (they come
    from one model and one structure), which never underestimates the spread of an average.

    Returns
    -------
    mean, std : Tensor
        Shape ``(M, num_groups, E)``.
    """
    device = mean.device
    idx = torch.as_tensor(list(groups), dtype=torch.long, device=device)
    w = torch.as_tensor(list(weights), dtype=mean.dtype, device=device)
    wsum = torch.zeros(num_groups, dtype=mean.dtype, device=device).index_add_(0, idx, w)
    if bool((wsum <= 0).any()):
        raise ValueError("every material/molecule needs at least one site with positive weight")
    shape = (mean.shape[0], num_groups, mean.shape[2])
    wv = w.view(1, -1, 1)
    m = torch.zeros(shape, dtype=mean.dtype, device=device).index_add_(1, idx, mean * wv)
    s = torch.zeros(shape, dtype=mean.dtype, device=device).index_add_(1, idx, std * wv)
    norm = wsum.view(1, -1, 1)
    return m / norm, s / norm


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU raises."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(device)
