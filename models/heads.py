"""The mean-variance output head that every network family shares (models.gnn, models.painn,
models.descriptors): a mean and a softplus standard deviation per energy point."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Linear


def reset_mean_std(lin_mean: Linear, lin_std: Linear) -> None:
    """Re-initialise the output layers, starting with a moderate, uniform uncertainty."""
    lin_mean.reset_parameters()
    lin_std.reset_parameters()
    with torch.no_grad():
        lin_std.weight.mul_(0.1)
        lin_std.bias.fill_(0.0)


def mean_std(lin_mean: Linear, lin_std: Linear, g: Tensor, min_std: float) -> tuple[Tensor, Tensor]:
    """The mean-variance head shared by every family: a mean and a softplus std (floored)."""
    return lin_mean(g), torch.nn.functional.softplus(lin_std(g)) + min_std
