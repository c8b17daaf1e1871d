"""``xas-bench real`` and ``xas-bench calibrate``: does the ranking tell the truth about real data?

``xas-bench real`` (the report, test data) ranks

1. the seven measured Cu K-edge references of the shared XAS data library among ten AMCSD Cu
   minerals predicted by ``cu-k`` (:data:`apps.references.CU_MINERALS`; disordered CIFs by
   ordered samples), each once with its true mineral among the candidates and once without it;
2. the same references among the FEFF spectra of the shared Materials Project set where that set
   holds the reference's compound (the theory upper bound: no model error);
3. held-out simulated measurements: FEFF spectra of test-split materials (or QM9 molecules for
   ``o-k``) turned into transmission counts with a random offset, broadening, edge step and
   background, ranked among the model's predictions for test-split candidates, a third of them
   without the truth (and without any near-duplicate of it).

For each set it writes top-1/top-3, the top probability when the truth is absent, the expected
calibration error and a reliability diagram (confidence of the top answer, "none of these"
included, against how often it is right) to ``benchmarks/results/real_<model>.{json,png}``.

``xas-bench calibrate`` (validation data only) chooses the ranking's discrepancy settings: it
scores a grid of :class:`~xas_callbacks.ranking.RankingConfig` settings by the mean Brier score of
the answer (the true candidate, or "none of these" when it was removed; bounded, unlike the log
loss, so that one reference that theory gets badly wrong does not decide alone) on

* simulated measurements of VALIDATION-split materials/molecules among validation candidates;
* measured references of other elements (Fe, Mn, Ni, Co, Cr, V, Zn; never Cu) among the FEFF10
  spectra of their minerals (``data/feff_references``), the theory-experiment gap,

then fits the calibrated read-out (``RankingConfig.confidence``: "none of these" and the
candidates' temperature from statistics of the ranking) on the winner, by the weighted log loss
of the answer on the same validation data plus partial copies of the simulations and the live
loop's rankings of validation samples measured through the simulated endstation
(:mod:`apps.live_cases`; :func:`fit_readout`; ``--readout-only``: on the model's stored
settings, without the grid),
and writes ``benchmarks/results/calibration_<model>.json``; ``--write`` stores the winner as the
model's settings (``xas_callbacks/ranking_settings.json``, read by
:meth:`~xas_callbacks.ranking.RankingConfig.for_model`), so nothing is tuned on the seven Cu files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.references import CU_MINERALS, CU_REFERENCES, VALIDATION_REFERENCES
from models.provenance import git_state

__all__ = ["main", "expected_calibration_error", "reliability"]

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"

#: Every third simulated task has its truth removed from the candidates, and with it every
#: candidate whose computed spectrum is within this of the truth's (max |delta mu|, normalised,
#: after the best shift of up to 3 eV): no measurement can tell those apart.
NEAR_DUPLICATE_MAX_ABS = 0.05


def _near_duplicate(a, b) -> bool:
    """Whether two (energy, mu) spectra differ by less than :data:`NEAR_DUPLICATE_MAX_ABS`
    everywhere on their common range, for some shift of up to 3 eV."""
    (ea, ma), (eb, mb) = a, b
    grid = np.arange(max(ea[0], eb[0]) + 3, min(ea[-1], eb[-1]) - 3, 0.5)
    ref = np.interp(grid, ea, ma)
    return any(np.max(np.abs(ref - np.interp(grid + s, eb, mb))) < NEAR_DUPLICATE_MAX_ABS for s in np.arange(-3, 3.01, 0.5))


@dataclass
class Task:
    """One spectrum to rank: the measurement, the candidates, and the right answer."""

    kind: str  # "simulated", "reference", "validation-reference"
    label: str
    spectrum: dict  # energy, mu, var, e0 (endstation.measured.read_spectrum layout)
    library: object  # CandidateLibrary
    truth: str | None  # the true candidate's name; None: it was removed ("none of these" is right)
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ metrics
def reliability(confidence, correct, n_bins: int = 10) -> list[dict]:
    """Per confidence bin: how many answers, their mean confidence and how often they were right."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (confidence >= lo) & ((confidence < hi) if hi < 1 else (confidence <= hi))
        if sel.any():
            out.append({"bin": [float(lo), float(hi)], "n": int(sel.sum()),
                        "confidence": float(confidence[sel].mean()), "accuracy": float(correct[sel].mean())})
    return out


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """Expected calibration error: the bins' |accuracy - confidence| weighted by their share."""
    bins = reliability(confidence, correct, n_bins)
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins)) if n else float("nan")


def score(task: Task, result) -> dict:
    """What one ranking says against the right answer."""
    names = list(result.names)
    p = np.asarray(result.probabilities, float)
    answer, confidence = (names[0], float(p[0])) if p[0] >= result.p_none else ("none of these", float(result.p_none))
    truth = task.truth or "none of these"
    p_truth = float(result.p_none) if task.truth is None else float(p[names.index(task.truth)])
    return {
        "kind": task.kind, "label": task.label, "truth": truth, "truth_present": task.truth is not None,
        "answer": answer, "confidence": confidence, "correct": answer == truth,
        "top1": names[0], "top1_probability": float(p[0]), "top3": names[:3],
        "top1_correct": task.truth is not None and names[0] == task.truth,
        "top3_correct": task.truth is not None and task.truth in names[:3],
        "p_none": float(result.p_none), "p_none_raw": float(getattr(result, "p_none_raw", result.p_none)), "p_truth": p_truth, "log_loss": float(-np.log(max(p_truth, 1e-300))),
        "brier": float(np.sum(p**2) + result.p_none**2 - 2.0 * p_truth + 1.0),
        "offset_eV": float(result.offset_mean), "broadening_eV": float(result.broadening_mean),
        "warnings": list(result.warnings), **task.info,
    }


