"""Model families at equal CPU budget, learning curves, and O -> N transfer (a script, not a test).

For the QM9 O K-edge set (``o-k``):

1. three families, one member each, the same CPU-time budget (this process, one thread; the
   machine is shared, so wall time would not be equal compute) and early stopping on the
   validation MSE: today's attention MPNN (:class:`models.gnn.XASNet`, the shipped config), a
   PaiNN-style equivariant network (:class:`models.painn.PaiNNNet`) and symmetry functions around
   the absorber + MLP (:class:`models.descriptors.DescriptorNet`); the family with the most true
   peaks within 1 eV on *validation* (molecule level, :func:`models.spectra.spectrum_metrics` on
   the multiplicity-weighted molecule spectra, as the model cards) is chosen;
2. the chosen family's learning curve: 25 / 50 / 100 % of the training molecules (nested random
   subsets by molecule), validation and test metrics.

For the N K-edge set (``n-k``): the chosen family from scratch (learning curve as above) and
pre-trained on O then fine-tuned on N. Splits are :func:`models.readers.split_ids` by molecule
(seed 0), so they match the model cards. Test metrics are reported for the chosen family only.

Usage::

    python benchmarks/bench_model_families.py --minutes 3 --out benchmarks/results/model_families.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.fit import train_family_member  # noqa: E402
from models.gnn import aggregate_sites  # noqa: E402
from models.jsonable import to_jsonable  # noqa: E402
from models.provenance import file_sha256, git_state  # noqa: E402

LEARNING_FRACTIONS = (0.25, 0.5, 1.0)
BATCH_SIZE = 32


def load_edge(model: str, seed: int = 0) -> dict:
    """Records -> split by molecule -> grid -> stripped site graphs with bookkeeping, per split."""
    from models.graphs import GraphBuilder
    from models.readers import split_ids
    from models.spectra import common_grid
    from models.training import MODEL_SPECS, _strip, default_data_path, make_site_data, read_records, record_elements

    spec = MODEL_SPECS[model]
    path = default_data_path(model)
    records, _ = read_records(model, path)
    split = split_ids([str(r.record_id) for r in records], seed=seed)
    by_id = {str(r.record_id): r for r in records}
    parts = {k: [by_id[i] for i in split[k]] for k in ("train", "val", "test")}
    grid = np.asarray(common_grid(parts["train"], spec["grid_points"]), dtype=float)
    builder = GraphBuilder(spec["element"], record_elements(records), kind=spec["kind"], **spec["builder"])
    site = {k: make_site_data(v, builder, grid) for k, v in parts.items()}
    return {"model": model, "path": path, "sha256": file_sha256(path), "records": len(records),
            "grid": grid, "builder": builder, "site": site,
            "graphs": {k: [_strip(g) for g in v.graphs] for k, v in site.items()}}


def subset(edge: dict, fraction: float, seed: int = 0) -> tuple[list, list[str]]:
    """Training graphs of a nested random subset of the training *molecules*."""
    site = edge["site"]["train"]
    order = np.random.default_rng(seed).permutation(len(site.ids))
    keep = set(order[: max(1, int(round(fraction * len(site.ids))))].tolist())
    graphs = [g for g, grp in zip(edge["graphs"]["train"], site.groups) if grp in keep]
    return graphs, [site.ids[i] for i in sorted(keep)]


def net_config(edge: dict, family: str) -> dict:
    from models.training import family_net_config

    return family_net_config(family, edge["builder"], len(edge["grid"]))


def molecule_metrics(edge: dict, split: str, mean_site: torch.Tensor, std_site: torch.Tensor | None = None) -> dict:
    """Card metrics of site predictions (normalised mu) at molecule level."""
    from models.spectra import spectrum_metrics
    from models.training import coverage

    data = edge["site"][split]
    m = mean_site.unsqueeze(0)
    s = torch.zeros_like(m) if std_site is None else std_site.unsqueeze(0)
    gm, gs = aggregate_sites(m, s, data.groups, data.weights, len(data.ids))
    true = data.material_truth()
    out = to_jsonable(spectrum_metrics(edge["grid"], true, gm[0].numpy()))
    if std_site is not None:
        out["uncertainty_uncalibrated"] = coverage(true, gm[0].numpy(), gs[0].numpy())
    return out


def train_one(edge: dict, family: str, train_graphs: list, seconds: float, seed: int,
              init_state: dict | None = None, lr: float = 2e-3, patience: int = 30) -> dict:
    """Train one member; return it, its run summary and site predictions on val and test."""
    from models.training import seed_everything

    seed_everything(seed)
    ytr = torch.cat([g.y for g in edge["graphs"]["train"]])  # normalisation from the full train split
    offset, scale = ytr.mean(0), float((ytr - ytr.mean(0)).std())
    cfg = net_config(edge, family)
    net, summary, predict_fn = train_family_member(
        cfg, train_graphs, edge["graphs"]["val"], offset, scale, seed=seed, batch_size=BATCH_SIZE,
        max_seconds=seconds, init_state=init_state, lr=lr, patience=patience)
    preds = {}
    for split in ("val", "test"):
        mz, sz = predict_fn(edge["graphs"][split])
        preds[split] = (offset + scale * mz, scale * sz)
    return {"net": net, "summary": {"config": cfg, "train_sites": len(train_graphs), **summary},
            "preds": preds, "offset": offset, "scale": scale}


def evaluate(edge: dict, run: dict, test: bool) -> dict:
    res = {"val": molecule_metrics(edge, "val", *run["preds"]["val"])}
    if test:
        res["test"] = molecule_metrics(edge, "test", *run["preds"]["test"])
    return res


def short(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "history"}


def learning_curve(edge: dict, family: str, seconds: float, seed: int, full_run: dict | None) -> list[dict]:
    points = []
    for frac in LEARNING_FRACTIONS:
        graphs, ids = subset(edge, frac, seed)
        if frac == 1.0 and full_run is not None:
            run = full_run
        else:
            run = train_one(edge, family, graphs, seconds, seed)
        points.append({"fraction": frac, "train_molecules": len(ids), "train_sites": len(graphs),
                       "run": short(run["summary"]), **evaluate(edge, run, test=True)})
        print(f"  {edge['model']} {family} {frac:.2f}: {len(ids)} molecules, val 1eV "
              f"{points[-1]['val']['peaks_within_1eV']:.3f}, test 1eV {points[-1]['test']['peaks_within_1eV']:.3f}",
              flush=True)
    return points


def extrapolate(points: list[dict], key: str = "peaks_within_1eV", target: float = 0.90, split: str = "test") -> dict:
    """Fit ``1 - metric = a * n^-b`` (a power law of the miss rate) and solve for ``target``."""
    n = np.array([p["train_molecules"] for p in points], dtype=float)
    miss = np.array([1.0 - p[split][key] for p in points], dtype=float)
    if np.any(miss <= 0) or len(n) < 2:
        return {"fit": None, "note": "miss rate not positive at every point; no fit"}
    slope, intercept = np.polyfit(np.log(n), np.log(miss), 1)
    b, a = -slope, float(np.exp(intercept))
    needed = float((a / (1 - target)) ** (1 / b)) if b > 0 else float("inf")
    return {"fit": "1 - %s = %.3g * n^-%.3f (%s split)" % (key, a, b, split), "a": a, "b": float(b),
            "target": target, "molecules_needed": needed}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, key, title in ((ax[0], "peaks_within_1eV", "peaks within 1 eV"),
                             (ax[1], "peaks_within_0.5eV", "peaks within 0.5 eV")):
        for name, curve, colour in (("O K (" + result["chosen"] + ")", result["learning_curve_o"], "C0"),
                                    ("N K (" + result["chosen"] + ")", result["learning_curve_n"], "C1")):
            n = [p["train_molecules"] for p in curve]
            axis.plot(n, [p["test"][key] for p in curve], "o-", color=colour, label=name + " test")
            axis.plot(n, [p["val"][key] for p in curve], "s--", color=colour, alpha=0.5, label=name + " val")
        tr = result.get("n_transfer")
        if tr:
            axis.plot([tr["train_molecules"]], [tr["test"][key]], "*", ms=12, color="C3",
                      label="N K, pretrained on O, test")
        axis.axhline(0.9 if key == "peaks_within_1eV" else 0.8, color="grey", ls=":", label="target")
        axis.set_xscale("log")
        axis.set_xlabel("training molecules")
        axis.set_title(title + " (molecule level)")
        axis.grid(alpha=0.3)
    ax[0].set_ylabel("fraction of true peaks")
    ax[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=6.0, help="CPU budget of each family run on O (full train)")
    p.add_argument("--curve-minutes", type=float, default=3.0, help="CPU budget of each reduced learning-curve run")
    p.add_argument("--n-minutes", type=float, default=3.0, help="CPU budget of each N run")
    p.add_argument("--families", default="mpnn,painn,acsf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-states", default=None, help="folder for the trained members' state dicts")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/model_families.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    o = load_edge("o-k", args.seed)
    print(f"o-k data {time.perf_counter() - t_start:.0f} s", flush=True)

    comparison, runs = {}, {}
    for family in args.families.split(","):
        run = train_one(o, family, o["graphs"]["train"], 60 * args.minutes, args.seed)
        runs[family] = run
        comparison[family] = {"run": short(run["summary"]), **evaluate(o, run, test=False)}
        v = comparison[family]["val"]
        print(f"o-k {family}: val 1eV {v['peaks_within_1eV']:.3f} 0.5eV {v['peaks_within_0.5eV']:.3f} "
              f"mse {v['mse']:.4f} ({run['summary']['epochs_run']} epochs, {run['summary']['stopped']}, "
              f"{run['summary']['cpu_seconds']} CPU s, {run['summary']['wall_seconds']} wall s)", flush=True)
    chosen = max(comparison, key=lambda f: (comparison[f]["val"]["peaks_within_1eV"], -comparison[f]["val"]["mse"]))
    print(f"chosen: {chosen}", flush=True)
    curve_o = learning_curve(o, chosen, 60 * args.curve_minutes, args.seed, runs[chosen])

    n = load_edge("n-k", args.seed)
    curve_n = learning_curve(n, chosen, 60 * args.n_minutes, args.seed, None)
    pre = runs[chosen]["net"].state_dict()
    tr = train_one(n, chosen, n["graphs"]["train"], 60 * args.n_minutes, args.seed, init_state=pre, lr=1e-3)
    transfer = {"train_molecules": len(n["site"]["train"].ids), "run": short(tr["summary"]),
                "init": f"o-k {chosen} member of the comparison (all weights; N's own normalisation and "
                        "descriptor statistics)", **evaluate(n, tr, test=True)}
    print(f"n-k transfer: val 1eV {transfer['val']['peaks_within_1eV']:.3f} test {transfer['test']['peaks_within_1eV']:.3f}",
          flush=True)
    if args.save_states:
        folder = Path(args.save_states)
        folder.mkdir(parents=True, exist_ok=True)
        for family, run in runs.items():
            torch.save({"config": run["summary"]["config"], "state_dict": run["net"].state_dict()},
                       folder / f"o-k-{family}.pt")
        torch.save({"config": tr["summary"]["config"], "state_dict": tr["net"].state_dict()},
                   folder / f"n-k-{chosen}-transfer.pt")

    def data_entry(edge):
        return {"file": str(edge["path"].relative_to(edge["path"].parents[1])), "sha256": edge["sha256"],
                "records": edge["records"], **{f"{k}_molecules": len(edge["site"][k].ids) for k in edge["site"]},
                **{f"{k}_sites": len(edge["site"][k].graphs) for k in edge["site"]}}

    result = {
        "description": __doc__.split("\n\n")[0],
        "protocol": {
            "split": "models.readers.split_ids by molecule, seed %d, (0.8, 0.1, 0.1)" % args.seed,
            "budget": f"one member per family, {args.minutes} CPU-min each on O (one thread; descriptor "
                      "computation and batch collation included), early stopping on validation MSE (patience 30)",
            "metric": "models.spectra.spectrum_metrics on multiplicity-weighted molecule spectra",
            "choice": "most true peaks within 1 eV on validation (tie: lower MSE); test only for the chosen family",
            "learning_curve": f"nested random subsets of training molecules {LEARNING_FRACTIONS}; "
                              f"reduced runs {args.curve_minutes} CPU-min (O), N runs {args.n_minutes} CPU-min",
            "threads": args.threads,
        },
        "data": {"o-k": data_entry(o), "n-k": data_entry(n)},
        "comparison_o": comparison,
        "chosen": chosen,
        "learning_curve_o": curve_o,
        "learning_curve_n": curve_n,
        "n_transfer": transfer,
        "extrapolation": {"o-k": extrapolate(curve_o), "n-k": extrapolate(curve_n)},
        "git": git_state(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "machine": platform.platform(),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    for curve in (curve_o, curve_n):
        for point in curve:
            point["run"].pop("config", None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable(result), indent=1) + "\n")
    plot(result, out.with_name(out.stem + "_learning_curve.png"))
    print(json.dumps({"chosen": chosen, "extrapolation": result["extrapolation"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
