"""The simulated sample: a true mu(E) plus a reference foil, and the beam physics.

A :class:`SimulatedSample` holds, on its own energy grid, the total attenuation ``mu_total``
(dimensionless ``mu * t`` including a pre-edge background), the absorber's edge part
``mu_absorber`` (what a fluorescence detector sees) and the attenuation of a reference foil
(measured in the ``Ir`` chamber for energy calibration).  It is made

* from a real measured XDI file (:meth:`SimulatedSample.from_xdi`): ``ln(i0/itrans)`` of its raw
  columns, shifted by a constant (a gain ratio in the file) so that ``It < I0``; the reference
  is ``ln(itrans/irefer)`` where the file has an ``irefer`` column, or
* from a computed spectrum (:meth:`SimulatedSample.from_spectrum`), e.g. a model prediction or
  a FEFF ``xmu.dat``, with an edge step and a sloped pre-edge background added so that
  normalisation has work to do.

:class:`BeamPhysics` turns these into expected count rates of ``I0``, ``It``, ``Ir`` and ``If``
at the mono energy (plus an optional calibration offset between mono readback and the true
photon energy)::

    I0 = flux * dwell
    It = I0 * exp(-mu_total(E))
    Ir = It * exp(-mu_reference(E))
    If = I0 * (fluorescence_yield * mu_absorber(E) + scatter)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.spectra import edge_energy

__all__ = ["SimulatedSample", "BeamPhysics"]


def _pre_edge_line(energy: np.ndarray, mu: np.ndarray, e0: float) -> np.ndarray:
    """A straight line through the pre-edge (E < e0 - 30 eV) evaluated on ``energy``."""
    sel = energy < e0 - 30.0
    if sel.sum() < 2:
        sel = energy < e0 - 5.0
    if sel.sum() < 2:
        return np.full_like(mu, float(mu[0]))
    slope, intercept = np.polyfit(energy[sel] - e0, mu[sel], 1)
    return intercept + slope * (energy - e0)


def _check_spectrum(energy: Any, mu: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    energy = np.asarray(energy, dtype=float)
    mu = np.asarray(mu, dtype=float)
    if energy.ndim != 1 or energy.shape != mu.shape or energy.size < 2:
        raise ValueError(
            f"{what}: energy and mu must be 1-D arrays of the same length >= 2, "
            f"got shapes {energy.shape} and {mu.shape}"
        )
    if not (np.all(np.isfinite(energy)) and np.all(np.isfinite(mu))):
        raise ValueError(f"{what}: energy and mu must be finite")
    if np.any(np.diff(energy) <= 0):
        i = int(np.flatnonzero(np.diff(energy) <= 0)[0])
        raise ValueError(
            f"{what}: energy must increase; point {i + 1} ({energy[i + 1]} eV) follows {energy[i]} eV"
        )
    return energy, mu


@dataclass
class SimulatedSample:
    """True absorption of the sample and of the reference foil.

    Attributes
    ----------
    energy : numpy.ndarray
        Energies (eV) of the truth, increasing.
    mu_total : numpy.ndarray
        Total attenuation ``mu * t`` of the sample (edge + background), > 0.
    mu_absorber : numpy.ndarray
        Edge part of the absorber (>= 0), seen by the fluorescence detector.
    reference_energy, reference_mu : numpy.ndarray
        Attenuation of the reference foil.
    element, edge : str
        Absorber and edge.
    e0 : float
        Edge energy (eV), tabulated (xraydb) unless given.
    name : str
        A label (e.g. the XDI file name).
    metadata : dict
        ``XDI``-style metadata of the sample (``Sample`` family etc.) for the start document.

    Values outside the truth's energy range are held at the end values.
    """

    energy: np.ndarray
    mu_total: np.ndarray
    mu_absorber: np.ndarray
    reference_energy: np.ndarray
    reference_mu: np.ndarray
    element: str
    edge: str
    e0: float
    name: str = "sample"
    metadata: dict[str, Any] = field(default_factory=dict)

    def total(self, energy: float | np.ndarray) -> np.ndarray:
        """Total attenuation at ``energy`` (eV)."""
        return np.interp(energy, self.energy, self.mu_total)

    def absorber(self, energy: float | np.ndarray) -> np.ndarray:
        """Absorber edge part at ``energy`` (eV)."""
        return np.interp(energy, self.energy, self.mu_absorber)

    def reference(self, energy: float | np.ndarray) -> np.ndarray:
        """Reference-foil attenuation at ``energy`` (eV)."""
        return np.interp(energy, self.reference_energy, self.reference_mu)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_xdi(
        cls,
        path: str | os.PathLike,
        *,
        pre_edge_mu: float = 0.3,
        reference: str | os.PathLike | tuple[Any, Any] | None = None,
        reference_pre_edge_mu: float = 0.2,
    ) -> "SimulatedSample":
        """A sample whose truth is a measured XDI spectrum.

        Parameters
        ----------
        path : path-like
            XDI file with raw ``i0`` and ``itrans`` columns (or ``mutrans``) and
            ``Element.symbol``/``Element.edge``.
        pre_edge_mu : float
            Lowest attenuation after removing the file's constant offset (a gain ratio
            cancels in ``ln(i0/itrans)`` only up to a constant).
        reference : path-like or (energy, mu), optional
            Reference foil; default ``ln(itrans/irefer)`` of the same file, else the sample's own
            edge part (a foil of the same element).
        reference_pre_edge_mu : float
            Same as ``pre_edge_mu`` for the reference.
        """
        from .xdi import XDIError, read_xdi

        data = read_xdi(path)
        element, edge = data.element, data.edge
        if not element or not edge:
            raise XDIError(f"{data.path}: Element.symbol and Element.edge are required to simulate it")
        e0 = edge_energy(element, edge)
        order = np.argsort(data.energy, kind="stable")
        energy = data.energy[order]
        keep = np.concatenate([[True], np.diff(energy) > 0])
        energy = energy[keep]
        raw = data.mu_transmission()[order][keep]
        energy, raw = _check_spectrum(energy, raw, data.path)
        mu_total = raw - raw.min() + pre_edge_mu
        absorber = np.clip(mu_total - _pre_edge_line(energy, mu_total, e0), 0.0, None)
        if reference is None:
            ref = data.mu_reference()
            if ref is not None:
                ref = ref[order][keep]
                ref_energy, ref_mu = energy, ref - ref.min() + reference_pre_edge_mu
            else:
                ref_energy, ref_mu = energy, absorber + reference_pre_edge_mu
        else:
            ref_energy, ref_mu = cls._reference_from(reference, reference_pre_edge_mu)
        if np.any(mu_total <= 0):
            raise ValueError(
                f"{data.path}: attenuation would be <= 0 after the offset; raise pre_edge_mu "
                f"(now {pre_edge_mu})"
            )
        sample_md = dict(data.metadata.get("Sample", {}))
        return cls(
            energy=energy,
            mu_total=mu_total,
            mu_absorber=absorber,
            reference_energy=ref_energy,
            reference_mu=np.clip(ref_mu, 0.0, None),
            element=element,
            edge=edge,
            e0=e0,
            name=os.path.basename(os.fspath(path)),
            metadata={"Sample": sample_md, "source": os.fspath(path)},
        )

    @classmethod
    def from_spectrum(
        cls,
        energy: Any,
        mu: Any,
        *,
        element: str,
        edge: str,
        e0: float | None = None,
        edge_step: float = 1.0,
        pre_edge_mu: float = 0.5,
        pre_edge_slope: float = -2.0e-4,
        reference: tuple[Any, Any] | str | os.PathLike | None = None,
        reference_pre_edge_mu: float = 0.2,
        name: str = "computed spectrum",
    ) -> "SimulatedSample":
        """A sample whose truth is a computed spectrum (model prediction, FEFF ``xmu.dat``).

        ``mu_total(E) = pre_edge_mu + pre_edge_slope * (E - e0) + edge_step * mu(E)``, where
        ``mu`` is taken as normalised (pre-edge ~0, post-edge ~1).

        Parameters
        ----------
        energy, mu : array-like
            The spectrum (absolute energies in eV, increasing).
        element, edge : str
            Absorber and edge (checked with xraydb).
        e0 : float, optional
            Edge energy; default the tabulated one.
        edge_step, pre_edge_mu, pre_edge_slope : float
            Edge jump, background at E0 and its slope (1/eV).
        reference : (energy, mu) or path-like, optional
            Reference foil; default the spectrum itself (a foil of the same absorber).
        """
        energy, mu = _check_spectrum(energy, mu, name)
        if edge_step <= 0:
            raise ValueError(f"{name}: edge_step must be positive, got {edge_step}")
        e0_value = edge_energy(element, edge) if e0 is None else float(e0)
        background = pre_edge_mu + pre_edge_slope * (energy - e0_value)
        mu_total = background + edge_step * mu
        if np.any(mu_total <= 0):
            raise ValueError(
                f"{name}: attenuation <= 0 somewhere; raise pre_edge_mu (now {pre_edge_mu}) or "
                f"lower |pre_edge_slope| (now {pre_edge_slope})"
            )
        if reference is None:
            ref_energy, ref_mu = energy, reference_pre_edge_mu + np.clip(mu, 0.0, None)
        else:
            ref_energy, ref_mu = cls._reference_from(reference, reference_pre_edge_mu)
        return cls(
            energy=energy,
            mu_total=mu_total,
            mu_absorber=np.clip(edge_step * mu, 0.0, None),
            reference_energy=ref_energy,
            reference_mu=ref_mu,
            element=element,
            edge=edge,
            e0=e0_value,
            name=name,
            metadata={"Sample": {"name": name}},
        )

    @staticmethod
    def _reference_from(reference: Any, pre_edge_mu: float) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(reference, (str, os.PathLike)):
            from .xdi import read_xdi

            data = read_xdi(reference)
            order = np.argsort(data.energy, kind="stable")
            energy = data.energy[order]
            mu = data.mu_transmission()[order]
            keep = np.concatenate([[True], np.diff(energy) > 0])
            energy, mu = _check_spectrum(energy[keep], mu[keep], data.path)
            return energy, mu - mu.min() + pre_edge_mu
        if isinstance(reference, Mapping):
            reference = (reference["energy"], reference["mu"])
        energy, mu = _check_spectrum(reference[0], reference[1], "reference")
        return energy, mu


@dataclass
class BeamPhysics:
    """Expected detector rates of the simulated endstation.

    Parameters
    ----------
    sample : SimulatedSample
        What is in the beam.
    flux : float
        Incident photons per second seen by I0 (counts/s).
    fluorescence_yield : float
        Counts in If per incident photon per unit of ``mu_absorber``.
    scatter : float
        Energy-independent background of If per incident photon.
    energy_offset : float
        True photon energy minus mono readback (eV): a miscalibrated mono.
    """

    sample: SimulatedSample
    flux: float = 1.0e7
    fluorescence_yield: float = 0.02
    scatter: float = 2.0e-4
    energy_offset: float = 0.0

    def __post_init__(self) -> None:
        if not (self.flux > 0 and np.isfinite(self.flux)):
            raise ValueError(f"flux must be a positive number of photons/s, got {self.flux!r}")

    def rate(self, role: str, energy: float) -> float:
        """Expected counts per second of one role at mono ``energy`` (what a trigger needs)."""
        true_energy = float(energy) + self.energy_offset
        if role == "i0":
            return self.flux
        if role == "if":
            return self.flux * (self.fluorescence_yield * float(self.sample.absorber(true_energy)) + self.scatter)
        it = self.flux * float(np.exp(-self.sample.total(true_energy)))
        if role == "it":
            return it
        if role == "ir":
            return it * float(np.exp(-self.sample.reference(true_energy)))
        raise ValueError(f"unknown detector role {role!r}; roles are i0, it, ir, if")

    def rates(self, energy: float) -> dict[str, float]:
        """Expected counts per second by role (``i0``, ``it``, ``ir``, ``if``) at mono ``energy``."""
        true_energy = float(energy) + self.energy_offset
        i0 = self.flux
        it = i0 * float(np.exp(-self.sample.total(true_energy)))
        ir = it * float(np.exp(-self.sample.reference(true_energy)))
        fl = i0 * (self.fluorescence_yield * float(self.sample.absorber(true_energy)) + self.scatter)
        return {"i0": i0, "it": it, "ir": ir, "if": fl}
