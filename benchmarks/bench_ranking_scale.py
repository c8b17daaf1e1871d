"""Benchmark of the ranking update at scale: 1,000, 10,000 and 100,000 candidates, default grid.

Synthetic candidates (random smooth spectra, ``tests/synthetic.py``: no model prediction needed),
one simulated measurement of one of them (common offset +1.5 eV, noise 0.01): a coarse pass of
``--coarse`` readings over the whole range added at once (as the adaptive plan's first pass),
then ``--points`` readings one at a time in random order (as the agent picks them). Per reading:
``add_point`` + ``result()``, wall and CPU time, on one thread.

Engines:

- ``exact``: :class:`~xas_callbacks.ranking.RankingEngine` with ``full_every=1`` (no pruning);
- ``pruned``: the same with the default pruning (bound ``prune_mass`` = 1e-6 on the pruned
  posterior mass);
- ``screening``: :class:`~xas_callbacks.screening.ScreeningEngine` (live candidates only, the
  rest pruned with the same bound and re-evaluated exactly in chunks when it could be exceeded).

Where the exact engine runs, the largest difference of any probability from the exact one is
recorded beside the bound. Writes ``benchmarks/results/ranking_scale.json`` and ``.png``::

    OMP_NUM_THREADS=1 python benchmarks/bench_ranking_scale.py [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from synthetic import E0, ENERGIES, random_spectra  # noqa: E402
from xas_callbacks.ranking import RankingConfig, RankingEngine, flatten_like_candidates, ranking_tables  # noqa: E402
from xas_callbacks.screening import ScreeningEngine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SEED = 20261202
NOISE = 0.01
SHIFT = 1.5


def measurement(mean_true, n_coarse: int, n_points: int, seed: int):
    """Coarse pass (energy order) and then single readings (random order): E, y, var."""
    rng = np.random.default_rng(seed)
    lo, hi = E0 - 15.0, ENERGIES[-1] - 12.0
    coarse = np.linspace(lo, hi, n_coarse)
    fine = rng.permutation(np.linspace(lo + 0.3, hi - 0.3, n_points))
    E = np.concatenate([coarse, fine])
    y = np.interp(E + SHIFT, ENERGIES, mean_true) + rng.normal(0.0, NOISE, E.size)
    return E, y, np.full(E.size, NOISE**2)


def _reference_loop_ms() -> float:
    """CPU ms of a fixed pure-Python loop: how fast this machine is at the moment (load)."""
    c0 = time.process_time()
    sum(range(10**6))
    return 1e3 * (time.process_time() - c0)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _summary(ms) -> dict:
    ms = np.asarray(ms)
    return {"median": float(np.median(ms)), "mean": float(ms.mean()), "p90": float(np.percentile(ms, 90)),
            "max": float(ms.max())}


def _probabilities(res, n: int) -> np.ndarray:
    p = np.empty(n)
    p[res.order] = res.probabilities
    return p


def run_engines(engines: dict, E, y, v, n_coarse: int, n: int) -> dict:
    """The engines side by side: the coarse pass at once, then one reading per update; per
    update each engine's wall and CPU time, and (with an exact engine) the largest difference of
    any probability from the exact one. No result is kept (the garbage collector would time it)."""
    out = {label: {"wall": [], "cpu": [], "bounds": [], "diff": []} for label in engines}
    for label, engine in engines.items():
        t0, c0 = time.perf_counter(), time.process_time()
        engine.add_points(E[:n_coarse], y[:n_coarse], v[:n_coarse])
        engine.result()
        out[label]["first"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    for e, yy, vv in zip(E[n_coarse:], y[n_coarse:], v[n_coarse:]):
        results = {}
        for label, engine in engines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            engine.add_point(e, yy, vv)
            res = engine.result()
            out[label]["wall"].append(1e3 * (time.perf_counter() - t0))
            out[label]["cpu"].append(1e3 * (time.process_time() - c0))
            out[label]["bounds"].append(res.pruned_mass_bound)
            results[label] = res
        if "exact" in results:
            p_exact = _probabilities(results["exact"], n)
            for label, res in results.items():
                out[label]["diff"].append(float(np.max(np.abs(_probabilities(res, n) - p_exact))))
        del results
    report = {}
    for label, o in out.items():
        res = engines[label].result()
        r = {"first_update_after_coarse_pass": o["first"], "wall_ms": _summary(o["wall"]),
             "cpu_ms": _summary(o["cpu"]), "wall_ms_per_update": np.round(o["wall"], 3).tolist(),
             "cpu_ms_per_update": np.round(o["cpu"], 3).tolist(),
             "updates_with_everything_evaluated": int(sum(b == 0.0 for b in o["bounds"])),
             "max_pruned_mass_bound": float(max(o["bounds"])),
             "top1": res.names[0], "top1_probability": float(res.probabilities[0]), "p_none": float(res.p_none)}
        if o["diff"]:
            r["max_probability_difference_from_exact"] = max(o["diff"])
            r["within_bound_every_update"] = bool(all(d <= b + 1e-12 for d, b in zip(o["diff"], o["bounds"])))
        if isinstance(engines[label], ScreeningEngine):
            r["exact_candidate_evaluations"] = engines[label].n_exact_evaluations
            r["live_candidates_at_end"] = engines[label].n_live
        report[label] = r
    return report


def bench_size(n: int, args) -> dict:
    print(f"--- {n} candidates", flush=True)
    rng = np.random.default_rng(SEED + n)
    mean = random_spectra(n, seed=SEED + n).astype(np.float32)
    names = [f"cand-{i:06d}" for i in range(n)]
    truth = int(rng.integers(n))
    E, y, v = measurement(mean[truth], args.coarse, args.points, SEED)
    cfg = RankingConfig.for_model(args.model)  # the class defaults without --model
    t0 = time.perf_counter()
    tables = ranking_tables(names, ENERGIES, mean, np.full_like(mean, 0.02), cfg, dtype=np.float32)
    y = flatten_like_candidates(E, y, tables)  # as rank_spectrum does: the candidates are flattened
    out = {"n_candidates": n, "truth": names[truth], "tables_build_s": time.perf_counter() - t0,
           "cells_per_reading": int(n * tables.offsets.size * tables.broadenings.size),
           "offsets": int(tables.offsets.size), "broadenings": int(tables.broadenings.size),
           "levels": int(cfg.levels.size)}
    del mean
    engines = {"screening": ScreeningEngine(tables, cfg)}
    if n <= args.max_pruned:
        engines["pruned"] = RankingEngine(config=cfg, tables=tables)
    if n <= args.max_exact:
        engines["exact"] = RankingEngine(config=dataclasses.replace(cfg, full_every=1), tables=tables)
    out["engines"] = run_engines(engines, E, y, v, args.coarse, n)
    del engines
    out["peak_rss_mb_so_far"] = _rss_mb()
    for label, r in out["engines"].items():
        print(f"{label}: median {r['wall_ms']['median']:.2f} ms, mean {r['wall_ms']['mean']:.2f} ms, "
              f"max {r['wall_ms']['max']:.0f} ms (CPU median {r['cpu_ms']['median']:.2f} ms, mean "
              f"{r['cpu_ms']['mean']:.2f} ms); first {r['first_update_after_coarse_pass']['wall_s']:.2f} s; "
              f"top1 {r['top1']} {r['top1_probability']:.3f} (truth {out['truth']}, p_none {r['p_none']:.3f}); max bound {r['max_pruned_mass_bound']:.1e}; "
              f"max diff {r.get('max_probability_difference_from_exact', float('nan')):.1e}", flush=True)
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, marker in (("exact", "s"), ("pruned", "o"), ("screening", "^")):
        pts = [(s["n_candidates"], s["engines"][label]["wall_ms"]) for s in report["sizes"] if label in s["engines"]]
        if pts:
            ns = [p[0] for p in pts]
            ax.plot(ns, [p[1]["median"] for p in pts], marker + "-", label=f"{label}, median")
            ax.plot(ns, [p[1]["mean"] for p in pts], marker + ":", label=f"{label}, mean")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(50.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("candidates")
    ax.set_ylabel("ranking update (ms, wall, one thread)")
    ax.set_title("per-reading update, default grid")
    ax.legend(fontsize=7)
    for s in report["sizes"]:
        r = s["engines"]["screening"]
        ax2.plot(r["wall_ms_per_update"], lw=0.8, label=f"{s['n_candidates']:,} (screening)")
    ax2.set_yscale("log")
    ax2.set_xlabel("reading after the coarse pass")
    ax2.set_ylabel("update (ms)")
    ax2.set_title("every update (spikes: exact re-evaluations)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--coarse", type=int, default=20, help="readings of the first pass, added at once")
    p.add_argument("--points", type=int, default=100, help="readings added one at a time after it")
    p.add_argument("--max-exact", type=int, default=1000, help="largest library ranked without pruning too")
    p.add_argument("--max-pruned", type=int, default=10000, help="largest library ranked by RankingEngine")
    p.add_argument("--model", default=None,
                   help="rank with this model's stored settings (its calibrated read-out too; "
                        "RankingConfig.for_model); default: the class defaults")
    p.add_argument("--out", default=None, help="default: ranking_scale.json, ranking_scale_<model>.json with --model")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(RESULTS / (f"ranking_scale_{args.model}.json" if args.model else "ranking_scale.json"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "cpu_count": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "load_average_at_start": os.getloadavg(),
        "reference_loop_cpu_ms_at_start": _reference_loop_ms(),
        "config": {k: v for k, v in RankingConfig.for_model(args.model).__dict__.items()},
        "measurement": {"coarse_pass_readings": args.coarse, "single_readings": args.points, "noise": NOISE,
                        "offset_eV": SHIFT, "candidates": "tests/synthetic.py random_spectra, std 0.02"},
        "sizes": [],
    }
    t0 = time.time()
    for n in args.sizes:
        report["sizes"].append(bench_size(n, args))
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))  # what is done so far
    report["load_average_at_end"] = os.getloadavg()
    report["reference_loop_cpu_ms_at_end"] = _reference_loop_ms()
    report["peak_rss_mb"] = _rss_mb()
    report["wall_s"] = time.time() - t0
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    plot(report, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
