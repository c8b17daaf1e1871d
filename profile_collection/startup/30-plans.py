"""30-plans: XAS plans bound to this endstation.

``RE(xafs("Cu", "K"))`` -- conventional scan on the default grid (-200 eV .. k = 13);
``RE(xafs("Cu", "K", grid={"bounds": "-50 -10 20 8k", "steps": "5 0.5 0.05k",
"times": "0.5 0.5 0.2k"}, md={"XDI": {"Sample": {"name": "my sample"}}}))``.
``RE(adaptive("my_candidates/", "Cu", "K", model="cu-k"))`` -- identify the sample among candidate
structures with as few readings as it takes (``adaptive_xas_plan`` on this endstation; its ranking
run is stored in the catalog beside the raw run).
``xafs_scan``, ``make_grid`` and ``adaptive_xas_plan`` are the generic plans; ``bp`` and ``bps``
are bluesky's plans and plan stubs.
"""

import bluesky.plan_stubs as bps  # noqa: F401  (for interactive use)
import bluesky.plans as bp  # noqa: F401

from plans import DEFAULT_GRID, adaptive_xas_plan, make_grid, xafs_scan  # noqa: F401
from plans.metadata import merge_md


def candidate_library_of(candidates, model="cu-k"):
    """``candidates`` as a ``CandidateLibrary``: a library as it is; a list of structures or SMILES
    predicted with ``model``; a path (structure folder, SMILES file, FEFF folder, saved library) read."""
    from xas_callbacks.candidates import CandidateLibrary

    if isinstance(candidates, CandidateLibrary):
        return candidates
    if isinstance(candidates, (list, tuple)):
        return CandidateLibrary.from_structures(list(candidates), model=model)
    return CandidateLibrary.from_source(candidates, model=model)


def xafs(element="Cu", edge="K", grid=None, *, e0=None, mode="transmission", md=None):
    """``xafs_scan`` of this endstation's detectors, with its XDI metadata (``md`` merged in)."""
    return (yield from xafs_scan(detectors, energy, element=element, edge=edge, grid=grid,
                                 e0=e0, mode=mode, md=merge_md({"XDI": xdi_metadata}, md)))


def adaptive(candidates, element="Cu", edge="K", *, model="cu-k", confidence=0.95, max_points=40,
             max_beam_time_s=None, dwell_s=1.0, tail=None, agent="information-gain", mode="transmission",
             md=None):
    """``adaptive_xas_plan`` of this endstation's detectors, with its XDI metadata.

    ``candidates``: a folder of structure files, a SMILES file, a FEFF folder, a saved library, a
    list of structures or SMILES, or a ``CandidateLibrary``. The ranking comes from the callback
    ``enable_ranking`` subscribed when it ranks these candidates; otherwise from one made for this
    run, drawn live (``ranking_plot()``). Either way its ranking run is stored in the catalog
    beside the raw run.
    """
    from plans.ranking_feed import InProcessRankingFeed
    from xas_callbacks.callback import XASRankingCallback

    library = candidate_library_of(candidates, model)
    subscribed = globals().get("ranking_callback")
    if subscribed is not None and subscribed.ranks(library):
        feed = InProcessRankingFeed(subscribed, subscribe=False)
    else:  # a callback for this run, its ranking drawn live (00-base's ranking_plot)
        feed = InProcessRankingFeed(XASRankingCallback(library, emit=catalog, plot=ranking_plot()))
    return (yield from adaptive_xas_plan(
        detectors, energy, element=element, edge=edge, candidates=library, model=model,
        confidence=confidence, max_points=max_points, max_beam_time_s=max_beam_time_s, dwell_s=dwell_s,
        tail=tail, agent=agent, mode=mode, feed=feed, md=merge_md({"XDI": xdi_metadata}, md)))
