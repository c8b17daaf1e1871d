"""The calibration metrics behind ``xas-bench real`` and ``xas-bench calibrate``."""
from types import SimpleNamespace

import numpy as np
import pytest

from apps.bench_real import Task, expected_calibration_error, reliability, score, summarize


def test_expected_calibration_error_is_zero_when_confidence_matches_frequency():
    rng = np.random.default_rng(0)
    confidence = np.repeat([0.15, 0.55, 0.95], 2000)
    correct = rng.random(confidence.size) < confidence
    assert expected_calibration_error(confidence, correct) < 0.02
    overconfident = rng.random(confidence.size) < confidence - 0.1
    assert expected_calibration_error(confidence, overconfident) == pytest.approx(0.1, abs=0.02)
    assert sum(b["n"] for b in reliability(confidence, correct)) == confidence.size


def _result(names, p, p_none):
    return SimpleNamespace(names=names, probabilities=np.asarray(p), p_none=p_none, offset_mean=0.0,
                           broadening_mean=0.0, warnings=[])


def test_score_counts_none_of_these_as_an_answer():
    absent = Task(kind="sim", label="x", spectrum={}, library=None, truth=None)
    row = score(absent, _result(["a", "b"], [0.1, 0.1], 0.8))
    assert row["answer"] == "none of these" and row["correct"] and row["p_truth"] == 0.8
    assert row["brier"] == pytest.approx(0.1**2 * 2 + 0.2**2)
    present = Task(kind="sim", label="y", spectrum={}, library=None, truth="b")
    row = score(present, _result(["a", "b"], [0.6, 0.3], 0.1))
    assert row["answer"] == "a" and not row["correct"] and not row["top1_correct"] and row["top3_correct"]
    summary = summarize([score(absent, _result(["a", "b"], [0.7, 0.2], 0.1)), row])
    assert summary["top1"] == 0.0 and summary["top_probability_truth_absent"] == [0.7]
    assert summary["wrong_top1_probabilities"] == [0.6]


def test_readout_fit_prefers_none_where_the_truth_is_missing():
    """fit_readout on cases whose statistics separate present from absent: the fitted read-out
    gives "none of these" to the absent ones, and beats the loss without a read-out."""
    from apps.bench_real import READOUT_SETTINGS, fit_readout
    from xas_callbacks.ranking import RankingConfig, confidence_features, p_in_candidates, readout_temperature

    rng = np.random.default_rng(0)
    cases = []
    for k in range(40):
        present = k % 3 != 0
        lp = np.sort(rng.normal(0, 3, 10))[::-1]
        cases.append({"kind": "simulated", "label": str(k), "log_odds_none": -8.0 if present else 2.0,
                      "chi2": 1.0 if present else 6.0, "n_blocks": 30, "lp": lp, "truth": 0 if present else None})
    fitted = fit_readout(cases)
    assert fitted["loss"] < fitted["loss_without_readout"]
    config = RankingConfig(**{k: fitted[k] for k in READOUT_SETTINGS})
    for case in cases[:6]:
        t = readout_temperature(config, case["chi2"])
        p_in = p_in_candidates(config, confidence_features(case["log_odds_none"], case["lp"], case["chi2"],
                                                           case["n_blocks"], t))
        assert (p_in > 0.8) if case["truth"] is not None else (p_in < 0.2)
