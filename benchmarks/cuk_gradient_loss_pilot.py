"""Paired pilot of an edge-aware loss for cu-k: one member, K epochs, with and without a derivative term.

The member starts from the shipped weights (copied to /work/runs/cu-k-shipped before the
retraining) and trains with AdamW at lr 1e-3, the same seed and batch order in both arms, on the
beta-NLL plus ``LAMBDA_REL * lam * mean((d mu_pred/dE - d mu/dE)^2)`` (finite differences on the
grid; ``lam`` makes the term equal to the NLL's mean-fit part on the first batch). Validation
metrics at site level after each epoch. A script, not a test; one thread.

Usage (what wrote ``benchmarks/results/cu-k_gradient_loss_pilot_l{0.0,1.0}_m2_e4.json``)::

    python benchmarks/cuk_gradient_loss_pilot.py 0 4 2
    python benchmarks/cuk_gradient_loss_pilot.py 1 4 2
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from models import training as tr
from models.gnn import XASEnsemble, XASNet, derivative_mse, gaussian_nll
from models.graphs import GraphBuilder
from models.readers import split_ids
from models.spectra import common_grid, spectrum_metrics

lam_rel, K, m = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = Path(__file__).resolve().parent / "results"; t0 = time.time()
weights = Path("/work/runs/cu-k-shipped/cu-k.pt")
payload = torch.load(weights, map_location="cpu", weights_only=True); cfg = payload["config"]
card = json.loads(weights.with_suffix(".json").read_text())
records, _ = tr.read_records("cu-k", tr.default_data_paths("cu-k"))
split = split_ids([str(r.record_id) for r in records], seed=int(card["seed"]))
by_id = {str(r.record_id): r for r in records}
parts = {k: [by_id[i] for i in split[k]] for k in ("train", "val")}
grid = np.asarray(common_grid(parts["train"], 160), dtype=float)
builder = GraphBuilder.from_config(cfg["graph_builder"])
site = {k: tr.make_site_data(parts[k], builder, grid) for k in parts}
graphs = {k: [tr._strip(g) for g in v.graphs] for k, v in site.items()}
ens = XASEnsemble(cfg["net"], members=int(cfg["members"])); ens.load_state_dict(payload["state_dict"])
offset = torch.tensor(cfg["normalisation"]["offset"], dtype=torch.float32); scale = float(cfg["normalisation"]["scale"])
z = []
for g in graphs["train"]:
    h = g.clone(); h.y = (g.y - offset) / scale; z.append(h)
net = XASNet(**cfg["net"]); net.load_state_dict(ens.members[m].state_dict())
def val_metrics(net):
    mz, _ = tr.predict_members([net], graphs["val"], torch.device("cpu"))
    pred = (offset + scale * mz[0]).numpy(); true = site["val"].y.numpy()
    s = spectrum_metrics(grid, true, pred)
    return {k: s[k] for k in ("mse", "median_pearson", "peaks_within_1eV", "peaks_within_0.5eV", "edge_mae_eV")}
res = {"lambda_rel": lam_rel, "epochs": K, "member": m, "before": val_metrics(net), "history": []}
tr.seed_everything(123)
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
lam = None
for epoch in range(K):
    net.train()
    for batch in tr._loader(z, 32, shuffle=True, seed=777 + epoch):
        opt.zero_grad(set_to_none=True)
        mean, std = net(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.absorber_index.view(-1))
        loss = gaussian_nll(mean, std, batch.y, beta=0.5)
        gterm = derivative_mse(mean, batch.y)  # the term of models.finetune --derivative-loss
        if lam is None:  # equal weight to the mean-fit part of the beta-NLL at the start, times lam_rel
            with torch.no_grad():
                fit = (0.5 * (batch.y - mean).pow(2) / std).mean()
            lam = float(fit / gterm) if lam_rel else 0.0
            res["lambda_abs"] = lam
        (loss + lam_rel * lam * gterm).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
    res["history"].append({"epoch": epoch, **val_metrics(net), "seconds": time.time() - t0})
    print(res["history"][-1], flush=True)
(out / f"cu-k_gradient_loss_pilot_l{lam_rel}_m{m}_e{K}.json").write_text(json.dumps(res, indent=1))
