"""Snapshots of computed QM9 lines into data/, and the readers that take shared + project sets.

Synthetic `xas-feff qm9` lines (water-like molecules with made-up spectra) stand in for the
background batches; the positions of the fixed order are given explicitly (or come from a fake
qm9pack folder), so nothing here needs FEFF, qm9pack or the shared data.
"""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest
from synthetic import fake_qm9pack

from apps.feff import main as feff_main
from models import training
from models.feff.qm9 import qm9_order, qm9_positions
from models.feff.snapshot import SnapshotError, format_positions, snapshot
from models.readers import read_qm9_jsonl, read_qm9_sets, split_ids

#: Fake fixed order: qm9_index -> position.
POSITIONS = {100 + k: k for k in range(40)}


def line(index: int, *, shift: float = 0.0, error: str | None = None, absorber: str = "O") -> dict:
    """One `xas-feff qm9` line of a water-like molecule (or a failure line)."""
    doc = {"qm9_index": index, "smiles": "O", "elements": [absorber, "H", "H"],
           "xyz_angstrom": [[0.0, 0.0, 0.0], [0.0, 0.76, 0.59], [0.0, -0.76, 0.59]],
           "absorber": absorber, "edge": "K"}
    if error:
        return {**doc, "error": error}
    energy = np.linspace(527.0, 590.0, 40)
    mu = 1.0 / (1.0 + np.exp(-(energy - 535.0 - shift - 0.01 * index)))
    return {**doc, "sites": [{"site": 0, "omega_eV": energy.round(3).tolist(), "mu": mu.round(6).tolist()}],
            "seconds": 10.0 + index % 7}


def write_jsonl(path, docs, torn: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs) + torn)


def gz_lines(path) -> list[dict]:
    with gzip.open(path, "rt") as fh:
        return [json.loads(x) for x in fh]


def test_snapshot_round_trip_is_read_by_the_readers(tmp_path):
    src = tmp_path / "batch" / "qm9_O_K_feff10.jsonl"
    docs = [line(105), line(101), line(103, error="FeffRunError: boom"), line(102)]
    write_jsonl(src, docs, torn='{"qm9_index": 104, "sites": [{"si')  # being written right now
    dest = tmp_path / "data" / "qm9_o_k_feff10_ext"
    s = snapshot([src.parent], dest, positions=POSITIONS, today="2026-12-02")
    assert s.path == dest / "qm9_O_K_feff10.jsonl.gz" and s.changed
    assert (s.n_molecules, s.n_sites, s.n_failures, s.added) == (3, 3, 1, 4)
    assert s.positions == [1, 2, 3, 5] and s.median_seconds == pytest.approx(13.0)
    raw = s.path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip, mtime 0
    assert [d["qm9_index"] for d in gz_lines(s.path)] == [101, 102, 103, 105]  # by position
    records, report = read_qm9_jsonl(s.path)
    assert [r.record_id for r in records] == ["qm9-101", "qm9-102", "qm9-105"]
    assert report.reason_counts() == {"FEFF failure": 1}
    by_id = {f"qm9-{d['qm9_index']}": d for d in docs}
    for r in records:
        site = by_id[r.record_id]["sites"][0]
        np.testing.assert_array_equal(r.sites[0].energy, site["omega_eV"])
        np.testing.assert_array_equal(r.sites[0].mu, site["mu"])
    readme = s.readme.read_text()
    for text in ("3 with spectra", "1 FEFF failure", "1-3, 5", s.sha256, "2026-12-02", "EDGE K", "feff10-rs"):
        assert text in readme


def test_snapshot_is_deterministic_merges_and_never_drops_lines(tmp_path):
    docs = [line(100 + k) for k in range(12)] + [line(120, error="FeffRunError: scf")]
    first = tmp_path / "a" / "qm9_O_K_feff10.jsonl"
    write_jsonl(first, docs)
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    write_jsonl(tmp_path / "b" / "qm9_O_K_feff10.jsonl", shuffled)
    one = snapshot([tmp_path / "a"], tmp_path / "d1", positions=POSITIONS)
    two = snapshot([tmp_path / "b"], tmp_path / "d2", positions=POSITIONS)
    assert one.path.read_bytes() == two.path.read_bytes()  # input order does not matter
    readme = one.readme.read_text()
    again = snapshot([tmp_path / "a"], tmp_path / "d1", positions=POSITIONS, today="2099-01-01")
    assert not again.changed and again.added == 0 and one.readme.read_text() == readme  # nothing rewritten

    # the batch goes on: new molecules, a retried failure, and a duplicate with other numbers
    later = docs + [line(130), line(120), line(101, shift=3.0)]
    write_jsonl(first, later)
    grown = snapshot([tmp_path / "a"], tmp_path / "d1", positions=POSITIONS)
    got = {d["qm9_index"]: d for d in gz_lines(grown.path)}
    assert grown.added == 2 and grown.n_failures == 0 and grown.n_molecules == 14
    assert "error" not in got[120] and 130 in got
    assert got[101] == json.loads(json.dumps(docs[1]))  # the first success of a molecule is kept

    # a machine that lost the batch output: a snapshot from what is left removes nothing
    write_jsonl(tmp_path / "c" / "qm9_O_K_feff10.jsonl", [line(131)])
    kept = snapshot([tmp_path / "c"], tmp_path / "d1", positions=POSITIONS)
    assert set(gz_lines(kept.path)[i]["qm9_index"] for i in range(kept.n_molecules)) == set(got) | {131}


