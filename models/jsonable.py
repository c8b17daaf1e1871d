"""Values as JSON has them: numpy scalars and arrays as numbers and lists, tuples as lists.

Documents, model cards, benchmark results and command outputs all go through these two
functions, so a value is turned into JSON the same way everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["to_jsonable", "json_default"]


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy arrays and scalars as lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_jsonable(value: Any, *, nan_as_none: bool = True) -> Any:
    """A copy of ``value`` made of dicts (string keys), lists, str, int, float, bool and None.

    Non-finite floats become ``None`` (strict JSON has no NaN) unless ``nan_as_none`` is False.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, nan_as_none=nan_as_none) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, nan_as_none=nan_as_none) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), nan_as_none=nan_as_none)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and nan_as_none and not math.isfinite(value):
        return None
    return value
