"""FEFF10 inputs for molecules and crystals, as ``feff10.FeffInput`` objects.

Molecules (pymatgen ``Molecule``): every atom of the molecule, the chosen absorber atom at the
origin, one unique potential per element, cards as in the shared QM9 O K-edge set
(:data:`MOLECULE_CARDS`).

Crystals (pymatgen ``Structure``): one input per symmetry-distinct absorber site (with its
multiplicity, from ``SpacegroupAnalyzer``), a cluster of radius ``cluster_radius`` around the
absorber built from periodic images, one unique potential per element, cards comparable to the
shared Cu K-edge set (:data:`CRYSTAL_CARDS`: SCF 7.0, FMS 9.0, screened core hole, S02 0.95).

Bad input (disordered sites, absorber missing, overlapping atoms) raises :class:`FeffInputError`
naming the structure and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from pymatgen.core import Element, Molecule, Structure

#: Atoms closer than this (Angstrom) are treated as overlapping: the structure is rejected.
MIN_DISTANCE = 0.5
#: Edges FEFF knows (its EDGE card); anything else is rejected before FEFF silently runs a K edge.
EDGES = frozenset(
    ["K", "L1", "L2", "L3", "M1", "M2", "M3", "M4", "M5", "N1", "N2", "N3", "N4", "N5", "N6", "N7",
     "O1", "O2", "O3", "O4", "O5", "O6", "O7", "P1", "P2", "P3", "NO"]
)


class FeffInputError(ValueError):
    """A structure cannot be turned into a FEFF input; the message names it and the reason."""


@dataclass(frozen=True)
class FeffCards:
    """The FEFF control cards of a calculation (everything but POTENTIALS and ATOMS).

    Attributes
    ----------
    edge
        ``EDGE`` card, e.g. ``"K"``.
    s02
        ``S02`` amplitude reduction factor.
    control, print_flags
        The six ``CONTROL`` and ``PRINT`` flags.
    corehole
        ``COREHOLE`` treatment (``"RPA"`` = screened core hole, ``"FSR"``, ``"None"``);
        ``None`` omits the card.
    xanes, fms, exchange, scf
        Arguments of the ``XANES``, ``FMS``, ``EXCHANGE`` and ``SCF`` cards as text; ``None``
        omits the card.
    extra
        Further cards, verbatim (e.g. ``("LDOS -30 15 0.1",)``).
    """

    edge: str = "K"
    s02: float = 1.0
    control: tuple[int, ...] = (1, 1, 1, 1, 1, 1)
    print_flags: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    corehole: str | None = "RPA"
    xanes: str | None = "4 0.04 0.1"
    fms: str | None = "9.0"
    exchange: str | None = "0"
    scf: str | None = "7.0"
    extra: tuple[str, ...] = field(default_factory=tuple)

    def other_cards(self) -> list[str]:
        """The cards after ``EDGE``/``S02``/``CONTROL``/``PRINT``, in the shared set's order."""
        cards = []
        for name, value in (
            ("COREHOLE", self.corehole),
            ("XANES", self.xanes),
            ("FMS", self.fms),
            ("EXCHANGE", self.exchange),
            ("SCF", self.scf),
        ):
            if value is not None:
                cards.append(f"{name} {value}")
        cards.extend(self.extra)
        return cards

    def with_(self, **changes) -> "FeffCards":
        """A copy with some cards changed (``cards.with_(edge="L3", fms="6.0")``)."""
        return replace(self, **changes)


