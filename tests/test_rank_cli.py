"""xas-rank on real measured spectra and on two-column text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xas_callbacks.candidates import CandidateLibrary
from apps.rank import main
from endstation.measured import read_spectrum

CUO_IDS = ["mp-1692", "mp-704645", "mp-361", "mp-23733", "mp-504588"]


@pytest.fixture(autouse=True)
def user_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XAS_USER_DIR", str(tmp_path / "user"))


def test_read_xdi_counts_gives_transmission_mu(xdi_library):
    spec = read_spectrum(xdi_library / "Cu" / "CuO_tenorite_13K_01.xdi")
    assert spec["mode"] == "transmission"
    assert spec["energy"].size == spec["mu"].size == spec["var"].size > 300
    assert np.all(spec["var"] > 0)
    assert spec["e0"] == pytest.approx(8979, abs=2)


def test_cli_ranks_measured_cuo_first_among_minerals(cu_k_dir, xdi_library, tmp_path, capsys):
    out = tmp_path / "r.json"
    png = tmp_path / "r.png"
    rc = main([str(xdi_library / "Cu" / "CuO_tenorite_13K_01.xdi"), "--candidates", str(cu_k_dir),
               "--ids", *CUO_IDS, "--json", str(out), "--plot", str(png)])
    assert rc == 0
    res = json.loads(out.read_text())
    names = [r["name"] for r in res["ranking"]]
    assert set(names[:2]) == {"mp-1692", "mp-704645"}  # the two CuO (tenorite) entries
    probs = [r["probability"] for r in res["ranking"]]
    # the candidates share what "none of these" leaves
    assert sum(probs) + res["p_none"] == pytest.approx(1.0) and probs == sorted(probs, reverse=True)
    assert 0.0 <= res["pruned_mass_bound"] <= 1e-6  # a full evaluation: nothing pruned beyond the bound
    assert 0 < res["offset_eV"] < 12 and res["broadening_eV"] >= 0
    assert png.stat().st_size > 1000
    assert "mp-1692" in capsys.readouterr().out


def test_cli_two_column_text_of_a_shifted_candidate(cu_k_dir, tmp_path):
    lib = CandidateLibrary.from_feff(cu_k_dir, ids=CUO_IDS)
    E = np.arange(lib.energies[0] - 20, lib.energies[-1] - 10, 0.8)
    rng = np.random.default_rng(1)
    mu = 2.0 * np.interp(E + 2.0, lib.energies, lib.mean[2]) + 0.4 + rng.normal(0, 0.004, E.size)
    f = tmp_path / "spec.txt"
    np.savetxt(f, np.column_stack([E, mu]), header="energy mu")
    out = tmp_path / "r.json"
    assert main([str(f), "--candidates", str(cu_k_dir), "--ids", *CUO_IDS, "--json", str(out),
                 "--model-std", "0.01"]) == 0
    res = json.loads(out.read_text())
    assert res["ranking"][0]["name"] == lib.names[2]
    assert res["offset_eV"] == pytest.approx(2.0, abs=0.5)


def test_cli_missing_file_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main([str(tmp_path / "nope.xdi"), "--candidates", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


def test_athena_project_is_read_and_ranked(cu_k_dir, tmp_path):
    larch_io = pytest.importorskip("larch.io")
    from larch import Group

    lib = CandidateLibrary.from_feff(cu_k_dir, ids=CUO_IDS)
    E = np.arange(lib.energies[0] - 20, lib.energies[-1] - 10, 0.8)
    rng = np.random.default_rng(2)
    mu = 1.5 * np.interp(E - 1.0, lib.energies, lib.mean[3]) + 0.2 + rng.normal(0, 0.003, E.size)
    prj = tmp_path / "sample.prj"
    proj = larch_io.AthenaProject(str(prj))
    proj.add_group(Group(energy=E, mu=mu, filename="sample", groupname="sample"))
    proj.save()
    spec = read_spectrum(prj)
    assert spec["mode"] == "athena:sample" and spec["energy"].size == E.size
    out = tmp_path / "r.json"
    assert main([str(prj), "--candidates", str(cu_k_dir), "--ids", *CUO_IDS, "--json", str(out),
                 "--model-std", "0.01"]) == 0
    res = json.loads(out.read_text())
    assert res["ranking"][0]["name"] == lib.names[3]
    assert res["offset_eV"] == pytest.approx(-1.0, abs=0.5)
