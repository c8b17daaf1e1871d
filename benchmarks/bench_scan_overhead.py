"""Per-point overhead of a scan on the simulated endstation (dwell and settle zero), two ways.

1. The scan itself: ``xafs_scan`` against ``bluesky.plans.scan([det], motor, ...)`` with
   ``ophyd.sim`` devices, no subscribers, same RunEngine (goal: ratio <= 1.5).
2. What a beamline session adds per point: the conventional scan (default Cu K grid, 354 points)
   with each part of the session on alone and all together, as the IPython profile wires them:

   * ``storage``: the local Tiled catalog (``endstation.catalog.open_catalog``, a fresh folder);
   * ``ranking``: ``XASRankingCallback`` of 40 FEFF candidates (8 synthetic ones without the
     shared data);
   * ``plots``: the live table (``XASBestEffortCallback``, printing to /dev/null) and the live
     mu(E) plot (``LiveXASPlot``), plus the ranking plot when ranking is on;
   * ``live``: ranking and plots, no storage (what the plots and the ranking add together);
   * ``all``: the three together, the ranking documents stored too.

   overhead per point = (median wall time with the part on - median bare) / points. Each backend
   runs in its own process: ``agg`` (headless: plots drawn once and saved at the end of the run)
   and ``qt`` (real windows, drawn live in the main thread while the RunEngine runs in its own;
   on a virtual X server when there is no display). Goal: all on <= 20 ms per point.

Writes ``benchmarks/results/scan_overhead.json`` and ``scan_overhead.png``.

    python benchmarks/bench_scan_overhead.py [--points 400] [--repeats 5] [--session-repeats 3]
        [--backends agg qt] [--parts bare storage ranking plots live all]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "scan_overhead.json"
GOAL_MS_PER_POINT = 20.0
PARTS = ("bare", "storage", "ranking", "plots", "live", "all")
N_CANDIDATES = 40


# ------------------------------------------------------------------------- 1. the scan itself
def _sample():
    from endstation import SimulatedSample

    energy = np.linspace(8800.0, 9700.0, 901)
    mu = 1.0 / (1.0 + np.exp(-(energy - 8979.0) / 2.0))
    return SimulatedSample.from_spectrum(energy, mu, element="Cu", edge="K")


def _time(RE, make_plan, repeats: int) -> float:
    RE(make_plan())  # warm up (imports, caches)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        RE(make_plan())
        best = min(best, time.perf_counter() - t0)
    return best


def scan_ratio(points: int, repeats: int) -> dict:
    """Part 1: ``xafs_scan`` against bluesky's ``scan`` (no subscribers), best of ``repeats``."""
    from bluesky import RunEngine
    from bluesky.plans import scan
    from ophyd.sim import det, det1, det2, det3, det4, motor, motor1

    from endstation import make_endstation
    from plans import xafs_scan

    es = make_endstation(_sample(), seed=0, time_scale=0, settle_time=0, speed=0)
    step = 600.0 / (points - 1)
    grid = {"bounds": "-100 500", "steps": f"{step:.6f}", "times": "0"}
    RE = RunEngine({})
    motor.delay = 0
    ref = _time(RE, lambda: scan([det], motor, -1, 1, points), repeats)
    # same number of readables as the endstation (4 counters + a signal, and the motor)
    ref6 = _time(RE, lambda: scan([det1, det2, det3, det4, motor1], motor, -1, 1, points), repeats)
    ours = _time(RE, lambda: xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid=grid, e0=8979.0),
                 repeats)
    n_ours = len(np.arange(-100, 500 + 1e-9, step))
    per_ref, per_ours = ref / points, ours / n_ours
    return {
        "what": "per-point wall time of a step scan (dwell 0, settle 0, no subscribers), best of repeats",
        "points_reference": points,
        "points_xafs_scan": n_ours,
        "reference": "bluesky.plans.scan([ophyd.sim.det], ophyd.sim.motor, -1, 1, N)",
        "reference_readables": 2,
        "xafs_scan_readables": len(es.detectors) + 1,
        "reference_s_per_point": per_ref,
        "xafs_scan_s_per_point": per_ours,
        "ratio": per_ours / per_ref,
        "reference_same_readables": "bluesky.plans.scan([det1, det2, det3, det4, motor1], motor, -1, 1, N)",
        "reference_same_readables_s_per_point": ref6 / points,
        "ratio_same_readables": per_ours / (ref6 / points),
        "goal_ratio": 1.5,
        "repeats": repeats,
    }


