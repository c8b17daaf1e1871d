"""All members of a deep ensemble in one fused forward pass (inference only).

:class:`XASEnsemble` runs its members one after the other, each through PyG's
``TransformerConv`` and ``torch.nn.GRU``, and recomputes the edge embedding in every
message-passing round. :class:`FusedEnsemble` computes exactly the same function with the
members' weights stacked along a leading axis, so every layer is one batched matrix product for
all members (``torch.bmm``), the input projection and the edge embedding are one matrix product
for all members, and the edge embedding (the convolution's weights are shared over rounds) is
computed once instead of once per round. Only plain tensors enter: no ``Batch`` object is
collated.

Supported: ``conv="transformer"`` (no ``beta``, concatenated heads, root weight, as
:class:`models.gnn.XASNet` builds it) with ``readout="absorber"``; this is every shipped model.
:func:`supports` says whether an ensemble qualifies; PaiNN ensembles have their own fused
class (:mod:`models.fused_painn`); :func:`fuse` picks the one that applies, others use the
per-member path.

The arithmetic is the same up to floating-point summation order (agreement to ~1e-6 in
normalised mu; ``tests/test_fused.py`` compares the two paths).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import silu, softplus

from models.gnn import XASEnsemble


def supports(ensemble: XASEnsemble) -> bool:
    """Whether :class:`FusedEnsemble` reproduces ``ensemble`` (transformer conv, absorber readout)."""
    net = ensemble.members[0]
    conv = getattr(net, "conv", None)
    return (
        getattr(net, "conv_kind", None) == "transformer"  # the attention MPNN only, not PaiNN or ACSF
        and net.readout_kind == "absorber"
        and getattr(conv, "lin_beta", None) is None
        and getattr(conv, "concat", False)
        and getattr(conv, "root_weight", False)
        and getattr(conv, "lin_edge", None) is not None
    )


def fuse(ensemble: XASEnsemble) -> "torch.nn.Module | None":
    """The fused inference copy of ``ensemble``: :class:`FusedEnsemble` (attention MPNN),
    :class:`models.fused_painn.FusedPaiNN` (PaiNN), or None (no fused path: per-member)."""
    from models import fused_painn

    if supports(ensemble):
        return FusedEnsemble(ensemble)
    if fused_painn.supports(ensemble):
        return fused_painn.FusedPaiNN(ensemble)
    return None


def _stack(tensors: list[Tensor]) -> Tensor:
    return torch.stack([t.detach() for t in tensors]).contiguous()


class FusedEnsemble(torch.nn.Module):
    """Inference-only copy of an :class:`XASEnsemble` with the members' weights stacked.

    Parameters
    ----------
    ensemble : XASEnsemble
        A loaded ensemble; :func:`supports` must be true. Its weights are copied (later changes
        to ``ensemble`` are not seen).

    Raises
    ------
    ValueError
        If the ensemble's architecture is not supported.
    """

    def __init__(self, ensemble: XASEnsemble) -> None:
        super().__init__()
        if not supports(ensemble):
            net = ensemble.members[0]
            raise ValueError(
                f"FusedEnsemble supports conv='transformer' with readout='absorber', got "
                f"conv={net.conv_kind!r}, readout={net.readout_kind!r}"
            )
        nets = list(ensemble.members)
        first = nets[0]
        self.members = len(nets)
        self.hidden = first.hidden
        self.heads = first.conv.heads
        self.channels = first.conv.out_channels
        self.steps = first.steps
        self.min_std = float(first.min_std)
        self.out_dim = first.out_dim
        hid = self.hidden
        # input projection and edge embedding: one matrix for all members, (in, M*hidden)
        self.register_buffer("w_in", torch.cat([n.lin_in.weight.detach().t() for n in nets], 1).contiguous())
        self.register_buffer("b_in", torch.cat([n.lin_in.bias.detach() for n in nets]))
        # edge embedding per (member, head): W_e as (M*H, C, D) and its transpose (M*H, D, C)
        w_edge = _stack([n.conv.lin_edge.weight.view(self.heads, self.channels, -1) for n in nets])
        w_edge = w_edge.reshape(self.members * self.heads, self.channels, -1)
        self.register_buffer("w_edge", w_edge.contiguous())
        self.register_buffer("w_edge_t", w_edge.transpose(1, 2).contiguous())
        # query | key | value | skip, (M, hidden, 4*hidden)
        convs = [n.conv for n in nets]
        self.register_buffer("w_qkvs", _stack([
            torch.cat([c.lin_query.weight, c.lin_key.weight, c.lin_value.weight, c.lin_skip.weight], 0).t()
            for c in convs
        ]))
        self.register_buffer("b_qkvs", _stack([
            torch.cat([c.lin_query.bias, c.lin_key.bias, c.lin_value.bias, c.lin_skip.bias], 0)[None, :]
            for c in convs
        ]))
        grus = [n.gru for n in nets]
        self.register_buffer("w_ih", _stack([g.weight_ih_l0.t() for g in grus]))  # (M, hid, 3 hid)
        self.register_buffer("w_hh", _stack([g.weight_hh_l0.t() for g in grus]))
        self.register_buffer("b_ih", _stack([g.bias_ih_l0[None, :] for g in grus]))
        self.register_buffer("b_hh", _stack([g.bias_hh_l0[None, :] for g in grus]))
        self.register_buffer("w_h1", _stack([n.head[0].weight.t() for n in nets]))
        self.register_buffer("b_h1", _stack([n.head[0].bias[None, :] for n in nets]))
        self.register_buffer("w_h2", _stack([n.head[2].weight.t() for n in nets]))
        self.register_buffer("b_h2", _stack([n.head[2].bias[None, :] for n in nets]))
        self.register_buffer("w_out", _stack([torch.cat([n.lin_mean.weight, n.lin_std.weight], 0).t() for n in nets]))
        self.register_buffer("b_out", _stack([torch.cat([n.lin_mean.bias, n.lin_std.bias], 0)[None, :] for n in nets]))
        self.register_buffer("offset", ensemble.offset.detach().clone())
        self.register_buffer("scale", ensemble.scale.detach().clone())
        self.register_buffer("calibration", ensemble.calibration.detach().clone())
        assert self.w_qkvs.shape == (self.members, hid, 4 * hid)

    #: the block layout :meth:`forward_block` takes (:class:`models.graph_batch.DenseBatch`)
    input_kind = "dense"

    def forward_block(self, block) -> tuple[Tensor, Tensor]:
        """:meth:`forward_members` of a :class:`models.graph_batch.DenseBatch`."""
        return self.forward_members(block.x, block.node_mask, block.edge_attr, block.adj)

    def forward_members(self, x: Tensor, node_mask: Tensor, edge_attr: Tensor, adj: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised mean and std of every member for a block of padded graphs.

        Parameters
        ----------
        x : Tensor
            ``(G, P, node_dim)`` node features, absorber at node 0 of each graph.
        node_mask : Tensor
            ``(G, P)`` bool, real nodes.
        edge_attr : Tensor
            ``(G, P, P, edge_dim)``: ``edge_attr[g, i, j]`` of the edge ``j -> i``.
        adj : Tensor
            ``(G, P, P)`` bool, ``adj[g, i, j]``: an edge ``j -> i``.

        Returns
        -------
        mean, std : Tensor
            Each ``(members, G, out_dim)``.

        Notes
        -----
        The attention of ``TransformerConv`` with edge features,
        ``a_ij = softmax_j(q_i . (k_j + W_e f_ij) / sqrt(C))`` and
        ``out_i = sum_j a_ij (v_j + W_e f_ij) + W_s x_i``, is evaluated per graph as dense
        matrix products: ``q_i . W_e f_ij = (W_e^T q_i) . f_ij`` and
        ``sum_j a_ij W_e f_ij = W_e (sum_j a_ij f_ij)``, so no tensor of size edges x hidden
        is formed; non-edges are masked out of the softmax.
        """
        m_, hid, heads, ch = self.members, self.hidden, self.heads, self.channels
        g_, p_, _ = x.shape
        d_ = edge_attr.shape[-1]
        out = silu(torch.addmm(self.b_in, x.reshape(g_ * p_, -1), self.w_in))
        out = out.view(g_ * p_, m_, hid).transpose(0, 1).contiguous()  # (M, G*P, hid)
        h = out
        inv_sqrt = 1.0 / math.sqrt(ch)
        # (G*P, P, D): the edge features of all edges into node i, shared by all members
        feats = edge_attr.reshape(g_ * p_, p_, d_)
        # additive mask: -inf off the edges; rows without edges stay finite (their weights are
        # zeroed after the softmax: such a node receives no message, as in PyG)
        has_edge = adj.any(-1, keepdim=True)  # (G, P, 1)
        mask = torch.zeros(adj.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill_(~adj & has_edge, -math.inf).view(1, g_, 1, p_, p_)
        has_edge = has_edge.to(x.dtype).view(1, g_, 1, p_, 1)
        for _ in range(self.steps):
            proj = torch.baddbmm(self.b_qkvs, out, self.w_qkvs)  # (M, G*P, 4 hid)
            query, key, value, skip = proj.split(hid, dim=2)
            q = query.reshape(m_, g_, p_, heads, ch)
            k = key.reshape(m_, g_, p_, heads, ch)
            v = value.reshape(m_, g_, p_, heads, ch)
            # node-node part: (M, G, H, P, P)
            score = torch.matmul(q.permute(0, 1, 3, 2, 4), k.permute(0, 1, 3, 4, 2))
            # edge part: (W_e^T q_i) . f_ij
            q_mh = q.permute(0, 3, 1, 2, 4).reshape(m_ * heads, g_ * p_, ch)
            qe = torch.bmm(q_mh, self.w_edge)  # (M*H, G*P, D)
            qe = qe.transpose(0, 1)  # (G*P, M*H, D)
            se = torch.bmm(qe, feats.transpose(1, 2))  # (G*P, M*H, P)
            score = score + se.view(g_, p_, m_, heads, p_).permute(2, 0, 3, 1, 4)
            weight = torch.softmax(score.mul_(inv_sqrt).add_(mask), dim=-1).mul_(has_edge)  # (M, G, H, P, P)
            msg = torch.matmul(weight, v.permute(0, 1, 3, 2, 4))  # (M, G, H, P, C)
            wf = torch.bmm(weight.permute(1, 3, 0, 2, 4).reshape(g_ * p_, m_ * heads, p_), feats)
            me = torch.bmm(wf.transpose(0, 1), self.w_edge_t)  # (M*H, G*P, C)
            me = me.view(m_, heads, g_, p_, ch).permute(0, 2, 3, 1, 4)
            msg = msg.permute(0, 1, 3, 2, 4) + me  # (M, G, P, H, C)
            conv = skip + msg.reshape(m_, g_ * p_, hid)
            m = silu(conv)
            gi = torch.baddbmm(self.b_ih, m, self.w_ih)
            gh = torch.baddbmm(self.b_hh, h, self.w_hh)
            i_r, i_z, i_n = gi.split(hid, dim=2)
            h_r, h_z, h_n = gh.split(hid, dim=2)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(torch.addcmul(i_n, r, h_n))
            h = n + z * (h - n)  # (1 - z) * n + z * h
            out = h
        out = out.view(m_, g_, p_, hid)
        weights = node_mask.to(out.dtype)
        pooled = (out * weights.view(1, g_, p_, 1)).sum(2) / weights.sum(1).clamp(min=1).view(1, g_, 1)
        g = torch.cat([out[:, :, 0], pooled], dim=2)
        g = silu(torch.baddbmm(self.b_h1, g, self.w_h1))
        g = silu(torch.baddbmm(self.b_h2, g, self.w_h2))
        both = torch.baddbmm(self.b_out, g, self.w_out)
        mean, raw_std = both.split(self.out_dim, dim=2)
        return mean, softplus(raw_std) + self.min_std

    def to_mu(self, mean_z: Tensor, std_z: Tensor) -> tuple[Tensor, Tensor]:
        """Map per-member standardised predictions to normalised mu (before calibration)."""
        return self.offset + self.scale * mean_z, self.scale * std_z
