"""Conventional XAFS step scan: ``xafs_scan``.

Composed from Bluesky stubs and decorators like ``bluesky.plans.list_scan``; it adds a per-point
dwell time, the ``XDI`` and ``xas`` start-document blocks of docs/architecture.md, and refuses
an energy outside the positioner's limits before anything moves.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Movable, Readable
from bluesky.utils import Msg

from endstation.modes import MODE_ROLES, ROLES, SCAN_MODES

from .checks import ScanMode, check_limits, checked_plan, data_keys, detector_roles, find_dwell
from .grids import EnergyGrid, make_grid
from .metadata import merge_md

__all__ = ["xafs_scan"]


def _mono_md(energy: Any) -> dict[str, Any]:
    mono: dict[str, Any] = {}
    for attr, key in (("crystal", "name"), ("d_spacing", "d_spacing")):
        sig = getattr(energy, attr, None)
        if isinstance(sig, (str, int, float)):
            mono[key] = sig
        elif sig is not None and hasattr(sig, "get"):
            try:
                mono[key] = sig.get()
            except Exception:  # a disconnected EPICS PV must not stop the scan's metadata
                continue
    return mono


@checked_plan
def xafs_scan(
    detectors: Sequence[Readable],
    energy: Movable,
    *,
    element: str,
    edge: str,
    grid: Mapping[str, Any] | EnergyGrid | None = None,
    e0: float | None = None,
    mode: ScanMode = "transmission",
    dwell_time: Movable | None = None,
    roles: Mapping[str, str] | None = None,
    md: Mapping[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """Conventional XAFS step scan over a grid relative to E0.

    At each point: checkpoint, set the dwell time and move the mono together, trigger and
    read the detectors and the mono.  The grid, E0, mode and limits are checked when the plan
    is made, so bad input raises before anything moves.

    Parameters
    ----------
    detectors : list
        Readables, e.g. ``[I0, It, Ir, If, dwell_time]``.
    energy : Movable
        Monochromator energy positioner (eV); its ``limits`` are checked for every point.
    element, edge : str
        Absorber and edge, e.g. ``"Cu"``, ``"K"`` (xraydb must know them).
    grid : mapping or EnergyGrid, optional
        ``{"bounds": "-200 -30 -10 25 13k", "steps": "10 2 0.3 0.05k",
        "times": "0.5 0.5 0.5 0.25k"}`` (the default) -- see :mod:`plans.grids`.
    e0 : float, optional
        Edge energy (eV); default the tabulated one.
    mode : {"transmission", "fluorescence"}
        Which mu(E) the run is for (recorded in ``xas.mode``).
    dwell_time : Movable, optional
        Counting-time signal set before each point; default the detector named
        ``dwell_time`` or a detector's ``dwell_time`` attribute.
    roles : mapping, optional
        Role -> data key (``i0``, ``it``, ``ir``, ``if``); default by the endstation's names.
    md : dict, optional
        Metadata; its ``XDI`` and ``xas`` blocks are merged into the plan's by family/key.

    Yields
    ------
    msg : Msg
        Messages for the RunEngine.

    Returns
    -------
    uid : str
        The run's uid.

    Raises
    ------
    ValueError
        Unknown element/edge, a bad grid, an unknown mode, a missing detector role, or an energy
        outside the positioner's limits (naming the energy and the limits).

    See Also
    --------
    bluesky.plans.list_scan
    plans.grids.parse_grid
    """
    if mode not in SCAN_MODES:
        raise ValueError(f"xafs_scan: mode must be one of {SCAN_MODES}, got {mode!r}")
    the_grid = make_grid(element, edge, grid, e0=e0)
    check_limits(energy, the_grid.energies)
    role_map = detector_roles(detectors, roles)
    needed = MODE_ROLES[mode]
    lacking = [role for role in needed if role not in role_map]
    if lacking:
        raise ValueError(
            f"xafs_scan: mode {mode!r} needs detector roles {list(needed)}; missing {lacking} "
            f"(found {role_map}); pass roles={{...}}"
        )
    dwell = find_dwell(detectors, dwell_time)
    energy_field = data_keys(energy)[0]
    readables = list(detectors)
    if dwell not in readables:
        readables.append(dwell)
    if energy not in readables:
        readables.append(energy)

    energies = [float(x) for x in the_grid.energies]
    dwells = [float(x) for x in the_grid.dwell]
    symbol = element.strip()
    xdi: dict[str, Any] = {
        "Element": {"symbol": symbol, "edge": edge.strip()},
        "Scan": {"edge_energy": the_grid.e0},
    }
    mono = _mono_md(energy)
    if mono:
        xdi["Mono"] = mono
    xas_md: dict[str, Any] = {
        "element": symbol,
        "edge": edge.strip(),
        "e0": the_grid.e0,
        "mode": mode,
        "energy_field": energy_field,
        "detectors": role_map,
        "dwell_field": getattr(dwell, "name", "dwell_time"),
        "grid": {**the_grid.spec, "num_points": len(energies)},
    }
    _md = {
        "detectors": [det.name for det in detectors],
        "motors": [energy.name],
        "num_points": len(energies),
        "num_intervals": len(energies) - 1,
        "plan_name": "xafs_scan",
        "plan_args": {
            "detectors": list(map(repr, detectors)),
            "energy": repr(energy),
            "element": element,
            "edge": edge,
            "grid": dict(the_grid.spec),
            "e0": e0,
            "mode": mode,
        },
        "plan_pattern": "array",
        "plan_pattern_module": "numpy",
        "plan_pattern_args": {"object": energies},
        "XDI": xdi,
        "xas": xas_md,
        "hints": {"dimensions": [([energy_field], "primary")]},
    }
    _md = merge_md(_md, md)

    @bpp.stage_decorator(readables)
    @bpp.run_decorator(md=_md)
    def inner_xafs_scan() -> Generator[Msg, Any, None]:
        for point, seconds in zip(energies, dwells):
            yield from bps.checkpoint()
            yield from bps.mv(energy, point, dwell, seconds)
            yield from bps.trigger_and_read(readables)

    return inner_xafs_scan()
