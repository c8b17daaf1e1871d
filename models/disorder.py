"""Ordered stand-ins for a crystal with partial occupancies, whose spectra average to its spectrum.

Mineral databases are full of partially occupied sites (vacancies in digenite, Cu disordered over
several sites in high chalcocite, Cu/Fe sharing a site). A spectrum is a property of the local
environments the absorbers actually have, so a disordered crystal is approximated by a few
ordered supercells drawn from its occupancies: each partially occupied site is filled with one
of its species with the occupancy as probability, never closer than ``min_distance`` to an atom
already placed (partial sites that close exclude each other in the real crystal). The spectrum of
the disordered crystal is the average over the absorber sites of all the samples.

:func:`ordered_samples` returns the samples and a note saying what was done and how far the
samples' composition is from the nominal one; the note travels into the candidate's provenance.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ordered_samples", "DEFAULT_SAMPLES"]

#: Ordered samples drawn per disordered structure.
DEFAULT_SAMPLES = 4


def ordered_samples(structure, n_samples: int = DEFAULT_SAMPLES, *, seed: int = 0, min_distance: float = 1.6,
                    min_length: float = 8.0) -> tuple[list, dict]:
    """Ordered supercells drawn from the occupancies of ``structure``, and a note.

    Parameters
    ----------
    structure : pymatgen Structure
        May be ordered (returned as the only sample) or partially occupied.
    n_samples : int
        Samples drawn.
    seed : int
        Seed of the draws (the same structure and seed give the same samples).
    min_distance : float
        No two atoms of a sample are closer than this (Angstrom).
    min_length : float
        The supercell's lattice vectors are at least this long (Angstrom), so that a sample holds
        several draws of each partial site.

    Returns
    -------
    samples : list of Structure
    note : dict
        ``method``, ``supercell``, ``n_samples``, ``seed``, ``partial_sites`` and the nominal and
        sampled compositions (per formula unit of the nominal cell).
    """
    from pymatgen.core import Lattice, Structure

    if structure.is_ordered:
        return [structure.copy()], {"method": "ordered"}
    scale = [max(1, int(np.ceil(min_length / length))) for length in structure.lattice.abc]
    cell = structure * scale
    lattice: Lattice = cell.lattice
    rng = np.random.default_rng(seed)
    partial = [i for i, site in enumerate(cell) if not site.is_ordered]
    fixed = [i for i, site in enumerate(cell) if site.is_ordered]
    samples = []
    for _ in range(n_samples):
        species = [next(iter(cell[i].species)) for i in fixed]
        coords = [cell[i].frac_coords for i in fixed]
        for i in rng.permutation(partial):
            occupancies = list(cell[i].species.items())
            u = rng.random()
            chosen = None
            for element, occupancy in occupancies:
                if u < occupancy:
                    chosen = element
                    break
                u -= occupancy
            if chosen is None:
                continue  # a vacancy
            frac = cell[i].frac_coords
            if coords:
                d = lattice.get_all_distances([frac], coords)[0]
                if d.min() < min_distance:
                    continue
            species.append(chosen)
            coords.append(frac)
        samples.append(Structure(lattice, species, coords))
    nominal = structure.composition.element_composition
    drawn = sum((s.composition.element_composition for s in samples[1:]), samples[0].composition.element_composition)
    per_cell = len(samples) * int(np.prod(scale))
    note = {
        "method": "ordered samples drawn from the occupancies (models.disorder.ordered_samples), spectra averaged",
        "supercell": scale,
        "n_samples": n_samples,
        "seed": seed,
        "min_distance_A": min_distance,
        "partial_sites": len(partial),
        "nominal_composition": {str(el): round(float(n), 3) for el, n in nominal.items()},
        "sampled_composition": {str(el): round(float(n) / per_cell, 3) for el, n in drawn.items()},
    }
    return samples, note
