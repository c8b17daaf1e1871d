"""bluesky-adaptive's side of the adaptive XAS loop: the evaluation function that turns readings into
the outcomes the energy-selection agent ingests, and the optimisation problem that puts agent,
mono and detectors together, so that ``bluesky_adaptive.plans.optimize`` (or ``optimize_in_run``)
drives the same agent as :func:`plans.adaptive.adaptive_xas_plan`::

    from bluesky_adaptive.plans import optimize

    problem, evaluation = xas_optimization_problem(detectors, energy, element="Cu", edge="K",
                                                   candidates="my_cifs/", model="cu-k")
    RE(bps.mv(dwell_time, 1.0))
    RE(evaluation.subscribed(optimize(problem, iterations=None)))   # until the agent stops
    problem.optimizer.get_best_points()                             # [(name, {}, {"probability": p})]

**Where the outcomes come from.** :class:`XASEvaluation` ranks the readings the way the plan's
feeds do: an :class:`xas_callbacks.callback.XASRankingCallback` answers each reading with one
ranking event and a :class:`plans.ranking_feed.RankingListener` collects them; each outcome is
:func:`plans.ranking_feed.outcome_from_ranking` of the reading's ranking, with the ``_id`` of the
suggestion it measured.

**One optimisation, one ranking.** ``optimize`` opens a run for the optimisation and, at every
step, its acquisition plan (``default_acquire``, a ``list_scan``) opens a run of its own;
``optimize_in_run`` keeps everything in one run. The ranking callback keeps its state per run, so
fed the documents as they are it would start afresh at every step of ``optimize``. The evaluation
therefore gives the callback one *stitched* run per optimisation: the optimisation run's start
document with this problem's ``xas`` block, and the readings of its acquisitions (their
``primary`` streams; for ``optimize_in_run`` the run's own ``primary`` stream), renumbered in the
order they were taken. The posterior after the tenth step thus rests on all ten readings, as in
``adaptive_xas_plan``. The ranking run it publishes names the optimisation run as its parent and is
stored when ``emit`` is the catalog. Outside an optimisation run, each run is ranked by itself.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

from bluesky import preprocessors as bpp
from event_model import unpack_event_page

from plans.adaptive import candidate_library, make_agent, plan_seed
from plans.checks import check_limits, detector_roles
from plans.grids import make_grid
from plans.ranking_feed import RankingListener, outcome_from_ranking

__all__ = ["XASEvaluation", "xas_optimization_problem", "OPTIMIZE_RUN_KEY"]

#: ``run_key`` of bluesky-adaptive's ``optimize`` run, whose own ``primary`` stream holds the
#: recorded suggestions and outcomes, not readings.
OPTIMIZE_RUN_KEY = "optimize"


class XASEvaluation:
    """bluesky-adaptive ``EvaluationFunction``: the outcome of each suggestion's reading.

    Parameters
    ----------
    callback : XASRankingCallback
        Ranks the readings (give it ``emit=catalog`` to store its ranking runs).
    xas : dict
        The ``xas`` block of the problem (``element``, ``edge``, ``e0``, ``mode``,
        ``energy_field``, ``detectors``: role -> data key), as ``adaptive_xas_plan`` writes it.
    stream_name : str
        Stream of the acquisition runs that holds the readings.

    Use :meth:`subscribed` (or subscribe :attr:`documents` to the RunEngine) so that it sees the
    documents; then ``evaluation(uid, suggestions)`` returns one outcome per suggestion ``_id``.
    """

    def __init__(self, callback: Any, xas: Mapping, *, stream_name: str = "primary") -> None:
        self.callback = callback
        self.xas = dict(xas)
        self.stream_name = stream_name
        self.top_k = min(int(getattr(callback, "top_k", 32)), len(callback.library)) if callback.library else None
        self.listener = RankingListener()
        self.callback.subscribe(self.listener)
        self._reset()

    # -- the documents -------------------------------------------------------------------------
    def _reset(self) -> None:
        self._outer: dict | None = None
        self._own_readings = True
        self._descriptor_out: str | None = None
        self._reading_descriptors: dict[str, str] = {}  # raw descriptor uid -> run uid
        self._runs: dict[str, dict] = {}  # acquisition run uid -> {"order": [...], "seqs": [...]}
        self._energies: dict[int, float] = {}  # stitched seq_num -> energy read
        self._pending: list[int] = []  # readings since the last evaluation
        self._seq = 0

    def documents(self, name: str, doc: dict) -> None:
        """Document callback: stitches the optimisation's readings into one run for the ranking."""
        if name == "start":
            if self._outer is None:
                self._outer = doc
                self._own_readings = doc.get("run_key") != OPTIMIZE_RUN_KEY
                self.callback("start", {**doc, "xas": dict(self.xas)})
                self._runs[doc["uid"]] = {"order": None, "seqs": []}
            else:  # an acquisition inside the optimisation
                self._runs[doc["uid"]] = {"order": doc.get("blop_acquisition_order"), "seqs": []}
        elif self._outer is None:
            return
        elif name == "descriptor":
            run = doc.get("run_start")
            if doc.get("name") != self.stream_name or run not in self._runs:
                return
            if run == self._outer["uid"] and not self._own_readings:
                return
            self._reading_descriptors[doc["uid"]] = run
            if self._descriptor_out is None:
                self._descriptor_out = doc["uid"]
                self.callback("descriptor", {**doc, "run_start": self._outer["uid"]})
        elif name == "event":
            self._event(doc)
        elif name == "event_page":
            if doc.get("descriptor") in self._reading_descriptors:
                for event in unpack_event_page(doc):
                    self._event(event)
        elif name == "stop" and doc.get("run_start") == self._outer["uid"]:
            self.callback("stop", doc)
            self._reset()

    def _event(self, doc: dict) -> None:
        run = self._reading_descriptors.get(doc.get("descriptor"))
        if run is None:
            return
        self._seq += 1
        energy = doc.get("data", {}).get(self.xas.get("energy_field", "energy"))
        self._energies[self._seq] = float(energy) if energy is not None else float("nan")
        self._runs[run]["seqs"].append(self._seq)
        self._pending.append(self._seq)
        self.callback("event", {**doc, "descriptor": self._descriptor_out, "seq_num": self._seq})

    def subscribed(self, plan: Generator) -> Generator:
        """``plan`` with :attr:`documents` subscribed to the RunEngine for its duration."""
        return (yield from bpp.subs_wrapper(plan, self.documents))

    # -- the evaluation ------------------------------------------------------------------------
    def __call__(self, uid: Any, suggestions: Sequence[Mapping]) -> list[dict]:
        """One outcome per suggestion: the outcome of the reading taken for it.

        ``uid`` is what the acquisition plan returned: the uid of its run (``default_acquire``,
        whose start document lists the suggestions' ``_id`` in the order they were measured), or
        the ``_id`` in that order (``list_scan_in_run``).

        Raises
        ------
        ValueError
            When the acquisition took another number of readings than there are suggestions.
        """
        ids = [s["_id"] for s in suggestions]
        if isinstance(uid, str) and uid in self._runs:
            seqs = self._runs[uid]["seqs"]
            ids = list(self._runs[uid]["order"] or ids)
            self._pending = [s for s in self._pending if s not in set(seqs)]
        else:
            if isinstance(uid, (tuple, list)):
                ids = list(uid)
            seqs, self._pending = self._pending, []
        if len(seqs) != len(ids):
            raise ValueError(f"XASEvaluation: acquisition {uid!r} took {len(seqs)} readings for "
                             f"{len(ids)} suggestions {ids}")
        rankings = {r["n_events"]: r for r in self.listener.rankings}
        outcomes = []
        for _id, seq in zip(ids, seqs):
            ranking = rankings.get(seq)
            if ranking is None:  # an unusable reading (e.g. no beam): no mu, the posterior as it was
                earlier = [r for n, r in rankings.items() if n < seq]
                ranking = {**(earlier[-1] if earlier else {}), "energy": self._energies.get(seq, float("nan")),
                           "mu": float("nan"), "mu_sigma": float("nan")}
            outcomes.append(self._padded(outcome_from_ranking(ranking, _id)))
        return outcomes

    def _padded(self, outcome: dict) -> dict:
        """Candidate arrays of one length for every outcome (bluesky-adaptive records them as events)."""
        if self.top_k:
            names = (outcome["top_names"] + [""] * self.top_k)[: self.top_k]
            probabilities = (outcome["top_probabilities"] + [float("nan")] * self.top_k)[: self.top_k]
            outcome = {**outcome, "top_names": names, "top_probabilities": probabilities}
        return outcome


