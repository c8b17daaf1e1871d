"""``xas-demo``: the whole loop on a laptop, from a fresh install.

It starts the embedded Tiled catalog and builds the simulated endstation with a sample the plan
does not know: the FEFF-computed spectrum of a held-out (test-split) structure, with a random
energy-calibration offset and counting noise. It predicts the candidates' spectra with the
shipped GNN and runs ``RE(adaptive_xas_plan(...))``, printing a progress line and a ranking
table. Then it stores the run, replays it from the catalog through a fresh ranking callback,
checks that the replayed ranking equals the live one, runs the conventional scan of the same
sample for comparison, and prints a summary (``--json`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from endstation.beamtime import path_beam_time

__all__ = ["main", "DemoProblem", "crystal_problem", "molecule_problem", "run_demo"]

#: Monochromator travel and settling assumed for the beam-time figures (a Si(111) DCM stepping).
MONO_SPEED_EV_PER_S = 20.0
SETTLE_S = 0.3


@dataclass
class DemoProblem:
    """A sample unknown to the plan and the candidates it is chosen from."""

    element: str
    edge: str
    model: str
    candidates: list  # paths or SMILES, predicted by the model
    names: list[str]
    true_name: str
    true_energy: np.ndarray  # FEFF spectrum of the sample (absolute eV)
    true_mu: np.ndarray
    description: str


def crystal_problem(n_candidates: int = 40, seed: int = 0) -> DemoProblem:
    """Cu K-edge: test-split Materials Project crystals; the sample is one of them, as FEFF computed it."""
    from models.paths import CU_K_FEFF, data_path
    from models.readers import split_ids
    from xas_callbacks.candidates import CandidateLibrary

    root = data_path(CU_K_FEFF)
    ids = sorted(p.name for p in root.iterdir() if (p / "FEFF-XANES").is_dir())
    test = sorted(split_ids(ids)["test"])
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(test, size=min(n_candidates, len(test)), replace=False).tolist())
    truth = chosen[int(rng.integers(len(chosen)))]
    feff = CandidateLibrary.from_feff(root, [truth])
    return DemoProblem(
        element="Cu",
        edge="K",
        model="cu-k",
        candidates=[str(root / i / "POSCAR") for i in chosen],
        names=chosen,
        true_name=truth,
        true_energy=feff.energies,
        true_mu=feff.mean[0],
        description=f"Cu K-edge, sample {truth} (held-out Materials Project crystal, FEFF spectrum)",
    )


def molecule_problem(n_candidates: int = 40, seed: int = 0) -> DemoProblem:
    """O K-edge: test-split QM9 molecules; the sample is one of them, as FEFF10 computed it."""
    from models.paths import QM9_O_K, data_path
    from models.readers import read_qm9_jsonl, split_ids
    from models.spectra import make_grid, resample

    records, _ = read_qm9_jsonl(data_path(QM9_O_K))
    by_id = {r.record_id: r for r in records}
    test = sorted(split_ids(sorted(by_id))["test"])
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(test, size=min(n_candidates, len(test)), replace=False).tolist())
    truth = by_id[chosen[int(rng.integers(len(chosen)))]]
    lo = max(s.energy[0] for s in truth.sites)
    hi = min(s.energy[-1] for s in truth.sites)
    grid = make_grid(lo, hi, int((hi - lo) / 0.25) + 1)
    mu = np.mean([resample(s.energy, s.mu, grid) for s in truth.sites], axis=0)
    smiles = [by_id[i].structure.properties.get("smiles", i) for i in chosen]
    return DemoProblem(
        element="O",
        edge="K",
        model="o-k",
        candidates=[by_id[i].structure for i in chosen],
        names=[f"{i} {s}" for i, s in zip(chosen, smiles)],
        true_name=f"{truth.record_id} {truth.structure.properties.get('smiles', '')}",
        true_energy=grid,
        true_mu=mu,
        description=f"O K-edge, sample {truth.record_id} (held-out QM9 molecule, FEFF10 spectrum)",
    )


class _TerminalProgress:
    """Prints one line per decision of the adaptive plan and a ranking table at its end."""

    def __init__(self, stream=sys.stdout, top: int = 3):
        self.stream = stream
        self.top = top
        self._decision_descriptors: set[str] = set()

    def __call__(self, name, doc):
        if name == "descriptor" and doc.get("name") == "decision":
            self._decision_descriptors.add(doc["uid"])
        elif name == "event" and doc.get("descriptor") in self._decision_descriptors:
            d = doc["data"]
            ranked = list(zip(d["decision_ranking_names"], d["decision_ranking_probabilities"]))[: self.top]
            table = "  ".join(f"{n[:22]:>22s} {p:5.3f}" for n, p in ranked)
            nxt = d["decision_next_energies"]
            where = f"-> {nxt[0]:9.2f} eV" if d["decision_action"] == "measure" else d["decision_action"]
            print(f"  {d['decision_n_points']:3d} pts  {d['decision_beam_time_s']:7.1f} s  {table}  {where}",
                  file=self.stream, flush=True)


def _beam_time(energies: np.ndarray, dwells: np.ndarray) -> float:
    """Beam time of readings in this order at the demo's monochromator speed and settling."""
    return path_beam_time(energies, dwells, MONO_SPEED_EV_PER_S, SETTLE_S)