#: Cards of the shared QM9 O K-edge set (qm9_o_k_feff10/README.md); the edge element is the absorber.
MOLECULE_CARDS = FeffCards()
#: Cards for crystals, comparable to the shared Cu K-edge set (FEFF 9: SCF 7.0, FMS 9.0,
#: screened core hole, S02 0.95).
CRYSTAL_CARDS = FeffCards(s02=0.95)
#: Default cluster radius around a crystal absorber, Angstrom (>= the FMS radius).
CLUSTER_RADIUS = 10.0
#: Cheaper crystal cards for on-demand checks (e.g. verifying ranked candidates): SCF 4.5 A and
#: FMS 6.0 A in a 6 A cluster, ~1.5 CPU-minutes per Cu site instead of > 30 with the full cards.
QUICK_CRYSTAL_CARDS = CRYSTAL_CARDS.with_(scf="4.5", fms="6.0")
QUICK_CLUSTER_RADIUS = 6.0


@dataclass
class SiteInput:
    """The FEFF input of one absorbing site.

    Attributes
    ----------
    site_index
        0-based index of the absorber in the structure (the ``NNN`` of ``NNN_El`` folders).
    multiplicity
        Number of sites equivalent to it (1 for molecules, where every absorber atom is its own site).
    feff_input
        The ``feff10.FeffInput``; ``feff_input.to_string()`` is the ``feff.inp`` text.
    """

    site_index: int
    multiplicity: int
    feff_input: object

    @property
    def text(self) -> str:
        """The ``feff.inp`` text."""
        return self.feff_input.to_string()


def structure_label(structure: Structure | Molecule, name: str | None = None) -> str:
    """A readable name for messages: ``name``, else the structure's ``name``/``material_id``
    property, else its formula."""
    if name:
        return str(name)
    props = getattr(structure, "properties", None) or {}
    for key in ("name", "material_id", "id"):
        if props.get(key):
            return str(props[key])
    return structure.composition.reduced_formula if len(structure) else "<empty structure>"


def _check_structure(structure: Structure | Molecule, absorber: str, label: str) -> None:
    if len(structure) == 0:
        raise FeffInputError(f"{label}: structure has no atoms")
    if not structure.is_ordered:
        bad = [f"site {i} ({s.species})" for i, s in enumerate(structure) if not s.is_ordered]
        raise FeffInputError(
            f"{label}: disordered structure (partial occupancy at {', '.join(bad[:5])}); "
            "FEFF needs one element per site -- order it first"
        )
    try:
        Element(absorber)
    except ValueError:
        raise FeffInputError(f"{label}: absorber {absorber!r} is not an element symbol") from None
    symbols = [s.specie.symbol for s in structure]
    if absorber not in symbols:
        raise FeffInputError(
            f"{label}: absorber {absorber} missing (structure holds {', '.join(sorted(set(symbols)))})"
        )
    _check_overlaps(structure, label)


def _check_overlaps(structure: Structure | Molecule, label: str) -> None:
    if isinstance(structure, Structure):
        centers, points, _, dists = structure.get_neighbor_list(MIN_DISTANCE)
        pairs = [(int(i), int(j), float(d)) for i, j, d in zip(centers, points, dists)]
    else:
        coords = structure.cart_coords
        d = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
        i, j = np.nonzero(np.triu(d < MIN_DISTANCE, k=1))
        pairs = [(int(a), int(b), float(d[a, b])) for a, b in zip(i, j)]
    if pairs:
        i, j, dist = min(pairs, key=lambda p: p[2])
        raise FeffInputError(
            f"{label}: overlapping atoms: site {i} ({structure[i].specie}) and site {j} "
            f"({structure[j].specie}) are {dist:.3f} A apart (< {MIN_DISTANCE} A)"
        )


