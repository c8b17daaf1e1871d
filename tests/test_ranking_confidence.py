"""The calibrated "none of these" read-out (RankingConfig.confidence): fitted, stored, applied."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from apps.bench_real import READOUT_SETTINGS, fit_readout
from xas_callbacks import ranking
from xas_callbacks.ranking import RankingConfig, RankingEngine

from tests.test_ranking import GRID, _cfg, _library, _measure

NAMES, MEAN = _library()
STD = np.full_like(MEAN, 0.01)
#: the raw explicit alternative alone is too sure either way here (no wide level to speak of)
BASE = dict(discrepancy_sd=(0.01,), none_sd=0.03, none_prior=0.1)


def _rank(truth: int, present: bool, seed: int, config: RankingConfig):
    keep = [i for i in range(len(NAMES)) if present or i != truth]
    eng = RankingEngine([NAMES[i] for i in keep], GRID, MEAN[keep], STD[keep], config=config)
    eng.add_points(*_measure(MEAN[truth], shift=0.5 * (seed % 5) - 1.0, noise=0.004, seed=seed))
    return eng, eng.result(full=True)


def _case(truth: int, present: bool, seed: int) -> dict:
    eng, res = _rank(truth, present, seed, _cfg(**BASE))
    return {"kind": "simulated", "label": f"{truth}-{seed}", "log_odds_none": res.log_odds_none_raw,
            "chi2": res.top_reduced_chi2, "n_blocks": eng.n_blocks,
            "lp": np.asarray(res.log_evidence) + eng.tables.log_prior_candidates[res.order],
            "truth": res.names.index(NAMES[truth]) if present else None}


@pytest.fixture(scope="module")
def readout() -> dict:
    cases = [_case(t, present, seed) for seed in range(6) for t in range(4) for present in (True, False)]
    fitted = fit_readout(cases)
    assert fitted["loss"] < fitted["loss_without_readout"]
    return {k: fitted[k] for k in READOUT_SETTINGS}


@pytest.mark.parametrize("truth", [0, 1, 2, 3])
def test_fitted_readout_says_none_when_the_truth_is_removed_and_not_when_present(readout, truth):
    config = _cfg(**BASE, **readout)
    seed = 100 + truth  # measurements the read-out was not fitted on
    _, with_truth = _rank(truth, True, seed, config)
    _, without = _rank(truth, False, seed, config)
    assert with_truth.names[0] == NAMES[truth]
    assert with_truth.p_none < 0.2 and with_truth.probabilities[0] > 0.7
    assert without.p_none > 0.8 and without.probabilities[0] < 0.2
    for res in (with_truth, without):
        assert res.probabilities.sum() + res.p_none == pytest.approx(1.0)
        assert set(res.confidence_features) >= set(ranking.CONFIDENCE_FEATURES)
        assert np.isfinite(res.p_none_raw)


def test_without_readout_p_none_is_the_explicit_alternatives():
    for present in (True, False):
        _, res = _rank(2, present, 3, _cfg(**BASE))
        assert res.p_none == res.p_none_raw and not res.confidence_features
        assert res.p_none_raw == pytest.approx(1.0 / (1.0 + np.exp(-res.log_odds_none_raw)), abs=1e-9)
        assert (res.log_odds_none_raw > 0) is (not present)  # finite however sure


def test_screening_engine_reads_out_as_the_ranking_engine(readout):
    from xas_callbacks.ranking import ranking_tables
    from xas_callbacks.screening import ScreeningEngine

    config = _cfg(**BASE, **readout)
    E, y, v = _measure(MEAN[1], shift=0.5, noise=0.004, seed=7)
    eng = RankingEngine(NAMES, GRID, MEAN, STD, config=config)
    eng.add_points(E, y, v)
    screen = ScreeningEngine(ranking_tables(NAMES, GRID, MEAN, STD, config), config=config)
    screen.add_points(E, y, v)
    a, b = eng.result(full=True), screen.result()
    assert a.names[0] == b.names[0] == "B"
    assert b.p_none == pytest.approx(a.p_none, abs=1e-4)
    assert b.probabilities[0] == pytest.approx(a.probabilities[0], abs=1e-4)


def _settings_file(tmp_path, monkeypatch, values: dict):
    path = tmp_path / "ranking_settings.json"
    path.write_text(json.dumps({"models": {"cu-k": {"calibration": "x.json", "weights_sha256": None, **values}}}))
    monkeypatch.setattr(ranking, "SETTINGS_FILE", path)
    return path


def test_readout_coefficients_load_from_the_settings_file(tmp_path, monkeypatch):
    _settings_file(tmp_path, monkeypatch, {"confidence": [1.0, -0.5, -0.2, 0.1, 0.3], "confidence_temperature": 2.5,
                                           "confidence_chi2_power": 1.5})
    config = RankingConfig.for_model("cu-k")
    assert config.confidence == (1.0, -0.5, -0.2, 0.1, 0.3)
    assert config.confidence_temperature == 2.5 and config.confidence_chi2_power == 1.5
    assert RankingConfig.for_model("n-k").confidence is None  # a model without them: the defaults
    eng = RankingEngine(NAMES, GRID, MEAN, STD, config=dataclasses.replace(_cfg(**BASE), **{
        k: getattr(config, k) for k in READOUT_SETTINGS}))
    eng.add_points(*_measure(MEAN[0], shift=0.0, seed=1))
    res = eng.result()
    assert res.confidence_features["temperature"] >= 2.5 and res.p_none != res.p_none_raw


@pytest.mark.parametrize("values, field", [
    ({"confidence": [1.0, 2.0]}, "confidence"),
    ({"confidence": [1.0, 2.0, "x", 0.0, 0.0]}, "confidence"),
    ({"confidence": [1.0, 0.0, 0.0, 0.0, 0.0], "confidence_temperature": -1.0}, "confidence_temperature"),
    ({"confidence_chi2_power": float("nan")}, "confidence_chi2_power"),
])
def test_bad_readout_settings_say_which_file_model_and_field(tmp_path, monkeypatch, values, field):
    path = _settings_file(tmp_path, monkeypatch, values)
    with pytest.raises(ValueError) as err:
        RankingConfig.for_model("cu-k")
    assert str(path) in str(err.value) and "'cu-k'" in str(err.value) and field in str(err.value)
