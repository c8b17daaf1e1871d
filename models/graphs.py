"""Absorber-centred graphs of crystals and molecules for the XANES GNN.

A site graph holds the atoms around one absorbing atom (crystals: every atom, periodic images
included, within ``cluster_radius`` of the absorber; molecules: the atoms within
``cluster_radius``), with the absorber at node 0. Only invariants enter the features
(element descriptors, interatomic distances, bond orders), and nodes are put in a canonical order
(distance to the absorber, then atomic number), so a graph does not change under rotation,
translation, or permutation of the input atoms.

Graph layout (a :class:`SiteGraph`, a ``torch_geometric.data.Data``):

``x`` (N, node_dim) float32
    one-hot over ``elements`` | Z/100, Pauling electronegativity/4, atomic radius/2 A,
    row/7, group/18 | absorber flag | (optional) Gaussian radial basis of the distance to the
    absorber, ``num_rbf`` centres on [0, cluster_radius].
``edge_index`` (2, M) int64
    directed pairs (both directions) closer than ``edge_cutoff``.
``edge_attr`` (M, edge_dim) float32
    Gaussian radial basis of the distance, ``num_rbf`` centres on [0, edge_cutoff]; molecules
    add a one-hot of the RDKit-perceived bond: single, double, triple, aromatic, none.
``edge_length`` (M,) float32, ``absorber_distance`` (N,) float32
    raw distances, for envelopes or plotting.
``absorber_index`` (1,) int64
    always 0 within the graph (batched: the absorber's node in the batch).
``pos`` (N, 3) float32
    Cartesian positions relative to the absorber (A), for directional models
    (:mod:`models.painn`, :mod:`models.descriptors`); rotating the input rotates ``pos`` and
    leaves every other field unchanged.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pymatgen.core import Element, IMolecule, IStructure, Molecule, Structure
from torch_geometric.data import Data

#: Bond classes of the molecular edge one-hot, in order.
BOND_TYPES = ("single", "double", "triple", "aromatic", "none")
#: Symmetry tolerances (A) tried in turn for the symmetry-distinct absorber sites of crystals.
SYMPREC_FALLBACK = (0.01, 0.1)
#: Number of per-element physical descriptors after the one-hot.
N_DESCRIPTORS = 5


class UnsupportedElementError(ValueError):
    """The structure holds an element the builder (and so the model) does not know."""


class NoAbsorberError(ValueError):
    """The structure holds no atom of the absorbing element, or the site is not one."""


class SiteGraph(Data):
    """A ``Data`` whose ``site_index`` is a per-graph label, not a node index.

    PyG shifts every attribute whose name contains ``index`` by the node count when batching;
    ``site_index`` (the absorber's index in the *input structure*) must not be shifted.
    """

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key == "site_index":
            return 0
        return super().__inc__(key, value, *args, **kwargs)


def _element_descriptors(symbol: str) -> np.ndarray:
    el = Element(symbol)
    chi = el.X if el.X is not None and math.isfinite(el.X) else 0.0
    radius = el.atomic_radius or el.atomic_radius_calculated or 1.5
    group = el.group if el.group is not None else 0
    return np.array(
        [el.Z / 100.0, chi / 4.0, float(radius) / 2.0, el.row / 7.0, group / 18.0], dtype=np.float64
    )


def gaussian_rbf(distances: np.ndarray, stop: float, num: int) -> np.ndarray:
    """Gaussian radial basis: ``num`` centres evenly on [0, stop], width = spacing.

    Parameters
    ----------
    distances
        Shape (M,), Angstrom.
    stop
        Last centre.
    num
        Number of centres.

    Returns
    -------
    np.ndarray
        Shape (M, num), values in (0, 1].
    """
    centres = np.linspace(0.0, stop, num)
    width = centres[1] - centres[0] if num > 1 else stop
    return np.exp(-(((distances[:, None] - centres[None, :]) / width) ** 2))


def _species_symbols(structure: Structure | Molecule) -> list[str]:
    # reads each site's composition directly: 4x faster than ``structure.species``, which
    # matters at thousands of molecules per second
    out = []
    for site in structure:
        comp = site.species
        if len(comp) != 1:
            raise ValueError(f"{_structure_label(structure)}: disordered structures are not supported")
        ((sp, occupancy),) = comp.items()
        if occupancy != 1:
            raise ValueError(f"{_structure_label(structure)}: disordered structures are not supported")
        out.append(sp.symbol)
    return out


def _structure_label(structure: Structure | Molecule) -> str:
    props = getattr(structure, "properties", None) or {}
    for key in ("name", "material_id", "smiles"):
        if isinstance(props.get(key), str) and props[key]:
            return f"{props[key]} ({structure.composition.reduced_formula})"
    return structure.composition.reduced_formula


class GraphBuilder:
    """Builds absorber-centred site graphs.

    Parameters
    ----------
    absorber
        Absorbing element, e.g. ``"Cu"``.
    elements
        Elements the model knows (the one-hot); any other element raises
        :class:`UnsupportedElementError`.
    kind
        ``"crystal"`` (pymatgen ``Structure``, periodic images included) or ``"molecule"``
        (``Molecule``; edges carry RDKit bond orders).
    cluster_radius
        Atoms within this distance (A) of the absorber form the graph.
    edge_cutoff
        Pairs closer than this (A) are joined by an edge.
    num_rbf
        Number of Gaussian radial basis functions for edge distances (and absorber distances).
    absorber_distance_rbf
        Append a radial basis of each atom's distance to the absorber to the node features.
    """

    def __init__(
        self,
        absorber: str,
        elements: Sequence[str],
        kind: Literal["crystal", "molecule"] = "crystal",
        cluster_radius: float = 6.0,
        edge_cutoff: float = 4.0,
        num_rbf: int = 16,
        absorber_distance_rbf: bool = True,
    ):
        if kind not in ("crystal", "molecule"):
            raise ValueError(f"kind must be 'crystal' or 'molecule', got {kind!r}")
        elements = list(elements)
        for symbol in elements:
            if not Element.is_valid_symbol(symbol):
                raise ValueError(f"elements: {symbol!r} is not an element symbol")
        if len(set(elements)) != len(elements):
            raise ValueError(f"elements has duplicates: {elements}")
        if absorber not in elements:
            raise ValueError(f"absorber {absorber!r} must be in elements {elements}")
        if not (cluster_radius > 0 and edge_cutoff > 0):
            raise ValueError("cluster_radius and edge_cutoff must be positive")
        if num_rbf < 2:
            raise ValueError(f"num_rbf must be at least 2, got {num_rbf}")
        self.absorber = absorber
        self.elements = elements
        self.kind = kind
        self.cluster_radius = float(cluster_radius)
        self.edge_cutoff = float(edge_cutoff)
        self.num_rbf = int(num_rbf)
        self.absorber_distance_rbf = bool(absorber_distance_rbf)
        self._index = {s: i for i, s in enumerate(elements)}
        n_el = len(elements)
        table = np.zeros((n_el, n_el + N_DESCRIPTORS))
        table[:, :n_el] = np.eye(n_el)
        for i, symbol in enumerate(elements):
            table[i, n_el:] = _element_descriptors(symbol)
        self._element_table = table
        self._z = np.array([Element(s).Z for s in elements])
        self._bond_cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        # radial-basis centres, as in gaussian_rbf, computed once
        self._edge_centres = np.linspace(0.0, self.edge_cutoff, self.num_rbf, dtype=np.float32)[None, :]
        self._edge_width = np.float32(self.edge_cutoff / (self.num_rbf - 1))
        self._bond_onehot = np.eye(len(BOND_TYPES), dtype=np.float32)
        self._node_centres = np.linspace(0.0, self.cluster_radius, self.num_rbf, dtype=np.float32)[None, :]
        self._node_width = np.float32(self.cluster_radius / (self.num_rbf - 1))

    # -- configuration ---------------------------------------------------------------------
    @property
    def node_dim(self) -> int:
        """Width of ``x``."""
        return len(self.elements) + N_DESCRIPTORS + 1 + (self.num_rbf if self.absorber_distance_rbf else 0)

    @property
    def edge_dim(self) -> int:
        """Width of ``edge_attr``."""
        return self.num_rbf + (len(BOND_TYPES) if self.kind == "molecule" else 0)

    def config(self) -> dict:
        """JSON-serialisable hyper-parameters; ``GraphBuilder.from_config(cfg)`` rebuilds it."""
        return {
            "absorber": self.absorber,
            "elements": list(self.elements),
            "kind": self.kind,
            "cluster_radius": self.cluster_radius,
            "edge_cutoff": self.edge_cutoff,
            "num_rbf": self.num_rbf,
            "absorber_distance_rbf": self.absorber_distance_rbf,
        }

    @classmethod
    def from_config(cls, config: dict) -> "GraphBuilder":
        """Rebuild from :meth:`config`; unknown keys raise a ``ValueError`` naming them."""
        known = {"absorber", "elements", "kind", "cluster_radius", "edge_cutoff", "num_rbf", "absorber_distance_rbf"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"GraphBuilder config has unknown keys {sorted(unknown)}")
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"GraphBuilder({args})"

    # -- checks ----------------------------------------------------------------------------
    def _check(self, structure: Structure | Molecule, symbols: Sequence[str]) -> None:
        if self.kind == "crystal" and not isinstance(structure, (Structure, IStructure)):
            raise TypeError(
                f"{_structure_label(structure)}: a crystal GraphBuilder needs a periodic pymatgen "
                f"Structure, got {type(structure).__name__}"
            )
        if self.kind == "molecule" and not isinstance(structure, (Molecule, IMolecule)):
            raise TypeError(
                f"{_structure_label(structure)}: a molecule GraphBuilder needs a pymatgen Molecule, "
                f"got {type(structure).__name__}"
            )
        unknown = sorted(set(symbols) - set(self._index))
        if unknown:
            raise UnsupportedElementError(
                f"{_structure_label(structure)}: element(s) {', '.join(unknown)} not supported; "
                f"this {self.absorber} {self.kind} model knows {', '.join(self.elements)}"
            )
        if self.absorber not in symbols:
            raise NoAbsorberError(
                f"{_structure_label(structure)}: no {self.absorber} atom, so no {self.absorber} "
                "absorber site"
            )

    # -- absorber sites --------------------------------------------------------------------
    def absorber_groups(
        self, structure: Structure | Molecule, symprec: float | None = None
    ) -> list[list[int]]:
        """Groups of equivalent absorber site indices (sorted, groups sorted by first index).

        Crystals: symmetry-equivalent sites from pymatgen's ``SpacegroupAnalyzer`` (the
        ``equivalent_atoms`` of its spglib dataset, as used by its symmetrized structure;
        ``symprec`` if given, else the values of :data:`SYMPREC_FALLBACK` in turn; if all
        fail, each site is its own group, with a warning). Molecules: every absorber atom is its
        own group.
        """
        symbols = _species_symbols(structure)
        self._check(structure, symbols)
        return self._absorber_groups(structure, symbols, symprec)

    def _absorber_groups(
        self, structure: Structure | Molecule, symbols: list[str], symprec: float | None
    ) -> list[list[int]]:
        absorbers = [i for i, s in enumerate(symbols) if s == self.absorber]
        if self.kind == "molecule":
            return [[i] for i in absorbers]
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        tolerances = SYMPREC_FALLBACK if symprec is None else (symprec,)
        for tol in tolerances:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
                    dataset = SpacegroupAnalyzer(structure, symprec=tol).get_symmetry_dataset()
            except Exception:  # spglib can fail on odd cells; try a looser tolerance
                continue
            if dataset is None:
                continue
            # the same equivalence classes as SpacegroupAnalyzer.get_symmetrized_structure(),
            # read straight from spglib's dataset (its symmetrized structure costs ~20x more)
            equivalent = getattr(dataset, "equivalent_atoms", None)
            if equivalent is None and isinstance(dataset, dict):
                equivalent = dataset.get("equivalent_atoms")
            if equivalent is None or len(equivalent) != len(symbols):
                continue
            by_rep: dict[int, list[int]] = {}
            for i in absorbers:
                by_rep.setdefault(int(equivalent[i]), []).append(i)
            groups = sorted(by_rep.values())
            if all(symbols[int(equivalent[g[0]])] == self.absorber for g in groups):
                return groups
        warnings.warn(
            f"{_structure_label(structure)}: symmetry analysis failed at symprec "
            f"{tolerances}; treating all {len(absorbers)} {self.absorber} sites as distinct",
            stacklevel=2,
        )
        return [[i] for i in absorbers]

    def absorber_sites(self, structure: Structure | Molecule) -> list[tuple[int, float]]:
        """``(site_index, weight)`` of the distinct absorber sites; weights sum to 1.

        Crystals: one representative (lowest index) per symmetry-equivalent group, weighted by
        the group's multiplicity. Molecules: every absorber atom, equal weights.
        """
        groups = self.absorber_groups(structure)
        total = sum(len(g) for g in groups)
        return [(g[0], len(g) / total) for g in groups]

    # -- graphs ----------------------------------------------------------------------------
    def structure_graphs(self, structure: Structure | Molecule) -> tuple[list[SiteGraph], np.ndarray]:
        """Site graphs of all distinct absorber sites and their weights (summing to 1)."""
        symbols = _species_symbols(structure)
        self._check(structure, symbols)
        groups = self._absorber_groups(structure, symbols, None)
        total = sum(len(g) for g in groups)
        prepared = self._prepare(structure, symbols)
        graphs = [self._site_graph(prepared, g[0]) for g in groups]
        return graphs, np.array([len(g) / total for g in groups])

    def site_graph(self, structure: Structure | Molecule, site_index: int) -> SiteGraph:
        """The graph centred on atom ``site_index`` of ``structure`` (which must be an absorber)."""
        symbols = _species_symbols(structure)
        self._check(structure, symbols)
        return self._site_graph(self._prepare(structure, symbols), site_index)

    def site_graphs(self, structure: Structure | Molecule, site_indices: Sequence[int]) -> list[SiteGraph]:
        """Graphs of several sites of one structure, sharing the per-structure work."""
        symbols = _species_symbols(structure)
        self._check(structure, symbols)
        prepared = self._prepare(structure, symbols)
        return [self._site_graph(prepared, i) for i in site_indices]

    def _prepare(self, structure: Structure | Molecule, symbols: list[str]) -> dict:
        """Per-structure arrays shared by its site graphs (positions, images, bonds)."""
        prepared = {"structure": structure, "symbols": symbols}
        prepared["species"] = np.fromiter((self._index[s] for s in symbols), dtype=np.int64, count=len(symbols))
        if self.kind == "crystal":
            lattice = structure.lattice.matrix
            frac = np.mod(structure.frac_coords, 1.0)
            inv = np.linalg.inv(lattice)
            # images reaching the sphere around any point of the cell (+1 for the cell itself)
            reach = np.ceil(self.cluster_radius * np.sqrt((inv**2).sum(axis=0))).astype(int) + 1
            shifts = np.stack(
                np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1
            ).reshape(-1, 3)
            cart = frac @ lattice
            prepared["cart"] = cart
            prepared["points"] = (cart[None, :, :] + (shifts @ lattice)[:, None, :]).reshape(-1, 3)
            prepared["atoms"] = np.tile(np.arange(len(symbols)), len(shifts))
        else:
            cart = np.asarray(structure.cart_coords, dtype=np.float64)
            prepared["cart"] = cart
            diff = cart[:, None, :] - cart[None, :, :]
            prepared["distances"] = np.sqrt((diff * diff).sum(axis=-1))
            prepared["bonds"] = self._bond_matrix(structure, symbols, cart)
        return prepared

    def _site_graph(self, prepared: dict, site_index: int) -> SiteGraph:
        symbols = prepared["symbols"]
        n = len(symbols)
        if not 0 <= int(site_index) < n:
            raise NoAbsorberError(
                f"{_structure_label(prepared['structure'])}: site index {site_index} out of range (0..{n - 1})"
            )
        site_index = int(site_index)
        if symbols[site_index] != self.absorber:
            raise NoAbsorberError(
                f"{_structure_label(prepared['structure'])}: site {site_index} is {symbols[site_index]}, "
                f"not the absorber {self.absorber}"
            )
        species = prepared["species"]
        if self.kind == "crystal":
            pos, atom = self._crystal_cluster(prepared, site_index)
        else:
            pos, atom = self._molecule_cluster(prepared, site_index)
        if self.kind == "molecule":
            full = prepared["distances"]
            dist = full[site_index, atom]
        else:
            rel = pos - pos[0]
            dist = np.sqrt((rel * rel).sum(axis=1))
        # canonical order: absorber first, then by distance (to 1e-4 A), then atomic number
        order = np.lexsort((self._z[species[atom]], np.round(dist, 4)))
        if order[0] != 0:
            order = np.concatenate([[0], order[order != 0]])
        pos, atom, dist = pos[order], atom[order], dist[order]
        n_nodes = len(atom)

        dist = dist.astype(np.float32)
        is_absorber = np.zeros(n_nodes, dtype=bool)
        is_absorber[0] = True
        x = self.node_features(species[atom], dist, is_absorber)

        if self.kind == "molecule":
            pair = full[np.ix_(atom, atom)]
        else:
            diff = pos[:, None, :] - pos[None, :, :]
            pair = np.sqrt((diff * diff).sum(axis=-1))
        close = pair < self.edge_cutoff
        np.fill_diagonal(close, False)
        src, dst = np.nonzero(close)
        lengths = pair[src, dst].astype(np.float32)
        kinds = prepared["bonds"][atom[src], atom[dst]] if self.kind == "molecule" else None
        edge_attr = self.edge_features(lengths, kinds)

        return SiteGraph(
            x=torch.from_numpy(x),
            edge_index=torch.from_numpy(np.stack([src, dst]).astype(np.int64, copy=False)),
            edge_attr=torch.from_numpy(edge_attr),
            edge_length=torch.from_numpy(lengths),
            absorber_distance=torch.from_numpy(dist),
            absorber_index=torch.zeros(1, dtype=torch.long),
            pos=torch.from_numpy((pos - pos[0]).astype(np.float32)),
            num_nodes=n_nodes,
        )

    # -- features (shared by graph building and the dataset cache) --------------------------
    def node_features(self, species: np.ndarray, dist: np.ndarray, is_absorber: np.ndarray) -> np.ndarray:
        """Node features from element indices (into ``elements``), absorber distances (float32)
        and the absorber flag; rows of any number of graphs at once. Shape (N, node_dim)."""
        x = np.zeros((len(species), self.node_dim), dtype=np.float32)
        width = self._element_table.shape[1]
        x[:, :width] = self._element_table[species]
        x[:, width] = is_absorber
        if self.absorber_distance_rbf:
            x[:, width + 1 :] = np.exp(-(((dist[:, None] - self._node_centres) / self._node_width) ** 2))
        return x

    def edge_features(self, lengths: np.ndarray, bond_kinds: np.ndarray | None) -> np.ndarray:
        """Edge features from lengths (float32) and, for molecules, bond class indices into
        :data:`BOND_TYPES`. Shape (M, edge_dim)."""
        edge_attr = np.empty((len(lengths), self.edge_dim), dtype=np.float32)
        edge_attr[:, : self.num_rbf] = np.exp(-(((lengths[:, None] - self._edge_centres) / self._edge_width) ** 2))
        if self.kind == "molecule":
            if bond_kinds is None:
                raise ValueError("molecule edges need bond kinds")
            edge_attr[:, self.num_rbf :] = self._bond_onehot[bond_kinds]
        return edge_attr

    def _crystal_cluster(self, prepared: dict, site_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Cartesian positions and atom indices of all periodic images within the radius."""
        points, atoms = prepared["points"], prepared["atoms"]
        rel = points - prepared["cart"][site_index]
        d2 = (rel * rel).sum(axis=1)
        sel = np.flatnonzero(d2 <= self.cluster_radius**2)
        atom, d2_sel = atoms[sel], d2[sel]
        first = np.flatnonzero((atom == site_index) & (d2_sel < 1e-12))
        label = _structure_label(prepared["structure"]) if len(first) != 1 else ""
        if len(first) != 1:
            raise ValueError(f"{label}: cannot locate absorber site {site_index}")
        if np.count_nonzero(d2_sel < 0.01) > 1:
            raise ValueError(
                f"{_structure_label(prepared['structure'])}: atoms closer than 0.1 A to absorber "
                f"site {site_index}"
            )
        sel = np.concatenate([sel[first], np.delete(sel, first)])
        return points[sel], atoms[sel]

    def _molecule_cluster(self, prepared: dict, site_index: int) -> tuple[np.ndarray, np.ndarray]:
        cart = prepared["cart"]
        within = prepared["distances"][site_index] <= self.cluster_radius
        within[site_index] = False
        atom = np.concatenate([[site_index], np.flatnonzero(within)])
        return cart[atom], atom

    def _bond_matrix(self, molecule: Molecule, symbols: Sequence[str], cart: np.ndarray) -> np.ndarray:
        """(n, n) bond class indices into :data:`BOND_TYPES`; cached per geometry."""
        charge = int(round(float(getattr(molecule, "charge", 0) or 0)))
        return self._bond_matrix_of(symbols, cart, charge, lambda: _structure_label(molecule))

    def _bond_matrix_of(self, symbols: Sequence[str], cart: np.ndarray, charge: int, label) -> np.ndarray:
        """:meth:`_bond_matrix` of bare symbols and coordinates; ``label``: a str or a callable giving one."""
        cart = np.ascontiguousarray(cart, dtype=np.float64)
        key = f"{charge}|".encode() + "|".join(symbols).encode() + cart.tobytes()
        cached = self._bond_cache.get(key)
        if cached is not None:
            self._bond_cache.move_to_end(key)
            return cached
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bonds = perceive_bonds(symbols, cart, label="molecule", charge=charge)
        for w in caught:  # label lazily: the formula costs more than the perception
            name = label() if callable(label) else str(label)
            warnings.warn(str(w.message).replace("molecule", name, 1), stacklevel=4)
        self._bond_cache[key] = bonds
        if len(self._bond_cache) > 512:
            self._bond_cache.popitem(last=False)
        return bonds


