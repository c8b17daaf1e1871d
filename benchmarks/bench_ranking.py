"""Benchmark of the candidate ranking: speed and accuracy on simulated measurements of held-out
computed spectra (real measured references: ``xas-bench real``).

Writes ``benchmarks/results/ranking.json`` and PNG plots beside it. Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_ranking.py [--model cu-k] [--quick]

1. Update time: one new point, 1,000 FEFF candidates, CPU (float64 and float32), split into the
   sufficient-statistics update and the full posterior (ranking document).
2. Held-out computed spectra: the test split of ``models.readers.split_ids`` over the FEFF Cu
   materials. Each material's FEFF spectrum becomes a simulated transmission measurement
   (random common offset, Gaussian broadening, edge step, sloping background, realistic XANES
   energy grid, Poisson counts in I0 and It) that is normalised and ranked among the FEFF
   spectra of the whole test split (candidates = FEFF: an upper bound; with ``--model``:
   candidates = the predictor's spectra of the same structures, the realistic case).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.paths import CU_K_FEFF, data_dir  # noqa: E402
from xas_callbacks.candidates import CandidateLibrary  # noqa: E402
from endstation.modes import mu_from_counts  # noqa: E402
from models.normalization import normalize  # noqa: E402
from models.spectra import gaussian_broaden_uniform  # noqa: E402
from xas_callbacks.ranking import RankingConfig, RankingEngine, rank_spectrum  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SEED = 20241123

# ----------------------------------------------------------------------------- 1. speed
SPEED_CONFIGS = {
    # default: +-12 eV offsets at 0.5 eV, 5 broadenings
    "default": RankingConfig(),
    # after a reference-foil calibration: +-3 eV offsets, 4 broadenings
    "foil_calibrated": RankingConfig(offset_min=-3, offset_max=3, offset_prior_sd=1.0,
                                     broadenings=(0.0, 2.0, 4.0, 6.0)),
}


def bench_speed(lib: CandidateLibrary, n_points: int = 150) -> dict:
    names = lib.names[:1000]
    sub = lib.subset(names)
    out = {"n_candidates": len(sub), "n_points": n_points}
    rng = np.random.default_rng(SEED)
    E = rng.permutation(np.linspace(sub.energies[0] - 20, sub.energies[-1] - 15, n_points))
    y = np.interp(E + 1.0, sub.energies, sub.mean[3]) + rng.normal(0, 0.01, E.size)
    for label, dtype, cfg_name in (("float64", np.float64, "default"), ("float32", np.float32, "default"),
                                   ("float32_foil_calibrated", np.float32, "foil_calibrated")):
        t0 = time.perf_counter()
        eng = RankingEngine(sub.names, sub.energies, sub.mean, np.full_like(sub.mean, 0.02),
                            dtype=dtype, config=SPEED_CONFIGS[cfg_name])
        build = time.perf_counter() - t0
        t_add, t_res, c_add, c_res = [], [], [], []
        for k in range(E.size):
            t0, c0 = time.perf_counter(), time.process_time()
            eng.add_point(E[k], y[k], 1e-4)
            t1, c1 = time.perf_counter(), time.process_time()
            eng.result()
            t2, c2 = time.perf_counter(), time.process_time()
            t_add.append(t1 - t0)
            t_res.append(t2 - t1)
            c_add.append(c1 - c0)
            c_res.append(c2 - c1)
        tot = np.add(t_add, t_res)
        ctot = np.add(c_add, c_res)
        out[label] = {
            "cells": int(len(sub) * eng.offsets.size * eng.broadenings.size),
            "offsets": int(eng.offsets.size), "broadenings": int(eng.broadenings.size),
            "build_s": build,
            "wall_add_point_ms_median": 1e3 * float(np.median(t_add)),
            "wall_posterior_ms_median": 1e3 * float(np.median(t_res)),
            "wall_update_ms_median": 1e3 * float(np.median(tot)),
            "wall_update_ms_min": 1e3 * float(np.min(tot)),
            # CPU time of this process: what the update costs when the cores are shared
            "cpu_add_point_ms_mean": 1e3 * float(np.mean(c_add)),
            "cpu_posterior_ms_mean": 1e3 * float(np.mean(c_res)),
            "cpu_update_ms_mean": 1e3 * float(np.mean(ctot)),
        }
        print(f"speed {label}: {out[label]}", flush=True)
    return out


# ------------------------------------------------------------------ 2. held-out computed
def simulate_measurement(energies, mu, rng, offset, fwhm):
    """A transmission measurement of a computed spectrum: returns energy, i0, it."""
    step = 0.25
    fine = np.arange(energies[0] - 60, energies[-1] + step, step)
    m = np.interp(fine, energies, mu)  # flat extension below the FEFF range
    m = gaussian_broaden_uniform(m, step, fwhm)
    lo, hi = energies[0] - offset, energies[-1] - offset
    e_edge = lo + 8.0
    grid = np.concatenate([np.arange(lo - 50, e_edge - 10, 5.0), np.arange(e_edge - 10, e_edge + 30, 0.5),
                           np.arange(e_edge + 30, hi - 5, 2.0)])
    grid = grid + rng.uniform(-0.05, 0.05, grid.size)  # mono readback jitter
    step_mux = rng.uniform(0.3, 1.5)
    bg0, slope = rng.uniform(0.5, 2.0), -rng.uniform(0, 5e-4)
    mux = bg0 + slope * (grid - e_edge) + step_mux * np.interp(grid + offset, fine, m)
    i0 = rng.poisson(rng.uniform(1e5, 1e6), grid.size).astype(float)
    it = rng.poisson(i0 * np.exp(-mux)).astype(float)
    return grid, i0, it


def bench_heldout(lib: CandidateLibrary, test_ids: list[str], model: str | None, quick: bool) -> dict:
    rng = np.random.default_rng(SEED)
    truth = lib.subset(test_ids)
    ids = truth.names
    if quick:
        ids = ids[:40]
    out = {"n_candidates": len(truth), "n_queries": len(ids), "candidates": "feff"}
    cand_sets = {"feff": CandidateLibrary.from_spectra(truth.names, truth.energies, truth.mean,
                                                       default_std=0.02)}
    if model:
        try:
            root = data_dir() / CU_K_FEFF
            pred = CandidateLibrary.from_structures([str(root / i / "POSCAR") for i in truth.names],
                                                    model=model, names=truth.names)
            cand_sets[model] = pred
            out["predictor_failures"] = pred.failures
        except Exception as exc:  # noqa: BLE001
            out["predictor_error"] = f"{type(exc).__name__}: {exc}"
    results = {}
    draws = [(rng.uniform(-4, 4), rng.uniform(0, 3), int(rng.integers(1 << 31))) for _ in ids]
    for label, cands in cand_sets.items():
        cfg = RankingConfig()
        eng = RankingEngine(cands.names, cands.energies, cands.mean, cands.std, config=cfg,
                            dtype=np.float32)
        rank_of_true, off_err, fw_err, ent = [], [], [], []
        for mid, (dE, fwhm, seed) in zip(ids, draws):
            r = np.random.default_rng(seed)
            i = truth.names.index(mid)
            E, i0, it = simulate_measurement(truth.energies, truth.mean[i], r, dE, fwhm)
            mu, var, bad = mu_from_counts("transmission", i0, it)
            nm = normalize(E[~bad], mu[~bad], None)
            y, v = nm.apply(E[~bad], mu[~bad], var[~bad])
            eng.reset()
            eng.add_points(E[~bad], y, v)
            res = eng.result()
            rank_of_true.append(res.names.index(mid) if mid in res.names else len(res.names))
            off_err.append(res.offset_mean - dE)
            fw_err.append(res.broadening_mean - fwhm)
            ent.append(res.entropy)
        rk = np.array(rank_of_true)
        results[label] = {
            "top1": float(np.mean(rk == 0)), "top3": float(np.mean(rk < 3)),
            "top10": float(np.mean(rk < 10)), "median_rank": float(np.median(rk)),
            "offset_error_rms_eV": float(np.sqrt(np.mean(np.square(off_err)))),
            "broadening_error_rms_eV": float(np.sqrt(np.mean(np.square(fw_err)))),
            "mean_entropy": float(np.mean(ent)),
            "ranks": rk.tolist(),
        }
        print(f"held-out [{label}]: top1 {results[label]['top1']:.3f} top3 {results[label]['top3']:.3f} "
              f"offset rms {results[label]['offset_error_rms_eV']:.2f} eV", flush=True)
    out["results"] = results
    out["simulation"] = {"offset_eV": "U(-4, 4)", "broadening_fwhm_eV": "U(0, 3)",
                         "edge_step_mux": "U(0.3, 1.5)", "I0_counts": "U(1e5, 1e6) Poisson",
                         "grid": "pre-edge 5 eV, edge 0.5 eV, post-edge 2 eV, +-0.05 eV jitter"}
    return out


def plot_heldout(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in res["results"].items():
        rk = np.array(r["ranks"])
        ks = np.arange(1, 21)
        ax.plot(ks, [np.mean(rk < k) for k in ks], "o-", label=f"{label} (top1 {r['top1']:.2f})")
    ax.set_xlabel("k")
    ax.set_ylabel("top-k accuracy")
    ax.set_title(f"{res['n_queries']} simulated measurements among {res['n_candidates']} candidates")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "ranking_heldout_topk.png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="predictor name (e.g. cu-k) for predicted candidates")
    p.add_argument("--quick", action="store_true", help="40 held-out queries only")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--only-speed", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "ranking.json"))
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    root = data_dir() / CU_K_FEFF
    t0 = time.time()
    lib = CandidateLibrary.from_feff(root)
    from models.readers import split_ids

    split = split_ids(lib.names)
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "cpu_count": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "library": {"n": len(lib), "n_failures": len(lib.failures),
                    "energies": [float(lib.energies[0]), float(lib.energies[-1]), len(lib.energies)]},
        "config": RankingConfig().__dict__,
        "load_average_at_start": os.getloadavg(),
    }
    if not args.skip_speed:
        report["speed_cpu"] = bench_speed(lib)
    if args.only_speed:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        return 0
    report["heldout"] = bench_heldout(lib, split["test"], args.model, args.quick)
    plot_heldout(report["heldout"])
    report["wall_s"] = time.time() - t0
    Path(args.out).write_text(json.dumps(report, indent=1, default=lambda o: o.tolist()
                                         if isinstance(o, np.ndarray) else str(o)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
