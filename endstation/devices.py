"""Simulated ophyd hardware of an NSLS-II-style XAS endstation.

* :class:`MonoEnergy` -- the monochromator energy positioner (``Device`` + ``PositionerBase``,
  like ``ophyd.PVPositioner``): ``set()`` returns a ``MoveStatus`` that finishes after
  ``|dE| / speed`` plus ``settle_time``; soft limits refuse an energy outside them.
  Data key ``energy`` (the readback, hinted); ``energy_setpoint``.
* :class:`DwellTime` -- the counting time shared by the detectors (data key ``dwell_time``),
  the scaler preset time of a real beamline.
* :class:`IonChamber` -- a counter (``I0``, ``It``, ``Ir``, or the fluorescence channel
  ``If``): ``trigger()`` draws Poisson counts of the expected rate times the dwell and returns
  a ``DeviceStatus`` that finishes after the dwell.

:func:`make_endstation` builds the set with the device names (= data keys) of
docs/architecture.md.  ``time_scale`` multiplies every simulated wait (0 in tests and
benchmarks: counts still use the nominal dwell, but nothing sleeps).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Kind, Signal
from ophyd.positioner import PositionerBase
from ophyd.status import DeviceStatus, MoveStatus
from ophyd.utils import LimitError

from .modes import ROLES
from .sample import BeamPhysics, SimulatedSample

__all__ = [
    "TypedSignal",
    "MonoEnergy",
    "DwellTime",
    "IonChamber",
    "SimulatedEndstation",
    "make_endstation",
]


class TypedSignal(Signal):
    """A soft ``Signal`` whose description carries an event-model ``dtype_numpy`` (default ``<f8``;
    ``<U64`` for strings, ``<i8`` for integers), so stored values read back with their type.

    (ophyd's own ``dtype=`` argument writes ``float64``, which event-model's schema refuses.)
    """

    def __init__(self, *args: Any, dtype_numpy: str = "<f8", **kwargs: Any) -> None:
        self._dtype_numpy = dtype_numpy
        super().__init__(*args, **kwargs)

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        desc[self.name]["dtype_numpy"] = self._dtype_numpy
        return desc


class MonoEnergy(Device, PositionerBase):
    """Monochromator energy (eV) with speed, settle time and soft limits.

    Parameters
    ----------
    name : str
        Device name; the readback's data key is the same (``energy``).
    limits : (float, float)
        Soft limits (eV); a move outside them raises ``LimitError`` (a ``ValueError``).
    speed : float
        Scan speed (eV/s); 0 or ``inf`` moves instantly.
    settle_time : float
        Wait after each move (s) before the status finishes.
    init_pos : float
        Starting energy (eV).
    time_scale : float
        Multiplies the simulated wait (0 for no waiting at all).
    crystal, d_spacing : str, float
        Monochromator crystal and d-spacing (configuration, for the XDI ``Mono`` family).
    """

    readback = Cpt(TypedSignal, value=0.0, kind=Kind.hinted, dtype_numpy="<f8")
    setpoint = Cpt(TypedSignal, value=0.0, kind=Kind.normal, dtype_numpy="<f8")
    speed = Cpt(TypedSignal, value=100.0, kind=Kind.config, dtype_numpy="<f8")
    d_spacing = Cpt(TypedSignal, value=3.13560, kind=Kind.config, dtype_numpy="<f8")

    def __init__(
        self,
        *,
        name: str = "energy",
        limits: tuple[float, float] = (4500.0, 32000.0),
        speed: float = 100.0,
        settle_time: float = 0.2,
        init_pos: float = 9000.0,
        time_scale: float = 1.0,
        crystal: str = "Si(111)",
        d_spacing: float = 3.13560,
        egu: str = "eV",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, settle_time=settle_time * time_scale, **kwargs)
        low, high = (float(limits[0]), float(limits[1]))
        if not low < high:
            raise ValueError(f"{name}: limits must be (low, high) with low < high, got {limits!r}")
        self._limits = (low, high)
        self._egu = egu
        self._time_scale = float(time_scale)
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.readback.name = self.name
        self.speed.put(float(speed))
        self.crystal = crystal
        self.d_spacing.put(float(d_spacing))
        self.check_value(init_pos)
        self.setpoint.put(float(init_pos))
        self.readback.put(float(init_pos))
        self._position = float(init_pos)

    # --- PositionerBase interface -------------------------------------------------
    @property
    def limits(self) -> tuple[float, float]:
        return self._limits

    @property
    def egu(self) -> str:
        return self._egu

    @property
    def position(self) -> float:
        return float(self.readback.get())

    def check_value(self, pos: float) -> None:
        """Refuse a non-finite energy or one outside the soft limits (``LimitError``)."""
        low, high = self._limits
        try:
            value = float(pos)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: energy must be a number, got {pos!r}") from None
        if not np.isfinite(value) or not (low <= value <= high):
            raise LimitError(
                f"{self.name}: energy {pos!r} eV is outside the limits [{low:g}, {high:g}] eV"
            )

    def _set_position(self, value: float, **kwargs: Any) -> None:
        self.readback.put(float(value))
        super()._set_position(float(value), **kwargs)

    def move(self, position: float, wait: bool = False, timeout: float | None = None,
             moved_cb: Any = None) -> MoveStatus:
        """Start a move to ``position`` (eV); returns its ``MoveStatus``."""
        status = super().move(position, moved_cb=moved_cb, timeout=timeout)
        target = float(position)
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.setpoint.put(target)
            speed = float(self.speed.get())
            distance = abs(target - self.position)
            duration = 0.0 if speed <= 0 or not np.isfinite(speed) else distance / speed
            duration *= self._time_scale
            self._run_subs(sub_type=self.SUB_START, timestamp=time.time())
            self._moving = duration > 0
            if duration <= 0:
                self._finish(target)
            else:
                self._timer = threading.Timer(duration, self._finish, args=(target,))
                self._timer.daemon = True
                self._timer.start()
        if wait:
            status.wait()
        return status

    def _finish(self, target: float) -> None:
        self._moving = False
        self._timer = None
        self._set_position(target)
        self._done_moving(success=True)

    def stop(self, *, success: bool = False) -> None:
        """Stop a move where it is (the readback stays at the last reached energy)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._moving = False
                super().stop(success=success)

    @property
    def hints(self) -> dict[str, list[str]]:
        return {"fields": [self.readback.name]}


