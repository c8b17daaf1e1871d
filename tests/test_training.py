"""xas-train: a 2-epoch smoke run writes checkpoint, weights and card; resuming continues exactly."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torch_geometric")
from torch_geometric.data import Data  # noqa: E402

from models import training  # noqa: E402
from models.gnn import XASNet, aggregate_sites, resolve_device  # noqa: E402
from models.provenance import file_sha256  # noqa: E402


def test_smoke_run_writes_card_and_checkpoint_then_resumes(qm9_o_k_jsonl, tmp_path):
    out = tmp_path / "run"
    args = ["--model", "o-k", "--data", str(qm9_o_k_jsonl), "--limit", "24", "--epochs", "2",
            "--ensemble", "1", "--out", str(out), "--device", "cpu", "--quiet", "--threads", "1"]
    assert training.main(args) == 0
    ckpt = out / "o-k.ckpt.pt"
    weights = out / "o-k.pt"
    card = json.loads((out / "o-k.json").read_text())
    assert ckpt.exists() and weights.exists()
    # everything loads without unpickling arbitrary objects
    state = torch.load(ckpt, weights_only=True)
    payload = torch.load(weights, weights_only=True)
    assert len(state["done"]) == 1 and state["member"] == 1
    assert card["weights_sha256"] == file_sha256(weights)
    assert card["split"]["train_records"] + card["split"]["val_records"] + card["split"]["test_records"] == 24
    assert card["training"]["members"][0]["epochs_run"] == 2
    assert payload["config"]["energies"][0] == card["energy_grid"]["min_eV"]
    for key in ("mse", "median_pearson", "peaks_within_1eV"):
        assert key in card["test_metrics"]["material"]
    cov = card["uncertainty"]["validation_coverage"]
    assert cov["rms_z"] == pytest.approx(1.0, abs=1e-3)  # calibrated on validation by construction
    assert card["versions"]["torch"] == torch.__version__
    assert "commit" in card["git"]

    # resume: the finished member is reused, only the second member is trained
    first_member = {k: v.clone() for k, v in state["done"][0].items()}
    args2 = ["--model", "o-k", "--data", str(qm9_o_k_jsonl), "--limit", "24", "--epochs", "2",
             "--ensemble", "2", "--out", str(out), "--device", "cpu", "--quiet", "--threads", "1",
             "--resume", str(ckpt)]
    assert training.main(args2) == 0
    state2 = torch.load(ckpt, weights_only=True)
    assert len(state2["done"]) == 2
    for k, v in first_member.items():
        assert torch.equal(state2["done"][0][k], v)
    card2 = json.loads((out / "o-k.json").read_text())
    assert card2["hyper_parameters"]["ensemble_members"] == 2


def _graphs(n: int, seed: int, out_dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for i in range(n):
        k = 3 + i % 4
        src, dst = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        mask = src != dst
        graphs.append(Data(x=torch.randn(k, 5, generator=g), edge_index=torch.stack([src[mask], dst[mask]]),
                           edge_attr=torch.randn(int(mask.sum()), 4, generator=g),
                           absorber_index=torch.tensor([0]), y=torch.randn(1, out_dim, generator=g)))
    return graphs


def test_resume_mid_member_matches_uninterrupted_training(tmp_path):
    cfg = XASNet(5, 4, 8, hidden=16, steps=2, edge_hidden=8).config()
    train, val = _graphs(24, 0), _graphs(6, 1)
    settings = training.TrainSettings(epochs=3, batch_size=8, patience=10)
    dev = torch.device("cpu")
    offset, scale = torch.zeros(8), 1.0
    full, summary_full = training.train_member(cfg, train, val, settings, 7, dev, offset, scale, progress=False)

    ckpt = tmp_path / "c.pt"
    short = training.TrainSettings(epochs=1, batch_size=8, patience=10)
    training.train_member(cfg, train, val, short, 7, dev, offset, scale, checkpoint=ckpt, progress=False)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["current"]["epoch"] == 0
    resumed, summary = training.train_member(cfg, train, val, settings, 7, dev, offset, scale,
                                             resume_state=saved["current"], progress=False)
    assert summary["epochs_run"] == 3
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2]
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-5, rtol=1e-5)
    assert summary["best_val_mse"] == pytest.approx(summary_full["best_val_mse"], rel=1e-4)


def test_training_lowers_validation_error_on_a_learnable_task():
    """A target that is a function of the graph must be learnt better than the mean."""
    torch.manual_seed(0)
    graphs = _graphs(64, 3)
    for gr in graphs:  # spectrum = a smooth function of the absorber's features and graph size
        t = torch.linspace(0, 1, 8)
        gr.y = (torch.sin(3 * t + gr.x[0, 0]) + 0.1 * gr.num_nodes).view(1, -1)
    train, val = graphs[:48], graphs[48:]
    y = torch.cat([g.y for g in train])
    offset, scale = y.mean(0), float((y - y.mean(0)).std())
    cfg = XASNet(5, 4, 8, hidden=32, steps=2, edge_hidden=16, conv="transformer").config()
    settings = training.TrainSettings(epochs=40, batch_size=16, patience=40, lr=3e-3)
    _, summary = training.train_member(cfg, train, val, settings, 0, torch.device("cpu"), offset, scale,
                                       progress=False)
    yv = torch.cat([g.y for g in val])
    baseline = float(((yv - offset) ** 2).mean())
    assert summary["best_val_mse"] < 0.5 * baseline


def test_aggregate_sites_weighted_average():
    mean = torch.tensor([[[1.0], [3.0], [5.0]]])  # 1 member, 3 sites, 1 point
    std = torch.tensor([[[1.0], [2.0], [4.0]]])
    m, s = aggregate_sites(mean, std, [0, 0, 1], [0.25, 0.75, 1.0], 2)
    torch.testing.assert_close(m, torch.tensor([[[2.5], [5.0]]]))
    torch.testing.assert_close(s, torch.tensor([[[1.75], [4.0]]]))
    with pytest.raises(ValueError, match="positive weight"):
        aggregate_sites(mean, std, [0, 0, 1], [0.5, 0.5, 0.0], 2)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            resolve_device("cuda")


def test_family_acsf_smoke_run_writes_a_card_and_weights_the_predictor_loads(qm9_o_k_jsonl, tmp_path):
    from models.predictor import load_predictor

    out = tmp_path / "acsf"
    args = ["--model", "o-k", "--data", str(qm9_o_k_jsonl), "--limit", "24", "--epochs", "3",
            "--ensemble", "2", "--family", "acsf", "--out", str(out), "--device", "cpu", "--quiet",
            "--threads", "1"]
    assert training.main(args) == 0
    card = json.loads((out / "o-k.json").read_text())
    assert card["hyper_parameters"]["net"]["family"] == "acsf"
    assert card["data"]["files"][0]["sha256"] == file_sha256(qm9_o_k_jsonl)
    assert [m["epochs_run"] for m in card["training"]["members"]] == [3, 3]
    assert card["uncertainty"]["validation_coverage"]["rms_z"] == pytest.approx(1.0, abs=1e-3)
    pred = load_predictor(out / "o-k.pt", device="cpu")
    res = pred.predict(["OCC=O"])
    assert res.mean.shape == (1, len(pred.energies))
    assert (res.std > 0).all()

    # fine-tuning: members start from a weights file's members (as n-k from o-k)
    args2 = [a if a != str(out) else str(tmp_path / "tuned") for a in args] + ["--init-from", str(out / "o-k.pt")]
    assert training.main(args2) == 0
    tuned = json.loads((tmp_path / "tuned" / "o-k.json").read_text())
    assert tuned["hyper_parameters"]["init_from"]["sha256"] == file_sha256(out / "o-k.pt")
    first = training.pretrained_member(out / "o-k.pt", 0)
    assert set(first) == set(pred.ensemble.members[0].state_dict())


def test_family_rejects_mpnn_only_options(qm9_o_k_jsonl, tmp_path):
    args = ["--model", "o-k", "--data", str(qm9_o_k_jsonl), "--limit", "12", "--family", "painn",
            "--arch", "mpnn-absorber", "--out", str(tmp_path), "--quiet", "--threads", "1"]
    with pytest.raises(ValueError, match="MPNN variants"):
        training.main(args)
