"""Readers of the FEFF Cu K and QM9 O K data: counts, skip reasons, splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.readers import (
    SpectrumFormatError,
    read_feff_materials,
    read_qm9_jsonl,
    read_xmu,
    split_ids,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "models" / "examples"


def _xmu_text(energy: np.ndarray, mu: np.ndarray) -> str:
    lines = ["# FEFF test header", "#  omega    e    k    mu    mu0     chi     @#"]
    for e, m in zip(energy, mu):
        lines.append(f"  {e:10.3f} {e - 8990:9.3f} 0.000 {m:.5E} {m:.5E} 0.00000E+00")
    return "\n".join(lines) + "\n"


def _write_material(root: Path, name: str, sites: dict[int, str], poscar: Path = EXAMPLES / "Cu2O.cif"):
    """A material folder in the FEFF layout; the structure is our Cu2O example as POSCAR."""
    from pymatgen.io.vasp import Poscar

    from models.structures import load_structure

    folder = root / name
    folder.mkdir(parents=True)
    Poscar(load_structure(poscar)).write_file(folder / "POSCAR")
    for index, text in sites.items():
        site_dir = folder / "FEFF-XANES" / f"{index:03d}_Cu"
        site_dir.mkdir(parents=True)
        (site_dir / "xmu.dat").write_text(text)
    return folder


@pytest.fixture
def feff_tree(tmp_path):
    energy = np.linspace(8984.0, 9125.0, 40)
    mu = 1.0 / (1.0 + np.exp(-(energy - 8995.0)))
    good = _xmu_text(energy, mu)
    root = tmp_path / "feff"
    _write_material(root, "mp-good", {0: good})
    broken = good.splitlines()
    broken[7] = "  8990.0  1.0  abc  0.5"
    _write_material(root, "mp-malformed", {0: "\n".join(broken) + "\n"})
    _write_material(root, "mp-nan", {0: good.replace(f"{mu[20]:.5E}", "NaN", 1)})
    _write_material(root, "mp-empty", {0: "# only a header\n"})
    _write_material(root, "mp-nospectra", {})
    _write_material(root, "mp-wrongsite", {4: good})  # site 4 of Cu2O is O
    garbled = _write_material(root, "mp-badposcar", {0: good})
    (garbled / "POSCAR").write_text("Cu2O\n1.0\n4.27 0 0\n0 4.27\n")
    return root


def test_feff_reader_counts_and_reasons(feff_tree):
    records, report = read_feff_materials(feff_tree, progress=False)
    assert [r.record_id for r in records] == ["mp-good"]
    assert report.n_read == 1 and report.n_sites == 1
    reasons = {(Path(w).parent.name if Path(w).name == "POSCAR" else Path(w).name): r for w, r in report.skipped}
    assert set(reasons) == {"mp-malformed", "mp-nan", "mp-empty", "mp-nospectra", "mp-wrongsite", "mp-badposcar"}
    assert reasons["mp-badposcar"].startswith("bad POSCAR")
    assert "mp-malformed/FEFF-XANES/000_Cu/xmu.dat:8" in reasons["mp-malformed"]
    assert "4 columns" in reasons["mp-malformed"]
    assert reasons["mp-nan"].startswith("non-finite values")
    assert reasons["mp-empty"].startswith("empty spectrum")
    assert reasons["mp-nospectra"].startswith("no spectra")
    assert "points at O" in reasons["mp-wrongsite"]
    summary = report.summary()
    assert "read 1 records (1 site spectra), skipped 6" in summary
    assert "1 x malformed line" in summary
    rec = records[0]
    assert rec.structure.composition.reduced_formula == "Cu2O"
    assert rec.sites[0].site_index == 0 and rec.sites[0].energy.shape == (40,)
    assert rec.sites[0].energy[0] == pytest.approx(8984.0)


def test_feff_reader_limit(feff_tree):
    records, report = read_feff_materials(feff_tree, limit=2, progress=False)
    assert report.n_read + report.n_skipped == 2


def test_read_xmu_rejects_decreasing_energy(tmp_path):
    energy = np.linspace(8984.0, 9125.0, 20)
    energy[5] = energy[3]
    path = tmp_path / "xmu.dat"
    path.write_text(_xmu_text(energy, np.ones(20)))
    with pytest.raises(SpectrumFormatError, match="energies not increasing.*xmu.dat point 5"):
        read_xmu(path)


def test_feff_reader_on_shared_data(cu_k_dir):
    records, report = read_feff_materials(cu_k_dir, limit=25, progress=False)
    assert report.n_read + report.n_skipped == 25
    assert report.n_read > 15
    for rec in records:
        assert rec.record_id.startswith("mp-")
        for site in rec.sites:
            assert rec.structure[site.site_index].specie.symbol == "Cu"
            assert np.all(np.diff(site.energy) > 0)
            assert 8970 < site.energy[0] < 8995 and 9110 < site.energy[-1] < 9140
    for where, reason in report.skipped:
        assert reason.startswith("no spectra")  # the only kind in this data set


def _qm9_line(index: int, **extra) -> str:
    doc = {
        "qm9_index": index,
        "smiles": "O",
        "elements": ["O", "H", "H"],
        "xyz_angstrom": [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
        "absorber": "O",
        "edge": "K",
        "sites": [{"site": 0, "omega_eV": list(np.linspace(527, 590, 30)), "mu": list(np.linspace(0, 1, 30))}],
    }
    doc.update(extra)
    return json.dumps(doc)


def test_qm9_reader_counts_and_reasons(tmp_path):
    nan_site = [{"site": 0, "omega_eV": list(np.linspace(527, 590, 30)), "mu": [float("nan")] * 30}]
    lines = [
        _qm9_line(1),
        _qm9_line(2, error="FEFF crashed"),
        '{"qm9_index": 3, "smiles": ',
        _qm9_line(4, sites=nan_site),  # json.dumps writes NaN
        _qm9_line(5, sites=[{"site": 1, "omega_eV": [1.0] * 30, "mu": [0.0] * 30}]),
        _qm9_line(6, sites=[]),
        _qm9_line(1),
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n")
    records, report = read_qm9_jsonl(path)
    assert [r.record_id for r in records] == ["qm9-1"]
    reasons = {int(w.rsplit(":", 1)[1]): r for w, r in report.skipped}
    assert reasons[2].startswith("FEFF failure: FEFF crashed")
    assert reasons[3].startswith("malformed JSON")
    assert reasons[4].startswith("non-finite values")
    assert reasons[5].startswith("bad site index")
    assert reasons[6].startswith("no spectra")
    assert reasons[7].startswith("duplicate id")
    assert report.n_read == 1 and report.n_skipped == 6
    mol = records[0].structure
    assert mol.composition.reduced_formula == "H2O"
    assert records[0].source.endswith("q.jsonl:1")


def test_qm9_reader_skips_lines_of_xas_feff_structures_with_a_reason(tmp_path):
    """`xas-feff structures` writes molecules keyed by ``name`` (no ``qm9_index``); such lines,
    good or failed, are skipped and counted under their own reason, the QM9 lines still read."""
    structures_line = json.loads(_qm9_line(0))
    del structures_line["qm9_index"]
    structures_line["name"] = "water"
    failed_line = {"name": "methane", "smiles": "C", "error": "FeffInputError: absorber O missing"}
    lines = [json.dumps(structures_line), _qm9_line(7), json.dumps(failed_line), _qm9_line(8, qm9_index=None)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    records, report = read_qm9_jsonl(path)
    assert [r.record_id for r in records] == ["qm9-7"]
    assert report.n_read == 1 and report.n_skipped == 3
    assert report.reason_counts() == {"no qm9_index": 3}
    reasons = {int(w.rsplit(":", 1)[1]): r for w, r in report.skipped}
    assert "'water'" in reasons[1] and "'methane'" in reasons[3] and 4 in reasons
    assert "no qm9_index" in report.summary()


def test_qm9_reader_on_shared_data(qm9_o_k_jsonl):
    records, report = read_qm9_jsonl(qm9_o_k_jsonl, limit=30)
    assert report.n_read + report.n_skipped == 30
    for rec in records:
        assert rec.record_id.startswith("qm9-")
        for site in rec.sites:
            assert rec.structure[site.site_index].specie.symbol == "O"
            assert 520 < site.energy[0] < 535


def test_split_ids_deterministic_disjoint_order_free():
    ids = [f"mp-{i}" for i in range(1000)]
    a = split_ids(ids, seed=3)
    b = split_ids(list(reversed(ids)) + ids[:10], seed=3)
    assert a == b
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set.union(*sets) == set(ids)
    assert 740 < len(a["train"]) < 860 and 60 < len(a["test"]) < 140
    # adding records never moves existing ones
    c = split_ids(ids + [f"mp-{i}" for i in range(1000, 1200)], seed=3)
    assert set(a["test"]) <= set(c["test"]) and set(a["train"]) <= set(c["train"])
    assert split_ids(ids, seed=4) != a


def test_split_ids_rejects_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        split_ids(["a"], fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="three non-negative"):
        split_ids(["a"], fractions=(1.2, -0.2, 0.0))


def test_read_xmu_column_count_errors_are_not_hidden_by_compensating_lines(tmp_path):
    energy = np.linspace(8984.0, 9125.0, 20)
    lines = _xmu_text(energy, np.ones(20)).splitlines()
    # one line loses a column and the next gains one: the total count still fits 6 per line
    lines[4] = " ".join(lines[4].split()[:5])
    lines[5] = lines[5] + " 1.0"
    path = tmp_path / "xmu.dat"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpectrumFormatError, match=r"xmu.dat:5 has 5 columns"):
        read_xmu(path)
