"""Where the project finds data it does not ship.

The computed and measured spectra under ``../shared/data`` are never copied into the project.
Code finds them through the ``XAS_DATA_DIR`` environment variable, whose default is
``../shared/data`` relative to the project root (the folder holding ``setup.cfg``).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "XAS_DATA_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

CU_K_FEFF = "cu_k_feff9_materials_project"
QM9_O_K = "qm9_o_k_feff10/qm9_O_K_feff10.jsonl"
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


def user_data_dir() -> Path:
    """Per-user folder for catalogs and caches (``$XAS_USER_DIR`` or ``~/.local/share/steered-xas``)."""
    configured = os.environ.get("XAS_USER_DIR")
    base = Path(configured).expanduser() if configured else Path.home() / ".local" / "share" / "steered-xas"
    base.mkdir(parents=True, exist_ok=True)
    return base
