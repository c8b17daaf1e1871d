"""Train one member of any family on pre-built batches, with early stopping and a time budget.

:func:`models.training.train_member` collates graphs with a ``DataLoader`` every epoch; here the
batches are collated once (:func:`prebuild_batches`: a fixed partition of the training sites,
whose order is shuffled each epoch), so comparisons of model families at equal CPU time spend it
on the networks, not on Python collation. Descriptor models train on cached feature tensors
(:func:`feature_batches`), which makes an epoch a few matrix products.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from models.gnn import gaussian_nll


@dataclass
class FeatureBatch:
    """A batch of pre-computed descriptors and standardised targets."""

    features: Tensor
    y: Tensor

    @property
    def num_graphs(self) -> int:
        return int(self.features.shape[0])


def graph_forward(net: torch.nn.Module, batch) -> tuple[Tensor, Tensor]:
    """Call a member network on a PyG batch of site graphs (``pos`` passed when present)."""
    return net(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.absorber_index.view(-1),
               getattr(batch, "pos", None))


def feature_forward(net: torch.nn.Module, batch: FeatureBatch) -> tuple[Tensor, Tensor]:
    """Call a :class:`models.descriptors.DescriptorNet` on cached descriptors."""
    return net.forward_features(batch.features)


def prebuild_batches(graphs: Sequence, batch_size: int, seed: int = 0, shuffle: bool = True) -> list:
    """Collate ``graphs`` once into batches of ``batch_size`` (a seeded random partition)."""
    from torch_geometric.data import Batch

    order = np.random.default_rng(seed).permutation(len(graphs)) if shuffle else np.arange(len(graphs))
    return [Batch.from_data_list([graphs[i] for i in order[s:s + batch_size]])
            for s in range(0, len(graphs), batch_size)]


def feature_batches(features: Tensor, y: Tensor, batch_size: int, seed: int = 0, shuffle: bool = True) -> list[FeatureBatch]:
    """Split descriptors and targets into :class:`FeatureBatch` es (a seeded random partition)."""
    n = features.shape[0]
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n)) if shuffle else torch.arange(n)
    return [FeatureBatch(features[order[s:s + batch_size]], y[order[s:s + batch_size]])
            for s in range(0, n, batch_size)]


@torch.inference_mode()
def predict(net: torch.nn.Module, batches: Sequence, forward: Callable = graph_forward) -> tuple[Tensor, Tensor]:
    """Standardised mean and std over ``batches`` (in their order), each ``(S, E)``."""
    net.eval()
    outs = [forward(net, b) for b in batches]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def fit_member(
    net: torch.nn.Module,
    train_batches: Sequence,
    val_batches: Sequence,
    val_y: Tensor,
    offset: Tensor,
    scale: float,
    forward: Callable = graph_forward,
    lr: float = 2e-3,
    weight_decay: float = 1e-5,
    beta_nll: float = 0.5,
    patience: int = 30,
    lr_patience: int = 8,
    max_epochs: int = 10_000,
    max_seconds: float = 0.0,
    grad_clip: float = 5.0,
    seed: int = 0,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train ``net`` in place; return its best state (lowest validation MSE) and a summary.

    ``train_batches`` hold *standardised* targets ``(y - offset) / scale``; ``val_y`` are the
    validation sites' spectra in normalised mu, in the order of ``val_batches``. Stops when the
    validation MSE has not improved for ``patience`` epochs (``"early_stopping"``), after
    ``max_epochs`` or when ``max_seconds`` of this process's CPU time (0: none; CPU rather than
    wall time, so that runs on a loaded shared machine get equal compute) are spent
    (``"time_limit"``).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=lr_patience, min_lr=1e-5)
    best_val, bad, history = float("inf"), 0, []
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    t0, c0 = time.perf_counter(), time.process_time()
    stopped = "max_epochs"
    for epoch in range(max_epochs):
        net.train()
        total, count = 0.0, 0
        for i in rng.permutation(len(train_batches)):
            batch = train_batches[i]
            opt.zero_grad(set_to_none=True)
            mean, std = forward(net, batch)
            loss = gaussian_nll(mean, std, batch.y, beta=beta_nll)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
            opt.step()
            total += float(loss.detach()) * batch.num_graphs
            count += batch.num_graphs
        mz, _ = predict(net, val_batches, forward)
        val = float(((offset + scale * mz - val_y) ** 2).mean())
        sched.step(val)
        if val < best_val:
            best_val, bad = val, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
        history.append({"epoch": epoch, "train_loss": round(total / max(count, 1), 6), "val_mse": round(val, 7),
                        "cpu_seconds": round(time.process_time() - c0, 2)})
        if bad >= patience:
            stopped = "early_stopping"
            break
        if max_seconds and time.process_time() - c0 > max_seconds:
            stopped = "time_limit"
            break
    net.load_state_dict(best_state)
    summary = {
        "epochs_run": len(history),
        "best_epoch": int(min(history, key=lambda h: h["val_mse"])["epoch"]) if history else None,
        "best_val_mse": best_val,
        "stopped": stopped,
        "cpu_seconds": round(time.process_time() - c0, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "history": history,
    }
    return best_state, summary


@torch.inference_mode()
def graph_descriptors(net: torch.nn.Module, graphs: Sequence, batch_size: int = 256) -> Tensor:
    """Raw descriptors (:meth:`models.descriptors.DescriptorNet.features`) of ``graphs`` in order."""
    return torch.cat([net.features(b.x, b.batch, b.absorber_index.view(-1), b.pos)
                      for b in prebuild_batches(graphs, batch_size, shuffle=False)])


def train_family_member(
    net_config: dict[str, Any],
    train_graphs: Sequence,
    val_graphs: Sequence,
    offset: Tensor,
    scale: float,
    seed: int = 0,
    batch_size: int = 32,
    max_seconds: float = 0.0,
    init_state: dict[str, Tensor] | None = None,
    **fit_kwargs: Any,
) -> tuple[torch.nn.Module, dict[str, Any], Callable[[Sequence], tuple[Tensor, Tensor]]]:
    """Build a member of any family (:func:`models.gnn.build_net`), pre-build its batches and fit it.

    Descriptor members (``family="acsf"``) get their feature statistics from ``train_graphs`` and
    train on cached descriptors; graph members on pre-collated batches. The time spent preparing
    (descriptors, collation) counts against ``max_seconds`` (CPU seconds of this process). ``init_state`` (e.g. a member
    pre-trained on another edge) initialises every parameter of the same shape; feature
    statistics always come from ``train_graphs``.

    Returns
    -------
    net, summary, predict_fn
        The trained network (best validation state), the :func:`fit_member` summary plus
        ``prep_seconds`` and ``parameters``, and a function mapping graphs to standardised
        (mean, std) predictions in their order.
    """
    from models.gnn import build_net

    torch.manual_seed(seed)
    net = build_net(net_config)
    c0 = time.process_time()
    val_y = torch.cat([g.y.view(1, -1) for g in val_graphs])
    ytr = (torch.cat([g.y.view(1, -1) for g in train_graphs]) - offset) / scale
    if net_config.get("family") == "acsf":
        net.set_feature_statistics(graph_descriptors(net, train_graphs))
        train_b = feature_batches(graph_descriptors(net, train_graphs), ytr, batch_size, seed=seed)
        val_b = feature_batches(graph_descriptors(net, val_graphs), val_y, 1024, shuffle=False)
        forward = feature_forward

        def predict_fn(graphs):
            return predict(net, feature_batches(graph_descriptors(net, graphs), torch.zeros(len(graphs), 1),
                                                1024, shuffle=False), forward)
    else:
        standardised = []
        for g, y in zip(train_graphs, ytr):
            h = g.clone()
            h.y = y.view(1, -1)
            standardised.append(h)
        train_b = prebuild_batches(standardised, batch_size, seed=seed)
        val_b = prebuild_batches(val_graphs, 256, shuffle=False)
        forward = graph_forward

        def predict_fn(graphs):
            return predict(net, prebuild_batches(graphs, 256, shuffle=False), forward)
    prep = time.process_time() - c0
    if init_state is not None:
        own = net.state_dict()
        net.load_state_dict({k: v for k, v in init_state.items()
                             if k in own and v.shape == own[k].shape and not k.startswith("feature_")}, strict=False)
    budget = max(1.0, max_seconds - prep) if max_seconds else 0.0
    _, summary = fit_member(net, train_b, val_b, val_y, offset, scale, forward=forward,
                            max_seconds=budget, seed=seed, **fit_kwargs)
    summary.update({"prep_cpu_seconds": round(prep, 1), "parameters": sum(p.numel() for p in net.parameters())})
    return net, summary, predict_fn
