"""10-endstation: the hardware. THE ONLY FILE A REAL BEAMLINE REPLACES (with EPICS devices).

Whatever replaces it must define, with these names (= data keys):
``energy`` (mono positioner, eV, with ``limits``), ``I0``, ``It``, ``Ir``, ``If`` (counters),
``dwell_time`` (settable counting time, s), ``detectors`` (the list a scan reads) and
``xdi_metadata`` (dict of XDI families: Mono, Detector, Beamline, Facility).

Simulation settings (environment): ``XAS_SAMPLE_XDI`` (an XDI file whose raw columns define the
true mu(E); default the CuO tenorite spectrum of the shared XAS data library),
``XAS_TIME_SCALE`` (1 realistic waits, 0 none), ``XAS_SEED`` (counting noise),
``XAS_ENERGY_OFFSET`` (eV, mono miscalibration).
"""

import os

from endstation import SimulatedSample, make_endstation
from models.paths import XAS_DATA_LIBRARY, data_path

_sample_file = os.environ.get("XAS_SAMPLE_XDI") or data_path(f"{XAS_DATA_LIBRARY}/Cu/CuO_tenorite_13K_01.xdi")
sample = SimulatedSample.from_xdi(_sample_file)
endstation = make_endstation(
    sample,
    seed=int(os.environ.get("XAS_SEED", "0")),
    time_scale=float(os.environ.get("XAS_TIME_SCALE", "1")),
    energy_offset=float(os.environ.get("XAS_ENERGY_OFFSET", "0")),
)
energy = endstation.energy
I0, It, Ir, If = endstation.I0, endstation.It, endstation.Ir, endstation.If
dwell_time = endstation.dwell_time
detectors = [I0, It, Ir, If, dwell_time]
xdi_metadata = endstation.xdi_metadata()
xdi_metadata["Sample"] = dict(sample.metadata.get("Sample", {}))
