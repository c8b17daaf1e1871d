"""Simulated NSLS-II-style XAS endstation: ophyd devices, sample, XDI files, catalog, replay.

Light to import: the Tiled catalog and replay modules are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from .devices import DwellTime, IonChamber, MonoEnergy, SimulatedEndstation, make_endstation
from .modes import MODE_ROLES, MODES, ROLES, mu_from_counts
from .sample import BeamPhysics, SimulatedSample
from .xdi import XDIData, XDIError, read_xdi, write_xdi

__all__ = [
    "ROLES",
    "MODES",
    "MODE_ROLES",
    "mu_from_counts",
    "DwellTime",
    "IonChamber",
    "MonoEnergy",
    "SimulatedEndstation",
    "make_endstation",
    "BeamPhysics",
    "SimulatedSample",
    "XDIData",
    "XDIError",
    "read_xdi",
    "write_xdi",
    # lazily loaded:
    "CatalogError",
    "DocumentCache",
    "XASCatalog",
    "open_catalog",
    "replay",
    "run_documents",
]

_LAZY = {
    "CatalogError": "catalog",
    "DocumentCache": "catalog",
    "XASCatalog": "catalog",
    "open_catalog": "catalog",
    "replay": "replay",
    "run_documents": "replay",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'endstation' has no attribute {name!r}")
