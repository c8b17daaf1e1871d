"""Candidate sources (models.sources): parsing, the AMCSD, QM9 and enumeration sources, and their
use through candidate libraries, xas-rank and xas-predict with the shipped models."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest

from models.sources import (
    EXAMPLES_DIR,
    build_candidates,
    is_source,
    iter_candidates,
    iter_chunks,
    load_candidate,
    parse_source,
)


@pytest.fixture(autouse=True)
def user_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XAS_USER_DIR", str(tmp_path / "user"))
    return tmp_path / "user"


# ------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, bad", [
    ("mp:Cu", "unknown scheme 'mp'"),
    ("amcsd:Cu?cnt=3", "unknown option 'cnt'"),
    ("amcsd:Cu,Xx", "'Xx'"),
    ("amcsd:", "give elements"),
    ("amcsd:Cu?count=0", "count=0 must be >= 1"),
    ("amcsd:Cu?count=three", "count='three' is not an integer"),
    ("amcsd:Cu?count=2&count=3", "option 'count' given twice"),
    ("amcsd:Cu?seed", "option 'seed' is not key=value"),
    ("qm9:Cu", "hold only H, C, N, O, F, not Cu"),
    ("qm9:smarts=[OX2H", "smarts='[OX2H' is not a valid SMARTS"),
    ("qm9:formula=C2.5H6", "whole numbers of atoms"),
    ("qm9:formula=Qq2", "formula='Qq2' is not a chemical formula"),
    ("enumerate:no_such_file.cif", "seed structure 'no_such_file.cif' is neither a file nor a shipped example"),
    ("enumerate:CuO?substitute=O-S", "'O-S' is not old:new"),
    ("enumerate:CuO?strain=0.9", "strain=0.9 is outside [0, 0.3]"),
    ("enumerate:CuO?distort=-1", "distort=-1 is outside"),
    ("enumerate:CuO?threshold=0", "threshold=0 is outside (0, 1]"),
])
def test_bad_source_strings_name_the_bad_part(text, bad):
    with pytest.raises(ValueError, match="candidate source") as err:
        parse_source(text)
    assert bad in str(err.value) and repr(text) in str(err.value)


def test_parse_is_canonical_and_round_trips():
    src = parse_source("qm9:O?seed=0&count=2000")
    assert (src.elements, src.count, src.seed) == (("O",), 2000, 0)
    assert src.text == "qm9:O?count=2000&seed=0"
    assert parse_source("qm9:formula=C2H6O&count=5").formula == "C2H6O"
    smarts = parse_source("qm9:smarts=[O%26X2H]")  # '&' written %26
    assert smarts.smarts == "[O&X2H]" and parse_source(smarts.text) == smarts
    enum = parse_source("enumerate:CuO?substitute=auto&keep=Cu&strain=0.02&distort=0.05&count=50&seed=0")
    assert enum.path == "CuO.cif" and enum.substitute == "auto" and enum.threshold == 0.01
    assert parse_source(enum.text) == enum
    assert parse_source("enumerate:CuO").count == 20  # the default
    assert is_source("amcsd:Cu") and is_source("enumerate:x") and not is_source("CCO")
    assert not is_source("models/examples/CuO.cif") and not is_source(None)


# ------------------------------------------------------------------------------------ AMCSD
def test_amcsd_gives_named_distinct_structures_with_disordered_ones():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    candidates, skipped = build_candidates("amcsd:Cu?minerals=stistaite,CuI,marshite")
    names = [c.name for c in candidates]
    assert len(set(names)) == len(names) and skipped == {}
    assert all(n.split(" (AMCSD ")[0] in ("stistaite", "CuI", "marshite") for n in names)
    by_mineral = Counter(c.provenance["mineral"] for c in candidates)
    assert set(by_mineral) == {"stistaite", "CuI", "marshite"}
    stistaite = next(c for c in candidates if c.provenance["mineral"] == "stistaite")
    assert not stistaite.structure.is_ordered and stistaite.provenance["ordered"] is False  # kept, not dropped
    # de-duplicated: marshite has refinements found alike, recorded; no two kept ones alike
    assert any(c.provenance["duplicates"] for c in candidates if c.provenance["mineral"] == "marshite")
    matcher = StructureMatcher()
    for i, a in enumerate(candidates):
        for b in candidates[i + 1:]:
            same = a.structure.composition.reduced_formula == b.structure.composition.reduced_formula
            assert not (same and matcher.fit(a.structure, b.structure)), (a.name, b.name)
    ids = [c.provenance["amcsd_id"] for c in candidates] + [d for c in candidates for d in c.provenance["duplicates"]]
    assert len(ids) == len(set(ids))
    # a candidate's ref gives it alone again
    again = load_candidate(stistaite.ref)
    assert again.ref == stistaite.ref == f"amcsd:id={stistaite.provenance['amcsd_id']}"
    assert again.structure.composition == stistaite.structure.composition


def test_amcsd_count_and_seed_are_reproducible():
    first = [c.name for c in iter_candidates("amcsd:Cu,S?count=3&seed=1")]
    assert len(first) == 3 and first == [c.name for c in iter_candidates("amcsd:Cu,S?count=3&seed=1")]
    assert all("S" in {el.symbol for el in c.structure.composition} for c in iter_candidates("amcsd:Cu,S?count=2"))


def test_amcsd_unknown_mineral_and_unusable_entry_are_reported(caplog):
    with pytest.raises(ValueError, match="not among the AMCSD entries holding Cu: tenoritte"):
        list(iter_candidates("amcsd:Cu?minerals=tenoritte"))
    with caplog.at_level(logging.WARNING, logger="models.sources"):
        candidates, skipped = build_candidates("amcsd:id=11545,20634")  # CuI; barlowite's CIF does not parse
    assert [c.provenance["amcsd_id"] for c in candidates] == [11545]
    assert list(skipped) == ["barlowite (AMCSD 20634)"] and "unparsable CIF" in skipped["barlowite (AMCSD 20634)"]
    assert "1 item(s) skipped: barlowite (AMCSD 20634)" in caplog.text


def test_amcsd_library_averages_disordered_candidates_and_lists_skipped(user_dir):
    from xas_callbacks.candidates import CandidateLibrary

    lib = CandidateLibrary.from_source("amcsd:Cu?minerals=stistaite,CuI", model="cu-k")
    assert lib.provenance["source"] == "amcsd:Cu?minerals=stistaite,CuI"
    assert {n.split(" (")[0] for n in lib.names} == {"stistaite", "CuI"} and lib.failures == {}
    stistaite = next(n for n in lib.names if n.startswith("stistaite"))
    assert lib.provenance["disorder"][stistaite]["n_samples"] >= 1  # approximated, and said so
    assert lib.provenance["candidates"][stistaite]["ordered"] is False
    assert np.all(np.isfinite(lib.mean)) and lib.mean.shape == (len(lib.names), lib.energies.size)
    assert lib.source_of(stistaite).startswith("amcsd:id=")
    assert lib.structure_of(stistaite).composition.reduced_formula == "Cu2Sn1.67Sb0.23"
    # a source item among others; skipped ones are failures
    mixed = CandidateLibrary.from_structures([str(EXAMPLES_DIR / "CuO.cif"), "amcsd:id=11545,20634"], model="cu-k")
    assert mixed.names == ["CuO", "CuI (AMCSD 11545)"]
    assert "unparsable CIF" in mixed.failures["barlowite (AMCSD 20634)"]
    # the start document's source rebuilds the library (from the cache)
    again = CandidateLibrary.from_start_doc({"candidates": {"source": lib.provenance["source"],
                                                            "sha256": lib.provenance["candidates_sha256"]},
                                             "model": {"name": "cu-k"}})
    assert again.names == lib.names and "sha256_mismatch" not in again.provenance
    np.testing.assert_array_equal(again.mean, lib.mean)


def test_source_without_the_models_absorber_is_refused_before_anything_is_read():
    from plans.adaptive import candidate_library

    with pytest.raises(ValueError, match="need not hold Cu, the absorber of model 'cu-k'; add it, e.g. amcsd:Cu,S"):
        candidate_library("amcsd:S?count=2", "cu-k", "Cu", "K")
    with pytest.raises(ValueError, match="QM9 molecules hold no Cu"):
        candidate_library("qm9:O?count=2", "cu-k", "Cu", "K")
    with pytest.raises(ValueError, match="unknown option 'cout'"):
        candidate_library("amcsd:Cu?cout=2", "cu-k", "Cu", "K")


# ------------------------------------------------------------------------------------ QM9
def test_qm9_by_element_with_count_and_seed_is_reproducible():
    chosen = build_candidates("qm9:O?count=3&seed=0")[0]
    # a fixed draw (the first 3 of the matches shuffled with the seed), given in QM9 index order
    assert [c.name for c in chosen] == ["qm9-2626", "qm9-119890", "qm9-123213"]
    assert all("O" in {site.specie.symbol for site in c.structure} for c in chosen)
    assert chosen[0].provenance == {"source": "qm9", "qm9_index": 2626, "smiles": "O=CCCCC#C"}
    other = [c.name for c in iter_candidates("qm9:O?count=3&seed=1")]
    assert len(other) == 3 and other != [c.name for c in chosen]


def test_qm9_by_formula_and_smarts():
    c2h6o = build_candidates("qm9:formula=C2H6O")[0]
    assert {c.provenance["smiles"] for c in c2h6o} == {"CCO", "COC"}
    assert all(Counter(s.specie.symbol for s in c.structure) == {"H": 6, "C": 2, "O": 1} for c in c2h6o)
    alcohols = build_candidates("qm9:formula=C3H8O&smarts=[OX2H]")[0]  # the propanols, not methoxyethane
    assert [(c.name, c.provenance["smiles"]) for c in alcohols] == [("qm9-22", "CC(C)O"), ("qm9-40", "CCCO")]
    assert load_candidate("qm9:index=40").structure == alcohols[1].structure


def test_qm9_is_streamed(monkeypatch):
    import models.feff.qm9 as qm9

    read = []
    real = qm9._iter_rows

    def counting(folder):
        for row in real(folder):
            read.append(row[0])
            yield row

    monkeypatch.setattr(qm9, "_iter_rows", counting)
    chunks = iter_chunks("qm9:O", 4)
    first = next(chunks)
    assert len(first) == 4 and all("O" in c.structure.composition for c in first)
    assert len(read) < 50  # four molecules with O, not all 130,831 rows
    chunks.close()


# ------------------------------------------------------------------------------------ enumeration
def test_enumeration_is_reproducible_with_seed_and_count():
    text = "enumerate:CuO?substitute=O:S,Cu:Ag&strain=0.02&distort=0.05&count=5&seed=0"
    a, b = build_candidates(text)[0], build_candidates(text)[0]
    assert [c.name for c in a] == ["CuO-000", "CuO-001", "CuO-002 O>S", "CuO-003 Cu>Ag", "CuO-004"]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.structure.cart_coords, y.structure.cart_coords)
    seed_structure = load_candidate(a[0].ref).structure
    np.testing.assert_allclose(a[0].structure.cart_coords, seed_structure.cart_coords)  # 0: the seed as given
    assert a[2].structure.composition.reduced_formula == "CuS" and a[2].provenance["substitution"] == {"O": "S"}
    for c in a[1:]:
        strain = np.array(c.provenance["strain"])
        assert np.allclose(strain, strain.T) and np.abs(strain).max() <= 0.02
        assert 0.02 < c.provenance["displacement_rms_A"] < 0.2
    # a candidate does not depend on count; another seed gives other ones; a ref gives it alone
    shorter = build_candidates(text.replace("count=5", "count=2"))[0]
    np.testing.assert_array_equal(shorter[1].structure.cart_coords, a[1].structure.cart_coords)
    other = build_candidates(text.replace("seed=0", "seed=1"))[0]
    assert not np.allclose(other[1].structure.cart_coords, a[1].structure.cart_coords)
    np.testing.assert_array_equal(load_candidate(a[3].ref).structure.cart_coords, a[3].structure.cart_coords)


def test_enumeration_with_predicted_substitutions_keeps_the_absorber():
    candidates = build_candidates("enumerate:CuO?substitute=auto&keep=Cu&count=4&seed=0")[0]
    subs = [c.provenance["substitution"] for c in candidates[1:]]
    assert all("Cu" not in s for s in subs) and any(s for s in subs)
    assert all(0.01 <= c.provenance["substitution_probability"] for c in candidates[1:] if c.provenance["substitution"])
    assert all("Cu" in c.structure.composition for c in candidates)
    with pytest.raises(ValueError, match="strain needs a crystal"):
        list(iter_candidates("enumerate:ethanol?strain=0.01"))
    molecules = build_candidates("enumerate:ethanol?substitute=O:S&distort=0.02&count=3")[0]
    assert [c.structure.composition.formula for c in molecules][2] == "H6 C2 S1"


# ------------------------------------------------------------------------------------ end to end
def test_xas_rank_with_an_amcsd_source_and_the_cu_k_model(tmp_path, capsys):
    from apps.rank import main
    from xas_callbacks.candidates import CandidateLibrary

    source = "amcsd:Cu?minerals=tenorite,cuprite,CuI"
    lib = CandidateLibrary.from_source(source, model="cu-k")
    target = next(i for i, n in enumerate(lib.names) if n.startswith("cuprite"))
    energy = np.arange(lib.energies[0] - 20, lib.energies[-1] - 10, 0.8)
    rng = np.random.default_rng(1)
    mu = 2.0 * np.interp(energy + 2.0, lib.energies, lib.mean[target]) + 0.4 + rng.normal(0, 0.004, energy.size)
    spectrum = tmp_path / "spec.txt"
    np.savetxt(spectrum, np.column_stack([energy, mu]), header="energy mu")
    out = tmp_path / "r.json"
    assert main([str(spectrum), "--candidates", source, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["ranking"][0]["name"] == lib.names[target]
    assert res["provenance"]["source"] == source and res["provenance"]["candidate_sources"] == [source]
    assert lib.names[target] in capsys.readouterr().out
    assert main([str(spectrum), "--candidates", "amcsd:Cu?minerals=tenorite&seed=x"]) == 2
    assert "seed='x' is not an integer" in capsys.readouterr().err


def test_xas_predict_with_a_qm9_source(tmp_path, capsys):
    from apps.predict import main

    out = tmp_path / "p.json"
    assert main(["qm9:formula=C2H6O", "--model", "o-k", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [s["name"] for s in doc["spectra"]] == ["qm9-14", "qm9-15"] and doc["failures"] == {}
    assert main(["qm9:formula=C2H6O?count=-1", "--model", "o-k"]) == 2
    assert "count=-1 must be >= 1" in capsys.readouterr().err