@pytest.mark.parametrize("docs, torn, message", [
    ([line(101)], "not json\n", ":2: malformed JSON"),
    ([line(101), line(102, absorber="N")], "", "different absorbers"),
    ([line(101), line(999)], "", "qm9_index 999 is not a QM9 molecule containing O"),
    ([line(101), {"name": "x.cif", "sites": []}], "", ":2: line has no qm9_index"),
    ([{k: v for k, v in line(101).items() if k != "xyz_angstrom"}], "", "lacks key(s) xyz_angstrom"),
])
def test_bad_lines_are_named(tmp_path, docs, torn, message):
    src = tmp_path / "qm9_O_K_feff10.jsonl"
    write_jsonl(src, docs, torn)
    with pytest.raises(SnapshotError, match=message.replace("(", r"\(").replace(")", r"\)")):
        snapshot([src], tmp_path / "data" / "x", positions=POSITIONS)
    assert not (tmp_path / "data" / "x").exists()


def test_size_limit_of_the_data_folder(tmp_path):
    write_jsonl(tmp_path / "src" / "qm9_O_K_feff10.jsonl", [line(100 + k) for k in range(10)])
    (tmp_path / "data" / "other").mkdir(parents=True)
    (tmp_path / "data" / "other" / "big.bin").write_bytes(b"x" * 20_000)
    with pytest.raises(SnapshotError, match=r"would hold 0\.0\d\d MB .* \(limit 0\.02 MB\)"):
        snapshot([tmp_path / "src"], tmp_path / "data" / "ext", positions=POSITIONS, limit_mb=0.02)
    assert not (tmp_path / "data" / "ext").exists()
    assert snapshot([tmp_path / "src"], tmp_path / "data" / "ext", positions=POSITIONS, limit_mb=1).changed


def test_shared_and_project_sets_read_together_shared_wins(tmp_path):
    shared = tmp_path / "shared" / "qm9_O_K_feff10.jsonl"
    write_jsonl(shared, [line(101), line(102, error="FeffRunError: scf"), line(103)])
    write_jsonl(tmp_path / "batch" / "b.jsonl", [line(104), line(101, shift=5.0), line(102)])
    ext = snapshot([tmp_path / "batch"], tmp_path / "data" / "ext", positions=POSITIONS).path
    records, report = read_qm9_sets([shared, ext])
    assert [r.record_id for r in records] == ["qm9-101", "qm9-103", "qm9-102", "qm9-104"]
    assert records[0].source.startswith(str(shared))  # the shared line, not the shifted one
    assert records[2].source.startswith(str(ext))  # a shared failure computed later is used
    assert report.reason_counts() == {"FEFF failure": 1, "duplicate id": 1}
    assert "qm9-101 already read from" in dict(report.skipped)[f"{ext}:1"]
    assert report.n_read == 4 and report.n_sites == 4
    assert [r.record_id for r in read_qm9_sets([shared, ext], limit=2)[0]] == ["qm9-101", "qm9-103"]
    # the training pipeline reads the same way
    again, _ = training.read_records("o-k", [shared, ext])
    assert [r.record_id for r in again] == [r.record_id for r in records]


def test_splits_are_stable_when_rows_are_appended(tmp_path):
    shared = tmp_path / "qm9_O_K_feff10.jsonl"
    write_jsonl(shared, [line(100 + k) for k in range(20)])
    write_jsonl(tmp_path / "batch" / "b.jsonl", [line(100 + k) for k in range(20, 40)])
    ext = snapshot([tmp_path / "batch"], tmp_path / "data" / "ext", positions=POSITIONS).path
    before = {i: k for k, ids in split_ids([r.record_id for r in read_qm9_jsonl(shared)[0]]).items() for i in ids}
    both, _ = training.read_records("o-k", [shared, ext])
    after = {i: k for k, ids in split_ids([r.record_id for r in both]).items() for i in ids}
    assert len(after) == 40 and all(after[i] == k for i, k in before.items())
    # also on a large id set: appending 5,000 molecules moves none of the first 10,000
    old = [f"qm9-{i}" for i in range(10_000)]
    a = split_ids(old)
    b = split_ids(old + [f"qm9-{i}" for i in range(10_000, 15_000)])
    assert all(set(a[k]) <= set(b[k]) for k in a)
    assert abs(len(a["test"]) / len(old) - 0.1) < 0.01


def test_positions_follow_the_fixed_order(tmp_path):
    fake_qm9pack(tmp_path)
    assert qm9_positions("N", folder=tmp_path) == {m.index: k for k, m in enumerate(qm9_order("N", folder=tmp_path))}
    assert format_positions([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8" and format_positions([]) == "none"


def test_cli_snapshot_and_its_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("models.feff.qm9.qm9_positions", lambda element, **kw: POSITIONS)
    write_jsonl(tmp_path / "out" / "qm9_O_K_feff10.jsonl", [line(101), line(102)])
    dest = tmp_path / "data" / "qm9_o_k_feff10_ext"
    assert feff_main(["snapshot", "--from", str(tmp_path / "out"), "--to", str(dest)]) == 0
    assert "2 molecules (2 O sites)" in capsys.readouterr().out
    assert f"`xas-feff snapshot --from {tmp_path / 'out'} --to {dest}`" in (dest / "README.md").read_text()
    assert feff_main(["snapshot", "--from", str(tmp_path / "nowhere"), "--to", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xas-feff: error: {tmp_path / 'nowhere'}: no such file or folder"]