def _primary(run_docs):
    descriptors = {d["uid"] for n, d in run_docs if n == "descriptor" and d["name"] == "primary"}
    events = [d for n, d in run_docs if n == "event" and d["descriptor"] in descriptors]
    return events


def run_demo(
    problem: DemoProblem,
    *,
    out_dir: Path,
    seed: int = 0,
    dwell_s: float = 0.5,
    confidence: float = 0.95,
    catalog_dir: str | None = None,
    conventional: bool = True,
    stream=sys.stdout,
) -> dict:
    """Run the adaptive and the conventional scan of ``problem``'s sample; return the summary."""
    from bluesky import RunEngine

    from endstation.catalog import open_catalog
    from endstation.devices import make_endstation
    from endstation.replay import replay
    from endstation.sample import SimulatedSample
    from plans.adaptive import adaptive_xas_plan
    from plans.ranking_feed import InProcessRankingFeed
    from plans.xafs import xafs_scan
    from xas_callbacks.callback import XASRankingCallback
    from xas_callbacks.candidates import CandidateLibrary
    from xas_callbacks.plotting import LiveRankingPlot

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    offset = float(rng.uniform(-2.0, 2.0))
    print(f"Sample: {problem.description}; calibration offset {offset:+.2f} eV (unknown to the plan)", file=stream)

    t0 = time.perf_counter()
    library = CandidateLibrary.from_structures(problem.candidates, model=problem.model, names=problem.names)
    print(f"Predicted {len(library)} candidate spectra with {problem.model} in {time.perf_counter() - t0:.1f} s"
          + (f"; {len(library.failures)} could not be predicted: {library.failures}" if library.failures else ""),
          file=stream)

    catalog = open_catalog(directory=catalog_dir) if catalog_dir else open_catalog()
    RE = RunEngine({})
    RE.subscribe(catalog)

    def endstation():
        sample = SimulatedSample.from_spectrum(
            problem.true_energy, problem.true_mu, element=problem.element, edge=problem.edge, name=problem.true_name
        )
        # Soft X-ray edges (O K at 543 eV) sit below a hard X-ray mono's usual range.
        return make_endstation(sample, seed=seed, time_scale=0.0, energy_offset=offset, limits=(100.0, 32000.0),
                               init_energy=float(problem.true_energy[0]))

    # The live ranking callback stores its ranking documents in the catalog beside the run.
    plot_path = out_dir / "adaptive_ranking.png"
    live = XASRankingCallback(library, emit=catalog, plot=LiveRankingPlot(save_path=plot_path))
    progress = _TerminalProgress(stream)
    RE.subscribe(progress)
    es = endstation()
    print("\nAdaptive scan (points, beam time, leading candidates, next energy):", file=stream)
    (uid,) = RE(
        adaptive_xas_plan(
            es.detectors, es.energy, element=problem.element, edge=problem.edge, candidates=library,
            model=problem.model, confidence=confidence, dwell_s=dwell_s, mono_speed_eV_per_s=MONO_SPEED_EV_PER_S,
            settle_s=SETTLE_S, feed=InProcessRankingFeed(live),
            md={"sample_name": "unknown", "demo": {"true_candidate": problem.true_name, "offset_eV": offset}},
        )
    )
    live_ranking = live.latest_ranking

    # Replay from the catalog through a fresh callback: the ranking must come out the same.
    replayed = XASRankingCallback(library)
    replay(uid, replayed, catalog)
    replay_ranking = replayed.latest_ranking
    replay_match = bool(
        live_ranking is not None
        and replay_ranking is not None
        and live_ranking.names == replay_ranking.names
        and np.array_equal(live_ranking.probabilities, replay_ranking.probabilities)
    )
    adaptive_docs = catalog_documents(catalog, uid)
    adaptive_events = _primary(adaptive_docs)

    summary = {
        "sample": problem.description,
        "true_candidate": problem.true_name,
        "n_candidates": len(library),
        "candidate_failures": library.failures,
        "offset_true_eV": offset,
        "top1": live_ranking.names[0] if live_ranking else None,
        "top1_probability": float(live_ranking.probabilities[0]) if live_ranking else None,
        "top3": live_ranking.names[:3] if live_ranking else [],
        "identified": bool(live_ranking and live_ranking.names[0] == problem.true_name),
        # Same convention in the ranking and the endstation: a reading at mono energy E sees the
        # spectrum at E + offset.
        "offset_fitted_eV": float(live_ranking.offset_mean) if live_ranking else None,
        "broadening_fitted_eV": float(live_ranking.broadening_mean) if live_ranking else None,
        "points_adaptive": len(adaptive_events),
        "beam_time_adaptive_s": _beam_time(
            np.array([e["data"]["energy"] for e in adaptive_events]), np.full(len(adaptive_events), dwell_s)
        ),
        "uid_adaptive": uid,
        "replay_match": replay_match,
        "plots": [str(plot_path)],
    }

    if conventional:
        es = endstation()
        conv_cb = XASRankingCallback(library, emit=catalog)
        (conv_uid,) = RE(
            bpp_subs(xafs_scan(es.detectors, es.energy, element=problem.element, edge=problem.edge,
                               md={"sample_name": "unknown"}), conv_cb)
        )
        conv_events = _primary(catalog_documents(catalog, conv_uid))
        energies = np.array([e["data"]["energy"] for e in conv_events])
        dwells = np.array([e["data"].get("dwell_time", dwell_s) for e in conv_events])
        conv = conv_cb.latest_ranking
        summary.update(
            {
                "points_conventional": len(conv_events),
                "beam_time_conventional_s": _beam_time(energies, dwells),
                "top1_conventional": conv.names[0] if conv else None,
                "top1_probability_conventional": float(conv.probabilities[0]) if conv else None,
                "uid_conventional": conv_uid,
            }
        )
        summary["fraction_of_points"] = summary["points_adaptive"] / max(1, summary["points_conventional"])
        summary["fraction_of_beam_time"] = summary["beam_time_adaptive_s"] / max(
            1e-9, summary["beam_time_conventional_s"]
        )
    summary["storage_failures"] = catalog.failure_count
    catalog.close()
    return summary


