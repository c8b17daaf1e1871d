"""XDI 1.0: strict reading with file/line errors, writing runs readable by larch."""

import numpy as np
import pytest
from bluesky import RunEngine

from endstation import SimulatedSample, XDIError, make_endstation, read_xdi, write_xdi
from plans import xafs_scan

GOOD = """# XDI/1.0
# Column.1: energy eV
# Column.2: i0
# Column.3: itrans
# Element.symbol: Cu
# Element.edge: K
# ///
# a comment
#----
# energy i0 itrans
8900.0 1000 500
8910.0 1001 499
8920.0 1002 498
"""


def test_read_measured_file(xdi_library):
    path = xdi_library / "Cu" / "CuO_tenorite_13K_01.xdi"
    data = read_xdi(path)
    assert data.version == "1.0"
    assert data.labels == ["energy", "i0", "itrans", "irefer"]
    assert data.metadata["Element"] == {"edge": "K", "symbol": "Cu"}
    assert data.metadata["Mono"]["name"] == "Si(220)"
    raw = np.loadtxt(path)
    assert np.array_equal(data.columns["itrans"], raw[:, 2])
    assert data.units["energy"] == "eV"
    assert np.allclose(data.mu_transmission(), np.log(raw[:, 1] / raw[:, 2]))


def test_bad_value_names_the_line(tmp_path):
    bad = tmp_path / "bad.xdi"
    bad.write_text(GOOD.replace("8910.0 1001 499", "8910.0 1O01 499"))
    with pytest.raises(XDIError, match=r"bad\.xdi, line 12: data value '1O01' is not a number"):
        read_xdi(bad)


def test_ragged_row_names_the_line(tmp_path):
    bad = tmp_path / "ragged.xdi"
    bad.write_text(GOOD.replace("8920.0 1002 498", "8920.0 1002"))
    with pytest.raises(XDIError, match=r"ragged\.xdi, line 13: 2 values but the first data row \(line 11\) has 3"):
        read_xdi(bad)


def test_missing_version_and_no_data(tmp_path):
    bad = tmp_path / "noversion.xdi"
    bad.write_text(GOOD.replace("# XDI/1.0\n", "# hello\n"))
    with pytest.raises(XDIError, match=r"noversion\.xdi, line 1: expected an XDI version line"):
        read_xdi(bad)
    empty = tmp_path / "nodata.xdi"
    empty.write_text("\n".join(GOOD.splitlines()[:10]) + "\n")
    with pytest.raises(XDIError, match=r"nodata\.xdi, line 10: no data rows"):
        read_xdi(empty)
    binary = tmp_path / "binary.xdi"
    binary.write_bytes(b"# XDI/1.0\n\xff\xfe\x00")
    with pytest.raises(XDIError, match="binary.xdi: not a text file"):
        read_xdi(binary)


def _run_documents():
    energy = np.linspace(8800.0, 9700.0, 901)
    mu = 1.0 / (1.0 + np.exp(-(energy - 8979.0) / 2.0))
    sample = SimulatedSample.from_spectrum(energy, mu, element="Cu", edge="K")
    es = make_endstation(sample, seed=2, time_scale=0)
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    RE(xafs_scan(es.detectors, es.energy, element="Cu", edge="K",
                 grid={"bounds": "-20 0 20", "steps": "2 1", "times": "0.1 0.1"},
                 md={"XDI": {"Sample": {"name": "step edge", "prep": "computed"}}}))
    return docs


def test_write_xdi_round_trip_and_larch(tmp_path):
    docs = _run_documents()
    events = [d for n, d in docs if n == "event"]
    path = write_xdi(docs, tmp_path / "out" / "run.xdi")
    data = read_xdi(path)
    assert data.labels == ["energy", "i0", "itrans", "irefer", "ifluor", "mutrans", "mufluor"]
    assert np.allclose(data.columns["energy"], [e["data"]["energy"] for e in events])
    assert np.array_equal(data.columns["itrans"], [e["data"]["It"] for e in events])
    assert np.allclose(data.columns["mutrans"], np.log(data.columns["i0"] / data.columns["itrans"]))
    assert data.metadata["Element"] == {"symbol": "Cu", "edge": "K"}
    assert data.metadata["Sample"]["name"] == "step edge"
    assert data.metadata["Bluesky"]["uid"] == docs[0][1]["uid"]
    assert data.metadata["Bluesky"]["exit_status"] == "success"
    from larch.io import read_xdi as larch_read_xdi

    group = larch_read_xdi(str(path))
    assert list(group.array_labels)[:3] == ["energy", "i0", "itrans"]
    assert np.allclose(group.itrans, data.columns["itrans"])
    assert group.attrs["element"]["symbol"] == "Cu"


def test_write_xdi_refuses_a_run_without_xas_block_and_writes_nothing(tmp_path):
    docs = _run_documents()
    start = dict(docs[0][1])
    del start["xas"]
    target = tmp_path / "nothing.xdi"
    with pytest.raises(ValueError, match="no 'xas' block"):
        write_xdi([("start", start)] + docs[1:], target)
    assert list(tmp_path.iterdir()) == []