def summarize(rows: list[dict]) -> dict:
    """Accuracy and calibration of a set of scored rankings."""
    if not rows:
        return {}
    present = [r for r in rows if r["truth_present"]]
    absent = [r for r in rows if not r["truth_present"]]
    conf = [r["confidence"] for r in rows]
    corr = [r["correct"] for r in rows]
    return {
        "n": len(rows), "n_truth_present": len(present), "n_truth_absent": len(absent),
        "top1": float(np.mean([r["top1_correct"] for r in present])) if present else None,
        "top3": float(np.mean([r["top3_correct"] for r in present])) if present else None,
        "wrong_top1_probabilities": [r["top1_probability"] for r in present if not r["top1_correct"]],
        "top_probability_truth_absent": [r["top1_probability"] for r in absent],
        "median_top_probability_truth_absent": float(np.median([r["top1_probability"] for r in absent])) if absent else None,
        "p_none_truth_absent": [r["p_none"] for r in absent],
        "p_none_truth_present": [r["p_none"] for r in present],
        "accuracy_of_top_answer": float(np.mean(corr)),
        "ece": expected_calibration_error(conf, corr),
        "mean_log_loss": float(np.mean([r["log_loss"] for r in rows])),
        "brier": float(np.mean([r["brier"] for r in rows])),
        "reliability": reliability(conf, corr),
    }


def run_tasks(tasks: list[Task], config) -> list[dict]:
    """Rank every task's spectrum among its candidates with ``config``; the scored rows."""
    from xas_callbacks.ranking import rank_spectrum

    return [score(task, rank_spectrum(task.spectrum, task.library, config)[1]) for task in tasks]


# ------------------------------------------------------------------------------ tasks
def simulate_measurement(energies, mu, rng, *, offset, fwhm, noise_counts=(1e5, 1e6)) -> dict:
    """A transmission measurement of a computed spectrum: a realistic XANES grid, a sloping
    background, an edge step, Gaussian broadening, Poisson counts; returns the
    :func:`endstation.measured.read_spectrum` layout (energy, mu, var)."""
    from endstation.modes import mu_from_counts
    from models.spectra import gaussian_broaden_uniform

    step = 0.25
    fine = np.arange(energies[0] - 60, energies[-1] + step, step)
    m = np.interp(fine, energies, mu)
    m = np.where(fine < energies[0], mu[0] * np.exp(-0.5 * ((fine - energies[0]) / 2.0) ** 2), m)
    m = gaussian_broaden_uniform(m, step, fwhm) if fwhm > 0 else m
    lo, hi = energies[0] - offset, energies[-1] - offset
    e_edge = lo + 6.0
    grid = np.concatenate([np.arange(lo - 50, e_edge - 10, 5.0), np.arange(e_edge - 10, e_edge + 30, 0.5),
                           np.arange(e_edge + 30, hi - 2, 2.0)])
    grid = grid + rng.uniform(-0.05, 0.05, grid.size)
    step_mux, bg0, slope = rng.uniform(0.3, 1.5), rng.uniform(0.5, 2.0), -rng.uniform(0, 5e-4)
    mux = bg0 + slope * (grid - e_edge) + step_mux * np.interp(grid + offset, fine, m)
    i0 = rng.poisson(rng.uniform(*noise_counts), grid.size).astype(float)
    it = rng.poisson(i0 * np.exp(-mux)).astype(float)
    value, var, bad = mu_from_counts("transmission", i0=i0, it=it)
    return {"energy": grid[~bad], "mu": value[~bad], "var": var[~bad], "e0": None, "mode": "transmission"}


def simulated_tasks(model: str, split: str, n_tasks: int, n_candidates: int, seed: int) -> list[Task]:
    """Simulated measurements of ``split`` materials (``cu-k``) or molecules (``o-k``, ``n-k``)
    among ``n_candidates`` of the model's predictions for that split; a third without the truth."""
    rng = np.random.default_rng(seed)
    truths, feff, predicted = _split_spectra(model, split, rng, n_tasks, n_candidates)
    tasks = []
    names = predicted.names
    for k, truth in enumerate(truths):
        present = k % 3 != 0
        others = [n for n in names if n != truth]
        if not present:  # a near-duplicate of the truth is the truth, as far as XANES can tell
            others = [n for n in others if not _near_duplicate(feff[n], feff[truth])]
        chosen = rng.choice(others, size=min(n_candidates - 1, len(others)), replace=False).tolist()
        lib = predicted.subset(sorted(chosen + ([truth] if present else [])))
        energies, mu = feff[truth]
        spectrum = simulate_measurement(energies, mu, rng, offset=float(rng.uniform(-4, 4)),
                                        fwhm=float(rng.uniform(0, 3)))
        tasks.append(Task("simulated", truth, spectrum, lib, truth if present else None))
    return tasks


