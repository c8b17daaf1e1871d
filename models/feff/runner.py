"""Run FEFF10 (the ``feff10-rs`` Python API) for one site, and batches of structures.

* :func:`run_site` runs one ``feff.inp`` in a temporary folder and returns the parsed ``xmu.dat``
  (``omega`` in eV, ``mu``), the wall time and, on failure, the error text with the tail of
  FEFF's log.
* :func:`run_batch` runs many :class:`FeffJob` (a structure and its absorber): every absorber site
  is one task, tasks run in parallel over local processes (``ProcessPoolExecutor``, default
  ``os.cpu_count()`` workers) or over a Dask cluster (``scheduler="tcp://host:8786"``, through
  ``Client.get_executor()``: the same futures code path), results are written atomically as
  they complete, jobs whose output exists are skipped (resumable), and a failing job is kept with
  its error text while the rest of the batch completes.
* Output formats are those the training readers read (:mod:`models.readers`):
  :class:`JsonlSink` (molecules; the keys of ``qm9_O_K_feff10.jsonl``) and :class:`FolderSink`
  (crystals; ``<id>/POSCAR`` + ``<id>/FEFF-XANES/NNN_El/xmu.dat``).
* :func:`compute_spectra` computes the site-averaged spectra of a few structures in memory (for
  verifying the top candidates of a ranking against FEFF).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from pymatgen.core import Molecule, Structure

from models.feff.inputs import (
    CLUSTER_RADIUS,
    FeffCards,
    FeffInputError,
    SiteInput,
    structure_inputs,
    structure_label,
)

#: Fewest points an ``xmu.dat`` must have to count as a spectrum (as :mod:`models.readers`).
MIN_POINTS = 10
#: Lines of FEFF's log kept in an error text.
LOG_TAIL_LINES = 15


class FeffRunError(RuntimeError):
    """A FEFF calculation failed; the message names the structure, the site and the reason."""


# --------------------------------------------------------------------------------------------
# One site
# --------------------------------------------------------------------------------------------


@dataclass
class SiteResult:
    """The outcome of one FEFF run.

    Attributes
    ----------
    job_id, site_index
        Which structure and absorber site.
    omega, mu
        FEFF's ``omega`` (absolute photon energy, eV) and ``mu`` columns; ``None`` on failure.
    seconds
        Wall time of the FEFF pipeline.
    xmu_text
        The ``xmu.dat`` text as FEFF wrote it (written verbatim by :class:`FolderSink`).
    error
        ``None`` on success, else ``"<Kind>: <reason>"`` followed by the tail of FEFF's log.
    """

    job_id: str
    site_index: int
    omega: list[float] | None = None
    mu: list[float] | None = None
    seconds: float = 0.0
    xmu_text: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@contextmanager
def _redirect_fds(log_path: Path) -> Iterator[None]:
    """Send the process's stdout/stderr file descriptors (FEFF's chatter, also from the stage
    subprocesses it launches) to ``log_path`` while inside the block."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _log_tail(log_path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [ln.rstrip() for ln in lines if ln.strip()]
    return "\n".join(lines[-n:])


def parse_xmu_text(text: str, where: str = "xmu.dat") -> tuple[np.ndarray, np.ndarray]:
    """``(omega, mu)`` from the text of a FEFF ``xmu.dat`` (columns ``omega e k mu mu0 chi``).

    Raises
    ------
    ValueError
        Malformed, too short, non-finite or non-increasing; the message names ``where``.
    """
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"{where}:{lineno}: not numeric: {line.strip()!r}") from None
        if len(values) < 4:
            raise ValueError(f"{where}:{lineno}: {len(values)} columns, expected omega e k mu mu0 chi")
        rows.append((values[0], values[3]))
    if len(rows) < MIN_POINTS:
        raise ValueError(f"{where}: {len(rows)} data points (< {MIN_POINTS}); FEFF gave no spectrum")
    arr = np.asarray(rows, dtype=float)
    omega, mu = arr[:, 0], arr[:, 1]
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: non-finite values in omega/mu")
    if np.any(np.diff(omega) <= 0):
        raise ValueError(f"{where}: omega is not increasing")
    return omega, mu


