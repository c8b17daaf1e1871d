"""Beam time a reading costs: counting, monochromator travel and settling.

The adaptive plan's agent weighs information against it, the plan counts it against its budget,
and the demo and benchmarks report it; all use these two functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["beam_time_cost", "path_beam_time"]


def beam_time_cost(energies, current_energy: float | None, dwell_s: float, mono_speed_eV_per_s: float,
                   settle_s: float) -> np.ndarray:
    """Seconds of beam time to move from ``current_energy`` to each of ``energies``, settle
    and count there (no travel for the first reading, when ``current_energy`` is None)."""
    energies = np.asarray(energies, dtype=float)
    if current_energy is None:
        return np.full(energies.shape, dwell_s + settle_s)
    return dwell_s + settle_s + np.abs(energies - current_energy) / mono_speed_eV_per_s


def path_beam_time(energies, dwells, mono_speed_eV_per_s: float, settle_s: float) -> float:
    """Total beam time (s) of readings taken at ``energies`` in that order with ``dwells``."""
    energies = np.asarray(energies, dtype=float)
    dwells = np.broadcast_to(np.asarray(dwells, dtype=float), energies.shape)
    if energies.size == 0:
        return 0.0
    travel = np.abs(np.diff(energies)).sum() / mono_speed_eV_per_s
    return float(dwells.sum() + settle_s * energies.size + travel)
