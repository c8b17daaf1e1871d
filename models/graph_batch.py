"""Site graphs of many structures at once, as dense padded arrays for the fused network.

:class:`models.graphs.GraphBuilder` builds one ``SiteGraph`` at a time. Screening thousands of
structures per second needs the same graphs without per-site Python objects: this module builds
the clusters, canonical node order, node features and edge features of *all* absorber sites of a
chunk of structures with whole-array numpy operations, and hands them to
:class:`models.fused.FusedEnsemble` as dense blocks of graphs padded to a common node count
(graphs sorted by size into buckets, so the padding stays small), or to
:class:`models.fused_painn.FusedPaiNN` as node and edge lists (:func:`sparse_batches`), with
positions relative to the absorber.

The graphs are the builder's graphs exactly: same clusters, same canonical order (absorber first,
then distance to 1e-4 A, then atomic number, ties in input order), same features; an edge
``j -> i`` is ``adj[g, i, j]`` and its features are ``edge_attr[g, i, j]``.
``tests/test_fused.py`` checks the arrays against ``GraphBuilder.site_graph``.

Molecules may be given as pymatgen ``Molecule`` objects or, cheaper, as ``(symbols, cart)``
(:class:`MoleculeSpec`): building a pymatgen ``Molecule`` costs more than its graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from models.graphs import GraphBuilder, NoAbsorberError, UnsupportedElementError, _species_symbols

#: Padded node counts are rounded up to a multiple of this (fewer, fuller buckets).
PAD_MULTIPLE = 4


@dataclass(frozen=True)
class MoleculeSpec:
    """A molecule as element symbols and Cartesian coordinates (Angstrom), without pymatgen.

    Attributes
    ----------
    symbols : tuple of str
    cart : numpy.ndarray
        ``(n, 3)`` float64.
    charge : int
    label : str
        Used in error messages.
    """

    symbols: tuple[str, ...]
    cart: np.ndarray
    charge: int = 0
    label: str = "molecule"


@dataclass
class PreparedStructure:
    """What the chunk builder needs of one structure: its absorber sites and their weights."""

    structure: Any
    symbols: list[str]
    species: np.ndarray
    cart: np.ndarray
    sites: list[int]
    weights: np.ndarray
    bonds: np.ndarray | None = None  # molecules: (n, n) bond classes
    crystal: dict | None = None  # crystals: GraphBuilder._prepare output


@dataclass
class SiteArrays:
    """Compact arrays of S site graphs padded to P nodes (row ``s`` holds ``nodes[s]`` real nodes)."""

    nodes: np.ndarray  # (S,) int64
    species: np.ndarray  # (S, P) int64 element indices (0 in padding)
    dist: np.ndarray  # (S, P) float64 distance to the absorber
    pair: np.ndarray  # (S, P, P) float64 interatomic distances (inf in padding)
    kinds: np.ndarray | None  # (S, P, P) bond classes (molecules)
    pos: np.ndarray | None = None  # (S, P, 3) float64 positions relative to the absorber (0 in padding)


@dataclass
class DenseBatch:
    """One bucket of graphs padded to ``P`` nodes: the fused network's input."""

    x: torch.Tensor  # (G, P, node_dim) float32
    node_mask: torch.Tensor  # (G, P) bool
    edge_attr: torch.Tensor  # (G, P, P, edge_dim) float32, zero where no edge
    adj: torch.Tensor  # (G, P, P) bool, adj[g, i, j]: edge j -> i
    rows: np.ndarray  # (G,) positions of these graphs in the site list

    def to(self, device: torch.device) -> "DenseBatch":
        """The same batch on ``device``."""
        return DenseBatch(self.x.to(device), self.node_mask.to(device), self.edge_attr.to(device),
                          self.adj.to(device), self.rows)


def molecule_spec(item: Any, label: str = "molecule") -> MoleculeSpec | None:
    """A :class:`MoleculeSpec` of an object with ``elements`` and ``xyz`` (e.g. a QM9 record), else None."""
    if isinstance(item, MoleculeSpec):
        return item
    if hasattr(item, "elements") and hasattr(item, "xyz") and not hasattr(item, "lattice"):
        return MoleculeSpec(tuple(item.elements), np.asarray(item.xyz, dtype=np.float64), 0, label)
    return None