def run_site(
    feff_inp: str,
    job_id: str = "",
    site_index: int = 0,
    stage_timeout: float | None = None,
    keep_dir: str | os.PathLike | None = None,
    quiet: bool = True,
) -> SiteResult:
    """Run FEFF10 on one ``feff.inp`` text in a temporary folder and parse its ``xmu.dat``.

    Never raises for FEFF failures: they come back as ``SiteResult.error``.

    Parameters
    ----------
    feff_inp
        The ``feff.inp`` text (e.g. ``SiteInput.text``).
    job_id, site_index
        Labels copied into the result and the error text.
    stage_timeout
        Seconds after which a FEFF stage is stopped (``None``: no limit).
    keep_dir
        Copy the whole FEFF work folder here (for inspection); default: delete it.
    quiet
        Send FEFF's console output to a log file instead of the terminal.
    """
    import feff10

    result = SiteResult(job_id=job_id, site_index=int(site_index))
    work = Path(tempfile.mkdtemp(prefix=f"feff_{_safe(job_id)}_{site_index}_"))
    log_path = work / "feff_console.log"
    start = time.perf_counter()
    try:
        inp = feff10.FeffInput.parse(feff_inp)
        config = feff10.FeffConfig(str(work), inp, stage_timeout=stage_timeout)
        pipeline = feff10.FeffPipeline(config)
        if quiet:
            with _redirect_fds(log_path):
                pipeline.run()
        else:
            pipeline.run()
        result.seconds = time.perf_counter() - start
        xmu = work / "xmu.dat"
        if not xmu.is_file():
            raise FeffRunError("FEFF finished without writing xmu.dat")
        text = xmu.read_text()
        omega, mu = parse_xmu_text(text, f"{job_id} site {site_index} xmu.dat")
        result.omega, result.mu, result.xmu_text = omega.tolist(), mu.tolist(), text
    except Exception as exc:  # a failure of one site must never stop a batch
        result.seconds = time.perf_counter() - start
        tail = _log_tail(log_path)
        result.error = f"{type(exc).__name__}: {exc}".strip()
        if tail:
            result.error += "\n--- FEFF log (last lines) ---\n" + tail
    finally:
        if keep_dir is not None:
            shutil.copytree(work, Path(keep_dir), dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return result


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))[:40]


# --------------------------------------------------------------------------------------------
# Jobs and output sinks
# --------------------------------------------------------------------------------------------


@dataclass
class FeffJob:
    """One structure whose absorber sites are to be computed.

    Attributes
    ----------
    job_id
        Unique name: the output key (``qm9-<index>`` or the material id / folder name).
    structure
        pymatgen ``Molecule`` (every absorber atom is a site) or ``Structure`` (the
        symmetry-distinct absorber sites).
    absorber
        Element symbol of the absorbing atoms.
    cards
        FEFF cards; ``None``: the defaults for molecules / crystals.
    cluster_radius
        Cluster radius for crystals, Angstrom.
    meta
        Extra keys for the output (e.g. ``{"qm9_index": 1, "smiles": "C"}``).
    """

    job_id: str
    structure: Structure | Molecule
    absorber: str
    cards: FeffCards | None = None
    cluster_radius: float = CLUSTER_RADIUS
    meta: dict[str, Any] = field(default_factory=dict)

    def site_inputs(self) -> list[SiteInput]:
        """The FEFF inputs of its absorber sites (raises :class:`FeffInputError`)."""
        return structure_inputs(
            self.structure, self.absorber, self.cards, self.cluster_radius, name=self.job_id
        )


def _edge(job: FeffJob) -> str:
    return (job.cards.edge if job.cards is not None else "K") or "K"


