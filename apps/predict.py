"""``xas-predict``: predict XANES of structures with a shipped or trained model.

Examples::

    xas-predict CCO "O=C(O)C" --model o-k --plot spectra.png --json spectra.json
    xas-predict Cu2O.cif --model cu-k
    xas-predict --examples --model cu-k --plot examples.png
    xas-predict "amcsd:Cu?minerals=tenorite,cuprite" --model cu-k
    xas-predict "qm9:formula=C2H6O" --model o-k --json c2h6o.json

A candidate source (``amcsd:``, ``qm9:``, ``enumerate:``, :mod:`models.sources`) stands for its
structures; they are predicted as a candidate library is (disordered crystals averaged over
ordered samples, items that cannot be made or predicted listed as skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "models" / "examples"


def example_structures(predictor) -> list[str]:
    """Shipped example structure files (``models/examples/``) that suit the model.

    A file suits the model when it is of the model's kind (crystal or molecule) and holds the
    absorbing element; the others belong to the other model and are left out.
    """
    from pymatgen.core import IStructure, Structure

    from models.structures import StructureError, load_structure

    if not EXAMPLES_DIR.exists():
        return []
    files = sorted(p for p in EXAMPLES_DIR.iterdir()
                   if p.is_file() and not p.name.startswith((".", "_")) and p.suffix.lower() not in (".py", ".md", ".txt", ".pyc"))
    chosen = []
    for path in files:
        try:
            structure = load_structure(str(path))
        except StructureError:
            continue
        is_crystal = isinstance(structure, (Structure, IStructure))
        if is_crystal != (predictor.kind == "crystal"):
            continue
        if predictor.element in {el.symbol for el in structure.composition.elements}:
            chosen.append(str(path))
    return chosen


def plot_prediction(prediction, path: str | Path, title: str = "") -> None:
    """Mean with 1- and 2-sigma bands per structure, labelled axes; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(prediction.names)
    fig, ax = plt.subplots(figsize=(7.5, 4.5 + 0.1 * max(0, n - 8)))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    e = prediction.energies
    for i, name in enumerate(prediction.names):
        c = colors[i % len(colors)]
        m, s = prediction.mean[i], prediction.std[i]
        ax.fill_between(e, m - 2 * s, m + 2 * s, color=c, alpha=0.12, lw=0)
        ax.fill_between(e, m - s, m + s, color=c, alpha=0.25, lw=0)
        ax.plot(e, m, color=c, lw=1.5, label=name)
    ax.set_xlabel("Energy (eV)")
    ax.set_ylabel("normalised mu")
    ax.set_title(title or "Predicted XANES (bands: 1 and 2 sigma)")
    if n <= 12:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prediction_json(prediction, predictor) -> dict:
    """JSON-able dict: model provenance, energies and per-structure mean and std."""
    return {
        "model": predictor.name,
        "element": predictor.element,
        "edge": predictor.edge,
        "weights_sha256": predictor.weights_sha256,
        "energies_eV": [float(x) for x in prediction.energies],
        "spectra": [
            {"name": name, "mean": np.asarray(prediction.mean[i], float).round(6).tolist(),
             "std": np.asarray(prediction.std[i], float).round(6).tolist()}
            for i, name in enumerate(prediction.names)
        ],
        "failures": prediction.failures,
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``xas-predict``."""
    p = argparse.ArgumentParser(prog="xas-predict", description="Predict XANES (mean and 1-sigma) of structures.")
    p.add_argument("structures", nargs="*", help="CIF/POSCAR/XYZ/pymatgen-JSON files, SMILES strings or "
                   "candidate sources (amcsd:Cu, qm9:O?count=10, enumerate:CuO?count=5)")
    p.add_argument("--model", required=True, help="shipped model name (cu-k, o-k, n-k) or path to a .pt file")
    p.add_argument("--plot", metavar="PNG", help="write a plot of the spectra with 1- and 2-sigma bands")
    p.add_argument("--json", metavar="FILE", help="write energies, mean and std per structure as JSON")
    p.add_argument("--examples", action="store_true", help="also predict the shipped example structures")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (a minute to compile; for thousands of structures)")
    p.add_argument("--skip-errors", action="store_true", help="report bad structures instead of stopping")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xas-predict``; returns the exit status."""
    from models.predictor import load_predictor

    args = build_parser().parse_args(argv)
    try:
        predictor = load_predictor(args.model, device=args.device, compile=args.compile)
    except (FileNotFoundError, ValueError) as exc:
        print(f"xas-predict: {exc}", file=sys.stderr)
        return 2
    items = list(args.structures)
    on_error = "skip" if args.skip_errors else "raise"
    if args.examples:
        items += example_structures(predictor)
    if not items:
        print("xas-predict: give at least one structure or --examples", file=sys.stderr)
        return 2
    from models.sources import is_source, parse_source

    try:
        sources = [parse_source(i) for i in items if is_source(i)]
    except ValueError as exc:  # a bad candidate source, before anything is read or predicted
        print(f"xas-predict: {exc}", file=sys.stderr)
        return 2
    try:
        if sources:
            from xas_callbacks.candidates import CandidateLibrary

            # a library: disordered crystals averaged over ordered samples, skipped items listed
            result = CandidateLibrary.from_structures(items, model=predictor, batch_size=args.batch_size)
        else:
            result = predictor.predict(items, batch_size=args.batch_size, on_error=on_error)
    except Exception as exc:  # noqa: BLE001 - shown to the user, exit status 1
        print(f"xas-predict: {exc}", file=sys.stderr)
        return 1
    for i, name in enumerate(result.names):
        k = int(np.argmax(result.mean[i]))
        print(f"{name}: white line {result.energies[k]:.1f} eV, mu_max {result.mean[i, k]:.3f} "
              f"+/- {result.std[i, k]:.3f}")
    for name, reason in result.failures.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(prediction_json(result, predictor), indent=1) + "\n")
    if args.plot and len(result.names):
        plot_prediction(result, args.plot, title=f"{predictor.name} ({predictor.element} {predictor.edge}-edge)")
    return 0 if len(result.names) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
