"""Energy grids in beamline terms: regions relative to E0, BMM-style ``bounds/steps/times``.

A grid is given either as three whitespace-separated strings (as typed at a beamline)::

    bounds = "-200 -30 -10 25 13k"      # region boundaries, eV relative to E0 (or k with 'k')
    steps  = "10 2 0.3 0.05k"           # one step per region, eV (or k in 1/Angstrom with 'k')
    times  = "0.5 0.5 0.5 0.25k"        # one dwell per region, s ('k': dwell = value * k**kw)

or as a mapping ``{"bounds": ..., "steps": ..., "times": ..., "k_weight": 1}`` whose values are
such strings or sequences of numbers/strings.  ``N`` bounds make ``N - 1`` regions.  A region
includes its start and excludes its end, except the last region, which includes its end.

``k = sqrt(ETOK * (E - E0))`` with ``ETOK = 2 m_e / hbar**2 = 0.2624682917 eV^-1 Angstrom^-2``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.spectra import edge_energy

__all__ = [
    "ETOK",
    "EnergyGrid",
    "DEFAULT_GRID",
    "edge_energy",
    "etok",
    "ktoe",
    "make_grid",
    "parse_grid",
]

#: 2 m_e / hbar^2 in eV^-1 Angstrom^-2 (the constant larch and BMM use).
ETOK = 0.2624682917

#: A conventional XAFS grid to k = 13 (the BMM-style example of the issue).
DEFAULT_GRID: dict[str, str] = {
    "bounds": "-200 -30 -10 25 13k",
    "steps": "10 2 0.3 0.05k",
    "times": "0.5 0.5 0.5 0.25k",
}

_TOKEN = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([kK]?)\s*$")


def etok(de: float | np.ndarray) -> float | np.ndarray:
    """Photoelectron wavenumber k (1/Angstrom) for an energy ``de`` (eV) above E0."""
    return np.sqrt(ETOK * np.asarray(de, dtype=float))


def ktoe(k: float | np.ndarray) -> float | np.ndarray:
    """Energy above E0 (eV) of a wavenumber ``k`` (1/Angstrom)."""
    return np.asarray(k, dtype=float) ** 2 / ETOK


@dataclass(frozen=True)
class _Value:
    value: float
    k: bool

    def __str__(self) -> str:
        return f"{self.value:g}{'k' if self.k else ''}"


@dataclass(frozen=True)
class EnergyGrid:
    """Energies and dwell times of a conventional XAFS scan.

    Attributes
    ----------
    energies : numpy.ndarray
        Absolute photon energies (eV), strictly increasing.
    dwell : numpy.ndarray
        Dwell time (s) of each energy.
    e0 : float
        Edge energy (eV) the bounds are relative to.
    spec : dict
        The grid as asked (``bounds``, ``steps``, ``times`` strings, ``k_weight``, ``e0``);
        recorded in the start document's ``xas.grid``.
    """

    energies: np.ndarray
    dwell: np.ndarray
    e0: float
    spec: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.energies)

    @property
    def total_dwell(self) -> float:
        """Summed counting time (s), without motion and overhead."""
        return float(np.sum(self.dwell))


def _tokens(value: Any, what: str) -> list[_Value]:
    if isinstance(value, str):
        raw: Sequence[Any] = value.split()
    elif isinstance(value, (int, float, np.number)):
        raw = [value]
    elif isinstance(value, Sequence) or isinstance(value, np.ndarray):
        raw = list(value)
    else:
        raise ValueError(f"grid {what} must be a string or a sequence, got {value!r}")
    out = []
    for item in raw:
        if isinstance(item, (int, float, np.number)) and not isinstance(item, bool):
            number = float(item)
            if not np.isfinite(number):
                raise ValueError(f"grid {what}: value {item!r} is not finite")
            out.append(_Value(number, False))
            continue
        match = _TOKEN.match(str(item))
        if match is None:
            raise ValueError(
                f"grid {what}: cannot read {item!r} as a number with an optional 'k' suffix"
            )
        out.append(_Value(float(match.group(1)), bool(match.group(2))))
    if not out:
        raise ValueError(f"grid {what} is empty")
    return out


def _as_energy(bound: _Value, what: str) -> float:
    if not bound.k:
        return bound.value
    if bound.value < 0:
        raise ValueError(f"grid {what}: k bound {bound} is negative")
    return float(ktoe(bound.value))


def parse_grid(
    bounds: Any,
    steps: Any,
    times: Any,
    e0: float,
    *,
    k_weight: float = 1.0,
) -> EnergyGrid:
    """Energies and dwell times from BMM-style ``bounds``, ``steps`` and ``times``.

    Parameters
    ----------
    bounds : str or sequence
        ``N`` region boundaries relative to ``e0``: eV, or k (1/Angstrom) with a ``k`` suffix.
    steps : str or sequence
        ``N - 1`` positive steps: eV, or k with a ``k`` suffix (only above ``e0``).
    times : str or sequence
        ``N - 1`` dwell times (s); with a ``k`` suffix the dwell is ``value * k**k_weight``.
    e0 : float
        Edge energy (eV).
    k_weight : float, optional
        Exponent of k for ``k``-suffixed times (default 1).

    Returns
    -------
    EnergyGrid

    Raises
    ------
    ValueError
        Naming the offending value: wrong counts, non-increasing bounds, a step of zero or the
        wrong sign, a negative dwell, k-space below E0.
    """
    e0 = float(e0)
    if not np.isfinite(e0) or e0 <= 0:
        raise ValueError(f"e0 must be a positive energy in eV, got {e0!r}")
    b = _tokens(bounds, "bounds")
    s = _tokens(steps, "steps")
    t = _tokens(times, "times")
    if len(b) < 2:
        raise ValueError(f"grid bounds need at least two values, got {' '.join(map(str, b))!r}")
    if len(s) != len(b) - 1:
        raise ValueError(
            f"grid steps: {len(b)} bounds make {len(b) - 1} regions but {len(s)} steps were given "
            f"({' '.join(map(str, s))!r})"
        )
    if len(t) != len(b) - 1:
        raise ValueError(
            f"grid times: {len(b)} bounds make {len(b) - 1} regions but {len(t)} times were given "
            f"({' '.join(map(str, t))!r})"
        )
    rel = [_as_energy(x, "bounds") for x in b]
    for i in range(1, len(rel)):
        if not rel[i] > rel[i - 1]:
            raise ValueError(
                f"grid bounds must increase: bound {i + 1} ({b[i]}, {rel[i]:.4g} eV) is not above "
                f"bound {i} ({b[i - 1]}, {rel[i - 1]:.4g} eV)"
            )
    energies: list[np.ndarray] = []
    dwells: list[np.ndarray] = []
    last = len(s) - 1
    for i, (step, time) in enumerate(zip(s, t)):
        lo, hi = rel[i], rel[i + 1]
        if step.value <= 0:
            raise ValueError(
                f"grid steps: step {i + 1} ({step}) of region {b[i]} .. {b[i + 1]} must be positive"
            )
        if time.value < 0:
            raise ValueError(f"grid times: time {i + 1} ({time}) must not be negative")
        if step.k:
            if lo < 0:
                raise ValueError(
                    f"grid steps: k step {step} in region {b[i]} .. {b[i + 1]} which starts "
                    f"below E0; k-space steps need bounds at or above E0"
                )
            klo, khi = float(etok(lo)), float(etok(hi))
            n = int(np.floor((khi - klo) / step.value + 1e-9))
            k = klo + step.value * np.arange(n + 1)
            k = k[k < khi - 1e-9] if i != last else k[k <= khi + 1e-9]
            if i == last and k[-1] < khi - 1e-9:
                k = np.append(k, khi)
            rel_e = np.asarray(ktoe(k))
        else:
            n = int(np.floor((hi - lo) / step.value + 1e-9))
            rel_e = lo + step.value * np.arange(n + 1)
            rel_e = rel_e[rel_e < hi - 1e-9] if i != last else rel_e[rel_e <= hi + 1e-9]
            if i == last and rel_e[-1] < hi - 1e-9:
                rel_e = np.append(rel_e, hi)
        if time.k:
            if lo < 0:
                raise ValueError(
                    f"grid times: k-weighted time {time} in region {b[i]} .. {b[i + 1]} which "
                    f"starts below E0"
                )
            dwell = time.value * np.asarray(etok(rel_e)) ** float(k_weight)
        else:
            dwell = np.full(rel_e.shape, time.value)
        energies.append(rel_e)
        dwells.append(dwell)
    rel_all = np.concatenate(energies)
    spec = {
        "bounds": " ".join(map(str, b)),
        "steps": " ".join(map(str, s)),
        "times": " ".join(map(str, t)),
        "k_weight": float(k_weight),
        "e0": e0,
    }
    return EnergyGrid(energies=e0 + rel_all, dwell=np.concatenate(dwells), e0=e0, spec=spec)


def make_grid(
    element: str,
    edge: str,
    grid: Mapping[str, Any] | EnergyGrid | None = None,
    *,
    e0: float | None = None,
) -> EnergyGrid:
    """The grid of a scan at ``element``/``edge``; E0 from xraydb when ``e0`` is None.

    Parameters
    ----------
    element, edge : str
        Absorber and edge, e.g. ``"Cu"``, ``"K"`` (checked against xraydb even with ``e0``).
    grid : mapping or EnergyGrid, optional
        ``{"bounds", "steps", "times"[, "k_weight"]}``; default :data:`DEFAULT_GRID`.
        An :class:`EnergyGrid` is returned as it is.
    e0 : float, optional
        Edge energy (eV); default the tabulated edge energy.
    """
    tabulated = edge_energy(element, edge)
    if isinstance(grid, EnergyGrid):
        return grid
    grid = DEFAULT_GRID if grid is None else grid
    if not isinstance(grid, Mapping):
        raise ValueError(
            f"grid must be a mapping with 'bounds', 'steps' and 'times', got {type(grid).__name__}"
        )
    missing = [key for key in ("bounds", "steps", "times") if key not in grid]
    if missing:
        raise ValueError(f"grid is missing {', '.join(missing)} (has {sorted(grid)})")
    unknown = sorted(set(grid) - {"bounds", "steps", "times", "k_weight", "e0"})
    if unknown:
        raise ValueError(f"grid has unknown keys {unknown}")
    if e0 is None:
        e0 = grid.get("e0")
    e0_value = tabulated if e0 is None else float(e0)
    return parse_grid(
        grid["bounds"], grid["steps"], grid["times"], e0_value, k_weight=grid.get("k_weight", 1.0)
    )
