"""The energy-selection agents as bluesky-adaptive 1.x optimizers: the protocols, and
``bluesky_adaptive.plans.optimize`` / ``optimize_in_run`` identifying the sample as
``adaptive_xas_plan`` does, on the same simulated endstation problem (synthetic candidates)."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps

bsa_protocols = pytest.importorskip("bluesky_adaptive.protocols")
from bluesky_adaptive.plans import optimize, optimize_in_run  # noqa: E402

from endstation.devices import make_endstation  # noqa: E402
from endstation.sample import SimulatedSample  # noqa: E402
from plans.adaptive import adaptive_xas_plan  # noqa: E402
from plans.energy_selection import EnergySelectionAgent, SpaceFillingAgent  # noqa: E402
from plans.evaluation import XASEvaluation, xas_optimization_problem  # noqa: E402

TRUE = 4  # the synthetic candidate the sample is
SETTINGS = {"dwell_s": 0.02, "confidence": 0.999}  # noisy enough that the agent chooses beyond the seed


def _endstation(library):
    sample = SimulatedSample.from_spectrum(library.energies, library.mean[TRUE], element="Cu", edge="K",
                                           name=library.names[TRUE])
    return make_endstation(sample, seed=3, time_scale=0.0, energy_offset=1.0)


def _readings(docs):
    return [d["data"]["energy"] for n, d in docs if n == "event" and "I0" in d["data"]]


@pytest.mark.parametrize("cls", [EnergySelectionAgent, SpaceFillingAgent])
def test_the_agents_implement_bluesky_adaptives_protocols(synthetic_library, cls):
    lib = synthetic_library
    agent = cls(lib.names, lib.energies, lib.mean, lib.std, seed=[8950.0, 9100.0])
    for protocol in ("Optimizer", "SupportsStoppingCriteria", "CanRegisterSuggestions"):
        assert isinstance(agent, getattr(bsa_protocols, protocol)), protocol
    seed = agent.suggest(5)
    assert [s["energy"] for s in seed] == [8950.0, 9100.0]  # the seed first, and only the seed
    assert agent.should_stop() == (False, None)  # never before the seed is measured
    assert set(seed[0]) == {"_id", "energy", *cls.suggestion_keys}
    chosen = agent.suggest(1)
    assert set(chosen[0]) == set(seed[0]) and chosen[0]["_id"] == 2
    manual = agent.register_suggestions([{"energy": 9000.0}])
    assert manual[0]["_id"] == 3 and set(manual[0]) == set(seed[0])
    assert agent.get_best_points()[0][1] == {}  # the answer is a candidate: nowhere to navigate to


def test_optimize_and_optimize_in_run_identify_the_sample_as_the_plan_does(synthetic_library, catalog):
    lib = synthetic_library
    es = _endstation(lib)
    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=lib, **SETTINGS))
    decision = [d["data"] for n, d in docs if n == "event" and "decision_action" in d["data"]][-1]
    plan_energies = _readings(docs)
    assert decision["decision_top_candidate"] == lib.names[TRUE]
    results = {}
    for plan in (optimize, optimize_in_run):
        es = _endstation(lib)
        problem, evaluation = xas_optimization_problem(es.detectors, es.energy, element="Cu", edge="K",
                                                       candidates=lib, emit=catalog, **SETTINGS)
        assert isinstance(evaluation, bsa_protocols.EvaluationFunction)
        RE = RunEngine({})
        docs = []
        RE.subscribe(lambda name, doc: docs.append((name, doc)))
        RE.subscribe(catalog)
        RE.preprocessors.append(catalog.checked)
        RE(bps.mv(es.dwell_time, SETTINGS["dwell_s"]))
        run = plan(problem, iterations=None) if plan is optimize else plan(problem, iterations=40)
        RE(evaluation.subscribed(run))
        (best, parameters, outcome), = problem.optimizer.get_best_points()
        results[plan.__name__] = (best, outcome["probability"], _readings(docs))
        n_seed = len(problem.optimizer.seed)
        outer = docs[0][1]
        assert outer["plan_name"] == plan.__name__
        # Stored: the optimisation run names its ranking run, which ranked every reading of it.
        stored = catalog[outer["uid"]]
        assert stored.metadata["stop"]["exit_status"] == "success"
        ranking = catalog[stored.metadata["analysis_runs"]["xas-ranking"]]
        assert ranking.metadata["start"]["parent_uid"] == outer["uid"]
        assert len(ranking["ranking"]["energy"].read()) == len(_readings(docs))
        # ... and records suggestions and outcomes as numbers and strings.
        stream = stored["optimization" if plan is optimize_in_run else "primary"]
        names = stream["top_names"].read()
        assert names.dtype.kind == "U" and names[-1][0] == lib.names[TRUE]
        assert np.issubdtype(stream["top_probabilities"].read().dtype, np.floating)
    for name, (best, probability, energies) in results.items():
        assert best == decision["decision_top_candidate"], name
        assert probability == pytest.approx(decision["decision_top_probability"], rel=1e-9), name
        assert energies == plan_energies, name  # the same readings, in the same order
    assert len(plan_energies) > n_seed  # the agent chose energies beyond the seed


def test_space_filling_agent_runs_under_optimize(synthetic_library):
    lib = synthetic_library
    es = _endstation(lib)
    problem, evaluation = xas_optimization_problem(es.detectors, es.energy, element="Cu", edge="K", candidates=lib,
                                                   agent="space-filling", dwell_s=0.5, max_points=20)
    RE = RunEngine({})
    RE(bps.mv(es.dwell_time, 0.5))
    RE(evaluation.subscribed(optimize(problem, iterations=None)))
    assert problem.optimizer.get_best_points()[0][0] == lib.names[TRUE]
    assert problem.optimizer.should_stop()[0]


def test_the_evaluation_refuses_readings_that_do_not_match_the_suggestions(synthetic_library):
    lib = synthetic_library
    es = _endstation(lib)
    problem, evaluation = xas_optimization_problem(es.detectors, es.energy, element="Cu", edge="K", candidates=lib)
    assert isinstance(evaluation, XASEvaluation)
    with pytest.raises(ValueError, match=r"took 0 readings for 2 suggestions"):
        evaluation((0, 1), [{"_id": 0, "energy": 9000.0}, {"_id": 1, "energy": 9010.0}])
    with pytest.raises(ValueError, match="'Fe' K-edge|Fe"):
        xas_optimization_problem(es.detectors, es.energy, element="Fe", edge="K", candidates=lib, model="cu-k")


def test_adaptive_xas_plan_refuses_an_agent_object_without_the_protocols(synthetic_library):
    es = _endstation(synthetic_library)

    class Guess:  # suggests and ingests, but cannot say when to stop nor what it found
        def suggest(self, num_points=None):
            return [{"_id": 0, "energy": 9000.0}]

        def ingest(self, points):
            pass

    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append(name))
    with pytest.raises(ValueError, match=r"Guess does not implement bluesky-adaptive's \['Optimizer', 'SupportsStoppingCriteria'\]"):
        RE(adaptive_xas_plan(es.detectors, es.energy, element="Cu", edge="K", candidates=synthetic_library,
                             agent=Guess()))
    assert docs == []
