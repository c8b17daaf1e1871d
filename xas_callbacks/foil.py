"""The energy calibration from a reference foil measured beside the sample.

Transmission beamlines measure a metal foil of the absorbing element behind the sample (``ln(It /
Ir)``, the ``reference`` mode). Ranked against the candidates' model's own spectrum of that metal,
the foil gives the offset between the model's energy scale and the monochromator's, whatever the
absolute error of computed spectra (several eV) or the mono's miscalibration. The sample's offset
is the same up to how differently the model misplaces the metal's and the sample's edges:
:data:`FOIL_TRANSFER_SD`. The result is the prior of the sample ranking's common offset, far
narrower than what aligning edges of unknown chemistry can give (a Cu(I) and a Cu(II) edge are 2-4
eV apart: exactly what the ranking must not absorb into the offset).
"""

from __future__ import annotations

import numpy as np

__all__ = ["METAL_MINERALS", "FOIL_TRANSFER_SD", "foil_library", "foil_offset_prior"]

#: The AMCSD mineral that is the absorber's metal foil (native elements).
METAL_MINERALS = {"Cu": "copper", "Fe": "iron", "Ni": "nickel", "Co": "cobalt", "Zn": "zinc", "Cr": "chromium",
                  "Ag": "silver", "Au": "gold", "Pt": "platinum", "Pb": "lead", "Ti": "titanium"}

#: 1-sigma (eV) between the offset the foil gives and the sample's: the model's edge error for the
#: metal and for the sample compound differ (chosen on validation data: README).
FOIL_TRANSFER_SD = 1.5

_LIBRARIES: dict = {}


def foil_library(element: str, model: str):
    """The model's spectrum of ``element``'s metal (one candidate, named by the metal), or None
    when the element has no metal in :data:`METAL_MINERALS` or the model cannot predict it."""
    from models.amcsd import mineral_cifs
    from models.amcsd import parse_cif
    from xas_callbacks.candidates import CandidateLibrary

    key = (element, model)
    if key not in _LIBRARIES:
        library = None
        mineral = METAL_MINERALS.get(element)
        if mineral is not None:
            entries, _ = mineral_cifs([mineral], contains=(element,))
            if mineral in entries:
                metal = parse_cif(entries[mineral].text)
                metal.properties = {"name": mineral}
                library = CandidateLibrary.from_structures([metal], model=model, names=[mineral], cache=False)
                library = library if len(library) else None
        _LIBRARIES[key] = library
    return _LIBRARIES[key]


def foil_offset_prior(energy, mu, var, library, config=None):
    """The common offset's prior from the foil's readings: (mean, sd) in eV, or None while the
    readings do not yet hold the foil's edge.

    ``library`` holds the model's metal spectrum (:func:`foil_library`); the foil is normalised
    like any measurement and ranked against it (offset and broadening marginalised); the
    posterior offset's sd is widened by :data:`FOIL_TRANSFER_SD`. A reference that the ranking
    finds is probably not the metal (``p_none > 0.5``: another compound, a distorted foil) gives
    no prior.
    """
    from xas_callbacks.ranking import rank_spectrum

    energy = np.asarray(energy, dtype=float)
    if library is None or energy.size < 6:
        return None
    engine, result, normalization = rank_spectrum({"energy": energy, "mu": mu, "var": var, "e0": None}, library,
                                                  config)
    if normalization.method == "provisional" or engine.n_points < 6 or result.p_none > 0.5 or any(
            "offset" in w for w in result.warnings):
        return None  # no edge yet, or not the metal (a compound or a distorted foil): no calibration
    return float(result.offset_mean), float(np.hypot(result.offset_sd, FOIL_TRANSFER_SD))