class JsonlSink:
    """Molecule results as JSON lines (the keys of ``qm9_O_K_feff10.jsonl``).

    One line per molecule: ``qm9_index`` (QM9 jobs) or ``name``, ``smiles``, ``elements``,
    ``xyz_angstrom``, ``absorber``, ``edge``, ``sites: [{site, omega_eV, mu}]``, ``seconds``
    (FEFF wall time summed over the sites); failures as lines with an ``error`` key. Each line is
    appended with a single ``write`` and fsync'ed; a torn last line (from a killed run) is cut
    off when the file is opened again.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self.done: set[str] = set()
        self.failed: set[str] = set()
        if self.path.is_file():
            with self.path.open() as fh:
                for line in fh:
                    try:
                        doc = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    key = self.key_of(doc)
                    if key is None:
                        continue
                    (self.failed if "error" in doc else self.done).add(key)
            self.failed -= self.done

    @staticmethod
    def key_of(doc: dict) -> str | None:
        """The job id of a line: ``qm9-<qm9_index>`` or its ``name``."""
        if doc.get("qm9_index") is not None:
            return f"qm9-{int(doc['qm9_index'])}"
        return doc.get("name")

    def _repair(self) -> None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            fh.truncate(cut)

    def drop_failures(self, job_ids: Iterable[str]) -> None:
        """Remove the error lines of ``job_ids`` (atomic rewrite), so they can be retried."""
        drop = set(job_ids) & self.failed
        if not drop or not self.path.is_file():
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with self.path.open() as src, tmp.open("w") as dst:
            for line in src:
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    dst.write(line)
                    continue
                if "error" in doc and self.key_of(doc) in drop:
                    continue
                dst.write(line)
        os.replace(tmp, self.path)
        self.failed -= drop

    def _base(self, job: FeffJob) -> dict[str, Any]:
        mol = job.structure
        doc: dict[str, Any] = {}
        if "qm9_index" in job.meta:
            doc["qm9_index"] = int(job.meta["qm9_index"])
        else:
            doc["name"] = job.job_id
        doc["smiles"] = job.meta.get("smiles", (getattr(mol, "properties", None) or {}).get("smiles", ""))
        doc["elements"] = [s.specie.symbol for s in mol]
        doc["xyz_angstrom"] = [[float(v) for v in s.coords] for s in mol]
        doc["absorber"] = job.absorber
        doc["edge"] = _edge(job)
        return doc

    def write_job(self, job: FeffJob, results: Sequence[SiteResult], error: str | None = None) -> None:
        """Write the line of one finished job (``error`` or any failed site makes it a failure line)."""
        doc = self._base(job)
        failed = [r for r in results if not r.ok]
        if error is None and failed:
            error = "; ".join(f"site {r.site_index}: {r.error}" for r in failed)
        if error is not None:
            doc["error"] = error
        doc["sites"] = [
            {"site": r.site_index, "omega_eV": r.omega, "mu": r.mu}
            for r in sorted(results, key=lambda r: r.site_index)
            if r.ok
        ]
        doc["seconds"] = round(sum(r.seconds for r in results), 2)
        line = (json.dumps(doc, separators=(", ", ": ")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        (self.failed if error is not None else self.done).add(job.job_id)

    def write_site(self, job: FeffJob, result: SiteResult, multiplicity: int) -> None:
        """JSON lines are written per molecule: nothing to do per site."""


class FolderSink:
    """Crystal results as ``<out>/<id>/POSCAR`` + ``<out>/<id>/FEFF-XANES/NNN_El/xmu.dat``.

    Each site folder also gets the ``feff.inp`` used and ``run.json`` (multiplicity, seconds).
    A failed site gets ``error.txt`` instead of ``xmu.dat`` (the reader then skips the material,
    naming the missing file). Files are written to a temporary name and renamed (atomic).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def site_dir(self, job: FeffJob, site_index: int) -> Path:
        return self.root / job.job_id / "FEFF-XANES" / f"{site_index:03d}_{job.absorber}"

    def existing_sites(self, job: FeffJob, sites: Iterable[int], include_failed: bool = True) -> set[int]:
        """Sites of ``job`` whose output (``xmu.dat``, or ``error.txt`` if ``include_failed``) exists."""
        out = set()
        for s in sites:
            d = self.site_dir(job, s)
            if (d / "xmu.dat").is_file() or (include_failed and (d / "error.txt").is_file()):
                out.add(s)
        return out

    def drop_failures(self, job: FeffJob, sites: Iterable[int]) -> None:
        """Remove the error files of ``sites`` (and of the job) so they are computed again."""
        if self.job_error_exists(job):
            (self.root / job.job_id / "error.txt").unlink()
        for s in sites:
            err = self.site_dir(job, s) / "error.txt"
            if err.is_file() and not (err.parent / "xmu.dat").is_file():
                err.unlink()

    def write_structure(self, job: FeffJob) -> None:
        """``<id>/POSCAR`` (written once)."""
        from pymatgen.io.vasp import Poscar

        path = self.root / job.job_id / "POSCAR"
        if path.is_file():
            return
        if not isinstance(job.structure, Structure):
            raise FeffInputError(f"{job.job_id}: folder output needs a crystal (Structure)")
        _atomic_write(path, Poscar(job.structure, comment=job.job_id).get_str())

    def write_site(self, job: FeffJob, result: SiteResult, multiplicity: int, feff_inp: str = "") -> None:
        d = self.site_dir(job, result.site_index)
        d.mkdir(parents=True, exist_ok=True)
        if feff_inp:
            _atomic_write(d / "feff.inp", feff_inp)
        info = {"site": result.site_index, "multiplicity": multiplicity, "seconds": round(result.seconds, 2)}
        if result.ok:
            _atomic_write(d / "run.json", json.dumps(info))
            _atomic_write(d / "xmu.dat", result.xmu_text)
            if (d / "error.txt").is_file():
                (d / "error.txt").unlink()
        else:
            _atomic_write(d / "run.json", json.dumps({**info, "error": result.error}))
            _atomic_write(d / "error.txt", result.error + "\n")

    def write_job_error(self, job: FeffJob, error: str) -> None:
        """A job that failed before any FEFF run (bad input): ``<id>/error.txt``."""
        _atomic_write(self.root / job.job_id / "error.txt", error + "\n")

    def job_error_exists(self, job: FeffJob) -> bool:
        """Whether the job failed before any FEFF run in an earlier batch."""
        return (self.root / job.job_id / "error.txt").is_file()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------


