"""``xas-bench``: benchmarks of the steered XAS loop that write JSON and figures.

``xas-bench adaptive`` compares five measurement policies on the same samples, each run as a real
Bluesky plan on the simulated endstation with the same :class:`XASRankingCallback` ranking the
candidates:

1. ``adaptive`` -- :func:`plans.adaptive.adaptive_xas_plan` with the in-process ranking callback
   and the information-gain agent (stops at ``--confidence`` or ``--max-points``);
2. ``space-filling`` -- the same plan and stopping rule, energies chosen blind to the model
   (``agent="space-filling"``: each the farthest from the readings so far), i.e. a uniform grid
   that stops at confidence: is it the choice of energies or only the early stop that saves?
3. ``uniform`` -- the adaptive seed's normalisation anchors plus evenly spaced energies over the
   model's range, as many points in all as the adaptive plan used for that sample;
4. ``random`` -- the same anchors plus uniformly random energies over the model's range (seeded,
   measured in increasing order), as many points as the adaptive plan used;
5. ``conventional`` -- a standard XANES step scan (:data:`CONVENTIONAL_GRID`, every point at the
   same dwell).

Samples: ``--samples`` held-out materials (the test split of :func:`models.readers.split_ids`,
never seen by the model): for each, ``--candidates`` test-split structures whose spectra the model
predicts (``--model feff``: the FEFF spectra themselves, an upper bound), the sample is the FEFF
spectrum of one of them, with Poisson counting noise from the endstation and a random calibration
offset in [-2, 2] eV. With ``--references`` also the real measured Cu K-edge references of the
XAS data library, ranked among crystal structures of Cu minerals (AMCSD CIFs shipped by
``larixite``, predicted by the model; ``--model feff``: the Materials Project FEFF spectra of the
same compounds, where the folder has them).

Beam time = dwell + settle + travel at the demo's monochromator speed, computed by
:func:`endstation.beamtime.path_beam_time` for every policy alike. The agent's decision time
(:meth:`EnergySelectionAgent.suggest`, 1,000 candidates, CPU) is measured too. Writes
``<out>/adaptive_<model>.json`` and ``<out>/adaptive_<model>.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apps import bench_real
from apps.references import CU_REFERENCES
from models.provenance import git_state

__all__ = ["main", "CONVENTIONAL_GRID", "NEAR_DUPLICATE_MAX_ABS", "POLICIES", "run_adaptive_benchmark"]

POLICIES = ("adaptive", "space-filling", "uniform", "random", "conventional")

#: The conventional XANES grid every policy is compared with (relative to the tabulated E0).
CONVENTIONAL_GRID = {"bounds": "-150 -30 -10 40 150", "steps": "10 2 0.5 2"}

#: Two candidates whose FEFF spectra differ by less than this (max |delta mu|, normalised, same
#: energy grid) are near-duplicates: below the ranking's model floor (0.03) plus noise, no
#: policy can tell them apart.
NEAR_DUPLICATE_MAX_ABS = 0.05

#: The Cu minerals the real references are ranked among: their own minerals and Cu-bearing
#: distractors (AMCSD names).
CU_CANDIDATE_MINERALS = ("copper", "cuprite", "tenorite", "paramelaconite", "chalcocite", "digenite",
                         "covellite", "azurite", "malachite", "chalcopyrite", "bornite", "atacamite",
                         "libethenite", "dioptase", "cuprospinel", "delafossite", "stromeyerite")

# ------------------------------------------------------------------------------ problems
@dataclass
class Problem:
    """One sample to identify and the candidates it is ranked among."""

    kind: str  # "heldout" or "reference"
    label: str
    element: str
    edge: str
    library: Any  # CandidateLibrary the callback and the agent see
    true_names: list[str]  # any of these is a correct answer
    sample: Any  # SimulatedSample
    offset_eV: float
    seed: int
    true_in_candidates: bool = True
    near_duplicates: list[str] = field(default_factory=list)  # candidates within the floor of the truth
    groups: dict[str, str] = field(default_factory=dict)  # --dedupe: candidate -> representative
    info: dict = field(default_factory=dict)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def _feff_root() -> Path:
    from models.paths import CU_K_FEFF, data_path

    return data_path(CU_K_FEFF)


def _cu_split_ids(split: str = "test") -> list[str]:
    from models.readers import split_ids

    root = _feff_root()
    ids = sorted(p.name for p in root.iterdir() if (p / "FEFF-XANES").is_dir())
    return sorted(split_ids(ids)[split])


def _draw(ids: list[str], n_samples: int, n_candidates: int, seed: int) -> list[tuple[str, list[str], float]]:
    """``(truth, candidates, offset_eV)`` per sample: distinct truths, each among
    ``n_candidates`` ids drawn from ``ids``, and a calibration offset in [-2, 2] eV (seeded)."""
    rng = np.random.default_rng(seed)
    truths = rng.choice(ids, size=min(n_samples, len(ids)), replace=False).tolist()
    drawn = []
    for truth in truths:
        others = [n for n in ids if n != truth]
        chosen = [truth] + rng.choice(others, size=min(n_candidates - 1, len(others)), replace=False).tolist()
        drawn.append((truth, sorted(chosen), float(rng.uniform(-2.0, 2.0))))
    return drawn


def _groups(names: list[str], spectra: np.ndarray, threshold: float) -> dict[str, str]:
    """Single-linkage groups of near-duplicate spectra: name -> representative (first name)."""
    parent = list(range(len(names)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(names)):
        d = np.abs(spectra[i + 1:] - spectra[i]).max(axis=1) if i + 1 < len(names) else []
        for j in np.flatnonzero(np.asarray(d) < threshold):
            a, b = find(i), find(i + 1 + int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {n: names[find(i)] for i, n in enumerate(names)}


def heldout_problems(model: str, n_samples: int, n_candidates: int, seed: int, *, dedupe: bool = False,
                     split: str = "test", stream=sys.stdout) -> tuple[list[Problem], dict, dict]:
    """Cu K-edge held-out materials: candidates = test-split structures, sample = FEFF of one.

    Returns the problems, a JSON-ready description and the FEFF spectra (name -> mu on one grid)
    of every material drawn, for the near-duplicate check.
    """
    from endstation.sample import SimulatedSample
    from xas_callbacks.candidates import CandidateLibrary

    root = _feff_root()
    test = _cu_split_ids(split)
    drawn = _draw(test, n_samples, n_candidates, seed)
    union = sorted({n for _, chosen, _ in drawn for n in chosen})
    feff = CandidateLibrary.from_feff(root, union)  # FEFF spectra of every drawn material (truths)
    if model == "feff":
        full = feff
    else:
        t0 = time.perf_counter()
        have = [n for n in union if n in set(feff.names)]
        full = CandidateLibrary.from_structures([str(root / i / "POSCAR") for i in have], model=model,
                                                names=have, source=f"{root} ({split} split)")
        print(f"predicted {len(full)} test-split structures with {model} in {time.perf_counter() - t0:.1f} s"
              f" ({len(full.failures)} failures)", file=stream, flush=True)
    usable = set(full.names) & set(feff.names)
    feff_row = {n: i for i, n in enumerate(feff.names)}
    problems, skipped = [], {}
    for k, (truth, chosen, offset) in enumerate(drawn):
        if truth not in usable:
            skipped[truth] = (feff.failures.get(truth) or full.failures.get(truth) or "not usable")
            continue
        dropped = [n for n in chosen if n not in usable]
        chosen = [n for n in chosen if n in usable]
        spectra = feff.mean[[feff_row[n] for n in chosen]]
        true_spec = feff.mean[feff_row[truth]]
        near = [n for n, s in zip(chosen, spectra) if n != truth and _max_abs(s, true_spec) < NEAR_DUPLICATE_MAX_ABS]
        lib = full.subset(chosen)
        groups: dict[str, str] = {}
        true_names = [truth]
        if dedupe:
            groups = _groups(chosen, spectra, NEAR_DUPLICATE_MAX_ABS)
            lib = full.subset(sorted(set(groups.values())))
            true_names = [groups[truth]]
        own = CandidateLibrary.from_feff(root, [truth])  # the truth on its own FEFF energy range
        sample = SimulatedSample.from_spectrum(own.energies, own.mean[0], element="Cu", edge="K", name=truth)
        problems.append(Problem(
            kind="heldout", label=truth, element="Cu", edge="K", library=lib, true_names=true_names,
            sample=sample, offset_eV=offset, seed=int(seed * 100_003 + k), near_duplicates=near,
            groups=groups, info={"candidates": chosen, "dropped_candidates": dropped},
        ))
    setup = {
        "split": f"models.readers.split_ids(ids)[{split!r}] over the materials with FEFF-XANES spectra",
        f"n_{split}_split": len(test),
        "n_materials_drawn": len(union),
        "candidate_failures": dict(full.failures),
        "feff_failures": dict(feff.failures),
        "samples_skipped": skipped,
    }
    feff_spectra = {n: feff.mean[i] for i, n in enumerate(feff.names)}
    return problems, setup, feff_spectra


def molecule_problems(model: str, n_samples: int, n_candidates: int, seed: int, *, dedupe: bool = False,
                      split: str = "test", stream=sys.stdout) -> tuple[list[Problem], dict, dict]:
    """O K-edge held-out QM9 molecules: candidates = test-split molecules predicted by ``model``,
    sample = the FEFF10 spectrum (average over the O sites) of one of them."""
    from endstation.sample import SimulatedSample
    from models.paths import QM9_O_K, data_path
    from models.readers import read_qm9_jsonl, split_ids
    from xas_callbacks.candidates import CandidateLibrary

    records, _ = read_qm9_jsonl(data_path(QM9_O_K))
    by_id = {r.record_id: r for r in records}
    test = sorted(split_ids(sorted(by_id))[split])
    drawn = _draw(test, n_samples, n_candidates, seed)
    union = sorted({n for _, chosen, _ in drawn for n in chosen})

    def own(record):  # the molecule's FEFF10 spectrum on its sites' common range, 0.25 eV
        lo = max(site.energy[0] for site in record.sites)
        hi = min(site.energy[-1] for site in record.sites)
        grid = np.arange(lo, hi + 1e-9, 0.25)
        return grid, np.mean([np.interp(grid, site.energy, site.mu) for site in record.sites], axis=0)

    spectra = {n: own(by_id[n]) for n in union}
    lo = float(np.median([g[0] for g, _ in spectra.values()]))
    hi = float(np.median([g[-1] for g, _ in spectra.values()]))
    common = np.arange(lo, hi + 1e-9, 0.25)
    feff_spectra = {n: np.interp(common, g, m) for n, (g, m) in spectra.items()}
    t0 = time.perf_counter()
    full = CandidateLibrary.from_structures([by_id[n].structure for n in union], model=model, names=union,
                                            source=f"{data_path(QM9_O_K)} ({split} split)")
    print(f"predicted {len(full)} {split}-split molecules with {model} in {time.perf_counter() - t0:.1f} s",
          file=stream, flush=True)
    usable = set(full.names)
    problems, skipped = [], {}
    for k, (truth, chosen, offset) in enumerate(drawn):
        if truth not in usable:
            skipped[truth] = full.failures.get(truth, "not usable")
            continue
        dropped = [n for n in chosen if n not in usable]
        chosen = [n for n in chosen if n in usable]
        near = [n for n in chosen if n != truth
                and _max_abs(feff_spectra[n], feff_spectra[truth]) < NEAR_DUPLICATE_MAX_ABS]
        lib = full.subset(chosen)
        groups: dict[str, str] = {}
        true_names = [truth]
        if dedupe:
            groups = _groups(chosen, np.array([feff_spectra[n] for n in chosen]), NEAR_DUPLICATE_MAX_ABS)
            lib = full.subset(sorted(set(groups.values())))
            true_names = [groups[truth]]
        grid, mu = spectra[truth]
        sample = SimulatedSample.from_spectrum(grid, mu, element="O", edge="K", name=truth)
        problems.append(Problem(
            kind="heldout", label=truth, element="O", edge="K", library=lib, true_names=true_names,
            sample=sample, offset_eV=offset, seed=int(seed * 100_003 + k), near_duplicates=near,
            groups=groups, info={"candidates": chosen, "dropped_candidates": dropped,
                                 "smiles": by_id[truth].structure.properties.get("smiles"),
                                 "limits": (100.0, 32000.0)},
        ))
    setup = {
        "split": f"models.readers.split_ids(record ids)[{split!r}] over the QM9 O K-edge FEFF10 records",
        f"n_{split}_split": len(test),
        "n_materials_drawn": len(union),
        "candidate_failures": dict(full.failures),
        "samples_skipped": skipped,
    }
    return problems, setup, feff_spectra


def _mineral_cifs(outdir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """One AMCSD CIF per candidate mineral (written under ``outdir``) and a note per mineral."""
    from models.amcsd import mineral_cifs, write_cifs

    entries, missing = mineral_cifs(CU_CANDIDATE_MINERALS, contains=("Cu",))
    notes = {m: f"AMCSD {e.amcsd_id} {e.formula}" + ("" if e.ordered else " (partial occupancy)")
             for m, e in entries.items()}
    notes.update({m: f"not used: {why}" for m, why in missing.items()})
    return write_cifs(entries, outdir), notes


def _sample_from_xdi(path: Path):
    """``SimulatedSample.from_xdi``; files whose ``ln(i0/itrans)`` dips below its first value get a
    larger pre-edge attenuation (the default 0.3 leaves some of them <= 0)."""
    from endstation.sample import SimulatedSample

    for pre_edge_mu in (0.3, 1.0, 3.0):
        try:
            sample = SimulatedSample.from_xdi(path, pre_edge_mu=pre_edge_mu)
        except ValueError as exc:
            if "attenuation would be <= 0" not in str(exc):
                raise
            continue
        sample.metadata["pre_edge_mu"] = pre_edge_mu
        return sample
    raise ValueError(f"{path}: attenuation <= 0 even with pre_edge_mu=3")


def reference_problems(model: str, seed: int, *, stream=sys.stdout) -> tuple[list[Problem], dict]:
    """Real measured Cu K-edge references among candidate crystal structures of Cu minerals."""
    from pymatgen.core import Composition

    from models.paths import XAS_DATA_LIBRARY, data_dir, user_data_dir
    from xas_callbacks.candidates import CandidateLibrary

    xdi_dir = data_dir() / XAS_DATA_LIBRARY / "Cu"
    setup: dict = {}
    if model == "feff":
        root = _feff_root()
        wanted = {Composition(f).reduced_formula for _, f in CU_REFERENCES.values()}
        wanted |= {"Cu2O", "Cu4O3", "Cu2H3ClO3", "CuFeS2", "Cu5FeS4", "CuFeO2", "CuFe2O4", "Cu2HPO5", "CuH2SiO4"}
        formula = {}
        for d in sorted(os.scandir(root), key=lambda e: e.name):
            poscar = Path(d.path) / "POSCAR"
            if not (poscar.is_file() and (Path(d.path) / "FEFF-XANES").is_dir()):
                continue
            try:
                f = Composition(poscar.read_text().splitlines()[0]).reduced_formula
            except Exception:  # noqa: BLE001
                continue
            if f in wanted:
                formula[d.name] = f
        library = CandidateLibrary.from_feff(root, sorted(formula))
        formula = {n: formula[n] for n in library.names}
        setup["candidates"] = {n: formula[n] for n in library.names}
        setup["source"] = "Materials Project FEFF spectra whose formula is a Cu mineral's (all splits)"
        truth_of = lambda fname: [n for n in library.names if formula[n] == Composition(CU_REFERENCES[fname][1]).reduced_formula]  # noqa: E731
    else:
        cifs, notes = _mineral_cifs(user_data_dir() / "amcsd_cu_minerals_bench")
        t0 = time.perf_counter()
        library = CandidateLibrary.from_structures([str(p) for p in cifs.values()], model=model, names=list(cifs),
                                                   source="larixite AMCSD Cu minerals")
        print(f"predicted {len(library)} AMCSD mineral structures with {model} in {time.perf_counter() - t0:.1f} s",
              file=stream, flush=True)
        setup["candidates"] = notes
        setup["candidate_failures"] = dict(library.failures)
        setup["source"] = "larixite AMCSD CIFs (one ordered structure per mineral), predicted by the model"
        truth_of = lambda fname: [m for m in library.names if m == CU_REFERENCES[fname][0]]  # noqa: E731
    rng = np.random.default_rng(seed + 7919)
    problems = []
    for k, fname in enumerate(CU_REFERENCES):
        path = xdi_dir / fname
        if not path.is_file():
            continue
        sample = _sample_from_xdi(path)
        truth = truth_of(fname)
        problems.append(Problem(
            kind="reference", label=fname, element="Cu", edge="K", library=library, true_names=truth,
            sample=sample, offset_eV=float(rng.uniform(-2.0, 2.0)), seed=int(seed * 100_003 + 50_000 + k),
            true_in_candidates=bool(truth), info={"mineral": CU_REFERENCES[fname][0],
                                                  "formula": CU_REFERENCES[fname][1],
                                                  "xdi_pre_edge_mu": sample.metadata.get("pre_edge_mu")},
        ))
    setup["missing_files"] = [f for f in CU_REFERENCES if not (xdi_dir / f).is_file()]
    return problems, setup


# ------------------------------------------------------------------------------ policies
@dataclass
class PolicyRun:
    energies: list[float]
    ranking_names: list[str]
    ranking_probabilities: list[float]
    wall_s: float
    stop_reason: str = ""
    n_ranked: int = 0  # readings the ranking engine used (inside its window)
    offset_eV: float = float("nan")
    broadening_eV: float = float("nan")
    p_none: float = float("nan")  # the ranking's probability that the sample is none of the candidates


def ranking_window(library) -> tuple[float, float]:
    """Measured energies the ranking engine can use (``RankingEngine.window``, default config)."""
    from xas_callbacks.ranking import RankingConfig, RankingEngine

    k = min(2, len(library))
    engine = RankingEngine(library.names[:k], library.energies, library.mean[:k], library.std[:k],
                           config=RankingConfig.for_library(library))
    return float(engine.window[0]), float(engine.window[1])


def _primary_energies(docs) -> list[float]:
    descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d.get("name") == "primary"}
    return [float(d["data"]["energy"]) for n, d in docs if n == "event" and d["descriptor"] in descriptors]


def _run(RE, plan, callback, docs) -> None:
    from bluesky import preprocessors as bpp

    docs.clear()
    RE(bpp.subs_wrapper(plan, callback))


def _endstation(problem: Problem):
    from endstation.devices import make_endstation

    return make_endstation(problem.sample, seed=problem.seed, time_scale=0.0, energy_offset=problem.offset_eV,
                           flux=problem.info.get("flux", 1.0e7), limits=problem.info.get("limits", (4500.0, 32000.0)))


def _result(callback, energies, t0, reason="") -> PolicyRun:
    res = callback.latest_ranking
    if res is None:
        return PolicyRun(energies, [], [], time.perf_counter() - t0, reason)
    return PolicyRun(energies, list(res.names), [float(p) for p in res.probabilities], time.perf_counter() - t0,
                     reason, int(res.n_points), float(res.offset_mean), float(res.broadening_mean),
                     float(res.p_none))


def run_adaptive(RE, docs, problem: Problem, *, dwell_s: float, confidence: float, max_points: int,
                 agent: str = "information-gain", callback=None) -> PolicyRun:
    from plans.adaptive import adaptive_xas_plan
    from apps.demo import MONO_SPEED_EV_PER_S, SETTLE_S
    from plans.ranking_feed import InProcessRankingFeed
    from xas_callbacks.callback import XASRankingCallback

    es = _endstation(problem)
    cb = callback if callback is not None else XASRankingCallback(problem.library)
    t0 = time.perf_counter()
    docs.clear()
    RE(adaptive_xas_plan(
        es.detectors, es.energy, element=problem.element, edge=problem.edge,
        candidates=problem.library, agent=agent,
        confidence=confidence, max_points=max_points, dwell_s=dwell_s, mono_speed_eV_per_s=MONO_SPEED_EV_PER_S,
        settle_s=SETTLE_S, feed=InProcessRankingFeed(cb), md={"sample_name": "unknown"},
    ))
    descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d.get("name") == "decision"}
    decisions = [d["data"] for n, d in docs if n == "event" and d["descriptor"] in descriptors]
    reason = decisions[-1]["decision_reason"] if decisions else ""
    return _result(cb, _primary_energies(docs), t0, reason)


def run_list(RE, docs, problem: Problem, energies, *, dwell_s: float, policy: str, callback=None) -> PolicyRun:
    """A conventional step scan (``xafs_scan``) over an explicit list of energies, ranked by
    ``callback`` (default: a new :class:`~xas_callbacks.callback.XASRankingCallback`)."""
    from plans.grids import EnergyGrid, edge_energy
    from plans.xafs import xafs_scan
    from xas_callbacks.callback import XASRankingCallback

    energies = np.asarray(energies, dtype=float)
    grid = EnergyGrid(energies=energies, dwell=np.full(energies.size, dwell_s),
                      e0=edge_energy(problem.element, problem.edge),
                      spec={"policy": policy, "n_points": int(energies.size), "dwell_s": dwell_s})
    es = _endstation(problem)
    cb = callback if callback is not None else XASRankingCallback(problem.library)
    t0 = time.perf_counter()
    _run(RE, xafs_scan(es.detectors, es.energy, element=problem.element, edge=problem.edge, grid=grid,
                       md={"sample_name": "unknown", "benchmark_policy": policy}), cb, docs)
    return _result(cb, _primary_energies(docs), t0)


def conventional_energies(element: str, edge: str, dwell_s: float) -> np.ndarray:
    from plans.grids import make_grid

    times = " ".join([f"{dwell_s:g}"] * (len(CONVENTIONAL_GRID["bounds"].split()) - 1))
    return make_grid(element, edge, {**CONVENTIONAL_GRID, "times": times}).energies


def sparse_energies(policy: str, n_points: int, anchors: np.ndarray, lo: float, hi: float,
                    rng: np.random.Generator) -> np.ndarray:
    """``uniform`` or ``random`` energies: the anchors plus ``n_points - len(anchors)`` in [lo, hi]."""
    n = max(2, n_points - len(anchors))
    if policy == "uniform":
        inner = np.linspace(lo, hi, n)
    else:
        inner = np.sort(rng.uniform(lo, hi, n))
    return np.round(np.sort(np.concatenate([anchors, inner])), 3)


def seed_anchors(element: str, edge: str, model_energies: np.ndarray) -> np.ndarray:
    """The adaptive seed's normalisation anchors (pre-edge and post-edge points outside the model range)."""
    from plans.adaptive import seed_energies
    from plans.grids import edge_energy

    seed = seed_energies(edge_energy(element, edge), model_energies)
    return seed[(seed < model_energies[0]) | (seed > model_energies[-1])]


