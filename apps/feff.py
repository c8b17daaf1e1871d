"""``xas-feff``: generate FEFF10 XANES training/verification spectra, resumably and in parallel.

Examples
--------
QM9 N K-edge set, continuing the fixed order of the shared QM9 sets::

    nice -n 19 xas-feff qm9 --absorber N --count 2000 --out ~/.local/share/steered-xas/feff/qm9_n_k_feff10

Crystals (CIF/POSCAR/JSON files; one folder per structure in the Cu-set layout), on a Dask
cluster::

    xas-feff structures data/*.cif --absorber Cu --out runs/cu --scheduler tcp://head:8786

Re-running the same command skips what is already done; ``--retry-failed`` re-runs failures.

Keep what a background QM9 batch has computed in the project (gzip JSON lines + provenance
README under ``data/``; re-running merges new lines in, see :mod:`models.feff.snapshot`)::

    xas-feff snapshot --from /work/feff-out/qm9_o_k_ext --to data/qm9_o_k_feff10_ext

A Dask cluster for ``--scheduler``: start ``dask scheduler`` on one node and
``dask worker tcp://<head>:8786 --nworkers <cores> --nthreads 1`` on each compute node (FEFF is
single-threaded: one worker process per core), with ``steered-xas[feff]`` installed on every node.
Each absorber site is one task, so throughput grows linearly with the cores until the scheduler
(~1 ms per task against ~10 s of FEFF per site) becomes the limit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from models.feff.inputs import CLUSTER_RADIUS, CRYSTAL_CARDS, MOLECULE_CARDS, FeffCards, FeffInputError
from models.feff.qm9 import QM9DataError
from models.feff.snapshot import DATA_LIMIT_MB, SnapshotError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--absorber", required=True, help="absorbing element, e.g. N, O, Cu")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: all cores)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786): run on that cluster")
    p.add_argument("--retry-failed", action="store_true", help="re-run structures/sites whose output is a failure")
    p.add_argument("--stage-timeout", type=float, default=None, help="seconds per FEFF stage before giving up on a site")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--summary-json", type=Path, default=None, help="also write the summary as JSON here")
    g = p.add_argument_group("FEFF cards (defaults: the shared sets' cards)")
    g.add_argument("--edge", default=None, help="EDGE card (default K)")
    g.add_argument("--s02", type=float, default=None, help="S02 (molecules 1.0, crystals 0.95)")
    g.add_argument("--scf", default=None, help="SCF card arguments (default '7.0')")
    g.add_argument("--fms", default=None, help="FMS card arguments (default '9.0')")
    g.add_argument("--corehole", default=None, help="COREHOLE card (default RPA = screened core hole)")
    g.add_argument("--xanes", default=None, help="XANES card arguments (default '4 0.04 0.1')")
    g.add_argument("--exchange", default=None, help="EXCHANGE card arguments (default '0')")
    g.add_argument("--card", action="append", default=[], help="extra card, verbatim (repeatable)")


def _cards(args: argparse.Namespace, base: FeffCards) -> FeffCards:
    changes = {
        k: getattr(args, k)
        for k in ("edge", "s02", "scf", "fms", "corehole", "xanes", "exchange")
        if getattr(args, k) is not None
    }
    if args.card:
        changes["extra"] = tuple(args.card)
    return base.with_(**changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xas-feff",
        description="Compute FEFF10 XANES (feff10-rs) for QM9 molecules or structure files; "
        "resumable, parallel over local processes or a Dask cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("qm9", help="QM9 molecules containing the absorber, in the fixed order (seed 20200716)")
    _add_common(q)
    q.add_argument("--count", type=int, required=True, help="number of molecules (from --start)")
    q.add_argument("--start", type=int, default=0, help="position in the fixed order to start at")
    q.add_argument("--file", default=None, help="JSONL file name inside --out (default qm9_<El>_<edge>_feff10.jsonl)")
    s = sub.add_parser("structures", help="structure files (CIF, POSCAR, XYZ, pymatgen JSON) or SMILES")
    _add_common(s)
    s.add_argument("inputs", nargs="+", help="structure files (or SMILES strings)")
    s.add_argument("--cluster-radius", type=float, default=CLUSTER_RADIUS, help="crystal cluster radius, Angstrom")
    n = sub.add_parser("snapshot", help="merge computed QM9 lines into a gzip JSON-lines file + README under data/")
    n.add_argument("--from", dest="sources", action="append", required=True, type=Path,
                   help="output folder (or .jsonl file) of `xas-feff qm9` (repeatable)")
    n.add_argument("--to", dest="dest", required=True, type=Path, help="destination folder, e.g. data/qm9_o_k_feff10_ext")
    n.add_argument("--feff-command", default=None, help="the command that computed the lines (for the README)")
    n.add_argument("--limit-mb", type=float, default=DATA_LIMIT_MB,
                   help=f"largest total size of the destination's parent folder (default {DATA_LIMIT_MB:g} MB)")
    return parser


def _finish(summary, args) -> int:
    print(summary)
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    return 0 if not summary.failed else 3


def _run_qm9(args: argparse.Namespace) -> int:
    from models.feff.qm9 import qm9_molecules
    from models.feff.runner import FeffJob, JsonlSink, run_batch

    cards = _cards(args, MOLECULE_CARDS)
    molecules = qm9_molecules(args.absorber, count=args.count, start=args.start)
    name = args.file or f"qm9_{args.absorber}_{cards.edge}_feff10.jsonl"
    sink = JsonlSink(args.out / name)
    print(f"{len(molecules)} QM9 molecules containing {args.absorber} (positions {args.start}.."
          f"{args.start + len(molecules) - 1} of the fixed order) -> {sink.path}", file=sys.stderr)
    jobs = (
        FeffJob(m.name, m.to_molecule(), args.absorber, cards, meta={"qm9_index": m.index, "smiles": m.smiles})
        for m in molecules
    )
    summary = run_batch(
        jobs, sink, n_workers=args.workers, scheduler=args.scheduler, retry_failed=args.retry_failed,
        stage_timeout=args.stage_timeout, progress=not args.no_progress, total=len(molecules),
    )
    return _finish(summary, args)


def _run_structures(args: argparse.Namespace) -> int:
    from pymatgen.core import Structure

    from models.feff.runner import BatchSummary, FeffJob, FolderSink, JsonlSink, run_batch
    from models.structures import StructureError, load_structure, structure_name

    crystals, molecules, bad = [], [], {}
    for src in args.inputs:
        name = structure_name(src)
        try:
            st = load_structure(src)
        except (StructureError, OSError) as exc:
            bad[name] = f"StructureError: {exc}"
            continue
        (crystals if isinstance(st, Structure) else molecules).append((name, st))
    total = BatchSummary(failed=dict(bad))
    for group, sink, base in (
        (crystals, FolderSink(args.out) if crystals else None, CRYSTAL_CARDS),
        (molecules, JsonlSink(args.out / f"molecules_{args.absorber}_{(args.edge or 'K')}_feff10.jsonl") if molecules else None, MOLECULE_CARDS),
    ):
        if not group:
            continue
        cards = _cards(args, base)
        jobs = [FeffJob(n, st, args.absorber, cards, args.cluster_radius) for n, st in group]
        s = run_batch(
            jobs, sink, n_workers=args.workers, scheduler=args.scheduler, retry_failed=args.retry_failed,
            stage_timeout=args.stage_timeout, progress=not args.no_progress,
        )
        total.done += s.done
        total.skipped_existing += s.skipped_existing
        total.failed.update(s.failed)
        total.sites_done += s.sites_done
        total.site_seconds += s.site_seconds
        total.job_seconds += s.job_seconds
        total.wall_seconds += s.wall_seconds
    return _finish(total, args)


def _run_snapshot(args: argparse.Namespace) -> int:
    from models.feff.snapshot import snapshot

    import shlex

    words = ["xas-feff snapshot", *[f"--from {p}" for p in args.sources], f"--to {args.dest}"]
    if args.feff_command:
        words.append(f"--feff-command {shlex.quote(args.feff_command)}")
    command = " ".join(words)
    print(snapshot(args.sources, args.dest, command=command, feff_command=args.feff_command, limit_mb=args.limit_mb))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``xas-feff``; returns 0, or 3 when some structures failed (kept in the output)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        build_parser().error("--workers must be >= 1")
    try:
        if args.command == "qm9":
            return _run_qm9(args)
        if args.command == "snapshot":
            return _run_snapshot(args)
        return _run_structures(args)
    except KeyboardInterrupt:
        print("interrupted: finished results are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except (QM9DataError, FeffInputError, SnapshotError, ValueError, OSError) as exc:
        print(f"xas-feff: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
