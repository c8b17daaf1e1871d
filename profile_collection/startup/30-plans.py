"""30-plans: XAS plans bound to this endstation, and bluesky's standard plans.

``RE(xafs("Cu", "K"))`` -- conventional scan on the default grid (-200 eV .. k = 13);
``RE(xafs("Cu", "K", grid={"bounds": "-50 -10 20 8k", "steps": "5 0.5 0.05k",
"times": "0.5 0.5 0.2k"}, md={"XDI": {"Sample": {"name": "my sample"}}}))``.
``RE(adaptive("my_candidates/", "Cu", "K", model="cu-k"))`` -- identify the sample among candidate
structures with as few readings as it takes (``adaptive_xas_plan`` on this endstation; its ranking
run is stored in the catalog beside the raw run).
``xafs_scan``, ``make_grid`` and ``adaptive_xas_plan`` are the generic plans; ``bp`` and ``bps``
are bluesky's plans and plan stubs.

Every plan here is one the queue server offers (``start-re-manager --startup-dir
profile_collection/startup``): ``xafs``, ``adaptive``, ``xafs_scan``, ``adaptive_xas_plan`` and
bluesky's ``count``, ``scan``, ``rel_scan``, ``list_scan``, ``rel_list_scan``, ``grid_scan``,
``rel_grid_scan``, ``log_scan``, ``rel_log_scan``, ``mv``, ``mvr``, each with named, typed
parameters and defaults, which the queue server checks JSON arguments against before it queues an
item. ``xafs`` and ``adaptive`` also check their arguments when called (``plans.checks``), so a
wrong type or a model, element, edge and candidates that do not belong together are refused
before any run opens.
"""

import os
from typing import Any, Literal

import bluesky.plan_stubs as bps  # noqa: F401  (for interactive use)
import bluesky.plans as bp  # noqa: F401
from bluesky.plan_stubs import mv, mvr  # noqa: F401  (standard plans, offered by the queue server)
from bluesky.plans import (  # noqa: F401
    count,
    grid_scan,
    list_scan,
    log_scan,
    rel_grid_scan,
    rel_list_scan,
    rel_log_scan,
    rel_scan,
    scan,
)

from plans import DEFAULT_GRID, adaptive_xas_plan, make_grid, xafs_scan  # noqa: F401
from plans.adaptive import candidate_library
from plans.energy_selection import AGENTS
from plans.checks import ScanMode, checked_plan
from plans.metadata import merge_md
from xas_callbacks.candidates import CandidateLibrary

try:  # the queue server shows `candidates` as the path it gets in JSON
    from bluesky_queueserver import parameter_annotation_decorator
except ImportError:  # queue server not installed

    def parameter_annotation_decorator(annotation):
        return lambda function: function


@checked_plan
def xafs(
    element: str = "Cu",
    edge: str = "K",
    grid: dict[str, Any] | None = None,
    *,
    e0: float | None = None,
    mode: ScanMode = "transmission",
    md: dict[str, Any] | None = None,
):
    """Conventional XAFS scan of this endstation (``xafs_scan`` with its detectors and XDI metadata).

    Parameters
    ----------
    element : str
        Absorbing element, e.g. "Cu".
    edge : str
        Absorption edge, e.g. "K".
    grid : dict, optional
        Energy grid relative to E0: {"bounds": "-200 -30 -10 25 13k", "steps": "10 2 0.3 0.05k",
        "times": "0.5 0.5 0.5 0.25k"} (the default).
    e0 : float, optional
        Edge energy in eV; default the tabulated one.
    mode : str
        "transmission" or "fluorescence".
    md : dict, optional
        Metadata merged into the start document, e.g. {"XDI": {"Sample": {"name": "CuO"}}}.
    """
    return xafs_scan(detectors, energy, element=element, edge=edge, grid=grid,  # noqa: F821 -- 10-endstation
                     e0=e0, mode=mode, md=merge_md({"XDI": xdi_metadata}, md))  # noqa: F821


