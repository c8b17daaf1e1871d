"""Screening at scale: spectra per second per thread, a 100,000-candidate QM9 screen, Dask scaling.

A script, not a test. Measures in one run, on this machine, with one torch thread:

1. Throughput per batch size (site graphs per network call) for QM9 molecules (``o-k`` and
   ``n-k``, PaiNN ensembles run by :class:`models.fused_painn.FusedPaiNN` in blocks of at most
   ``block_edges`` edges; the first of the fixed random order of the shared QM9 sets) and Cu
   crystals (``cu-k``, attention MPNN, :class:`models.fused.FusedEnsemble`; the Materials
   Project set): graph building (per-structure checks, sites and RDKit bonds; then the
   vectorised clusters and features of the chunk) vs the fused network, and end to end
   (candidate -> graphs -> network -> spectrum with uncertainty), as spectra (structures) per
   second, in wall time and in CPU time of this process (the machine may be shared). The
   per-member path of before (``SiteGraph`` objects, PyG batches, one member after the other)
   is measured on the same structures for comparison.
2. A ``qm9:O`` screen of ``--screen`` candidates (default 100,000: the first molecules with O
   of the qm9pack CSVs in QM9 index order, streamed) with :func:`models.screening.predict_library`
   into a fresh :class:`models.store.CandidateStore`, in a child process so that its peak RSS is
   its own; a second run over the same source (reuse: nothing predicted); then one simulated
   measurement (a candidate's predicted spectrum on 60 energies plus Gaussian noise) ranked
   against all stored candidates with :class:`xas_callbacks.ranking.RankingEngine`: time and
   top-1.
3. Dask: the same library path on a ``LocalCluster`` of 1 and of 2 worker processes (one thread
   each), scaling efficiency ``t1 / (2 t2)``.
4. FEFF10 time per molecule and per site from the shared QM9 O K-edge set (its ``seconds`` field,
   computed on this machine), and the speed-up of the screen over it.

Usage::

    python benchmarks/bench_screening.py --out benchmarks/results/screening.json [--screen 20000]
        [--models o-k n-k cu-k] [--dask 0] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH_SIZES = (16, 64, 256, 1024)
SEED = 20261202
#: Readings are added until this many seconds have passed (ranking 100,000 candidates point by
#: point is the ranking's own benchmark, bench_ranking.py); the number used is recorded.
RANKING_BUDGET_S = 90.0


def qm9_stream(element: str = "O", limit: int | None = None, skip: int = 0):
    """``(name, QM9Molecule, provenance)`` of QM9 molecules with ``element``, streamed in index order."""
    from models.feff import qm9

    n = 0
    for index, smiles, elements, xyz, where in qm9._iter_rows(qm9.qm9pack_data_dir()):
        if element not in elements:
            continue
        n += 1
        if n <= skip:
            continue
        mol = qm9.QM9Molecule(index, smiles, elements, qm9._parse_xyz(xyz, len(elements), where))
        yield mol.name, mol, {"source": "qm9pack", "qm9_index": index}
        if limit is not None and n - skip >= limit:
            return


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    w, c = _clock()
    return w - t[0], c - t[1]


# ------------------------------------------------------------------------------ 1. throughput
def throughput(model: str, candidates: list, batch_sizes, baseline: list) -> dict:
    """Graph vs network time and end-to-end spectra/s per batch size; the per-member path too."""
    from models.graph_batch import dense_batches, prepare, site_arrays, sparse_batches
    from models.predictor import load_predictor
    from models.screening import peak_rss_mb, predict_chunk

    pred = load_predictor(model, device="cpu")
    items = [(f"c{i}", c) for i, c in enumerate(candidates)]
    predict_chunk(pred, items[:32])  # warm-up
    out = {"model": model, "fused": type(pred.fused).__name__, "structures": len(items), "batch_sizes": {}}
    sparse = pred.fused.input_kind == "sparse"
    if sparse:
        out["block_edges"] = pred.fused.block_edges
    for bs in batch_sizes:
        pred.builder._bond_cache.clear()
        t = _clock()
        prepared = [prepare(pred.builder, c) for c in candidates]
        per_structure = _since(t)
        t = _clock()
        arrays = site_arrays(pred.builder, prepared)
        if sparse:
            blocks = list(sparse_batches(pred.builder, arrays, max_graphs=bs, max_edges=pred.fused.block_edges))
        else:
            blocks = list(dense_batches(pred.builder, arrays, max_graphs=bs))
        chunk_graphs = _since(t)
        sites = sum(len(b.rows) for b in blocks)
        edges = sum(int(b.edge_index.shape[1]) for b in blocks) if sparse else int(sum(int(b.adj.sum()) for b in blocks))
        t = _clock()
        with torch.inference_mode():
            for b in blocks:
                pred.fused.forward_block(b)
        network = _since(t)
        pred.builder._bond_cache.clear()
        t = _clock()
        res = predict_chunk(pred, items, batch_size=bs)
        e2e = _since(t)
        assert not res["failures"], list(res["failures"].items())[:3]
        n = len(items)
        row = {
            "site_graphs": sites,
            "edges_per_site_graph": edges / sites,
            "graphs_per_block_mean": sites / len(blocks),
            "graph_s": {"per_structure_checks_sites_bonds": per_structure[0], "chunk_clusters_features": chunk_graphs[0]},
            "network_s": network[0],
            "end_to_end_s": e2e[0],
            "end_to_end_cpu_s": e2e[1],
            "spectra_per_s": {
                "end_to_end_wall": n / e2e[0], "end_to_end_cpu": n / e2e[1],
                "graphs_only_wall": n / (per_structure[0] + chunk_graphs[0]),
                "network_only_wall": n / network[0], "network_only_cpu": n / network[1],
            },
            "site_graphs_per_s_network_cpu": sites / network[1],
            "graph_ms_per_spectrum_cpu": 1e3 * (per_structure[1] + chunk_graphs[1]) / n,
            "network_ms_per_spectrum_cpu": 1e3 * network[1] / n,
            "load_average": os.getloadavg(),
        }
        out["batch_sizes"][str(bs)] = row
        print(f"{model} bs={bs}: e2e {row['spectra_per_s']['end_to_end_wall']:,.0f}/s wall, "
              f"{row['spectra_per_s']['end_to_end_cpu']:,.0f}/s CPU; network {row['spectra_per_s']['network_only_cpu']:,.0f}/s CPU",
              flush=True)
    # the public API on pymatgen objects, fused and per-member, same structures
    for label, fused in (("predict_fused", pred.fused), ("predict_per_member_before", None)):
        keep, pred.fused = pred.fused, fused
        try:
            pred.clear_cache()
            pred.builder._bond_cache.clear()
            t = _clock()
            pred.predict(baseline, batch_size=256)
            w, c = _since(t)
        finally:
            pred.fused = keep
        out[label] = {"structures": len(baseline), "spectra_per_s_wall": len(baseline) / w,
                      "spectra_per_s_cpu": len(baseline) / c}
        print(f"{model} {label}: {len(baseline) / w:,.0f}/s wall, {len(baseline) / c:,.0f}/s CPU", flush=True)
    pred.clear_cache()
    out["process_peak_rss_MB_after"] = peak_rss_mb()  # process-wide high-water mark so far
    return out


def bench_throughput(n_molecules: int, n_crystals: int, n_baseline: int, batch_sizes,
                     models=("o-k", "n-k", "cu-k")) -> list:
    from models.graph_batch import molecule_spec
    from models.paths import CU_K_FEFF, data_path
    from models.readers import read_feff_materials

    from models.feff.qm9 import qm9_molecules

    # the fixed random order of the shared QM9 sets: representative sizes (index order is not:
    # QM9 numbers its molecules by size)
    runs = []
    for model, element in (("o-k", "O"), ("n-k", "N")):
        if model in models:
            mols = qm9_molecules(element, count=n_molecules)
            runs.append(throughput(model, [molecule_spec(m, m.name) for m in mols], batch_sizes,
                                   [m.to_molecule() for m in mols[:n_baseline]]))
    if "cu-k" in models:
        records, _ = read_feff_materials(data_path(CU_K_FEFF), limit=n_crystals, progress=False)
        crystals = [r.structure for r in records]
        runs.append(throughput("cu-k", crystals, batch_sizes, crystals[:n_baseline]))
    return runs


# ------------------------------------------------------------------------------ 2. screen
def run_screen(n: int, chunk: int, store_root: str, compile: bool = False) -> dict:
    """The screen itself (called in a child process): predict, reuse, rank."""
    from models.predictor import load_predictor
    from models.screening import peak_rss_mb, predict_library
    from xas_callbacks.ranking import RankingConfig, RankingEngine

    torch.set_num_threads(1)
    pred = load_predictor("o-k", device="cpu")
    rss_loaded = peak_rss_mb()
    t = _clock()
    res = predict_library(qm9_stream("O", limit=n), pred, store=store_root, chunk=chunk, batch_size=64,
                          compile=compile)
    w, c = _since(t)
    out = {"compiled": compile, "candidates": len(res.names), "predicted": res.predicted, "failures": len(res.failures),
           "failure_examples": dict(list(res.failures.items())[:3]), "site_graphs": res.sites,
           "predict_wall_s": w, "predict_cpu_s": c, "spectra_per_s_wall": res.predicted / w,
           "spectra_per_s_cpu": res.predicted / c, "chunk": chunk, "chunks_written": len(res.store.chunks),
           "peak_rss_MB_after_model_load": rss_loaded, "peak_rss_MB_after_predict": peak_rss_mb(),
           "store_MB": sum(p.stat().st_size for p in res.store.folder.iterdir()) / 1e6,
           "per_chunk_seconds": [round(ch["seconds"], 3) for ch in res.chunks]}
    print(f"screen: {res.predicted} predicted in {w:.1f} s ({out['spectra_per_s_wall']:,.0f}/s), "
          f"peak RSS {out['peak_rss_MB_after_predict']:.0f} MB", flush=True)
    t = _clock()
    again = predict_library(qm9_stream("O", limit=n), pred, store=store_root, chunk=chunk)
    out["second_run"] = {"predicted": again.predicted, "reused": again.reused, "wall_s": _since(t)[0]}
    # rank one simulated measurement against every stored candidate
    rng = np.random.default_rng(SEED)
    truth = int(rng.integers(len(res.keys)))
    t = _clock()
    mean, std = res.store.load(res.keys)
    load_s = _since(t)[0]
    energies = pred.energies
    pick = np.sort(rng.choice(np.arange(4, len(energies) - 4), 60, replace=False))
    noise = 0.01
    y = mean[truth, pick] + rng.normal(0.0, noise, pick.size)
    config = RankingConfig(offset_min=-3, offset_max=3, offset_prior_sd=1.0, broadenings=(0.0, 2.0, 4.0, 6.0))
    t = _clock()
    engine = RankingEngine(res.names, energies, mean, std, config=config, dtype=np.float32)
    build_s = _since(t)[0]
    t = _clock()
    used = 0
    for e, yy in zip(energies[pick], y):  # one reading at a time, as during a scan
        engine.add_point(e, yy, noise**2)
        used += 1
        if _since(t)[0] > RANKING_BUDGET_S:
            break
    add_s = _since(t)[0]
    t = _clock()
    result = engine.result()
    posterior_s = _since(t)[0]
    top1 = result.names[0] if result.names else None
    rank_of_truth = result.names.index(res.names[truth]) if res.names[truth] in result.names else None
    out["ranking"] = {
        "api": "xas_callbacks.ranking.RankingEngine, float32, offsets -3..3 eV, broadenings 0/2/4/6 eV",
        "candidates": engine.n_candidates, "points_planned": int(pick.size), "points_used": used,
        "noise_sd": noise,
        "truth": res.names[truth], "top1": top1, "top1_correct": top1 == res.names[truth],
        "top1_probability": float(result.probabilities[0]),
        "truth_rank_0based": rank_of_truth,
        "load_spectra_s": load_s, "build_tables_s": build_s, "add_points_s": add_s,
        "add_point_ms_mean": 1e3 * add_s / used, "posterior_s": posterior_s,
        "peak_rss_MB_after_ranking": peak_rss_mb(),
    }
    print(f"ranking: top-1 {top1} (truth {res.names[truth]}), build {build_s:.1f} s, "
          f"posterior {posterior_s * 1e3:.0f} ms", flush=True)
    return out


def bench_screen(n: int, chunk: int, compile: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="screen_store_") as tmp:
        out_json = Path(tmp) / "screen.json"
        cmd = [sys.executable, __file__, "--part", "screen", "--screen", str(n), "--chunk", str(chunk),
               "--store", str(Path(tmp) / "store"), "--out", str(out_json)] + (["--compile"] if compile else [])
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out_json.read_text())


# ------------------------------------------------------------------------------ 3. Dask
def bench_dask(n: int, chunk: int) -> dict:
    from dask.distributed import Client, LocalCluster

    from models.predictor import load_predictor
    from models.screening import predict_library

    pred = load_predictor("o-k", device="cpu")
    source = list(qm9_stream("O", limit=n, skip=100_000))  # not the molecules of the screen
    out = {"candidates": len(source), "chunk": chunk, "workers": {}}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory(prefix="dask_store_") as tmp, \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                             env={"OMP_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
            # warm-up: every worker loads the model once
            predict_library(source[:2 * workers], pred, store=Path(tmp) / "warm", chunk=1, scheduler=client)
            t = _clock()
            res = predict_library(source, pred, store=Path(tmp) / "s", chunk=chunk, scheduler=client)
            wall = _since(t)[0]
        out["workers"][str(workers)] = {"wall_s": wall, "spectra_per_s": res.predicted / wall, "predicted": res.predicted}
        print(f"dask {workers} worker(s): {res.predicted / wall:,.0f} spectra/s", flush=True)
    t1, t2 = out["workers"]["1"]["wall_s"], out["workers"]["2"]["wall_s"]
    out["speedup_2_vs_1"] = t1 / t2
    out["scaling_efficiency_2_workers"] = t1 / (2 * t2)
    return out


# ------------------------------------------------------------------------------ 4. FEFF10
def feff_reference() -> dict:
    from models.paths import QM9_O_K, data_path

    seconds, sites = [], []
    with open(data_path(QM9_O_K)) as fh:
        for line in fh:
            doc = json.loads(line)
            if "seconds" in doc and doc.get("sites"):
                seconds.append(float(doc["seconds"]))
                sites.append(len(doc["sites"]))
    return {"source": QM9_O_K, "molecules": len(seconds), "seconds_per_molecule": float(np.mean(seconds)),
            "seconds_per_site": float(np.sum(seconds) / np.sum(sites))}


# ------------------------------------------------------------------------------ figure
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    for run in results.get("throughput", []):
        bs = [int(b) for b in run["batch_sizes"]]
        rows = list(run["batch_sizes"].values())
        line, = ax.plot(bs, [r["spectra_per_s"]["end_to_end_cpu"] for r in rows], "o-", label=f"{run['model']} end to end")
        ax.plot(bs, [r["spectra_per_s"]["network_only_cpu"] for r in rows], "s--", color=line.get_color(),
                label=f"{run['model']} network only")
        ax.axhline(run["predict_per_member_before"]["spectra_per_s_cpu"], color=line.get_color(), ls=":",
                   label=f"{run['model']} before (per member)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size (site graphs per call)")
    ax.set_ylabel("spectra / s (1 thread, CPU time)")
    ax.set_title("Throughput per thread")
    ax.legend(fontsize=7)
    ax = axes[1]
    labels, graph, net = [], [], []
    for run in results.get("throughput", []):
        r = run["batch_sizes"].get("256") or list(run["batch_sizes"].values())[-1]
        n = run["structures"]
        labels.append(run["model"])
        graph.append(1e3 * (r["graph_s"]["per_structure_checks_sites_bonds"] + r["graph_s"]["chunk_clusters_features"]) / n)
        net.append(1e3 * r["network_s"] / n)
    ax.bar(labels, graph, label="graph building")
    ax.bar(labels, net, bottom=graph, label="network (fused ensemble)")
    ax.set_ylabel("ms per spectrum (wall)")
    ax.set_title("Where the time goes (batch 256)")
    ax.legend(fontsize=8)
    ax = axes[2]
    screen, dask = results.get("screen"), results.get("dask")
    if screen:
        secs = np.cumsum(screen["per_chunk_seconds"])
        done = np.minimum(np.arange(1, len(secs) + 1) * screen["chunk"], screen["predicted"])
        ax.plot(secs, done, "-", label=f"qm9:O screen, peak RSS {screen['peak_rss_MB_after_predict']:.0f} MB")
    if dask:
        for w, row in dask["workers"].items():
            ax.plot([0, row["wall_s"]], [0, row["predicted"]], "--", label=f"Dask {w} worker(s): {row['spectra_per_s']:.0f}/s")
    ax.set_xlabel("seconds (predicting)")
    ax.set_ylabel("candidates predicted")
    ax.set_title("Library screen and Dask scaling")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "screening.json"))
    p.add_argument("--part", choices=("all", "screen"), default="all", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--molecules", type=int, default=1000)
    p.add_argument("--crystals", type=int, default=400)
    p.add_argument("--baseline", type=int, default=300, help="structures for the public-API and before comparison")
    p.add_argument("--screen", type=int, default=100_000, help="qm9:O candidates to screen (0: skip)")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--dask", type=int, default=4000, help="candidates for the Dask scaling (0: skip)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--compile", action="store_true", help="the screen through torch.compile (Predictor.compile)")
    p.add_argument("--models", nargs="+", default=["o-k", "n-k", "cu-k"], help="models of the throughput part")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.part == "screen":
        Path(args.out).write_text(json.dumps(run_screen(args.screen, args.chunk, args.store, args.compile), indent=1))
        return 0
    results = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": 1, "load_average_at_start": os.getloadavg()},
        "notes": ("spectra_per_s counts structures (spectra averaged over their absorber sites). 'cpu' rates "
                  "divide by this process's CPU time, 'wall' by elapsed time; on a shared machine the CPU "
                  "rate is the one that says what a free core would do."),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        results["machine"]["load_average_now"] = os.getloadavg()
        out.write_text(json.dumps(results, indent=1) + "\n")

    results["feff10"] = feff_reference()
    if not args.skip_throughput:
        results["throughput"] = bench_throughput(args.molecules, args.crystals, args.baseline, args.batch_sizes,
                                                 args.models)
        save()
    if args.dask:
        results["dask"] = bench_dask(args.dask, chunk=max(1, args.dask // 8))
        save()
    if args.screen:
        results["screen"] = bench_screen(args.screen, args.chunk, args.compile)
        save()
    feff = results["feff10"]
    summary = {}
    if "throughput" in results:
        for run in results["throughput"]:
            best = max(r["spectra_per_s"]["end_to_end_cpu"] for r in run["batch_sizes"].values())
            best_wall = max(r["spectra_per_s"]["end_to_end_wall"] for r in run["batch_sizes"].values())
            summary[f"{run['model']}_end_to_end_spectra_per_s"] = {"cpu": best, "wall": best_wall,
                                                                   "before_cpu": run["predict_per_member_before"]["spectra_per_s_cpu"]}
    if "screen" in results:
        s = results["screen"]
        summary["screen"] = {"candidates": s["candidates"], "spectra_per_s_wall": s["spectra_per_s_wall"],
                             "peak_rss_MB": s["peak_rss_MB_after_predict"], "top1_correct": s["ranking"]["top1_correct"],
                             "speedup_vs_feff10_per_molecule": feff["seconds_per_molecule"] * s["spectra_per_s_wall"]}
    if "dask" in results:
        summary["dask_scaling_efficiency_2_workers"] = results["dask"]["scaling_efficiency_2_workers"]
    results["summary"] = summary
    save()
    plot(results, out.with_suffix(".png"))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