def prepare(builder: GraphBuilder, item: Any, label: str | None = None) -> PreparedStructure:
    """Check one structure and find its absorber sites, weights and bonds (per-structure work).

    Parameters
    ----------
    builder : GraphBuilder
    item : pymatgen Structure or Molecule, or MoleculeSpec
    label : str, optional
        Name used in errors of a :class:`MoleculeSpec`.

    Raises
    ------
    UnsupportedElementError, NoAbsorberError, TypeError, ValueError
        As :meth:`GraphBuilder.structure_graphs` does.
    """
    if isinstance(item, MoleculeSpec):
        if builder.kind != "molecule":
            raise TypeError(f"{label or item.label}: a crystal GraphBuilder needs a periodic pymatgen Structure")
        name = label or item.label
        symbols = list(item.symbols)
        unknown = sorted(set(symbols) - set(builder._index))
        if unknown:
            raise UnsupportedElementError(
                f"{name}: element(s) {', '.join(unknown)} not supported; this {builder.absorber} "
                f"molecule model knows {', '.join(builder.elements)}")
        sites = [i for i, s in enumerate(symbols) if s == builder.absorber]
        if not sites:
            raise NoAbsorberError(f"{name}: no {builder.absorber} atom, so no {builder.absorber} absorber site")
        cart = np.ascontiguousarray(item.cart, dtype=np.float64)
        bonds = builder._bond_matrix_of(symbols, cart, item.charge, name)
        species = np.fromiter((builder._index[s] for s in symbols), dtype=np.int64, count=len(symbols))
        return PreparedStructure(item, symbols, species, cart, sites, np.full(len(sites), 1.0 / len(sites)),
                                 bonds=bonds)
    symbols = _species_symbols(item)
    builder._check(item, symbols)
    groups = builder._absorber_groups(item, symbols, None)
    total = sum(len(g) for g in groups)
    weights = np.array([len(g) / total for g in groups])
    sites = [g[0] for g in groups]
    prepared = builder._prepare(item, symbols)
    if builder.kind == "molecule":
        return PreparedStructure(item, symbols, prepared["species"], prepared["cart"], sites, weights,
                                 bonds=prepared["bonds"])
    return PreparedStructure(item, symbols, prepared["species"], prepared["cart"], sites, weights,
                             crystal=prepared)


def molecule_site_arrays(builder: GraphBuilder, prepared: Sequence[PreparedStructure]) -> SiteArrays:
    """Site arrays of every absorber site of ``prepared`` molecules, vectorised over the chunk."""
    sizes = np.array([len(p.symbols) for p in prepared])
    n_mol, amax = len(prepared), int(sizes.max())
    cart = np.zeros((n_mol, amax, 3))
    species = np.zeros((n_mol, amax), dtype=np.int64)
    real = np.zeros((n_mol, amax), dtype=bool)
    kinds = np.zeros((n_mol, amax, amax), dtype=np.int64)
    for k, p in enumerate(prepared):
        n = len(p.symbols)
        cart[k, :n], species[k, :n], real[k, :n] = p.cart, p.species, True
        kinds[k, :n, :n] = p.bonds
    diff = cart[:, :, None, :] - cart[:, None, :, :]
    full = np.sqrt((diff * diff).sum(axis=-1))  # same arithmetic as GraphBuilder._prepare
    mol_of = np.repeat(np.arange(n_mol), [len(p.sites) for p in prepared])
    site = np.concatenate([np.asarray(p.sites, dtype=np.int64) for p in prepared])
    rows = full[mol_of, site]  # (S, A) distances to the absorber
    valid = real[mol_of] & (rows <= builder.cluster_radius)
    key = np.where(valid, np.round(rows, 4), np.inf)
    key[np.arange(len(site)), site] = -1.0  # absorber first
    order = np.lexsort((builder._z[species[mol_of]], key), axis=-1)
    nodes = valid.sum(axis=1)
    pmax = int(nodes.max())
    atom = order[:, :pmax]
    inside = np.arange(pmax)[None, :] < nodes[:, None]
    m = mol_of[:, None]
    pos = cart[m, atom] - cart[mol_of, site][:, None, :]
    pair = full[m[:, :, None], atom[:, :, None], atom[:, None, :]]
    both = inside[:, :, None] & inside[:, None, :]
    pair = np.where(both, pair, np.inf)
    return SiteArrays(
        nodes=nodes.astype(np.int64),
        species=np.where(inside, species[m, atom], 0),
        dist=np.where(inside, rows[np.arange(len(site))[:, None], atom], 0.0),
        pair=pair,
        kinds=np.where(both, kinds[m[:, :, None], atom[:, :, None], atom[:, None, :]], 0),
        pos=np.where(inside[:, :, None], pos, 0.0),
    )


