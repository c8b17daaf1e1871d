"""Where a result came from: content hashes, the git state of the checkout, the package version.

Model cards, candidate libraries, ranking runs and benchmark results all record these, so they
are computed here once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

__all__ = ["file_sha256", "tree_sha256", "git_state", "software_version", "PROJECT_ROOT"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(folder: str | Path) -> tuple[str, int]:
    """Hex sha256 of a folder's files and the number of files hashed.

    The digest covers each file's path relative to ``folder`` and its :func:`file_sha256`, in
    sorted path order (hidden files and folders are left out), so it changes when any file is
    added, removed, renamed or edited, and not when only time stamps change.
    """
    folder = Path(folder)
    entries = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = Path(root) / name
                entries.append((path.relative_to(folder).as_posix(), file_sha256(path)))
    digest = hashlib.sha256()
    for rel, sha in sorted(entries):
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest(), len(entries)


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