def _feff_input(
    label: str,
    title: list[str],
    absorber_symbol: str,
    neighbours: Sequence[tuple[str, np.ndarray]],
    cards: FeffCards,
):
    """Build a ``FeffInput``: absorber (ipot 0) at the origin, then ``neighbours`` given as
    ``(symbol, position relative to the absorber)``; one potential per element in order of first
    appearance among the neighbours."""
    import feff10

    if cards.edge is not None and str(cards.edge).upper() not in EDGES:
        raise FeffInputError(f"{label}: unknown EDGE {cards.edge!r} (expected one of K, L1, L2, L3, M1..M5, ...)")
    ipots: dict[str, int] = {}
    for symbol, _ in neighbours:
        ipots.setdefault(symbol, len(ipots) + 1)
    potentials = [feff10.Potential(0, Element(absorber_symbol).Z, absorber_symbol)]
    potentials += [feff10.Potential(ip, Element(sym).Z, sym) for sym, ip in ipots.items()]
    atoms = [feff10.Atom(0.0, 0.0, 0.0, 0, absorber_symbol, 0.0)]
    for symbol, pos in neighbours:
        x, y, z = (float(v) for v in pos)
        atoms.append(feff10.Atom(x, y, z, ipots[symbol], symbol, float(np.linalg.norm(pos))))
    return feff10.FeffInput(
        title=title,
        edge=cards.edge,
        s02=cards.s02,
        control=list(cards.control),
        print_flags=list(cards.print_flags),
        potentials=potentials,
        atoms=atoms,
        other_cards=cards.other_cards(),
    )


def absorber_sites(molecule: Molecule, absorber: str) -> list[int]:
    """Indices of the ``absorber`` atoms of a molecule (every one is its own site)."""
    return [i for i, s in enumerate(molecule) if s.specie.symbol == absorber]


def molecule_site_input(
    molecule: Molecule,
    site_index: int,
    cards: FeffCards = MOLECULE_CARDS,
    name: str | None = None,
):
    """The ``feff10.FeffInput`` of one absorber atom of a molecule.

    All atoms of the molecule, shifted so the absorber is at the origin, in the molecule's atom
    order; one unique potential per element (ipot 0: the absorber).

    Raises
    ------
    FeffInputError
        Bad site index, disordered or overlapping atoms.
    """
    label = structure_label(molecule, name)
    if not 0 <= site_index < len(molecule):
        raise FeffInputError(f"{label}: absorber site {site_index} out of range (molecule has {len(molecule)} atoms)")
    absorber = molecule[site_index].specie.symbol
    _check_structure(molecule, absorber, label)
    coords = molecule.cart_coords
    origin = coords[site_index]
    neighbours = [
        (site.specie.symbol, coords[i] - origin) for i, site in enumerate(molecule) if i != site_index
    ]
    return _feff_input(label, [f"{label} {absorber} site {site_index}"], absorber, neighbours, cards)


def molecule_inputs(
    molecule: Molecule,
    absorber: str,
    cards: FeffCards = MOLECULE_CARDS,
    name: str | None = None,
) -> list[SiteInput]:
    """FEFF inputs for every ``absorber`` atom of a molecule (multiplicity 1 each).

    Raises
    ------
    FeffInputError
        Absorber missing, disordered or overlapping atoms; the message names the molecule.
    """
    label = structure_label(molecule, name)
    if not isinstance(molecule, Molecule):
        raise FeffInputError(f"{label}: expected a pymatgen Molecule, got {type(molecule).__name__}")
    _check_structure(molecule, absorber, label)
    return [
        SiteInput(i, 1, molecule_site_input(molecule, i, cards, name=label))
        for i in absorber_sites(molecule, absorber)
    ]


