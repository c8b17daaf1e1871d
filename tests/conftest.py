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
