"""Read-out cases from the live loop (``apps.live_cases``) and how the read-out's fit weighs them."""
import numpy as np
import pytest

from apps.bench import Problem, run_list
from apps.bench_real import READOUT_SETTINGS, case_answer, fit_readout
from apps.live_cases import LIVE_CHECKPOINTS, _Checkpoints
from endstation.sample import SimulatedSample
from xas_callbacks.callback import XASRankingCallback
from xas_callbacks.ranking import RankingConfig


def test_a_scan_gives_a_case_at_each_checkpoint_and_weighs_as_one(RE, synthetic_library):
    lib = synthetic_library
    sample = SimulatedSample.from_spectrum(lib.energies, lib.mean[3], element="Cu", edge="K", name=lib.names[3])
    problem = Problem(kind="heldout", label=lib.names[3], element="Cu", edge="K", library=lib,
                      true_names=[lib.names[3]], sample=sample, offset_eV=0.5, seed=3, info={"limits": (8900.0, 9200.0)})
    cb = XASRankingCallback(lib)
    watch = _Checkpoints(cb, "conventional:syn-3", problem.true_names)
    cb.subscribe(watch)
    docs: list = []
    run_list(RE, docs, problem, np.arange(8950.0, 9090.0, 2.0), dwell_s=0.5, policy="conventional", callback=cb)
    cases = watch.finish()
    final = cb.latest_ranking
    assert [c["n_points"] for c in cases] == sorted({*(n for n in LIVE_CHECKPOINTS if n <= final.n_points),
                                                     final.n_points})
    assert sum(c["weight"] for c in cases) == pytest.approx(1.0)
    last = cases[-1]
    assert final.names[last["truth"]] == lib.names[3] and last["lp"].shape == (len(lib),)
    assert last["chi2"] == pytest.approx(final.top_reduced_chi2)
    assert last["n_blocks"] == cb.last_run.engine.n_blocks


def _case(lp, truth, log_odds_none=-5.0, chi2=1.0, n_blocks=10, weight=1.0, kind="live"):
    return {"kind": kind, "label": "x", "log_odds_none": log_odds_none, "chi2": chi2, "n_blocks": n_blocks,
            "lp": np.asarray(lp, float), "truth": truth, "weight": weight}


def test_case_answer_is_the_larger_of_none_and_the_leading_candidate():
    raw = RankingConfig(confidence=None)
    p, ok = case_answer(_case([0.0, -3.0], truth=0, log_odds_none=-5.0), raw)
    assert ok and p == pytest.approx((1 - 1 / (1 + np.exp(5.0))) / (1 + np.exp(-3.0)))
    p, ok = case_answer(_case([0.0, -3.0], truth=0, log_odds_none=3.0), raw)  # "none" answers, wrongly
    assert not ok and p == pytest.approx(1 / (1 + np.exp(-3.0)))
    p, ok = case_answer(_case([0.0, -3.0], truth=None, log_odds_none=3.0), raw)
    assert ok


def test_fit_readout_shares_a_kind_by_case_weight():
    rng = np.random.default_rng(1)
    cases = [_case(np.sort(rng.normal(0, 3, 6))[::-1], truth=0 if k % 3 else None,
                   log_odds_none=-6.0 if k % 3 else 1.0, chi2=1.0 + 4 * (k % 3 == 0)) for k in range(12)]
    split = []
    for c in cases:  # each case twice at half the weight: the same fit
        split += [dict(c, weight=0.5), dict(c, weight=0.5)]
    a, b = fit_readout(cases), fit_readout(split)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    for key in READOUT_SETTINGS:
        assert np.allclose(a[key], b[key], atol=1e-3)
    heavier = fit_readout(cases[:6] + [dict(c, weight=10.0) for c in cases[6:]])
    assert heavier["loss"] != pytest.approx(a["loss"], rel=1e-6)


def test_a_measurement_sharper_than_the_candidates_is_broadened_live(RE):
    """HERFD-like: the sample's edge rises in ~3 eV, the candidates' in 8-15 eV (20-80 %). The live
    callback broadens the readings (reported in the ranking's warnings) and still ranks the truth
    first; a measurement as broad as the candidates is left alone."""
    import itertools

    from tests.synthetic import ENERGIES, spectrum
    from xas_callbacks.candidates import CandidateLibrary

    params = list(itertools.product((0.3, 0.9), (3.0, 9.0), (22.0, 34.0)))
    lib = CandidateLibrary.from_spectra(
        [f"broad-{i}" for i in range(len(params))], ENERGIES, np.array([spectrum(ENERGIES, *p, width_eV=7.0) for p in params]),
        default_std=0.01, provenance={"model": "synthetic", "element": "Cu", "edge": "K", "source": "test"})
    energies = np.arange(8930.0, 9095.0, 1.0)
    TRUE = 2  # a small white line far from the edge: its rise is the edge's own
    found = {}
    for label, width in (("sharp", 1.0), ("broad", 7.0)):
        sample = SimulatedSample.from_spectrum(ENERGIES, spectrum(ENERGIES, *params[TRUE], width_eV=width),
                                               element="Cu", edge="K", name=label)
        problem = Problem(kind="heldout", label=label, element="Cu", edge="K", library=lib, true_names=[lib.names[TRUE]],
                          sample=sample, offset_eV=0.0, seed=5, info={"limits": (8900.0, 9200.0)})
        cb = XASRankingCallback(lib)
        run_list(RE, [], problem, energies, dwell_s=0.5, policy="conventional", callback=cb)
        found[label] = (cb.last_run.measurement_broadening, cb.latest_ranking)
    fwhm, res = found["sharp"]
    assert fwhm > 0 and res.measurement_broadening_eV == fwhm
    assert any("sharper than the candidates" in w for w in res.warnings)
    assert res.names[0] == lib.names[TRUE]
    assert found["broad"][0] == 0.0 and found["broad"][1].names[0] == lib.names[TRUE]


def test_models_without_live_samples_give_no_cases_and_say_so():
    import io

    from apps.live_cases import live_readout_cases

    out = io.StringIO()
    cases, setup = live_readout_cases("n-k", 3, 10, 0, RankingConfig(), stream=out)
    assert cases == [] and "n-k" in setup["skipped"] and "none for n-k" in out.getvalue()
