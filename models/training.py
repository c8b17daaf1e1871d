"""Train a deep ensemble of :class:`models.gnn.XASNet` on computed XANES (``xas-train``).

Pipeline: read records -> split by material/molecule id (:func:`models.readers.split_ids`) ->
common energy grid -> absorber-centred site graphs -> standardise targets on the training split
-> optional short architecture comparison on the *validation* split -> train ``--ensemble``
members with early stopping on validation (one checkpoint per epoch, resumable) -> fit the
uncertainty calibration on validation -> evaluate once on test -> write ``<name>.pt`` (plain
state dict + JSON-able config, loadable with ``torch.load(..., weights_only=True)``) and the
model card ``<name>.json``.

Example::

    xas-train --model o-k --out models/weights --ensemble 3 --select-epochs 15
    xas-train --model cu-k --limit 40 --epochs 2 --out /tmp/smoke      # smoke run
    xas-train --model o-k --family painn --max-minutes 3 --patience 30 --epochs 10000 --out runs/o-k
    xas-train --model n-k --family painn --init-from runs/o-k/o-k.pt --lr 1e-3 --out runs/n-k

``--family painn`` / ``acsf`` train :mod:`models.painn` / :mod:`models.descriptors` members with
:func:`models.fit.train_family_member` (batches collated once, CPU-time budget); the default
``mpnn`` keeps the original per-epoch loop with per-epoch checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from models.gnn import XASEnsemble, XASNet, aggregate_sites, build_net, combine_members, derivative_mse, gaussian_nll, resolve_device
from models.jsonable import to_jsonable as _jsonable
from models.provenance import file_sha256, git_state

#: What each shipped model is trained on.
MODEL_SPECS: dict[str, dict[str, Any]] = {
    "cu-k": {
        "element": "Cu",
        "edge": "K",
        "kind": "crystal",
        "reader": "feff_materials",
        "data": "cu_k_feff9_materials_project",
        "grid_points": 160,
        # smaller than the builder defaults (6.0 / 4.0 A): a 5 A cluster with 3.2 A edges keeps
        # ~45 atoms and ~300 edges per site graph, which is what 2 CPU cores can train on;
        # three message-passing rounds still reach ~10 A.
        "builder": {"cluster_radius": 5.0, "edge_cutoff": 3.2},
        "description": "Cu K-edge XANES of crystals (FEFF9, Materials Project structures, OmniXAS)",
        "credits": "Spectra: OmniXAS (BSD-3-Clause); structures: Materials Project (CC-BY-4.0).",
    },
    "o-k": {
        "element": "O",
        "edge": "K",
        "kind": "molecule",
        "reader": "qm9_jsonl",
        "data": "qm9_o_k_feff10/qm9_O_K_feff10.jsonl",
        "grid_points": 128,
        "builder": {},
        "description": "O K-edge XANES of QM9 molecules (FEFF10 via feff10-rs)",
        "credits": "Geometries: QM9 (CC0) via qm9pack (MIT); spectra computed with FEFF10.",
    },
    # The seed's second edge: the shared N set was made with `xas-feff qm9 --absorber N` (the O set's
    # cards). For o-k and n-k the project's extension under data/ (`xas-feff snapshot`) is read after
    # the shared set (models.paths.qm9_data_files).
    "n-k": {
        "element": "N",
        "edge": "K",
        "kind": "molecule",
        "reader": "qm9_jsonl",
        "data": "qm9_n_k_feff10/qm9_N_K_feff10.jsonl",
        "grid_points": 128,
        "builder": {},
        "description": "N K-edge XANES of QM9 molecules (FEFF10 via feff10-rs, computed by xas-feff)",
        "credits": "Geometries: QM9 (CC0) via qm9pack (MIT); spectra computed with FEFF10 by this project.",
    },
}

#: Default network hyper-parameters and the candidates of the architecture comparison.
DEFAULT_ARCH: dict[str, Any] = {
    "hidden": 64,
    "steps": 3,
    "edge_hidden": 64,
    "conv": "nnconv",
    "readout": "absorber",
}
ARCH_CANDIDATES: dict[str, dict[str, Any]] = {
    "mpnn-set2set (Carbone et al.)": {**DEFAULT_ARCH, "readout": "set2set"},
    "mpnn-absorber": {**DEFAULT_ARCH, "readout": "absorber"},
    "transformer-absorber": {**DEFAULT_ARCH, "conv": "transformer", "readout": "absorber"},
}
#: Model families (:func:`models.gnn.build_net`) compared in benchmarks/bench_model_families.py.
FAMILY_ARCH: dict[str, dict[str, Any]] = {
    "mpnn": {"family": "mpnn", **ARCH_CANDIDATES["transformer-absorber"]},
    "painn": {"family": "painn", "hidden": 64, "layers": 3},
    "acsf": {"family": "acsf", "hidden": 256, "layers": 2, "n_radial": 24, "n_angular": 8, "dropout": 0.1},
}


def family_net_config(family: str, builder, out_dim: int) -> dict[str, Any]:
    """Network config of a :data:`FAMILY_ARCH` family for the graphs of ``builder``."""
    if family not in FAMILY_ARCH:
        raise ValueError(f"family {family!r} is not one of {sorted(FAMILY_ARCH)}")
    cfg = {"node_dim": int(builder.node_dim), "edge_dim": int(builder.edge_dim), "out_dim": int(out_dim),
           **FAMILY_ARCH[family]}
    if family == "painn":
        cfg["cutoff"] = float(builder.edge_cutoff)
    if family == "acsf":
        cfg["n_elements"] = len(builder.elements)
        cfg["cutoff"] = float(builder.cluster_radius)
    return cfg


@dataclass
class TrainSettings:
    """Optimisation settings (JSON-able, recorded in the model card)."""

    epochs: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-5
    beta_nll: float = 0.5
    patience: int = 20
    lr_patience: int = 6
    lr_factor: float = 0.5
    min_lr: float = 1e-5
    grad_clip: float = 5.0
    max_minutes_per_member: float = 0.0  # 0: no time limit
    derivative_loss: float = 0.0  # weight of the slope term (member_loss); 0: the beta-NLL alone


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Fix the Python, numpy and torch seeds."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def coverage(true: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """Fraction of points inside the 1- and 2-sigma bands and the RMS z-score."""
    z = (true - mean) / std
    return {
        "within_1sigma": float(np.mean(np.abs(z) <= 1.0)),
        "within_2sigma": float(np.mean(np.abs(z) <= 2.0)),
        "rms_z": float(np.sqrt(np.mean(z**2))),
        "expected_gaussian": {"within_1sigma": 0.6827, "within_2sigma": 0.9545},
    }


#: Ways to fit the scalar std calibration factor on validation (:func:`fit_calibration`).
CALIBRATIONS = ("rms", "coverage")


def fit_calibration(true: np.ndarray, mean: np.ndarray, std: np.ndarray, method: str = "rms") -> float:
    """The factor the predicted stds are multiplied by, fitted on (validation) predictions.

    ``"rms"``: validation z-scores get unit RMS. With heavy-tailed errors (a few large misses,
    many small ones) this leaves the 1-sigma band too wide. ``"coverage"``: the factor that
    minimises the larger of the deviations of the 1- and 2-sigma coverages from the Gaussian
    0.6827 and 0.9545 (a scan of factors around the RMS one, a 0.1 % step).
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration method {method!r}: expected one of {', '.join(CALIBRATIONS)}")
    z = np.abs((np.asarray(true) - np.asarray(mean)) / np.asarray(std)).ravel()
    rms = float(np.sqrt(np.mean(z**2)))
    if method == "rms":
        return rms
    zs = np.sort(z)
    factors = rms * np.exp(np.linspace(np.log(0.25), np.log(4.0), 2773))  # ~0.1 % steps
    cov1 = np.searchsorted(zs, factors * 1.0, side="right") / zs.size
    cov2 = np.searchsorted(zs, factors * 2.0, side="right") / zs.size
    worst = np.maximum(np.abs(cov1 - 0.6827), np.abs(cov2 - 0.9545))
    return float(factors[int(np.argmin(worst))])


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def default_data_path(model: str) -> Path:
    """The shared data set of a shipped model (through :func:`models.paths.data_dir`)."""
    from models.paths import data_path

    return data_path(MODEL_SPECS[model]["data"])


