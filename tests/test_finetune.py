"""models.finetune: members resume from trained weights; the card keeps the old record and adds one.

A 2-member o-k ensemble trained for 2 epochs on 24 molecules of the shared O set stands in for a
shipped model (about a minute on one thread).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torch_geometric")

from models import finetune, training  # noqa: E402
from models.provenance import file_sha256  # noqa: E402


@pytest.fixture(scope="module")
def small_run(qm9_o_k_jsonl, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    data = root / "o24.jsonl"
    data.write_text("".join(qm9_o_k_jsonl.open().readlines()[:24]))
    run = root / "run"
    args = ["--model", "o-k", "--data", str(data), "--epochs", "2", "--ensemble", "2", "--out", str(run),
            "--device", "cpu", "--quiet", "--threads", "1"]
    assert training.main(args) == 0
    return data, run / "o-k.pt", root


def test_finetune_continues_members_and_records_it(small_run):
    data, weights, root = small_run
    before = json.loads(weights.with_suffix(".json").read_text())
    card = finetune.finetune("o-k", root / "ft", epochs=[2], lr=1e-3, weights=weights, data=[data])
    out = root / "ft" / "o-k.pt"
    assert card["weights_sha256"] == file_sha256(out) != before["weights_sha256"]
    ft = card["fine_tune"]
    assert ft["from_weights_sha256"] == before["weights_sha256"]
    assert [m["epochs"] for m in ft["members"]] == [2, 0]
    assert [h["epoch"] for h in ft["members"][0]["history"]] == [2, 3]  # numbering continues
    assert ft["members"][0]["best_val_mse"] <= ft["members"][0]["val_mse_before"]
    assert card["training"] == before["training"]  # the original record is kept
    assert card["data"]["files"] == [{"path": str(data), "bytes": data.stat().st_size, "sha256": file_sha256(data)}]
    for key in ("mse", "median_pearson", "peaks_within_1eV", "edge_mae_eV"):
        assert key in card["test_metrics"]["material"]
    cov = card["uncertainty"]["validation_coverage"]
    assert cov["rms_z"] == pytest.approx(1.0, abs=1e-3)
    # the second member was left as it was
    old = torch.load(weights, weights_only=True)["state_dict"]
    new = torch.load(out, weights_only=True)["state_dict"]
    keys = [k for k in old if k.startswith("members.1.")]
    assert keys and all(torch.equal(old[k], new[k]) for k in keys)
    assert not all(torch.equal(old[k], new[k]) for k in old if k.startswith("members.0."))
    # fine-tuning the fine-tuned weights keeps the first fine-tune's record
    again = finetune.finetune("o-k", root / "ft2", epochs=[1], lr=1e-3, weights=out, data=[data])
    assert again["fine_tune"]["from_weights_sha256"] == card["weights_sha256"]
    assert again["earlier_fine_tunes"] == [json.loads(out.with_suffix(".json").read_text())["fine_tune"]]


def test_finetune_refuses_other_data_and_bad_arguments(small_run, capsys):
    data, weights, root = small_run
    shifted = root / "shifted.jsonl"
    lines = [json.loads(x) for x in data.read_text().splitlines()]
    for doc in lines:
        for site in doc["sites"]:
            site["omega_eV"] = [e + 5.0 for e in site["omega_eV"]]
    shifted.write_text("".join(json.dumps(d) + "\n" for d in lines))
    with pytest.raises(ValueError, match="another energy grid"):
        finetune.finetune("o-k", root / "x", epochs=[1], weights=weights, data=[shifted])
    code = finetune.main(["--model", "o-k", "--out", str(root / "x"), "--epochs", "1",
                          "--weights", str(weights), "--data", str(shifted), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("models.finetune: error:")
    with pytest.raises(SystemExit):
        finetune.main(["--model", "o-k", "--out", str(root / "x")])  # nothing to do


def test_finetune_checkpoint_resumes_and_finishes(small_run, monkeypatch):
    data, weights, root = small_run
    ckpt = root / "ft.ckpt.pt"
    real = training.train_member

    def one_epoch_then_crash(net_config, train, val, settings, *args, **kwargs):
        settings.epochs = int(kwargs["resume_state"]["epoch"]) + 2  # exactly one more epoch
        real(net_config, train, val, settings, *args, **kwargs)
        raise KeyboardInterrupt  # killed after the epoch's checkpoint was written

    monkeypatch.setattr(training, "train_member", one_epoch_then_crash)
    with pytest.raises(KeyboardInterrupt):
        finetune.finetune("o-k", root / "ck", epochs=[3, 2], lr=1e-3, weights=weights, data=[data], checkpoint=ckpt)
    monkeypatch.setattr(training, "train_member", real)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["member"] == 0 and len(saved["current"]["history"]) == 1 and saved["done"] == []
    with pytest.raises(ValueError, match="belongs to another run"):
        finetune.finetune("o-k", root / "ck", epochs=[3, 2], lr=2e-3, weights=weights, data=[data], checkpoint=ckpt)
    assert saved["derivative_loss"] == 0.0  # the loss setting is part of the checkpoint
    with pytest.raises(ValueError, match=r"written with --derivative-loss 0, not 0\.5"):
        finetune.finetune("o-k", root / "ck", epochs=[3, 2], lr=1e-3, weights=weights, data=[data], checkpoint=ckpt,
                          derivative_loss=0.5)
    with pytest.raises(ValueError, match="needs the checkpoint"):
        finetune.finetune("o-k", root / "ck", epochs=[3, 2], weights=weights, data=[data],
                          checkpoint=root / "missing.pt", finish=True)

    # --finish: the interrupted member keeps its best state, the next one is left as it was
    card = finetune.finetune("o-k", root / "fin", epochs=[3, 2], lr=1e-3, weights=weights, data=[data],
                             checkpoint=ckpt, finish=True)
    assert [m["stopped"] for m in card["fine_tune"]["members"]] == ["interrupted", "not_started"]
    assert card["fine_tune"]["resumed_from_checkpoint"] is True
    assert card["fine_tune"]["derivative_loss"] == 0.0
    old = torch.load(weights, weights_only=True)["state_dict"]
    fin = torch.load(root / "fin" / "o-k.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(old[k], fin[k]) for k in old if k.startswith("members.1."))

    # a checkpoint written before --derivative-loss existed (no such key) is a run without the term
    legacy = torch.load(ckpt, weights_only=True)
    del legacy["derivative_loss"]
    torch.save(legacy, ckpt)
    # resuming continues member 0 at its next epoch, then trains member 1
    card = finetune.finetune("o-k", root / "res", epochs=[3, 2], lr=1e-3, weights=weights, data=[data], checkpoint=ckpt)
    first, second = card["fine_tune"]["members"]
    assert [h["epoch"] for h in first["history"]] == [2, 3, 4] and len(second["history"]) == 2
    assert torch.load(ckpt, weights_only=True)["member"] == 2


def test_coverage_calibration_fixes_heavy_tails():
    import numpy as np

    rng = np.random.default_rng(0)
    err = rng.standard_t(5, size=(400, 50))  # heavy tails: unit-RMS bands are too wide at 1 sigma
    mean, std = np.zeros_like(err), np.ones_like(err)

    def deviations(factor):
        cov = training.coverage(err, mean, factor * std)
        return abs(cov["within_1sigma"] - 0.6827), abs(cov["within_2sigma"] - 0.9545)

    rms = training.fit_calibration(err, mean, std, "rms")
    cov = training.fit_calibration(err, mean, std, "coverage")
    assert rms == pytest.approx(float(np.sqrt(np.mean(err**2))))
    assert deviations(rms)[0] > 0.05 and max(deviations(cov)) < 0.03 and cov < rms
    gauss = rng.standard_normal((400, 50))
    assert training.fit_calibration(gauss, mean, std, "coverage") == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError, match="calibration method 'median'"):
        training.fit_calibration(err, mean, std, "median")


def test_member_loss_derivative_term():
    from models.gnn import derivative_mse, gaussian_nll

    gen = torch.Generator().manual_seed(0)
    mean, y = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    std = 0.1 + torch.rand(3, 8, generator=gen)
    # lam = 0 is the loss as it was: the beta-NLL alone, bit for bit
    assert torch.equal(training.member_loss(mean, std, y, 0.5, 0.0), gaussian_nll(mean, std, y, beta=0.5))
    # lam > 0 adds lam times the mean squared error of the first differences along energy
    ramp, flat = torch.arange(8.0).repeat(2, 1), torch.zeros(2, 8)  # slopes 1 and 0: the term is 1
    assert float(derivative_mse(flat, ramp)) == pytest.approx(1.0)
    assert float(derivative_mse(flat + 3.0, flat)) == 0.0  # an offset has no slope error
    ones = torch.ones(2, 8)
    nll = float(gaussian_nll(flat, ones, ramp, beta=0.5))
    assert float(training.member_loss(flat, ones, ramp, 0.5, 2.5)) == pytest.approx(nll + 2.5)
    manual = ((mean[:, 1:] - mean[:, :-1]) - (y[:, 1:] - y[:, :-1])).pow(2).mean()
    assert float(training.member_loss(mean, std, y, 0.5, 0.7)) == pytest.approx(
        float(gaussian_nll(mean, std, y, beta=0.5) + 0.7 * manual))


def test_finetune_derivative_loss_trains_and_is_recorded(small_run):
    data, weights, root = small_run
    plain = finetune.finetune("o-k", root / "d0", epochs=[1], lr=1e-3, weights=weights, data=[data])
    slope = finetune.finetune("o-k", root / "d1", epochs=[1], lr=1e-3, weights=weights, data=[data],
                              derivative_loss=5.0)
    assert plain["fine_tune"]["derivative_loss"] == 0.0 and "d mu_pred" not in plain["fine_tune"]["loss"]
    assert slope["fine_tune"]["derivative_loss"] == 5.0 and "5 * mean((d mu_pred - d mu)^2)" in slope["fine_tune"]["loss"]
    a = torch.load(root / "d0" / "o-k.pt", weights_only=True)["state_dict"]
    b = torch.load(root / "d1" / "o-k.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("members.0."))  # same seed, other loss
    with pytest.raises(SystemExit):
        finetune.main(["--model", "o-k", "--out", str(root / "x"), "--epochs", "1", "--derivative-loss", "-1"])


def test_finetune_painn_early_stops_and_writes_weights_the_predictor_loads(qm9_o_k_jsonl, tmp_path):
    """The PaiNN family (o-k, n-k): members rebuilt from the weights' config, stopped on validation."""
    from models.predictor import load_predictor

    data = tmp_path / "o16.jsonl"
    data.write_text("".join(qm9_o_k_jsonl.open().readlines()[:16]))
    args = ["--model", "o-k", "--data", str(data), "--epochs", "1", "--ensemble", "2", "--family", "painn",
            "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet", "--threads", "1"]
    assert training.main(args) == 0
    weights = tmp_path / "run" / "o-k.pt"
    card = finetune.finetune("o-k", tmp_path / "ft", epochs=[40, 0], lr=5e-2, weights=weights, data=[data],
                             patience=1, lr_patience=1, checkpoint=tmp_path / "ft.ckpt.pt", calibrate="coverage")
    first = card["fine_tune"]["members"][0]
    assert first["stopped"] == "early_stopping" and 1 <= first["epochs"] < 40  # on validation, not the cap
    assert card["hyper_parameters"]["net"]["family"] == "painn"
    old = torch.load(weights, weights_only=True)["state_dict"]
    new = torch.load(tmp_path / "ft" / "o-k.pt", weights_only=True)["state_dict"]
    assert set(old) == set(new)
    changed = not all(torch.equal(old[k], new[k]) for k in old if k.startswith("members.0."))
    assert changed == (first["best_val_mse"] < first["val_mse_before"])  # replaced only by a better epoch
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith("members.1."))
    pred = load_predictor(tmp_path / "ft" / "o-k.pt", device="cpu")
    assert pred.predict(["OCC=O"]).mean.shape == (1, len(pred.energies))
