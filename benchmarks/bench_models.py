"""Speed and memory of the shipped XANES models, and the speed-up over FEFF10 (a script, not a test).

Measures, for QM9 molecules (``o-k``) and Cu crystals (``cu-k``), on CPU (and CUDA when present):

* graph building time per structure (absorber sites, clusters, features) -- CPU only, as in use;
* network throughput (site graphs already built; batching, transfer, ensemble forward) and
  end-to-end throughput (``Predictor.predict`` on structures with an empty cache) at batch
  sizes 1, 16, 64, 256, 1024, as spectra (structures) per second;
* peak memory: process ``ru_maxrss``, the Python-heap peak of one end-to-end call
  (``tracemalloc``; torch's own buffers are not Python objects) and
  ``torch.cuda.max_memory_allocated`` on GPU;
* FEFF10 (``feff10`` module of ``feff10-rs``) on the first 3 molecules of the same set with the
  cards of ``qm9_o_k_feff10/README.md`` (every O atom in turn as absorber at the origin, all
  atoms, one potential per element), timed in the same run, so the speed-up is a ratio of two
  measurements on the same machine.

Usage::

    python benchmarks/bench_models.py --out benchmarks/results/models.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH_SIZES = (1, 16, 64, 256, 1024)
FEFF_CARDS = """EDGE K
S02 1.0
CONTROL 1 1 1 1 1 1
PRINT 0 0 0 0 0 0
COREHOLE RPA
XANES 4 0.04 0.1
FMS 9.0
EXCHANGE 0
SCF 7.0
"""


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_structures(model: str, n: int) -> list:
    """Structures of the model's own data set (molecules or crystals with their Cu sites)."""
    from models.paths import data_path
    from models.readers import read_feff_materials, read_qm9_jsonl

    if model == "o-k":
        records, _ = read_qm9_jsonl(data_path("qm9_o_k_feff10/qm9_O_K_feff10.jsonl"), limit=n)
    else:
        records, _ = read_feff_materials(data_path("cu_k_feff9_materials_project"), limit=n)
    return [r.structure for r in records]


def time_graphs(predictor, structures) -> tuple[list, dict]:
    """Build all site graphs once; seconds per structure and per site graph."""
    builder = predictor.builder
    t0 = time.perf_counter()
    graphs, counts = [], []
    for s in structures:
        g, _ = builder.structure_graphs(s)
        graphs.extend(g)
        counts.append(len(g))
    dt = time.perf_counter() - t0
    return graphs, {
        "structures": len(structures),
        "site_graphs": len(graphs),
        "sites_per_structure": len(graphs) / len(structures),
        "seconds_per_structure": dt / len(structures),
        "seconds_per_site_graph": dt / len(graphs),
        "structures_per_s": len(structures) / dt,
        "mean_nodes": float(np.mean([g.num_nodes for g in graphs])),
        "mean_edges": float(np.mean([g.edge_index.shape[1] for g in graphs])),
    }


@torch.inference_mode()
def time_network(predictor, graphs, batch_size: int, min_graphs: int) -> float:
    """Site graphs per second through collation, transfer and the ensemble forward."""
    from torch_geometric.data import Batch

    pool = [graphs[i % len(graphs)] for i in range(max(min_graphs, batch_size))]
    ens = predictor.ensemble
    # warm-up
    ens.forward_members(Batch.from_data_list(pool[:batch_size]).to(predictor.device))
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, len(pool), batch_size):
        b = Batch.from_data_list(pool[start:start + batch_size]).to(predictor.device)
        m, s = ens.forward_members(b)
        m.cpu(), s.cpu()
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    return len(pool) / (time.perf_counter() - t0)


def time_end_to_end(predictor, structures, batch_size: int) -> float:
    """Structures (spectra) per second of ``predict`` with an empty cache."""
    predictor.clear_cache()
    t0 = time.perf_counter()
    res = predictor.predict(structures, batch_size=batch_size)
    dt = time.perf_counter() - t0
    assert len(res.names) == len(structures), res.failures
    return len(structures) / dt


