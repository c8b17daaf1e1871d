"""The energy-selection agent: information gain where candidates differ, cost of travel, stopping."""

from __future__ import annotations

import numpy as np
import pytest

from endstation.beamtime import beam_time_cost
from plans.energy_selection import (
    EnergySelectionAgent,
    SpaceFillingAgent,
    pairwise_information_gain,
)

GRID = np.linspace(8980.0, 9060.0, 161)


def _edge(centre, width=2.0):
    return 1.0 / (1.0 + np.exp(-(GRID - centre) / width))


def _two_candidates(peak_at=9030.0, height=0.03):
    """Same edge; the second has a small bump at ``peak_at``, comparable to the noise."""
    base = _edge(8995.0)
    bump = base + height * np.exp(-0.5 * ((GRID - peak_at) / 1.5) ** 2)
    mean = np.stack([base, bump])
    return mean, np.full_like(mean, 0.005)


def test_information_gain_is_zero_where_candidates_agree_and_largest_where_they_differ():
    mean, std = _two_candidates(9030.0)
    gain = pairwise_information_gain(mean, std**2 + 0.01**2, np.array([0.5, 0.5]))
    assert gain[np.argmin(np.abs(GRID - 8985.0))] == pytest.approx(0.0, abs=1e-6)
    assert abs(GRID[np.argmax(gain)] - 9030.0) <= 1.0
    # Bounded by the entropy of the prior: one reading cannot tell more than log(2) nats.
    assert gain.max() <= np.log(2) + 1e-9
    # A difference 40 times the noise is decisive: the bound reaches log(2).
    strong, _ = _two_candidates(9030.0, height=0.4)
    assert pairwise_information_gain(strong, std**2 + 0.01**2, np.array([0.5, 0.5])).max() > 0.99 * np.log(2)


def test_information_gain_vanishes_once_one_candidate_is_certain():
    mean, std = _two_candidates()
    gain = pairwise_information_gain(mean, std**2 + 0.01**2, np.array([1.0, 0.0]))
    assert np.allclose(gain, 0.0, atol=1e-5)  # float32 arithmetic: 1e-5 nats is nothing


def test_agent_suggests_the_discriminating_energy_and_respects_the_shared_offset():
    mean, std = _two_candidates(9030.0)
    agent = EnergySelectionAgent(["plain", "bump"], GRID, mean, std, mono_speed_eV_per_s=1e9, model_floor=0.0)
    first = agent.suggest(1)[0]
    assert abs(first["energy"] - 9030.0) <= 1.0
    assert first["expected_information_gain"] > 0.1

    # A calibration offset moves where the difference is seen in the measured spectrum: a reading
    # at E sees the model at E + offset (the ranking engine's convention).
    agent.ingest([{"top_names": ["plain", "bump"], "top_probabilities": [0.5, 0.5], "offset_eV": 4.0}])
    assert abs(agent.suggest(1)[0]["energy"] - 9026.0) <= 1.0


def test_travel_cost_pulls_suggestions_towards_the_monochromator():
    # Two equally informative regions, one near the last reading and one far away.
    base = _edge(8995.0)
    bumps = base + 0.03 * np.exp(-0.5 * ((GRID - 9000.0) / 1.5) ** 2)
    bumps_far = base + 0.03 * np.exp(-0.5 * ((GRID - 9050.0) / 1.5) ** 2)
    mean = np.stack([base, bumps + bumps_far - base])
    std = np.full_like(mean, 0.005)
    slow = EnergySelectionAgent(["a", "b"], GRID, mean, std, mono_speed_eV_per_s=1.0, settle_s=0.0, model_floor=0.0)
    slow.ingest([{"energy": 9045.0, "mu": 1.0, "mu_sigma": 0.01}])
    assert abs(slow.suggest(1)[0]["energy"] - 9050.0) <= 1.0
    slow_far = EnergySelectionAgent(["a", "b"], GRID, mean, std, mono_speed_eV_per_s=1.0, settle_s=0.0, model_floor=0.0)
    slow_far.ingest([{"energy": 8990.0, "mu": 0.05, "mu_sigma": 0.01}])
    assert abs(slow_far.suggest(1)[0]["energy"] - 9000.0) <= 1.0


def test_batch_suggestions_are_separated_and_avoid_measured_energies():
    mean, std = _two_candidates()
    agent = EnergySelectionAgent(["a", "b"], GRID, mean, std, min_separation_eV=1.0, model_floor=0.0)
    agent.ingest([{"energy": 9030.0, "mu": 1.0, "mu_sigma": 0.01}])
    picks = [p["energy"] for p in agent.suggest(4)]
    assert len(picks) == 4
    assert all(abs(e - 9030.0) >= 1.0 for e in picks)
    diffs = np.abs(np.subtract.outer(picks, picks))[np.triu_indices(4, 1)]
    assert diffs.min() >= 1.0
    assert [p["_id"] for p in agent.suggest(2)] == [4, 5]


