"""20-models: lazy access to the spectrum predictors (nothing is loaded at startup).

``predictor("cu-k")`` loads ``models.load_predictor("cu-k")`` on first use and keeps it.
"""

_predictors = {}


def predictor(name="cu-k"):
    """The predictor ``name`` (a shipped name or a .pt path), loaded once on first use."""
    if name not in _predictors:
        from models import load_predictor  # heavy (torch): only when asked

        _predictors[name] = load_predictor(name)
    return _predictors[name]