def _split_spectra(model: str, split: str, rng, n_tasks: int, n_candidates: int):
    """Truth names, their FEFF spectra (name -> (energy, mu)) and the model's predictions for a
    draw of ``split`` materials/molecules."""
    from models.readers import split_ids
    from xas_callbacks.candidates import CandidateLibrary

    if model == "cu-k":
        from models.paths import CU_K_FEFF, data_path

        root = data_path(CU_K_FEFF)
        ids = sorted(split_ids(sorted(p.name for p in root.iterdir() if (p / "FEFF-XANES").is_dir()))[split])
        pool = sorted(rng.choice(ids, size=min(len(ids), n_tasks + 4 * n_candidates), replace=False).tolist())
        feff_lib = CandidateLibrary.from_feff(root, pool)
        predicted = CandidateLibrary.from_structures([str(root / i / "POSCAR") for i in feff_lib.names],
                                                     model=model, names=feff_lib.names)
        feff = {n: (feff_lib.energies, feff_lib.mean[i]) for i, n in enumerate(feff_lib.names)}
    else:
        from models.paths import data_path
        from models.readers import read_qm9_jsonl
        from models.training import MODEL_SPECS

        records, _ = read_qm9_jsonl(data_path(MODEL_SPECS[model]["data"]))
        by_id = {r.record_id: r for r in records}
        ids = sorted(split_ids(sorted(by_id))[split])
        pool = sorted(rng.choice(ids, size=min(len(ids), n_tasks + 4 * n_candidates), replace=False).tolist())
        predicted = CandidateLibrary.from_structures([by_id[i].structure for i in pool], model=model, names=pool)
        feff = {}
        for i in predicted.names:
            sites = by_id[i].sites
            lo, hi = max(s.energy[0] for s in sites), min(s.energy[-1] for s in sites)
            grid = np.arange(lo, hi + 1e-9, 0.25)
            feff[i] = (grid, np.mean([np.interp(grid, s.energy, s.mu) for s in sites], axis=0))
    usable = [n for n in predicted.names if n in feff]
    truths = rng.choice(usable, size=min(n_tasks, len(usable)), replace=False).tolist()
    return truths, feff, predicted.subset(usable)


def cu_reference_tasks(candidates: str = "cu-k") -> tuple[list[Task], dict]:
    """The seven measured Cu references among the ten Cu minerals, with and without the truth:
    ``candidates`` ``"cu-k"`` (the model's predictions of the AMCSD CIFs) or ``"feff"`` (the
    shared set's FEFF spectra of the same compounds, where it has them)."""
    from endstation.measured import read_spectrum
    from models.paths import XAS_DATA_LIBRARY, data_dir, user_data_dir
    from xas_callbacks.candidates import CandidateLibrary

    setup: dict = {}
    if candidates == "feff":
        library, setup = _feff_minerals()
    else:
        from models.amcsd import mineral_cifs, write_cifs

        entries, missing = mineral_cifs(CU_MINERALS, contains=("Cu",))
        paths = write_cifs(entries, user_data_dir() / "amcsd" / "cu_minerals")
        library = CandidateLibrary.from_structures([str(p) for p in paths.values()], model=candidates,
                                                   names=list(paths), source="AMCSD Cu minerals (larixite)")
        setup = {"candidates": {m: e.label + ("" if e.ordered else ", partial occupancy") for m, e in entries.items()},
                 "missing": missing, "failures": dict(library.failures),
                 "disorder": library.provenance.get("disorder", {})}
    tasks = []
    for fname, (mineral, formula) in CU_REFERENCES.items():
        path = data_dir() / XAS_DATA_LIBRARY / "Cu" / fname
        truths = [n for n in library.names if n == mineral or setup.get("formula", {}).get(n) == mineral]
        if not path.is_file() or not truths:
            continue
        spectrum = read_spectrum(path)
        tasks.append(Task("reference", fname, spectrum, library, truths[0], {"mineral": mineral, "formula": formula}))
        without = library.subset([n for n in library.names if n not in truths])
        tasks.append(Task("reference", fname, spectrum, without, None, {"mineral": mineral, "formula": formula}))
    return tasks, setup


