"""30-plans: XAS plans bound to this endstation.

``RE(xafs("Cu", "K"))`` -- conventional scan on the default grid (-200 eV .. k = 13);
``RE(xafs("Cu", "K", grid={"bounds": "-50 -10 20 8k", "steps": "5 0.5 0.05k",
"times": "0.5 0.5 0.2k"}, md={"XDI": {"Sample": {"name": "my sample"}}}))``.
``RE(adaptive("my_candidates/", "Cu", "K", model="cu-k"))`` -- identify the sample among candidate
structures with as few readings as it takes (``adaptive_xas_plan`` on this endstation; its ranking
run is stored in the catalog beside the raw run).
``xafs_scan``, ``make_grid`` and (lazily) ``adaptive_xas_plan`` are the generic plans.
"""

import bluesky.plan_stubs as bps  # noqa: F401  (for interactive use)
import bluesky.plans as bp  # noqa: F401

from plans import DEFAULT_GRID, make_grid, xafs_scan  # noqa: F401


def _with_endstation_md(md):
    """This endstation's XDI metadata, updated with the user's ``md``."""
    _md = {"XDI": {family: dict(values) for family, values in xdi_metadata.items()}}
    for family, values in ((md or {}).get("XDI") or {}).items():
        _md["XDI"].setdefault(family, {}).update(values)
    _md.update({k: v for k, v in (md or {}).items() if k != "XDI"})
    return _md


def xafs(element="Cu", edge="K", grid=None, *, e0=None, mode="transmission", md=None):
    """``xafs_scan`` of this endstation's detectors, with its XDI metadata."""
    return (yield from xafs_scan(detectors, energy, element=element, edge=edge, grid=grid,
                                 e0=e0, mode=mode, md=_with_endstation_md(md)))


def adaptive(candidates, element="Cu", edge="K", *, model="cu-k", md=None, **kwargs):
    """``adaptive_xas_plan`` of this endstation's detectors, with its XDI metadata.

    ``candidates``: a folder of structure files, a SMILES file, a FEFF folder, a saved library or a
    ``CandidateLibrary``; other keywords go to ``adaptive_xas_plan`` (``confidence``,
    ``max_points``, ``dwell_s``, ``tail``, ``agent``...). The ranking comes from the callback
    ``enable_ranking`` subscribed, when it ranks the same candidates; otherwise from one made for
    this run, whose ranking documents are stored in the catalog too.
    """
    from plans.adaptive import adaptive_xas_plan
    from plans.ranking_feed import InProcessRankingFeed
    from xas_callbacks.candidates import CandidateLibrary

    library = candidates if isinstance(candidates, CandidateLibrary) else CandidateLibrary.from_source(
        candidates, model=model)
    if "feed" not in kwargs:
        subscribed = globals().get("ranking_callback")
        if subscribed is not None and list(subscribed.library.names) == list(library.names):
            kwargs["feed"] = InProcessRankingFeed(subscribed, subscribe=False)
        else:
            from xas_callbacks.callback import XASRankingCallback

            kwargs["feed"] = InProcessRankingFeed(XASRankingCallback(library, emit=catalog))
    return (yield from adaptive_xas_plan(detectors, energy, element=element, edge=edge, candidates=library,
                                         model=model, md=_with_endstation_md(md), **kwargs))