# ------------------------------------------------------------------------------ scoring
def score(problem: Problem, run: PolicyRun, n_conventional: int, beam_conventional: float, dwell_s: float,
          feff_spectra: dict | None, keep_energies: bool = False) -> dict:
    from apps.demo import _beam_time

    names = run.ranking_names
    top1 = names[0] if names else None
    e = np.asarray(run.energies)
    beam = _beam_time(e, np.full(e.size, dwell_s)) if e.size else 0.0
    row = {
        "n_points": int(e.size),
        "beam_time_s": float(beam),
        "fraction_of_points": float(e.size / n_conventional),
        "fraction_of_beam_time": float(beam / beam_conventional),
        "top1": top1,
        "top1_probability": float(run.ranking_probabilities[0]) if names else None,
        "p_none": round(run.p_none, 4),
        "top3": names[:3],
        "top1_correct": bool(top1 in problem.true_names),
        "top3_correct": bool(set(names[:3]) & set(problem.true_names)),
        "n_used_by_ranking": run.n_ranked,
        "offset_fitted_eV": round(run.offset_eV, 3),
        "broadening_fitted_eV": round(run.broadening_eV, 3),
        "wall_s": round(run.wall_s, 3),
    }
    if keep_energies:
        row["energies"] = [round(float(x), 2) for x in e]
    if run.stop_reason:
        row["stop_reason"] = run.stop_reason
    if problem.kind == "heldout" and top1 is not None and not row["top1_correct"]:
        row["confused_with_near_duplicate"] = bool(top1 in problem.near_duplicates)
        if feff_spectra is not None and top1 in feff_spectra:
            row["max_abs_dmu_feff_true_vs_top1"] = round(
                _max_abs(feff_spectra[problem.label], feff_spectra[top1]), 4)
    return row