def _feff_minerals():
    """The shared FEFF set's spectra of the Cu minerals' compounds: one material per mineral
    (the first id whose structure matches the AMCSD one), named by the mineral."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from models.amcsd import mineral_cifs
    from models.amcsd import parse_cif as parse
    from models.paths import CU_K_FEFF, data_path
    from xas_callbacks.candidates import CandidateLibrary

    root = data_path(CU_K_FEFF)
    entries, _ = mineral_cifs(CU_MINERALS, contains=("Cu",))
    matcher = StructureMatcher()
    by_formula: dict[str, list[str]] = {}
    for d in sorted(p for p in root.iterdir() if (p / "FEFF-XANES").is_dir()):
        try:
            by_formula.setdefault(Structure.from_file(str(d / "POSCAR")).composition.reduced_formula, []).append(d.name)
        except Exception:  # noqa: BLE001 -- an unreadable POSCAR is not a mineral's
            continue
    chosen = {}
    for mineral, entry in entries.items():
        structure = parse(entry.text)
        if not structure.is_ordered:
            continue
        for mid in by_formula.get(structure.composition.reduced_formula, []):
            if matcher.fit(structure, Structure.from_file(str(root / mid / "POSCAR"))):
                chosen[mineral] = mid
                break
    feff = CandidateLibrary.from_feff(root, sorted(chosen.values()))
    by_id = {mid: m for m, mid in chosen.items()}
    rows = [feff.names.index(mid) for mid in sorted(chosen.values())]
    library = CandidateLibrary.from_spectra([by_id[feff.names[i]] for i in rows], feff.energies, feff.mean[rows],
                                            default_std=0.0, provenance={"element": "Cu", "edge": "K",
                                                                         "model": "feff9-computed"})
    return library, {"candidates": {m: f"Materials Project {mid} (FEFF9)" for m, mid in chosen.items()}}


def validation_reference_tasks() -> tuple[list[Task], dict]:
    """Measured references of other elements among the FEFF10 spectra of their element's minerals
    (``data/feff_references``), with and without the truth: the theory-experiment gap."""
    from endstation.measured import read_spectrum
    from models.paths import XAS_DATA_LIBRARY, data_dir

    spectra = read_feff_references()
    tasks = []
    for relative, (mineral, formula) in VALIDATION_REFERENCES.items():
        element = relative.split("/")[0]
        path = data_dir() / XAS_DATA_LIBRARY / relative
        library = spectra.get(element)
        if library is None or mineral not in library.names or not path.is_file():
            continue
        spectrum = read_spectrum(path)
        tasks.append(Task("validation-reference", relative, spectrum, library, mineral, {"mineral": mineral}))
        others = [n for n in library.names if n != mineral]
        if others:
            tasks.append(Task("validation-reference", relative, spectrum, library.subset(others), None,
                              {"mineral": mineral}))
    return tasks, {"elements": {el: list(lib.names) for el, lib in spectra.items()}}


FEFF_REFERENCES = Path(__file__).resolve().parent.parent / "data" / "feff_references" / "minerals_feff10.jsonl.gz"


def pack_feff_references(folder: Path, out: Path = FEFF_REFERENCES) -> int:
    """Pack ``xas-feff structures`` output (``<mineral>/FEFF-XANES/NNN_El/xmu.dat`` + ``POSCAR``)
    into one gzip JSONL line per mineral (``name``, ``absorber``, ``poscar``, ``sites`` with
    ``site``, ``weight``, ``omega_eV``, ``mu``); returns the number of minerals written."""
    import gzip

    from xas_callbacks.candidates import _SITE_DIR, _site_weights, read_xmu_file

    lines = []
    for mineral in sorted(p for p in Path(folder).iterdir() if (p / "FEFF-XANES").is_dir()):
        sites = []
        for site_dir in sorted((mineral / "FEFF-XANES").iterdir()):
            match = _SITE_DIR.match(site_dir.name)
            if match and (site_dir / "xmu.dat").is_file():
                omega, mu = read_xmu_file(site_dir / "xmu.dat")
                sites.append({"site": int(match.group(1)), "absorber": match.group(2),
                              "omega_eV": omega.round(4).tolist(), "mu": mu.round(6).tolist()})
        if not sites:
            continue
        absorber = sites[0]["absorber"]
        weights = _site_weights(mineral / "POSCAR", [s["site"] for s in sites], absorber)
        for s, w in zip(sites, weights if weights is not None else [1.0 / len(sites)] * len(sites)):
            s["weight"] = float(w)
            del s["absorber"]
        lines.append(json.dumps({"name": mineral.name, "absorber": absorber, "edge": "K",
                                 "poscar": (mineral / "POSCAR").read_text(), "sites": sites}))
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return len(lines)


def read_feff_references(path: Path = FEFF_REFERENCES) -> dict:
    """The packed FEFF10 spectra of the validation minerals, one candidate library per absorber
    (site spectra averaged with their multiplicity weights, on a 0.5 eV grid)."""
    import gzip

    from xas_callbacks.candidates import CandidateLibrary

    if not Path(path).is_file():
        return {}
    by_element: dict[str, list] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                doc = json.loads(line)
                by_element.setdefault(doc["absorber"], []).append(doc)
    libraries = {}
    for element, docs in by_element.items():
        spectra = []
        for doc in docs:
            lo = max(s["omega_eV"][0] for s in doc["sites"])
            hi = min(s["omega_eV"][-1] for s in doc["sites"])
            spectra.append((doc["name"], lo, hi, doc["sites"]))
        lo = float(np.median([s[1] for s in spectra]))
        hi = float(np.median([s[2] for s in spectra]))
        grid = np.arange(np.ceil(lo * 2) / 2, hi + 1e-9, 0.5)
        mean = [sum(s["weight"] * np.interp(grid, s["omega_eV"], s["mu"]) for s in sites) for _, _, _, sites in spectra]
        libraries[element] = CandidateLibrary.from_spectra(
            [s[0] for s in spectra], grid, np.array(mean), default_std=0.0,
            provenance={"element": element, "edge": "K", "model": "feff10-computed", "source": str(path)})
    return libraries


# ------------------------------------------------------------------------------ commands
#: The settings ``xas-bench calibrate`` compares (each combination). The first group changes the
#: sufficient statistics, the second only how the posterior is read from them.
CALIBRATION_GRID = {
    "discrepancy_block_eV": (3.0, 5.0),
    "model_white": (0.6,),
    "discrepancy_sd": ((0.01, 0.03), (0.01, 0.05), (0.01, 0.05, 0.12)),
    "none_sd": (0.05, 0.08, 0.15),
}
CALIBRATION_READOUT = {
    "temperature": (1.0, 1.5, 2.0, 3.0, 5.0),
    "none_gamma": (0.0, 0.1, 0.3, 1.0),
    "none_prior": (0.1, 0.3, 0.5),
}


def _scored_grid(tasks: list[Task], stream) -> dict:
    """Every task ranked under every combination of the grid: settings (as a tuple of items) ->
    scored rows. Each task's sufficient statistics are built once per statistics setting."""
    from dataclasses import replace

    from xas_callbacks.ranking import RankingConfig, rank_spectrum

    keys, readout = list(CALIBRATION_GRID), list(CALIBRATION_READOUT)
    readouts = [dict(zip(readout, v)) for v in itertools.product(*(CALIBRATION_READOUT[k] for k in readout))]
    out: dict = {}
    for values in itertools.product(*(CALIBRATION_GRID[k] for k in keys)):
        stats = dict(zip(keys, values))
        t0 = time.perf_counter()
        engines = [rank_spectrum(task.spectrum, task.library, RankingConfig(**stats))[0] for task in tasks]
        for extra in readouts:
            config = RankingConfig(**stats, **extra)
            rows = []
            for task, engine in zip(tasks, engines):
                engine.config = config
                rows.append(score(task, engine.result(full=True, raw=True)))  # the grid sets the raw posterior
            out[tuple(sorted({**stats, **extra}.items()))] = rows
        print(f"  {stats}: {len(readouts)} read-outs of {len(tasks)} tasks in {time.perf_counter() - t0:.0f} s",
              file=stream, flush=True)
    return out


