"""``xas-rank``: rank candidate structures against a measured spectrum file.

::

    xas-rank SPECTRUM --candidates PATH [--model NAME] [--json FILE] [--plot PNG] [--verify-top K]

SPECTRUM: an XDI file (raw ``i0``/``itrans``/``ifluor``/``irefer`` counts or a ``mu*`` column),
an Athena project (``.prj``, via ``larch.io.read_athena``) or two-column text (energy, mu).
PATH: a FEFF materials folder (computed spectra, no model needed), a folder of structure files,
a SMILES file, a saved library ``.npz``, or a candidate source such as ``amcsd:Cu``,
``qm9:O?count=2000&seed=0`` or ``enumerate:CuO?substitute=auto&keep=Cu&count=50``
(:mod:`models.sources`).

``--verify-top K`` checks the ranking with physics: FEFF10 spectra of the K best candidates are
computed and the measured spectrum is compared with the model prediction and with FEFF at the
ranking's fitted offset and broadening (:mod:`xas_callbacks.verify`), so that a wrong model shows
up as "model disagrees with FEFF".
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from endstation.measured import read_spectrum
from models.jsonable import json_default
from models.sources import is_source
from xas_callbacks.candidates import CandidateLibrary
from xas_callbacks.ranking import RankingConfig, rank_spectrum
from xas_callbacks.verify import (
    VERIFY_STAGE_TIMEOUT,
    Verification,
    absorber_and_edge,
    plot_verification,
    verify_top,
)

logger = logging.getLogger(__name__)

__all__ = ["main", "build_parser"]

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xas-rank", description=__doc__.split("\n\n")[0])
    p.add_argument("spectrum", help="measured spectrum: XDI, Athena .prj or two-column text")
    p.add_argument("--candidates", required=True,
                   help="FEFF materials folder, folder of structures, SMILES file, library .npz or a "
                        "candidate source: amcsd:Cu, qm9:O?count=2000&seed=0, enumerate:CuO?count=50")
    p.add_argument("--model", default="cu-k", help="predictor name or weights path (default cu-k)")
    p.add_argument("--ids", nargs="*", help="only these candidate names")
    p.add_argument("--json", dest="json_path", help="write the ranking as JSON here")
    p.add_argument("--plot", dest="plot_path", help="write a PNG plot here")
    p.add_argument("--mode", choices=["transmission", "fluorescence", "reference"])
    p.add_argument("--group", help="group of an Athena project")
    p.add_argument("--e0", type=float, help="edge energy for the normalisation")
    p.add_argument("--offset-prior", nargs=2, type=float, metavar=("MEAN", "SD"),
                   help="Gaussian prior of the common calibration offset (eV), e.g. from a foil measured "
                        "separately: used instead of the one the edges give")
    p.add_argument("--offset-range", nargs=2, type=float, metavar=("MIN", "MAX"))
    p.add_argument("--model-std", type=float, default=0.0,
                   help="1-sigma given to computed spectra without their own (default 0)")
    p.add_argument("--top", type=int, default=10, help="lines printed")
    v = p.add_argument_group("physics check of the ranking (FEFF10)")
    v.add_argument("--verify-top", type=int, default=0, metavar="K",
                   help="compute FEFF10 spectra of the K best candidates and compare measured, "
                        "model and FEFF (needs the feff extra; minutes per crystal site)")
    v.add_argument("--absorber", help="absorbing element for FEFF (default: the library's/model's)")
    v.add_argument("--edge", help="edge for FEFF (default: the library's/model's, else K)")
    v.add_argument("--feff-workers", type=int, default=None,
                   help="FEFF worker processes (default: all cores)")
    v.add_argument("--feff-stage-timeout", type=float, default=VERIFY_STAGE_TIMEOUT,
                   help=f"seconds per FEFF stage before a candidate is given up "
                        f"(default {VERIFY_STAGE_TIMEOUT:g}; 0: no limit)")
    v.add_argument("--feff-full-cards", action="store_true",
                   help="crystals with the full cards and 10 A cluster instead of the quick ones")
    v.add_argument("--no-progress", action="store_true", help="no FEFF progress line or bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = read_spectrum(args.spectrum, mode=args.mode, group=args.group)
        cpath = Path(args.candidates)
        is_feff = not is_source(args.candidates) and cpath.is_dir() and any(
            (p / "FEFF-XANES").is_dir() for p in list(cpath.iterdir())[:50])
        if is_feff:
            library = CandidateLibrary.from_feff(cpath, ids=args.ids or None, default_std=args.model_std)
        else:
            library = CandidateLibrary.from_source(args.candidates, model=args.model)
            if args.ids:
                library = library.subset(args.ids)
        if len(library) == 0:
            raise ValueError(f"no candidate has a spectrum; failures: {library.failures}")
        cfg_kw = {}
        if args.offset_range:
            cfg_kw.update(offset_min=args.offset_range[0], offset_max=args.offset_range[1])
        eng, res, nm = rank_spectrum(spec, library, RankingConfig.for_library(library, **cfg_kw), e0=args.e0,
                                     offset_prior=args.offset_prior)
        if args.verify_top > 0:
            absorber, edge = absorber_and_edge(library, args.absorber, args.edge)
    except (OSError, ValueError) as exc:
        print(f"xas-rank: error: {exc}", file=sys.stderr)
        return 2
    out = res.as_dict()
    out.update({
        "spectrum": str(args.spectrum),
        "spectrum_mode": spec["mode"],
        "normalization": {"e0": nm.e0, "edge_step": nm.edge_step, "method": nm.method},
        "n_points_outside_model_range": int(eng.n_outside),
        "failures": library.failures,
        "provenance": library.provenance,
    })
    for i, item in enumerate(out["ranking"][: args.top]):
        print(f"{i + 1:3d}  {item['name']:<28s} p={item['probability']:.4f}  "
              f"logZ={item['log_evidence']:.2f}")
    print(f"     {'none of these':<28s} p={res.p_none:.4f}" + (
        f"  (calibrated; the explicit alternative alone: {res.p_none_raw:.4f})" if res.confidence_features else ""))
    print(f"offset {res.offset_mean:+.2f} ± {res.offset_sd:.2f} eV, broadening "
          f"{res.broadening_mean:.2f} eV, entropy {res.entropy:.3f}, {res.n_points} points"
          + (f", {len(library.failures)} candidates failed" if library.failures else ""))
    for warning in res.warnings:
        print(f"warning: {warning}")
    for name, note in (library.provenance.get("disorder") or {}).items():
        print(f"note: {name} is disordered; approximated by {note.get('n_samples')} ordered samples "
              f"({note.get('supercell')} supercell)")
    ver = None
    if args.verify_top > 0:
        ver = verify_top(eng, res, library, args.verify_top, absorber=absorber, edge=edge,
                         n_workers=args.feff_workers,
                         stage_timeout=args.feff_stage_timeout or None,
                         full_cards=args.feff_full_cards, progress=not args.no_progress)
        out["verify"] = ver.entries
        out["verify_settings"] = ver.settings
        _print_verification(ver)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out, indent=1, default=json_default))
    if args.plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from xas_callbacks.plotting import plot_ranking

        fig, ax = plt.subplots(figsize=(7, 4.2))
        plot_ranking(eng, res, ax, top=3, title=f"{Path(args.spectrum).name}: offset "
                     f"{res.offset_mean:+.2f} eV, broadening {res.broadening_mean:.1f} eV")
        fig.tight_layout()
        fig.savefig(args.plot_path, dpi=110)
        plt.close(fig)
        if ver is not None:
            vpath = Path(args.plot_path)
            vpath = vpath.with_name(f"{vpath.stem}-verify{vpath.suffix or '.png'}")
            if plot_verification(ver, vpath, title=f"{Path(args.spectrum).name}: measured, "
                                 f"{ver.settings['compared_with']} and FEFF10 at offset "
                                 f"{res.offset_mean:+.2f} eV, broadening {res.broadening_map:.1f} eV"):
                print(f"verification plot: {vpath}")
    return 0


def _print_verification(ver: Verification) -> None:
    s = ver.settings
    what = s["compared_with"]
    print(f"verify: FEFF10 of the top {s['k']} ({s['absorber']} {s['edge']}), "
          f"{s['wall_seconds']} s" + (f"; {s['note']}" if "note" in s else ""))
    for e in ver.entries:
        head = f"{e['rank']:3d}  {e['name']:<28s}"
        if e["status"] != "verified":
            print(f"{head} {e['status']}: {e['reason'].splitlines()[0]}")
            continue
        mm, mf, xf = e["measured_vs_model"], e["measured_vs_feff"], e["model_vs_feff"]
        print(f"{head} measured~{what}: RMS {mm['rms']:.3f} r={mm['pearson']:.3f} | "
              f"measured~FEFF: RMS {mf['rms']:.3f} r={mf['pearson']:.3f} | "
              f"{what}~FEFF: RMS {xf['rms']:.3f} r={xf['pearson']:.3f}")
        print(f"     -> {e['verdict_text']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