def bpp_subs(plan, callback):
    from bluesky import preprocessors as bpp

    return bpp.subs_wrapper(plan, callback)


def catalog_documents(catalog, uid):
    from endstation.replay import run_documents

    return run_documents(catalog[uid])


def _print_summary(summary: dict, stream=sys.stdout) -> None:
    ok = "identified" if summary["identified"] else "NOT identified"
    print(f"\nSample {summary['true_candidate']}: {ok}; top-1 {summary['top1']} "
          f"(p={summary['top1_probability']:.3f}); top-3 {summary['top3']}", file=stream)
    line = f"Adaptive: {summary['points_adaptive']} points, {summary['beam_time_adaptive_s']:.0f} s of beam time"
    if "points_conventional" in summary:
        line += (f"; conventional: {summary['points_conventional']} points, "
                 f"{summary['beam_time_conventional_s']:.0f} s ({100 * summary['fraction_of_points']:.0f} % of "
                 f"the points, {100 * summary['fraction_of_beam_time']:.0f} % of the beam time)")
    print(line, file=stream)
    print(f"Calibration offset: true {summary['offset_true_eV']:+.2f} eV, fitted {summary['offset_fitted_eV']:+.2f} eV"
          f"; broadening {summary['broadening_fitted_eV']:.2f} eV", file=stream)
    print(f"Replay from the catalog reproduces the live ranking: {summary['replay_match']}", file=stream)
    print(f"Plots: {', '.join(summary['plots'])}", file=stream)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xas-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", choices=("crystal", "molecule"), default="crystal",
                        help="Cu K-edge crystal (cu-k model) or O K-edge molecule (o-k model)")
    parser.add_argument("--candidates", type=int, default=40, help="number of candidate structures")
    parser.add_argument("--seed", type=int, default=0, help="chooses the sample, the offset and the noise")
    parser.add_argument("--dwell", type=float, default=0.5, help="counting time per point (s)")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=Path("xas-demo-output"), help="folder for plots")
    parser.add_argument("--catalog-dir", default=None, help="local catalog folder (default: per-user)")
    parser.add_argument("--no-conventional", action="store_true", help="skip the conventional comparison scan")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    make = crystal_problem if args.sample == "crystal" else molecule_problem
    try:
        problem = make(args.candidates, args.seed)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    summary = run_demo(problem, out_dir=args.out, seed=args.seed, dwell_s=args.dwell, confidence=args.confidence,
                       catalog_dir=args.catalog_dir, conventional=not args.no_conventional)
    _print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
        print(f"Summary written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