def crystal_site_arrays(builder: GraphBuilder, prepared: Sequence[PreparedStructure]) -> SiteArrays:
    """Site arrays of every absorber site of ``prepared`` crystals (periodic images included)."""
    clusters = []
    for p in prepared:
        for site in p.sites:
            pos, atom = builder._crystal_cluster(p.crystal, site)
            rel = pos - pos[0]
            dist = np.sqrt((rel * rel).sum(axis=1))
            z = builder._z[p.species[atom]]
            key = np.round(dist, 4)
            key[0] = -1.0
            order = np.lexsort((z, key))
            pos, atom, dist = pos[order], atom[order], dist[order]
            diff = pos[:, None, :] - pos[None, :, :]
            clusters.append((p.species[atom], dist, np.sqrt((diff * diff).sum(axis=-1)), pos - pos[0]))
    nodes = np.array([len(c[0]) for c in clusters], dtype=np.int64)
    pmax = int(nodes.max())
    out = SiteArrays(nodes, np.zeros((len(clusters), pmax), dtype=np.int64), np.zeros((len(clusters), pmax)),
                     np.full((len(clusters), pmax, pmax), np.inf), None, np.zeros((len(clusters), pmax, 3)))
    for s, (sp, dist, pair, rel) in enumerate(clusters):
        n = len(sp)
        out.species[s, :n], out.dist[s, :n], out.pair[s, :n, :n], out.pos[s, :n] = sp, dist, pair, rel
    return out


def site_arrays(builder: GraphBuilder, prepared: Sequence[PreparedStructure]) -> SiteArrays:
    """Site arrays of all absorber sites of ``prepared``, in order (structure by structure)."""
    if builder.kind == "molecule":
        return molecule_site_arrays(builder, prepared)
    return crystal_site_arrays(builder, prepared)


