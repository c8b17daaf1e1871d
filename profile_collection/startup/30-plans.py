"""30-plans: XAS plans bound to this endstation.

``RE(xafs("Cu", "K"))`` -- conventional scan on the default grid (-200 eV .. k = 13);
``RE(xafs("Cu", "K", grid={"bounds": "-50 -10 20 8k", "steps": "5 0.5 0.05k",
"times": "0.5 0.5 0.2k"}, md={"XDI": {"Sample": {"name": "my sample"}}}))``.
``xafs_scan``, ``make_grid`` and (lazily) ``adaptive_xas_plan`` are the generic plans.
"""

import bluesky.plan_stubs as bps  # noqa: F401  (for interactive use)
import bluesky.plans as bp  # noqa: F401

from plans import DEFAULT_GRID, make_grid, xafs_scan  # noqa: F401


def xafs(element="Cu", edge="K", grid=None, *, e0=None, mode="transmission", md=None):
    """``xafs_scan`` of this endstation's detectors, with its XDI metadata."""
    _md = {"XDI": {family: dict(values) for family, values in xdi_metadata.items()}}
    for family, values in ((md or {}).get("XDI") or {}).items():
        _md["XDI"].setdefault(family, {}).update(values)
    _md.update({k: v for k, v in (md or {}).items() if k != "XDI"})
    return (yield from xafs_scan(detectors, energy, element=element, edge=edge, grid=grid,
                                 e0=e0, mode=mode, md=_md))