#: What ``xas-bench calibrate`` minimises (README, "How the ranking treats real measurements").
OBJECTIVE = ("mean Brier score of the answer (candidates and 'none of these'; bounded, so one spectrum that "
             "theory gets badly wrong does not decide alone) on the simulated measurements whose truth is among "
             "the candidates, plus the same on the validation references (with and without their mineral). "
             "Simulated measurements without their truth are reported, not minimised: their closest candidates are "
             "other computed spectra within the model's own error, which no setting tells apart from the truth "
             "without making every ranking unsure.")


# ------------------------------------------------------------------------ the calibrated read-out
READOUT_OBJECTIVE = ("the read-out (RankingConfig.confidence, confidence_temperature, confidence_chi2_power) "
                     "minimises the weighted log loss of the answer (the true candidate, or 'none of these' when "
                     "it was removed) on the validation simulations (full and partial, a third without their truth), "
                     "the live loop's rankings of validation samples measured through the simulated endstation "
                     "(adaptive and conventional scans, a third without their truth; apps.live_cases) and the "
                     "validation references (with and without their mineral); weights READOUT_WEIGHTS.")
#: Share of the read-out's fit that each kind of validation case carries: simulated measurements
#: (full spectra), the same with a few readings only, the live loop's rankings while a scan is
#: measured (the rankings the adaptive plan stops on; a read-out fitted without them was
#: under-confident there), and the measured references of other elements among FEFF spectra --
#: the only validation data with a real theory-experiment misfit, so they weigh as much as all
#: simulations together.
READOUT_WEIGHTS = {"simulated": 0.125, "simulated-partial": 0.125, "live": 0.25, "validation-reference": 0.5}
#: Validation samples measured live for the read-out (``xas-bench calibrate --live-samples``).
LIVE_SAMPLES = 30
#: Ridge penalty on the read-out's coefficients (not the intercept), in units of the weighted
#: mean log loss: keeps them finite where the validation cases separate.
READOUT_RIDGE = 1e-3
#: Range of the read-out's chi^2 power (``RankingConfig.confidence_chi2_power``).
READOUT_CHI2_POWER = (0.0, 4.0)
#: Readings kept in a partial copy of a simulated measurement (uniform between these).
PARTIAL_READINGS = (15, 60)


#: The RankingConfig fields of the read-out.
READOUT_SETTINGS = ("confidence", "confidence_temperature", "confidence_chi2_power")


def partial_tasks(tasks: list[Task], seed: int) -> list[Task]:
    """Copies of simulated ``tasks`` with a random subset of their readings (a partial scan)."""
    rng = np.random.default_rng(seed)
    out = []
    for task in tasks:
        n = task.spectrum["energy"].size
        keep = np.sort(rng.choice(n, size=min(n, int(rng.integers(*PARTIAL_READINGS))), replace=False))
        spectrum = {k: (v[keep] if isinstance(v, np.ndarray) and v.size == n else v) for k, v in task.spectrum.items()}
        out.append(Task("simulated-partial", task.label, spectrum, task.library, task.truth, dict(task.info)))
    return out


def readout_cases(tasks: list[Task], config, engines: list | None = None) -> list[dict]:
    """What the read-out needs of each task ranked with ``config`` (its raw posterior): the
    statistics behind :data:`~xas_callbacks.ranking.CONFIDENCE_FEATURES`, the candidates' log
    evidence plus log prior and the truth's position among them (None: removed). ``engines``:
    a list that receives each task's ranking engine and raw result."""
    from dataclasses import replace

    from xas_callbacks.ranking import rank_spectrum

    config = replace(config, confidence=None)
    cases = []
    for task in tasks:
        eng, res, _ = rank_spectrum(task.spectrum, task.library, config)
        if engines is not None:
            engines.append((eng, res))
        lp = np.asarray(res.log_evidence, float) + eng.tables.log_prior_candidates[res.order]
        cases.append({"kind": task.kind, "label": task.label, "log_odds_none": res.log_odds_none_raw,
                      "chi2": res.top_reduced_chi2, "n_blocks": eng.n_blocks,
                      "lp": lp, "truth": res.names.index(task.truth) if task.truth is not None else None})
    return cases


def _readout_config(theta):
    """The read-out settings of parameters ``theta``: intercept and coefficients, log
    temperature, chi^2 power."""
    return {"confidence": tuple(float(v) for v in theta[:-2]), "confidence_temperature": float(np.exp(theta[-2])),
            "confidence_chi2_power": float(theta[-1])}


