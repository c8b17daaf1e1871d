"""Candidate libraries: computed spectra, FEFF folders, the predictor, caching, provenance."""

from __future__ import annotations

import numpy as np
import pytest

from xas_callbacks.candidates import CandidateLibrary, candidate_set_sha256

IDS = ["mp-1692", "mp-361", "mp-23733", "mp-does-not-exist"]


@pytest.fixture()
def user_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XAS_USER_DIR", str(tmp_path / "user"))
    return tmp_path / "user"


def test_from_spectra_shapes_and_content_hash():
    E = np.linspace(8980, 9100, 50)
    mean = np.vstack([np.tanh((E - 8990) / 3), np.tanh((E - 8992) / 3)])
    a = CandidateLibrary.from_spectra(["x", "y"], E, mean, default_std=0.02)
    b = CandidateLibrary.from_spectra(["x", "y"], E, mean * 1.001)
    assert len(a) == 2 and a.std.shape == a.mean.shape and np.all(a.std == 0.02)
    assert a.provenance["candidates_sha256"] != b.provenance["candidates_sha256"]
    assert set(a.provenance) >= {"model", "weights_sha256", "candidates_sha256", "software_version"}
    with pytest.raises(ValueError):
        CandidateLibrary(["x"], E, mean, mean)


def test_from_feff_lists_failures_and_round_trips_npz(cu_k_dir, user_dir, tmp_path):
    lib = CandidateLibrary.from_feff(cu_k_dir, ids=IDS)
    present = [i for i in IDS if (cu_k_dir / i / "FEFF-XANES").is_dir()]
    assert lib.names == present
    assert "mp-does-not-exist" in lib.failures
    assert np.all(np.diff(lib.energies) > 0)
    assert np.all(np.isfinite(lib.mean))
    # normalised FEFF spectra: pre-edge small, far above the edge near one
    assert np.all(lib.mean[:, 0] < 0.3) and np.all(np.abs(lib.mean[:, -1] - 1) < 0.3)
    path = lib.save(tmp_path / "lib.npz")
    back = CandidateLibrary.load(path)
    assert back.names == lib.names and back.failures == lib.failures
    np.testing.assert_array_equal(back.mean, lib.mean)
    assert back.provenance["candidates_sha256"] == lib.provenance["candidates_sha256"]
    # cached: second build reads the cache file and gives the same arrays
    again = CandidateLibrary.from_feff(cu_k_dir, ids=IDS)
    np.testing.assert_array_equal(again.mean, lib.mean)
    assert list((user_dir / "candidates").glob("feff-*.npz"))


def test_from_source_detects_feff_folder_and_npz(cu_k_dir, user_dir, tmp_path):
    lib = CandidateLibrary.from_feff(cu_k_dir, ids=IDS[:2])
    path = lib.save(tmp_path / "two.npz")
    assert CandidateLibrary.from_source(path).names == lib.names
    with pytest.raises(FileNotFoundError):
        CandidateLibrary.from_source(tmp_path / "nothing-here")


def test_start_doc_sha_mismatch_is_recorded(cu_k_dir, user_dir, tmp_path):
    lib = CandidateLibrary.from_feff(cu_k_dir, ids=IDS[:2])
    path = lib.save(tmp_path / "two.npz")
    got = CandidateLibrary.from_start_doc({"candidates": {"source": str(path), "sha256": "0" * 64}})
    assert got.provenance.get("sha256_mismatch") == "0" * 64


def test_candidate_set_sha_depends_on_file_contents(tmp_path):
    f = tmp_path / "a.cif"
    f.write_text("data_a\n")
    h1 = candidate_set_sha256([str(f), "CCO"])
    f.write_text("data_b\n")
    assert candidate_set_sha256([str(f), "CCO"]) != h1
    assert candidate_set_sha256(["CCO"]) != candidate_set_sha256(["CCN"])


def _predictor_or_skip():
    try:
        from models import available_models
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"models.predictor not importable: {exc}")
    if "cu-k" not in available_models():
        pytest.skip("no shipped 'cu-k' weights yet (models/weights/cu-k.pt)")


def test_from_structures_through_predictor_lists_failures(cu_k_dir, user_dir):
    _predictor_or_skip()
    items = [str(cu_k_dir / "mp-1692" / "POSCAR"), str(cu_k_dir / "mp-361" / "POSCAR"), "CCO"]
    lib = CandidateLibrary.from_structures(items, model="cu-k", names=["CuO", "Cu2O", "ethanol"])
    assert lib.names == ["CuO", "Cu2O"]
    assert "ethanol" in lib.failures and lib.failures["ethanol"]
    assert lib.provenance["weights_sha256"] and lib.provenance["candidates_sha256"]
    assert lib.mean.shape == lib.std.shape == (2, lib.energies.size)
    cached = CandidateLibrary.from_structures(items, model="cu-k", names=["CuO", "Cu2O", "ethanol"])
    np.testing.assert_array_equal(cached.mean, lib.mean)


def test_smiles_through_shipped_o_k_model_lists_failures_and_caches(user_dir):
    try:
        from models import available_models
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"models.predictor not importable: {exc}")
    if "o-k" not in available_models():
        pytest.skip("no shipped 'o-k' weights (models/weights/o-k.pt)")
    smiles = ["CCO", "CC", "OC=O", "not-a-smiles(("]
    lib = CandidateLibrary.from_structures(smiles, model="o-k")
    assert lib.names == ["CCO", "OC=O"]
    assert set(lib.failures) == {"CC", "not-a-smiles(("}  # listed with reasons, not dropped
    assert "O" in lib.failures["CC"]
    assert lib.provenance["model"] == "o-k" and len(lib.provenance["weights_sha256"]) == 64
    assert np.all(np.isfinite(lib.mean)) and np.all(lib.std >= 0)
    files = list((user_dir / "candidates").glob("*.npz"))
    assert len(files) == 1
    again = CandidateLibrary.from_structures(smiles, model="o-k")
    np.testing.assert_array_equal(again.mean, lib.mean)
    assert again.failures == lib.failures
