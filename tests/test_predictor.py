"""Shipped models end to end: loading, inputs, invariances, errors, cache, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric")
from pymatgen.core import Lattice, Molecule, Structure  # noqa: E402

from models import available_models, load_predictor  # noqa: E402
from apps.predict import main as predict_main  # noqa: E402
from models.predictor import WEIGHTS_DIR, ModelNotFoundError  # noqa: E402
from models.provenance import file_sha256  # noqa: E402

SHIPPED = ("cu-k", "o-k", "n-k")


def _cu2o() -> Structure:
    """Cuprite, Pn-3m, a = 4.27 A."""
    return Structure.from_spacegroup("Pn-3m", Lattice.cubic(4.27), ["Cu", "O"],
                                     [[0.0, 0.0, 0.0], [0.25, 0.25, 0.25]])


def _rotation(seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.fixture(scope="module")
def ok():
    return load_predictor("o-k", device="cpu")


@pytest.fixture(scope="module")
def cuk():
    return load_predictor("cu-k", device="cpu")


def test_the_models_are_shipped():
    assert set(SHIPPED) <= set(available_models())


@pytest.mark.parametrize("name", SHIPPED)
def test_weights_load_weights_only_and_sha256_matches_card(name):
    path = WEIGHTS_DIR / f"{name}.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert set(payload) == {"config", "state_dict"}
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    json.dumps(payload["config"])  # the config is plain JSON
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["weights_sha256"] == file_sha256(path)
    pred = load_predictor(name, device="cpu")
    assert pred.weights_sha256 == card["weights_sha256"]
    assert pred.name == name and pred.edge == "K"
    assert pred.energies.ndim == 1 and np.all(np.diff(pred.energies) > 0)
    # the model card records test metrics and the uncertainty coverage
    assert card["test_metrics"]["material"]["n_spectra"] > 0
    assert 0 < card["uncertainty"]["test_coverage"]["within_2sigma"] <= 1


def test_shipped_weights_are_small():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.pt"))
    assert total < 20e6


def test_predict_smiles_shapes_and_positive_std(ok):
    res = ok.predict(["CCO", "O=C=O", "CC(=O)O"])
    assert res.names == ["CCO", "O=C=O", "CC(=O)O"]
    assert res.mean.shape == res.std.shape == (3, len(ok.energies))
    assert np.all(res.std > 0) and np.all(np.isfinite(res.mean))
    # different molecules give different spectra
    assert np.abs(res.mean[0] - res.mean[1]).max() > 1e-3
    # normalised mu: above the edge the spectrum is of order one
    assert 0.2 < float(res.mean[:, -10:].mean()) < 3.0


def test_molecule_prediction_invariant_to_rotation_and_atom_order(ok):
    from models.structures import load_structure

    mol = load_structure("CC(=O)OC")
    rot = _rotation(1)
    perm = np.random.default_rng(2).permutation(len(mol))
    coords = (mol.cart_coords @ rot.T + np.array([3.0, -1.0, 2.0]))[perm]
    species = [mol.species[i] for i in perm]
    moved = Molecule(species, coords)
    a = ok.predict([mol])
    b = ok.predict([moved])
    np.testing.assert_allclose(b.mean, a.mean, atol=1e-4)
    np.testing.assert_allclose(b.std, a.std, atol=1e-4)


def test_crystal_structure_cif_and_invariances(cuk, tmp_path):
    s = _cu2o()
    cif = tmp_path / "Cu2O.cif"
    s.to(filename=str(cif))
    res = cuk.predict([s, str(cif)])
    assert res.mean.shape == (2, len(cuk.energies)) and np.all(res.std > 0)
    np.testing.assert_allclose(res.mean[1], res.mean[0], atol=1e-4)
    # rotate the whole crystal (lattice and Cartesian positions) and shuffle the sites
    rot = _rotation(3)
    lattice = Lattice(s.lattice.matrix @ rot.T)
    perm = np.random.default_rng(4).permutation(len(s))
    rotated = Structure(lattice, [s.species[i] for i in perm], s.frac_coords[perm])
    other = cuk.predict([rotated])
    np.testing.assert_allclose(other.mean[0], res.mean[0], atol=1e-4)
    # the white line of a Cu K-edge lies above the edge onset
    assert cuk.energies[np.argmax(res.mean[0])] > cuk.energies[0] + 5


def test_unsupported_element_error_names_element_and_supported(ok):
    with pytest.raises(ValueError) as err:
        ok.predict(["CS(=O)C"])  # dimethyl sulfoxide: S is not in QM9
    msg = str(err.value)
    assert "element(s) S " in msg and "CS(=O)C" in msg
    for el in ok.supported_elements:
        assert el in msg


def test_unsupported_element_crystal(cuk):
    unknown = next(el for el in ("Ne", "He", "Ar", "Kr", "Xe", "Og") if el not in cuk.supported_elements)
    s = Structure(Lattice.cubic(3.0), ["Cu", unknown], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=unknown):
        cuk.predict([s])


def test_missing_absorber_error_names_element(ok, cuk):
    with pytest.raises(ValueError, match=r"no O atom"):
        ok.predict(["CCCC"])
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"no Cu atom"):
        cuk.predict([nacl])


def test_bad_inputs_are_listed_when_skipping(ok, tmp_path):
    missing = str(tmp_path / "nothing.cif")
    res = ok.predict(["CCO", "CCCC", "C1CC(", missing], on_error="skip")
    assert res.names == ["CCO"]
    assert set(res.failures) == {"CCCC", "C1CC(", missing} or len(res.failures) == 3
    assert any("nothing.cif" in k or "nothing.cif" in v for k, v in res.failures.items())
    with pytest.raises(ValueError):
        ok.predict(["CCO"], on_error="ignore")


def test_unknown_model_name_lists_shipped_models():
    with pytest.raises(ModelNotFoundError, match="o-k"):
        load_predictor("fe-k")


def test_cache_returns_identical_results_without_recomputation(ok):
    ok.clear_cache()
    first = ok.predict(["OCCO", "CC=O"])
    calls = ok.network_calls
    again = ok.predict(["CC=O", "OCCO"])  # same molecules, other order
    assert ok.network_calls == calls
    np.testing.assert_array_equal(again.mean[0], first.mean[1])
    np.testing.assert_array_equal(again.std[1], first.std[0])
    ok.predict(["OCC=O"])  # a new molecule is computed
    assert ok.network_calls > calls


def test_batch_size_does_not_change_results(ok):
    ok.clear_cache()
    a = ok.predict(["CCO", "OCCO", "CC(=O)O", "O=CC=O"], batch_size=1)
    ok.clear_cache()
    b = ok.predict(["CCO", "OCCO", "CC(=O)O", "O=CC=O"], batch_size=256)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-5)
    np.testing.assert_allclose(a.std, b.std, atol=1e-5)


def test_cli_writes_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
    rc = predict_main(["CCO", "O=C=O", "--model", "o-k", "--json", str(out_json), "--plot", str(out_png),
                       "--device", "cpu"])
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert data["model"] == "o-k" and len(data["weights_sha256"]) == 64
    assert [s["name"] for s in data["spectra"]] == ["CCO", "O=C=O"]
    assert len(data["spectra"][0]["mean"]) == len(data["energies_eV"]) == len(data["spectra"][0]["std"])
    assert out_png.stat().st_size > 1000


def test_cli_reports_bad_input(capsys):
    assert predict_main(["CCCC", "--model", "o-k", "--device", "cpu"]) == 1
    assert "no O atom" in capsys.readouterr().err


def test_cli_examples_predicts_the_shipped_examples_that_suit_the_model(tmp_path):
    out_json = tmp_path / "ex.json"
    assert predict_main(["--examples", "--model", "cu-k", "--json", str(out_json), "--device", "cpu"]) == 0
    names = {s["name"] for s in json.loads(out_json.read_text())["spectra"]}
    assert {"Cu2O", "CuO"} <= names and not names & {"ethanol", "acetone", "furan"}


def test_n_k_predicts_nitrogen_molecules_at_the_n_k_edge_and_refuses_molecules_without_n():
    nk = load_predictor("n-k", device="cpu")
    assert nk.element == "N" and 395 < nk.energies[0] < 410 < nk.energies[-1]
    res = nk.predict(["CC#N", "NCCO", "c1ccncc1"])  # acetonitrile, ethanolamine, pyridine
    assert res.mean.shape == (3, nk.energies.size) and np.all(res.std > 0)
    # a nitrile, an amine and an aromatic N give different spectra
    assert np.abs(res.mean[0] - res.mean[1]).max() > 0.05 and np.abs(res.mean[1] - res.mean[2]).max() > 0.05
    failed = nk.predict(["CCO"], on_error="skip")
    assert failed.names == [] and "no N atom" in str(failed.failures)