def _readout_loss(theta, cases, weights, ridge):
    """Weighted log loss of the answer (the truth, or "none of these") under read-out ``theta``
    (:func:`_readout_config`), plus the ridge penalty on the coefficients."""
    from xas_callbacks.ranking import RankingConfig, confidence_features, readout_temperature

    config = RankingConfig(**_readout_config(theta))
    c = np.asarray(config.confidence)
    loss = 0.0
    for case, w in zip(cases, weights):
        temperature = readout_temperature(config, case["chi2"])
        x = confidence_features(case["log_odds_none"], case["lp"], case["chi2"], case["n_blocks"], temperature)
        z = c[0] + float(np.dot(c[1:], x))
        if case["truth"] is None:
            loss += w * np.logaddexp(0.0, z)  # -log(1 - sigmoid z)
        else:
            s = case["lp"] / temperature
            s = s - s.max()
            loss += w * (np.logaddexp(0.0, -z) - (s[case["truth"]] - np.log(np.exp(s).sum())))
    return loss + ridge * float(np.sum(c[1:] ** 2))


def fit_readout(cases: list[dict]) -> dict:
    """The read-out (``RankingConfig.confidence``, ``confidence_temperature``) that minimises the
    weighted log loss of the answer on ``cases`` (:data:`READOUT_WEIGHTS` per kind, shared within a
    kind by each case's ``weight``, 1 by default), and the loss with and without it."""
    from scipy.optimize import minimize

    from xas_callbacks.ranking import CONFIDENCE_FEATURES

    counts = {k: sum(c["kind"] == k for c in cases) for k in READOUT_WEIGHTS}
    mass = {k: sum(c.get("weight", 1.0) for c in cases if c["kind"] == k) for k in READOUT_WEIGHTS}
    share = {k: READOUT_WEIGHTS[k] / mass[k] for k in mass if mass[k]}
    total = sum(READOUT_WEIGHTS[k] for k in share)
    weights = [share[c["kind"]] * c.get("weight", 1.0) / total for c in cases]
    bounds = [(None, None)] * (len(CONFIDENCE_FEATURES) + 1) + [(np.log(0.1), np.log(100.0)), READOUT_CHI2_POWER]
    fit = None
    for power in (0.0, 1.0, 2.0):  # the loss is not convex in the power: the best of three starts
        theta0 = np.append(np.zeros(len(CONFIDENCE_FEATURES) + 2), power)
        trial = minimize(_readout_loss, theta0, args=(cases, weights, READOUT_RIDGE), method="L-BFGS-B", bounds=bounds)
        fit = trial if fit is None or trial.fun < fit.fun else fit
    settings = _readout_config(fit.x)
    at_bound = abs(fit.x[-1] - READOUT_CHI2_POWER[1]) < 1e-3
    return {"confidence": [round(v, 6) for v in settings["confidence"]],
            "confidence_temperature": round(settings["confidence_temperature"], 6),
            "confidence_chi2_power": round(settings["confidence_chi2_power"], 6), "chi2_power_at_bound": bool(at_bound),
            "features": list(CONFIDENCE_FEATURES), "weights": READOUT_WEIGHTS, "ridge": READOUT_RIDGE,
            "counts": counts, "converged": bool(fit.success), "loss": float(fit.fun),
            "loss_without_readout": float(_readout_loss(np.array([0.0] * len(CONFIDENCE_FEATURES) + [0.0, 0.0, 0.0]),
                                                        cases, weights, 0.0))}


def case_answer(case: dict, config) -> tuple[float, bool]:
    """The top answer of a read-out case (:func:`readout_cases`, :func:`apps.live_cases.live_readout_cases`)
    under ``config``: its probability and whether it is right. Without ``config.confidence``, the
    explicit alternative's raw posterior."""
    from xas_callbacks.ranking import confidence_features, p_in_candidates, readout_temperature

    lp = np.asarray(case["lp"], float)
    if config.confidence is None:
        temperature, lo = 1.0, float(np.clip(case["log_odds_none"], -50.0, 50.0))
        p_in = 1.0 / (1.0 + np.exp(lo)) if np.isfinite(lo) else 1.0
    else:
        temperature = readout_temperature(config, case["chi2"])
        p_in = p_in_candidates(config, confidence_features(case["log_odds_none"], lp, case["chi2"], case["n_blocks"],
                                                           temperature))
    s = lp / temperature
    q = np.exp(s - np.max(s))
    q = p_in * q / q.sum()
    top = int(np.argmax(q))
    if 1.0 - p_in >= q[top]:
        return 1.0 - p_in, case["truth"] is None
    return float(q[top]), case["truth"] == top


