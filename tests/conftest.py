"""Shared test fixtures: the shared data folder, skipped with a clear reason where absent."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from models.paths import CU_K_FEFF, QM9_O_K, XAS_DATA_LIBRARY, data_dir  # noqa: E402


def _require(relative: str):
    path = data_dir() / relative
    if not path.exists():
        pytest.skip(f"shared data {relative!r} not found under {data_dir()} (set XAS_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def cu_k_dir():
    return _require(CU_K_FEFF)


@pytest.fixture(scope="session")
def qm9_o_k_jsonl():
    return _require(QM9_O_K)


@pytest.fixture(scope="session")
def xdi_library():
    return _require(XAS_DATA_LIBRARY)


@pytest.fixture(scope="module")
def distinct_cu_library(cu_k_dir):
    """Ten clearly different Cu K-edge candidates from FEFF spectra (max |difference| > 0.15)."""
    import numpy as np

    from xas_callbacks.candidates import CandidateLibrary

    ids = sorted(os.listdir(cu_k_dir))[:80]
    full = CandidateLibrary.from_feff(cu_k_dir, ids)
    chosen: list[int] = []
    for i in range(len(full)):
        if all(np.abs(full.mean[i] - full.mean[j]).max() > 0.15 for j in chosen):
            chosen.append(i)
        if len(chosen) == 10:
            break
    return full.subset([full.names[i] for i in chosen])
