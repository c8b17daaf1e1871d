"""Site-level training data: one graph per absorber-site spectrum, targets on a fixed grid.

``build_site_dataset`` turns :class:`~models.readers.SpectrumRecord` s into
:class:`~models.graphs.SiteGraph` s with ``y`` (1, E), ``record_id``, ``site_index`` and
``weight`` (the site's multiplicity weight within its material, summing to 1 per record).
``material_spectra`` averages site spectra (reference or predicted) back to material level.
Failures are counted in a :class:`~models.readers.ReadReport` (``dataset.report``) and warned
about, never dropped silently.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np
import torch

from models.graphs import SYMPREC_FALLBACK, GraphBuilder, SiteGraph
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
    return SiteDataset(graphs, report, grid, builder.config(), incomplete)


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
