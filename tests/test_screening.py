"""Library prediction into the on-disk candidate store: streaming, reuse, weights keys, Dask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.predictor import load_predictor
from models.screening import predict_library
from models.store import CandidateStore, StoreError, structure_hash
from models.structures import load_structure

SMILES = ["CCO", "OCCO", "CC(=O)O", "c1ccoc1", "OC1=CC=CC=C1"]


@pytest.fixture(scope="module")
def ok():
    return load_predictor("o-k", device="cpu")


def _source(smiles=SMILES):
    return [(s, load_structure(s), {"smiles": s}) for s in smiles]


def test_streamed_library_equals_in_memory_prediction_and_is_reused(ok, tmp_path):
    source = _source()
    first = predict_library(iter(source), ok, store=tmp_path, chunk=2, batch_size=4)
    assert first.predicted == len(SMILES) and first.reused == 0 and not first.failures
    assert first.names == SMILES and len(first.store.chunks) == 3  # 2 + 2 + 1
    ok.clear_cache()
    ref = ok.predict([s for _, s, _ in source])
    mean, std = first.spectra()
    np.testing.assert_allclose(mean, ref.mean, atol=1e-5)
    np.testing.assert_allclose(std, ref.std, atol=1e-5)
    # a second run, with a fresh store object read from disk, predicts nothing
    calls = ok.network_calls
    again = predict_library(iter(source), ok, store=CandidateStore.for_predictor(tmp_path, ok), chunk=2)
    assert again.predicted == 0 and again.reused == len(SMILES) and ok.network_calls == calls
    np.testing.assert_array_equal(again.spectra()[0], mean)
    # the same molecule under another name is the same key: nothing new
    renamed = predict_library([("ethanol", source[0][1], None)], ok, store=tmp_path)
    assert renamed.predicted == 0 and renamed.keys == [first.keys[0]]
    # provenance is stored as JSON text beside the spectrum
    chunk = next(first.store.iter_chunks())
    assert json.loads(str(chunk["provenance"][0])) == {"smiles": "CCO"}


def test_key_changes_with_weights(ok, tmp_path):
    payload = torch.load(ok.path, map_location="cpu", weights_only=True)
    payload["config"] = dict(payload["config"], note="same weights, other file")
    other_path = tmp_path / "o-k-copy.pt"
    torch.save(payload, other_path)
    other = load_predictor(other_path, device="cpu")
    assert other.weights_sha256 != ok.weights_sha256
    source = _source(SMILES[:3])
    a = predict_library(source, ok, store=tmp_path / "store")
    b = predict_library(source, other, store=tmp_path / "store")
    assert a.predicted == b.predicted == 3 and a.store.folder != b.store.folder
    assert a.keys == b.keys  # the content part of the key is the same
    with pytest.raises(StoreError, match="holds weights"):
        (a.store.folder / "manifest.json").replace(b.store.folder / "manifest.json")
        CandidateStore.for_predictor(tmp_path / "store", other)


def test_failures_are_listed_and_molecule_forms_share_a_key(ok, tmp_path):
    from models.feff.qm9 import QM9Molecule

    mol = load_structure("CCO")
    record = QM9Molecule(1, "CCO", tuple(str(s.specie) for s in mol), tuple(map(tuple, mol.cart_coords)))
    assert structure_hash(record) == structure_hash(mol)
    res = predict_library([("qm9", record, None), ("butane", "CCCC", None), ("bad", "C1CC(", None)], ok,
                          store=tmp_path)
    assert res.names == ["qm9"] and set(res.failures) == {"butane", "bad"}
    assert "no O atom" in res.failures["butane"]
    ref = ok.predict([mol])
    np.testing.assert_allclose(res.spectra()[0], ref.mean, atol=1e-5)
    with pytest.raises(ValueError, match="no O atom"):
        predict_library([("butane", "CCCC", None)], ok, store=tmp_path, on_error="raise")


def test_dask_local_cluster_gives_the_same_spectra(ok, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    source = _source(SMILES[:4])
    local = predict_library(source, ok, store=tmp_path / "local", chunk=2)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = predict_library(source, ok, store=tmp_path / "dask", chunk=2, scheduler=client)
    assert remote.predicted == 4 and remote.names == local.names
    np.testing.assert_allclose(remote.spectra()[0], local.spectra()[0], atol=1e-6)
    np.testing.assert_allclose(remote.spectra()[1], local.spectra()[1], atol=1e-6)