def _summaries(rows: list[dict], policies: list[str], confidence: float) -> tuple[dict, dict]:
    """Per-policy summaries of the held-out samples and of the references whose compound is
    among the candidates."""
    heldout = [r for r in rows if r["kind"] == "heldout"]
    references = [r for r in rows if r["kind"] == "reference" and r["true_in_candidates"]]
    return tuple({p: _summary([r["policies"][p] for r in group if p in r["policies"]], confidence)
                  for p in policies} for group in (heldout, references))


def _given_present(row: dict) -> float:
    """A policy row's top-1 probability given that the sample is among the candidates."""
    p, p_none = row["top1_probability"] or 0.0, row.get("p_none") or 0.0
    return min(1.0, p / (1.0 - p_none)) if p_none < 1.0 else 0.0


def _summary(rows: list[dict], confidence: float) -> dict:
    if not rows:
        return {}
    wrong = [r for r in rows if not r["top1_correct"]]
    # Samples whose final top-1 probability reached the stopping confidence: for the plans that
    # stop on it, the ones identified before the point budget ran out.
    confident = [r for r in rows if (r["top1_probability"] or 0.0) >= confidence]
    out = {
        "n": len(rows),
        "top1": float(np.mean([r["top1_correct"] for r in rows])),
        "top3": float(np.mean([r["top3_correct"] for r in rows])),
        "median_points": float(np.median([r["n_points"] for r in rows])),
        "median_used_by_ranking": float(np.median([r.get("n_used_by_ranking", 0) for r in rows])),
        "median_fraction_of_points": float(np.median([r["fraction_of_points"] for r in rows])),
        "median_fraction_of_beam_time": float(np.median([r["fraction_of_beam_time"] for r in rows])),
        "median_beam_time_s": float(np.median([r["beam_time_s"] for r in rows])),
        "median_top1_probability": float(np.median([r["top1_probability"] or 0.0 for r in rows])),
        # calibration of the top-1 probability (every sample's truth is among the candidates here)
        "ece": bench_real.expected_calibration_error([r["top1_probability"] or 0.0 for r in rows],
                                          [r["top1_correct"] for r in rows]),
        # ... and of the same given that the sample is among the candidates, which it is in every
        # sample here: top-1 probability / (1 - p_none). The read-out's p_none is calibrated on
        # validation sets where a third of the truths are missing, so the plain ECE above also
        # counts that base rate as under-confidence.
        "ece_given_present": bench_real.expected_calibration_error(
            [_given_present(r) for r in rows], [r["top1_correct"] for r in rows]),
        "n_wrong": len(wrong),
        "n_confident": len(confident),
        "top1_when_confident": float(np.mean([r["top1_correct"] for r in confident])) if confident else None,
        "median_fraction_of_points_when_confident":
            float(np.median([r["fraction_of_points"] for r in confident])) if confident else None,
        "median_fraction_of_beam_time_when_confident":
            float(np.median([r["fraction_of_beam_time"] for r in confident])) if confident else None,
    }
    if any("confused_with_near_duplicate" in r for r in wrong):
        near = sum(bool(r.get("confused_with_near_duplicate")) for r in wrong)
        out["n_wrong_near_duplicate"] = near
        out["top1_up_to_near_duplicates"] = float((len(rows) - len(wrong) + near) / len(rows))
    return out


