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