@parameter_annotation_decorator({"parameters": {"candidates": {
    "annotation": "str",
    "description": "Candidate structures: a folder of structure files (CIF, POSCAR, XYZ), a SMILES file, a "
                   "FEFF materials folder, a saved candidate library (.npz), or a candidate source: "
                   "'amcsd:Cu' (AMCSD crystals holding Cu), 'qm9:O?count=2000&seed=0' (QM9 molecules), "
                   "'enumerate:CuO?substitute=auto&keep=Cu&strain=0.02&distort=0.05&count=50&seed=0'.",
}}})
@checked_plan
def adaptive(
    candidates: str | os.PathLike | CandidateLibrary,
    element: str = "Cu",
    edge: str = "K",
    *,
    model: str | None = "cu-k",
    confidence: float = 0.95,
    max_points: int = 40,
    max_beam_time_s: float | None = None,
    dwell_s: float = 1.0,
    tail: dict[str, Any] | None = None,
    agent: Literal[tuple(AGENTS)] = "information-gain",
    mode: ScanMode = "transmission",
    e0: float | None = None,
    md: dict[str, Any] | None = None,
):
    """Identify the sample among candidate structures with as few readings as it takes.

    ``adaptive_xas_plan`` of this endstation's detectors, with its XDI metadata. The ranking comes
    from the callback ``enable_ranking`` subscribed when it ranks these candidates; otherwise from
    one made for this run, drawn live (00-base's ``ranking_plot()``). Either way its ranking run is stored in the catalog beside the raw run,
    and the raw run's metadata names it (``analysis_runs``).

    Parameters
    ----------
    candidates : str
        A folder of structure files, a SMILES file, a FEFF materials folder, a saved candidate
        library, a candidate source ("amcsd:Cu", "qm9:O?count=2000&seed=0",
        "enumerate:CuO?count=50", see models.sources), or (in IPython) a list of structures or
        SMILES or a CandidateLibrary.
    element : str
        Absorbing element, e.g. "Cu".
    edge : str
        Absorption edge, e.g. "K".
    model : str, optional
        Model that predicts the candidates' spectra: "cu-k", "o-k" or "n-k".
    confidence : float
        Stop once the leading candidate's probability reaches this (0 < confidence <= 1).
    max_points : int
        Most readings to take (seed included).
    max_beam_time_s : float, optional
        Most beam time to spend (dwell, travel, settling), in seconds.
    dwell_s : float
        Counting time per reading, in seconds.
    tail : dict, optional
        A conventional grid measured after identification, e.g. {"bounds": "-30 40 12k",
        "steps": "0.5 0.05k", "times": "1 1"}.
    agent : str
        Who chooses the energies: "information-gain" or "space-filling" (the baseline).
    mode : str
        "transmission" or "fluorescence".
    e0 : float, optional
        Edge energy in eV; default the tabulated one.
    md : dict, optional
        Metadata merged into the start document.
    """
    from plans.ranking_feed import InProcessRankingFeed
    from xas_callbacks.callback import XASRankingCallback

    library = candidate_library(candidates, model, element, edge)  # model, element, edge checked first
    subscribed = globals().get("ranking_callback")
    if subscribed is not None and subscribed.ranks(library):
        feed = InProcessRankingFeed(subscribed, subscribe=False)
    else:
        feed = InProcessRankingFeed(XASRankingCallback(library, emit=catalog,  # noqa: F821 -- 00-base
                                                       plot=ranking_plot()))  # noqa: F821
    return adaptive_xas_plan(
        detectors, energy, element=element, edge=edge, candidates=library, model=model,  # noqa: F821
        confidence=confidence, max_points=max_points, max_beam_time_s=max_beam_time_s, dwell_s=dwell_s,
        tail=tail, agent=agent, mode=mode, e0=e0, feed=feed,
        md=merge_md({"XDI": xdi_metadata}, md))  # noqa: F821
