"""Bluesky plans of steered-xas: energy grids, the conventional ``xafs_scan`` and
(from another module) the model-steered ``adaptive_xas_plan``."""

from __future__ import annotations

from typing import Any

from .grids import DEFAULT_GRID, EnergyGrid, edge_energy, etok, ktoe, make_grid, parse_grid
from .checks import check_limits, detector_roles
from .xafs import xafs_scan

__all__ = [
    "DEFAULT_GRID",
    "EnergyGrid",
    "edge_energy",
    "etok",
    "ktoe",
    "make_grid",
    "parse_grid",
    "xafs_scan",
    "check_limits",
    "detector_roles",
    "adaptive_xas_plan",
]


def __getattr__(name: str) -> Any:
    # The adaptive plan lives in plans.adaptive (another module, heavier imports): load on use.
    if name == "adaptive_xas_plan":
        from .adaptive import adaptive_xas_plan

        return adaptive_xas_plan
    raise AttributeError(f"module 'plans' has no attribute {name!r}")
