"""A small synthetic candidate library, so that the callback, the adaptive plan and the profile
are tested without the shared data sets.

Eight Cu K-edge-like spectra on the FEFF sets' 0.5 eV grid: an arctan edge, a white line and a
damped post-edge oscillation, with white-line heights and positions and oscillation periods on
a lattice, so that every two candidates differ by more than 0.15 (normalised units) somewhere and
no two differ by a mere shift (which the common calibration offset would absorb): clearly
distinguishable, like the ``distinct_cu_library`` drawn from the shared FEFF set.
"""

from __future__ import annotations

import itertools

import numpy as np

ENERGIES = np.arange(8960.0, 9100.0 + 1e-9, 0.5)
E0 = 8979.0


def spectrum(energies, white_line: float, line_at_eV: float, period_eV: float, width_eV: float = 1.5):
    """Normalised mu(E): unit edge step at :data:`E0`, a white line ``white_line`` high
    ``line_at_eV`` above it, and a damped oscillation of period ``period_eV`` beyond."""
    x = np.asarray(energies, dtype=float) - E0
    step = 0.5 + np.arctan(x / width_eV) / np.pi
    line = white_line * np.exp(-0.5 * ((x - line_at_eV) / 2.5) ** 2)
    wiggle = 0.15 * np.sin(2 * np.pi * np.clip(x - 10.0, 0, None) / period_eV) * np.exp(-np.clip(x - 10.0, 0, None) / 60.0)
    return step + line + wiggle


def synthetic_library(n: int = 8):
    """A :class:`~xas_callbacks.candidates.CandidateLibrary` of ``n`` (<= 8) distinct candidates."""
    from xas_callbacks.candidates import CandidateLibrary

    params = list(itertools.product((0.3, 0.9), (3.0, 9.0), (22.0, 34.0)))[:n]
    mean = np.array([spectrum(ENERGIES, *p) for p in params])
    names = [f"syn-{i}" for i in range(len(params))]
    return CandidateLibrary.from_spectra(
        names, ENERGIES, mean, default_std=0.01,
        provenance={"model": "synthetic", "element": "Cu", "edge": "K", "source": "tests/synthetic.py"},
    )


def write_sample_xdi(path, mu, *, element: str = "Cu", edge: str = "K", flux: float = 1e6):
    """An XDI 1.0 file with raw ``i0``/``itrans`` counts whose ``ln(i0/itrans)`` is ``0.3 + mu``:
    a measured-looking spectrum that ``SimulatedSample.from_xdi`` can drive the endstation with."""
    energies = np.concatenate([np.arange(8800.0, 8960.0, 5.0), ENERGIES, np.arange(9105.0, 9400.0, 5.0)])
    mu_all = np.interp(energies, ENERGIES, mu)
    it = flux * np.exp(-(0.3 + mu_all))
    lines = ["# XDI/1.0", f"# Element.symbol: {element}", f"# Element.edge: {edge}",
             "# Mono.d_spacing: 3.13560", "# Column.1: energy eV", "# Column.2: i0", "# Column.3: itrans",
             "# Sample.name: synthetic", "# ///", "# synthetic spectrum for tests", "#----",
             "# energy i0 itrans"]
    lines += [f"{e:.3f} {flux:.6g} {t:.6g}" for e, t in zip(energies, it)]
    path.write_text("\n".join(lines) + "\n")
    return path


def fake_qm9pack(folder):
    """Write a three-part qm9pack ``data`` folder of six two-atom molecules (indices 1-9) into ``folder``."""
    header = "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang\n"
    rows = {
        1: ("C", "['C','H']", "[[0.0,0.0,0.0],[0.0,0.0,1.09]]"),
        2: ("N", "['N','H']", "[[0.0,0.0,0.0],[0.0,0.0,1.01]]"),
        3: ("O", "['O','H']", "[[0.0,0.0,0.0],[0.0,0.0,0.96]]"),
        5: ("C#N", "['C','N']", "[[0.0,0.0,0.0],[0.0,0.0,1.16]]"),
        7: ("NO", "['N','O']", "[[0.0,0.0,0.0],[0.0,0.0,1.15]]"),
        9: ("NN", "['N','N']", "[[0.0,0.0,0.0],[0.0,0.0,1.10]]"),
    }
    parts = [[1, 2], [3, 5], [7, 9]]
    for k, idx in enumerate(parts, start=1):
        lines = [
            f'"dsgdb9nsd_{i:06d}.xyz",{i},"{rows[i][0]}","x",2,"[]","{rows[i][1]}","{rows[i][2]}"\n' for i in idx
        ]
        (folder / f"qm9_part{k}.csv").write_text(header + "".join(lines))


def random_spectra(n: int, energies=ENERGIES, seed: int = 0) -> np.ndarray:
    """``n`` random smooth normalised spectra (n, E) on ``energies``: an arctan edge near
    :data:`E0` (random position and width), four Gaussian peaks above it and a damped
    oscillation, of random heights, widths and periods. For tests and benchmarks of the ranking
    at scale, where no model prediction is needed."""
    rng = np.random.default_rng(seed)
    x = np.asarray(energies, dtype=float)[None, :] - E0

    def column(lo, hi):
        return rng.uniform(lo, hi, (n, 1))

    edge = column(-4.0, 4.0)
    out = 0.5 + np.arctan((x - edge) / column(1.0, 3.0)) / np.pi
    for _ in range(4):
        out += column(0.0, 0.3) * np.exp(-0.5 * ((x - edge - column(0.0, 60.0)) / column(2.0, 8.0)) ** 2)
    above = np.clip(x - edge - 10.0, 0.0, None)
    out += column(0.0, 0.1) * np.sin(2 * np.pi * above / column(15.0, 40.0)) * np.exp(-above / 60.0)
    return out
