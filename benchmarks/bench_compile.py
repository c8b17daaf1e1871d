"""What ``torch.compile`` buys the fused pass on a CPU (``Predictor.compile``).

For each model, the same site graphs (QM9 molecules in the fixed order of the shared sets for
``o-k`` and ``n-k``; crystals of the Cu K set for ``cu-k``) are built once into the blocks that
``Predictor.predict_prepared`` uses, then run through the eager and the compiled fused pass in
turn, ``--repeats`` times each, interleaved so that the machine's load falls on both alike.
Network CPU time per site graph, the compile time (first call, and a second process reads the
kernels from the inductor cache) and the largest difference of the outputs. One torch thread.
Writes ``benchmarks/results/compile.json``::

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py [--models o-k n-k cu-k] [--molecules 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def _candidates(model: str, n: int) -> list:
    from models.graph_batch import molecule_spec

    if model == "cu-k":
        from models.paths import CU_K_FEFF, data_path
        from models.readers import read_feff_materials

        records, _ = read_feff_materials(data_path(CU_K_FEFF), limit=n, progress=False)
        return [r.structure for r in records]
    from models.feff.qm9 import qm9_molecules

    return [molecule_spec(m, m.name) for m in qm9_molecules({"o-k": "O", "n-k": "N"}[model], count=n)]


def _blocks(pred, prepared, batch_size: int) -> list:
    from models.graph_batch import dense_batches, site_arrays, sparse_batches

    arrays = site_arrays(pred.builder, prepared)
    if pred.fused.input_kind == "sparse":
        return list(sparse_batches(pred.builder, arrays, max_graphs=batch_size, max_edges=pred.fused.block_edges))
    return list(dense_batches(pred.builder, arrays, max_graphs=batch_size))


@torch.inference_mode()
def _run(forward, blocks) -> tuple[float, list]:
    c0 = time.process_time()
    out = [forward(b) for b in blocks]
    return time.process_time() - c0, out


def bench_model(model: str, n: int, repeats: int, batch_size: int) -> dict:
    from models.graph_batch import prepare
    from models.predictor import Predictor, load_predictor

    eager = load_predictor(model, device="cpu")
    compiled = Predictor(eager.path, torch.device("cpu"))
    prepared = [prepare(eager.builder, c) for c in _candidates(model, n)]
    blocks = _blocks(eager, prepared, batch_size)
    sites = sum(len(b.rows) for b in blocks)
    t0 = time.perf_counter()
    compiled.compile()
    _run(compiled._forward_block, blocks[:1])
    first_call_s = time.perf_counter() - t0
    _run(compiled._forward_block, blocks)  # shapes the first block did not show
    times = {"eager": [], "compiled": []}
    for _ in range(repeats):
        t, out_e = _run(eager.fused.forward_block, blocks)
        times["eager"].append(t)
        t, out_c = _run(compiled._forward_block, blocks)
        times["compiled"].append(t)
    diff = max(float((a - b).abs().max()) for e, c in zip(out_e, out_c) for a, b in zip(e, c))
    med = {k: float(np.median(v)) for k, v in times.items()}
    r = {"model": model, "fused": type(eager.fused).__name__, "structures": len(prepared), "site_graphs": sites,
         "blocks": len(blocks), "cpu_s": times, "site_graphs_per_cpu_s": {k: sites / v for k, v in med.items()},
         "speed_up_median": med["eager"] / med["compiled"], "compile_and_first_block_s": first_call_s,
         "max_abs_difference_standardised": diff}
    print(f"{model}: {sites} site graphs in {len(blocks)} blocks; eager {sites / med['eager']:.0f}, compiled "
          f"{sites / med['compiled']:.0f} site graphs per CPU-s (x{r['speed_up_median']:.2f}); "
          f"compile {first_call_s:.0f} s; max diff {diff:.1e}", flush=True)
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["o-k", "n-k", "cu-k"])
    p.add_argument("--molecules", type=int, default=600, help="QM9 molecules (o-k, n-k)")
    p.add_argument("--crystals", type=int, default=200, help="Cu crystals (cu-k)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=str(RESULTS / "compile.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    report = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "cpu_count": os.cpu_count()},
              "load_average_at_start": os.getloadavg(), "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
              "models": []}
    for model in args.models:
        n = args.crystals if model == "cu-k" else args.molecules
        report["models"].append(bench_model(model, n, args.repeats, args.batch_size))
        Path(args.out).write_text(json.dumps(report, indent=1))
    report["load_average_at_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