def bench_model(model: str, device: str, n_structures: int, batch_sizes, threads: int) -> dict:
    from models.predictor import load_predictor

    torch.set_num_threads(threads)
    predictor = load_predictor(model, device=device)
    structures = load_structures(model, n_structures)
    graphs, gstats = time_graphs(predictor, structures)
    per = gstats["sites_per_structure"]
    out = {"model": model, "device": str(predictor.device), "torch_threads": threads, "members": len(predictor.ensemble.members),
           "weights_sha256": predictor.weights_sha256, "graph_building_cpu": gstats,
           "network": {}, "end_to_end": {}}
    for bs in batch_sizes:
        gps = time_network(predictor, graphs, bs, min_graphs=min(2048, max(256, 4 * bs)))
        out["network"][str(bs)] = {"site_graphs_per_s": gps, "spectra_per_s": gps / per}
        out["end_to_end"][str(bs)] = {"spectra_per_s": time_end_to_end(predictor, structures, bs)}
        print(f"{model} {device} threads={threads} bs={bs}: network {gps / per:,.0f} spectra/s, "
              f"end-to-end {out['end_to_end'][str(bs)]['spectra_per_s']:,.0f} spectra/s", flush=True)
    # memory of one end-to-end call at batch size 256
    predictor.clear_cache()
    if predictor.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tracemalloc.start()
    predictor.predict(structures, batch_size=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["memory"] = {"python_heap_peak_MB_predict_bs256": peak / 1e6, "process_maxrss_MB_so_far": rss_mb()}
    if predictor.device.type == "cuda":
        out["memory"]["cuda_max_allocated_MB"] = torch.cuda.max_memory_allocated() / 1e6
    return out


def feff_molecule(record, workdir: Path) -> dict:
    """Run FEFF10 for every O site of one QM9 record; seconds and the spectra."""
    import feff10

    mol = record.structure
    symbols = [str(s.specie) for s in mol]
    z_of = {str(s.specie): int(s.specie.Z) for s in mol}
    seconds, spectra = 0.0, []
    for site in record.sites:
        i = site.site_index
        others = sorted({el for j, el in enumerate(symbols) if j != i})  # every pot needs atoms
        ipot = {el: k + 1 for k, el in enumerate(others)}
        lines = [f"TITLE qm9 {record.record_id} O site {i}", FEFF_CARDS.strip(), "POTENTIALS",
                 f"   0 {z_of[symbols[i]]} {symbols[i]}"]
        lines += [f"   {ipot[el]} {z_of[el]} {el}" for el in others]
        lines.append("ATOMS")
        origin = mol.cart_coords[i]
        lines.append(f"   0.000000 0.000000 0.000000 0 {symbols[i]} 0.0")
        for j, (sym, xyz) in enumerate(zip(symbols, mol.cart_coords)):
            if j == i:
                continue
            d = xyz - origin
            lines.append(f"   {d[0]:.6f} {d[1]:.6f} {d[2]:.6f} {ipot[sym]} {sym} {np.linalg.norm(d):.5f}")
        lines.append("END")
        wd = workdir / f"{record.record_id}_{i}"
        wd.mkdir(parents=True, exist_ok=True)
        inp = feff10.FeffInput.parse("\n".join(lines) + "\n")
        t0 = time.perf_counter()
        result = feff10.FeffPipeline(feff10.FeffConfig(str(wd), inp)).run()
        seconds += time.perf_counter() - t0
        xmu = result.read_xmu()
        cols = xmu.columns
        mu = np.asarray(cols[3]) if len(cols) > 3 else np.zeros(0)
        ref = np.asarray(site.mu)
        same = mu.shape == ref.shape
        spectra.append({"site": i, "points": xmu.nrows,
                        "max_abs_diff_vs_dataset_mu": float(np.max(np.abs(mu - ref))) if same else None})
    return {"record_id": record.record_id, "sites": len(record.sites), "seconds": seconds, "spectra": spectra}


def bench_feff(n: int) -> dict:
    from models.paths import data_path
    from models.readers import read_qm9_jsonl

    records, _ = read_qm9_jsonl(data_path("qm9_o_k_feff10/qm9_O_K_feff10.jsonl"), limit=n)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_feff_") as tmp:
        for rec in records:
            runs.append(feff_molecule(rec, Path(tmp)))
            print(f"FEFF10 {rec.record_id}: {runs[-1]['sites']} O sites, {runs[-1]['seconds']:.1f} s", flush=True)
    per_mol = float(np.mean([r["seconds"] for r in runs]))
    return {"molecules": runs, "seconds_per_molecule": per_mol,
            "seconds_per_site": float(sum(r["seconds"] for r in runs) / sum(r["sites"] for r in runs)),
            "threads": "FEFF10 runs single-threaded"}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in results["runs"]:
        bs = [int(b) for b in run["network"]]
        net = [run["network"][b]["spectra_per_s"] for b in run["network"]]
        e2e = [run["end_to_end"][b]["spectra_per_s"] for b in run["end_to_end"]]
        label = f"{run['model']} ({run['device']}, {run['torch_threads']} thr)"
        line, = ax.plot(bs, net, "o-", label=f"{label}, network only")
        ax.plot(bs, e2e, "s--", color=line.get_color(), label=f"{label}, with graph building")
    feff = results.get("feff10")
    if feff:
        ax.axhline(1.0 / feff["seconds_per_molecule"], color="k", ls=":", label="FEFF10, QM9 molecule")
    ax.axhline(1000, color="grey", ls="-.", lw=0.8, label="target 1,000 spectra/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size (site graphs per network call)")
    ax.set_ylabel("spectra per second")
    ax.set_title(f"Throughput on {results['machine']['cpu_count']} CPU cores")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "models.json"))
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                   help="torch CPU thread counts to measure (on a shared 2-core machine 1 thread can beat 2)")
    p.add_argument("--molecules", type=int, default=988)
    p.add_argument("--crystals", type=int, default=1024)
    p.add_argument("--feff", type=int, default=3, help="QM9 molecules to run FEFF10 on (0: skip)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    args = p.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "cpu_threads": args.threads,
                    "load_average_at_start": os.getloadavg(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__},
        "notes": ("spectra_per_s counts structures (molecule/material spectra, averaged over their "
                  "absorber sites). 'network' starts from built site graphs; 'end_to_end' is "
                  "Predictor.predict on pymatgen structures with an empty cache (graph building + "
                  "network). Graph building always runs on CPU."),
        "runs": [],
    }
    for model, n in (("o-k", args.molecules), ("cu-k", args.crystals)):
        for device in devices:
            for threads in (args.threads if device == "cpu" else [max(args.threads)]):
                results["runs"].append(bench_model(model, device, n, args.batch_sizes, threads))
    if args.feff:
        results["feff10"] = bench_feff(args.feff)
        ok_cpu = [r for r in results["runs"] if r["model"] == "o-k" and r["device"] == "cpu"]
        best_net = max(v["spectra_per_s"] for r in ok_cpu for v in r["network"].values())
        best_e2e = max(v["spectra_per_s"] for r in ok_cpu for v in r["end_to_end"].values())
        feff_rate = 1.0 / results["feff10"]["seconds_per_molecule"]
        results["speedup_vs_feff10_cpu"] = {
            "network_only": best_net / feff_rate,
            "end_to_end": best_e2e / feff_rate,
            "basis": "best batch size and thread count, o-k on CPU, per QM9 molecule (all O sites), same run and machine",
        }
    results["targets"] = {
        "qm9_spectra_per_s_cpu>=1000": {
            "network_only": max(v["spectra_per_s"] for r in results["runs"] if r["model"] == "o-k" and r["device"] == "cpu" for v in r["network"].values()),
            "end_to_end": max(v["spectra_per_s"] for r in results["runs"] if r["model"] == "o-k" and r["device"] == "cpu" for v in r["end_to_end"].values()),
        },
        "speedup_vs_feff10>=10000": results.get("speedup_vs_feff10_cpu"),
    }
    results["peak_rss_MB"] = rss_mb()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out.with_suffix(".png"))
    print(json.dumps(results["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
