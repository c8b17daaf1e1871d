"""The one rule for metadata a user adds to a plan's start document: a deep merge.

A plan writes blocks the ranking and the XDI export depend on (``xas.detectors``,
``XDI.Element``...). The user's ``md`` adds keys and overrides values at any depth, but never
deletes what the plan wrote: ``md={"xas": {"sample_note": "..."}}`` keeps ``xas.detectors``.
Every plan and the profile's helpers merge with :func:`merge_md`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["merge_md"]


def merge_md(base: Mapping[str, Any], *overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with each of ``overrides`` merged into it, depth first; inputs are not changed.

    Mappings are merged key by key; any other value (lists included) replaces the one before.
    """
    out = {key: _copy(value) for key, value in base.items()}
    for extra in overrides:
        for key, value in (extra or {}).items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge_md(out[key], value)
            else:
                out[key] = _copy(value)
    return out


def _copy(value: Any) -> Any:
    return merge_md(value) if isinstance(value, Mapping) else value
