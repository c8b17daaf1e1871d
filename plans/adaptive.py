"""``adaptive_xas_plan``: measure where it tells the candidates apart, stop when the sample is known.

One run. The plan declares the XAS metadata the ranking callback needs, measures a sparse seed
set (pre-edge and post-edge anchors for normalisation, a coarse pass over the edge), then after
each reading takes the ranking (in-process from a subscribed :class:`XASRankingCallback`, or
from another process through :class:`plans.ranking_feed.RemoteRankingFeed`) and asks an agent
with the bluesky-adaptive ``ingest``/``suggest`` vocabulary for the next energies. It stops when
the leading candidate's probability reaches ``confidence`` or a point or beam-time budget is
spent, and can finish with a conventional tail. Every decision (the ranking it used, the energies
it chose and why) is recorded in the run's ``decision`` stream, before the checkpoint that
precedes the move, so a pause/rewind neither loses nor repeats a decision.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, Signal

from plans.energy_selection import AGENTS
from plans.grids import edge_energy, make_grid
from plans.ranking_feed import InProcessRankingFeed, RankingFeed
from plans.xafs import check_limits, detector_roles

__all__ = ["adaptive_xas_plan", "DecisionRecorder", "seed_energies", "DEFAULT_SEED"]

#: Above this chi^2 per reading, the leading candidate does not explain the readings even with the
#: model's uncertainty counted: the stop reason says the sample may be none of the candidates.
MISFIT_REDUCED_CHI2 = 4.0

#: Seed set, relative to E0 unless noted: normalisation anchors below and above the edge, and
#: ``coarse_points`` evenly over the energy range the model predicts.
DEFAULT_SEED: dict[str, Any] = {"pre_edge": [-60.0, -30.0], "post_edge": [150.0], "coarse_points": 8}


class DecisionRecorder(Device):
    """Soft signals holding one decision of the adaptive plan, read into the ``decision`` stream."""

    n_points = Cpt(Signal, value=0, kind="hinted")
    top_candidate = Cpt(Signal, value="", kind="hinted")
    top_probability = Cpt(Signal, value=0.0, kind="hinted")
    entropy = Cpt(Signal, value=0.0)
    top_reduced_chi2 = Cpt(Signal, value=0.0)
    offset_eV = Cpt(Signal, value=0.0)
    broadening_eV = Cpt(Signal, value=0.0)
    ranking_names = Cpt(Signal, value=[""])
    ranking_probabilities = Cpt(Signal, value=[0.0])
    next_energies = Cpt(Signal, value=[0.0])
    expected_gain = Cpt(Signal, value=[0.0])
    beam_time_s = Cpt(Signal, value=0.0)
    action = Cpt(Signal, value="")
    reason = Cpt(Signal, value="")

    def __init__(self, *args, name: str = "decision", **kwargs):
        super().__init__(*args, name=name, **kwargs)

    def record(self, **values) -> None:
        for key, value in values.items():
            getattr(self, key).put(value)


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


def _beam_time(previous: float | None, energy: float, dwell_s: float, speed: float, settle_s: float) -> float:
    travel = 0.0 if previous is None else abs(energy - previous) / speed
    return dwell_s + settle_s + travel


def adaptive_xas_plan(
    detectors: Sequence[Any],
    energy: Any,
    *,
    element: str,
    edge: str,
    candidates: Any,
    model: str | None = None,
    confidence: float = 0.95,
    max_points: int = 40,
    max_beam_time_s: float | None = None,
    dwell_s: float = 1.0,
    seed: Mapping | None = None,
    batch_size: int = 1,
    tail: Mapping | str | None = None,
    mode: str = "transmission",
    e0: float | None = None,
    feed: RankingFeed | None = None,
    ranking_timeout_s: float = 10.0,
    mono_speed_eV_per_s: float = 50.0,
    settle_s: float = 0.2,
    agent: str | Any = "information-gain",
    agent_kwargs: Mapping | None = None,
    md: Mapping | None = None,
) -> MsgGenerator[str]:
    """Identify the sample among candidate structures with as few readings as it takes.

    Parameters
    ----------
    detectors : list
        Ion chambers (and fluorescence channel) read at each point; their names are the data
        keys ``I0``, ``It``, ``Ir``, ``If`` of the endstation.
    energy : Movable
        Monochromator energy positioner (eV).
    element, edge : str
        Absorbing element and edge, e.g. ``"Cu"``, ``"K"``.
    candidates : str or CandidateLibrary
        A folder of structure files, a SMILES file, a FEFF materials folder, a saved library, or
        a :class:`xas_callbacks.candidates.CandidateLibrary`.
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
    tail : dict or str, optional
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
        stopping rule with model-blind, evenly filling energies: a baseline), or any object with
        the bluesky-adaptive ``ingest``/``suggest``/``should_stop`` methods, used as given.
    agent_kwargs : dict, optional
        Extra settings of the named agent's class.
    md : dict, optional
        Metadata merged into the start document.

    Yields
    ------
    msg : Msg
        Messages for the RunEngine.

    Returns
    -------
    uid : str
        The run's uid.
    """
    from xas_callbacks.candidates import CandidateLibrary

    library = candidates if isinstance(candidates, CandidateLibrary) else CandidateLibrary.from_source(
        candidates, model=model
    )
    if len(library) < 1:
        raise ValueError(f"no usable candidates in {candidates!r}: {library.failures}")
    e0 = edge_energy(element, edge) if e0 is None else float(e0)
    if feed is None:
        from xas_callbacks.callback import XASRankingCallback

        feed = InProcessRankingFeed(XASRankingCallback(library))
    callback = getattr(feed, "callback", None)  # in-process feeds: the ranking callback itself
    ranking_config = getattr(callback, "config", None)
    margin = 0.0 if ranking_config is None else max(abs(ranking_config.offset_min), abs(ranking_config.offset_max))
    seed_set = seed_energies(e0, library.energies, seed, margin_eV=min(margin, 0.25 * np.ptp(library.energies)))
    check_limits(energy, seed_set, plan_name="adaptive_xas_plan")
    tail_grid = make_grid(element, edge, tail, e0=e0) if tail is not None else None
    if tail_grid is not None:
        check_limits(energy, tail_grid.energies, plan_name="adaptive_xas_plan")

    if isinstance(agent, str):
        if agent not in AGENTS:
            raise ValueError(f"agent must be one of {sorted(AGENTS)} or an agent object, got {agent!r}")
        agent = AGENTS[agent](
            library.names,
            library.energies,
            library.mean,
            library.std,
            dwell_s=dwell_s,
            mono_speed_eV_per_s=mono_speed_eV_per_s,
            settle_s=settle_s,
            confidence=confidence,
            max_points=max_points,
            model_floor=ranking_config.model_floor if ranking_config is not None else 0.03,
            **dict(agent_kwargs or {}),
        )
    elif agent_kwargs:
        raise ValueError("agent_kwargs apply to a named agent; configure an agent object yourself")
    roles = detector_roles(detectors)
    policy = {
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
    }
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
            "policy": policy,
        },
        "hints": {"dimensions": [([energy.name], "primary")]},
        **dict(md or {}),
    }
    dwell_signal = _dwell_signal(detectors)
    recorder = DecisionRecorder(name="decision")
    state = {"beam_time_s": 0.0, "previous": None, "n_points": 0, "decisions": 0}

    def measure(target: float):
        yield from bps.checkpoint()
        yield from bps.mv(energy, target)
        reading = yield from bps.trigger_and_read(list(detectors) + [energy])
        state["beam_time_s"] += _beam_time(state["previous"], target, dwell_s, mono_speed_eV_per_s, settle_s)
        state["previous"] = target
        state["n_points"] += 1
        agent.ingest([_point_from_reading(reading, energy.name, roles, mode)])
        return reading

    def record(action: str, reason: str, ranking: Mapping | None, chosen: Sequence[Mapping]):
        ranking = ranking or {}
        ranked = ranking.get("ranking", [])
        recorder.record(
            n_points=state["n_points"],
            top_candidate=ranked[0]["name"] if ranked else "",
            top_probability=float(ranked[0]["probability"]) if ranked else 0.0,
            entropy=float(ranking.get("entropy", np.nan)),
            top_reduced_chi2=float(ranking.get("top_reduced_chi2", np.nan)),
            offset_eV=float(ranking.get("offset_eV", np.nan)),
            broadening_eV=float(ranking.get("broadening_eV", np.nan)),
            ranking_names=[r["name"] for r in ranked] or [""],
            ranking_probabilities=[float(r["probability"]) for r in ranked] or [0.0],
            next_energies=[float(c["energy"]) for c in chosen] or [np.nan],
            expected_gain=[float(c.get("expected_information_gain", np.nan)) for c in chosen] or [np.nan],
            beam_time_s=state["beam_time_s"],
            action=action,
            reason=reason,
        )
        state["decisions"] += 1
        yield from bps.create("decision")
        yield from bps.read(recorder)
        yield from bps.save()

    def budget_spent() -> str | None:
        if state["n_points"] >= max_points:
            return f"point budget of {max_points} spent"
        if max_beam_time_s is not None and state["beam_time_s"] >= max_beam_time_s:
            return f"beam-time budget of {max_beam_time_s:.0f} s spent"
        return None

    @bpp.stage_decorator(list(detectors) + [energy])
    @bpp.run_decorator(md=_md)
    def inner():
        if dwell_signal is not None:
            yield from bps.mv(dwell_signal, dwell_s)
        for target in seed_set:
            yield from measure(float(target))
        fallback = False
        while True:
            ranking = yield from feed.wait_for_ranking(state["n_points"], ranking_timeout_s)
            if ranking is None:
                fallback = True
                yield from record(
                    "fallback",
                    f"no ranking for point {state['n_points']} within {ranking_timeout_s} s: "
                    "finishing with the conventional grid",
                    None,
                    [],
                )
                break
            agent.ingest([{"ranking": _agent_ranking(ranking)}])
            engine = getattr(callback, "engine", None)
            if engine is not None and hasattr(agent, "window"):
                agent.window = tuple(float(w) for w in engine.window)
            stop, why = agent.should_stop()
            why = why or budget_spent()
            chi2 = float(ranking.get("top_reduced_chi2", np.nan))
            if why and chi2 > MISFIT_REDUCED_CHI2:
                why += (f"; but the leading candidate fits poorly (chi^2 per reading {chi2:.1f}): "
                        "the sample may be none of the candidates")
            if stop or why:
                yield from record("stop", why, ranking, [])
                break
            chosen = agent.suggest(batch_size)
            if not chosen:
                yield from record("stop", "no energy left that adds information", ranking, [])
                break
            top = ranking["ranking"][0] if ranking.get("ranking") else {"name": "?", "probability": 0.0}
            yield from record("measure", _why(chosen[0], top), ranking, chosen)
            for point in chosen:
                yield from measure(point["energy"])
        if fallback:
            conventional = make_grid(element, edge, None, e0=e0)
            for target in conventional.energies:
                if library.energies[0] - 20 <= target <= library.energies[-1] + 20:
                    yield from measure(float(target))
        if tail_grid is not None:
            yield from record("tail", "conventional tail requested", None, [])
            for target in tail_grid.energies:
                yield from measure(float(target))

    return (yield from feed.subscribed(inner()))


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


def _dwell_signal(detectors):
    """The shared counting-time signal among the detectors (the endstation's ``dwell_time``)."""
    return next((det for det in detectors if getattr(det, "name", None) == "dwell_time"), None)


def _point_from_reading(reading: Mapping, energy_key: str, roles: Mapping, mode: str) -> dict:
    from endstation.modes import mu_from_counts

    def value(role):
        key = roles.get(role)
        return reading[key]["value"] if key in reading else None

    mu, var, bad = mu_from_counts(mode, i0=value("i0"), it=value("it"), ir=value("ir"), if_=value("if"))
    if bad[0]:
        return {}
    return {"energy": float(reading[energy_key]["value"]), "mu": float(mu[0]), "mu_sigma": float(np.sqrt(var[0]))}


def _agent_ranking(ranking: Mapping) -> dict:
    ranked = ranking.get("ranking", [])
    return {
        "names": [r["name"] for r in ranked],
        "probabilities": [r["probability"] for r in ranked],
        "offset_eV": ranking.get("offset_eV", 0.0),
        "broadening_eV": ranking.get("broadening_eV", 0.0),
    }
