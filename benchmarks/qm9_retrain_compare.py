"""o-k / n-k: two weights files on the SAME validation and test molecules (a script, not a test).

Usage (what wrote ``benchmarks/results/qm9_retrain_<model>[_<tag>].json``; one thread)::

    python benchmarks/qm9_retrain_compare.py o-k models/weights/o-k.pt /work/runs/o-k-s3/o-k.pt
    python benchmarks/qm9_retrain_compare.py n-k runs/n-k-old/n-k.pt runs/n-k-ft/n-k.pt --tag converged

The data are what ``xas-train`` reads today (the shared QM9 set plus the project's extension under
``data/``), split by :func:`models.readers.split_ids` (seed 0; a hash of the molecule id, so the
molecules of the shared set keep their split). Each model predicts on its own grid with its own
calibration factor; the predictions of the first file are interpolated onto the grid of the last
(they differ by at most a fraction of a grid step), and all are scored against the same truth on that
grid with the card's metrics (:func:`models.spectra.spectrum_metrics`, molecule level, and
:func:`models.training.coverage`). Scores are reported on all validation/test molecules and on those
of the shared set alone (the molecules the older cards were scored on). With two or more files,
``paired_first_vs_last`` gives, per split, the last file's gain in true peaks within 1 eV over the
first's with a 95 % paired bootstrap interval over molecules (2,000 resamples, seed 0): how much of
a difference the few validation molecules can resolve.
"""
import argparse, json, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from models import training as tr
from models.predictor import load_predictor
from models.readers import split_ids
from models.spectra import spectrum_metrics

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("model")
ap.add_argument("weights", nargs="+", type=Path, help="weights files; the last one's grid is the common grid")
ap.add_argument("--tag", default="", help="results file qm9_retrain_<model>_<tag>.json (default: no tag)")
args = ap.parse_args()
model, files = args.model, args.weights
t0 = time.time()
paths = tr.default_data_paths(model)
records, _ = tr.read_records(model, paths)
shared_ids = {str(r.record_id) for r in tr.read_records(model, paths[:1])[0]}
split = split_ids([str(r.record_id) for r in records], seed=0)
by_id = {str(r.record_id): r for r in records}
parts = {k: [by_id[i] for i in split[k]] for k in ("val", "test")}
dev = torch.device("cpu")


def predict(weights: Path):
    pred = load_predictor(weights, "cpu")  # the ensemble with its offset, scale and calibration
    ens = pred.ensemble
    out = {}
    for k, recs in parts.items():
        site = tr.make_site_data(recs, pred.builder, pred.energies)
        out[k] = tr.evaluate(list(ens.members), site, ens.offset, float(ens.scale), dev, float(ens.calibration))
        out[k]["ids"] = site.ids
    return pred.energies, out


preds = {str(f): predict(f) for f in files}
grid, ref = preds[str(files[-1])]
report = {"model": model, "data": [str(p) for p in paths], "files": {},
          "split_counts": {k: len(v) for k, v in split.items()},
          "split_counts_shared_only": {k: len([i for i in v if i in shared_ids]) for k, v in split.items()},
          "grid": [float(grid[0]), float(grid[-1]), len(grid)]}
hits = {}  # per file and split: true peaks within 1 eV and true peaks, per molecule
for f, (g, res) in preds.items():
    entry = {"weights_sha256": tr.file_sha256(f), "grid_max_shift_eV": float(np.abs(g - grid).max())}
    for k in parts:
        assert res[k]["ids"] == ref[k]["ids"], "molecule order differs between the two evaluations"
        true = ref[k]["mat_true"]
        mean = np.stack([np.interp(grid, g, m) for m in res[k]["mat_mean"]])
        std = np.stack([np.interp(grid, g, s) for s in res[k]["mat_std"]])
        shared = np.array([i in shared_ids for i in ref[k]["ids"]])
        for label, sel in (("all", slice(None)), ("shared_set", shared)):
            m = spectrum_metrics(grid, true[sel], mean[sel])
            entry[f"{k}_{label}"] = {**{a: m[a] for a in ("mse", "median_pearson", "peaks_within_1eV",
                                                           "peaks_within_0.5eV", "n_true_peaks", "edge_mae_eV", "n_spectra")},
                                     "uncertainty": tr.coverage(true[sel], mean[sel], std[sel])}
        per = [spectrum_metrics(grid, true[i:i + 1], mean[i:i + 1]) for i in range(len(true))]
        n = np.array([p["n_true_peaks"] for p in per], dtype=float)
        h = np.array([np.nan_to_num(p["peaks_within_1eV"]) for p in per]) * n
        assert np.isclose(h.sum() / n.sum(), entry[f"{k}_all"]["peaks_within_1eV"]), "per-molecule peaks do not add up"
        hits[(f, k)] = (h, n)
    report["files"][f] = entry
if len(files) >= 2:
    rng = np.random.default_rng(0)
    report["paired_first_vs_last"] = {}
    for k in parts:
        (h0, n), (h1, _) = hits[(str(files[0]), k)], hits[(str(files[-1]), k)]
        idx = rng.integers(0, len(n), size=(2000, len(n)))
        boot = (h1[idx].sum(1) - h0[idx].sum(1)) / n[idx].sum(1)
        report["paired_first_vs_last"][k] = {
            "peaks_within_1eV_gain": float((h1.sum() - h0.sum()) / n.sum()),
            "bootstrap_95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "molecules_more_peaks": int((h1 > h0).sum()), "molecules_fewer_peaks": int((h1 < h0).sum()),
            "n_molecules": len(n), "n_true_peaks": int(n.sum())}
report["seconds"] = round(time.time() - t0, 1)
out = Path(__file__).resolve().parent / "results" / f"qm9_retrain_{model}{'_' + args.tag if args.tag else ''}.json"
out.write_text(json.dumps(tr._jsonable(report), indent=1) + "\n")
for f, e in report["files"].items():
    print(f, e["weights_sha256"][:8])
    for k in ("val_all", "val_shared_set", "test_all", "test_shared_set"):
        x = e[k]
        print(f"  {k:16s} n={x['n_spectra']:4d} mse={x['mse']:.4f} r={x['median_pearson']:.4f} "
              f"1eV={x['peaks_within_1eV']:.3f} 0.5eV={x['peaks_within_0.5eV']:.3f} edge={x['edge_mae_eV']:.2f} "
              f"cov={x['uncertainty']['within_1sigma']:.3f}/{x['uncertainty']['within_2sigma']:.3f}")
for k, x in report.get("paired_first_vs_last", {}).items():
    print(f"{k}: peaks within 1 eV {x['peaks_within_1eV_gain']:+.3f} (95 % {x['bootstrap_95'][0]:+.3f} .. "
          f"{x['bootstrap_95'][1]:+.3f}); molecules with more/fewer: {x['molecules_more_peaks']}/{x['molecules_fewer_peaks']}")
