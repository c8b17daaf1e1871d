"""Where a result came from: content hashes, the git state of the checkout, the package version.

Model cards, candidate libraries, ranking runs and benchmark results all record these, so they
are computed here once.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

__all__ = ["file_sha256", "git_state", "software_version", "PROJECT_ROOT"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_state(paths: tuple[str, ...] = ()) -> dict:
    """``{"commit": sha, "dirty": bool}`` of the project checkout (``None`` values without git).

    ``dirty`` says whether tracked files (under ``paths`` when given) differ from the commit.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
                                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=20)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def software_version() -> str:
    """The installed ``steered-xas`` version, or ``"unknown"``."""
    try:
        from importlib.metadata import version

        return version("steered-xas")
    except Exception:  # noqa: BLE001 -- not installed (a bare checkout on sys.path)
        return "unknown"
