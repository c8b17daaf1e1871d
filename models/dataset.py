"""Site-level training data: one graph per absorber-site spectrum, targets on a fixed grid.

``build_site_dataset`` turns :class:`~models.readers.SpectrumRecord` s into
:class:`~models.graphs.SiteGraph` s with ``y`` (1, E), ``record_id``, ``site_index`` and
``weight`` (the site's multiplicity weight within its material, summing to 1 per record).
``material_spectra`` averages site spectra (reference or predicted) back to material level.
Failures are counted in a :class:`~models.readers.ReadReport` (``dataset.report``) and warned
about, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from models.graphs import SYMPREC_FALLBACK, GraphBuilder, SiteGraph, _species_symbols
from models.paths import user_data_dir
from models.readers import ReadReport, SpectrumRecord
from models.spectra import PAD_TOLERANCE_EV, resample


class SiteDataset(list):
    """A ``list`` of site graphs that also carries the build report, grid and builder config.

    Attributes
    ----------
    report
        Records and sites used, and every skipped record/site with the reason.
    grid
        (E,) energy grid of the targets ``y``.
    builder_config
        ``GraphBuilder.config()`` used.
    incomplete
        Record ids some of whose symmetry-distinct absorber sites have no spectrum in the data
        (their weights were renormalised over the given sites); leave them out of
        material-level metrics.
    """

    def __init__(self, graphs: Iterable[SiteGraph] = (), report: ReadReport | None = None,
                 grid: np.ndarray | None = None, builder_config: dict | None = None,
                 incomplete: Iterable[str] = ()):
        super().__init__(graphs)
        self.report = report if report is not None else ReadReport(source="")
        self.grid = grid
        self.builder_config = builder_config
        self.incomplete = set(incomplete)


def _group_of(groups: list[list[int]]) -> dict[int, int]:
    return {i: k for k, g in enumerate(groups) for i in g}


def _one_site_per_group(groups: list[list[int]], indices: Sequence[int]) -> bool:
    group_of = _group_of(groups)
    hit = [group_of.get(i) for i in indices]
    return None not in hit and sorted(hit) == list(range(len(groups)))


def site_weights(
    record: SpectrumRecord, builder: GraphBuilder
) -> tuple[np.ndarray, str | None]:
    """Multiplicity weights of ``record.sites`` (in that order), summing to 1.

    Each given site is mapped to its group of equivalent absorber sites
    (:meth:`GraphBuilder.absorber_groups`), so indices need not be the builder's own
    representatives. Several given sites in one group share its weight equally. If some
    groups have no given site, the weights are renormalised over the given sites and a note is
    returned (the material spectrum is then incomplete).

    Returns
    -------
    weights, note
        (S,) weights; ``note`` is ``None`` or a short explanation of what was adjusted.
    """
    indices = [s.site_index for s in record.sites]
    groups = builder.absorber_groups(record.structure)
    if builder.kind == "crystal" and not _one_site_per_group(groups, indices):
        # the data set's own symmetry tolerance is unknown: prefer a tolerance at which the
        # given sites are exactly one per symmetry-distinct group
        for tol in SYMPREC_FALLBACK:
            candidate = builder.absorber_groups(record.structure, symprec=tol)
            if _one_site_per_group(candidate, indices):
                groups = candidate
                break
    total = sum(len(g) for g in groups)
    group_of = _group_of(groups)
    unknown = [i for i in indices if i not in group_of]
    if unknown:
        raise ValueError(
            f"{record.record_id}: site(s) {unknown} are not {builder.absorber} absorber sites"
        )
    members: dict[int, int] = {}
    for i in indices:
        members[group_of[i]] = members.get(group_of[i], 0) + 1
    weights = np.array([len(groups[group_of[i]]) / total / members[group_of[i]] for i in indices])
    notes = []
    shared = [k for k, m in members.items() if m > 1]
    if shared:
        notes.append(f"{len(shared)} symmetry group(s) hold several given sites (weight shared)")
    missing = len(groups) - len(members)
    if missing:
        notes.append(f"{missing} of {len(groups)} distinct {builder.absorber} sites have no spectrum")
        weights = weights / weights.sum()
    return weights, ("; ".join(notes) or None)


def build_site_dataset(
    records: Sequence[SpectrumRecord],
    builder: GraphBuilder,
    grid: np.ndarray,
    progress: bool = True,
    tolerance: float = PAD_TOLERANCE_EV,
    cache: bool | str | os.PathLike = False,
) -> SiteDataset:
    """One :class:`SiteGraph` per site spectrum, with targets resampled on ``grid``.

    Parameters
    ----------
    records
        From :func:`~models.readers.read_feff_materials` or
        :func:`~models.readers.read_qm9_jsonl`.
    builder
        Graph builder of the matching kind and absorber.
    grid
        (E,) absolute energy grid, e.g. from :func:`~models.spectra.common_grid`.
    progress
        Show a tqdm progress bar.
    tolerance
        Passed to :func:`~models.spectra.resample`: spectra not covering ``grid`` within it
        are skipped (whole record, as its material spectrum would be incomplete).
    cache
        ``True``: keep the built dataset under ``user_data_dir()/cache``; a folder: keep it
        there. The file is keyed by a SHA-256 of the records' contents (ids, structures,
        spectra), the builder config, the grid and the tolerance, and holds only tensors, lists
        and strings (loaded with ``torch.load(weights_only=True)``); node and edge features are
        recomputed from element indices and distances on loading, so it stays small.

    Returns
    -------
    SiteDataset
        A list of graphs with ``y`` (1, E) float32, ``record_id`` (str), ``site_index`` (int,
        index in the record's structure), ``weight`` (1,) float32; ``.report`` lists skipped
        records with reasons (unsupported element, grid not covered, ...) and notes about
        renormalised weights; ``.incomplete`` the ids of records missing some site spectra.
        A warning summarises any skips.
    """
    grid = np.asarray(grid, dtype=float)
    cache_path = None
    if cache:
        folder = Path(cache) if not isinstance(cache, bool) else user_data_dir() / "cache"
        cache_path = folder / f"sites-{_dataset_key(records, builder, grid, tolerance)}.pt"
        if cache_path.is_file():
            try:
                return load_site_dataset(cache_path, builder)
            except Exception as exc:  # stale or damaged file: rebuild, but say so
                warnings.warn(f"ignoring unreadable dataset cache {cache_path}: {exc}", stacklevel=2)
    report = ReadReport(source=f"site dataset ({builder.kind} {builder.absorber}, {len(grid)}-point grid)")
    graphs: list[SiteGraph] = []
    iterator: Iterable = records
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(records, desc="graphs", unit="rec", leave=False)
    n_adjusted = 0
    incomplete: list[str] = []
    for record in iterator:
        try:
            weights, note = site_weights(record, builder)
            targets = [resample(s.energy, s.mu, grid, tolerance) for s in record.sites]
            built = []
            site_graphs = builder.site_graphs(record.structure, [s.site_index for s in record.sites])
            for g, site, w, y in zip(site_graphs, record.sites, weights, targets):
                g.y = torch.as_tensor(y, dtype=torch.float32).unsqueeze(0)
                g.record_id = record.record_id
                g.site_index = int(site.site_index)
                g.weight = torch.tensor([w], dtype=torch.float32)
                built.append(g)
        except ValueError as exc:  # UnsupportedElementError, NoAbsorberError, grid coverage
            kind = type(exc).__name__ if type(exc) is not ValueError else "invalid"
            report.skipped.append((record.source, f"{kind}: {exc}"))
            continue
        if note:
            n_adjusted += 1
            report.notes.append((record.source, f"weights adjusted: {note}"))
            if "have no spectrum" in note:
                incomplete.append(record.record_id)
        graphs.extend(built)
        report.n_read += 1
        report.n_sites += len(built)
    n_dropped = len(report.skipped)
    if n_dropped or n_adjusted:
        warnings.warn(
            f"build_site_dataset: {n_dropped} record(s) skipped, {n_adjusted} with adjusted "
            f"weights; see dataset.report:\n{report.summary()}",
            stacklevel=2,
        )
    dataset = SiteDataset(graphs, report, grid, builder.config(), incomplete)
    if cache_path is not None:
        save_site_dataset(dataset, builder, cache_path)
    return dataset


def material_spectra(
    graphs: Sequence[SiteGraph], site_values: np.ndarray | torch.Tensor | None = None
) -> tuple[list[str], np.ndarray]:
    """Multiplicity-weighted material (or molecule) spectra from site graphs.

    Parameters
    ----------
    graphs
        Site graphs with ``record_id`` and ``weight`` (as from :func:`build_site_dataset`).
    site_values
        (S, E) per-site spectra in the order of ``graphs`` (e.g. model predictions);
        ``None``: the graphs' own targets ``y``.

    Returns
    -------
    ids, spectra
        Record ids in first-seen order and their (M, E) weighted averages (weights are
        renormalised per record, so a subset of a record's sites still gives an average).
    """
    if site_values is None:
        values = np.concatenate([g.y.numpy() for g in graphs], axis=0) if graphs else np.zeros((0, 0))
    else:
        values = site_values.detach().cpu().numpy() if isinstance(site_values, torch.Tensor) else np.asarray(site_values)
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[0] != len(graphs):
            raise ValueError(f"site_values must be ({len(graphs)}, E), got {values.shape}")
    sums: OrderedDict[str, np.ndarray] = OrderedDict()
    totals: dict[str, float] = {}
    for g, v in zip(graphs, values):
        w = float(g.weight.reshape(-1)[0]) if isinstance(g.weight, torch.Tensor) else float(g.weight)
        rid = g.record_id
        if rid in sums:
            sums[rid] = sums[rid] + w * v
            totals[rid] += w
        else:
            sums[rid] = w * np.asarray(v, dtype=float)
            totals[rid] = w
    ids = list(sums)
    if not ids:
        return [], np.zeros((0, values.shape[1] if values.ndim == 2 else 0))
    return ids, np.stack([sums[i] / totals[i] for i in ids])


def record_spectrum(record: SpectrumRecord, builder: GraphBuilder, grid: np.ndarray) -> np.ndarray:
    """The multiplicity-weighted spectrum of one record on ``grid`` (no graphs built)."""
    weights, _ = site_weights(record, builder)
    ys = np.stack([resample(s.energy, s.mu, grid) for s in record.sites])
    return weights @ ys


#: Bump when the cached layout or the graph construction changes.
CACHE_VERSION = 2  # 2: site graphs carry pos


def _dataset_key(records: Sequence[SpectrumRecord], builder: GraphBuilder, grid: np.ndarray, tolerance: float) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "builder": builder.config(), "tol": tolerance}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(grid, dtype=np.float64).tobytes())
    for rec in records:
        st = rec.structure
        try:
            symbols = _species_symbols(st)
        except ValueError:
            symbols = [site.species_string for site in st]
        h.update(f"|{rec.record_id}|{rec.source}|{','.join(symbols)}|".encode())
        if hasattr(st, "lattice"):
            h.update(np.ascontiguousarray(st.lattice.matrix, dtype=np.float64).tobytes())
            h.update(np.ascontiguousarray(st.frac_coords, dtype=np.float64).tobytes())
        else:
            h.update(np.ascontiguousarray(st.cart_coords, dtype=np.float64).tobytes())
        for site in rec.sites:
            h.update(str(site.site_index).encode())
            h.update(np.ascontiguousarray(site.energy, dtype=np.float64).tobytes())
            h.update(np.ascontiguousarray(site.mu, dtype=np.float64).tobytes())
    return h.hexdigest()[:32]


def save_site_dataset(dataset: SiteDataset, builder: GraphBuilder, path: str | os.PathLike) -> Path:
    """Write ``dataset`` compactly (element indices and distances, no feature matrices)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_el = len(builder.elements)
    def cat(tensors, empty, dim=0):
        return torch.cat(tensors, dim=dim) if tensors else empty
    payload = {
        "version": CACHE_VERSION,
        "builder_config": json.dumps(builder.config(), sort_keys=True),
        "grid": torch.as_tensor(np.asarray(dataset.grid, dtype=np.float64)),
        "num_nodes": torch.tensor([g.num_nodes for g in dataset], dtype=torch.long),
        "num_edges": torch.tensor([g.num_edges for g in dataset], dtype=torch.long),
        "species": cat([g.x[:, :n_el].argmax(1).to(torch.int16) for g in dataset], torch.zeros(0, dtype=torch.int16)),
        "absorber_distance": cat([g.absorber_distance for g in dataset], torch.zeros(0)),
        "pos": cat([g.pos for g in dataset], torch.zeros(0, 3)),
        "edge_index": cat([g.edge_index.to(torch.int32) for g in dataset], torch.zeros(2, 0, dtype=torch.int32), dim=1),
        "edge_length": cat([g.edge_length for g in dataset], torch.zeros(0)),
        "y": cat([g.y for g in dataset], torch.zeros(0, len(dataset.grid))),
        "weight": cat([g.weight for g in dataset], torch.zeros(0)),
        "site_index": torch.tensor([int(g.site_index) for g in dataset], dtype=torch.long),
        "record_id": [g.record_id for g in dataset],
        "report": {
            "source": dataset.report.source,
            "n_read": dataset.report.n_read,
            "n_sites": dataset.report.n_sites,
            "skipped": [list(x) for x in dataset.report.skipped],
            "notes": [list(x) for x in dataset.report.notes],
        },
        "incomplete": sorted(dataset.incomplete),
    }
    if builder.kind == "molecule":
        payload["bond_kind"] = cat(
            [g.edge_attr[:, builder.num_rbf:].argmax(1).to(torch.int8) for g in dataset], torch.zeros(0, dtype=torch.int8)
        )
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return path


def load_site_dataset(path: str | os.PathLike, builder: GraphBuilder) -> SiteDataset:
    """Read a file written by :func:`save_site_dataset`, recomputing features with ``builder``.

    Raises ``ValueError`` if the file was written with another builder config or version.
    """
    path = Path(path)
    payload = torch.load(path, weights_only=True)
    if payload.get("version") != CACHE_VERSION:
        raise ValueError(f"{path}: cache version {payload.get('version')} != {CACHE_VERSION}")
    if json.loads(payload["builder_config"]) != json.loads(json.dumps(builder.config())):
        raise ValueError(f"{path}: written with a different GraphBuilder config")
    n_nodes = payload["num_nodes"].numpy()
    n_edges = payload["num_edges"].numpy()
    node_ptr = np.concatenate([[0], np.cumsum(n_nodes)])
    edge_ptr = np.concatenate([[0], np.cumsum(n_edges)])
    is_absorber = np.zeros(int(node_ptr[-1]), dtype=bool)
    is_absorber[node_ptr[:-1][n_nodes > 0]] = True
    dist = payload["absorber_distance"].numpy()
    x_all = torch.from_numpy(builder.node_features(payload["species"].numpy().astype(np.int64), dist, is_absorber))
    lengths = payload["edge_length"].numpy()
    kinds = payload["bond_kind"].numpy().astype(np.int64) if builder.kind == "molecule" else None
    e_all = torch.from_numpy(builder.edge_features(lengths, kinds))
    edge_index = payload["edge_index"].to(torch.long)
    graphs = []
    for k in range(len(n_nodes)):
        a, b = node_ptr[k], node_ptr[k + 1]
        c, d = edge_ptr[k], edge_ptr[k + 1]
        g = SiteGraph(
            x=x_all[a:b],
            edge_index=edge_index[:, c:d],
            edge_attr=e_all[c:d],
            edge_length=payload["edge_length"][c:d],
            absorber_distance=payload["absorber_distance"][a:b],
            absorber_index=torch.zeros(1, dtype=torch.long),
            pos=payload["pos"][a:b],
            num_nodes=int(n_nodes[k]),
        )
        g.y = payload["y"][k : k + 1]
        g.record_id = payload["record_id"][k]
        g.site_index = int(payload["site_index"][k])
        g.weight = payload["weight"][k : k + 1]
        graphs.append(g)
    rep = payload["report"]
    report = ReadReport(
        source=rep["source"], n_read=rep["n_read"], skipped=[tuple(x) for x in rep["skipped"]],
        n_sites=rep["n_sites"], notes=[tuple(x) for x in rep["notes"]],
    )
    return SiteDataset(graphs, report, payload["grid"].numpy(), builder.config(), payload["incomplete"])
