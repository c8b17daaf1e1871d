"""Predict a whole candidate library once, in bounded memory, into a :class:`CandidateStore`.

>>> from models import load_predictor
>>> from models.screening import predict_library
>>> pred = load_predictor("o-k")
>>> res = predict_library([("ethanol", "CCO", "smiles"), ("water", "O", "smiles")],  # doctest: +SKIP
...                       pred, store="~/screens")
>>> res.predicted, res.reused  # doctest: +SKIP
(2, 0)

The source is any iterable of ``(name, candidate, provenance)``: a candidate is a pymatgen
``Structure`` or ``Molecule``, a :class:`models.graph_batch.MoleculeSpec`, an object with
``elements`` and ``xyz`` (a QM9 record of :mod:`models.feff.qm9`) or anything
:func:`models.structures.load_structure` reads (a file path, a SMILES string); provenance is a
string or a JSON-able dict stored beside the spectrum. The source is consumed lazily, ``chunk``
candidates at a time: each chunk's new candidates are predicted (all their absorber sites in one
fused pass, :meth:`models.predictor.Predictor.predict_prepared`) and written to the store as one
file, so memory does not grow with the library. Candidates already in the store (same content,
same weights) are not predicted again.

With ``scheduler`` (a Dask scheduler address, ``Client`` or ``LocalCluster``) or ``n_workers``
the chunks run on that cluster or on local processes through the executor of
:func:`models.feff.runner.make_executor`, as ``xas-feff`` does; the chunk function is the
same, and only this process writes the store.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from models.store import CandidateStore, structure_hash


@dataclass
class LibraryResult:
    """What :func:`predict_library` did.

    Attributes
    ----------
    store : CandidateStore
        Where the spectra are; ``store.load(keys)`` gives them.
    names, keys : list of str
        Every candidate with a prediction, in source order (names made unique with ``#i``).
    predicted : int
        Candidates predicted in this call.
    reused : int
        Candidates found in the store (or repeated in the source).
    sites : int
        Absorber-site graphs through the network in this call.
    failures : dict
        ``name -> reason`` of candidates that could not be predicted.
    seconds : float
        Wall time of the call.
    peak_rss_mb : float
        Peak resident memory of this process at the end of the call (MB).
    chunks : list of dict
        Per chunk: candidates, predicted, seconds (for benchmarks).
    """

    store: CandidateStore
    names: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    predicted: int = 0
    reused: int = 0
    sites: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    chunks: list[dict] = field(default_factory=list)

    def spectra(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std ``(len(names), E)`` of all candidates (memory grows with the library)."""
        return self.store.load(self.keys)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB.

    Linux: ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this process's own memory;
    ``ru_maxrss`` of a child process also counts its parent's peak at the fork); elsewhere
    ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # macOS: bytes, Linux: KiB


def as_candidate(item: Any, label: str) -> Any:
    """A candidate the chunk builder takes: a pymatgen object or :class:`MoleculeSpec`."""
    from models.graph_batch import molecule_spec
    from models.structures import load_structure

    spec = molecule_spec(item, label)
    if spec is not None:
        return spec
    if hasattr(item, "lattice") or hasattr(item, "cart_coords"):
        return item
    return load_structure(item)


def _check_supported(predictor: Any, candidate: Any, label: str) -> None:
    from models.graph_batch import MoleculeSpec
    from models.graphs import UnsupportedElementError

    if not isinstance(candidate, MoleculeSpec):
        predictor._check_elements(candidate, label)
        return
    unknown = sorted(set(candidate.symbols) - set(predictor.supported_elements or candidate.symbols))
    if unknown:
        raise UnsupportedElementError(
            f"{label}: element(s) {', '.join(unknown)} not supported by model {predictor.name!r}; "
            f"supported elements: {', '.join(predictor.supported_elements)}")


def predict_chunk(model: Any, items: list[tuple[str, Any]], batch_size: int = 256,
                  device: str = "cpu", threads: int | None = None, compile: bool = False) -> dict[str, Any]:
    """Predict one chunk of candidates (runs in this process or on a Dask/process worker).

    Parameters
    ----------
    model : Predictor or str
        A loaded predictor, or a model name / weights path loaded (once per worker process).
    items : list of (name, candidate)
        Candidates as :func:`as_candidate` gives them.
    batch_size : int
        Site graphs per network call.
    device : str
        Device of a predictor loaded here.
    threads : int, optional
        Set torch's CPU threads first (a worker per core: 1).
    compile : bool
        Compile a predictor loaded here (:meth:`models.predictor.Predictor.compile`).

    Returns
    -------
    dict
        ``rows`` (positions in ``items`` that succeeded), ``mean``, ``std`` (``(len(rows), E)``),
        ``failures`` (name -> reason), ``sites``, ``seconds``.
    """
    from models.graph_batch import prepare
    from models.predictor import load_predictor

    start = time.perf_counter()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    predictor = load_predictor(model, device=device, compile=compile) if isinstance(model, (str, Path)) else model
    prepared, rows, failures = [], [], {}
    for row, (name, candidate) in enumerate(items):
        try:
            _check_supported(predictor, candidate, name)
            prepared.append(prepare(predictor.builder, candidate, label=name))
            rows.append(row)
        except Exception as exc:  # noqa: BLE001 - reported per candidate
            failures[name] = f"{type(exc).__name__}: {exc}"
    mean, std = predictor.predict_prepared(prepared, batch_size=batch_size)
    return {"rows": rows, "mean": mean, "std": std, "failures": failures,
            "sites": int(sum(len(p.sites) for p in prepared)), "seconds": time.perf_counter() - start}


def _chunks(source: Iterable, size: int) -> Iterator[list]:
    it = iter(source)
    while True:
        block = list(islice(it, size))
        if not block:
            return
        yield block


def _provenance_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def predict_library(
    source: Iterable[tuple[str, Any, Any]],
    model: Any,
    store: CandidateStore | str | Path,
    chunk: int = 4096,
    batch_size: int = 64,
    scheduler: Any = None,
    n_workers: int | None = None,
    worker_threads: int | None = 1,
    on_error: str = "skip",
    progress: bool = False,
    compile: bool = False,
) -> LibraryResult:
    """Predict every candidate of ``source`` not yet in ``store``, ``chunk`` at a time.

    Parameters
    ----------
    source : iterable of (name, candidate, provenance)
        See the module docstring; consumed lazily.
    model : Predictor or str
        A loaded :class:`models.predictor.Predictor` or a model name / weights path.
    store : CandidateStore, str or Path
        The store, or its root folder (the folder of this model's weights is used).
    chunk : int
        Candidates per chunk (and per store file); memory grows with it, not with the library.
    batch_size : int
        Site graphs per network call (small blocks stay in the CPU cache: 16-64 were fastest per
        thread in ``benchmarks/bench_screening.py``).
    scheduler : str, dask Client or LocalCluster, optional
        Run the chunks on this Dask cluster (the scheduler handling of ``xas-feff``).
    n_workers : int, optional
        Without ``scheduler``: run the chunks on this many local processes. Neither: in this process.
    worker_threads : int or None
        torch CPU threads on each worker (``None``: leave as they are).
    on_error : {"skip", "raise"}
        ``"skip"`` lists failed candidates in ``failures``; ``"raise"`` raises on the first.
    progress : bool
        Show a tqdm bar over candidates.
    compile : bool
        Run the network through ``torch.compile`` here and on every worker
        (:meth:`models.predictor.Predictor.compile`: a minute to compile, then 1.2-1.9x faster
        on a CPU; for libraries of thousands of candidates).

    Returns
    -------
    LibraryResult
    """
    from models.predictor import load_predictor

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if chunk < 1 or batch_size < 1:
        raise ValueError(f"chunk and batch_size must be >= 1, got chunk={chunk}, batch_size={batch_size}")
    start = time.perf_counter()
    predictor = load_predictor(model, device="cpu") if isinstance(model, (str, Path)) else model
    if compile and scheduler is None and n_workers is None:
        predictor.compile()
    if not isinstance(store, CandidateStore):
        store = CandidateStore.for_predictor(Path(store).expanduser(), predictor)
    elif store.weights_sha256 != predictor.weights_sha256:
        raise ValueError(f"{store.folder} holds weights {store.weights_sha256[:16]}..., the model has "
                         f"{predictor.weights_sha256[:16]}...")
    result = LibraryResult(store=store)

    executor, close = None, (lambda: None)
    if scheduler is not None or n_workers is not None:
        from models.feff.runner import make_executor

        executor, n, close = make_executor(n_workers, scheduler)
        window = max(2, 2 * n)
        remote_model = str(predictor.path)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"{predictor.name} library", unit="cand", smoothing=0.05)

    used: set[str] = set()
    queued: set[str] = set()  # keys sent for prediction in this call
    in_flight: dict[Any, tuple[list, list, list, float]] = {}

    def finish(items, keys, prov, out) -> None:
        if out["failures"] and on_error == "raise":
            name, reason = next(iter(out["failures"].items()))
            raise ValueError(f"{name}: {reason}")
        result.failures.update(out["failures"])
        rows = out["rows"]
        store.add([keys[r] for r in rows], [items[r][0] for r in rows], [prov[r] for r in rows],
                  out["mean"], out["std"])
        result.predicted += len(rows)
        result.sites += out["sites"]
        result.chunks.append({"candidates": len(items), "predicted": len(rows), "seconds": out["seconds"]})

    def drain(block: bool) -> None:
        import concurrent.futures as cf

        if not in_flight:
            return
        done, _ = cf.wait(list(in_flight), timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            items, keys, prov, _ = in_flight.pop(fut)
            finish(items, keys, prov, fut.result())

    try:
        for block in _chunks(source, chunk):
            new_items, new_keys, new_prov = [], [], []
            for i, entry in enumerate(block):
                try:
                    name, item, provenance = entry
                except (TypeError, ValueError):
                    raise ValueError(f"source items must be (name, candidate, provenance), got {entry!r:.80}") from None
                name = str(name)
                if name in used:
                    name = f"{name} #{len(result.names) + len(result.failures) + i}"
                used.add(name)
                try:
                    candidate = as_candidate(item, name)
                    key = structure_hash(candidate)
                except Exception as exc:  # noqa: BLE001 - reported per candidate
                    if on_error == "raise":
                        raise
                    result.failures[name] = f"{type(exc).__name__}: {exc}"
                    continue
                result.names.append(name)
                result.keys.append(key)
                if key in store or key in queued:
                    result.reused += 1
                    continue
                queued.add(key)
                new_items.append((name, candidate))
                new_keys.append(key)
                new_prov.append(_provenance_text(provenance))
            if new_items:
                if executor is None:
                    finish(new_items, new_keys, new_prov, predict_chunk(predictor, new_items, batch_size))
                else:
                    while len(in_flight) >= window:
                        drain(block=True)
                    fut = executor.submit(predict_chunk, remote_model, new_items, batch_size, "cpu", worker_threads,
                                          compile)
                    in_flight[fut] = (new_items, new_keys, new_prov, time.perf_counter())
                    drain(block=False)
            if bar is not None:
                bar.update(len(block))
        while in_flight:
            drain(block=True)
    finally:
        for fut in in_flight:
            fut.cancel()
        close()
        if bar is not None:
            bar.close()
    if result.failures:  # candidates whose prediction failed (or repeated one that did) have no spectrum
        kept = [(n, k) for n, k in zip(result.names, result.keys) if n not in result.failures and k in store]
        result.names, result.keys = [n for n, _ in kept], [k for _, k in kept]
    result.seconds = time.perf_counter() - start
    result.peak_rss_mb = peak_rss_mb()
    return result