# ------------------------------------------------------------------------------ decision time
def decision_time(n_candidates: int = 1000, repeats: int = 30) -> dict:
    """Median wall time of :meth:`EnergySelectionAgent.suggest` with ``n_candidates`` FEFF spectra."""
    from plans.adaptive import seed_energies
    from plans.energy_selection import EnergySelectionAgent
    from plans.grids import edge_energy
    from xas_callbacks.candidates import CandidateLibrary

    root = _feff_root()
    ids = sorted(p.name for p in root.iterdir() if (p / "FEFF-XANES").is_dir())[: int(n_candidates * 1.1)]
    lib = CandidateLibrary.from_feff(root, ids)
    lib = lib.subset(lib.names[:n_candidates])
    rng = np.random.default_rng(0)
    truth = lib.mean[0]
    e0 = edge_energy("Cu", "K")
    readings = []
    for energy in seed_energies(e0, lib.energies):
        mu = 0.5 + float(np.interp(energy, lib.energies, truth)) + rng.normal(0, 0.002)
        readings.append({"energy": float(energy), "mu": mu, "mu_sigma": 0.002})
    out = {"n_candidates": len(lib), "n_energies_model": int(lib.energies.size), "repeats": repeats}
    cases = {
        # after the seed: a broad posterior, the agent compares its top_k (32) leading candidates
        "broad_posterior": rng.dirichlet(np.ones(len(lib))),
        # later: a few candidates hold the mass
        "peaked_posterior": np.r_[[0.6, 0.25, 0.1, 0.05], np.full(len(lib) - 4, 1e-9)],
    }
    for label, p in cases.items():
        agent = EnergySelectionAgent(lib.names, lib.energies, lib.mean, np.full_like(lib.mean, 0.02))
        agent.ingest(readings)
        agent.ingest([{"top_names": lib.names, "top_probabilities": (p / p.sum()).tolist(),
                       "offset_eV": 0.7, "broadening_eV": 1.5}])
        agent.suggest(1)  # warm-up
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.thread_time()
            agent.suggest(1)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        out[label] = {"median_ms": 1e3 * float(np.median(times)), "p90_ms": 1e3 * float(np.percentile(times, 90)),
                      "min_ms": 1e3 * float(np.min(times)), "median_cpu_ms": 1e3 * float(np.median(cpu)),
                      "top_k_compared": int(min(agent.top_k, len(lib)))}
    out["target_ms"] = 10.0
    out["meets_target"] = bool(max(out[c]["median_ms"] for c in cases) <= 10.0)
    out["meets_target_cpu_time"] = bool(max(out[c]["median_cpu_ms"] for c in cases) <= 10.0)
    out["load_average"] = list(os.getloadavg())
    out["note"] = ("wall time on a shared 2-core machine (see load_average); median_cpu_ms is this thread's CPU "
                   "time, less sensitive to other processes")
    return out


