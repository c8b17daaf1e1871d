"""What a plan checks when it is called, before the RunEngine runs it and before anything moves:
energies within the monochromator's limits, the detector roles, the dwell-time signal.

:func:`checked_plan` marks such a plan for bluesky (``bluesky.utils.is_plan``, the queue server)
while keeping the checks at the call: a bad argument raises where the user typed it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from bluesky.protocols import Movable
from bluesky.utils import Plan

from endstation.modes import ROLES

__all__ = ["checked_plan", "check_limits", "data_keys", "detector_roles", "find_dwell"]


def checked_plan(function):
    """Decorator: ``function`` checks its arguments and returns a generator of messages; the
    result is a bluesky plan (``is_plan`` is True; a plan never iterated is warned about, as with
    ``bluesky.utils.plan``), and the checks still run, and raise, at the call."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        messages = function(*args, **kwargs)

        def same_messages():
            return messages

        same_messages.__name__ = function.__name__
        return Plan(same_messages)

    wrapper._is_plan_ = True
    return wrapper


def check_limits(energy: Any, energies: Sequence[float], plan_name: str = "xafs_scan") -> None:
    """Raise ``ValueError`` naming the first energy outside ``energy.limits`` (and ``plan_name``).

    Positioners whose limits are ``(0, 0)`` or equal (ophyd's "no limits") are not checked.
    """
    limits = getattr(energy, "limits", None)
    if not limits:
        return
    low, high = float(limits[0]), float(limits[1])
    if not low < high:
        return
    for value in energies:
        if not (low <= float(value) <= high):
            raise ValueError(
                f"{plan_name}: energy {float(value):.3f} eV is outside the limits of "
                f"{getattr(energy, 'name', energy)!r} [{low:g}, {high:g}] eV; nothing was moved"
            )


def data_keys(obj: Any) -> list[str]:
    """The data keys a readable reports: its hinted fields and its name."""
    hints = getattr(obj, "hints", None) or {}
    fields = list(hints.get("fields", []))
    name = getattr(obj, "name", None)
    return fields + ([name] if name else [])


def detector_roles(detectors: Sequence[Any], roles: Mapping[str, str] | None = None) -> dict[str, str]:
    """Role -> data key map of ``detectors`` (``xas.detectors`` of the start document).

    With ``roles`` given, every data key it names must belong to one of ``detectors``;
    otherwise the :data:`ROLES` whose data keys are present are used.
    """
    present = {key for det in detectors for key in data_keys(det)}
    if roles is not None:
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ValueError(f"xafs_scan: unknown detector roles {unknown}; roles are {sorted(ROLES)}")
        missing = {role: key for role, key in roles.items() if key not in present}
        if missing:
            raise ValueError(
                f"xafs_scan: roles {missing} name data keys that none of the detectors provides "
                f"(have {sorted(present)})"
            )
        return dict(roles)
    return {role: key for role, key in ROLES.items() if key in present}


def find_dwell(detectors: Sequence[Any], dwell_time: Movable | None = None, *, required: bool = True) -> Any:
    """The counting-time signal: ``dwell_time`` if given, else the detector named ``dwell_time``
    or a detector's ``dwell_time`` attribute; ``None`` (or ``ValueError`` when ``required``)."""
    if dwell_time is not None:
        return dwell_time
    for det in detectors:
        if getattr(det, "name", None) == "dwell_time":
            return det
    for det in detectors:
        candidate = getattr(det, "dwell_time", None)
        if candidate is not None and hasattr(candidate, "set"):
            return candidate
    if not required:
        return None
    raise ValueError(
        "xafs_scan: no dwell-time signal found among the detectors (named 'dwell_time' or a "
        "'dwell_time' attribute); pass dwell_time=<settable signal>"
    )