def calibrate(model: str, n_tasks: int, n_candidates: int, seed: int, stream=sys.stdout,
              readout_only: bool = False, live_samples: int = LIVE_SAMPLES) -> dict:
    """Choose the ranking settings of ``model`` on validation data: the grid, then the read-out on
    the best of it (with ``live_samples`` validation samples measured live); ``readout_only``: the
    read-out on the model's stored settings."""
    t0 = time.perf_counter()
    tasks = simulated_tasks(model, "val", n_tasks, n_candidates, seed)
    ref_tasks, ref_setup = validation_reference_tasks()
    print(f"{len(tasks)} simulated validation tasks, {len(ref_tasks)} validation-reference tasks "
          f"({time.perf_counter() - t0:.0f} s)", file=stream, flush=True)
    if readout_only:
        from xas_callbacks.ranking import _calibrated_settings

        stored = _calibrated_settings().get(model, {})
        if not stored:
            raise SystemExit(f"xas-bench calibrate: {model} has no stored settings to fit a read-out on; "
                             f"run it without --readout-only")
        settings = {k: v for k, v in stored.items() if k not in READOUT_SETTINGS}
        readout = calibrate_readout(model, settings, tasks, ref_tasks, seed, stream, live_samples, n_candidates)
        best = {"settings": {**settings, **{k: readout[k] for k in READOUT_SETTINGS}},
                "grid": "not searched (--readout-only): the stored settings"}
        return {"benchmark": "xas-bench calibrate --readout-only", "model": model, "git": git_state(), "seed": seed,
                "n_simulated": len(tasks), "n_references": len(ref_tasks), "references_setup": ref_setup,
                "objective": READOUT_OBJECTIVE, "readout": readout, "best": best,
                "wall_s": round(time.perf_counter() - t0, 1)}
    sim = _scored_grid(tasks, stream)
    ref = _scored_grid(ref_tasks, stream) if ref_tasks else {}
    table = []
    for key, rows in sim.items():
        s_present = summarize([r for r in rows if r["truth_present"]])
        s_absent = summarize([r for r in rows if not r["truth_present"]])
        s_ref = summarize(ref[key]) if key in ref else {}
        loss = s_present["brier"] + s_ref.get("brier", 0.0)
        table.append({"settings": dict(key), "simulated": _brief(s_present), "simulated_truth_absent": _brief(s_absent),
                      "references": _brief(s_ref), "loss": loss})
    table.sort(key=lambda r: r["loss"])
    for row in table[:10]:
        print(f"{row['loss']:.3f} {row['settings']} sim {row['simulated']} sim-absent "
              f"{row['simulated_truth_absent']} ref {row['references']}", file=stream)
    best = dict(table[0])
    readout = calibrate_readout(model, best["settings"], tasks, ref_tasks, seed, stream, live_samples, n_candidates)
    best["settings"] = {**best["settings"], **{k: readout[k] for k in READOUT_SETTINGS}}
    return {"benchmark": "xas-bench calibrate", "model": model, "git": git_state(), "seed": seed,
            "n_simulated": len(tasks), "n_references": len(ref_tasks), "references_setup": ref_setup,
            "objective": OBJECTIVE + " Then: " + READOUT_OBJECTIVE,
            "grid": {k: list(v) for k, v in {**CALIBRATION_GRID, **CALIBRATION_READOUT}.items()},
            "table": table, "readout": readout, "best": best, "wall_s": round(time.perf_counter() - t0, 1)}


def calibrate_readout(model: str, settings: dict, tasks: list[Task], ref_tasks: list[Task], seed: int,
                      stream=sys.stdout, live_samples: int = LIVE_SAMPLES, n_candidates: int = 40) -> dict:
    """Fit the calibrated read-out on top of ``settings`` on the validation tasks (simulated,
    their partial copies, the references) and ``live_samples`` validation samples measured live
    (:func:`apps.live_cases.live_readout_cases`), and score the validation answers with and
    without it and with the model's previous read-out (``previous``: the stored one, if any)."""
    from dataclasses import replace

    from apps.live_cases import live_readout_cases
    from xas_callbacks.ranking import RankingConfig

    t0 = time.perf_counter()
    config = replace(RankingConfig(**settings), confidence=None)
    stored = RankingConfig.for_model(model)
    previous = replace(config, **{k: getattr(stored, k) for k in READOUT_SETTINGS})  # steers the live scans
    live, live_setup = (live_readout_cases(model, live_samples, n_candidates, seed, previous, stream)
                        if live_samples else ([], {}))
    every = tasks + partial_tasks(tasks, seed + 1) + ref_tasks
    engines: list = []
    readout = fit_readout(readout_cases(every, config, engines) + live)
    calibrated = replace(config, **{k: readout[k] for k in READOUT_SETTINGS})
    readout["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()
                           if k not in READOUT_SETTINGS}
    readout["live"] = live_setup
    readout["validation"] = {}
    for label, cfg in (("raw", config), ("previous", previous), ("calibrated", calibrated)):
        rows = []
        for task, (eng, res) in zip(every, engines):
            eng.config = cfg
            rows.append(score(task, eng.result(full=True)))
        readout["validation"][label] = {kind: _brief(summarize([r for r in rows if r["kind"] == kind]))
                                        for kind in READOUT_WEIGHTS if kind != "live"}
        answers = [case_answer(c, cfg) for c in live]
        final = [a for a, c, nxt in zip(answers, live, live[1:] + [None]) if nxt is None or nxt["label"] != c["label"]]
        readout["validation"][label]["live"] = {
            "n_cases": len(answers), "ece_all_checkpoints": expected_calibration_error(*zip(*answers)) if answers else None,
            "n_scans": len(final), "ece_end_of_scan": expected_calibration_error(*zip(*final)) if final else None,
            "accuracy_of_top_answer_end_of_scan": float(np.mean([ok for _, ok in final])) if final else None,
            "ece": expected_calibration_error(*zip(*answers)) if answers else None}
    print(f"read-out {readout['confidence']} T {readout['confidence_temperature']:.3f} "
          f"chi2 power {readout['confidence_chi2_power']:.2f} "
          f"({time.perf_counter() - t0:.0f} s); validation ECE raw -> calibrated: " + ", ".join(
              f"{k} {_ece(readout['validation']['raw'][k])} -> {_ece(readout['validation']['calibrated'][k])}"
              for k in READOUT_WEIGHTS), file=stream, flush=True)
    return readout


def _ece(summary: dict) -> str:
    return "-" if summary.get("ece") is None else f"{summary['ece']:.3f}"


