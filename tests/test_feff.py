"""FEFF10 generation: inputs, the resumable batch runner with real FEFF runs, QM9 order, CLI.

Real FEFF10 runs (feff10-rs), no mocks: one H2O O K-edge with the shared set's cards, and a Cu
metal K-edge with a reduced card set (13-atom cluster, no SCF) -- about 15 s together on an idle
core. Skipped where the ``feff`` extra is not installed.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

pytest.importorskip("feff10", reason="FEFF10 (feff10-rs) not installed: pip install 'steered-xas[feff]'")

from pymatgen.core import Lattice, Molecule, Structure  # noqa: E402

from models.feff.inputs import (  # noqa: E402
    CRYSTAL_CARDS,
    MOLECULE_CARDS,
    FeffInputError,
    crystal_inputs,
    molecule_inputs,
)
from synthetic import fake_qm9pack as _fake_qm9pack  # noqa: E402

from models.feff.runner import (  # noqa: E402
    FeffJob,
    FeffRunError,
    FolderSink,
    JsonlSink,
    compute_spectra,
    parse_xmu_text,
    run_batch,
)

# Reduced crystal cards for a cheap real run: no SCF, no core hole, small FMS and energy range.
CHEAP_CRYSTAL = CRYSTAL_CARDS.with_(scf=None, corehole="None", fms="3.0", xanes="2 0.1 0.3")


def h2o(name: str = "h2o") -> Molecule:
    return Molecule(
        ["O", "H", "H"],
        [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]],
        properties={"name": name, "smiles": "O"},
    )


def co2() -> Molecule:
    return Molecule(["C", "O", "O"], [[0, 0, 0], [0, 0, 1.16], [0, 0, -1.16]], properties={"name": "co2"})


def cu_metal() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]])


def cu2o() -> Structure:
    # Pn-3m, origin choice 1 (pymatgen): O at 2a (0,0,0), Cu at 4b (1/4,1/4,1/4); a = 4.2696 A.
    return Structure.from_spacegroup("Pn-3m", Lattice.cubic(4.2696), ["O", "Cu"], [[0, 0, 0], [0.25] * 3])


def cu3au() -> Structure:
    # L1_2: Au at the corner, Cu on the face centres -> one Cu site of multiplicity 3.
    return Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def test_molecule_input_absorber_at_origin_potentials_and_cards():
    mol = co2()
    sites = molecule_inputs(mol, "O")
    assert [s.site_index for s in sites] == [1, 2]
    assert all(s.multiplicity == 1 for s in sites)
    for s in sites:
        inp = s.feff_input
        atoms = inp.atoms
        assert inp.num_atoms == len(mol)  # every atom of the molecule
        assert (atoms[0].x, atoms[0].y, atoms[0].z, atoms[0].ipot) == (0.0, 0.0, 0.0, 0)
        # the absorber is at the origin: the other O is 2.32 A away, C 1.16 A
        dists = sorted(round(a.distance, 3) for a in atoms[1:])
        assert dists == [1.16, 2.32]
        pots = {p.ipot: (p.z, p.tag) for p in inp.potentials}
        assert pots == {0: (8, "O"), 1: (6, "C"), 2: (8, "O")}  # one potential per element
        tag_of = {a.tag: a.ipot for a in atoms[1:]}
        assert tag_of == {"C": 1, "O": 2}
        text = s.text
        for line in ("EDGE K", "S02 1", "CONTROL 1 1 1 1 1 1", "PRINT 0 0 0 0 0 0", "COREHOLE RPA",
                     "XANES 4 0.04 0.1", "FMS 9.0", "SCF 7.0"):
            assert line in text, line
        assert "EXCHANGE 0" in text


def test_molecule_without_other_absorbers_has_no_unused_potential():
    sites = molecule_inputs(h2o(), "O")
    assert len(sites) == 1
    assert [(p.ipot, p.tag) for p in sites[0].feff_input.potentials] == [(0, "O"), (1, "H")]


def test_cards_are_configurable():
    cards = MOLECULE_CARDS.with_(edge="L3", fms="6.0", scf=None, extra=("LDOS -30 15 0.1",))
    text = molecule_inputs(h2o(), "O", cards)[0].text
    assert "EDGE L3" in text and "FMS 6.0" in text and "LDOS -30 15 0.1" in text
    assert "SCF" not in text


def test_crystal_inputs_symmetry_distinct_sites_and_multiplicities():
    sites = crystal_inputs(cu2o(), "Cu", cluster_radius=6.0, name="Cu2O")
    assert len(sites) == 1 and sites[0].multiplicity == 4  # one Cu site, 4 Cu per cell
    inp = sites[0].feff_input
    atoms = inp.atoms
    assert (atoms[0].x, atoms[0].y, atoms[0].z, atoms[0].ipot) == (0.0, 0.0, 0.0, 0)
    d = np.array([a.distance for a in atoms])
    assert np.all(np.diff(d) >= -1e-9) and d.max() <= 6.0  # sorted, within the radius
    # linear O-Cu-O: 2 O at 1.849 A, then 12 Cu at 3.019 A
    assert [a.tag for a in atoms[1:3]] == ["O", "O"] and d[1] == pytest.approx(1.8488, abs=1e-3)
    assert [a.tag for a in atoms[3:15]] == ["Cu"] * 12 and d[3] == pytest.approx(3.0191, abs=1e-3)
    assert sorted((p.ipot, p.tag) for p in inp.potentials) == [(0, "Cu"), (1, "O"), (2, "Cu")]
    assert "S02 0.95" in sites[0].text and "COREHOLE RPA" in sites[0].text

    l12 = crystal_inputs(cu3au(), "Cu", cluster_radius=4.0, name="Cu3Au")
    assert [(s.site_index, s.multiplicity) for s in l12] == [(1, 3)]
    gold = crystal_inputs(cu3au(), "Au", cluster_radius=4.0, name="Cu3Au")
    assert [(s.site_index, s.multiplicity) for s in gold] == [(0, 1)]
    # first shell of Au: 12 Cu at a/sqrt(2)
    assert [a.tag for a in gold[0].feff_input.atoms[1:13]] == ["Cu"] * 12


@pytest.mark.parametrize(
    "make, absorber, reason",
    [
        (lambda: Structure(Lattice.cubic(3.7), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]), "Cu", "disordered"),
        (cu2o, "Fe", "absorber Fe missing"),
        (lambda: Molecule(["O", "H", "H"], [[0, 0, 0], [0.3, 0, 0], [0, 0.96, 0]]), "O", "overlapping atoms"),
        (lambda: Structure(Lattice.cubic(4.0), ["Cu", "O"], [[0, 0, 0], [0.05, 0, 0]]), "Cu", "overlapping atoms"),
    ],
)
def test_bad_input_names_structure_and_reason(make, absorber, reason):
    structure = make()
    build = crystal_inputs if isinstance(structure, Structure) else molecule_inputs
    with pytest.raises(FeffInputError) as err:
        build(structure, absorber, name="sample-42")
    assert "sample-42" in str(err.value) and reason in str(err.value)


def test_unknown_edge_is_rejected():
    with pytest.raises(FeffInputError, match="h2o: unknown EDGE 'Q9'"):
        molecule_inputs(h2o(), "O", MOLECULE_CARDS.with_(edge="Q9"))


def test_parse_xmu_text_rejects_garbage():
    with pytest.raises(ValueError, match="site 3 xmu.dat: 2 data points"):
        parse_xmu_text("# header\n1 2 3 4 5 6\n2 2 3 4 5 6\n", "site 3 xmu.dat")


# ------------------------------------------------------------------------------------------------
# Batch runner: real FEFF runs
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def molecule_batch(tmp_path_factory):
    """A batch of one good molecule (real FEFF, shared cards), one that FEFF rejects (broken SCF
    card) and one without the absorber; run, then run again to resume."""
    out = tmp_path_factory.mktemp("feff_mol")
    good = FeffJob("qm9-999001", h2o(), "O", meta={"qm9_index": 999001, "smiles": "O"})
    broken = FeffJob("qm9-999002", h2o("broken"), "O", MOLECULE_CARDS.with_(scf="abc"), meta={"qm9_index": 999002})
    no_o = FeffJob("qm9-999003", Molecule(["C", "H"], [[0, 0, 0], [0, 0, 1.09]]), "O", meta={"qm9_index": 999003})
    jobs = [broken, good, no_o]
    sink = JsonlSink(out / "set.jsonl")
    first = run_batch(jobs, sink, n_workers=2, progress=False)
    text_after_first = sink.path.read_text()
    second = run_batch(jobs, JsonlSink(out / "set.jsonl"), n_workers=2, progress=False)
    return first, second, sink.path, text_after_first


def test_batch_keeps_failures_and_completes_the_rest(molecule_batch):
    first, _, path, _ = molecule_batch
    assert first.done == 1 and first.sites_done == 1 and first.skipped_existing == 0
    assert set(first.failed) == {"qm9-999002", "qm9-999003"}
    assert "FeffParseError" in first.failed["qm9-999002"] and "SCF" in first.failed["qm9-999002"]
    assert "absorber O missing" in first.failed["qm9-999003"]
    assert first.reason_counts() == {"FeffParseError": 1, "FeffInputError": 1}
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    by_index = {d["qm9_index"]: d for d in lines}
    assert len(lines) == 3
    assert "error" in by_index[999002] and "error" in by_index[999003]
    good = by_index[999001]
    assert set(good) == {"qm9_index", "smiles", "elements", "xyz_angstrom", "absorber", "edge", "sites", "seconds"}
    assert good["elements"] == ["O", "H", "H"] and good["absorber"] == "O" and good["edge"] == "K"
    site = good["sites"][0]
    omega, mu = np.array(site["omega_eV"]), np.array(site["mu"])
    assert site["site"] == 0 and omega.size > 50
    # an O K edge: absolute photon energies around 520-600 eV, rising absorption
    assert 515 < omega[0] < 545 and omega[-1] > 560 and np.all(np.diff(omega) > 0)
    assert mu[-1] > 5 * mu[0] and good["seconds"] > 0


def test_batch_is_resumable(molecule_batch):
    _, second, path, text_after_first = molecule_batch
    assert second.skipped_existing == 3 and second.done == 0 and not second.failed
    assert path.read_text() == text_after_first  # nothing recomputed or rewritten


def test_jsonl_readable_by_training_reader(molecule_batch):
    readers = pytest.importorskip("models.readers")
    _, _, path, _ = molecule_batch
    records, report = readers.read_qm9_jsonl(path)
    assert [r.record_id for r in records] == ["qm9-999001"]
    assert report.n_skipped == 2 and report.reason_counts()["FEFF failure"] == 2
    assert records[0].structure.cart_coords.shape == (3, 3)


def test_torn_last_line_is_repaired(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"qm9_index": 1, "sites": []}\n{"qm9_index": 2, "si')
    sink = JsonlSink(path)
    assert sink.done == {"qm9-1"} and path.read_text().endswith("\n")


def test_crystal_folder_output_and_compute_spectra(tmp_path):
    """Cu metal with reduced cards: folder layout read by the training reader; compute_spectra
    returns the same spectrum and reports a structure without the absorber by name."""
    job = FeffJob("cu-fcc", cu_metal(), "Cu", CHEAP_CRYSTAL, cluster_radius=3.0)
    summary = run_batch([job], FolderSink(tmp_path), n_workers=1, progress=False)
    assert summary.done == 1 and not summary.failed
    xmu = tmp_path / "cu-fcc" / "FEFF-XANES" / "000_Cu" / "xmu.dat"
    assert (tmp_path / "cu-fcc" / "POSCAR").is_file() and xmu.is_file()
    assert json.loads((xmu.parent / "run.json").read_text())["multiplicity"] == 4
    again = run_batch([job], FolderSink(tmp_path), n_workers=1, progress=False)
    assert again.skipped_existing == 1 and again.done == 0

    readers = pytest.importorskip("models.readers")
    records, report = readers.read_feff_materials(tmp_path, progress=False)
    assert report.n_read == 1 and records[0].sites[0].site_index == 0
    energy, mu = records[0].sites[0].energy, records[0].sites[0].mu
    assert 8960 < energy[0] < 8990  # Cu K edge, 8979 eV

    with pytest.raises(FeffRunError, match="Cu2O-like: absorber Zn missing"):
        compute_spectra([cu2o()], "Zn", names=["Cu2O-like"])
    failures: dict[int, str] = {}
    spectra = compute_spectra(
        [cu_metal(), Molecule(["C"], [[0, 0, 0]])], "Cu", CHEAP_CRYSTAL, cluster_radius=3.0,
        n_workers=1, on_error="skip", errors=failures,
    )
    assert spectra[1] is None
    assert list(failures) == [1] and "absorber Cu missing" in failures[1]
    e2, mu2 = spectra[0]
    np.testing.assert_allclose(e2, energy, atol=1e-3)
    np.testing.assert_allclose(mu2, mu, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# QM9 order
# ------------------------------------------------------------------------------------------------


def test_qm9_order_is_the_seeded_shuffle_of_index_order(tmp_path):
    from models.feff.qm9 import QM9_ORDER_SEED, qm9_molecules, qm9_order

    _fake_qm9pack(tmp_path)
    order = qm9_order("N", folder=tmp_path)
    expected = [2, 5, 7, 9]
    random.Random(QM9_ORDER_SEED).shuffle(expected)
    assert [m.index for m in order] == expected
    assert [m.index for m in qm9_order("N", folder=tmp_path)] == expected  # deterministic
    # extensions continue the same order
    assert [m.index for m in qm9_molecules("N", count=2, folder=tmp_path)] == expected[:2]
    assert [m.index for m in qm9_molecules("N", count=5, start=2, folder=tmp_path)] == expected[2:]
    mol = qm9_molecules("N", count=1, folder=tmp_path)[0].to_molecule()
    assert mol.properties["qm9_index"] == expected[0] and "N" in {s.specie.symbol for s in mol}


def test_qm9_order_reproduces_the_shared_o_set(qm9_o_k_jsonl):
    """The released O set is the start of this order (takes ~15 s: parses the qm9pack CSVs)."""
    from models.feff.qm9 import QM9DataError, qm9_molecules

    try:
        order = qm9_molecules("O", count=1000)
    except QM9DataError as exc:
        pytest.skip(str(exc))
    released = [json.loads(line) for line in qm9_o_k_jsonl.open()]
    first = {m.index: m for m in order[: len(released) + 1]}
    assert {d["qm9_index"] for d in released} <= set(first)  # the release is a prefix (+-1 job)
    for d in released[:50]:
        m = first[d["qm9_index"]]
        assert list(m.elements) == d["elements"] and [list(x) for x in m.xyz] == d["xyz_angstrom"]


def test_failures_are_kept_on_resume_and_dropped_for_retry(tmp_path):
    # folder output: a crystal without the absorber fails before FEFF; a second batch skips it
    job = FeffJob("cu2o-no-zn", cu2o(), "Zn")
    first = run_batch([job], FolderSink(tmp_path), n_workers=1, progress=False)
    assert "absorber Zn missing" in first.failed["cu2o-no-zn"]
    assert "absorber Zn missing" in (tmp_path / "cu2o-no-zn" / "error.txt").read_text()
    second = run_batch([job], FolderSink(tmp_path), n_workers=1, progress=False)
    assert second.skipped_existing == 1 and not second.failed
    # JSON lines: retrying removes the old error line before the job runs again
    path = tmp_path / "m.jsonl"
    path.write_text('{"qm9_index": 1, "error": "FeffPipelineError: boom"}\n{"qm9_index": 2, "sites": []}\n')
    sink = JsonlSink(path)
    assert sink.failed == {"qm9-1"} and sink.done == {"qm9-2"}
    sink.drop_failures(["qm9-1"])
    assert [json.loads(x)["qm9_index"] for x in path.read_text().splitlines()] == [2]
    assert JsonlSink(path).failed == set()


def test_cli_structures_reports_failures_by_name(tmp_path, capsys):
    from apps.feff import main

    poscar = tmp_path / "cuprite.vasp"
    cu2o().to(filename=str(poscar), fmt="poscar")
    args = ["structures", str(poscar), str(tmp_path / "missing.cif"), "--absorber", "Zn",
            "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress",
            "--summary-json", str(tmp_path / "summary.json")]
    assert main(args) == 3  # failures are reported in the exit status
    out = capsys.readouterr().out
    assert "failed 2" in out and "cuprite: absorber Zn missing" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failure_reasons"] == {"FeffInputError": 1, "StructureError": 1}
    assert "absorber Zn missing" in (tmp_path / "out" / "cuprite" / "error.txt").read_text()


def test_cli_qm9_without_qm9pack_ends_in_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    from apps.feff import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "qm9pack" else real_find_spec(name, *a))
    code = main(["qm9", "--absorber", "N", "--count", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("xas-feff: error: qm9pack is not installed")