#: Largest number of bonds per element used to prune over-connected atoms before bond orders.
_MAX_DEGREE = {"H": 1, "F": 1, "Cl": 1, "Br": 1, "I": 1, "O": 2, "S": 6, "N": 4, "C": 4, "B": 4, "P": 5, "Si": 4}


def _prune_overconnected(mol, cart: np.ndarray) -> None:
    """Drop the longest bonds of atoms with more bonds than their element allows.

    ``DetermineConnectivity`` (covalent radii x 1.3) over-connects a few strained QM9 cages
    (e.g. a five-bonded carbon), after which no neutral bond ordering exists.
    """
    while True:
        for atom in mol.GetAtoms():
            limit = _MAX_DEGREE.get(atom.GetSymbol())
            if limit is not None and atom.GetDegree() > limit:
                longest = max(
                    atom.GetBonds(),
                    key=lambda b: float(np.linalg.norm(cart[b.GetBeginAtomIdx()] - cart[b.GetEndAtomIdx()])),
                )
                mol.RemoveBond(longest.GetBeginAtomIdx(), longest.GetEndAtomIdx())
                break
        else:
            return


def perceive_bonds(symbols: Sequence[str], cart: np.ndarray, label: str = "molecule", charge: int = 0) -> np.ndarray:
    """Bond classes from 3-D coordinates with RDKit's bond perception (xyz2mol).

    ``rdDetermineBonds.DetermineBonds`` first, without its 3-D chirality step, then sanitised
    (so aromatic rings come out as ``aromatic``): the bond classes of its default at a third of
    the time (equal on 1,896 QM9 molecules and in ``tests/test_fused.py``); if that fails,
    ``DetermineBonds`` with its defaults; if it finds no valid bond ordering, the
    connectivity is pruned of over-connected atoms (:data:`_MAX_DEGREE`) and bond orders are
    assigned again; if that fails too, connectivity alone is used and every bond is typed
    ``single``, with a warning naming the molecule.

    Returns
    -------
    np.ndarray
        (n, n) int array of indices into :data:`BOND_TYPES` (``none`` where unbonded).
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    n = len(symbols)
    block = f"{n}\n\n" + "\n".join(
        f"{s} {x:.8f} {y:.8f} {z:.8f}" for s, (x, y, z) in zip(symbols, cart.tolist())
    )
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromXYZBlock(block)
        if mol is None:
            raise ValueError(f"{label}: RDKit cannot read the geometry")
        work = Chem.RWMol(mol)
        try:
            # no chirality embedding, then sanitised for aromaticity: the bond classes of
            # DetermineBonds' default (which also assigns stereo from 3-D) at a third of the time
            rdDetermineBonds.DetermineBonds(work, charge=charge, embedChiral=False)
            Chem.SanitizeMol(work)
        except Exception:
            work = _bonds_with_fallbacks(mol, cart, label, charge)
    finally:
        RDLogger.EnableLog("rdApp.*")
    # bond orders as numbers (aromatic = 1.5) straight from C++, no per-bond Python calls
    order = Chem.GetAdjacencyMatrix(work, useBO=True)
    out = np.full((n, n), BOND_TYPES.index("none"), dtype=np.int64)
    out[order == 1.0] = BOND_TYPES.index("single")
    out[order == 1.5] = BOND_TYPES.index("aromatic")
    out[order == 2.0] = BOND_TYPES.index("double")
    out[order == 3.0] = BOND_TYPES.index("triple")
    return out


def _bonds_with_fallbacks(mol, cart: np.ndarray, label: str, charge: int):
    """RDKit's default bond perception, then pruned connectivity, then single bonds (see perceive_bonds)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    work = Chem.RWMol(mol)
    try:
        rdDetermineBonds.DetermineBonds(work, charge=charge)
    except Exception:
        work = Chem.RWMol(mol)
        rdDetermineBonds.DetermineConnectivity(work)
        _prune_overconnected(work, cart)
        try:
            rdDetermineBonds.DetermineBondOrders(work, charge=charge)
        except Exception:
            work = Chem.RWMol(mol)
            rdDetermineBonds.DetermineConnectivity(work)
            warnings.warn(
                f"{label}: RDKit could not assign bond orders; using connectivity with all "
                "bonds typed 'single'",
                stacklevel=5,
            )
    return work