@dataclass
class BatchSummary:
    """What a batch did.

    Attributes
    ----------
    done
        Jobs completed in this run (all their sites succeeded).
    skipped_existing
        Jobs skipped because their output already existed.
    failed
        ``job_id -> error text`` of jobs that failed in this run.
    sites_done
        Site spectra computed in this run.
    site_seconds
        FEFF wall time of each successful site run.
    wall_seconds
        Wall time of the whole batch.
    """

    done: int = 0
    skipped_existing: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    sites_done: int = 0
    site_seconds: list[float] = field(default_factory=list)
    job_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0

    def reason_counts(self) -> Counter:
        """Failures counted by kind (the text before the first ':' of the reason)."""
        kinds = Counter()
        for err in self.failed.values():
            first = err.split("\n", 1)[0]
            if first.startswith("site ") and ": " in first:
                first = first.split(": ", 1)[1]
            kinds[first.split(":", 1)[0].strip()] += 1
        return kinds

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "skipped_existing": self.skipped_existing,
            "failed": len(self.failed),
            "failure_reasons": dict(self.reason_counts()),
            "sites_done": self.sites_done,
            "median_seconds_per_site": _median(self.site_seconds),
            "median_seconds_per_structure": _median(self.job_seconds),
            "wall_seconds": round(self.wall_seconds, 1),
        }

    def __str__(self) -> str:
        d = self.as_dict()
        lines = [
            f"done {d['done']} structures ({d['sites_done']} sites), skipped (output exists) "
            f"{d['skipped_existing']}, failed {d['failed']}; wall {d['wall_seconds']} s, median "
            f"{d['median_seconds_per_site']} s/site, {d['median_seconds_per_structure']} s/structure"
        ]
        for kind, n in self.reason_counts().most_common():
            example = next(
                (f"{k}: {v.splitlines()[0][:160]}" for k, v in self.failed.items() if kind in v.splitlines()[0]),
                "",
            )
            lines.append(f"  failed {n} x {kind} (e.g. {example})")
        return "\n".join(lines)


def _median(values: Sequence[float]) -> float | None:
    return round(float(np.median(values)), 2) if len(values) else None


def make_executor(
    n_workers: int | None = None, scheduler: str | Any | None = None
) -> tuple[cf.Executor, int, Callable[[], None]]:
    """An executor with a ``concurrent.futures`` interface, its worker count and a closer.

    Parameters
    ----------
    n_workers
        Local processes (default ``os.cpu_count()``); ignored with a scheduler.
    scheduler
        A Dask scheduler address (``"tcp://host:8786"``), a ``dask.distributed.Client`` or a
        ``LocalCluster``: work goes to that cluster through ``Client.get_executor()``.
    """
    if scheduler is None:
        n = max(1, int(n_workers or os.cpu_count() or 1))
        # spawn, not fork: forking a process that runs threads (a Tiled server, 0MQ, an IPython
        # session's RunEngine) can deadlock the children.
        pool = cf.ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
        return pool, n, lambda: pool.shutdown(wait=True, cancel_futures=True)
    from dask.distributed import Client

    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    n = max(1, sum(client.nthreads().values()))
    executor = client.get_executor(pure=False)

    def close() -> None:
        executor.shutdown(wait=False)
        if own:
            client.close()

    return executor, n, close


