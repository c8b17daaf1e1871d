"""How mu(E) is formed from detector counts: detector roles, measurement modes, counting noise.

* roles -- ``i0`` (incident), ``it`` (transmitted), ``ir`` (reference foil), ``if``
  (fluorescence); :data:`ROLES` maps each to the data key of the simulated endstation, which a
  real beamline keeps (README), and :data:`XDI_LABELS` to its XDI column label;
* modes -- :data:`MODE_ROLES`: the roles each mode divides;
* :func:`mu_from_counts` -- mu and its Poisson variance, bad counts flagged, never raised on.

Plans record the role map in the start document (``xas.detectors``); the ranking callback, the
XDI writer and reader and the simulated sample read it from there.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ROLES", "XDI_LABELS", "MODE_ROLES", "MODES", "SCAN_MODES", "mu_from_counts"]

#: Role -> data key of the simulated endstation's counters (the default role map of every plan).
ROLES = {"i0": "I0", "it": "It", "ir": "Ir", "if": "If"}

#: Role -> XDI column label.
XDI_LABELS = {"i0": "i0", "it": "itrans", "ir": "irefer", "if": "ifluor"}

#: Mode -> the roles whose counts it needs: ln(i0/it), if/i0, ln(it/ir).
MODE_ROLES = {
    "transmission": ("i0", "it"),
    "fluorescence": ("i0", "if"),
    "reference": ("it", "ir"),
}
MODES = tuple(MODE_ROLES)

#: Modes a sample scan measures (the reference foil is measured beside either).
SCAN_MODES = ("transmission", "fluorescence")


def mu_from_counts(
    mode: str,
    i0=None,
    it=None,
    ir=None,
    if_=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Absorption and its counting variance from detector counts.

    Parameters
    ----------
    mode : {"transmission", "fluorescence", "reference"}
        ``ln(I0/It)``, ``If/I0`` or ``ln(It/Ir)``.
    i0, it, ir, if_ : array_like or float
        Counts of the incident, transmitted, reference and fluorescence detectors.

    Returns
    -------
    mu : ndarray
        Absorption (NaN where bad).
    var : ndarray
        Variance of ``mu`` from Poisson statistics of the counts: ``1/I0 + 1/It`` for
        logarithms, ``(If/I0)^2 (1/If + 1/I0)`` for the ratio (NaN where bad).
    bad : ndarray of bool
        True where a needed count is missing, non-finite, zero or negative.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    num, den = {"transmission": (i0, it), "fluorescence": (if_, i0), "reference": (it, ir)}[mode]
    if num is None or den is None:
        raise ValueError(f"mode {mode!r} needs both detector counts")
    num = np.atleast_1d(np.asarray(num, dtype=float))
    den = np.atleast_1d(np.asarray(den, dtype=float))
    num, den = np.broadcast_arrays(num, den)
    bad = ~(np.isfinite(num) & np.isfinite(den) & (num > 0) & (den > 0))
    n = np.where(bad, 1.0, num)
    d = np.where(bad, 1.0, den)
    if mode == "fluorescence":
        mu = n / d
        var = mu**2 * (1.0 / n + 1.0 / d)
    else:
        mu = np.log(n / d)
        var = 1.0 / n + 1.0 / d
    mu = np.where(bad, np.nan, mu)
    var = np.where(bad, np.nan, var)
    return mu, var, bad
