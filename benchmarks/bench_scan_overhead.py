"""Per-point overhead of ``xafs_scan`` on the simulated endstation (dwell and settle zero),
as a ratio to ``bluesky.plans.scan([det], motor, ...)`` with ``ophyd.sim`` devices, both measured
in this run with the same RunEngine settings and no subscribers.

Writes ``benchmarks/results/scan_overhead.json``.  Goal: ratio <= 1.5.

    python benchmarks/bench_scan_overhead.py [--points 400] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from bluesky import RunEngine
from bluesky.plans import scan
from ophyd.sim import det, det1, det2, det3, det4, motor, motor1

from endstation import SimulatedSample, make_endstation
from plans import xafs_scan

OUT = Path(__file__).resolve().parent / "results" / "scan_overhead.json"


def _sample() -> SimulatedSample:
    energy = np.linspace(8800.0, 9700.0, 901)
    mu = 1.0 / (1.0 + np.exp(-(energy - 8979.0) / 2.0))
    return SimulatedSample.from_spectrum(energy, mu, element="Cu", edge="K")


def _time(RE: RunEngine, make_plan, repeats: int) -> float:
    RE(make_plan())  # warm up (imports, caches)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        RE(make_plan())
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    es = make_endstation(_sample(), seed=0, time_scale=0, settle_time=0, speed=0)
    e0 = 8979.0
    step = 600.0 / (args.points - 1)
    grid = {"bounds": f"-100 500", "steps": f"{step:.6f}", "times": "0"}
    RE = RunEngine({})
    motor.delay = 0
    det_reads = 1  # one counter, as in the reference
    ref = _time(RE, lambda: scan([det], motor, -1, 1, args.points), args.repeats)
    # same number of readables as the endstation (4 counters + a signal, and the motor)
    ref6 = _time(RE, lambda: scan([det1, det2, det3, det4, motor1], motor, -1, 1, args.points), args.repeats)
    ours = _time(RE, lambda: xafs_scan(es.detectors, es.energy, element="Cu", edge="K", grid=grid, e0=e0),
                 args.repeats)
    n_ours = len(np.arange(-100, 500 + 1e-9, step))
    per_ref = ref / args.points
    per_ours = ours / n_ours
    result = {
        "what": "per-point wall time of a step scan (dwell 0, settle 0, no subscribers), best of repeats",
        "points_reference": args.points,
        "points_xafs_scan": n_ours,
        "reference": "bluesky.plans.scan([ophyd.sim.det], ophyd.sim.motor, -1, 1, N)",
        "reference_readables": det_reads + 1,
        "xafs_scan_readables": len(es.detectors) + 1,
        "reference_s_per_point": per_ref,
        "xafs_scan_s_per_point": per_ours,
        "ratio": per_ours / per_ref,
        "reference_same_readables": "bluesky.plans.scan([det1, det2, det3, det4, motor1], motor, -1, 1, N)",
        "reference_same_readables_s_per_point": ref6 / args.points,
        "ratio_same_readables": per_ours / (ref6 / args.points),
        "goal_ratio": 1.5,
        "repeats": args.repeats,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "2 shared CPU cores; absolute times vary with load, the ratio is the figure of merit",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