def run_batch(
    jobs: Iterable[FeffJob],
    sink: JsonlSink | FolderSink,
    n_workers: int | None = None,
    scheduler: str | Any | None = None,
    executor: cf.Executor | None = None,
    retry_failed: bool = False,
    stage_timeout: float | None = None,
    progress: bool = True,
    total: int | None = None,
) -> BatchSummary:
    """Run FEFF for many structures, in parallel, resumably, writing results as they complete.

    Parameters
    ----------
    jobs
        The structures (their absorber sites are the tasks). Consumed lazily.
    sink
        :class:`JsonlSink` (molecules) or :class:`FolderSink` (crystals).
    n_workers
        Local worker processes (default ``os.cpu_count()``).
    scheduler
        Dask scheduler address or ``Client``: run on that cluster instead (same code path).
    executor
        Any ``concurrent.futures.Executor`` to use instead (the caller closes it).
    retry_failed
        Re-run jobs/sites whose earlier output is a failure (default: keep and skip them).
    stage_timeout
        Seconds per FEFF stage before it is stopped and the site counted as failed.
    progress
        Show a tqdm progress bar (structures).
    total
        Number of jobs, for the progress bar when ``jobs`` has no ``len``.

    Returns
    -------
    BatchSummary
        Done, skipped-existing and failed (with reasons) counts and timings.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    summary = BatchSummary()
    if total is None and hasattr(jobs, "__len__"):
        total = len(jobs)  # type: ignore[arg-type]
    if executor is None:
        executor, n, close = make_executor(n_workers, scheduler)
    else:
        n, close = max(1, int(n_workers or os.cpu_count() or 1)), (lambda: None)
    window = max(2 * n, 2)
    bar = tqdm(total=total, desc="FEFF", unit="struct", disable=not progress, smoothing=0.05)

    pending: dict[cf.Future, tuple[str, int]] = {}
    state: dict[str, dict[str, Any]] = {}  # job_id -> {job, inputs, results, left}

    def finish(job_id: str) -> None:
        st = state.pop(job_id)
        job, results = st["job"], st["results"]
        failed = [r for r in results if not r.ok]
        if isinstance(sink, JsonlSink):
            sink.write_job(job, results)
        if failed:
            summary.failed[job_id] = "; ".join(f"site {r.site_index}: {r.error}" for r in failed)
        else:
            summary.done += 1
            summary.job_seconds.append(sum(r.seconds for r in results))
        bar.update(1)
        bar.set_postfix(failed=len(summary.failed), refresh=False)

    def collect(block: bool) -> None:
        if not pending:
            return
        done, _ = cf.wait(list(pending), timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            job_id, site = pending.pop(fut)
            st = state[job_id]
            try:
                res = fut.result()
            except BaseException as exc:  # worker crash, cancelled, pickling...
                res = SiteResult(job_id, site, error=f"{type(exc).__name__}: {exc}")
            st["results"].append(res)
            if res.ok:
                summary.sites_done += 1
                summary.site_seconds.append(res.seconds)
            if isinstance(sink, FolderSink):
                sink.write_site(st["job"], res, st["mult"][site], st["text"][site])
            st["left"] -= 1
            if st["left"] == 0:
                finish(job_id)

    try:
        for job in jobs:
            if job.job_id in state:
                raise ValueError(f"duplicate job id {job.job_id!r} in one batch")
            # -- resumability -------------------------------------------------------------
            if isinstance(sink, JsonlSink):
                if job.job_id in sink.done or (job.job_id in sink.failed and not retry_failed):
                    summary.skipped_existing += 1
                    bar.update(1)
                    continue
                if job.job_id in sink.failed:
                    sink.drop_failures([job.job_id])
            if isinstance(sink, FolderSink) and sink.job_error_exists(job) and not retry_failed:
                summary.skipped_existing += 1
                bar.update(1)
                continue
            try:
                inputs = job.site_inputs()
                if not inputs:
                    raise FeffInputError(f"{job.job_id}: no {job.absorber} site to compute")
                if isinstance(sink, FolderSink):
                    sink.write_structure(job)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                summary.failed[job.job_id] = error
                if isinstance(sink, JsonlSink):
                    sink.write_job(job, [], error=error)
                else:
                    sink.write_job_error(job, error)
                bar.update(1)
                continue
            if isinstance(sink, FolderSink):
                sites = [s.site_index for s in inputs]
                if retry_failed:
                    sink.drop_failures(job, sites)
                existing = sink.existing_sites(job, sites)
                if len(existing) == len(sites):
                    summary.skipped_existing += 1
                    bar.update(1)
                    continue
                inputs = [s for s in inputs if s.site_index not in existing]
            state[job.job_id] = {
                "job": job,
                "results": [],
                "left": len(inputs),
                "mult": {s.site_index: s.multiplicity for s in inputs},
                "text": {s.site_index: s.text for s in inputs},
            }
            for s in inputs:
                while len(pending) >= window:
                    collect(block=True)
                fut = executor.submit(run_site, s.text, job.job_id, s.site_index, stage_timeout)
                pending[fut] = (job.job_id, s.site_index)
            collect(block=False)
        while pending:
            collect(block=True)
    finally:
        for fut in pending:
            fut.cancel()
        close()
        bar.close()
    summary.wall_seconds = time.perf_counter() - start
    return summary


# --------------------------------------------------------------------------------------------
# In-memory spectra (verification of ranked candidates)
# --------------------------------------------------------------------------------------------


def average_sites(
    results: Sequence[SiteResult], multiplicities: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicity-weighted average of site spectra on the first site's energy grid
    (restricted to the energy range all sites cover)."""
    if not results:
        raise ValueError("no site spectra to average")
    w = np.ones(len(results)) if multiplicities is None else np.asarray(multiplicities, dtype=float)
    grids = [np.asarray(r.omega) for r in results]
    lo = max(g[0] for g in grids)
    hi = min(g[-1] for g in grids)
    energy = grids[0][(grids[0] >= lo) & (grids[0] <= hi)]
    if energy.size < 2:
        raise ValueError("site spectra do not overlap in energy")
    mu = sum(wi * np.interp(energy, g, np.asarray(r.mu)) for wi, g, r in zip(w, grids, results))
    return energy, mu / w.sum()