def dense_batches(
    builder: GraphBuilder, arrays: SiteArrays, max_graphs: int = 256, max_nodes: int = 4096
) -> Iterator[DenseBatch]:
    """Bucket the sites by node count and yield padded :class:`DenseBatch` blocks.

    Parameters
    ----------
    builder : GraphBuilder
        Gives the feature layout.
    arrays : SiteArrays
    max_graphs : int
        At most this many graphs per block.
    max_nodes : int
        At most this many (padded) nodes per block, so the work per call stays in cache.
    """
    order = np.argsort(arrays.nodes, kind="stable")
    padded = -(-arrays.nodes // PAD_MULTIPLE) * PAD_MULTIPLE
    start = 0
    while start < len(order):
        size = int(padded[order[start]])
        stop = start
        limit = max(1, min(max_graphs, max_nodes // size))
        while stop < len(order) and padded[order[stop]] == size and stop - start < limit:
            stop += 1
        rows = order[start:stop]
        yield _dense(builder, arrays, rows, size)
        start = stop


def _dense(builder: GraphBuilder, arrays: SiteArrays, rows: np.ndarray, size: int) -> DenseBatch:
    n_graphs = len(rows)
    width = min(size, arrays.species.shape[1])
    node_mask = np.zeros((n_graphs, size), dtype=bool)
    node_mask[:, :width] = np.arange(width)[None, :] < arrays.nodes[rows, None]
    species = np.zeros((n_graphs, size), dtype=np.int64)
    species[:, :width] = arrays.species[rows, :width]
    dist = np.zeros((n_graphs, size), dtype=np.float32)
    dist[:, :width] = arrays.dist[rows, :width]
    is_absorber = np.zeros((n_graphs, size), dtype=bool)
    is_absorber[:, 0] = True
    x = builder.node_features(species.reshape(-1), dist.reshape(-1), is_absorber.reshape(-1))
    x = x.reshape(n_graphs, size, -1)
    x[~node_mask] = 0.0
    pair = np.full((n_graphs, size, size), np.inf)
    pair[:, :width, :width] = arrays.pair[rows, :width, :width]
    adj = pair < builder.edge_cutoff
    adj[:, np.arange(size), np.arange(size)] = False
    kinds = None
    if arrays.kinds is not None:
        kinds = np.zeros((n_graphs, size, size), dtype=np.int64)
        kinds[:, :width, :width] = arrays.kinds[rows, :width, :width]
    edge_attr = np.zeros((n_graphs, size, size, builder.edge_dim), dtype=np.float32)
    gi, ii, jj = np.nonzero(adj)
    lengths = pair[gi, ii, jj].astype(np.float32)
    edge_attr[gi, ii, jj] = builder.edge_features(lengths, None if kinds is None else kinds[gi, ii, jj])
    return DenseBatch(torch.from_numpy(x), torch.from_numpy(node_mask), torch.from_numpy(edge_attr),
                      torch.from_numpy(adj), rows)


def dense_from_graphs(graphs: Sequence[Any]) -> DenseBatch:
    """Pad ``SiteGraph`` objects (absorber at node 0) into one :class:`DenseBatch` (tests, tools)."""
    size = max(int(g.num_nodes) for g in graphs)
    n_graphs = len(graphs)
    x = torch.zeros((n_graphs, size, graphs[0].x.shape[1]))
    mask = torch.zeros((n_graphs, size), dtype=torch.bool)
    edge_attr = torch.zeros((n_graphs, size, size, graphs[0].edge_attr.shape[1]))
    adj = torch.zeros((n_graphs, size, size), dtype=torch.bool)
    for k, g in enumerate(graphs):
        n = int(g.num_nodes)
        x[k, :n], mask[k, :n] = g.x, True
        src, dst = g.edge_index
        adj[k, dst, src] = True
        edge_attr[k, dst, src] = g.edge_attr
    return DenseBatch(x, mask, edge_attr, adj, np.arange(n_graphs))


@dataclass
class SparseBatch:
    """A block of graphs as node and edge lists (no padding): the fused PaiNN's input.

    Nodes of graph ``g`` are contiguous, its absorber first (``absorber[g]``); ``pos`` is relative
    to each graph's absorber. Edges come in pairs: with ``h = E // 2``, edge ``h + e`` is edge
    ``e`` reversed, and both carry ``edge_attr[e]`` (the features of a pair are the same), so
    edge-wise work on the features is done once per pair.
    """

    x: torch.Tensor  # (N, node_dim) float32
    pos: torch.Tensor  # (N, 3) float32
    edge_index: torch.Tensor  # (2, E) int64: src, dst; edge h + e reverses edge e
    edge_attr: torch.Tensor  # (E // 2, edge_dim) float32, of the first half (and the second)
    batch: torch.Tensor  # (N,) int64 graph of each node
    absorber: torch.Tensor  # (G,) int64 node index of each graph's absorber
    rows: np.ndarray  # (G,) positions of these graphs in the site list

    def to(self, device: torch.device) -> "SparseBatch":
        """The same batch on ``device``."""
        return SparseBatch(self.x.to(device), self.pos.to(device), self.edge_index.to(device),
                           self.edge_attr.to(device), self.batch.to(device), self.absorber.to(device), self.rows)


def sparse_batches(
    builder: GraphBuilder, arrays: SiteArrays, max_graphs: int = 256, max_edges: int = 8192
) -> Iterator[SparseBatch]:
    """Yield :class:`SparseBatch` blocks of at most ``max_graphs`` graphs and about ``max_edges`` edges.

    Graphs keep their order in ``arrays``; a block closes before the graph that would take it past
    ``max_edges`` (a single larger graph still gets a block of its own).
    """
    if arrays.pos is None:
        raise ValueError("sparse_batches needs SiteArrays with positions (built by site_arrays)")
    close = np.triu(arrays.pair < builder.edge_cutoff, k=1)  # one edge of each pair
    edges = 2 * close.sum(axis=(1, 2))
    start, n = 0, len(edges)
    while start < n:
        stop, total = start, 0
        while stop < n and stop - start < max_graphs and (stop == start or total + edges[stop] <= max_edges):
            total += int(edges[stop])
            stop += 1
        yield _sparse(builder, arrays, np.arange(start, stop), close[start:stop])
        start = stop


def _sparse(builder: GraphBuilder, arrays: SiteArrays, rows: np.ndarray, close: np.ndarray) -> SparseBatch:
    nodes = arrays.nodes[rows]
    width = arrays.species.shape[1]
    inside = np.arange(width)[None, :] < nodes[:, None]
    base = np.concatenate([[0], np.cumsum(nodes)[:-1]]).astype(np.int64)
    graph_of, slot = np.nonzero(inside)
    x = builder.node_features(arrays.species[rows][inside], arrays.dist[rows][inside].astype(np.float32), slot == 0)
    pos = arrays.pos[rows][inside].astype(np.float32)
    g, i, j = np.nonzero(close)  # i < j: the pair j -> i (first half), i -> j (second half)
    lengths = arrays.pair[rows[g], i, j].astype(np.float32)  # pair distances and bond classes are symmetric
    kinds = None if arrays.kinds is None else arrays.kinds[rows[g], i, j]
    edge_attr = builder.edge_features(lengths, kinds)
    a, b = base[g] + i, base[g] + j
    edge_index = np.stack([np.concatenate([b, a]), np.concatenate([a, b])])
    return SparseBatch(torch.from_numpy(x), torch.from_numpy(pos), torch.from_numpy(edge_index),
                       torch.from_numpy(edge_attr), torch.from_numpy(graph_of.astype(np.int64)),
                       torch.from_numpy(base), rows)


def sparse_from_graphs(graphs: Sequence[Any]) -> SparseBatch:
    """Concatenate ``SiteGraph`` objects (absorber at node 0, with ``pos``) into one :class:`SparseBatch`.

    Raises
    ------
    ValueError
        If a graph's edges do not come in reversed pairs with equal features.
    """
    sizes = [int(g.num_nodes) for g in graphs]
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    halves, attrs = [], []
    for k, (g, b) in enumerate(zip(graphs, base)):
        src, dst = g.edge_index
        fwd = src > dst
        lookup = {(int(u), int(w)): e for e, (u, w) in enumerate(zip(src.tolist(), dst.tolist()))}
        rev = [lookup.get((int(w), int(u)), -1) for u, w in zip(src[fwd].tolist(), dst[fwd].tolist())]
        if 2 * len(rev) != src.numel() or min(rev, default=0) < 0 or not torch.equal(
                g.edge_attr[fwd], g.edge_attr[torch.tensor(rev, dtype=torch.long)]):
            raise ValueError(f"graph {k}: edges are not symmetric pairs with equal features")
        halves.append(torch.stack([src[fwd], dst[fwd]]) + int(b))
        attrs.append(g.edge_attr[fwd])
    half = torch.cat(halves, dim=1)
    edge_index = torch.cat([half, half.flip(0)], dim=1)
    return SparseBatch(torch.cat([g.x for g in graphs]), torch.cat([g.pos for g in graphs]), edge_index,
                       torch.cat(attrs),
                       torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor(sizes)),
                       torch.from_numpy(base), np.arange(len(graphs)))