# ------------------------------------------------------------------------------ the benchmark
def run_adaptive_benchmark(args, stream=sys.stdout) -> dict:
    from bluesky import RunEngine

    from apps.demo import MONO_SPEED_EV_PER_S, SETTLE_S, _beam_time

    t_start = time.perf_counter()
    policies = [p for p in POLICIES if p in set(args.policies)]
    if "adaptive" not in policies and ({"uniform", "random"} & set(policies)):
        raise SystemExit("uniform/random take their point count from the adaptive run: include adaptive")
    make = molecule_problems if args.model == "o-k" else heldout_problems
    problems, setup, feff_spectra = make(args.model, args.samples, args.candidates, args.seed,
                                         dedupe=args.dedupe, split=args.split, stream=stream)
    element = problems[0].element if problems else ("O" if args.model == "o-k" else "Cu")
    ref_setup = None
    if args.references and element != "Cu":
        ref_setup = {"skipped": f"no measured {element} K-edge references in the XAS data library"}
    elif args.references:
        try:
            refs, ref_setup = reference_problems(args.model, args.seed, stream=stream)
            problems += refs
        except Exception as exc:  # noqa: BLE001 -- reported, the held-out part still runs
            ref_setup = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"references skipped: {ref_setup['error']}", file=stream, flush=True)
    for p in problems:
        p.info["flux"] = args.flux

    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    conv = conventional_energies(element, "K", args.dwell)
    beam_conv = _beam_time(conv, np.full(conv.size, args.dwell))
    rows = []
    for k, problem in enumerate(problems):
        rng = np.random.default_rng(problem.seed)
        runs: dict[str, PolicyRun] = {}
        if "adaptive" in policies:
            runs["adaptive"] = run_adaptive(RE, docs, problem, dwell_s=args.dwell, confidence=args.confidence,
                                            max_points=args.max_points)
        if "space-filling" in policies:
            runs["space-filling"] = run_adaptive(RE, docs, problem, dwell_s=args.dwell, confidence=args.confidence,
                                                 max_points=args.max_points, agent="space-filling")
        n_adaptive = len(runs["adaptive"].energies) if "adaptive" in runs else 0
        grid = problem.library.energies
        anchors = seed_anchors(problem.element, problem.edge, grid)
        w_lo, w_hi = ranking_window(problem.library)
        lo, hi = max(float(grid[0]), w_lo), min(float(grid[-1]), w_hi)
        for policy in ("uniform", "random"):
            if policy in policies:
                energies = sparse_energies(policy, n_adaptive, anchors, lo, hi, rng)
                runs[policy] = run_list(RE, docs, problem, energies, dwell_s=args.dwell, policy=policy)
        if "conventional" in policies:
            runs["conventional"] = run_list(RE, docs, problem, conv, dwell_s=args.dwell, policy="conventional")
        row = {
            "kind": problem.kind,
            "sample": problem.label,
            "true": problem.true_names,
            "true_in_candidates": problem.true_in_candidates,
            "n_candidates": len(problem.library),
            "offset_true_eV": round(problem.offset_eV, 3),
            "seed": problem.seed,
            "policies": {p: score(problem, r, conv.size, beam_conv, args.dwell, feff_spectra,
                                  keep_energies=p != "conventional") for p, r in runs.items()},
        }
        if problem.kind == "reference":
            row["xdi_pre_edge_mu"] = problem.info.get("xdi_pre_edge_mu")
        if problem.kind == "heldout":
            row["near_duplicates_of_true"] = problem.near_duplicates
            if args.dedupe:
                row["merged_groups"] = {rep: sorted(n for n, r in problem.groups.items() if r == rep)
                                        for rep in sorted(set(problem.groups.values()))
                                        if sum(r == rep for r in problem.groups.values()) > 1}
        rows.append(row)
        cells = "  ".join(
            f"{p[:4]} {'ok' if s['top1_correct'] else '--'} {s['n_points']:3d}pt p={s['top1_probability'] or 0:.2f}"
            for p, s in row["policies"].items())
        print(f"[{k + 1}/{len(problems)}] {problem.kind[:3]} {problem.label[:26]:26s} {cells}", file=stream, flush=True)

    heldout = [r for r in rows if r["kind"] == "heldout"]
    references = [r for r in rows if r["kind"] == "reference"]
    heldout_summary, references_summary = _summaries(rows, policies, args.confidence)
    result = {
        "benchmark": "xas-bench adaptive",
        "command": "xas-bench " + " ".join(args.argv),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_state(("plans", "xas_callbacks", "endstation", "models")),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "cpu_count": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "load_average": list(os.getloadavg())},
        "settings": {
            "model": args.model, "samples": args.samples, "candidates": args.candidates, "seed": args.seed,
            "split": args.split, "dwell_s": args.dwell, "confidence": args.confidence, "max_points": args.max_points,
            "flux_photons_per_s": args.flux, "dedupe": args.dedupe, "policies": policies,
            "offset_eV": "U(-2, 2), unknown to the plans",
            "conventional_grid": {**CONVENTIONAL_GRID, "dwell_s": args.dwell, "n_points": int(conv.size),
                                  "relative_to": "tabulated E0 (xraydb)"},
            "beam_time": {"definition": "sum over points of dwell + settle + |dE| / mono speed (endstation.beamtime.path_beam_time)",
                          "mono_speed_eV_per_s": MONO_SPEED_EV_PER_S, "settle_s": SETTLE_S,
                          "conventional_s": float(beam_conv)},
            "uniform_random": "adaptive seed's normalisation anchors + evenly spaced / uniformly random energies "
                              "over the model's range cut to the ranking engine's usable window "
                              "(RankingEngine.window), as many points in all as adaptive used for that sample",
            "n_used_by_ranking": "readings inside the ranking engine's window (the others only serve normalisation "
                                 "or are discarded by the ranking)",
            "near_duplicate": f"max|dmu| < {NEAR_DUPLICATE_MAX_ABS} between FEFF spectra (normalised, same grid)",
            "noise": "Poisson counts of the simulated endstation (I0 = flux * dwell)",
        },
        "heldout_setup": setup,
        "heldout": heldout_summary,
        "heldout_with_near_duplicate_of_true": int(sum(bool(r.get("near_duplicates_of_true")) for r in heldout)),
        "references_setup": ref_setup,
        "references": {
            r["sample"]: {"true": r["true"], "true_in_candidates": r["true_in_candidates"],
                          **{p: {"top1_correct": s["top1_correct"], "top3_correct": s["top3_correct"],
                                 "top1": s["top1"], "top1_probability": s["top1_probability"],
                                 "n_points": s["n_points"], "fraction_of_beam_time": s["fraction_of_beam_time"]}
                             for p, s in r["policies"].items()}}
            for r in references
        },
        "references_summary": references_summary,
        "rows": rows,
    }
    if args.decision_time:
        result["decision_time"] = decision_time()
        print(f"decision time (suggest, 1000 candidates): {result['decision_time']}", file=stream, flush=True)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    return result


