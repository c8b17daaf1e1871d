"""Continue training a shipped ensemble from its weights (``python -m models.finetune``).

``xas-train`` members that stopped on a time limit while still improving can be trained further
without starting again, any family of :func:`models.gnn.build_net` (read from the weights'
``config["net"]``: the MPNN ``cu-k``, the PaiNN ``o-k`` and ``n-k``): each member resumes from its
shipped weights on the same data, split, energy grid, graph builder, loss and target
normalisation, with a fresh AdamW at ``--lr`` and early stopping on validation MSE; a member's
weights are replaced only by an epoch that beats its shipped validation MSE. The uncertainty
calibration is then refitted on validation and the test split is evaluated once; the model card
keeps the original training record and adds a ``fine_tune`` section.

``--checkpoint`` writes the run's state every epoch and resumes it; ``--finish`` writes weights and
card from a checkpoint as it stands. Examples (the first made the earlier ``cu-k``; the second, with
``--finish`` once member 0 had converged, the shipped one)::

    python -m models.finetune --model cu-k --epochs 13,9,9 --lr 1e-3 --out runs/cu-k-ft --threads 1
    python -m models.finetune --model cu-k --epochs 1000,1000,1000 --lr 1e-3 --patience 12 --lr-patience 4 \
        --calibrate coverage --checkpoint runs/cu-k.ckpt.pt --out runs/cu-k-ft --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from models import training as tr
from models.gnn import XASEnsemble, build_net
from models.provenance import file_sha256, git_state


def _member_states(ensemble: XASEnsemble) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in ensemble.members]


def finetune(
    model: str,
    out: Path,
    epochs: Sequence[int] = (),
    minutes: Sequence[float] = (),
    lr: float = 1e-3,
    weights: Path | None = None,
    data: Sequence[Path] | None = None,
    progress: bool = False,
    patience: int | None = None,
    lr_patience: int | None = None,
    checkpoint: Path | None = None,
    calibrate: str = "rms",
    finish: bool = False,
    derivative_loss: float = 0.0,
) -> dict[str, Any]:
    """Fine-tune every member of a trained ensemble and write ``<out>/<model>.pt`` + card.

    Parameters
    ----------
    model
        Key of :data:`models.training.MODEL_SPECS`.
    out
        Output folder.
    epochs, minutes
        Per member: further epochs (0 leaves a member as it is) and/or a wall-time limit in
        minutes (0: none). At least one of them must be given; a shorter list is padded with 0.
    lr
        Learning rate of the fresh AdamW.
    weights
        The weights to start from (default ``models/weights/<model>.pt``, its card beside it).
    data
        Data paths (default :func:`models.training.default_data_paths`); the energy grid they give
        must be the shipped model's.
    progress
        Progress bars.
    patience, lr_patience
        Early stopping and learning-rate-plateau patience in epochs (default
        :class:`models.training.TrainSettings`'s).
    checkpoint
        A file written after every epoch (the finished members and the state of the one in
        training). If it exists when the run starts, the run continues from it: finished members
        are kept and the current one resumes at its next epoch. A checkpoint written for other
        weights, another model or another learning rate is refused.
    finish
        Stop the run in ``checkpoint`` where it is: the member in training keeps its best
        validation state so far (``stopped: "interrupted"``), members not yet started keep their
        weights, and the ensemble is calibrated, evaluated and written as usual.
    calibrate
        How the std calibration factor is refitted on validation (material level):
        :func:`models.training.fit_calibration` ``"rms"`` (unit RMS z, as ``xas-train``) or
        ``"coverage"`` (1- and 2-sigma coverages as close as possible to 0.683 and 0.954).
    derivative_loss
        Weight ``lam`` of the slope term added to the beta-NLL,
        ``lam * mean((d mu_pred/dE - d mu/dE)**2)`` in standardised units
        (:func:`models.training.member_loss`, :func:`models.gnn.derivative_mse`); 0 (default) trains
        on the beta-NLL alone. Recorded in the checkpoint and the card; a checkpoint written with
        another value is refused.

    Returns
    -------
    dict
        The new model card.

    Raises
    ------
    ValueError
        The data give another energy grid than the weights (other data than the model saw), or
        ``checkpoint`` belongs to another run, or ``finish`` is given without an existing one.
    """
    from models.graphs import GraphBuilder
    from models.readers import split_ids
    from models.spectra import common_grid

    t_start = time.perf_counter()
    weights = Path(weights) if weights else Path(__file__).with_name("weights") / f"{model}.pt"
    payload = torch.load(weights, map_location="cpu", weights_only=True)
    cfg = payload["config"]
    card0 = json.loads(weights.with_suffix(".json").read_text())
    n_members = int(cfg["members"])
    epochs = list(epochs) + [0] * (n_members - len(epochs))
    minutes = list(minutes) + [0.0] * (n_members - len(minutes))
    spec = tr.MODEL_SPECS[model]
    paths = [Path(p) for p in data] if data else tr.default_data_paths(model)
    records, report = tr.read_records(model, paths)
    split = split_ids([str(r.record_id) for r in records], seed=int(card0["seed"]))
    by_id = {str(r.record_id): r for r in records}
    parts = {k: [by_id[i] for i in split[k]] for k in ("train", "val", "test")}
    grid = np.asarray(common_grid(parts["train"], spec["grid_points"]), dtype=float)
    if grid.shape != (len(cfg["energies"]),) or not np.allclose(grid, cfg["energies"]):
        raise ValueError(f"{' + '.join(map(str, paths))}: the training split gives another energy grid than "
                         f"{weights} was trained on; fine-tune on the data the model saw")
    builder = GraphBuilder.from_config(cfg["graph_builder"])
    site = {k: tr.make_site_data(parts[k], builder, grid, progress=progress) for k in parts}
    graphs = {k: [tr._strip(g) for g in v.graphs] for k, v in site.items()}
    t_data = time.perf_counter() - t_start

    device = torch.device("cpu")
    net_config = cfg["net"]
    offset = torch.tensor(cfg["normalisation"]["offset"], dtype=torch.float32)
    scale = float(cfg["normalisation"]["scale"])
    shipped = XASEnsemble(net_config, members=n_members)
    shipped.load_state_dict(payload["state_dict"])
    patience = tr.TrainSettings.patience if patience is None else int(patience)
    lr_patience = tr.TrainSettings.lr_patience if lr_patience is None else int(lr_patience)
    run_key = {"model_name": model, "from_weights_sha256": file_sha256(weights), "lr": float(lr),
               "epochs": [int(e) for e in epochs], "minutes": [float(x) for x in minutes],
               "patience": patience, "lr_patience": lr_patience, "derivative_loss": float(derivative_loss)}
    saved = None
    if checkpoint is not None and Path(checkpoint).exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        theirs = {k: saved.get(k) for k in run_key}
        theirs["derivative_loss"] = float(saved.get("derivative_loss", 0.0))  # written before the option: 0
        if theirs["derivative_loss"] != run_key["derivative_loss"]:
            raise ValueError(f"checkpoint {checkpoint} was written with --derivative-loss {theirs['derivative_loss']:g}, "
                             f"not {run_key['derivative_loss']:g}; resume it with --derivative-loss "
                             f"{theirs['derivative_loss']:g}, or give another --checkpoint")
        if theirs != run_key:
            raise ValueError(f"checkpoint {checkpoint} belongs to another run ({theirs}), not to this one "
                             f"({run_key}); remove it or give another --checkpoint")
    if finish and saved is None:
        raise ValueError(f"--finish needs the checkpoint of a run, and {checkpoint} does not exist")
    states = list(saved["done"]) if saved else []
    summaries = list(saved["summaries"]) if saved else []
    for m, state0 in enumerate(_member_states(shipped)):
        if m < len(states):
            continue  # finished in an earlier invocation (checkpoint)
        net = build_net(net_config)
        net.load_state_dict(state0)
        val0 = tr._val_mse(net, graphs["val"], device, offset, scale)
        if not epochs[m] and not minutes[m]:
            states.append(state0)
            summaries.append({"member": m, "val_mse_before": val0, "epochs": 0})
            continue
        last = int(card0["training"]["histories"][m][-1]["epoch"])
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=tr.TrainSettings.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=tr.TrainSettings.lr_factor, patience=lr_patience, min_lr=tr.TrainSettings.min_lr)
        resume = {"model": state0, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                  "best_state": state0, "epoch": last, "best_val": val0, "bad_epochs": 0, "history": [],
                  "elapsed": 0.0}
        if saved is not None and saved.get("member") == m and saved.get("current") is not None:
            resume = saved["current"]
            val0 = float(saved["val_mse_before"])
        if finish:  # the member in training keeps its best state so far; later members stay as they were
            history = list(resume["history"])
            states.append(resume["best_state"])
            summaries.append({"member": m, "seed": int(card0["training"]["members"][m]["seed"]) + 7,
                              "val_mse_before": val0, "best_val_mse": float(resume["best_val"]),
                              "epochs": len(history), "stopped": "interrupted" if history else "not_started",
                              "seconds": round(float(resume.get("elapsed", 0.0)), 1),
                              "history": [{k: round(v, 6) if isinstance(v, float) else v for k, v in h.items()}
                                          for h in history]})
            continue
        settings = tr.TrainSettings(epochs=last + 1 + (epochs[m] or 10_000), lr=lr,
                                    max_minutes_per_member=float(minutes[m]), patience=patience,
                                    lr_patience=lr_patience, derivative_loss=float(derivative_loss))
        seed = int(card0["training"]["members"][m]["seed"]) + 7
        extra = {**run_key, "done": states, "summaries": summaries, "member": m, "val_mse_before": val0}
        state, summary = tr.train_member(net_config, graphs["train"], graphs["val"], settings, seed, device,
                                         offset, scale, checkpoint=Path(checkpoint) if checkpoint else None,
                                         checkpoint_extra=extra, resume_state=resume,
                                         desc=f"{model} fine-tune {m + 1}", progress=progress)
        states.append(state)
        summaries.append({"member": m, "seed": seed, "val_mse_before": val0, "best_val_mse": summary["best_val_mse"],
                          "epochs": summary["epochs_run"], "stopped": summary["stopped"],
                          "seconds": round(summary["seconds"], 1),
                          "history": [{k: round(v, 6) if isinstance(v, float) else v for k, v in h.items()}
                                      for h in summary["history"]]})
        if checkpoint is not None:  # this member is finished: an interruption from here on skips it
            tr._atomic_save({**run_key, "done": states, "summaries": summaries, "member": m + 1, "current": None},
                            Path(checkpoint))

    members = []
    for state in states:
        net = build_net(net_config)
        net.load_state_dict(state)
        members.append(net)
    val = tr.evaluate(members, site["val"], offset, scale, device)
    calibration = tr.fit_calibration(val["mat_true"], val["mat_mean"], val["mat_std"], calibrate)
    test = tr.evaluate(members, site["test"], offset, scale, device, calibration)
    val = tr.evaluate(members, site["val"], offset, scale, device, calibration)
    ensemble = XASEnsemble(net_config, members=n_members, offset=offset, scale=scale, calibration=calibration)
    for target, state in zip(ensemble.members, states):
        target.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    path = out / weights.name
    torch.save({"config": {**cfg, "calibration": calibration},
                "state_dict": {k: v.cpu() for k, v in ensemble.state_dict().items()}}, path)
    card = _card(card0, path, grid, val, test, calibration, summaries, paths, report, site, lr, epochs, minutes,
                 weights, t_data, time.perf_counter() - t_start)
    card["fine_tune"].update({"patience": patience, "lr_patience": lr_patience,
                              "resumed_from_checkpoint": saved is not None,
                              "derivative_loss": float(derivative_loss),
                              "loss": "beta-Gaussian NLL (beta=%.2f)" % tr.TrainSettings.beta_nll
                              + (" + %g * mean((d mu_pred - d mu)^2), first differences on the grid, standardised "
                                 "units (models.training.member_loss)" % derivative_loss if derivative_loss else "")})
    if calibrate != "rms":
        card["uncertainty"]["method"] = (
            card["uncertainty"]["method"].split("; std multiplied by")[0]
            + "; std multiplied by a calibration factor chosen on validation (material level) so that the larger "
              "deviation of the 1-sigma/2-sigma coverages from 0.683/0.954 is smallest "
              "(models.training.fit_calibration 'coverage')")
    path.with_suffix(".json").write_text(json.dumps(tr._jsonable(card), indent=1) + "\n")
    return card


def _card(card0, path, grid, val, test, calibration, summaries, paths, report, site, lr, epochs, minutes,
          weights, t_data, wall) -> dict[str, Any]:
    from models.spectra import spectrum_metrics

    def metrics_of(res, level):
        true, mean, std = res[f"{level}_true"], res[f"{level}_mean"], res[f"{level}_std"]
        return {**tr._jsonable(spectrum_metrics(grid, true, mean)), "uncertainty": tr.coverage(true, mean, std)}

    card = copy.deepcopy(card0)
    card["weights_sha256"] = file_sha256(path)
    card["weights_bytes"] = path.stat().st_size
    card["data"].update({"source": " + ".join(map(str, paths)), "files": tr.data_files(paths),
                         "read_report": tr._report_dict(report),
                         "graph_report": {k: tr._report_dict(v.report) for k, v in site.items()}})
    card["uncertainty"].update({
        "calibration_factor": calibration,
        "validation_coverage": tr.coverage(val["mat_true"], val["mat_mean"], val["mat_std"]),
        "test_coverage": tr.coverage(test["mat_true"], test["mat_mean"], test["mat_std"]),
        "test_coverage_site": tr.coverage(test["site_true"], test["site_mean"], test["site_std"]),
    })
    card["validation_metrics"] = {"material": metrics_of(val, "mat"), "site": metrics_of(val, "site")}
    before = card0["test_metrics"]
    card["test_metrics"] = {"material": metrics_of(test, "mat"), "site": metrics_of(test, "site"),
                            "note": before.get("note")}
    if card0.get("fine_tune"):  # fine-tuned before: keep that record too (newest first)
        card["earlier_fine_tunes"] = [card0["fine_tune"], *card0.get("earlier_fine_tunes", [])]
    card["fine_tune"] = {
        "method": "each member resumed from the weights below with a fresh AdamW; early stopping on validation "
                  "MSE; a member keeps its earlier weights unless an epoch beats them; calibration refitted",
        "from_weights_sha256": card0["weights_sha256"],
        "from_test_metrics_material": before.get("material"),
        "lr": lr, "epochs_requested": epochs, "minutes_limit": minutes,
        "members": summaries,
        "data_preparation_seconds": round(t_data, 1), "wall_seconds": round(wall, 1),
        "threads": torch.get_num_threads(),
    }
    card["git"] = git_state()
    card["notes"] = " ".join(x for x in (card0.get("notes"), f"Fine-tuned from weights {card0['weights_sha256'][:12]}... "
                             "(see fine_tune); training.members and histories are the original run's.") if x)
    card["command"] = " ".join(["python -m models.finetune", *sys.argv[1:]]) if sys.argv[1:] else None
    card["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return card


def build_parser() -> argparse.ArgumentParser:
    """Command line of ``python -m models.finetune``."""
    p = argparse.ArgumentParser(prog="python -m models.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=sorted(tr.MODEL_SPECS))
    p.add_argument("--out", required=True, type=Path, help="output folder for weights and card")
    p.add_argument("--epochs", default="", help="further epochs per member, comma-separated (e.g. 13,9,9)")
    p.add_argument("--minutes", default="", help="wall-time limit per member, comma-separated (0: none)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weights", type=Path, default=None, help="weights to start from (default: the shipped ones)")
    p.add_argument("--data", action="append", default=None, help="data paths (default: the model's data)")
    p.add_argument("--patience", type=int, default=None,
                   help=f"early stopping: epochs without a better validation MSE (default {tr.TrainSettings.patience})")
    p.add_argument("--lr-patience", type=int, default=None,
                   help=f"epochs without improvement before the learning rate halves (default {tr.TrainSettings.lr_patience})")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="file written every epoch; an existing one is resumed (same weights, model, lr, epochs)")
    p.add_argument("--calibrate", choices=tr.CALIBRATIONS, default="rms",
                   help="refit the std factor on validation for unit RMS z (rms) or for 1/2-sigma coverage (coverage)")
    p.add_argument("--finish", action="store_true",
                   help="stop the run in --checkpoint where it is (best state so far) and write weights and card")
    p.add_argument("--derivative-loss", type=float, default=0.0, metavar="LAM",
                   help="add LAM * mean((dmu_pred/dE - dmu/dE)^2) (standardised units, per grid step) to the "
                        "beta-NLL (default 0: the NLL alone); a checkpoint is resumed only with its own LAM")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints the new weights' sha256 and test metrics."""
    args = build_parser().parse_args(argv)
    try:
        epochs = [int(x) for x in args.epochs.split(",") if x.strip()]
        minutes = [float(x) for x in args.minutes.split(",") if x.strip()]
    except ValueError:
        build_parser().error(f"--epochs/--minutes must be comma-separated numbers, got {args.epochs!r}/{args.minutes!r}")
    if args.derivative_loss < 0:
        build_parser().error(f"--derivative-loss must be >= 0, got {args.derivative_loss}")
    if not any(epochs) and not any(minutes):
        build_parser().error("give --epochs and/or --minutes for at least one member")
    torch.set_num_threads(max(1, args.threads))
    try:
        card = finetune(args.model, args.out, epochs, minutes, args.lr, args.weights, args.data, not args.quiet,
                        patience=args.patience, lr_patience=args.lr_patience, checkpoint=args.checkpoint,
                        calibrate=args.calibrate, finish=args.finish, derivative_loss=args.derivative_loss)
    except (ValueError, OSError) as exc:
        print(f"models.finetune: error: {exc}", file=sys.stderr)
        return 2
    tm = card["test_metrics"]["material"]
    print(json.dumps({"weights_sha256": card["weights_sha256"],
                      "test_material": {k: tm[k] for k in ("mse", "median_pearson", "peaks_within_1eV", "edge_mae_eV")},
                      "test_coverage": {k: card["uncertainty"]["test_coverage"][k] for k in ("within_1sigma", "within_2sigma")}},
                     indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