def xas_optimization_problem(
    detectors: Sequence[Any],
    energy: Any,
    *,
    element: str,
    edge: str,
    candidates: Any,
    model: str | None = None,
    confidence: float = 0.95,
    max_points: int = 40,
    dwell_s: float = 1.0,
    seed: Mapping | None = None,
    mode: str = "transmission",
    e0: float | None = None,
    mono_speed_eV_per_s: float = 50.0,
    settle_s: float = 0.2,
    agent: str = "information-gain",
    agent_kwargs: Mapping | None = None,
    emit: Any = None,
    ranking_config: Any = None,
) -> tuple[Any, XASEvaluation]:
    """The identification of a sample as a bluesky-adaptive ``OptimizationProblem``.

    The same candidates, agent and seed as ``adaptive_xas_plan`` with these arguments: the agent
    suggests the seed energies first, then where the candidates differ most per second, and
    ``should_stop`` ends ``optimize(problem, iterations=None)`` at ``confidence`` or after
    ``max_points`` readings. Checked like the plan: element/edge/model/candidates, the limits of
    ``energy`` for every seed energy.

    Returns
    -------
    problem : bluesky_adaptive.protocols.OptimizationProblem
        ``optimizer`` (the agent), ``actuators=[energy]``, ``sensors=detectors``,
        ``evaluation_function`` (the evaluation); the acquisition plan is bluesky-adaptive's default.
    evaluation : XASEvaluation
        Wrap the plan with ``evaluation.subscribed(...)``. Set the dwell time (``dwell_s``) on
        the counters yourself, as the acquisition plan does not.
    """
    from bluesky_adaptive.protocols import OptimizationProblem

    from endstation.modes import SCAN_MODES
    from xas_callbacks.callback import XASRankingCallback
    from xas_callbacks.ranking import RankingConfig

    if mode not in SCAN_MODES:
        raise ValueError(f"xas_optimization_problem: mode must be one of {SCAN_MODES}, got {mode!r}")
    library = candidate_library(candidates, model, element, edge)
    e0 = make_grid(element, edge, None, e0=e0).e0
    config = ranking_config or RankingConfig.for_library(library)
    seed_set = plan_seed(e0, library, config, seed)
    check_limits(energy, seed_set, plan_name="xas_optimization_problem")
    callback = XASRankingCallback(library, emit=emit, config=config)
    optimizer = make_agent(agent, library, dwell_s=dwell_s, mono_speed_eV_per_s=mono_speed_eV_per_s,
                           settle_s=settle_s, confidence=confidence, max_points=max_points,
                           model_floor=config.model_floor, agent_kwargs=agent_kwargs, seed=list(seed_set))
    xas = {
        "element": element, "edge": edge, "e0": e0, "mode": mode, "energy_field": energy.name,
        "detectors": detector_roles(detectors),
        "candidates": {"source": str(library.provenance.get("source") or ""),
                       "sha256": library.provenance.get("candidates_sha256"), "names": list(library.names)},
    }
    evaluation = XASEvaluation(callback, xas)
    problem = OptimizationProblem(optimizer=optimizer, actuators=[energy], sensors=list(detectors),
                                  evaluation_function=evaluation)
    return problem, evaluation

