"""Benchmark FEFF10 generation: seconds per site (QM9 molecules, small crystals) and parallel
scaling over 1, 2 and N Dask workers (LocalCluster, one process per worker).

Writes ``benchmarks/results/feff.json`` (or ``--out``). Run on an otherwise idle machine: the
scaling figures are only meaningful when the workers get whole cores.

    python benchmarks/bench_feff.py                       # defaults: 3 QM9 O molecules, Cu, Cu2O
    python benchmarks/bench_feff.py --scaling-tasks 8 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from pymatgen.core import Lattice, Structure

from models.feff.inputs import CRYSTAL_CARDS, MOLECULE_CARDS, FeffCards, crystal_inputs, molecule_inputs
from models.feff.runner import FeffJob, JsonlSink, run_batch, run_site

RESULTS = Path(__file__).resolve().parent / "results" / "feff.json"


def textbook_crystals() -> dict[str, Structure]:
    """Small Cu crystals from textbook lattice parameters."""
    return {
        "Cu (fcc, a=3.615)": Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]]),
        "Cu2O (cuprite, a=4.2696)": Structure.from_spacegroup(
            "Pn-3m", Lattice.cubic(4.2696), ["O", "Cu"], [[0, 0, 0], [0.25, 0.25, 0.25]]
        ),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except Exception:
        return "unknown"


def time_molecules(element: str, count: int) -> list[dict]:
    """FEFF seconds per site for the first ``count`` QM9 molecules of the fixed order."""
    from models.feff.qm9 import qm9_molecules

    out = []
    for m in qm9_molecules(element, count=count):
        for si in molecule_inputs(m.to_molecule(), element, MOLECULE_CARDS, name=m.name):
            res = run_site(si.text, m.name, si.site_index)
            out.append({
                "structure": m.name, "smiles": m.smiles, "n_atoms": len(m.elements), "site": si.site_index,
                "seconds": round(res.seconds, 2), "ok": res.ok, "error": (res.error or "")[:300] or None,
            })
            print(f"  {m.name} {m.smiles} site {si.site_index}: {res.seconds:.1f} s", flush=True)
    return out


def time_crystals(cluster_radius: float, cards: FeffCards) -> list[dict]:
    """FEFF seconds per symmetry-distinct Cu site of the textbook crystals."""
    out = []
    for name, st in textbook_crystals().items():
        for si in crystal_inputs(st, "Cu", cluster_radius, cards, name=name):
            res = run_site(si.text, name, si.site_index)
            out.append({
                "structure": name, "site": si.site_index, "multiplicity": si.multiplicity,
                "cluster_atoms": si.feff_input.num_atoms, "cluster_radius": cluster_radius,
                "seconds": round(res.seconds, 2), "ok": res.ok, "error": (res.error or "")[:300] or None,
            })
            print(f"  {name} site {si.site_index} ({si.feff_input.num_atoms} atoms): {res.seconds:.1f} s", flush=True)
    return out


def time_scaling(element: str, n_tasks: int, workers: Sequence[int]) -> dict:
    """Wall time of ``n_tasks`` identical single-site QM9 jobs over Dask LocalClusters of each
    size (cluster start-up excluded), through the same ``run_batch`` a user runs."""
    from dask.distributed import Client, LocalCluster

    from models.feff.qm9 import qm9_molecules

    mol = next(m for m in qm9_molecules(element, count=50) if m.elements.count(element) == 1)
    structure = mol.to_molecule()
    runs = []
    for k in workers:
        with LocalCluster(n_workers=k, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client, tempfile.TemporaryDirectory() as tmp:
            jobs = [FeffJob(f"copy-{i}", structure, element, meta={"qm9_index": i}) for i in range(n_tasks)]
            t0 = time.perf_counter()
            summary = run_batch(jobs, JsonlSink(Path(tmp) / "s.jsonl"), scheduler=client, progress=False)
            wall = time.perf_counter() - t0
        runs.append({
            "workers": k, "wall_seconds": round(wall, 2), "done": summary.done, "failed": len(summary.failed),
            "median_site_seconds": summary.as_dict()["median_seconds_per_site"],
        })
        print(f"  {k} Dask worker(s): {n_tasks} sites in {wall:.1f} s", flush=True)
    base = runs[0]["wall_seconds"] * runs[0]["workers"]
    for r in runs:
        r["speedup_vs_1"] = round(base / r["wall_seconds"], 3)
        r["efficiency"] = round(base / r["wall_seconds"] / r["workers"], 3)
    return {"molecule": mol.name, "smiles": mol.smiles, "tasks": n_tasks, "runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--element", default="O", help="QM9 absorber for the molecule timings (default O)")
    p.add_argument("--molecules", type=int, default=3, help="QM9 molecules to time")
    p.add_argument("--cluster-radius", type=float, default=6.0, help="crystal cluster radius, A (default 6)")
    p.add_argument("--crystal-scf", default="4.5", help="crystal SCF card (default 4.5; the Cu set used 7.0)")
    p.add_argument("--crystal-fms", default="6.0", help="crystal FMS card (default 6.0; the Cu set used 9.0)")
    p.add_argument("--no-crystals", action="store_true")
    p.add_argument("--scaling-tasks", type=int, default=8, help="single-site jobs per scaling run")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="worker counts to compare (default: 1 2 and os.cpu_count())")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    import feff10

    workers = args.workers or sorted({1, 2, os.cpu_count() or 1})
    crystal_cards = CRYSTAL_CARDS.with_(scf=args.crystal_scf, fms=args.crystal_fms)
    result = {
        "what": "FEFF10 (feff10-rs) seconds per absorber site and Dask LocalCluster scaling",
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_at_start": list(os.getloadavg())},
        "feff10_version": feff10.__version__,
        "molecule_cards": MOLECULE_CARDS.other_cards(),
        "crystal_cards": crystal_cards.other_cards() + [f"S02 {crystal_cards.s02}"],
        "crystal_cluster_radius": args.cluster_radius,
        "crystal_note": "reduced SCF/FMS radii: with the Cu set's cards (SCF 7.0, FMS 9.0, 10 A cluster = "
                        "369 atoms for Cu metal) one Cu site needs > 30 CPU-minutes (SCF alone > 3.5 "
                        "CPU-minutes per iteration), too long for this benchmark",
    }
    print(f"QM9 {args.element} molecules:", flush=True)
    result["molecules"] = time_molecules(args.element, args.molecules)
    if not args.no_crystals:
        print("crystals:", flush=True)
        result["crystals"] = time_crystals(args.cluster_radius, crystal_cards)
    print("scaling:", flush=True)
    result["scaling"] = time_scaling(args.element, args.scaling_tasks, workers)
    secs = [m["seconds"] for m in result["molecules"] if m["ok"]]
    result["median_seconds_per_molecule_site"] = round(float(np.median(secs)), 2) if secs else None
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