def plot_adaptive(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["kind"] == "heldout"]
    policies = result["settings"]["policies"]
    colors = {"adaptive": "C0", "uniform": "C1", "random": "C2", "conventional": "C3", "space-filling": "C4"}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for p in policies:
        s = result["heldout"].get(p) or {}
        if not s:
            continue
        fr = [r["policies"][p]["fraction_of_points"] for r in rows]
        lo, hi = np.percentile(fr, [25, 75])
        x = s["median_fraction_of_points"]
        ax.errorbar([x], [s["top1"]], xerr=[[x - lo], [hi - x]], fmt="o", color=colors[p], capsize=3,
                    label=f"{p}: top-1 {s['top1']:.2f}, top-3 {s['top3']:.2f}")
        ax.plot([x], [s["top3"]], "^", mfc="none", color=colors[p])
        if "top1_up_to_near_duplicates" in s:
            ax.plot([x], [s["top1_up_to_near_duplicates"]], "s", mfc="none", color=colors[p], ms=9)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the conventional scan's points (median, IQR)")
    ax.set_ylabel("fraction identified")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(f"{len(rows)} held-out samples, {result['settings']['candidates']} candidates, "
                 f"model {result['settings']['model']}\n(o top-1, ^ top-3, [] top-1 up to near-duplicates)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    if "adaptive" in policies and rows:
        pts = [r["policies"]["adaptive"]["n_points"] for r in rows]
        ok = [r["policies"]["adaptive"]["top1_correct"] for r in rows]
        top = max(pts + [r["policies"].get("space-filling", {}).get("n_points", 0) for r in rows])
        bins = np.arange(0.5, top + 1.5, 1)
        bx.hist([[n for n, o in zip(pts, ok) if o], [n for n, o in zip(pts, ok) if not o]], bins=bins,
                stacked=True, color=["C0", "C7"], label=["adaptive, identified", "adaptive, not identified"])
        if "space-filling" in policies:
            filling = [r["policies"]["space-filling"]["n_points"] for r in rows]
            bx.hist(filling, bins=bins, histtype="step", color="C4", lw=2, label="space-filling (all)")
        bx.set_xlabel("points used (uniform and random use as many as adaptive)")
        bx.set_ylabel("samples")
        conv = result["settings"]["conventional_grid"]["n_points"]
        fractions = ", ".join(f"{p} {result['heldout'][p]['median_fraction_of_beam_time']:.2f}"
                              for p in policies if p != "conventional" and result["heldout"].get(p))
        bx.set_title(f"conventional scan: {conv} points; median fraction of its beam time:\n{fractions}", fontsize=8)
        bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _print_table(result: dict, stream=sys.stdout) -> None:
    print("\npolicy         top1  top3  (near-dup ok)  median pts  frac pts  frac beam  median p(top1)"
          "  | confident: n  top1  frac pts", file=stream)
    for label, block in (("held-out", result["heldout"]), ("references", result["references_summary"])):
        print(f"-- {label}", file=stream)
        for p, s in block.items():
            if not s:
                continue
            nd = s.get("top1_up_to_near_duplicates")
            conf = (f"{s['n_confident']:3d}  {s['top1_when_confident']:4.2f}  "
                    f"{s['median_fraction_of_points_when_confident']:8.3f}" if s.get("n_confident") else "  0")
            print(f"{p:13s} {s['top1']:5.2f} {s['top3']:5.2f}  {'' if nd is None else f'{nd:5.2f}':>12s}  "
                  f"{s['median_points']:10.0f}  {s['median_fraction_of_points']:8.3f}  "
                  f"{s['median_fraction_of_beam_time']:9.3f}  {s['median_top1_probability']:13.3f}  | {conf}",
                  file=stream)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="xas-bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ad = sub.add_parser("adaptive", help="adaptive vs space-filling, uniform, random and conventional scans "
                                         "(accuracy, points, beam time)")
    ad.add_argument("--samples", type=int, default=50, help="held-out samples (of --split)")
    ad.add_argument("--split", choices=("test", "val"), default="test",
                    help="where samples and candidates come from: 'val' (validation) to choose settings, "
                         "'test' (default) to report them")
    ad.add_argument("--candidates", type=int, default=40, help="candidates per held-out sample (truth included)")
    ad.add_argument("--model", choices=("cu-k", "o-k", "feff"), default="cu-k",
                    help="predictor of the candidates' spectra: cu-k (Cu K-edge crystals), o-k (O K-edge QM9 "
                         "molecules) or feff (Cu K-edge, the FEFF spectra themselves: an upper bound)")
    ad.add_argument("--seed", type=int, default=0)
    ad.add_argument("--dwell", type=float, default=0.5, help="counting time per point (s), every policy")
    ad.add_argument("--confidence", type=float, default=0.95, help="adaptive plan's stopping probability")
    ad.add_argument("--max-points", type=int, default=35,
                    help="point budget of the adaptive and space-filling plans (default 35: 20%% of the "
                         "conventional grid's 178 points)")
    ad.add_argument("--flux", type=float, default=1.0e7, help="incident photons/s of the simulated endstation")
    ad.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES),
                    help="policies to run (default all five)")
    ad.add_argument("--references", action=argparse.BooleanOptionalAction, default=True,
                    help="also rank the real measured Cu references (XAS data library)")
    ad.add_argument("--dedupe", action="store_true",
                    help=f"merge near-duplicate candidates (FEFF max|dmu| < {NEAR_DUPLICATE_MAX_ABS}) into one; "
                         "reported as such")
    ad.add_argument("--decision-time", action=argparse.BooleanOptionalAction, default=True,
                    help="time EnergySelectionAgent.suggest with 1,000 candidates")
    ad.add_argument("--verbose", action="store_true", help="show the ranking callback's per-run log")
    ad.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    su = sub.add_parser("summarize", help="recompute the summaries, table and figure of a written "
                                          "adaptive_<model>.json from its per-sample rows (no rerun)")
    su.add_argument("json", type=Path)
    bench_real.add_parsers(sub)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command in ("real", "calibrate"):
        os.environ.setdefault("MPLBACKEND", "Agg")
        return bench_real.run(args)
    if args.command == "summarize":
        result = json.loads(args.json.read_text())
        result["heldout"], result["references_summary"] = _summaries(
            result["rows"], result["settings"]["policies"], float(result["settings"]["confidence"]))
        args.json.write_text(json.dumps(result, indent=1, default=str))
        plot_adaptive(result, args.json.with_suffix(".png"))
        _print_table(result)
        print(f"\nrewrote {args.json} and {args.json.with_suffix('.png')}")
        return 0
    os.environ.setdefault("MPLBACKEND", "Agg")
    if not args.verbose:
        # the callback's end-of-run note (points outside the model range, renormalisations) per run
        logging.getLogger("xas_callbacks.callback").setLevel(logging.ERROR)
    if args.command == "adaptive":
        result = run_adaptive_benchmark(args)
        args.out.mkdir(parents=True, exist_ok=True)
        stem = (f"adaptive_{args.model}" + ("_dedupe" if args.dedupe else "")
                + ("" if args.split == "test" else f"_{args.split}"))
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
        plot_adaptive(result, args.out / f"{stem}.png")
        _print_table(result)
        print(f"\nwrote {args.out / (stem + '.json')} and {args.out / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
