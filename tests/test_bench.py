"""Smoke test of ``xas-bench adaptive``: a tiny run through real plans, structure and consistency
of the JSON and the figure (no timing is asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps import bench


def test_sparse_energies_keep_the_anchors_and_the_count():
    rng = np.random.default_rng(0)
    anchors = np.array([8919.0, 8949.0, 9129.0])
    for policy in ("uniform", "random"):
        e = bench.sparse_energies(policy, 15, anchors, 8984.0, 9124.0, rng)
        assert e.size == 15
        assert set(anchors) <= set(e)
        assert np.all(np.diff(e) >= 0)
        inner = e[(e >= 8984.0) & (e <= 9124.0)]
        assert inner.size == 12


def test_conventional_grid_is_the_stated_one():
    e = bench.conventional_energies("Cu", "K", 0.5)
    e0 = 8979.0
    assert e[0] == pytest.approx(e0 - 150) and e[-1] == pytest.approx(e0 + 150)
    assert np.diff(e).min() == pytest.approx(0.5)


def test_adaptive_benchmark_smoke(cu_k_dir, tmp_path):
    out = tmp_path / "results"
    rc = bench.main(["adaptive", "--model", "feff", "--samples", "2", "--candidates", "5", "--max-points", "13",
                     "--policies", "adaptive", "uniform", "--no-references", "--no-decision-time",
                     "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "adaptive_feff.json").read_text())
    assert (out / "adaptive_feff.png").stat().st_size > 1000
    assert result["settings"]["policies"] == ["adaptive", "uniform"]
    assert len(result["rows"]) == 2
    for row in result["rows"]:
        assert row["kind"] == "heldout" and row["true"] == [row["sample"]]
        assert -2.0 <= row["offset_true_eV"] <= 2.0
        assert row["n_candidates"] == 5
        ad, un = row["policies"]["adaptive"], row["policies"]["uniform"]
        # uniform measures as many points as adaptive used, within the adaptive plan's budget
        assert un["n_points"] == ad["n_points"] <= 13
        for s in (ad, un):
            assert s["top1_correct"] == (s["top1"] in row["true"])
            assert s["top3_correct"] >= s["top1_correct"]
            assert 0.0 <= s["top1_probability"] <= 1.0
            assert s["fraction_of_points"] == pytest.approx(
                s["n_points"] / result["settings"]["conventional_grid"]["n_points"])
            assert 0 < s["fraction_of_beam_time"] < 1
            assert 0 < s["n_used_by_ranking"] <= s["n_points"]
    summary = result["heldout"]["adaptive"]
    assert summary["n"] == 2
    assert summary["top1"] == np.mean([r["policies"]["adaptive"]["top1_correct"] for r in result["rows"]])
    assert summary["median_points"] == np.median([r["policies"]["adaptive"]["n_points"] for r in result["rows"]])
