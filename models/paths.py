"""Where the project finds data it does not ship.

The computed and measured spectra under ``../shared/data`` are never copied into the project.
Code finds them through the ``XAS_DATA_DIR`` environment variable, whose default is
``../shared/data`` relative to the project root (the folder holding ``setup.cfg``).

What the project computes itself (extensions of the shared QM9 sets, FEFF spectra of reference
minerals) is committed under ``data/`` in the project root (:data:`PROJECT_DATA_DIR`).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "XAS_DATA_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

CU_K_FEFF = "cu_k_feff9_materials_project"
QM9_O_K = "qm9_o_k_feff10/qm9_O_K_feff10.jsonl"
QM9_N_K = "qm9_n_k_feff10/qm9_N_K_feff10.jsonl"
#: The project's own data (committed, small): ``<project root>/data``.
PROJECT_DATA_DIR = PROJECT_ROOT / "data"
#: Shared QM9 set and the project's extension of it (``xas-feff snapshot``), per absorber.
QM9_SETS = {
    "O": (QM9_O_K, "qm9_o_k_feff10_ext/qm9_O_K_feff10.jsonl.gz"),
    "N": (QM9_N_K, "qm9_n_k_feff10_ext/qm9_N_K_feff10.jsonl.gz"),
}
XAS_DATA_LIBRARY = "xasdatalibrary"


def data_dir() -> Path:
    """The folder of shared reference data (``$XAS_DATA_DIR`` or ``../shared/data``)."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return PROJECT_ROOT.parent / "shared" / "data"


def data_path(relative: str) -> Path:
    """A path inside :func:`data_dir`; raises ``FileNotFoundError`` naming the setting if absent."""
    path = data_dir() / relative
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist. Set {DATA_DIR_ENV} to the folder holding "
            f"{relative.split('/')[0]!r} (default: ../shared/data beside the project root)."
        )
    return path


def qm9_data_files(element: str) -> list[Path]:
    """The QM9 K-edge files of ``element``: the shared set, then the project's extension if present.

    Read them together with :func:`models.readers.read_qm9_sets` (the shared set wins where
    both hold a molecule).

    Raises
    ------
    KeyError
        No QM9 set for ``element`` (known: O, N).
    FileNotFoundError
        The shared set is absent (naming :data:`DATA_DIR_ENV`).
    """
    if element not in QM9_SETS:
        raise KeyError(f"no QM9 set for element {element!r}; known: {', '.join(QM9_SETS)}")
    shared, project = QM9_SETS[element]
    files = [data_path(shared)]
    if (PROJECT_DATA_DIR / project).is_file():
        files.append(PROJECT_DATA_DIR / project)
    return files


def user_data_dir() -> Path:
    """Per-user folder for catalogs and caches (``$XAS_USER_DIR`` or ``~/.local/share/steered-xas``)."""
    configured = os.environ.get("XAS_USER_DIR")
    base = Path(configured).expanduser() if configured else Path.home() / ".local" / "share" / "steered-xas"
    base.mkdir(parents=True, exist_ok=True)
    return base