class DwellTime(Signal):
    """Counting time (s) shared by the detectors; refuses negative or non-finite values."""

    def __init__(self, *, name: str = "dwell_time", value: float = 1.0, **kwargs: Any) -> None:
        kwargs.setdefault("kind", Kind.normal)
        kwargs.setdefault("dtype", "float64")
        kwargs.setdefault("shape", ())
        super().__init__(name=name, value=float(value), **kwargs)

    def check_value(self, value: Any) -> None:
        super().check_value(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: dwell time must be a number of seconds, got {value!r}") from None
        if not np.isfinite(number) or number < 0:
            raise ValueError(f"{self.name}: dwell time must be >= 0 s and finite, got {value!r}")

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        desc[self.name]["units"] = "s"
        desc[self.name]["dtype_numpy"] = "<f8"
        return desc


class IonChamber(Device):
    """A counting detector of the simulated endstation (ion chamber or fluorescence channel).

    Parameters
    ----------
    name : str
        Device name = data key of the counts (``I0``, ``It``, ``Ir``, ``If``).
    role : {"i0", "it", "ir", "if"}
        Which expected rate of :class:`~endstation.sample.BeamPhysics` it counts.
    physics : BeamPhysics
        The beam and sample model.
    energy : MonoEnergy
        Where the mono is (read at trigger time).
    dwell_time : DwellTime
        The (shared) counting time.
    rng : numpy.random.Generator
        Random source of the Poisson noise (seeded by :func:`make_endstation`).
    time_scale : float
        Multiplies the simulated counting wait (0: finish at once).
    """

    counts = Cpt(TypedSignal, value=0, kind=Kind.hinted, dtype_numpy="<i8")

    def __init__(
        self,
        *,
        name: str,
        role: str,
        physics: BeamPhysics,
        energy: MonoEnergy,
        dwell_time: DwellTime,
        rng: np.random.Generator,
        time_scale: float = 1.0,
        gas: str = "N2",
        **kwargs: Any,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"{name}: role must be one of {sorted(ROLES)}, got {role!r}")
        super().__init__(name=name, **kwargs)
        self.counts.name = self.name
        self.role = role
        self.physics = physics
        self.energy = energy
        self.dwell_time = dwell_time
        self.rng = rng
        self._time_scale = float(time_scale)
        self.gas = gas

    def trigger(self) -> DeviceStatus:
        """Count for ``dwell_time`` at the current mono energy; returns a ``DeviceStatus``."""
        dwell = float(self.dwell_time.get())
        expected = self.physics.rate(self.role, self.energy.position) * dwell
        value = int(self.rng.poisson(max(expected, 0.0)))
        status = DeviceStatus(self)
        wait = dwell * self._time_scale

        def finish() -> None:
            self.counts.put(value)
            status.set_finished()

        if wait <= 0:
            finish()
        else:
            timer = threading.Timer(wait, finish)
            timer.daemon = True
            timer.start()
        return status


@dataclass
class SimulatedEndstation:
    """The devices of the simulated endstation (see :func:`make_endstation`)."""

    energy: MonoEnergy
    I0: IonChamber
    It: IonChamber
    Ir: IonChamber
    If: IonChamber
    dwell_time: DwellTime
    physics: BeamPhysics
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def detectors(self) -> list[Any]:
        """Readables of a scan: the four counters and the dwell time."""
        return [self.I0, self.It, self.Ir, self.If, self.dwell_time]

    @property
    def sample(self) -> SimulatedSample:
        return self.physics.sample

    def xdi_metadata(self) -> dict[str, Any]:
        """``XDI`` families describing this hardware (Mono, Detector, Beamline, Facility)."""
        return {
            "Mono": {"name": self.energy.crystal, "d_spacing": self.energy.d_spacing.get()},
            "Detector": {"I0": f"ion chamber {self.I0.gas}", "I1": f"ion chamber {self.It.gas}",
                         "I2": f"ion chamber {self.Ir.gas}", "If": "fluorescence channel (simulated)"},
            "Beamline": {"name": "simulated XAS endstation (steered-xas)"},
            "Facility": {"name": "simulated NSLS-II-style"},
        }


def make_endstation(
    sample: SimulatedSample,
    *,
    seed: int = 0,
    flux: float = 1.0e7,
    limits: tuple[float, float] = (4500.0, 32000.0),
    speed: float = 100.0,
    settle_time: float = 0.2,
    time_scale: float = 1.0,
    energy_offset: float = 0.0,
    init_energy: float | None = None,
    dwell: float = 1.0,
) -> SimulatedEndstation:
    """Build the simulated endstation around ``sample``.

    Parameters
    ----------
    sample : SimulatedSample
        The sample in the beam (:meth:`SimulatedSample.from_xdi` or ``from_spectrum``).
    seed : int
        Seed of the counting noise (one ``numpy.random.Generator`` shared by the counters).
    flux : float
        Incident photons/s seen by I0.
    limits, speed, settle_time : see :class:`MonoEnergy`.
    time_scale : float
        1 for realistic waits, 0 for none (tests, benchmarks).
    energy_offset : float
        True photon energy minus mono readback (eV).
    init_energy : float, optional
        Starting mono energy; default ``sample.e0`` clipped into the limits.
    dwell : float
        Initial dwell time (s).
    """
    physics = BeamPhysics(sample=sample, flux=flux, energy_offset=energy_offset)
    rng = np.random.default_rng(seed)
    start = sample.e0 if init_energy is None else init_energy
    start = float(min(max(start, limits[0]), limits[1]))
    energy = MonoEnergy(name="energy", limits=limits, speed=speed, settle_time=settle_time,
                        init_pos=start, time_scale=time_scale)
    dwell_time = DwellTime(name="dwell_time", value=dwell)
    gases = {"i0": "N2", "it": "Ar", "ir": "Ar", "if": "Si drift (simulated)"}
    counters = {
        role: IonChamber(name=name, role=role, physics=physics, energy=energy, dwell_time=dwell_time,
                         rng=rng, time_scale=time_scale, gas=gases[role])
        for role, name in ROLES.items()
    }
    return SimulatedEndstation(
        energy=energy,
        I0=counters["i0"],
        It=counters["it"],
        Ir=counters["ir"],
        If=counters["if"],
        dwell_time=dwell_time,
        physics=physics,
        seed=seed,
    )
