"""Measured spectrum files as arrays: energy, mu and its per-point variance.

:func:`read_spectrum` reads an XDI file (raw ``i0``/``itrans``/``ifluor``/``irefer`` counts, or
a ``mu*`` column), an Athena project (``.prj``, via ``larch.io.read_athena``) or two-column
text (energy, mu). Where counts are known the variance is their Poisson variance, otherwise it
is estimated from the data (:func:`noise_variance`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from models.spectra import edge_energy

from .modes import mu_from_counts

__all__ = ["read_spectrum", "noise_variance"]

_COUNT_ALIASES = {
    "i0": ("i0", "izero"),
    "it": ("itrans", "it", "i1", "itrans1"),
    "ir": ("irefer", "iref", "ir", "i2"),
    "if": ("ifluor", "if", "ifl", "fluor"),
}


def noise_variance(energy, mu) -> np.ndarray:
    """Per-point variance estimated from the data when no counts are known: the robust scale
    of second differences (white noise: var(d2) = 6 sigma^2)."""
    mu = np.asarray(mu, dtype=float)
    if mu.size < 5:
        return np.full(mu.shape, 1e-6)
    d2 = mu[:-2] - 2 * mu[1:-1] + mu[2:]
    s = 1.4826 * np.median(np.abs(d2 - np.median(d2))) / np.sqrt(6.0)
    return np.full(mu.shape, max(s, 1e-9) ** 2)


def _read_xdi_columns(path: Path) -> tuple[dict, dict]:
    """Columns of an XDI file by name, and the header fields."""
    try:
        from .xdi import read_xdi

        res = read_xdi(path)
        if isinstance(res, tuple) and len(res) == 2 and isinstance(res[0], dict):
            return {k.lower(): np.asarray(v, dtype=float) for k, v in res[0].items()}, res[1]
        if hasattr(res, "columns"):
            header = {f"{fam}.{key}": val for fam, block in (getattr(res, "metadata", {}) or {}).items()
                      if isinstance(block, dict) for key, val in block.items()}
            return {k.lower(): np.asarray(v, dtype=float) for k, v in dict(res.columns).items()}, header
    except Exception:  # noqa: BLE001 -- fall back to the plain reader below
        pass
    names: dict[int, str] = {}
    header: dict[str, str] = {}
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("#"):
            m = re.match(r"#\s*([\w.]+)\s*:\s*(.*)", line)
            if m:
                header[m.group(1)] = m.group(2).strip()
                c = re.match(r"Column\.(\d+)", m.group(1))
                if c:
                    names[int(c.group(1)) - 1] = m.group(2).split()[0].lower()
            continue
        parts = line.split()
        if parts:
            try:
                rows.append([float(p) for p in parts])
            except ValueError:
                continue
    width = min(len(r) for r in rows)
    data = np.array([r[:width] for r in rows])
    cols = {names.get(i, f"col{i + 1}"): data[:, i] for i in range(width)}
    return cols, header


def read_spectrum(path, mode: str | None = None, group: str | None = None) -> dict:
    """Read a measured spectrum.

    Returns
    -------
    dict
        ``energy``, ``mu``, ``var`` (counting variance from raw counts, else estimated from
        the data), ``mode`` (what was formed), ``source``, ``e0`` (from the header where given),
        and ``reference`` (``energy``, ``mu``, ``var`` of the reference foil, ``ln(it/ir)``) where
        the file has the foil channel.
    """
    path = Path(path)
    text_head = path.read_bytes()[:200]
    if path.suffix.lower() == ".prj" or text_head.startswith(b"\x1f\x8b") or b"Athena project" in text_head:
        from larch.io import read_athena

        proj = read_athena(str(path), do_preedge=False, do_bkg=False, do_fft=False)
        groups = [k for k in dir(proj) if not k.startswith("_")
                  and hasattr(getattr(proj, k), "energy") and hasattr(getattr(proj, k), "mu")]
        if not groups:
            raise ValueError(f"{path}: no group with energy and mu in the Athena project")
        if group is not None and group not in groups:
            raise ValueError(f"{path}: no group {group!r}; groups: {groups}")
        name = group if group else groups[0]
        g = getattr(proj, name)
        E = np.asarray(g.energy, dtype=float)
        mu = np.asarray(g.mu, dtype=float)
        return {"energy": E, "mu": mu, "var": noise_variance(E, mu), "mode": "athena:" + name,
                "source": str(path), "e0": None}
    first = text_head.decode(errors="replace")
    if first.startswith("# XDI") or path.suffix.lower() == ".xdi":
        cols, header = _read_xdi_columns(path)
        E = cols.get("energy", next(iter(cols.values())))
        found = {role: next((cols[a] for a in aliases if a in cols), None)
                 for role, aliases in _COUNT_ALIASES.items()}
        e0 = None
        try:
            sym = header.get("Element.symbol")
            if sym:
                e0 = edge_energy(sym, header.get("Element.edge", "K"))
        except ValueError:  # an element or edge the tables do not know: E0 from the data
            pass
        want = mode
        if want is None:
            want = "transmission" if found["i0"] is not None and found["it"] is not None else (
                "fluorescence" if found["i0"] is not None and found["if"] is not None else None)
        if want is not None and (found["i0"] is not None or want == "reference"):
            mu, var, bad = mu_from_counts(want, i0=found["i0"], it=found["it"], ir=found["ir"],
                                          if_=found["if"])
            keep = ~bad
            out = {"energy": E[keep], "mu": mu[keep], "var": var[keep], "mode": want,
                   "source": str(path), "e0": e0, "n_bad": int(bad.sum())}
            if want != "reference" and found["it"] is not None and found["ir"] is not None:
                ref, ref_var, ref_bad = mu_from_counts("reference", it=found["it"], ir=found["ir"])
                out["reference"] = {"energy": E[~ref_bad], "mu": ref[~ref_bad], "var": ref_var[~ref_bad]}
            return out
        mucol = next((k for k in cols if k.startswith("mu") or k == "xmu"), None)
        if mucol is None:
            raise ValueError(f"{path}: no i0/itrans/ifluor counts and no mu column in {list(cols)}")
        mu = cols[mucol]
        return {"energy": E, "mu": mu, "var": noise_variance(E, mu), "mode": mucol,
                "source": str(path), "e0": e0}
    data = np.loadtxt(path, comments="#", ndmin=2)
    E, mu = data[:, 0], data[:, 1]
    return {"energy": E, "mu": mu, "var": noise_variance(E, mu), "mode": "mu", "source": str(path),
            "e0": None}
