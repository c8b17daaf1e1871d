"""Read-out cases from the live loop: what the ranking says while a scan is measured.

The calibrated read-out (:func:`xas_callbacks.ranking.calibrated_result`) is fitted on statistics
of a ranking. Rankings of whole spectra read from files are not enough: in the live loop the
readings are the endstation's counts, normalised as they arrive, chosen by the adaptive agent (or
a conventional grid) and ranked after every one. A read-out fitted without them was
under-confident there (the adaptive benchmark's ECE 0.35-0.51 where the files gave 0.05).

:func:`live_readout_cases` measures VALIDATION-split samples through the simulated endstation
with the adaptive plan and a conventional scan, a real ``RunEngine`` and
:class:`~xas_callbacks.callback.XASRankingCallback`, and keeps, at a few points of each scan, the
statistics the read-out needs (as :func:`apps.bench_real.readout_cases` does for files). Every
third sample is measured with its truth (and any near-duplicate of it) removed from the
candidates, so "none of these" is the right answer there.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np

__all__ = ["LIVE_SCAN", "LIVE_CHECKPOINTS", "live_readout_cases"]

#: The simulated measurement of the adaptive benchmark (``xas-bench adaptive``'s defaults).
LIVE_SCAN = {"dwell_s": 0.5, "confidence": 0.95, "max_points": 35, "flux": 1.0e7}
#: Readings in use at which a scan's ranking becomes a case (and its last ranking): early, while
#: the adaptive plan decides, and late, where a conventional scan ends.
LIVE_CHECKPOINTS = (8, 12, 16, 20, 25, 30, 40, 60, 90)
#: Models whose validation samples the simulated endstation measures (``xas-bench adaptive``'s).
LIVE_MODELS = ("cu-k", "o-k")
#: The policies measured: the adaptive plan and the conventional grid.
LIVE_POLICIES = ("adaptive", "conventional")


class _Checkpoints:
    """Subscribed to a ranking callback: the read-out case of its ranking at each checkpoint."""

    def __init__(self, callback, label: str, true_names: list[str]):
        self.callback, self.label, self.true_names = callback, label, set(true_names)
        self.cases: dict[int, dict] = {}

    def __call__(self, name: str, doc: dict) -> None:
        if name == "event" and "top_names" in doc.get("data", {}):
            res = self.callback.latest_ranking
            if res is not None and res.n_points in LIVE_CHECKPOINTS:
                self.take(res)

    def take(self, res) -> None:
        eng = self.callback.last_run.engine
        truth = next((i for i, n in enumerate(res.names) if n in self.true_names), None)
        lp = np.asarray(res.log_evidence, float) + eng.tables.log_prior_candidates[res.order]
        self.cases[int(res.n_points)] = {
            "kind": "live", "label": self.label, "n_points": int(res.n_points),
            "log_odds_none": float(res.log_odds_none_raw), "chi2": float(res.top_reduced_chi2),
            "n_blocks": int(eng.n_blocks), "lp": lp, "truth": truth}

    def finish(self) -> list[dict]:
        """The cases of the scan, its last ranking included; together they weigh as one scan."""
        res = self.callback.latest_ranking
        if res is not None and res.n_points:
            self.take(res)
        cases = list(self.cases.values())
        for case in cases:
            case["weight"] = 1.0 / len(cases)
        return cases


def live_readout_cases(model: str, n_samples: int, n_candidates: int, seed: int, config,
                       stream=sys.stdout) -> tuple[list[dict], dict]:
    """Read-out cases of ``n_samples`` validation samples of ``model`` (``cu-k``: Materials
    Project crystals, ``o-k``: QM9 molecules) measured live with the adaptive plan and a
    conventional scan, ranked with ``config`` (its read-out only steers the adaptive plan; the
    cases hold the raw statistics). Returns the cases and a JSON-ready description."""
    from bluesky import RunEngine

    from apps.bench import conventional_energies, heldout_problems, molecule_problems, run_adaptive, run_list
    from xas_callbacks.callback import XASRankingCallback

    t0 = time.perf_counter()
    if model not in LIVE_MODELS:
        print(f"live cases: none for {model} (the endstation benchmark's samples are {', '.join(LIVE_MODELS)})",
              file=stream, flush=True)
        return [], {"model": model, "skipped": f"no live benchmark samples for {model}"}
    make = molecule_problems if model == "o-k" else heldout_problems
    problems, setup, _ = make(model, n_samples, n_candidates, seed, split="val", stream=stream)
    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    element = problems[0].element if problems else "Cu"
    conv = conventional_energies(element, "K", LIVE_SCAN["dwell_s"])
    cases: list[dict] = []
    for k, problem in enumerate(problems):
        problem.info["flux"] = LIVE_SCAN["flux"]
        if k % 3 == 0:  # "none of these" is the answer: the truth and its near-duplicates removed
            gone = set(problem.true_names) | set(problem.near_duplicates)
            problem = replace(problem, library=problem.library.subset(
                [n for n in problem.library.names if n not in gone]), true_names=[], true_in_candidates=False)
        for policy in LIVE_POLICIES:
            cb = XASRankingCallback(problem.library, config=config)
            watch = _Checkpoints(cb, f"{policy}:{problem.label}", problem.true_names)
            cb.subscribe(watch)
            if policy == "adaptive":
                run_adaptive(RE, docs, problem, dwell_s=LIVE_SCAN["dwell_s"], confidence=LIVE_SCAN["confidence"],
                             max_points=LIVE_SCAN["max_points"], callback=cb)
            else:
                run_list(RE, docs, problem, conv, dwell_s=LIVE_SCAN["dwell_s"], policy=policy, callback=cb)
            cases += watch.finish()
        print(f"live [{k + 1}/{len(problems)}] {problem.label} ({'truth removed' if k % 3 == 0 else 'truth present'}): "
              f"{len(cases)} cases ({time.perf_counter() - t0:.0f} s)", file=stream, flush=True)
    description = {"model": model, "split": "val", "samples": len(problems), "candidates": n_candidates,
                   "seed": seed, "policies": list(LIVE_POLICIES), "scan": LIVE_SCAN,
                   "checkpoints": list(LIVE_CHECKPOINTS), "truth_removed": "every third sample",
                   "problems_setup": setup, "wall_s": round(time.perf_counter() - t0, 1)}
    return cases, description
