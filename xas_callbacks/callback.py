"""``XASRankingCallback``: live ranking of candidate structures during an XAS scan.

An :class:`event_model.DocumentRouter`, subscribed to a RunEngine (or fed stored documents).
For runs whose start document carries the ``xas`` block (see docs/architecture.md) it forms
mu(E) per point from the detector roles and the mode, normalises it, updates the posterior over
candidates with each new point and publishes the ranking as a linked analysis run through
``emit(name, doc)``: start document with ``purpose="xas-ranking"``, ``parent_uid`` and
provenance; stream ``ranking`` with one event per update (top-k names, probabilities and
log-evidences, offset and its sd, broadening, entropy, ``n_points`` used and the ``raw_seq_num``
of the raw event the update answers).

Nothing inside the callback ever propagates to the RunEngine: each exception is logged and
counted. Bad input (NaN or zero I0, missing fields, duplicate or out-of-order events, events of
unknown descriptors) is counted and reported at the stop (log + :attr:`summary`).

The ranking documents are a deterministic function of the raw documents: the analysis run's
times are the raw run's times, so replaying a stored run through a fresh callback reproduces
the stored ranking documents except for their uids.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Callable

import numpy as np
from event_model import DocumentRouter, compose_run, unpack_event_page

from endstation.modes import MODE_ROLES, mu_from_counts
from models.normalization import Normalization, normalize
from models.provenance import software_version
from xas_callbacks.candidates import CandidateLibrary
from xas_callbacks.ranking import RankingConfig, RankingEngine, RankingResult

logger = logging.getLogger(__name__)

__all__ = ["XASRankingCallback"]


_ENGINE_CACHE: dict = {}


class XASRankingCallback(DocumentRouter):
    """Rank candidate structures against the measured spectrum, point by point.

    Parameters
    ----------
    library : CandidateLibrary or None
        Candidates to rank. None: built (and cached) from the start document's
        ``xas.candidates`` / ``xas.model``.
    emit : callable(name, doc), optional
        Receives the documents of the linked ``xas-ranking`` analysis run (e.g.
        ``RE.dispatcher.process`` or a TiledWriter).
    plot : object or bool, optional
        A :class:`xas_callbacks.plotting.LiveRankingPlot` (or anything with ``update(cb)`` and
        ``finish(cb)``); True makes a default one.
    top_k : int
        Candidates per ranking event.
    config : RankingConfig, optional
        Grids and priors of the ranking model.
    stream_name : str
        Stream whose events are ranked.
    mode : str, optional
        Override the start document's ``xas.mode``.
    renorm_rtol, renorm_growth : float
        Re-normalise (and rebuild the sufficient statistics from all points) when the edge step
        or pre-edge level has moved by more than ``renorm_rtol`` of the step and the number of
        points has grown by the factor ``renorm_growth`` since the last time (or the first
        non-provisional normalisation is reached). The geometric schedule bounds the rebuilds
        to ``1/(1 - 1/growth)`` times the incremental work: the update stays O(1) amortised.
        In between, the amplitude and background nuisances absorb the small mismatch.
    use_larch : bool
        Use :func:`larch.xafs.pre_edge` for the live normalisation once enough points exist.
    dtype : numpy dtype
        Precision of the ranking engine's per-point arithmetic (float32 default: half the
        memory traffic; totals are kept in float64, see :class:`RankingEngine`).
    """

    def __init__(
        self,
        library: CandidateLibrary | None = None,
        *,
        emit: Callable[[str, dict], None] | None = None,
        plot=None,
        top_k: int = 5,
        config: RankingConfig | None = None,
        stream_name: str = "primary",
        mode: str | None = None,
        renorm_rtol: float = 0.03,
        renorm_growth: float = 1.25,
        use_larch: bool = False,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        self.library = library
        self.emit = emit
        if plot is True:
            from xas_callbacks.plotting import LiveRankingPlot

            plot = LiveRankingPlot()
        self.plot = plot or None
        self.top_k = int(top_k)
        self.config = config or RankingConfig()
        self.stream_name = stream_name
        self.mode_override = mode
        self.renorm_rtol = float(renorm_rtol)
        self.renorm_growth = float(renorm_growth)
        self.use_larch = bool(use_larch)
        self.dtype = dtype
        self.counts: Counter = Counter()  # over the lifetime of the callback
        self.latest_ranking: RankingResult | None = None
        self.history: list[dict] = []  # per update: n_points and top-k probabilities (plots)
        self.summary: dict = {}
        self.engine: RankingEngine | None = None
        self.normalization: Normalization | None = None
        self._reset_run()

    # ------------------------------------------------------------------ safety
    def __call__(self, name: str, doc: dict, validate: bool = False):
        try:
            return super().__call__(name, doc, validate)
        except Exception as exc:  # noqa: BLE001 -- never propagate into the RunEngine
            self.counts["callback_errors"] += 1
            self.run_counts["callback_errors"] += 1
            logger.exception("XASRankingCallback: error while handling %r document: %s", name, exc)
            return name, doc

    def _reset_run(self) -> None:
        self.active = False
        self.run_start: dict | None = None
        self.xas: dict = {}
        self.run_counts: Counter = Counter()
        self._descriptors: dict[str, dict] = {}
        self._seen: set = set()
        self._last_seq: dict[str, int] = {}
        self._n_at_norm = 0
        self._E: list[float] = []
        self._mu: list[float] = []
        self._var: list[float] = []
        self._compose = None
        self._rank_desc = None
        self._last_time = None
        self.history = []

    # --------------------------------------------------------------- documents
    def start(self, doc):
        if self.active:
            self.counts["unclosed_runs"] += 1
            self._finish(None)
        self._reset_run()
        xas = doc.get("xas")
        if not isinstance(xas, dict):
            self.counts["runs_ignored"] += 1
            return
        mode = self.mode_override or xas.get("mode", "transmission")
        if mode not in MODE_ROLES:
            self.counts["runs_ignored"] += 1
            logger.warning("XASRankingCallback: unknown mode %r in run %s; ignored", mode, doc.get("uid"))
            return
        library = self.library
        if library is None:
            library = _library_from_start(xas)
        self._library = library
        self.engine = self._engine_for(library)
        self.engine.reset()
        self.normalization = None
        self.latest_ranking = None
        self.active = True
        self.run_start = doc
        self.xas = xas
        self.mode = mode
        self.counts["runs_ranked"] += 1
        self._open_analysis_run(doc)

    def descriptor(self, doc):
        if not self.active:
            return
        self._descriptors[doc["uid"]] = doc

    def event(self, doc):
        if not self.active:
            return
        self._process_event(doc)

    def event_page(self, doc):
        if not self.active:
            return
        for event in unpack_event_page(doc):
            try:
                self._process_event(event)
            except Exception as exc:  # noqa: BLE001 -- one bad event does not lose the page
                self.counts["callback_errors"] += 1
                self.run_counts["callback_errors"] += 1
                logger.exception("XASRankingCallback: error on an event of a page: %s", exc)

    def stop(self, doc):
        if not self.active:
            return
        self._finish(doc)

    # ---------------------------------------------------------------- internals
    def _engine_for(self, library: CandidateLibrary) -> RankingEngine:
        key = (id(library), len(library), library.provenance.get("candidates_sha256"),
               self.config, np.dtype(self.dtype).str)
        eng = _ENGINE_CACHE.get(key)
        if eng is None or eng.names != library.names:
            eng = RankingEngine(library.names, library.energies, library.mean, library.std,
                                config=self.config, dtype=self.dtype)
            _ENGINE_CACHE.clear()  # one library at a time: they can be large
            _ENGINE_CACHE[key] = eng
        return eng

    def _count(self, what: str) -> None:
        self.counts[what] += 1
        self.run_counts[what] += 1

    def _process_event(self, ev: dict) -> None:
        desc = self._descriptors.get(ev.get("descriptor"))
        if desc is None:
            self._count("unknown_descriptor")
            return
        if desc.get("name") != self.stream_name:
            return
        key = ev.get("uid") or (ev.get("descriptor"), ev.get("seq_num"))
        seq_key = (ev.get("descriptor"), ev.get("seq_num"))
        if key in self._seen or seq_key in self._seen:
            self._count("duplicates")
            return
        self._seen.add(key)
        self._seen.add(seq_key)
        seq = ev.get("seq_num")
        last = self._last_seq.get(ev.get("descriptor"))
        if isinstance(seq, (int, np.integer)):
            if last is not None and seq < last:
                self._count("out_of_order")
            self._last_seq[ev.get("descriptor")] = max(seq, last) if last is not None else seq
        self._count("events")
        data = ev.get("data") or {}
        efield = self.xas.get("energy_field", "energy")
        roles = self.xas.get("detectors") or {}
        energy = _as_float(data.get(efield))
        if energy is None or not np.isfinite(energy):
            self._count("missing_fields" if efield not in data else "bad_energy")
            return
        counts = {}
        for role in MODE_ROLES[self.mode]:
            key_ = roles.get(role)
            value = _as_float(data.get(key_)) if key_ is not None else None
            if key_ is None or key_ not in data:
                self._count("missing_fields")
                return
            counts[role] = value if value is not None else float("nan")
        mu, var, bad = mu_from_counts(
            self.mode, i0=counts.get("i0"), it=counts.get("it"), ir=counts.get("ir"),
            if_=counts.get("if"),
        )
        if bad[0]:
            if self.mode != "reference" and not (counts["i0"] > 0):
                self._count("bad_i0")
            else:
                self._count("bad_counts")
            return
        self._E.append(energy)
        self._mu.append(float(mu[0]))
        self._var.append(float(var[0]))
        self._count("points")
        self._last_time = ev.get("time")
        self._update(ev)

    def _update(self, ev: dict) -> None:
        eng = self.engine
        E = np.asarray(self._E)
        e0 = _as_float(self.xas.get("e0"))
        new = normalize(E, np.asarray(self._mu), e0, use_larch=self.use_larch)
        cur = self.normalization
        n = len(self._E)
        renorm = cur is None or (
            not cur.close_to(new, self.renorm_rtol)
            and (n >= self.renorm_growth * self._n_at_norm
                 or (cur.method == "provisional" and new.method != "provisional"))
        )
        if renorm:
            self.normalization = new
            self._n_at_norm = n
            y, v = new.apply(E, np.asarray(self._mu), np.asarray(self._var))
            eng.rebuild(E, y, v)
            self.run_counts["outside_model_range"] = eng.n_outside
            if len(self._E) > 1:
                self._count("renormalizations")
        else:
            y, v = self.normalization.apply(E[-1:], np.asarray(self._mu[-1:]),
                                            np.asarray(self._var[-1:]))
            eng.add_point(E[-1], y[0], v[0])
            self.run_counts["outside_model_range"] = eng.n_outside
        if eng.n_points == 0:
            return
        res = eng.result()
        res.top_reduced_chi2 = eng.reduced_chi2(int(res.order[0]), res.offset_map, res.broadening_map)
        self.latest_ranking = res
        self.history.append({
            "n_points": res.n_points,
            "probabilities": {eng.names[i]: float(p) for i, p in
                              zip(res.order[: self.top_k], res.probabilities[: self.top_k])},
        })
        self._emit_ranking(res, ev)
        if self.plot is not None:
            try:
                self.plot.update(self)
            except Exception as exc:  # noqa: BLE001
                self._count("plot_errors")
                logger.exception("XASRankingCallback: plot update failed: %s", exc)

    # ------------------------------------------------------------ analysis run
    def provenance(self) -> dict:
        """Model name, weights sha256, candidate-set sha256 and software version."""
        p = self._library.provenance
        return {
            "model": p.get("model"),
            "weights_sha256": p.get("weights_sha256"),
            "candidates_sha256": p.get("candidates_sha256"),
            "n_candidates": len(self._library),
            "n_failures": len(self._library.failures),
            "software_version": software_version(),
        }

    def _safe_emit(self, name: str, doc: dict) -> None:
        if self.emit is None:
            return
        try:
            self.emit(name, doc)
        except Exception as exc:  # noqa: BLE001
            self._count("emit_errors")
            logger.exception("XASRankingCallback: emit(%r) failed: %s", name, exc)

    def _open_analysis_run(self, raw_start: dict) -> None:
        cfg = self.config
        md = {
            "purpose": "xas-ranking",
            "parent_uid": raw_start.get("uid"),
            "provenance": self.provenance(),
            "ranking_config": {
                "offsets_eV": [float(self.engine.offsets[0]), float(self.engine.offsets[-1]),
                               float(self.engine.offsets[1] - self.engine.offsets[0])
                               if self.engine.offsets.size > 1 else 0.0],
                "offset_prior": [cfg.offset_prior_mean, cfg.offset_prior_sd],
                "broadenings_eV": [float(b) for b in self.engine.broadenings],
                "amplitude_prior": list(cfg.amplitude_prior),
                "background_prior": list(cfg.background_prior),
                "model_floor": cfg.model_floor,
                "top_k": self.top_k,
                "mode": self.mode,
            },
            "failures": dict(self._library.failures),
        }
        bundle = compose_run(metadata=md, time=raw_start.get("time"))
        self._compose = bundle
        self._safe_emit("start", bundle.start_doc)
        k = self.top_k
        # The float arrays are declared dtype_numpy "|O8" so that TiledWriter writes them as
        # (float64) zarr arrays like the names: with its default max_array_size small float
        # arrays go into the SQL event table, whose SQLite storage cannot hold list columns.
        data_keys = {
            "top_names": {"source": "xas-ranking", "dtype": "array", "shape": [k],
                          "dtype_numpy": "<U64"},
            "top_probabilities": {"source": "xas-ranking", "dtype": "array", "shape": [k],
                                  "dtype_numpy": "|O8"},
            "top_log_evidence": {"source": "xas-ranking", "dtype": "array", "shape": [k],
                                 "dtype_numpy": "|O8"},
            "offset": {"source": "xas-ranking", "dtype": "number", "shape": [], "units": "eV"},
            "offset_sd": {"source": "xas-ranking", "dtype": "number", "shape": [], "units": "eV"},
            "broadening": {"source": "xas-ranking", "dtype": "number", "shape": [], "units": "eV"},
            "entropy": {"source": "xas-ranking", "dtype": "number", "shape": []},
            "top_reduced_chi2": {"source": "xas-ranking", "dtype": "number", "shape": []},
            "n_points": {"source": "xas-ranking", "dtype": "integer", "shape": []},
            "raw_seq_num": {"source": "xas-ranking", "dtype": "integer", "shape": []},
        }
        self._rank_desc = bundle.compose_descriptor(
            name="ranking", data_keys=data_keys, time=raw_start.get("time"),
            hints={"xas-ranking": {"fields": ["top_names", "top_probabilities", "offset"]}},
        )
        self._safe_emit("descriptor", self._rank_desc.descriptor_doc)

    def _emit_ranking(self, res: RankingResult, ev: dict) -> None:
        if self._rank_desc is None:
            return
        k = self.top_k
        names = (res.names[:k] + [""] * k)[:k]
        probs = np.full(k, np.nan)
        loge = np.full(k, np.nan)
        m = min(k, len(res.names))
        probs[:m] = res.probabilities[:m]
        loge[:m] = res.log_evidence[:m]
        t = ev.get("time")
        data = {
            "top_names": names,
            "top_probabilities": [float(p) for p in probs],
            "top_log_evidence": [float(x) for x in loge],
            "offset": float(res.offset_mean),
            "offset_sd": float(res.offset_sd),
            "broadening": float(res.broadening_mean),
            "entropy": float(res.entropy),
            "top_reduced_chi2": float(res.top_reduced_chi2),
            "n_points": int(res.n_points),
            "raw_seq_num": int(ev.get("seq_num") or 0),
        }
        doc = self._rank_desc.compose_event(
            data=data, timestamps={key: t for key in data}, time=t,
        )
        self._safe_emit("event", doc)

    def _finish(self, raw_stop: dict | None) -> None:
        counts = dict(self.run_counts)
        res = self.latest_ranking
        self.summary = {
            "run_uid": (self.run_start or {}).get("uid"),
            "counts": counts,
            "n_points_used": self.engine.n_points if self.engine else 0,
            "normalization": None if self.normalization is None else {
                "e0": self.normalization.e0, "edge_step": self.normalization.edge_step,
                "method": self.normalization.method},
            "ranking": None if res is None else res.as_dict(self.top_k),
        }
        problems = {k: v for k, v in counts.items() if k not in ("events", "points") and v}
        if problems:
            logger.warning("XASRankingCallback: run %s finished with %s", self.summary["run_uid"], problems)
        else:
            logger.info("XASRankingCallback: run %s finished, %s points", self.summary["run_uid"],
                        counts.get("points", 0))
        if self._compose is not None:
            status = (raw_stop or {}).get("exit_status", "fail" if raw_stop is None else "success")
            if status not in ("success", "abort", "fail"):
                status = "fail"
            reason = "" if raw_stop is not None else "raw run never stopped"
            stop = self._compose.compose_stop(exit_status=status, reason=reason,
                                              time=(raw_stop or {}).get("time", self._last_time))
            self._safe_emit("stop", stop)
        if self.plot is not None:
            try:
                self.plot.finish(self)
            except Exception as exc:  # noqa: BLE001
                self._count("plot_errors")
                logger.exception("XASRankingCallback: plot finish failed: %s", exc)
        self.active = False


def _as_float(value) -> float | None:
    """A finite-or-not float from a scalar or 1-element array; None if not a number."""
    if value is None or isinstance(value, (str, bytes, dict)):
        return None
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.size != 1:
        return None
    out = float(arr.reshape(()))
    return out if not math.isinf(out) else float("nan")


_LIBRARY_CACHE: dict = {}


def _library_from_start(xas: dict) -> CandidateLibrary:
    cands = xas.get("candidates") or {}
    model = (xas.get("model") or {}).get("name")
    key = (cands.get("source"), cands.get("sha256"), model)
    lib = _LIBRARY_CACHE.get(key)
    if lib is None:
        lib = CandidateLibrary.from_start_doc(xas)
        if cands.get("names"):
            lib = lib.subset([str(n) for n in cands["names"]])
        _LIBRARY_CACHE.clear()
        _LIBRARY_CACHE[key] = lib
    return lib
