"""All members of a PaiNN ensemble in one fused forward pass (inference only).

:class:`models.gnn.XASEnsemble` with ``family="painn"`` runs its :class:`models.painn.PaiNNNet`
members one after the other; each round of each member gathers, multiplies and scatters
edge-sized tensors through many small PyTorch calls. :class:`FusedPaiNN` computes the same
function with the members' weights stacked along a leading axis:

- every node-wise linear layer is one batched matrix product for all members (``torch.baddbmm``);
- the edge filters of all members of a round are one matrix product, with the cosine cutoff
  folded into it (``filter(e) * fcut = [e * fcut, fcut] @ [W; b]``), so no separate bias and
  product pass over the edges, and computed once per pair of reversed edges (the pair shares
  its length, bond class and so its filter);
- node tensors are kept node-major (``(N, M, F)``) where they are gathered along edges and
  scattered back (``index_select`` / ``index_add_`` over contiguous rows of all members at
  once), member-major (``(M, N, F)``) for the matrix products;
- the first round skips the neighbour vectors (all zero), and the last round skips the vector
  update (the readout uses scalars only).

Input is a :class:`models.graph_batch.SparseBatch` (node and edge lists, positions relative to
the absorber); no PyG ``Batch`` is collated. The arithmetic is the same up to floating-point
summation order (``tests/test_fused.py`` compares the two paths to 1e-5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.functional import silu, softplus

from models.fused import _stack
from models.gnn import XASEnsemble


def supports(ensemble: XASEnsemble) -> bool:
    """Whether :class:`FusedPaiNN` reproduces ``ensemble`` (members are :class:`models.painn.PaiNNNet`)."""
    from models.painn import PaiNNNet

    return all(isinstance(m, PaiNNNet) for m in ensemble.members)


class FusedPaiNN(torch.nn.Module):
    """Inference-only copy of a PaiNN :class:`XASEnsemble` with the members' weights stacked.

    Parameters
    ----------
    ensemble : XASEnsemble
        A loaded ensemble of :class:`models.painn.PaiNNNet` members (:func:`supports`). Its
        weights are copied (later changes to ``ensemble`` are not seen).

    Raises
    ------
    ValueError
        If a member is not a PaiNN network.
    """

    #: the block layout :meth:`forward_block` takes (:class:`models.graph_batch.SparseBatch`)
    input_kind = "sparse"
    #: edges per block: the edge-sized tensors of a block (about 2.3 kB an edge per round for
    #: three members) then stay near the core's cache; larger blocks were slower on the project machine
    block_edges = 1024

    def __init__(self, ensemble: XASEnsemble) -> None:
        super().__init__()
        if not supports(ensemble):
            kinds = sorted({type(m).__name__ for m in ensemble.members})
            raise ValueError(f"FusedPaiNN needs PaiNNNet members, got {', '.join(kinds)}")
        nets = list(ensemble.members)
        first = nets[0]
        self.members = len(nets)
        self.hidden = first.hidden
        self.layers = first.layers
        self.cutoff = float(first.cutoff)
        self.min_std = float(first.min_std)
        self.out_dim = first.out_dim
        # input projection: one matrix for all members, (node_dim, M*hidden)
        self.register_buffer("w_in", torch.cat([n.lin_in.weight.detach().t() for n in nets], 1).contiguous())
        self.register_buffer("b_in", torch.cat([n.lin_in.bias.detach() for n in nets]))
        for layer in range(self.layers):
            msgs = [n.messages[layer] for n in nets]
            ups = [n.updates[layer] for n in nets]
            self.register_buffer(f"w_phi1_{layer}", _stack([m.phi[0].weight.t() for m in msgs]))  # (M, H, H)
            self.register_buffer(f"b_phi1_{layer}", _stack([m.phi[0].bias[None, :] for m in msgs]))
            self.register_buffer(f"w_phi2_{layer}", _stack([m.phi[2].weight.t() for m in msgs]))  # (M, H, 3H)
            self.register_buffer(f"b_phi2_{layer}", _stack([m.phi[2].bias[None, :] for m in msgs]))
            # filter with the bias as one more input row (fed with fcut): (D+1, M*3H)
            self.register_buffer(f"w_filter_{layer}", torch.cat([
                torch.cat([m.filter.weight.detach().t(), m.filter.bias.detach()[None, :]], 0) for m in msgs
            ], 1).contiguous())
            self.register_buffer(f"w_uv_{layer}", _stack([u.lin_uv.weight.t() for u in ups]))  # (M, H, 2H)
            self.register_buffer(f"w_up1_{layer}", _stack([u.mlp[0].weight.t() for u in ups]))  # (M, 2H, H)
            self.register_buffer(f"b_up1_{layer}", _stack([u.mlp[0].bias[None, :] for u in ups]))
            self.register_buffer(f"w_up2_{layer}", _stack([u.mlp[2].weight.t() for u in ups]))  # (M, H, 3H)
            self.register_buffer(f"b_up2_{layer}", _stack([u.mlp[2].bias[None, :] for u in ups]))
        self.register_buffer("w_h1", _stack([n.head[0].weight.t() for n in nets]))
        self.register_buffer("b_h1", _stack([n.head[0].bias[None, :] for n in nets]))
        self.register_buffer("w_h2", _stack([n.head[2].weight.t() for n in nets]))
        self.register_buffer("b_h2", _stack([n.head[2].bias[None, :] for n in nets]))
        self.register_buffer("w_out", _stack([torch.cat([n.lin_mean.weight, n.lin_std.weight], 0).t() for n in nets]))
        self.register_buffer("b_out", _stack([torch.cat([n.lin_mean.bias, n.lin_std.bias], 0)[None, :] for n in nets]))
        self.register_buffer("offset", ensemble.offset.detach().clone())
        self.register_buffer("scale", ensemble.scale.detach().clone())
        self.register_buffer("calibration", ensemble.calibration.detach().clone())

    def forward_block(self, block) -> tuple[Tensor, Tensor]:
        """:meth:`forward_members` of a :class:`models.graph_batch.SparseBatch`."""
        return self.forward_members(block.x, block.pos, block.edge_index, block.edge_attr, block.batch,
                                    block.absorber)

    def forward_members(
        self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor, absorber: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Standardised mean and std of every member, ``(members, G, out_dim)`` each.

        Arguments as :meth:`models.painn.PaiNNNet.forward`: ``x`` (N, node_dim), ``pos`` (N, 3),
        ``edge_index`` (2, E) ``src, dst`` with edge ``E/2 + e`` the reverse of edge ``e``,
        ``edge_attr`` (E/2, edge_dim) the features of each pair, ``batch`` (N,) graph of each
        node, ``absorber`` (G,) node index of each graph's absorber (see
        :class:`models.graph_batch.SparseBatch`).
        """
        m_, hid = self.members, self.hidden
        n_ = x.shape[0]
        g_ = absorber.numel()
        src, dst = edge_index[0], edge_index[1]
        h_ = src.numel() // 2  # edge h_ + e reverses edge e; both have edge_attr[e]
        vec = pos[dst[:h_]] - pos[src[:h_]]
        r = torch.sqrt((vec * vec).sum(-1) + 1e-12)
        unit = vec / r.unsqueeze(-1)
        unit = torch.cat([unit, -unit]).view(-1, 3, 1, 1)  # (E, 3, 1, 1)
        fcut = 0.5 * (torch.cos(r * math.pi / self.cutoff) + 1.0) * (r < self.cutoff).to(r.dtype)
        edge_in = torch.cat([edge_attr * fcut.unsqueeze(-1), fcut.unsqueeze(-1)], dim=1)  # (E/2, D+1)
        src_a, src_b = src[:h_], src[h_:]
        s = silu(torch.addmm(self.b_in, x, self.w_in)).view(n_, m_, hid).transpose(0, 1).contiguous()  # (M, N, H)
        v = None  # (N, 3, M, H) node-major; zero before the first round
        for layer in range(self.layers):
            last = layer == self.layers - 1
            # message: x_e = phi(s)[src] * filter(e) * fcut, for all members at once
            p = silu(torch.baddbmm(getattr(self, f"b_phi1_{layer}"), s, getattr(self, f"w_phi1_{layer}")))
            p = torch.baddbmm(getattr(self, f"b_phi2_{layer}"), p, getattr(self, f"w_phi2_{layer}"))  # (M, N, 3H)
            p = p.view(m_, n_, 3, hid).permute(2, 1, 0, 3).contiguous()  # (3, N, M, H): node-major per part
            # the filters of a pair are the same: computed once, used by both halves
            filt = torch.mm(edge_in, getattr(self, f"w_filter_{layer}")).view(-1, m_, 3, hid)  # (E/2, M, 3, H)
            xs = self._edge_product(p[0], filt[:, :, 0], src_a, src_b)  # (E, M, H), contiguous
            xvs = self._edge_product(p[2], filt[:, :, 2], src_a, src_b)
            dv = xvs.unsqueeze(1) * unit  # (E, 3, M, H)
            if v is None:
                v = torch.zeros((n_, 3, m_, hid), dtype=s.dtype, device=s.device)
            else:
                xvv = self._edge_product(p[1], filt[:, :, 1], src_a, src_b)
                dv.addcmul_(v.index_select(0, src), xvv.unsqueeze(1))
            ds = torch.zeros((n_, m_, hid), dtype=s.dtype, device=s.device).index_add_(0, dst, xs)
            v = v.index_add_(0, dst, dv)
            s = s + ds.transpose(0, 1)
            # update (member-major for the matrix products)
            vm = v.permute(2, 0, 1, 3).reshape(m_, n_ * 3, hid)
            uvvv = torch.bmm(vm, getattr(self, f"w_uv_{layer}")).view(m_, n_, 3, 2 * hid)
            uv, vv = uvvv[..., :hid], uvvv[..., hid:]
            norm = torch.sqrt((vv * vv).sum(2) + 1e-8)  # (M, N, H)
            a = silu(torch.baddbmm(getattr(self, f"b_up1_{layer}"), torch.cat([s, norm], dim=2),
                                   getattr(self, f"w_up1_{layer}")))
            a = torch.baddbmm(getattr(self, f"b_up2_{layer}"), a, getattr(self, f"w_up2_{layer}"))
            a_vv, a_sv, a_ss = a[..., :hid], a[..., hid:2 * hid], a[..., 2 * hid:]
            s = s + a_ss + a_sv * (uv * vv).sum(2)
            if not last:  # the readout uses scalars only
                v = v + (a_vv.unsqueeze(2) * uv).permute(1, 2, 0, 3)
        counts = torch.zeros(g_, dtype=s.dtype, device=s.device).index_add_(
            0, batch, torch.ones(n_, dtype=s.dtype, device=s.device))
        pooled = torch.zeros((m_, g_, hid), dtype=s.dtype, device=s.device).index_add_(1, batch, s)
        pooled = pooled / counts.clamp(min=1).view(1, g_, 1)
        g = torch.cat([s.index_select(1, absorber), pooled], dim=2)
        g = silu(torch.baddbmm(self.b_h1, g, self.w_h1))
        g = silu(torch.baddbmm(self.b_h2, g, self.w_h2))
        both = torch.baddbmm(self.b_out, g, self.w_out)
        mean, raw_std = both.split(self.out_dim, dim=2)
        return mean, softplus(raw_std) + self.min_std

    @staticmethod
    def _edge_product(node: Tensor, filt: Tensor, src_a: Tensor, src_b: Tensor) -> Tensor:
        """``node[src] * filt`` for both halves of the edge list (``filt`` of the first half)."""
        h_ = src_a.numel()
        out = torch.empty((2 * h_,) + tuple(node.shape[1:]), dtype=node.dtype, device=node.device)
        torch.mul(node.index_select(0, src_a), filt, out=out[:h_])
        torch.mul(node.index_select(0, src_b), filt, out=out[h_:])
        return out

    def to_mu(self, mean_z: Tensor, std_z: Tensor) -> tuple[Tensor, Tensor]:
        """Map per-member standardised predictions to normalised mu (before calibration)."""
        return self.offset + self.scale * mean_z, self.scale * std_z
