"""Structure -> absorber-centred graph -> GNN -> XANES with uncertainty.

Heavy imports (torch, pymatgen) happen on first use, so ``import models`` stays cheap for the
IPython profile and the callbacks.
"""

from __future__ import annotations

__all__ = ["load_predictor", "available_models", "Predictor", "Prediction"]


def __getattr__(name):
    if name in __all__:
        from models import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