def default_data_paths(model: str) -> list[Path]:
    """A model's data: the shared set, then (QM9 models) the project's extension under ``data/``
    where present (:func:`models.paths.qm9_data_files`)."""
    from models.paths import qm9_data_files

    spec = MODEL_SPECS[model]
    if spec["reader"] == "qm9_jsonl":
        return qm9_data_files(spec["element"])
    return [default_data_path(model)]


def read_records(model: str, path: Path | Sequence[Path], limit: int | None = None):
    """Records and read report of a model's data set (QM9 models: one file or several, read as one
    set by :func:`models.readers.read_qm9_sets`)."""
    from models import readers

    spec = MODEL_SPECS[model]
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    if spec["reader"] == "feff_materials":
        if len(paths) != 1:
            raise ValueError(f"model {model!r} reads one materials folder, got {len(paths)} data paths")
        return readers.read_feff_materials(paths[0], limit=limit)
    if len(paths) == 1:
        return readers.read_qm9_jsonl(paths[0], limit=limit)
    return readers.read_qm9_sets(paths, limit=limit)


def data_files(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """``{path, bytes, sha256}`` of each data file, ``{path, files, tree_sha256}`` of each data
    folder (:func:`models.provenance.tree_sha256`), for model cards."""
    from models.provenance import tree_sha256

    out = []
    for p in map(Path, paths):
        if p.is_file():
            out.append({"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)})
        else:
            digest, n = tree_sha256(p)
            out.append({"path": str(p), "files": n, "tree_sha256": digest})
    return out


def _report_dict(report: Any) -> dict[str, Any]:
    if report is None:
        return {}
    if hasattr(report, "n_read") and hasattr(report, "skipped"):
        skipped = list(report.skipped)
        counts = dict(report.reason_counts()) if hasattr(report, "reason_counts") else {}
        return _jsonable({
            "source": str(getattr(report, "source", "")),
            "records_read": report.n_read,
            "sites_read": getattr(report, "n_sites", None),
            "records_skipped": len(skipped),
            "skip_reasons": counts,
            "skipped_examples": [list(map(str, s)) for s in skipped[:20]],
        })
    if hasattr(report, "as_dict"):
        return _jsonable(report.as_dict())
    if hasattr(report, "to_dict"):
        return _jsonable(report.to_dict())
    if hasattr(report, "__dataclass_fields__"):
        import dataclasses

        out = {}
        for f in dataclasses.fields(report):
            value = getattr(report, f.name)
            if isinstance(value, dict) and len(value) > 50:
                out[f.name + "_count"] = len(value)
                out[f.name + "_first"] = _jsonable(dict(list(value.items())[:20]))
            elif isinstance(value, (list, tuple)) and len(value) > 50:
                out[f.name + "_count"] = len(value)
                out[f.name + "_first"] = _jsonable(list(value)[:20])
            else:
                out[f.name] = _jsonable(value)
        return out
    return {"repr": repr(report)}


def record_elements(records) -> list[str]:
    """Sorted element symbols present in a list of records."""
    elements: set[str] = set()
    for rec in records:
        struct = rec.structure
        for el in struct.composition.elements:
            elements.add(el.symbol)
    return sorted(elements)


@dataclass
class SiteData:
    """Site graphs of one split with their material bookkeeping."""

    graphs: list
    groups: list[int]  # index of each site's material/molecule in ``ids``
    weights: list[float]
    ids: list[str]
    report: Any = None

    @property
    def y(self) -> torch.Tensor:
        return torch.cat([g.y.view(1, -1) for g in self.graphs], 0)

    def material_truth(self) -> np.ndarray:
        y = self.y.unsqueeze(0)
        m, _ = aggregate_sites(y, torch.zeros_like(y), self.groups, self.weights, len(self.ids))
        return m[0].numpy()


def make_site_data(records, builder, grid, progress: bool = False) -> SiteData:
    """Build the site graphs of ``records`` and index them by material/molecule."""
    import warnings

    from models.dataset import build_site_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skips are counted in the report and the model card
        graphs = build_site_dataset(records, builder, grid, progress=progress)
    ids: list[str] = []
    pos: dict[str, int] = {}
    groups, weights = [], []
    for g in graphs:
        rid = str(g.record_id)
        if rid not in pos:
            pos[rid] = len(ids)
            ids.append(rid)
        groups.append(pos[rid])
        weights.append(float(g.weight))
        g.y = g.y.view(1, -1).float()
    return SiteData(list(graphs), groups, weights, ids, getattr(graphs, "report", None))


def _strip(graph):
    """A copy holding only what the network needs (no strings, no site indices)."""
    from torch_geometric.data import Data

    data = Data(
        x=graph.x.float(),
        edge_index=graph.edge_index.long(),
        edge_attr=graph.edge_attr.float(),
        absorber_index=torch.as_tensor(graph.absorber_index, dtype=torch.long).view(1),
        y=graph.y.view(1, -1).float(),
    )
    if getattr(graph, "pos", None) is not None:  # directional families (models.painn, models.descriptors)
        data.pos = graph.pos.float()
    return data


# --------------------------------------------------------------------------------------------
# training of one member
# --------------------------------------------------------------------------------------------


def _loader(graphs, batch_size: int, shuffle: bool, seed: int = 0):
    from torch_geometric.loader import DataLoader

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(graphs, batch_size=batch_size, shuffle=shuffle, generator=generator)


@torch.inference_mode()
def predict_members(
    ensemble_members: Sequence[torch.nn.Module], graphs, device: torch.device, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised mean and std of each member for each graph, ``(M, S, E)`` on CPU."""
    means, stds = [], []
    for member in ensemble_members:
        member.eval()
        mm, ss = [], []
        for batch in _loader(graphs, batch_size, shuffle=False):
            batch = batch.to(device)
            m, s = member(
                batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.absorber_index.view(-1),
                getattr(batch, "pos", None),
            )
            mm.append(m.cpu())
            ss.append(s.cpu())
        means.append(torch.cat(mm))
        stds.append(torch.cat(ss))
    return torch.stack(means), torch.stack(stds)


def _val_mse(member, graphs, device, offset, scale) -> float:
    m, _ = predict_members([member], graphs, device)
    y = torch.cat([g.y for g in graphs])
    pred = offset + scale * m[0]
    return float(((pred - y) ** 2).mean())


def member_loss(mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor, beta: float = 0.5,
                derivative: float = 0.0) -> torch.Tensor:
    """Training loss of one member: the beta-NLL, plus ``derivative`` times the slope error.

    ``gaussian_nll(mean, std, target, beta) + derivative * derivative_mse(mean, target)``; with
    ``derivative == 0`` the beta-NLL alone (the slope term is not computed).
    """
    loss = gaussian_nll(mean, std, target, beta=beta)
    if derivative:
        loss = loss + float(derivative) * derivative_mse(mean, target)
    return loss


def train_member(
    net_config: dict[str, Any],
    train_graphs: list,
    val_graphs: list,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    offset: torch.Tensor,
    scale: float,
    checkpoint: Path | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    resume_state: dict[str, Any] | None = None,
    desc: str = "member",
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train one member network (:func:`models.gnn.build_net`: ``net_config["family"]``, default the
    MPNN :class:`XASNet`) with early stopping on validation MSE (normalised-mu units).

    Returns the best state dict (on CPU) and a summary (epochs, best val MSE, history, time).
    """
    from tqdm.auto import tqdm

    seed_everything(seed)
    model = build_net(net_config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=settings.lr_factor, patience=settings.lr_patience, min_lr=settings.min_lr
    )
    start_epoch, best_val, bad, history, elapsed = 0, float("inf"), 0, [], 0.0
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        best_state = resume_state["best_state"]
        start_epoch = int(resume_state["epoch"]) + 1
        best_val = float(resume_state["best_val"])
        bad = int(resume_state["bad_epochs"])
        history = list(resume_state["history"])
        elapsed = float(resume_state.get("elapsed", 0.0))
    off = offset.to(device)
    ytrain = [(g.y - offset) / scale for g in train_graphs]
    ztrain = []
    for g, yz in zip(train_graphs, ytrain):
        h = g.clone()
        h.y = yz
        ztrain.append(h)

    t0 = time.perf_counter() - elapsed
    bar = tqdm(
        range(start_epoch, settings.epochs),
        desc=desc,
        disable=not progress,
        initial=start_epoch,
        total=settings.epochs,
        dynamic_ncols=True,
        mininterval=2.0,
    )
    stopped = "max_epochs"
    deadline = (t0 + 60 * settings.max_minutes_per_member) if settings.max_minutes_per_member else None
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        out_of_time = False
        for batch in _loader(ztrain, settings.batch_size, shuffle=True, seed=seed * 100003 + epoch):
            if deadline is not None and time.perf_counter() > deadline and count:
                out_of_time = True  # a slow architecture must not overrun its budget mid-epoch
                break
            batch = batch.to(device)
            opt.zero_grad(set_to_none=True)
            mean, std = model(
                batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.absorber_index.view(-1),
                getattr(batch, "pos", None),
            )
            loss = member_loss(mean, std, batch.y, settings.beta_nll, settings.derivative_loss)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            total += float(loss.detach()) * batch.num_graphs
            count += batch.num_graphs
        val = _val_mse(model, val_graphs, device, off.cpu(), scale) if val_graphs else total / count
        sched.step(val)
        improved = val < best_val
        if improved:
            best_val, bad = val, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        lr = opt.param_groups[0]["lr"]
        history.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_mse": val, "lr": lr})
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}", val_mse=f"{val:.2e}", best=f"{best_val:.2e}")
        elapsed = time.perf_counter() - t0
        if checkpoint is not None:
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "best_state": best_state,
                "epoch": epoch,
                "best_val": best_val,
                "bad_epochs": bad,
                "history": history,
                "elapsed": elapsed,
            }
            _atomic_save({**(checkpoint_extra or {}), "current": state}, checkpoint)
        if bad >= settings.patience:
            stopped = "early_stopping"
            break
        if out_of_time or (deadline is not None and time.perf_counter() > deadline):
            stopped = "time_limit"
            break
    bar.close()
    summary = {
        "epochs_run": len(history),
        "best_val_mse": best_val,
        "best_epoch": int(min(history, key=lambda h: h["val_mse"])["epoch"]) if history else None,
        "stopped": stopped,
        "seconds": elapsed,
        "history": history,
    }
    return best_state, summary


# --------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------


def evaluate(
    members: Sequence[XASNet],
    data: SiteData,
    offset: torch.Tensor,
    scale: float,
    device: torch.device,
    calibration: float = 1.0,
) -> dict[str, np.ndarray]:
    """Site- and material-level predictions (normalised mu) of an ensemble on one split."""
    mz, sz = predict_members(members, data.graphs, device)
    mean, std = offset + scale * mz, scale * sz
    site_mu, site_sd = combine_members(mean, std, calibration)
    gm, gs = aggregate_sites(mean, std, data.groups, data.weights, len(data.ids))
    mat_mu, mat_sd = combine_members(gm, gs, calibration)
    return {
        "site_true": data.y.numpy(),
        "site_mean": site_mu.numpy(),
        "site_std": site_sd.numpy(),
        "mat_true": data.material_truth(),
        "mat_mean": mat_mu.numpy(),
        "mat_std": mat_sd.numpy(),
    }


def select_architecture(
    node_dim: int,
    edge_dim: int,
    out_dim: int,
    train_graphs: list,
    val_graphs: list,
    settings: TrainSettings,
    epochs: int,
    minutes: float,
    seed: int,
    device: torch.device,
    offset: torch.Tensor,
    scale: float,
    grid: np.ndarray,
    val_truth_graphs: list,
    progress: bool,
) -> dict[str, Any]:
    """Short single-member runs of each candidate, compared on the validation split.

    Every candidate gets the same budget: at most ``epochs`` epochs and ``minutes`` of wall time
    (0: no time limit), so a candidate that is slower per epoch pays for it, as it would in the
    real training budget.
    """
    from models.spectra import spectrum_metrics

    short = TrainSettings(**{**settings.__dict__, "epochs": epochs, "patience": epochs,
                             "max_minutes_per_member": minutes})
    results = {}
    for name, arch in ARCH_CANDIDATES.items():
        cfg = {"node_dim": node_dim, "edge_dim": edge_dim, "out_dim": out_dim, **arch}
        state, summary = train_member(
            cfg, train_graphs, val_graphs, short, seed, device, offset, scale,
            desc=f"select {name}", progress=progress,
        )
        net = XASNet(**cfg).to(device)
        net.load_state_dict(state)
        mz, _ = predict_members([net], val_graphs, device)
        pred = (offset + scale * mz[0]).numpy()
        true = torch.cat([g.y for g in val_truth_graphs]).numpy()
        metrics = spectrum_metrics(grid, true, pred)
        results[name] = {
            "config": arch,
            "parameters": sum(p.numel() for p in net.parameters()),
            "epochs": summary["epochs_run"],
            "seconds": round(summary["seconds"], 1),
            "val_mse": summary["best_val_mse"],
            "val_site_metrics": _jsonable(metrics),
        }
    best = min(results, key=lambda k: results[k]["val_mse"])
    return {
        "performed": True,
        "split": "validation (site level)",
        "criterion": "lowest validation MSE after the same short single-member run",
        "epochs_each": epochs,
        "minutes_each": minutes,
        "candidates": results,
        "chosen": best,
    }


def family_comparison(path: str | Path, model: str) -> dict[str, Any]:
    """The card's ``architecture_selection`` from a bench_model_families.py result file."""
    path = Path(path)
    try:
        res = json.loads(path.read_text())
        keys = ("comparison_o", "chosen", "learning_curve_o", "learning_curve_n", "extrapolation", "protocol")
        missing = [k for k in keys if k not in res]
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--comparison-from {path}: cannot read it ({exc})") from None
    if missing:
        raise ValueError(f"--comparison-from {path}: not a bench_model_families.py result (missing {missing})")
    metrics = ("peaks_within_1eV", "peaks_within_0.5eV", "mse", "median_pearson", "edge_mae_eV")

    def row(entry):
        return {**{k: entry["val"].get(k) for k in metrics},
                **{k: entry["run"].get(k) for k in ("parameters", "epochs_run", "stopped", "cpu_seconds")}}

    curve = res["learning_curve_o"] if model == "o-k" else res["learning_curve_n"] if model == "n-k" else []
    out = {
        "performed": True,
        "split": "validation (molecule level); one member per family at equal CPU budget on o-k",
        "criterion": res["protocol"].get("choice"),
        "budget": res["protocol"].get("budget"),
        "candidates_val_o_k": {fam: row(e) for fam, e in res["comparison_o"].items()},
        "chosen": res["chosen"],
        "learning_curve": [{"train_molecules": p["train_molecules"], "fraction": p["fraction"],
                            "val": {k: p["val"].get(k) for k in metrics}, "test": {k: p["test"].get(k) for k in metrics}}
                           for p in curve],
        "extrapolation_to_0.90_within_1eV": res["extrapolation"].get(model),
        "source": str(path.name),
        "source_commit": (res.get("git") or {}).get("commit"),
    }
    if model == "n-k" and res.get("n_transfer"):
        t = res["n_transfer"]
        out["pretrain_on_o_then_finetune_on_n"] = {"val": {k: t["val"].get(k) for k in metrics},
                                                   "test": {k: t["test"].get(k) for k in metrics}}
    return out


def pretrained_member(path: str | Path, m: int) -> dict[str, torch.Tensor]:
    """State dict of member ``m`` (modulo the member count) of a weights file, for fine-tuning."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
        raise ValueError(f"--init-from {path}: not a steered-xas weights file (needs 'config' and 'state_dict')")
    k = m % int(payload["config"]["members"])
    prefix = f"members.{k}."
    return {key[len(prefix):]: v for key, v in payload["state_dict"].items() if key.startswith(prefix)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, calibrate, evaluate and write ``<out>/<name>.pt`` and ``<out>/<name>.json``."""
    from models.graphs import GraphBuilder
    from models.readers import split_ids
    from models.spectra import common_grid, spectrum_metrics

    torch.set_num_threads(max(1, int(args.threads)))
    device = resolve_device(args.device)
    spec = MODEL_SPECS[args.model]
    name = args.name or args.model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{name}.ckpt.pt"
    data_paths = [Path(p) for p in args.data] if args.data else default_data_paths(args.model)
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        max_minutes_per_member=args.max_minutes,
    )
    t_start = time.perf_counter()
    seed_everything(args.seed)

    records, report = read_records(args.model, data_paths, limit=args.limit)
    if not records:
        raise RuntimeError(f"no usable records read from {' + '.join(map(str, data_paths))}")
    ids = [str(r.record_id) for r in records]
    split = split_ids(ids, seed=args.seed)
    by_id = {str(r.record_id): r for r in records}
    parts = {k: [by_id[i] for i in split[k]] for k in ("train", "val", "test")}
    grid = np.asarray(common_grid(parts["train"], spec["grid_points"]), dtype=float)
    elements = record_elements(records)
    builder = GraphBuilder(spec["element"], elements, kind=spec["kind"], **spec["builder"])
    site = {k: make_site_data(parts[k], builder, grid, progress=not args.quiet) for k in parts}
    if not site["train"].graphs or not site["val"].graphs:
        raise RuntimeError("training and validation splits need at least one site each")
    t_data = time.perf_counter() - t_start
    graphs = {k: [_strip(g) for g in v.graphs] for k, v in site.items()}

    ytr = site["train"].y
    offset = ytr.mean(0)
    scale = float((ytr - offset).std())
    node_dim, edge_dim, out_dim = int(builder.node_dim), int(builder.edge_dim), len(grid)

    resume = None
    if args.resume:
        resume = torch.load(args.resume, map_location="cpu", weights_only=True)
        if resume.get("model_name") != args.model or resume.get("grid") != grid.tolist():
            raise ValueError(
                f"checkpoint {args.resume} was written for model {resume.get('model_name')!r} "
                f"on another grid/data set; cannot resume a {args.model!r} run with it"
            )

    # ---- architecture -------------------------------------------------------------------
    if resume is not None:
        selection = resume["selection"]
        arch = resume["arch"]
    elif args.family != "mpnn":
        if args.select_epochs > 0 or args.arch or args.selection_from:
            raise ValueError(f"--select-epochs, --arch and --selection-from choose among MPNN variants; "
                             f"they do not apply to --family {args.family}")
        arch = {k: v for k, v in family_net_config(args.family, builder, out_dim).items()
                if k not in ("node_dim", "edge_dim", "out_dim")}
        selection = family_comparison(args.comparison_from, args.model) if args.comparison_from else {
            "performed": False, "chosen_config": arch}
    elif args.select_epochs > 0:
        selection = select_architecture(
            node_dim, edge_dim, out_dim, graphs["train"], graphs["val"], settings,
            args.select_epochs, args.select_minutes, args.seed, device, offset, scale, grid, graphs["val"],
            progress=not args.quiet,
        )
        arch = ARCH_CANDIDATES[selection["chosen"]]
    else:
        arch = dict(DEFAULT_ARCH)
        if args.arch:
            arch = dict(ARCH_CANDIDATES[args.arch])
        selection = {"performed": False, "chosen_config": arch}
        prior = Path(args.selection_from) if args.selection_from else None
        if prior is not None and prior.exists():
            selection = json.loads(prior.read_text())["architecture_selection"]
            arch = ARCH_CANDIDATES[selection["chosen"]]
    for key in ("hidden", "steps"):
        if getattr(args, key) is not None and key in arch:
            arch = {**arch, key: getattr(args, key)}
    net_config = {"node_dim": node_dim, "edge_dim": edge_dim, "out_dim": out_dim, **arch}

    # ---- ensemble -----------------------------------------------------------------------
    done_states: list[dict[str, torch.Tensor]] = list(resume["done"]) if resume else []
    summaries: list[dict[str, Any]] = list(resume["summaries"]) if resume else []
    for m in range(len(done_states), args.ensemble):
        member_seed = args.seed + 1000 * m
        extra = {
            "model_name": args.model,
            "grid": grid.tolist(),
            "arch": arch,
            "selection": _jsonable(selection),
            "done": done_states,
            "summaries": summaries,
            "member": m,
        }
        rs = resume["current"] if (resume is not None and resume.get("member") == m) else None
        if arch.get("family", "mpnn") == "mpnn":
            state, summary = train_member(
                net_config, graphs["train"], graphs["val"], settings, member_seed, device, offset,
                scale, checkpoint=ckpt_path, checkpoint_extra=extra, resume_state=rs,
                desc=f"{name} member {m + 1}/{args.ensemble}", progress=not args.quiet,
            )
        else:  # pre-built batches, CPU-time budget; resumable per member (via the checkpoint below)
            from models.fit import train_family_member

            net, summary, _ = train_family_member(
                net_config, graphs["train"], graphs["val"], offset, scale, seed=member_seed,
                batch_size=settings.batch_size, max_seconds=60 * settings.max_minutes_per_member,
                lr=settings.lr, patience=settings.patience, max_epochs=settings.epochs,
                init_state=pretrained_member(args.init_from, m) if args.init_from else None,
            )
            state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            if not args.quiet:
                print(f"{name} member {m + 1}/{args.ensemble}: {summary['epochs_run']} epochs, "
                      f"best val MSE {summary['best_val_mse']:.3e}, {summary['stopped']}", flush=True)
        resume = None
        done_states.append(state)
        summaries.append({k: v for k, v in summary.items() if k != "history"} | {"seed": member_seed, "history": summary["history"]})
        _atomic_save(
            {
                "model_name": args.model, "grid": grid.tolist(), "arch": arch,
                "selection": _jsonable(selection), "done": done_states, "summaries": summaries,
                "member": m + 1, "current": None,
            },
            ckpt_path,
        )

    members = []
    for state in done_states:
        net = build_net(net_config).to(device)
        net.load_state_dict(state)
        members.append(net)

    # ---- calibration on validation (material level, what the predictor returns) ---------
    val = evaluate(members, site["val"], offset, scale, device)
    z = (val["mat_true"] - val["mat_mean"]) / val["mat_std"]
    calibration = float(np.sqrt(np.mean(z**2)))

    # ---- test, once ----------------------------------------------------------------------
    test = evaluate(members, site["test"], offset, scale, device, calibration) if site["test"].graphs else None
    val = evaluate(members, site["val"], offset, scale, device, calibration)

    ensemble = XASEnsemble(net_config, members=len(members), offset=offset, scale=scale, calibration=calibration)
    for target, state in zip(ensemble.members, done_states):
        target.load_state_dict(state)
    builder_config = builder.config()
    config = {
        "format": "steered-xas-ensemble/1",
        "name": name,
        "model": args.model,
        "element": spec["element"],
        "edge": spec["edge"],
        "kind": spec["kind"],
        "energies": grid.tolist(),
        "net": net_config,
        "members": len(members),
        "graph_builder": _jsonable(builder_config),
        "normalisation": {"offset": offset.tolist(), "scale": scale},
        "calibration": calibration,
        "elements": elements,
    }
    weights_path = out / f"{name}.pt"
    torch.save({"config": config, "state_dict": {k: v.cpu() for k, v in ensemble.state_dict().items()}}, weights_path)
    sha = file_sha256(weights_path)

    def metrics_of(res, level):
        if res is None:
            return None
        true, mean, std = res[f"{level}_true"], res[f"{level}_mean"], res[f"{level}_std"]
        return {**_jsonable(spectrum_metrics(grid, true, mean)), "uncertainty": coverage(true, mean, std)}

    gi = git_state()
    card = {
        "name": name,
        "description": spec["description"],
        "credits": spec["credits"],
        "element": spec["element"],
        "edge": spec["edge"],
        "kind": spec["kind"],
        "weights_file": weights_path.name,
        "weights_sha256": sha,
        "weights_bytes": weights_path.stat().st_size,
        "data": {
            "source": " + ".join(map(str, data_paths)),
            "files": data_files(data_paths),
            "records": len(records),
            "sites": sum(len(v.graphs) for v in site.values()),
            "read_report": _report_dict(report),
            "graph_report": {k: _report_dict(v.report) for k, v in site.items()},
            "limit": args.limit,
        },
        "split": {
            "method": "models.readers.split_ids by material/molecule id, fractions (0.8, 0.1, 0.1); "
                      "a hash of the id alone, so a record's split never changes when data are added",
            "seed": args.seed,
            **{f"{k}_records": len(parts[k]) for k in parts},
            **{f"{k}_sites": len(site[k].graphs) for k in site},
        },
        "energy_grid": {"points": len(grid), "min_eV": float(grid[0]), "max_eV": float(grid[-1]),
                        "step_eV": float(grid[1] - grid[0]) if len(grid) > 1 else None},
        "output": "normalised mu on the energy grid; std = calibrated 1-sigma predictive uncertainty",
        "graph_builder": _jsonable(builder_config),
        "hyper_parameters": {"net": net_config, "ensemble_members": len(members),
                             "training": settings.__dict__, "loss": "beta-Gaussian NLL (beta=%.2f)" % settings.beta_nll,
                             "target_normalisation": "(mu - train mean spectrum) / scalar train std",
                             "init_from": ({"file": Path(args.init_from).name, "sha256": file_sha256(args.init_from)}
                                           if args.init_from else None)},
        "architecture_selection": _jsonable(selection),
        "uncertainty": {
            "method": "deep ensemble of mean-variance networks; total var = mean member var + var of member means; "
                      "site stds averaged with the site weights (errors treated as fully correlated); "
                      "std multiplied by a calibration factor so validation z-scores have unit RMS "
                      "(material/molecule level)",
            "calibration_factor": calibration,
            "validation_coverage": coverage(val["mat_true"], val["mat_mean"], val["mat_std"]),
            "test_coverage": coverage(test["mat_true"], test["mat_mean"], test["mat_std"]) if test else None,
            "test_coverage_site": coverage(test["site_true"], test["site_mean"], test["site_std"]) if test else None,
        },
        "validation_metrics": {"material": metrics_of(val, "mat"), "site": metrics_of(val, "site")},
        "test_metrics": {"material": metrics_of(test, "mat"), "site": metrics_of(test, "site"),
                         "note": "material/molecule spectra are multiplicity-weighted averages over sites"},
        "training": {
            "members": [{k: v for k, v in s.items() if k != "history"} for s in summaries],
            "histories": [[{k: round(v, 6) if isinstance(v, float) else v for k, v in h.items()} for h in s["history"]] for s in summaries],
            "data_preparation_seconds": round(t_data, 1),
            "wall_seconds": round(time.perf_counter() - t_start, 1),
            "wall_seconds_note": "this invocation only (a resumed run adds the earlier invocations' member times, see members[].seconds)",
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
        "seed": args.seed,
        "git": gi,
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "torch_geometric": _version("torch_geometric"), "numpy": np.__version__},
        "command": " ".join(["xas-train", *sys.argv[1:]]) if args.record_command else None,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / f"{name}.json").write_text(json.dumps(_jsonable(card), indent=1) + "\n")
    return card


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # pragma: no cover - reporting only
        return None


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``xas-train``."""
    p = argparse.ArgumentParser(prog="xas-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=sorted(MODEL_SPECS), help="which model to train")
    p.add_argument("--data", action="append", default=None,
                   help="data set path, repeatable for QM9 files read as one set, earlier files winning "
                        "(default: the shared set, plus the project's extension under data/ for o-k and n-k)")
    p.add_argument("--out", default="runs", help="output folder for checkpoint, weights and card")
    p.add_argument("--name", default=None, help="file stem of the outputs (default: the model name)")
    p.add_argument("--epochs", type=int, default=200, help="maximum epochs per member")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue from <name>.ckpt.pt")
    p.add_argument("--ensemble", type=int, default=3, help="number of ensemble members")
    p.add_argument("--limit", type=int, default=None, help="read only the first N records (smoke runs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--patience", type=int, default=20, help="early-stopping patience (epochs)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="wall-time limit per member (0: none)")
    p.add_argument("--select-epochs", type=int, default=0,
                   help="compare the candidate architectures on validation with runs of this many epochs")
    p.add_argument("--select-minutes", type=float, default=0.0,
                   help="wall-time limit of each candidate's selection run (0: none)")
    p.add_argument("--selection-from", default=None, help="reuse the architecture_selection of a model card")
    p.add_argument("--arch", default=None, choices=sorted(ARCH_CANDIDATES))
    p.add_argument("--family", default="mpnn", choices=sorted(FAMILY_ARCH),
                   help="model family (mpnn: models.gnn.XASNet; painn; acsf: symmetry functions + MLP)")
    p.add_argument("--init-from", default=None, metavar="WEIGHTS",
                   help="start member m from member m of this weights file (e.g. o-k.pt to fine-tune n-k; "
                        "families other than mpnn)")
    p.add_argument("--comparison-from", default=None, metavar="JSON",
                   help="benchmarks/results/model_families.json: copy the family comparison, learning curve "
                        "and extrapolation of this edge into the card")
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-record-command", dest="record_command", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xas-train``."""
    args = build_parser().parse_args(argv)
    card = run(args)
    tm = card["test_metrics"]["material"] or {}
    print(json.dumps({"weights": str(Path(args.out) / f"{card['name']}.pt"),
                      "sha256": card["weights_sha256"],
                      "test_material": {k: tm.get(k) for k in ("mse", "median_pearson", "peaks_within_1eV")},
                      "calibration": card["uncertainty"]["calibration_factor"]}, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
