"""Run the profile's startup files without IPython (tests, scripts, notebooks).

``ipython --profile-dir=profile_collection`` runs ``startup/*.py`` in lexical order in one
namespace; :func:`load_profile` does the same into a plain dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STARTUP_DIR = Path(__file__).resolve().parent / "startup"

__all__ = ["STARTUP_DIR", "startup_files", "load_profile"]


def startup_files(startup_dir: str | os.PathLike | None = None) -> list[Path]:
    """The numbered startup files in the order IPython runs them."""
    folder = Path(startup_dir) if startup_dir is not None else STARTUP_DIR
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def load_profile(
    namespace: Mapping[str, Any] | None = None,
    *,
    startup_dir: str | os.PathLike | None = None,
    upto: str | None = None,
) -> dict[str, Any]:
    """Execute the startup files in order into a namespace dict and return it.

    Parameters
    ----------
    namespace : mapping, optional
        Names defined before the first file runs, e.g. ``{"catalog": my_catalog}`` to use an
        already opened catalog instead of the default one.
    startup_dir : path-like, optional
        Default: this profile's ``startup/``.
    upto : str, optional
        Stop after the file whose name starts with this prefix (e.g. ``"10"``).

    Raises
    ------
    RuntimeError
        Naming the startup file that failed (the original error is chained).
    """
    ns: dict[str, Any] = {"__name__": "__main__"}
    ns.update(namespace or {})
    for path in startup_files(startup_dir):
        ns["__file__"] = str(path)
        code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
        try:
            exec(code, ns)
        except Exception as exc:
            raise RuntimeError(f"profile startup file {path.name} failed: {type(exc).__name__}: {exc}") from exc
        if upto is not None and path.name.startswith(upto):
            break
    ns.pop("__file__", None)
    return ns