def test_should_stop_on_confidence_and_on_budget():
    mean, std = _two_candidates()
    agent = EnergySelectionAgent(["a", "b"], GRID, mean, std, confidence=0.9, max_points=3)
    assert agent.should_stop() == (False, None)
    agent.ingest([{"top_names": ["b", "a"], "top_probabilities": [0.93, 0.07]}])
    stop, reason = agent.should_stop()
    assert stop and reason.startswith("b reached p=0.930")
    assert agent.get_best_points()[0][0] == "b"

    budget = EnergySelectionAgent(["a", "b"], GRID, mean, std, max_points=2)
    budget.ingest([{"energy": 9000.0, "mu": 0.5}, {"energy": 9001.0, "mu": float("nan")}])
    assert budget.should_stop() == (False, None)
    budget.ingest([{"energy": 9002.0, "mu": 0.6}])
    assert budget.should_stop() == (True, "point budget of 2 spent")


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(2, 161\)"):
        EnergySelectionAgent(["a", "b"], GRID, np.zeros((3, 161)), np.zeros((3, 161)))


def test_beam_time_cost_counts_dwell_settle_and_travel():
    cost = beam_time_cost(np.array([9000.0, 9010.0]), 9000.0, dwell_s=2.0, mono_speed_eV_per_s=5.0, settle_s=0.5)
    assert np.allclose(cost, [2.5, 4.5])
    assert np.allclose(beam_time_cost(np.array([9000.0]), None, 1.0, 5.0, 0.0), [1.0])


def test_differences_below_the_model_floor_carry_little_information():
    mean, std = _two_candidates(9030.0, height=0.03)
    sharp = EnergySelectionAgent(["a", "b"], GRID, mean, std, model_floor=0.0)
    floored = EnergySelectionAgent(["a", "b"], GRID, mean, std, model_floor=0.03)
    assert floored.information_gain(GRID).max() < 0.5 * sharp.information_gain(GRID).max()


def test_suggestions_stay_inside_the_rankings_window():
    mean, std = _two_candidates(9050.0)
    agent = EnergySelectionAgent(["a", "b"], GRID, mean, std, model_floor=0.0, window=(8990.0, 9040.0))
    picks = [p["energy"] for p in agent.suggest(5)]
    assert all(8990.0 <= e <= 9040.0 for e in picks)


def test_a_reading_next_to_one_already_taken_counts_as_mostly_redundant():
    # Model error is correlated over a few eV: re-measuring the same feature mostly re-measures
    # the model's error there, so the agent moves on to the next place the candidates differ.
    base = _edge(8995.0)
    two_bumps = base + 0.1 * np.exp(-0.5 * ((GRID - 9020.0) / 1.5) ** 2) \
        + 0.06 * np.exp(-0.5 * ((GRID - 9045.0) / 1.5) ** 2)
    mean = np.stack([base, two_bumps])
    std = np.full_like(mean, 0.005)
    settings = dict(mono_speed_eV_per_s=1e9, model_floor=0.0, min_separation_eV=0.5)
    agent = EnergySelectionAgent(["plain", "bumps"], GRID, mean, std, correlation_length_eV=4.0, **settings)
    assert abs(agent.suggest(1)[0]["energy"] - 9020.0) <= 1.0
    agent.ingest([{"energy": 9020.0, "mu": 1.05, "mu_sigma": 0.01}])
    assert abs(agent.suggest(1)[0]["energy"] - 9045.0) <= 1.0
    independent = EnergySelectionAgent(["plain", "bumps"], GRID, mean, std, correlation_length_eV=0.0, **settings)
    independent.ingest([{"energy": 9020.0, "mu": 1.05, "mu_sigma": 0.01}])
    assert abs(independent.suggest(1)[0]["energy"] - 9020.0) <= 1.5


def test_no_energy_left_gives_no_suggestion_rather_than_an_error():
    mean, std = _two_candidates()
    agent = EnergySelectionAgent(["plain", "bump"], GRID, mean, std, min_separation_eV=200.0)
    agent.ingest([{"energy": 9020.0, "mu": 0.5}])
    assert agent.suggest(3) == []
    assert SpaceFillingAgent(["plain", "bump"], GRID, mean, std, min_separation_eV=200.0).suggest(1)[0]


def test_space_filling_agent_bisects_the_largest_gap_whatever_the_model_says():
    mean, std = _two_candidates(9030.0)
    agent = SpaceFillingAgent(["plain", "bump"], GRID, mean, std, mono_speed_eV_per_s=1e9, min_separation_eV=1.0)
    agent.ingest([{"energy": e, "mu": 0.5} for e in (8980.0, 9000.0, 9060.0)])
    chosen = agent.suggest(2)
    assert chosen[0]["energy"] == pytest.approx(9030.0, abs=0.25)  # middle of the 60 eV gap
    assert chosen[0]["distance_to_nearest_eV"] == pytest.approx(30.0, abs=0.25)
    assert chosen[1]["energy"] in (pytest.approx(9015.0, abs=0.25), pytest.approx(9045.0, abs=0.25))
    # Same stopping rule as the information-gain agent.
    agent.ingest([{"top_names": ["plain", "bump"], "top_probabilities": [0.97, 0.03]}])
    assert agent.should_stop()[0]
