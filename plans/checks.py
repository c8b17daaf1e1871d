"""What a plan checks when it is called, before the RunEngine runs it and before anything moves:
the types of its arguments, energies within the monochromator's limits, the detector roles, the
dwell-time signal.

:func:`checked_plan` marks such a plan for bluesky (``bluesky.utils.is_plan``, the queue server)
while keeping the checks at the call: a bad argument raises where the user typed it. Its
signature carries evaluated type annotations, which the queue server shows in its list of allowed
plans and checks JSON arguments against before it queues an item; :func:`check_arguments` checks
the same annotations at the call, so ``max_points="ten"`` is refused in IPython too.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import numbers
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from bluesky.protocols import Movable
from bluesky.utils import Plan

from endstation.modes import ROLES, SCAN_MODES

__all__ = ["checked_plan", "check_arguments", "check_limits", "data_keys", "detector_roles", "find_dwell",
           "ScanMode"]

#: How mu(E) is formed: a parameter type the queue server shows as a choice.
ScanMode = Literal[SCAN_MODES]


def checked_plan(function):
    """Decorator: ``function`` checks its arguments and returns a generator of messages; the
    result is a bluesky plan (``is_plan`` is True; a plan never iterated is warned about, as with
    ``bluesky.utils.plan``), its arguments are checked against its type annotations
    (:func:`check_arguments`), and its own checks still run, and raise, at the call."""
    signature = inspect.signature(function, eval_str=True)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        check_arguments(function.__name__, signature, args, kwargs)
        messages = function(*args, **kwargs)

        def same_messages():
            return messages

        same_messages.__name__ = function.__name__
        return Plan(same_messages)

    wrapper.__signature__ = signature  # evaluated annotations, for the queue server
    wrapper._is_plan_ = True
    return wrapper


def check_arguments(plan_name: str, signature: inspect.Signature, args: Sequence, kwargs: Mapping) -> None:
    """Raise ``TypeError`` (``ValueError`` for a value outside a ``Literal``'s choices) naming the
    first argument that does not match its annotation.

    Understood: ``bool``, ``int`` (not bool), ``float`` (an int is fine too), ``str``,
    ``Literal[...]``, unions and ``None``, mappings, sequences (not strings), callables and
    classes (``isinstance``). Protocols and ``Any`` accept anything: the plan's own checks see to
    those.
    """
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{plan_name}: {exc}") from None
    for name, value in bound.arguments.items():
        parameter = signature.parameters[name]
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.annotation is inspect.Parameter.empty:
            continue
        if _conforms(value, parameter.annotation) is False:
            # A choice among values (Literal) is a bad value; anything else a bad type.
            error = ValueError if typing.get_origin(parameter.annotation) is Literal else TypeError
            raise error(f"{plan_name}: {name} must be {_type_name(parameter.annotation)}, "
                        f"got {value!r} ({type(value).__name__}); nothing was moved")


def _conforms(value: Any, annotation: Any) -> bool | None:
    """True/False where the annotation says; None where it cannot tell."""
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        answers = [_conforms(value, member) for member in typing.get_args(annotation)]
        if any(a is True for a in answers):
            return True
        return None if any(a is None for a in answers) else False
    if origin is Literal:
        return value in typing.get_args(annotation)
    target = origin or annotation
    if target is bool:
        return isinstance(value, bool)
    if target is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if target is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if target is str:
        return isinstance(value, str)
    if target is os.PathLike:
        return isinstance(value, os.PathLike)
    if target in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return isinstance(value, Mapping)
    if target in (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence):
        return isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, (str, bytes)))
    if target is collections.abc.Callable:
        return callable(value)
    if isinstance(target, type) and not getattr(target, "_is_protocol", False):
        return isinstance(value, target)
    return None


def _type_name(annotation: Any) -> str:
    if annotation is type(None) or annotation is None:
        return "None"
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(annotation, "__name__", str(annotation))


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
