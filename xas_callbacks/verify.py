"""Physics check of a ranking: FEFF10 spectra of the best candidates against the measurement.

:func:`verify_top` computes FEFF10 spectra of the ``K`` best candidates of a ranking
(:func:`models.feff.runner.compute_spectra`) and compares the measured spectrum with the model's
prediction and with FEFF at the ranking's fitted offset and broadening (:func:`compare_with_feff`),
so that a wrong model shows up as "model disagrees with FEFF" rather than as a wrong sample.
Used by ``xas-rank --verify-top K``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xas_callbacks.candidates import CandidateLibrary
from xas_callbacks.ranking import RankingEngine, RankingResult

logger = logging.getLogger(__name__)

__all__ = ["Verification", "absorber_and_edge", "compare_with_feff", "plot_verification", "verify_top",
           "VERIFY_STAGE_TIMEOUT"]

#: Verification verdicts, in normalised units (edge steps). Model and FEFF agree when their RMS
#: difference on the measured points is below ``AGREE_RMS`` or below ``DISAGREE_FACTOR`` times
#: the measured-vs-FEFF RMS (a difference the data cannot resolve).
AGREE_RMS = 0.05
DISAGREE_FACTOR = 2.0
#: RMS (edge steps) of the better of measured-vs-model and measured-vs-FEFF above which neither
#: explains the measurement: the candidate is probably not the sample.
POOR_FIT_RMS = 0.1
#: Fewest measured points, inside both the model's and FEFF's energy range, for a comparison.
MIN_VERIFY_POINTS = 5
#: Default seconds per FEFF stage before a verification run is given up.
VERIFY_STAGE_TIMEOUT = 600.0


# ------------------------------------------------------------------------------------------------
# --verify-top: FEFF10 spectra of the best candidates against the measurement and the model
# ------------------------------------------------------------------------------------------------


@dataclass
class Verification:
    """What :func:`verify_top` found.

    Attributes
    ----------
    entries : list of dict
        JSON-ready, one per candidate checked, in ranking order: ``name``, ``rank``,
        ``probability``, ``source``, ``status`` (``"verified"``, ``"unverifiable"``: no
        structure source, or ``"error"``), ``reason`` (for the last two), and for verified ones
        the metrics of :func:`compare_with_feff`, ``verdict``, ``verdict_text``,
        ``feff_seconds``.
    curves : dict
        name -> arrays for plots: ``energy``, ``measured``, ``sigma``, ``model``, ``feff``
        (fitted amplitude and background applied, at the ranking's offset and broadening).
    settings : dict
        Absorber, edge, cards, workers, stage timeout, wall seconds, what "model" means.
    """

    entries: list[dict] = field(default_factory=list)
    curves: dict[str, dict] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _fit_metrics(y: np.ndarray, var: np.ndarray, m: np.ndarray, s: np.ndarray, a: float, b: float,
                 floor: float) -> dict:
    """Misfit of measured ``y`` against ``a m + b`` with the ranking's noise model
    (counting variance + model variance + floor^2)."""
    fit = a * m + b
    res = y - fit
    n = y.size
    return {
        "chi2_reduced": float(np.sum(res**2 / (var + s**2 + floor**2)) / max(n - 2, 1)),
        "r_factor": float(np.sum(res**2) / max(np.sum(y**2), 1e-30)),
        "rms": float(np.sqrt(np.mean(res**2))),
        "pearson": _pearson(y, m),
        "amplitude": float(a),
        "background": float(b),
        "n_points": int(n),
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt(np.sum(x**2) * np.sum(y**2))
    return float(np.sum(x * y) / den) if den > 0 else float("nan")


def compare_with_feff(engine: RankingEngine, result: RankingResult, energies: np.ndarray,
                      model_mean: np.ndarray, model_std: np.ndarray, feff_energy: np.ndarray,
                      feff_mu: np.ndarray) -> tuple[dict, dict]:
    """Measured vs model, measured vs FEFF and model vs FEFF, the ranking's way.

    The model spectrum and the FEFF spectrum (resampled onto the model grid) become the two
    candidates of a :class:`RankingEngine` with the ranking's own configuration, fed the
    ranking's normalised measured points (``engine.points``) that lie, at the ranking's fitted
    offset, inside both spectra's energy ranges. Both are evaluated at that offset
    (``result.offset_mean``) and broadening (``result.broadening_map``) with the engine's
    :meth:`~RankingEngine.model_at` and fitted amplitude/background
    (:meth:`~RankingEngine.best_fit`); misfits use the ranking's noise model.

    Returns
    -------
    metrics : dict
        ``measured_vs_model`` and ``measured_vs_feff`` (``chi2_reduced``, ``r_factor``, ``rms``
        (edge steps), ``pearson``, ``amplitude``, ``background``, ``n_points``),
        ``model_vs_feff`` (``rms``, ``pearson``, ``r_factor`` relative to FEFF, ``z2``: mean
        squared difference in units of the model's 1-sigma and floor; both are normalised mu,
        compared as they are, without a fitted amplitude or background), ``log_evidence_feff_minus_model``
        (the ranking's log-evidence at the fitted offset and broadening), ``model_best_offset_eV``
        and ``feff_best_offset_eV`` (where each alone fits best at the ranking's broadening),
        ``feff_best_broadening_eV`` (FEFF's best broadening over all offsets; the ranking's
        broadening was fitted to the model spectra), ``offset_eV``, ``broadening_eV``,
        ``energy_range_eV`` (measured energies compared).
    curves : dict
        ``energy``, ``measured``, ``sigma``, ``model``, ``feff`` for plots.

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_VERIFY_POINTS` measured points where both spectra are defined.
    """
    cfg = engine.config
    energies = np.asarray(energies, dtype=float)
    feff_energy = np.asarray(feff_energy, dtype=float)
    feff_mu = np.asarray(feff_mu, dtype=float)
    off, bw = float(result.offset_mean), float(result.broadening_map)
    E, y, var = engine.points
    lo, hi = max(energies[0], feff_energy[0]), min(energies[-1], feff_energy[-1])
    keep = (E + off >= lo) & (E + off <= hi)
    if keep.sum() < MIN_VERIFY_POINTS:
        raise ValueError(
            f"only {int(keep.sum())} measured points lie where both the model "
            f"[{energies[0]:.1f}, {energies[-1]:.1f}] eV and FEFF [{feff_energy[0]:.1f}, "
            f"{feff_energy[-1]:.1f}] eV are defined at offset {off:+.2f} eV"
        )
    E, y, var = E[keep], y[keep], var[keep]
    feff_on_grid = np.interp(energies, feff_energy, feff_mu)
    pair = RankingEngine(["model", "feff"], energies,
                         np.vstack([model_mean, feff_on_grid]),
                         np.vstack([model_std, np.zeros_like(feff_on_grid)]), config=cfg)
    pair.add_points(E, y, var)
    E, y, var = pair.points
    if E.size < MIN_VERIFY_POINTS:
        raise ValueError(f"only {E.size} measured points inside the ranking window {pair.window}")
    mm, sm = pair.model_at(0, E, off, bw)
    mf, sf = pair.model_at(1, E, off, bw)
    am, bm = pair.best_fit(0, off, bw)
    af, bf = pair.best_fit(1, off, bw)
    diff = mm - mf
    L = pair.log_evidence_cells()[0]  # (2, W, O): the first (tightest) discrepancy level
    jb = int(np.argmin(np.abs(pair.broadenings - bw)))
    jo = int(np.argmin(np.abs(pair.offsets - off)))
    metrics = {
        "measured_vs_model": _fit_metrics(y, var, mm, sm, am, bm, cfg.model_floor),
        "measured_vs_feff": _fit_metrics(y, var, mf, sf, af, bf, cfg.model_floor),
        "model_vs_feff": {
            "rms": float(np.sqrt(np.mean(diff**2))),
            "pearson": _pearson(mm, mf),
            "r_factor": float(np.sum(diff**2) / max(np.sum(mf**2), 1e-30)),
            "z2": float(np.mean(diff**2 / (sm**2 + cfg.model_floor**2))),
        },
        "log_evidence_feff_minus_model": float(L[1, jb, jo] - L[0, jb, jo]),
        "model_best_offset_eV": float(pair.offsets[int(np.argmax(L[0, jb]))]),
        "feff_best_offset_eV": float(pair.offsets[int(np.argmax(L[1, jb]))]),
        "feff_best_broadening_eV": float(
            pair.broadenings[int(np.unravel_index(np.argmax(L[1]), L[1].shape)[0])]),
        "offset_eV": off,
        "broadening_eV": bw,
        "energy_range_eV": [float(E[0]), float(E[-1])],
    }
    curves = {"energy": E, "measured": y, "sigma": np.sqrt(var), "model": am * mm + bm,
              "feff": af * mf + bf}
    return metrics, curves


def _verdict(name: str, metrics: dict, what: str) -> tuple[str, str]:
    """(code, sentence) from the RMS misfits; ``what`` names the compared spectrum ("model")."""
    mm = metrics["measured_vs_model"]["rms"]
    mf = metrics["measured_vs_feff"]["rms"]
    xf = metrics["model_vs_feff"]["rms"]
    numbers = f"RMS measured-{what} {mm:.3f}, measured-FEFF {mf:.3f}, {what}-FEFF {xf:.3f}"
    if xf <= max(AGREE_RMS, DISAGREE_FACTOR * mf):
        code, text = "agrees", f"{what} agrees with FEFF for {name}"
    elif mf < mm:
        code, text = "trust-feff", f"{what} disagrees with FEFF for {name}: trust FEFF"
        if metrics["model_vs_feff"]["z2"] <= 1.0:
            text += f" (the {what}'s own 1-sigma covers the difference)"
    else:
        code, text = "disagree", (f"{what} and FEFF disagree for {name} and the measurement is "
                                  f"closer to the {what}: either the {what} is wrong and {name} is "
                                  "not the sample, or FEFF's cards are too coarse")
    if min(mm, mf) > POOR_FIT_RMS:
        text += f"; neither fits the measurement: {name} is probably not the sample"
    return code, f"{text} ({numbers})"


def _feff_settings(kind: str, edge: str, full_cards: bool):
    """(cards, cluster_radius, label) for molecules or crystals."""
    from models.feff.inputs import (CLUSTER_RADIUS, CRYSTAL_CARDS, MOLECULE_CARDS,
                                    QUICK_CLUSTER_RADIUS, QUICK_CRYSTAL_CARDS)

    if kind == "molecule":
        return MOLECULE_CARDS.with_(edge=edge), CLUSTER_RADIUS, "molecule cards (the QM9 set's)"
    if full_cards:
        return CRYSTAL_CARDS.with_(edge=edge), CLUSTER_RADIUS, f"full crystal cards, {CLUSTER_RADIUS:g} A cluster"
    return (QUICK_CRYSTAL_CARDS.with_(edge=edge), QUICK_CLUSTER_RADIUS,
            f"quick crystal cards (SCF {QUICK_CRYSTAL_CARDS.scf}, FMS {QUICK_CRYSTAL_CARDS.fms}), "
            f"{QUICK_CLUSTER_RADIUS:g} A cluster")


def verify_top(engine: RankingEngine, result: RankingResult, library: CandidateLibrary, k: int, *,
               absorber: str, edge: str = "K", n_workers: int | None = None,
               stage_timeout: float | None = VERIFY_STAGE_TIMEOUT, full_cards: bool = False,
               progress: bool = True) -> Verification:
    """FEFF10 spectra of the ``k`` best-ranked candidates, compared with measurement and model.

    Parameters
    ----------
    engine, result : RankingEngine, RankingResult
        The ranking (its normalised points, configuration, offset and broadening are used).
    library : CandidateLibrary
        The ranked candidates; their structures come from :attr:`CandidateLibrary.sources`.
    k : int
        How many of the best candidates to compute.
    absorber, edge : str
        Absorbing element and edge.
    n_workers : int, optional
        FEFF worker processes (default: all cores).
    stage_timeout : float, optional
        Seconds per FEFF stage before a candidate is given up (None: no limit).
    full_cards : bool
        Crystals with the full cards (:data:`models.feff.inputs.CRYSTAL_CARDS`, 10 A) instead of
        the quick ones (:data:`~models.feff.inputs.QUICK_CRYSTAL_CARDS`,
        :data:`~models.feff.inputs.QUICK_CLUSTER_RADIUS`). Molecules always use the QM9 set's
        cards (:data:`~models.feff.inputs.MOLECULE_CARDS`).
    progress : bool
        A log line and a progress bar (stderr) while FEFF runs.

    Returns
    -------
    Verification
        Candidates without a structure source are ``"unverifiable"``; ones whose structure
        cannot be read, that FEFF cannot take or whose FEFF run fails are ``"error"`` with the
        reason; the others are compared (:func:`compare_with_feff`) and get a verdict.
    """
    from pymatgen.core import Structure
    from tqdm.auto import tqdm

    from models.feff.inputs import structure_inputs
    from models.feff.runner import compute_spectra

    start = time.perf_counter()
    computed = str(library.provenance.get("model") or "").endswith("computed")
    what = "library spectrum" if computed else "model"
    index = {n: i for i, n in enumerate(library.names)}
    workers = max(1, int(n_workers or os.cpu_count() or 1))
    out = Verification(settings={
        "absorber": absorber, "edge": edge, "k": int(k), "workers": workers,
        "stage_timeout_s": stage_timeout, "compared_with": what,
        "model": library.provenance.get("model"),
    })
    if computed:
        out.settings["note"] = ("the library holds computed spectra, not model predictions: the "
                                "'model' columns compare with the library's own spectrum")
    feff_missing = importlib.util.find_spec("feff10") is None
    pending: dict[str, list] = {"molecule": [], "crystal": []}  # (entry, structure, n_sites)
    for rank, name in enumerate(result.names[: max(int(k), 0)], start=1):
        src = library.sources[index[name]]
        entry = {"name": name, "rank": rank, "probability": float(result.probabilities[rank - 1]),
                 "source": src if isinstance(src, str) or src is None else "pymatgen object",
                 "status": None}
        out.entries.append(entry)
        if src is None:
            entry.update(status="unverifiable", reason="no structure source in the candidate "
                         "library (built from bare spectra or saved before sources were kept)")
            continue
        if feff_missing:
            entry.update(status="error", reason="FEFF10 (feff10-rs) is not installed: "
                         "pip install 'steered-xas[feff]'")
            continue
        try:
            structure = library.structure_of(name)
            kind = "crystal" if isinstance(structure, Structure) else "molecule"
            cards, radius, _ = _feff_settings(kind, edge, full_cards)
            n_sites = len(structure_inputs(structure, absorber, cards, radius, name=name))
        except Exception as exc:  # noqa: BLE001 -- StructureError, FeffInputError, ...: reported
            entry.update(status="error", reason=f"{type(exc).__name__}: {exc}")
            continue
        if n_sites == 0:
            entry.update(status="error", reason=f"{name}: no {absorber} site to compute")
            continue
        entry.update(kind=kind, n_sites=n_sites)
        pending[kind].append((entry, structure, n_sites))

    n_pending = sum(len(v) for v in pending.values())
    if n_pending:
        n_sites = sum(t[2] for v in pending.values() for t in v)
        if progress:
            print(f"FEFF10: verifying {_plural(n_pending, 'candidate')} "
                  f"({_plural(n_sites, f'{absorber} {edge} site')}) with "
                  f"{_plural(min(workers, n_sites), 'worker')}; tens of seconds to minutes per "
                  "site ...",
                  file=sys.stderr, flush=True)
        bar = tqdm(total=n_pending, desc="FEFF verify", unit="cand", disable=not progress,
                   file=sys.stderr)
        spectra: dict[str, tuple] = {}
        try:
            for kind, items in pending.items():
                if not items:
                    continue
                cards, radius, label = _feff_settings(kind, edge, full_cards)
                out.settings[f"{kind}_cards"] = label
                # chunks of about one site per worker, so the bar moves as candidates finish
                chunks, cur, cur_sites = [], [], 0
                for item in items:
                    cur.append(item)
                    cur_sites += item[2]
                    if cur_sites >= workers:
                        chunks.append(cur)
                        cur, cur_sites = [], 0
                if cur:
                    chunks.append(cur)
                for chunk in chunks:
                    t0 = time.perf_counter()
                    bar.set_postfix_str(", ".join(e["name"] for e, _, _ in chunk)[:40])
                    failures: dict[int, str] = {}
                    try:
                        res = _with_ticking_bar(
                            bar, compute_spectra,
                            [s for _, s, _ in chunk], absorber, cards=cards, cluster_radius=radius,
                            n_workers=workers, names=[e["name"] for e, _, _ in chunk],
                            on_error="skip", stage_timeout=stage_timeout, errors=failures)
                    except Exception as exc:  # noqa: BLE001 -- e.g. no worker process could start
                        logger.warning("FEFF verification of %s failed: %s",
                                       [e["name"] for e, _, _ in chunk], exc)
                        for entry, _, _ in chunk:
                            entry.update(status="error", reason=f"FEFF10 could not run: "
                                         f"{type(exc).__name__}: {exc}")
                        bar.update(len(chunk))
                        continue
                    dt = time.perf_counter() - t0
                    for j, ((entry, _, _), spec) in enumerate(zip(chunk, res)):
                        entry["feff_seconds"] = round(dt, 1)
                        if spec is None:
                            why = failures.get(j, "no spectrum came back").split("\n--- FEFF log")[0]
                            entry.update(status="error", reason=(
                                f"{entry['name']}: FEFF10 run failed: {why[:500]}; run `xas-feff "
                                "structures` on its structure for FEFF's whole log"))
                        else:
                            spectra[entry["name"]] = spec
                    bar.update(len(chunk))
        finally:
            bar.close()
        for entry in out.entries:
            if entry["name"] not in spectra:
                continue
            i = index[entry["name"]]
            try:
                metrics, curves = compare_with_feff(engine, result, library.energies,
                                                    library.mean[i], library.std[i],
                                                    *spectra[entry["name"]])
            except ValueError as exc:
                entry.update(status="error", reason=f"{entry['name']}: {exc}")
                continue
            code, text = _verdict(entry["name"], metrics, what)
            entry.update(status="verified", verdict=code, verdict_text=text, **metrics)
            out.curves[entry["name"]] = curves
    out.settings["wall_seconds"] = round(time.perf_counter() - start, 1)
    return out


def _with_ticking_bar(bar, func, *args, **kwargs):
    """``func(*args, **kwargs)`` in a helper thread while ``bar`` redraws its elapsed time every
    second (a FEFF chunk can take minutes without finishing a candidate)."""
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(func, *args, **kwargs)
        while True:
            try:
                return fut.result(timeout=1.0)
            except cf.TimeoutError:
                bar.refresh()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def plot_verification(ver: Verification, path, title: str = "") -> Path | None:
    """One panel per verified candidate: measured points, model and FEFF (fitted amplitude and
    background, at the ranking's offset and broadening). Returns the PNG path, or None when
    nothing was verified."""
    if not ver.curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in ver.entries if e["name"] in ver.curves]
    n = len(entries)
    ncols = min(n, 3)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.6 * ncols, 8.0), 3.6 * nrows + 0.3),
                             squeeze=False)
    what = ver.settings.get("compared_with", "model")
    for ax, entry in zip(axes.flat, entries):
        c = ver.curves[entry["name"]]
        ax.errorbar(c["energy"], c["measured"], yerr=c["sigma"], fmt="o", ms=2, color="k", lw=0.5,
                    label="measured", zorder=5)
        ax.plot(c["energy"], c["model"], color="C0",
                label=f"{what} RMS {entry['measured_vs_model']['rms']:.3f}")
        ax.plot(c["energy"], c["feff"], color="C3", ls="--",
                label=f"FEFF10 RMS {entry['measured_vs_feff']['rms']:.3f}")
        ax.set_title(f"#{entry['rank']} {entry['name']}: {entry['verdict']}", fontsize=9)
        ax.set_xlabel("energy (eV)")
        ax.set_ylabel("normalised mu")
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def absorber_and_edge(library: CandidateLibrary, absorber: str | None,
                       edge: str | None) -> tuple[str, str]:
    """The absorber and edge for FEFF: given, else the library's provenance, else those of the
    model that predicted the library (not ``--model``: a saved or computed library may not
    come from it)."""
    prov = library.provenance
    absorber = absorber or prov.get("element") or prov.get("absorber")
    edge = edge or prov.get("edge")
    name = prov.get("model") if not str(prov.get("model") or "").endswith("computed") else None
    if absorber is None and name:
        try:
            from models import load_predictor

            pred = load_predictor(name)
            absorber, edge = pred.element, edge or pred.edge
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"--verify-top: cannot tell the absorber from the library's model "
                             f"{name!r} ({exc}); give --absorber") from exc
    if absorber is None:
        raise ValueError("--verify-top: the candidate library does not say which element absorbs; "
                         "give --absorber")
    return str(absorber), str(edge or "K")