def compute_spectra(
    structures: Sequence[Structure | Molecule],
    absorber: str,
    cards: FeffCards | None = None,
    cluster_radius: float = CLUSTER_RADIUS,
    n_workers: int | None = None,
    scheduler: str | Any | None = None,
    names: Sequence[str] | None = None,
    on_error: str = "raise",
    stage_timeout: float | None = None,
    errors: dict[int, str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """FEFF10 spectra of a few structures, site-averaged, computed in parallel in memory.

    Parameters
    ----------
    structures
        pymatgen ``Molecule`` (all absorber atoms averaged) or ``Structure`` (symmetry-distinct
        sites, multiplicity-weighted).
    absorber
        Absorbing element, e.g. ``"Cu"``.
    cards, cluster_radius
        As in :func:`models.feff.inputs.structure_inputs` (``cards.edge`` sets the edge).
    n_workers, scheduler
        As in :func:`run_batch` (all sites of all structures run in parallel).
    names
        Names for messages (default: the structures' names or formulas).
    on_error
        ``"raise"``: raise :class:`FeffRunError` naming the first failed structure and reason;
        ``"skip"``: put ``None`` at its position.
    errors
        A dict to fill with ``{position: reason}`` of the structures that failed (with
        ``on_error="skip"``, the only place the reasons are kept).

    Returns
    -------
    list
        One ``(energy, mu)`` per structure, in input order: ``energy`` the absolute photon
        energy in eV (FEFF's ``omega``, increasing), ``mu`` FEFF's normalised absorption.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    labels = [structure_label(s, names[i] if names else None) for i, s in enumerate(structures)]
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(structures)
    errors = {} if errors is None else errors
    tasks: list[tuple[int, SiteInput]] = []
    for i, s in enumerate(structures):
        try:
            for si in structure_inputs(s, absorber, cards, cluster_radius, name=labels[i]):
                tasks.append((i, si))
        except FeffInputError as exc:
            errors[i] = str(exc)
    if tasks:
        executor, _, close = make_executor(min(n_workers or os.cpu_count() or 1, len(tasks)), scheduler)
        try:
            futs = [
                (i, si, executor.submit(run_site, si.text, labels[i], si.site_index, stage_timeout))
                for i, si in tasks
            ]
            per: dict[int, list[tuple[SiteResult, int]]] = {}
            for i, si, fut in futs:
                try:
                    res = fut.result()
                except BaseException as exc:
                    res = SiteResult(labels[i], si.site_index, error=f"{type(exc).__name__}: {exc}")
                per.setdefault(i, []).append((res, si.multiplicity))
        finally:
            close()
        for i, pairs in per.items():
            bad = [r for r, _ in pairs if not r.ok]
            if bad:
                errors[i] = f"{labels[i]}: FEFF failed at site {bad[0].site_index}: {bad[0].error}"
                continue
            out[i] = average_sites([r for r, _ in pairs], [m for _, m in pairs])
    if errors and on_error == "raise":
        i = min(errors)
        raise FeffRunError(errors[i].split("\n--- FEFF log")[0] if len(errors[i]) > 2000 else errors[i])
    return out