def write_settings(model: str, settings: dict, source: str) -> None:
    """Store ``settings`` as ``model``'s ranking settings (:data:`SETTINGS_FILE`)."""
    from xas_callbacks.ranking import SETTINGS_FILE

    from models.predictor import model_card

    data = json.loads(SETTINGS_FILE.read_text()) if SETTINGS_FILE.is_file() else {}
    data.setdefault("about", "RankingConfig fields per model, chosen by `xas-bench calibrate --write` on "
                             "validation data only (see the README); other fields keep their defaults.")
    data.setdefault("models", {})[model] = {"calibration": source, "git": git_state().get("commit"),
                                            "weights_sha256": model_card(model).get("weights_sha256"),
                                            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}}
    SETTINGS_FILE.write_text(json.dumps(data, indent=1) + "\n")


def _brief(summary: dict) -> dict:
    return {k: summary.get(k) for k in ("n", "top1", "top3", "ece", "brier", "mean_log_loss", "accuracy_of_top_answer",
                                        "median_top_probability_truth_absent")}


def real(model: str, n_tasks: int, n_candidates: int, seed: int, stream=sys.stdout, readout: bool = True) -> dict:
    from dataclasses import replace

    from xas_callbacks.ranking import RankingConfig

    t0 = time.perf_counter()
    config = RankingConfig.for_model(model)
    if not readout:  # the explicit alternative's posterior as it is: the read-out's "before"
        config = replace(config, confidence=None)
    out = {"benchmark": "xas-bench real", "model": model, "git": git_state(), "seed": seed,
           "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()}, "sets": {}}
    sets = {}
    if model == "cu-k":
        for candidates in ("cu-k", "feff"):
            tasks, setup = cu_reference_tasks(candidates)
            rows = run_tasks(tasks, config)
            sets[f"references_{candidates}"] = {"setup": setup, "rows": rows, "summary": summarize(rows)}
    tasks = simulated_tasks(model, "test", n_tasks, n_candidates, seed)
    rows = run_tasks(tasks, config)
    for name, present in (("simulated_test", True), ("simulated_test_truth_absent", False)):
        subset = [r for r in rows if r["truth_present"] is present]
        sets[name] = {"rows": subset, "summary": summarize(subset)}
    sets["simulated_test_all"] = {"rows": "simulated_test + simulated_test_truth_absent", "summary": summarize(rows)}
    out["sets"] = sets
    for name, s in sets.items():
        m = s["summary"]
        print(f"{name}: top1 {m['top1']} top3 {m['top3']} ECE {m['ece']:.3f} log-loss {m['mean_log_loss']:.3f}; "
              f"answer right {m['accuracy_of_top_answer']:.2f}; "
              f"wrong top-1 p {np.round(m['wrong_top1_probabilities'], 3).tolist()}; truth absent: top p "
              f"{np.round(m['top_probability_truth_absent'], 3).tolist()}", file=stream, flush=True)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def plot_reliability(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = result["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4.0), squeeze=False)
    for ax, (name, s) in zip(axes[0], sets.items()):
        m = s["summary"]
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        bins = m["reliability"]
        ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], s=[20 + 6 * b["n"] for b in bins],
                   alpha=0.7)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("confidence of the top answer")
        ax.set_ylabel("fraction right")
        ax.set_title(f"{name}: ECE {m['ece']:.3f}, n={m['n']}", fontsize=9)
    fig.suptitle(f"xas-bench real ({result['model']}): reliability (marker area = answers)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_parsers(sub) -> None:
    """The ``real`` and ``calibrate`` subcommands of ``xas-bench``."""
    for name, helptext in (("real", "rank real measured references and held-out simulated measurements; "
                                    "accuracy and calibration (test data)"),
                           ("calibrate", "choose the ranking's discrepancy settings on validation data")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", default="cu-k", choices=("cu-k", "o-k", "n-k"))
        p.add_argument("--tasks", type=int, default=60, help="simulated measurements")
        p.add_argument("--candidates", type=int, default=40, help="candidates per simulated measurement")
        p.add_argument("--seed", type=int, default=20261202)
        p.add_argument("--out", type=Path, default=RESULTS)
        if name == "calibrate":
            p.add_argument("--write", action="store_true",
                           help="store the best settings as the model's (xas_callbacks/ranking_settings.json)")
            p.add_argument("--readout-only", action="store_true",
                           help="keep the model's stored settings and fit only the calibrated read-out on them")
            p.add_argument("--live-samples", type=int, default=LIVE_SAMPLES,
                           help="validation samples measured live (adaptive and conventional scans through the "
                                "simulated endstation) for the read-out; 0: none")
        else:
            p.add_argument("--no-readout", action="store_true",
                           help="rank without the calibrated read-out (RankingConfig.confidence), to compare")


def run(args, stream=sys.stdout) -> int:
    """Run ``xas-bench real`` or ``xas-bench calibrate`` with parsed ``args``."""
    if args.command == "calibrate":
        result = calibrate(args.model, args.tasks, args.candidates, args.seed, stream,
                           readout_only=getattr(args, "readout_only", False),
                           live_samples=getattr(args, "live_samples", LIVE_SAMPLES))
        path = args.out / f"calibration_{args.model}.json"
        if args.write:
            root = RESULTS.parent.parent
            source = path.resolve().relative_to(root) if path.resolve().is_relative_to(root) else path
            write_settings(args.model, result["best"]["settings"], source=str(source))
    else:
        readout = not getattr(args, "no_readout", False)
        result = real(args.model, args.tasks, args.candidates, args.seed, stream, readout=readout)
        path = args.out / f"real_{args.model}{'' if readout else '_no-readout'}.json"
        plot_reliability(result, path.with_suffix(".png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {path}", file=stream)
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="xas-bench")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    sys.exit(run(parser.parse_args()))
