"""Site datasets: targets on the grid, multiplicity weights, failures reported, material spectra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from models.dataset import build_site_dataset, material_spectra, record_spectrum, site_weights
from models.graphs import GraphBuilder
from models.readers import SiteSpectrum, SpectrumRecord, read_feff_materials, read_qm9_jsonl
from models.spectra import common_grid, make_grid
from models.structures import load_structure

EXAMPLES = Path(__file__).resolve().parent.parent / "models" / "examples"


def _spectrum(shift: float, n: int = 60, start: float = 8980.0):
    e = np.linspace(start, start + 120, n)
    return e, 0.5 + np.arctan((e - 8995 - shift) / 2) / np.pi


def _doped_cu2o():
    s = load_structure(EXAMPLES / "Cu2O.cif") * (2, 1, 1)
    s.replace(0, "Ag")
    return s


def test_weights_follow_symmetry_and_sum_to_one():
    builder = GraphBuilder("Cu", ["O", "Cu", "Ag"], "crystal")
    structure = _doped_cu2o()
    groups = builder.absorber_groups(structure)
    # the data set may name any member of a group, not the builder's representative
    sites = [SiteSpectrum(g[-1], *_spectrum(k)) for k, g in enumerate(groups)]
    record = SpectrumRecord("doped", structure, sites, "test")
    weights, note = site_weights(record, builder)
    assert note is None
    np.testing.assert_allclose(weights, [len(g) / 7 for g in groups])
    # one group's spectrum missing: renormalised, with a note
    partial = SpectrumRecord("doped", structure, sites[:-1], "test")
    w2, note2 = site_weights(partial, builder)
    assert w2.sum() == pytest.approx(1.0) and "have no spectrum" in note2
    grid = make_grid(8985, 9095, 30)
    with pytest.warns(UserWarning, match="1 with adjusted weights"):
        ds = build_site_dataset([partial], builder, grid, progress=False)
    assert ds.incomplete == {"doped"} and len(ds) == len(groups) - 1


def test_build_site_dataset_targets_weights_and_report():
    builder = GraphBuilder("Cu", ["O", "Cu", "Ag"], "crystal")
    structure = _doped_cu2o()
    groups = builder.absorber_groups(structure)
    good = SpectrumRecord("doped", structure, [SiteSpectrum(g[0], *_spectrum(k)) for k, g in enumerate(groups)], "src-a")
    short = SpectrumRecord("short", load_structure(EXAMPLES / "Cu2O.cif"),
                           [SiteSpectrum(0, *_spectrum(0, start=9000.0))], "src-b")
    cus = load_structure(EXAMPLES / "Cu2O.cif")
    cus.replace(4, "S")
    unsupported = SpectrumRecord("has-S", cus, [SiteSpectrum(0, *_spectrum(0))], "src-c")
    grid = make_grid(8985, 9095, 111)
    with pytest.warns(UserWarning, match="2 record\\(s\\) skipped"):
        ds = build_site_dataset([good, short, unsupported], builder, grid, progress=False)
    assert len(ds) == len(groups)
    assert ds.report.n_read == 1 and ds.report.n_sites == len(groups)
    reasons = dict(ds.report.skipped)
    assert reasons["src-b"].startswith("GridCoverageError") and "extends beyond the spectrum" in reasons["src-b"]
    assert reasons["src-c"].startswith("UnsupportedElementError") and "S not supported" in reasons["src-c"]
    g = ds[0]
    assert g.y.shape == (1, 111) and g.y.dtype == torch.float32
    np.testing.assert_allclose(g.y[0].numpy(), np.interp(grid, *_spectrum(0)), atol=1e-6)
    assert g.record_id == "doped" and g.site_index == groups[0][0]
    assert sum(float(d.weight) for d in ds) == pytest.approx(1.0)
    np.testing.assert_allclose(ds.grid, grid)
    assert ds.builder_config == builder.config()

    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert batch.y.shape == (len(ds), 111) and batch.weight.shape == (len(ds),)
    assert batch.site_index.tolist() == [d.site_index for d in ds]


def test_material_spectra_weighted_average_of_sites_and_predictions():
    builder = GraphBuilder("Cu", ["O", "Cu", "Ag"], "crystal")
    structure = _doped_cu2o()
    groups = builder.absorber_groups(structure)
    record = SpectrumRecord("doped", structure, [SiteSpectrum(g[0], *_spectrum(3 * k)) for k, g in enumerate(groups)], "x")
    grid = make_grid(8985, 9095, 50)
    ds = build_site_dataset([record], builder, grid, progress=False)
    ids, spectra = material_spectra(ds)
    expected = sum(len(g) / 7 * np.interp(grid, *_spectrum(3 * k)) for k, g in enumerate(groups))
    assert ids == ["doped"]
    np.testing.assert_allclose(spectra[0], expected, atol=1e-6)
    np.testing.assert_allclose(record_spectrum(record, builder, grid), expected, atol=1e-6)
    preds = torch.ones(len(ds), 50)
    ids2, pred_spectra = material_spectra(ds, preds)
    np.testing.assert_allclose(pred_spectra, 1.0)
    with pytest.raises(ValueError, match=r"site_values must be"):
        material_spectra(ds, np.ones((len(ds) + 1, 50)))


def test_qm9_site_dataset(qm9_o_k_jsonl):
    records, _ = read_qm9_jsonl(qm9_o_k_jsonl, limit=20)
    builder = GraphBuilder("O", ["H", "C", "N", "O", "F"], "molecule")
    grid = common_grid(records, 100)
    ds = build_site_dataset(records, builder, grid, progress=False)
    skipped = {where for where, _ in ds.report.skipped}
    assert len(ds) == ds.report.n_sites == sum(len(r.sites) for r in records if r.source not in skipped)
    ids, spectra = material_spectra(ds)
    assert len(ids) == ds.report.n_read and spectra.shape == (len(ids), 100)
    for rid in ids:
        w = [float(d.weight) for d in ds if d.record_id == rid]
        assert sum(w) == pytest.approx(1.0) and max(w) == pytest.approx(min(w))


def test_cu_site_dataset_weights_match_feff_sites(cu_k_dir):
    records, _ = read_feff_materials(cu_k_dir, limit=12, progress=False)
    elements = sorted({e for r in records for e in r.structure.symbol_set})
    builder = GraphBuilder("Cu", elements, "crystal")
    grid = common_grid(records, 120)
    ds = build_site_dataset(records, builder, grid, progress=False)
    assert ds.report.n_read + len(ds.report.skipped) == len(records)
    totals: dict[str, float] = {}
    for d in ds:
        totals[d.record_id] = totals.get(d.record_id, 0.0) + float(d.weight)
        assert torch.isfinite(d.y).all()
    np.testing.assert_allclose(list(totals.values()), 1.0, atol=1e-6)


def _graph_tensors(g):
    return {k: getattr(g, k) for k in ("x", "edge_index", "edge_attr", "edge_length", "absorber_distance", "y", "weight")}


@pytest.mark.parametrize("kind", ["crystal", "molecule"])
def test_cache_round_trip_is_exact_and_keyed_by_content(tmp_path, kind):
    if kind == "crystal":
        builder = GraphBuilder("Cu", ["O", "Cu", "Ag"], "crystal")
        structure = _doped_cu2o()
        sites = [SiteSpectrum(g[0], *_spectrum(k)) for k, g in enumerate(builder.absorber_groups(structure))]
        grid = make_grid(8985, 9095, 40)
    else:
        builder = GraphBuilder("O", ["H", "C", "N", "O", "F"], "molecule")
        structure = load_structure("OC(=O)c1ccco1")  # furoic acid: aromatic and C=O bonds
        e = np.linspace(527, 590, 50)
        sites = [SiteSpectrum(i, e, np.tanh(e - 535 - i)) for i in structure.indices_from_symbol("O")]
        grid = make_grid(528, 589, 40)
    records = [SpectrumRecord("r1", structure, sites, "src")]
    built = build_site_dataset(records, builder, grid, progress=False, cache=tmp_path)
    files = list(tmp_path.glob("sites-*.pt"))
    assert len(files) == 1
    loaded = build_site_dataset(records, builder, grid, progress=False, cache=tmp_path)
    assert len(loaded) == len(built) > 0
    for a, b in zip(built, loaded):
        for key, value in _graph_tensors(a).items():
            assert torch.equal(value, getattr(b, key)), key
        assert (a.record_id, a.site_index) == (b.record_id, b.site_index)
    assert loaded.report.n_sites == built.report.n_sites
    # other spectra: another key, another file
    changed = [SpectrumRecord("r1", structure, [SiteSpectrum(s.site_index, s.energy, s.mu * 1.01) for s in sites], "src")]
    build_site_dataset(changed, builder, grid, progress=False, cache=tmp_path)
    assert len(list(tmp_path.glob("sites-*.pt"))) == 2
    # a damaged file is reported and rebuilt, not trusted
    files[0].write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring unreadable dataset cache"):
        again = build_site_dataset(records, builder, grid, progress=False, cache=tmp_path)
    assert len(again) == len(built)