# --------------------------------------------------------------- 2. the session's parts
def _library_and_sample():
    """40 FEFF Cu K candidates and a sample that is one of them (8 synthetic ones without the
    shared data); returns (library, SimulatedSample, description)."""
    from endstation import SimulatedSample
    from models.paths import CU_K_FEFF, data_dir
    from xas_callbacks.candidates import CandidateLibrary

    folder = data_dir() / CU_K_FEFF
    if folder.is_dir():
        ids = sorted(e.name for e in os.scandir(folder) if e.is_dir())[:N_CANDIDATES]
        library = CandidateLibrary.from_feff(folder, ids)
        what = f"{len(library)} FEFF Cu K candidates ({CU_K_FEFF})"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from synthetic import synthetic_library

        library = synthetic_library()
        what = f"{len(library)} synthetic candidates (tests/synthetic.py; shared data absent)"
    energy = np.linspace(8700.0, 9700.0, 2001)
    true = 0.3 + np.interp(energy, library.energies, library.mean[len(library) // 2])
    sample = SimulatedSample.from_spectrum(energy, true, element="Cu", edge="K")
    return library, sample, what


def _subscriptions(part: str, RE, catalog, library, plot_dir: Path) -> tuple[list, dict]:
    """The callbacks of ``part``, made as the profile makes them; returns (callbacks, the ones to watch)."""
    from xas_callbacks.callback import XASRankingCallback
    from xas_callbacks.plotting import LiveRankingPlot
    from xas_callbacks.scan_plot import LiveXASPlot, XASBestEffortCallback

    storage = part in ("storage", "all")
    ranking = part in ("ranking", "live", "all")
    plots = part in ("plots", "live", "all")
    callbacks, watched = [], {}
    if storage:
        callbacks.append(catalog)
    if plots:
        callbacks.append(XASBestEffortCallback())
        watched["mu_plot"] = LiveXASPlot(save_path=plot_dir / "scan{scan_id}-{uid}-mu.png", announce=None)
        callbacks.append(watched["mu_plot"])
    if ranking:
        plot = None
        if plots:
            plot = watched["ranking_plot"] = LiveRankingPlot(save_path=plot_dir / "scan{scan_id}-{uid}-ranking.png",
                                                             announce=None)
        watched["ranking"] = XASRankingCallback(library, emit=catalog if storage else None, plot=plot)
        callbacks.append(watched["ranking"])
    return callbacks, watched


def run_parts(backend: str, parts: list[str], repeats: int, grid_points: int | None) -> dict:
    """Part 2 in this process, with matplotlib ``backend`` (``agg`` or ``qt``)."""
    import matplotlib

    matplotlib.use("QtAgg" if backend == "qt" else "Agg")
    if backend == "qt":
        from bluesky.callbacks.mpl_plotting import initialize_qt_teleporter

        initialize_qt_teleporter()
    from bluesky import RunEngine

    from endstation import make_endstation
    from endstation.catalog import open_catalog
    from plans import DEFAULT_GRID, xafs_scan

    library, sample, what = _library_and_sample()
    es = make_endstation(sample, seed=0, time_scale=0, settle_time=0, speed=0)
    RE = RunEngine({})
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    catalog = open_catalog(directory=tmp / "catalog")
    grid = dict(DEFAULT_GRID) if grid_points is None else {
        "bounds": "-60 140", "steps": f"{200.0 / (grid_points - 1):.6f}", "times": "0.5"}

    def plan(g=grid):
        return xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid=g)

    warm_grid = {"bounds": "-30 60", "steps": "3", "times": "0.5"}
    results: dict = {"backend": backend, "candidates": what, "parts": {}}
    made = {part: _subscriptions(part, RE, catalog, library, tmp / "plots") for part in parts}
    wall = {part: [] for part in parts}
    cpu = {part: [] for part in parts}
    renders = {part: [] for part in parts}

    def run(part, g=grid):
        callbacks, watched = made[part]
        tokens = [RE.subscribe(cb) for cb in callbacks]
        before = {k: len(p.draw_log) for k, p in watched.items() if hasattr(p, "draw_log")}
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            RE(plan(g))
        finally:
            for token in tokens:
                RE.unsubscribe(token)
        return (time.perf_counter() - w0, time.process_time() - c0,
                {k: len(p.draw_log) - before[k] for k, p in watched.items() if hasattr(p, "draw_log")})

    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        for part in parts:  # imports, server connection, table build, window creation
            run(part, warm_grid)
        for repeat in range(repeats):  # round robin: a change of load falls on every part alike
            for part in parts:
                w, c, d = run(part)
                wall[part].append(w)
                cpu[part].append(c)
                renders[part].append(d)
                print(f"[{backend}] {repeat + 1}/{repeats} {part}: {w:.2f} s wall, {c:.2f} s CPU",
                      file=sys.stderr, flush=True)
    for part in parts:
        _, watched = made[part]
        entry = {
            "wall_s": wall[part],
            "cpu_s": cpu[part],
            "median_wall_s": float(np.median(wall[part])),
            "median_cpu_s": float(np.median(cpu[part])),
            "renders_per_run": renders[part],
            "plot_errors": {k: p.errors for k, p in watched.items() if hasattr(p, "errors")},
        }
        if "ranking" in watched:
            entry["ranked_points"] = watched["ranking"].summary.get("n_points_used")
        results["parts"][part] = entry
    results["storage_failures"] = len(catalog.failures)
    from plans.grids import make_grid

    results["points"] = int(len(make_grid("Cu", "K", grid).energies))
    return results


def _overheads(parts: dict, points: int, key: str = "median_wall_s") -> dict:
    bare = parts.get("bare", {}).get(key)
    if bare is None:
        return {}
    return {part: 1000.0 * (entry[key] - bare) / points for part, entry in parts.items() if part != "bare"}


def _figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = [b for b in result["session"] if result["session"][b].get("overhead_ms_per_point")]
    parts = [p for p in PARTS if p != "bare"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained", sharey=True)
    width = 0.8 / max(1, len(backends))
    for ax, key, what in zip(axes, ("overhead_ms_per_point", "cpu_overhead_ms_per_point"),
                             ("wall time", "CPU time (all threads)")):
        for j, backend in enumerate(backends):
            over = result["session"][backend].get(key, {})
            x = np.arange(len(parts)) + (j - (len(backends) - 1) / 2) * width
            values = [over.get(p, np.nan) for p in parts]
            bars = ax.bar(x, values, width, label=backend)
            ax.bar_label(bars, labels=[f"{v:.1f}" if np.isfinite(v) else "" for v in values], fontsize=7)
        ax.axhline(GOAL_MS_PER_POINT, ls="--", color="C3", lw=1, label=f"goal, all on: {GOAL_MS_PER_POINT:.0f} ms")
        ax.set_xticks(np.arange(len(parts)), parts)
        ax.set_title(f"added {what} per point", fontsize=9)
        ax.set_yscale("symlog", linthresh=10)
    axes[0].set_ylabel("ms per point (symlog)")
    axes[0].legend(fontsize=8)
    any_backend = next(iter(result["session"].values()), {})
    fig.suptitle(f"Session parts on a conventional xafs_scan of {any_backend.get('points', '?')} points, dwell 0; "
                 f"{any_backend.get('candidates', '')}", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=400, help="points of part 1's scans")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of part 1 (best taken)")
    parser.add_argument("--session-repeats", type=int, default=3, help="repeats of part 2 (median taken)")
    parser.add_argument("--session-points", type=int, default=None,
                        help="points of part 2's scan (default: the default Cu K grid, 354 points)")
    parser.add_argument("--backends", nargs="+", default=["agg", "qt"], choices=["agg", "qt"])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--skip-scan-ratio", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", choices=["agg", "qt"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    parts = ["bare"] + [p for p in args.parts if p != "bare"]

    if args.worker:  # one backend, in this process: JSON on stdout
        result = run_parts(args.worker, parts, args.session_repeats, args.session_points)
        print(json.dumps(result))
        return result

    result: dict = {}
    if not args.skip_scan_ratio:
        result.update(scan_ratio(args.points, args.repeats))
    result["session"] = {}
    for backend in args.backends:
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
        env["XAS_USER_DIR"] = tempfile.mkdtemp(prefix="bench-user-")
        command = [sys.executable, __file__, "--worker", backend, "--session-repeats", str(args.session_repeats),
                   "--parts", *parts] + (["--session-points", str(args.session_points)] if args.session_points else [])
        with contextlib.ExitStack() as stack:
            if backend == "qt":
                from xas_callbacks.gui import display_available, virtual_display

                if not display_available():
                    try:
                        env["DISPLAY"] = stack.enter_context(virtual_display())
                    except RuntimeError as exc:
                        result["session"][backend] = {"skipped": str(exc)}
                        continue
            proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            result["session"][backend] = {"failed": f"worker exited {proc.returncode}"}
            continue
        entry = json.loads(proc.stdout.strip().splitlines()[-1])
        entry["overhead_ms_per_point"] = _overheads(entry["parts"], entry["points"])
        entry["cpu_overhead_ms_per_point"] = _overheads(entry["parts"], entry["points"], "median_cpu_s")
        entry["bare_ms_per_point"] = 1000.0 * entry["parts"]["bare"]["median_wall_s"] / entry["points"]
        result["session"][backend] = entry
    result["session_what"] = ("added wall time per point = (median run time with the part on - median bare) / "
                              "points; conventional xafs_scan, dwell 0, settle 0, XAS_TIME_SCALE=0; parts run "
                              "round robin; cpu_overhead: the same with the process's CPU time (all threads), "
                              "less sensitive to other processes' load")
    result["goal_all_ms_per_point"] = GOAL_MS_PER_POINT
    result["python"] = platform.python_version()
    result["machine"] = platform.machine()
    result["cpus"] = os.cpu_count()
    result["note"] = "2 shared CPU cores; absolute times vary with load"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _figure(result, args.out.with_suffix(".png"))
    print(json.dumps({k: v.get("overhead_ms_per_point", v) for k, v in result["session"].items()}, indent=2))
    return result


if __name__ == "__main__":
    main()
