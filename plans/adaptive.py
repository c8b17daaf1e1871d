"""``adaptive_xas_plan``: measure where it tells the candidates apart, stop when the sample is known.

One run. Everything that can be checked is checked when the plan is made, before the run opens
or anything moves: the mode, the candidates (predicted here, with the model), that model and
candidates are for the element and edge asked, the agent, and every energy the plan may visit
(seed, fallback grid, tail) against the monochromator's limits.

Inside the run: a sparse seed (pre-edge and post-edge anchors for the normalisation, a coarse pass
over the edge), then a loop. The ranking callback answers each reading with a ranking document
(:mod:`plans.ranking_feed`), which the plan turns into the outcome the agent ingests; the agent
(bluesky-adaptive's ``ingest``/``suggest``/``should_stop``) says where to measure next or to
stop. The plan stops when the leading candidate's probability reaches ``confidence`` or a point
or beam-time budget is spent, and can finish with a conventional tail. Every decision (the
ranking it used, the energies it chose and why) is recorded in the run's ``decision`` stream
before the checkpoint that precedes the move, so a pause/rewind neither loses nor repeats one.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator
from bluesky_adaptive.protocols import Optimizer
from ophyd import Component as Cpt
from ophyd import Device

from endstation.beamtime import beam_time_cost
from endstation.devices import TypedSignal
from endstation.modes import SCAN_MODES
from plans.energy_selection import AGENTS
from plans.checks import ScanMode, check_limits, checked_plan, detector_roles, find_dwell
from plans.grids import EnergyGrid, make_grid
from plans.metadata import merge_md
from plans.ranking_feed import InProcessRankingFeed, RankingFeed, outcome_from_ranking
from xas_callbacks.candidates import CandidateLibrary

__all__ = ["adaptive_xas_plan", "DecisionRecorder", "seed_energies", "plan_seed", "make_agent", "DEFAULT_SEED"]

#: Above this chi^2 per reading, the leading candidate does not explain the readings even with the
#: model's uncertainty counted: the stop reason says the sample may be none of the candidates.
MISFIT_REDUCED_CHI2 = 4.0

#: Above this probability of "none of the candidates", the stop reason says so.
NONE_WARNING = 0.3

#: Seed set, relative to E0 unless noted: normalisation anchors below and above the edge, and
#: ``coarse_points`` evenly over the energy range the model predicts.
DEFAULT_SEED: dict[str, Any] = {"pre_edge": [-60.0, -30.0], "post_edge": [150.0], "coarse_points": 8}

#: Candidates recorded with each decision.
DECISION_TOP = 10


class DecisionRecorder(Device):
    """Soft signals holding one decision of the adaptive plan, read into the ``decision`` stream.

    Arrays have fixed lengths (``top`` candidates, ``batch_size`` energies, padded with "" and
    NaN), and every signal declares its numpy dtype, so the stream reads back from the catalog
    as numbers and strings.
    """

    n_points = Cpt(TypedSignal, value=0, kind="hinted", dtype_numpy="<i8")
    top_candidate = Cpt(TypedSignal, value="", kind="hinted", dtype_numpy="<U64")
    top_probability = Cpt(TypedSignal, value=0.0, kind="hinted")
    entropy = Cpt(TypedSignal, value=0.0)
    top_reduced_chi2 = Cpt(TypedSignal, value=0.0)
    p_none = Cpt(TypedSignal, value=0.0, kind="hinted")
    offset_eV = Cpt(TypedSignal, value=0.0)
    broadening_eV = Cpt(TypedSignal, value=0.0)
    ranking_names = Cpt(TypedSignal, value=[""], dtype_numpy="<U64")
    ranking_probabilities = Cpt(TypedSignal, value=[0.0])
    next_energies = Cpt(TypedSignal, value=[0.0])
    expected_gain = Cpt(TypedSignal, value=[0.0])
    beam_time_s = Cpt(TypedSignal, value=0.0)
    action = Cpt(TypedSignal, value="", dtype_numpy="<U16")
    reason = Cpt(TypedSignal, value="", dtype_numpy="<U400")

    def __init__(self, *args, name: str = "decision", top: int = DECISION_TOP, batch_size: int = 1, **kwargs):
        super().__init__(*args, name=name, **kwargs)
        self.top, self.batch_size = int(top), int(batch_size)
        self.record(Decision("start", ""), None, 0, 0.0)

    def record(self, decision: "Decision", ranking: Mapping | None, n_points: int, beam_time_s: float) -> None:
        """Put one decision and the ranking it was taken on into the signals."""
        ranking = ranking or {}
        ranked = ranking.get("ranking", [])[: self.top]
        nan = float("nan")
        chosen = decision.chosen[: self.batch_size]
        values = {
            "n_points": int(n_points),
            "top_candidate": ranked[0]["name"] if ranked else "",
            "top_probability": float(ranked[0]["probability"]) if ranked else 0.0,
            "entropy": float(ranking.get("entropy", nan)),
            "top_reduced_chi2": float(ranking.get("top_reduced_chi2", nan)),
            "p_none": float(ranking.get("p_none", nan)),
            "offset_eV": float(ranking.get("offset_eV", nan)),
            "broadening_eV": float(ranking.get("broadening_eV", nan)),
            "ranking_names": _padded([r["name"] for r in ranked], self.top, ""),
            "ranking_probabilities": _padded([float(r["probability"]) for r in ranked], self.top, nan),
            "next_energies": _padded([float(c["energy"]) for c in chosen], self.batch_size, nan),
            "expected_gain": _padded([float(c.get("expected_information_gain", nan)) for c in chosen],
                                     self.batch_size, nan),
            "beam_time_s": float(beam_time_s),
            "action": decision.action,
            "reason": decision.reason,
        }
        for key, value in values.items():
            getattr(self, key).put(value)


def _padded(values: list, n: int, fill) -> list:
    return (list(values) + [fill] * n)[:n]


@dataclass
class Decision:
    """What the plan does next: ``measure`` the ``chosen`` energies, ``stop``, fall back, add a tail."""

    action: str
    reason: str
    chosen: list[dict] = field(default_factory=list)


def seed_energies(
    e0: float, model_energies: np.ndarray, seed: Mapping | None = None, margin_eV: float = 0.0
) -> np.ndarray:
    """The sparse seed set: normalisation anchors, then a coarse pass over the model's range.

    The coarse pass stays ``margin_eV`` inside the model's range (the ranking's offset range, so
    that every seed reading is usable) and runs downwards, so the monochromator ends at the edge,
    where the candidates differ most.
    """
    seed = {**DEFAULT_SEED, **(seed or {})}
    lo, hi = float(model_energies[0]), float(model_energies[-1])
    pre = [e0 + d for d in seed["pre_edge"] if e0 + d < lo]
    post = [e0 + d for d in seed["post_edge"] if e0 + d > hi]
    n = int(seed["coarse_points"])
    coarse = list(np.linspace(hi - margin_eV, lo + margin_eV, n)) if n else []
    return np.round(np.asarray(pre + post + coarse, dtype=float), 3)


def plan_seed(e0: float, library, ranking_config=None, seed: Mapping | None = None) -> np.ndarray:
    """The seed set of the plan for ``library``: :func:`seed_energies` with the coarse pass kept
    inside the ranking's offset range (``ranking_config``, a
    :class:`xas_callbacks.ranking.RankingConfig`; none: no margin)."""
    offsets = 0.0 if ranking_config is None else max(abs(ranking_config.offset_min), abs(ranking_config.offset_max))
    return seed_energies(e0, library.energies, seed, margin_eV=min(offsets, 0.25 * np.ptp(library.energies)))


def make_agent(name: str, library, *, dwell_s: float, mono_speed_eV_per_s: float, settle_s: float,
               confidence: float, max_points: int | None, model_floor: float = 0.03,
               agent_kwargs: Mapping | None = None, seed: Sequence[float] | None = None):
    """The named agent (:data:`plans.energy_selection.AGENTS`) for ``library``, set up as
    ``adaptive_xas_plan`` sets it up (``seed``: energies it suggests first, for plans that take
    every energy from the agent, such as bluesky-adaptive's ``optimize``)."""
    if name not in AGENTS:
        raise ValueError(f"agent must be one of {sorted(AGENTS)} or an agent object, got {name!r}")
    return AGENTS[name](
        library.names, library.energies, library.mean, library.std,
        dwell_s=dwell_s, mono_speed_eV_per_s=mono_speed_eV_per_s, settle_s=settle_s,
        confidence=confidence, max_points=max_points, model_floor=model_floor, seed=seed,
        **dict(agent_kwargs or {}),
    )


def candidate_library(candidates: Any, model: str | None, element: str | None = None, edge: str | None = None):
    """The candidates as a :class:`~xas_callbacks.candidates.CandidateLibrary`: a library as it
    is; a path or a candidate-source string such as ``"amcsd:Cu"``
    (:meth:`~xas_callbacks.candidates.CandidateLibrary.from_source`) or a list of structures,
    SMILES or source strings, predicted with ``model``. Refused (``ValueError``) when empty or when
    the model or the candidates are for another element or edge than the ones given."""
    if model is not None and element is not None and not isinstance(candidates, CandidateLibrary):
        from models.predictor import model_card

        card = model_card(model)
        if (card["element"], card["edge"].upper()) != (element, edge.upper()):
            raise ValueError(f"model {model!r} predicts the {card['element']} {card['edge']}-edge, "
                             f"not the {element} {edge}-edge asked for")
    if isinstance(candidates, CandidateLibrary):
        library = candidates
    elif isinstance(candidates, (list, tuple)):
        library = CandidateLibrary.from_structures(list(candidates), model=model)
    else:
        library = CandidateLibrary.from_source(candidates, model=model)
    if len(library) < 1:
        raise ValueError(f"no usable candidates in {candidates!r}: {library.failures}")
    if element is not None:
        library.check_absorber(element, edge)
    return library


@checked_plan
def adaptive_xas_plan(
    detectors: Sequence[Readable],
    energy: Movable,
    *,
    element: str,
    edge: str,
    candidates: str | os.PathLike | CandidateLibrary,
    model: str | None = None,
    confidence: float = 0.95,
    max_points: int = 40,
    max_beam_time_s: float | None = None,
    dwell_s: float = 1.0,
    seed: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    tail: Mapping[str, Any] | EnergyGrid | None = None,
    mode: ScanMode = "transmission",
    e0: float | None = None,
    feed: RankingFeed | None = None,
    ranking_timeout_s: float = 10.0,
    mono_speed_eV_per_s: float = 50.0,
    settle_s: float = 0.2,
    agent: str | Optimizer = "information-gain",
    agent_kwargs: Mapping[str, Any] | None = None,
    per_step: Callable[..., Any] | None = None,
    md: Mapping[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Identify the sample among candidate structures with as few readings as it takes.

    Parameters
    ----------
    detectors : list
        Ion chambers (and fluorescence channel) read at each point, and the dwell-time signal;
        their names are the data keys ``I0``, ``It``, ``Ir``, ``If`` of the endstation.
    energy : Movable
        Monochromator energy positioner (eV).
    element, edge : str
        Absorbing element and edge, e.g. ``"Cu"``, ``"K"``.
    candidates : str or CandidateLibrary
        A folder of structure files, a SMILES file, a FEFF materials folder, a saved library, a
        candidate source (``"amcsd:Cu"``, ``"qm9:O?count=2000&seed=0"``, ``"enumerate:CuO?count=50"``,
        :mod:`models.sources`), or a :class:`xas_callbacks.candidates.CandidateLibrary`.
    model : str, optional
        Shipped model name (``"cu-k"``, ``"o-k"``, ``"n-k"``) used to predict the candidates' spectra.
    confidence : float
        Stop once the leading candidate's posterior probability reaches this.
    max_points, max_beam_time_s : int, float
        Budgets of adaptive readings (seed included) and of beam time (dwell, travel, settling).
    dwell_s : float
        Counting time per reading.
    seed : dict, optional
        Overrides of :data:`DEFAULT_SEED`.
    batch_size : int
        Energies measured per decision.
    tail : dict or EnergyGrid, optional
        A conventional grid (see :func:`plans.grids.make_grid`) measured after identification,
        e.g. an EXAFS region.
    mode : {"transmission", "fluorescence"}
        How mu(E) is formed from the detectors.
    e0 : float, optional
        Edge energy; from the X-ray edge tables when not given.
    feed : RankingFeed, optional
        Where rankings come from. Default: a :class:`XASRankingCallback` subscribed for the
        duration of this plan.
    ranking_timeout_s : float
        How long to wait for a ranking from a remote feed before falling back to the
        conventional grid (recorded in the ``decision`` stream).
    mono_speed_eV_per_s, settle_s : float
        Monochromator travel speed and settling time, for the beam-time cost of each move.
    agent : str or object
        Who chooses the energies: ``"information-gain"`` (default,
        :class:`plans.energy_selection.EnergySelectionAgent`), ``"space-filling"`` (the same
        stopping rule with model-blind, evenly filling energies: a baseline), or any
        bluesky-adaptive ``Optimizer`` that also ``SupportsStoppingCriteria``, used as given: it
        ingests :func:`plans.ranking_feed.outcome_from_ranking` outcomes.
    agent_kwargs : dict, optional
        Extra settings of the named agent's class.
    per_step : callable, optional
        Hook called for each reading, as in :func:`bluesky.plans.list_scan`:
        ``per_step(detectors, {energy: target}, pos_cache)``; default
        :func:`bluesky.plan_stubs.one_nd_step` (checkpoint, move, trigger and read).
    md : dict, optional
        Metadata merged into the start document (:func:`plans.metadata.merge_md`: it adds and
        overrides, never deletes the plan's keys).

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
    TypeError
        At the call: an argument of the wrong type (e.g. ``max_points="ten"``).
    ValueError
        Before the run opens: a budget, confidence or time out of range, unknown mode or agent,
        no usable candidates, a model or candidates for another element or edge, a bad grid, or
        an energy outside the monochromator's limits.
    """
    _check_ranges(confidence=confidence, max_points=max_points, max_beam_time_s=max_beam_time_s,
                  dwell_s=dwell_s, batch_size=batch_size, ranking_timeout_s=ranking_timeout_s,
                  mono_speed_eV_per_s=mono_speed_eV_per_s, settle_s=settle_s)
    if mode not in SCAN_MODES:
        raise ValueError(f"adaptive_xas_plan: mode must be one of {SCAN_MODES}, got {mode!r}")
    if isinstance(agent, str) and agent not in AGENTS:
        raise ValueError(f"agent must be one of {sorted(AGENTS)} or an agent object, got {agent!r}")
    if not isinstance(agent, str) and agent_kwargs:
        raise ValueError("agent_kwargs apply to a named agent; configure an agent object yourself")
    if not isinstance(agent, str):
        from bluesky_adaptive.protocols import SupportsStoppingCriteria

        lacking = [p.__name__ for p in (Optimizer, SupportsStoppingCriteria) if not isinstance(agent, p)]
        if lacking:
            raise ValueError(f"agent {type(agent).__name__} does not implement bluesky-adaptive's {lacking} "
                             "(suggest, ingest, get_best_points, should_stop)")
    library = candidate_library(candidates, model, element, edge)
    conventional = make_grid(element, edge, None, e0=e0)
    e0 = conventional.e0
    if feed is None:
        from xas_callbacks.callback import XASRankingCallback

        feed = InProcessRankingFeed(XASRankingCallback(library))
    ranking_config = getattr(getattr(feed, "callback", None), "config", None)
    model_floor = 0.03 if ranking_config is None else ranking_config.model_floor
    seed_set = plan_seed(e0, library, ranking_config, seed)
    fallback = conventional.energies[(conventional.energies >= library.energies[0] - 20)
                                     & (conventional.energies <= library.energies[-1] + 20)]
    tail_grid = make_grid(element, edge, tail, e0=e0) if tail is not None else None
    for energies in (seed_set, fallback, [] if tail_grid is None else tail_grid.energies):
        check_limits(energy, energies, plan_name="adaptive_xas_plan")
    if isinstance(agent, str):
        agent = make_agent(agent, library, dwell_s=dwell_s, mono_speed_eV_per_s=mono_speed_eV_per_s,
                           settle_s=settle_s, confidence=confidence, max_points=max_points,
                           model_floor=model_floor, agent_kwargs=agent_kwargs)
    roles = detector_roles(detectors)
    dwell_signal = find_dwell(detectors, None, required=False)
    per_step = per_step or bps.one_nd_step
    provenance = library.provenance
    _md = {
        "plan_name": "adaptive_xas_plan",
        "detectors": [det.name for det in detectors],
        "motors": [energy.name],
        "plan_args": {
            "detectors": [repr(det) for det in detectors],
            "energy": repr(energy),
            "element": element,
            "edge": edge,
            "candidates": str(candidates) if isinstance(candidates, (str, os.PathLike))
            else str(provenance.get("source") or type(candidates).__name__),
            "model": model,
            "confidence": confidence,
            "max_points": max_points,
            "tail": tail,
        },
        "XDI": {"Element": {"symbol": element, "edge": edge}},
        "xas": {
            "element": element,
            "edge": edge,
            "e0": e0,
            "mode": mode,
            "energy_field": energy.name,
            "detectors": roles,
            "candidates": {
                "source": str(provenance.get("source") or ""),
                "sha256": provenance.get("candidates_sha256"),
                "names": list(library.names),
                "failures": dict(library.failures),
            },
            "model": {"name": provenance.get("model") or model, "weights_sha256": provenance.get("weights_sha256")},
            "policy": {
                "agent": type(agent).__name__,
                "agent_settings": _agent_settings(agent),
                "confidence": confidence,
                "max_points": max_points,
                "max_beam_time_s": max_beam_time_s,
                "dwell_s": dwell_s,
                "batch_size": batch_size,
                "seed": {**DEFAULT_SEED, **dict(seed or {})},
                "mono_speed_eV_per_s": mono_speed_eV_per_s,
                "settle_s": settle_s,
                "ranking_timeout_s": ranking_timeout_s,
                "feed": type(feed).__name__,
            },
        },
        "hints": {"dimensions": [([energy.name], "primary")]},
    }
    _md = merge_md(_md, md)
    recorder = DecisionRecorder(name="decision", batch_size=batch_size)
    readables = list(detectors) + ([energy] if energy not in detectors else [])
    pos_cache: defaultdict = defaultdict(lambda: None)  # last set positions, as in bluesky's scan_nd
    n_taken, beam_time_s, previous = 0, 0.0, None

    def measure(targets):
        nonlocal n_taken, beam_time_s, previous
        for target in targets:
            target = float(target)
            yield from per_step(detectors, {energy: target}, pos_cache)
            beam_time_s += float(beam_time_cost(target, previous, dwell_s, mono_speed_eV_per_s, settle_s))
            previous = target
            n_taken += 1

    def record(decision: Decision, ranking: Mapping | None):
        recorder.record(decision, ranking, n_taken, beam_time_s)
        yield from bps.trigger_and_read([recorder], name="decision")

    def decide(ranking: Mapping) -> Decision:
        stop, why = agent.should_stop()
        why = why or _budget_spent(n_taken, max_points, beam_time_s, max_beam_time_s)
        chi2 = float(ranking.get("top_reduced_chi2", np.nan))
        p_none = float(ranking.get("p_none", 0.0))
        if why and (p_none > NONE_WARNING or chi2 > MISFIT_REDUCED_CHI2):
            why += (f"; but the sample may be none of the candidates (p_none {p_none:.2f}, the leading "
                    f"candidate's chi^2 per reading {chi2:.1f})")
        if stop or why:
            return Decision("stop", why)
        chosen = agent.suggest(batch_size)
        if not chosen:
            return Decision("stop", "no energy left that adds information")
        top = ranking["ranking"][0] if ranking.get("ranking") else {"name": "?", "probability": 0.0}
        return Decision("measure", _why(chosen[0], top), list(chosen))

    @bpp.stage_decorator(readables)
    @bpp.run_decorator(md=_md)
    def inner():
        if dwell_signal is not None:
            yield from bps.mv(dwell_signal, dwell_s)
        yield from measure(seed_set)
        n_ingested = 0
        while True:
            rankings = yield from feed.wait_for_rankings(n_taken, ranking_timeout_s)
            if rankings is None:
                why = f"no ranking for reading {n_taken} within {ranking_timeout_s} s: finishing with the conventional grid"
                yield from record(Decision("fallback", why), None)
                yield from measure(fallback)
                break
            agent.ingest([outcome_from_ranking(r, r["n_events"]) for r in rankings[n_ingested:]])
            n_ingested = len(rankings)
            decision = decide(rankings[-1])
            yield from record(decision, rankings[-1])
            if decision.action == "stop":
                break
            yield from measure(c["energy"] for c in decision.chosen)
        if tail_grid is not None:
            yield from record(Decision("tail", "conventional tail requested"), None)
            yield from measure(tail_grid.energies)

    return feed.subscribed(inner())


def _check_ranges(*, confidence, max_points, max_beam_time_s, dwell_s, batch_size, ranking_timeout_s,
                  mono_speed_eV_per_s, settle_s) -> None:
    """Raise ``ValueError`` naming the first setting of ``adaptive_xas_plan`` out of its range."""
    problems = [
        ("confidence", confidence, 0 < confidence <= 1, "in (0, 1]"),
        ("max_points", max_points, max_points >= 1, ">= 1"),
        ("max_beam_time_s", max_beam_time_s, max_beam_time_s is None or max_beam_time_s > 0, "> 0 (or None)"),
        ("dwell_s", dwell_s, dwell_s > 0, "> 0"),
        ("batch_size", batch_size, batch_size >= 1, ">= 1"),
        ("ranking_timeout_s", ranking_timeout_s, ranking_timeout_s > 0, "> 0"),
        ("mono_speed_eV_per_s", mono_speed_eV_per_s, mono_speed_eV_per_s > 0, "> 0"),
        ("settle_s", settle_s, settle_s >= 0, ">= 0"),
    ]
    for name, value, ok, wanted in problems:
        if not ok:
            raise ValueError(f"adaptive_xas_plan: {name} must be {wanted}, got {value!r}; nothing was moved")


def _budget_spent(n_taken: int, max_points: int, beam_time_s: float, max_beam_time_s: float | None) -> str | None:
    if n_taken >= max_points:
        return f"point budget of {max_points} spent"
    if max_beam_time_s is not None and beam_time_s >= max_beam_time_s:
        return f"beam-time budget of {max_beam_time_s:.0f} s spent"
    return None


def _why(choice: Mapping, top: Mapping) -> str:
    """The reason recorded for measuring ``choice`` next."""
    if "gain_per_s" in choice:
        why = f"largest expected information gain per second ({choice['gain_per_s']:.3g} nats/s)"
    elif "distance_to_nearest_eV" in choice:
        why = f"farthest from every reading so far ({choice['distance_to_nearest_eV']:.3g} eV)"
    else:
        why = "chosen by the agent"
    return f"{why} separating {top['name']} (p={top['probability']:.3f}) from the others"


def _agent_settings(agent) -> dict:
    """The agent's scalar settings, for the start document (JSON-ready)."""
    return {k: v for k, v in vars(agent).items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str)) and k not in ("offset_eV", "broadening_eV")}
