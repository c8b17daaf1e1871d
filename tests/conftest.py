"""Shared test fixtures.

* Every test runs with ``XAS_USER_DIR`` in a temporary folder: nothing is read from or written to
  the real ``~/.local/share/steered-xas`` (catalogs, candidate caches).
* ``RE``: a fresh RunEngine; ``catalog``: the session's local Tiled catalog (one server per
  process and folder), in the temporary user folder.
* ``synthetic_library``: eight distinct synthetic Cu K-edge candidates (``tests/synthetic.py``),
  so the callback, the adaptive plan and the profile are tested without ``../shared``.
* The shared data sets: skipped with a clear reason where absent. Tests that use them are marked
  ``needs_data`` automatically; ``slow`` marks the tests that take more than ~10 s.
  ``pytest -m "not slow"`` runs the quick ones.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# Set before any project module runs: the user folder holds catalogs and caches.
_USER_DIR = tempfile.mkdtemp(prefix="xas-user-")
os.environ["XAS_USER_DIR"] = _USER_DIR
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/synthetic.py

from models.paths import CU_K_FEFF, QM9_O_K, XAS_DATA_LIBRARY, data_dir  # noqa: E402

#: Fixtures that need the shared data sets; a test using one is marked ``needs_data``.
DATA_FIXTURES = {"cu_k_dir", "qm9_o_k_jsonl", "xdi_library", "distinct_cu_library"}


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_data: uses the shared data sets (../shared/data); skipped without them")
    config.addinivalue_line("markers", "slow: takes more than ~10 s (real FEFF runs, servers, whole scans)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.needs_data)


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


@pytest.fixture
def RE():
    """A fresh RunEngine."""
    from bluesky import RunEngine

    return RunEngine({})


@pytest.fixture(scope="session")
def catalog():
    """The session's local Tiled catalog, in the temporary user folder."""
    from endstation.catalog import open_catalog

    return open_catalog(directory=Path(_USER_DIR) / "catalog")


@pytest.fixture(scope="session")
def synthetic_library():
    from synthetic import synthetic_library

    return synthetic_library()


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