def distinct_absorber_sites(
    structure: Structure, absorber: str, symprec: float = 0.01
) -> list[tuple[int, int]]:
    """Symmetry-distinct ``absorber`` sites of a crystal as ``(site index, multiplicity)``.

    The representative of each class of equivalent sites is its lowest index in ``structure``.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sym = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetrized_structure()
        groups = sym.equivalent_indices
    except Exception:  # spglib can fail on odd cells: fall back to every site being distinct
        groups = [[i] for i in range(len(structure))]
    out = [
        (min(group), len(group))
        for group in groups
        if structure[group[0]].specie.symbol == absorber
    ]
    return sorted(out)


def crystal_site_input(
    structure: Structure,
    site_index: int,
    cluster_radius: float = CLUSTER_RADIUS,
    cards: FeffCards = CRYSTAL_CARDS,
    name: str | None = None,
):
    """The ``feff10.FeffInput`` of one absorbing site of a crystal.

    The cluster holds every atom (periodic images included) within ``cluster_radius`` of the
    absorber, sorted by distance, absorber at the origin.
    """
    label = structure_label(structure, name)
    if not 0 <= site_index < len(structure):
        raise FeffInputError(f"{label}: absorber site {site_index} out of range (structure has {len(structure)} sites)")
    absorber = structure[site_index].specie.symbol
    center = structure[site_index].coords
    found = structure.get_sites_in_sphere(center, cluster_radius, include_index=True)
    rel = []
    for nb in found:
        vec = nb.coords - center
        dist = float(np.linalg.norm(vec))
        if dist < 1e-6:
            continue  # the absorber itself
        rel.append((round(dist, 6), nb.specie.symbol, tuple(np.round(vec, 6)), vec))
    rel.sort(key=lambda t: (t[0], t[1], t[2]))
    if not rel:
        raise FeffInputError(
            f"{label}: no neighbours within cluster_radius={cluster_radius} A of site {site_index}"
        )
    neighbours = [(sym, vec) for _, sym, _, vec in rel]
    title = [f"{label} {absorber} site {site_index} cluster {cluster_radius:g} A"]
    return _feff_input(label, title, absorber, neighbours, cards)


def crystal_inputs(
    structure: Structure,
    absorber: str,
    cluster_radius: float = CLUSTER_RADIUS,
    cards: FeffCards = CRYSTAL_CARDS,
    name: str | None = None,
    symprec: float = 0.01,
) -> list[SiteInput]:
    """FEFF inputs for the symmetry-distinct ``absorber`` sites of a crystal.

    Parameters
    ----------
    structure
        Ordered pymatgen ``Structure``.
    absorber
        Element symbol of the absorbing atoms.
    cluster_radius
        Radius (Angstrom) of the cluster around each absorber; should be at least the FMS radius.
    cards
        Control cards (default :data:`CRYSTAL_CARDS`).
    name
        Name used in titles and messages (default: the structure's properties or formula).
    symprec
        Symmetry tolerance of ``SpacegroupAnalyzer``.

    Returns
    -------
    list of SiteInput
        One per symmetry-distinct absorber site, with its multiplicity (summing to the number of
        absorber atoms in the cell).

    Raises
    ------
    FeffInputError
        Disordered sites, absorber missing, overlapping atoms, non-positive radius.
    """
    label = structure_label(structure, name)
    if not isinstance(structure, Structure):
        raise FeffInputError(f"{label}: expected a pymatgen Structure, got {type(structure).__name__}")
    if not cluster_radius > 0:
        raise FeffInputError(f"{label}: cluster_radius must be positive, got {cluster_radius}")
    _check_structure(structure, absorber, label)
    return [
        SiteInput(i, mult, crystal_site_input(structure, i, cluster_radius, cards, name=label))
        for i, mult in distinct_absorber_sites(structure, absorber, symprec)
    ]


def structure_inputs(
    structure: Structure | Molecule,
    absorber: str,
    cards: FeffCards | None = None,
    cluster_radius: float = CLUSTER_RADIUS,
    name: str | None = None,
) -> list[SiteInput]:
    """:func:`molecule_inputs` or :func:`crystal_inputs`, by the type of ``structure``;
    ``cards=None`` picks :data:`MOLECULE_CARDS` or :data:`CRYSTAL_CARDS`."""
    if isinstance(structure, Structure):
        return crystal_inputs(structure, absorber, cluster_radius, cards or CRYSTAL_CARDS, name=name)
    if isinstance(structure, Molecule):
        return molecule_inputs(structure, absorber, cards or MOLECULE_CARDS, name=name)
    raise FeffInputError(
        f"{structure_label(structure, name) if hasattr(structure, 'composition') else name or structure!r}: "
        f"expected a pymatgen Structure or Molecule, got {type(structure).__name__}"
    )
