"""``xas-demo``, the README's main job, end to end on a small O K-edge problem."""

from __future__ import annotations

import io
import json

import pytest


@pytest.mark.slow
def test_demo_identifies_stores_and_replays(qm9_o_k_jsonl, tmp_path, catalog):
    from apps.demo import molecule_problem, run_demo

    problem = molecule_problem(n_candidates=6, seed=2)
    log = io.StringIO()
    # Without the conventional comparison scan: its 350 points through the catalog take minutes.
    summary = run_demo(problem, out_dir=tmp_path, seed=2, dwell_s=0.2, stream=log, conventional=False,
                       catalog_dir=str(catalog.server.directory))
    json.dumps(summary)  # the --json summary is plain JSON
    for key in ("true_candidate", "top1", "top1_probability", "points_adaptive", "beam_time_adaptive_s",
                "replay_match", "uid_adaptive"):
        assert key in summary, key
    assert summary["replay_match"] is True
    assert summary["storage_failures"] == 0
    assert summary["true_candidate"] == problem.true_name
    assert 0 < summary["points_adaptive"] <= 40 and summary["beam_time_adaptive_s"] > 0
    assert summary["top1"] == problem.true_name and summary["identified"]  # the sample was identified
    # The fitted calibration offset is reported in the endstation's sign convention (the opposite
    # sign would be off by twice the true offset, 1.9 eV here).
    assert summary["offset_fitted_eV"] == pytest.approx(summary["offset_true_eV"], abs=1.5)
    assert (tmp_path / "adaptive_ranking.png").stat().st_size > 0
