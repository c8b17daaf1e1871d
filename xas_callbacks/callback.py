"""``XASRankingCallback``: live ranking of candidate structures during an XAS scan.

The callback is an :class:`event_model.RunRouter`. For each run whose start document carries the
``xas`` block (see docs/architecture.md) its factory makes a :class:`RankingRun`: a
:class:`event_model.DocumentRouter` that owns everything of that one run (its points, its
normalisation, its ranking engine, the analysis run it publishes) and is dropped with the run.
Only immutable precomputations are shared between runs and callbacks: the candidates' ranking
tables, keyed by content (:func:`xas_callbacks.ranking.ranking_tables`).

Per reading, a :class:`RankingRun` forms mu(E) from the detector roles and the mode, normalises
the points so far, updates the posterior over candidates and publishes one event of a linked
``xas-ranking`` analysis run: start document with ``purpose="xas-ranking"``, ``parent_uid``,
provenance and the ranking settings (with the usable energy window); stream ``ranking`` with one
event per usable reading (the reading's energy, mu and its sigma; top-k names, probabilities and
log-evidences; offset, broadening, entropy, the leader's chi^2 per reading, ``n_points`` used and
the ``raw_seq_num`` of the raw event it answers; ``p_none``, the probability that the sample is
none of the candidates; the offset prior in use, which the data set once the edge is measured;
and warnings such as an offset posterior at the end of its grid). Whoever needs the ranking -- the catalog, the
adaptive plan's feed, a 0MQ publisher -- subscribes to these documents
(:meth:`XASRankingCallback.subscribe`); nobody reaches into the callback.

Nothing inside the callback ever propagates to the RunEngine: each exception is logged and
counted. Bad input (NaN or zero I0, missing fields, duplicate or out-of-order events, events of
unknown descriptors) is counted and reported at the stop (log + :attr:`RankingRun.summary`).

The ranking documents are a deterministic function of the raw documents: the analysis run's
times are the raw run's times, so replaying a stored run through a fresh callback reproduces
the stored ranking documents except for their uids.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter, OrderedDict
from dataclasses import asdict
from typing import Callable

import numpy as np
from event_model import DocumentRouter, RunRouter, compose_run, unpack_event_page

from endstation.modes import MODE_ROLES, mu_from_counts
from models.normalization import Normalization, flatten, flattening, normalize
from models.spectra import edge_half_height
from models.jsonable import to_jsonable
from models.provenance import software_version
from xas_callbacks.candidates import CandidateLibrary
from xas_callbacks.ranking import (RankingConfig, RankingEngine, RankingResult, broaden_readings, data_offset_prior,
                                   ranking_tables, sharper_measurement_broadening, candidates_rise_width)

logger = logging.getLogger(__name__)

__all__ = ["XASRankingCallback", "RankingRun", "library_provenance"]

#: Candidates published per ranking event: enough for the energy-selection agent, which weighs
#: at most its 32 leading candidates (plans.energy_selection.EnergySelectionAgent.top_k).
DEFAULT_TOP_K = 32

#: Finished runs kept for inspection (``callback.runs``); their tables are shared, so this is cheap.
KEEP_RUNS = 4

Subscriber = Callable[[str, dict], object]


def library_provenance(library: CandidateLibrary | None) -> dict:
    """Model name, weights sha256, candidate-set sha256 and counts of ``library`` (empty without one)."""
    if library is None:
        return {"software_version": software_version()}
    p = library.provenance
    return {
        "model": p.get("model"),
        "weights_sha256": p.get("weights_sha256"),
        "candidates_sha256": p.get("candidates_sha256"),
        "n_candidates": len(library),
        "n_failures": len(library.failures),
        "software_version": software_version(),
    }


class XASRankingCallback(RunRouter):
    """Rank candidate structures against the measured spectrum, point by point, run by run.

    Parameters
    ----------
    library : CandidateLibrary or None
        Candidates to rank. None: built (and cached) from each start document's
        ``xas.candidates`` / ``xas.model``.
    emit : callable(name, doc), optional
        A first subscriber to the ranking documents (e.g. the catalog); more with
        :meth:`subscribe`.
    plot : callable or bool, optional
        A live plot of the ranking documents, subscribed like any subscriber: a
        :class:`xas_callbacks.plotting.LiveRankingPlot` (given this callback's per-run lookup of
        the raw start document and the candidate tables), or any ``plot(name, doc)``; True makes
        a default ``LiveRankingPlot``.
    top_k : int
        Candidates per ranking event.
    config : RankingConfig, optional
        Grids and priors of the ranking model; default: the settings chosen on validation data
        for the library's model (:meth:`RankingConfig.for_library`).
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
        Precision of the candidate tables (float32 default: half the memory traffic).
    foil : CandidateLibrary, "auto" or None
        The model's spectrum of the absorber's metal, for the energy calibration from the
        reference-foil channel (:mod:`xas_callbacks.foil`); "auto": predicted with the library's
        model where it names one; None: the offset prior comes from the edges only.
    screening_above : int or None
        Libraries of more candidates are ranked by :class:`xas_callbacks.screening.ScreeningEngine`
        (only the candidates that matter live, the others pruned with a certified bound on the
        posterior mass they can hold, within ``config.prune_mass``), smaller ones by
        :class:`~xas_callbacks.ranking.RankingEngine`. Default 20,000: in
        ``bench_ranking_scale.py`` the plain engine's mean update was still lower at 10,000
        candidates (84 against 219 ms), the screening engine's the only one that scales to 100,000.
        None: always the plain engine.
    """

    def __init__(
        self,
        library: CandidateLibrary | None = None,
        *,
        emit: Subscriber | None = None,
        plot=None,
        top_k: int = DEFAULT_TOP_K,
        config: RankingConfig | None = None,
        stream_name: str = "primary",
        mode: str | None = None,
        renorm_rtol: float = 0.03,
        renorm_growth: float = 1.25,
        use_larch: bool = False,
        dtype=np.float32,
        foil="auto",
        screening_above: int | None = 20_000,
    ) -> None:
        super().__init__([self._make_run])
        self.library = library
        self.screening_above = None if screening_above is None else int(screening_above)
        if plot is True:
            from xas_callbacks.plotting import LiveRankingPlot

            plot = LiveRankingPlot()
        self.plot = plot or None
        self.top_k = int(top_k)
        self.config = config or RankingConfig.for_library(library)
        self.stream_name = stream_name
        self.mode_override = mode
        self.renorm_rtol = float(renorm_rtol)
        self.renorm_growth = float(renorm_growth)
        self.use_larch = bool(use_larch)
        self.dtype = dtype
        self.foil = foil
        self.counts: Counter = Counter()  # over the lifetime of the callback
        self.runs: OrderedDict[str, RankingRun] = OrderedDict()  # the latest ones, by raw uid
        self._subscribers: dict[int, Subscriber] = {}
        self._tokens = itertools.count()
        self._descriptor_runs: dict[str, tuple[str, RankingRun | None]] = {}  # -> (run uid, its ranking)
        if emit is not None:
            self.subscribe(emit)
        if self.plot is not None:  # the plot is a subscriber of the ranking documents
            if getattr(self.plot, "lookup", False) is None:
                self.plot.lookup = self._plot_context
            self.subscribe(self.plot)

    def _plot_context(self, raw_uid: str):
        """(raw start document, ranking tables) of run ``raw_uid`` for the plot: both immutable."""
        run = self.runs.get(raw_uid)
        return (None, None) if run is None else (run.run_start, run.engine.tables)

    def __repr__(self) -> str:
        n = "from each start document" if self.library is None else f"{len(self.library)}"
        return f"<XASRankingCallback: {n} candidates, {len(self.runs)} runs ranked, top_k={self.top_k}>"

    # ------------------------------------------------------------ subscribers
    def subscribe(self, callback: Subscriber) -> int:
        """Send the ranking documents to ``callback(name, doc)`` too; returns a token."""
        token = next(self._tokens)
        self._subscribers[token] = callback
        return token

    def unsubscribe(self, token: int) -> None:
        """Stop sending documents to the subscriber of ``token``."""
        self._subscribers.pop(token, None)

    def _publish(self, name: str, doc: dict) -> None:
        for callback in list(self._subscribers.values()):
            try:
                callback(name, doc)
            except Exception as exc:  # noqa: BLE001 -- a subscriber must not stop the ranking
                self.counts["emit_errors"] += 1
                logger.exception("XASRankingCallback: subscriber %r failed on %r: %s", callback, name, exc)

    # ----------------------------------------------------------------- safety
    def __call__(self, name: str, doc: dict, validate: bool = False):
        try:
            return super().__call__(name, doc, validate)
        except Exception as exc:  # noqa: BLE001 -- never propagate into the RunEngine
            self.counts["callback_errors"] += 1
            logger.exception("XASRankingCallback: error while handling %r document: %s", name, exc)
            return name, doc

    # ---------------------------------------------------------------- routing
    def _make_run(self, name: str, start_doc: dict):
        """The factory: a :class:`RankingRun` for runs with an ``xas`` block, nothing otherwise."""
        xas = start_doc.get("xas")
        if not isinstance(xas, dict) or start_doc.get("purpose") == "xas-ranking":
            self.counts["runs_ignored"] += 1
            return [], []
        mode = self.mode_override or xas.get("mode", "transmission")
        if mode not in MODE_ROLES:
            self.counts["runs_ignored"] += 1
            logger.warning("XASRankingCallback: unknown mode %r in run %s; ignored", mode, start_doc.get("uid"))
            return [], []
        for earlier in self.runs.values():
            if earlier.open:
                self.counts["unclosed_runs"] += 1
                earlier.close_unfinished()
        library = self.library if self.library is not None else _library_from_start(xas)
        run = RankingRun(self, library, mode)
        self.runs[start_doc["uid"]] = run
        while len(self.runs) > KEEP_RUNS:
            self.runs.popitem(last=False)
        self.counts["runs_ranked"] += 1
        return [run], []

    def descriptor(self, doc):
        result = super().descriptor(doc)
        self._descriptor_runs[doc["uid"]] = (doc["run_start"], self.runs.get(doc["run_start"]))
        return result

    # Events go straight to their run's RankingRun, which counts what is wrong with them (the
    # RunRouter would first pack an event into a page, which fails on an event without data).
    def event(self, doc):
        return self._route(doc, "event", 1)

    def event_page(self, doc):
        return self._route(doc, "event_page", len(doc.get("seq_num") or ()))

    def _route(self, doc: dict, name: str, n_events: int) -> dict:
        descriptor = doc.get("descriptor")
        if descriptor not in self._descriptor_runs:
            self._count_unknown_descriptor(n_events)
        else:
            _, run = self._descriptor_runs[descriptor]
            if run is not None:
                run(name, doc)
        return doc

    def stop(self, doc):
        result = super().stop(doc)
        self._descriptor_runs = {d: entry for d, entry in self._descriptor_runs.items()
                                 if entry[0] != doc.get("run_start")}
        return result

    def _count_unknown_descriptor(self, n: int = 1) -> None:
        run = self.last_run
        if run is not None and run.open:
            run.count("unknown_descriptor", n)
        else:
            self.counts["unknown_descriptor"] += n

    def foil_for(self, library: CandidateLibrary, element: str | None):
        """The metal spectrum the reference foil is calibrated against, for ``library``'s runs."""
        if self.foil != "auto":
            return self.foil
        model = library.provenance.get("model")
        if not element or not model or str(model).endswith("computed") or model == "synthetic":
            return None
        from xas_callbacks.foil import foil_library

        try:
            return foil_library(element, str(model))
        except Exception as exc:  # noqa: BLE001 -- no foil calibration, the edges still give a prior
            logger.warning("XASRankingCallback: no metal spectrum for the foil calibration (%s)", exc)
            return None

    # ----------------------------------------------------------------- access
    def ranks(self, library: CandidateLibrary) -> bool:
        """Whether a run with ``library``'s candidates in its start document gets them ranked:
        the callback's own library holds the same candidates, or it has none and builds each run's
        from the start document (which needs the library's source)."""
        if self.library is None:
            return bool(library.provenance.get("source"))
        return list(self.library.names) == list(library.names) and np.array_equal(self.library.mean, library.mean)

    @property
    def last_run(self) -> "RankingRun | None":
        """The ranking of the most recent XAS run (running or finished)."""
        return next(reversed(self.runs.values()), None)

    @property
    def latest_ranking(self) -> RankingResult | None:
        """The most recent run's latest ranking."""
        run = self.last_run
        return None if run is None else run.latest_ranking

    @property
    def summary(self) -> dict:
        """The most recent finished run's summary (counts, normalisation, ranking)."""
        run = self.last_run
        return {} if run is None else run.summary

    @property
    def history(self) -> list[dict]:
        """The most recent run's probability history (n_points, top-k probabilities per update)."""
        run = self.last_run
        return [] if run is None else run.history

    def provenance(self) -> dict:
        """Model name, weights sha256, candidate-set sha256 and software version of the library
        ranked (the given one, else the last run's; only the version before any run)."""
        library = self.library
        if library is None and self.last_run is not None:
            library = self.last_run.library
        return library_provenance(library)


class RankingRun(DocumentRouter):
    """The ranking of one raw run: its points, normalisation, engine and analysis run.

    Made by :class:`XASRankingCallback` for each XAS run; see the module docstring for the
    documents it publishes.
    """

    def __init__(self, owner: XASRankingCallback, library: CandidateLibrary, mode: str) -> None:
        super().__init__()
        self.owner = owner
        self.library = library
        self.mode = mode
        self.top_k = min(owner.top_k, len(library))
        tables = ranking_tables(library.names, library.energies, library.mean, library.std, owner.config,
                                dtype=owner.dtype)
        if owner.screening_above is not None and len(library) > owner.screening_above:
            from xas_callbacks.screening import ScreeningEngine

            self.engine = ScreeningEngine(tables, owner.config)  # same interface, pruned library
        else:
            self.engine = RankingEngine(config=owner.config, tables=tables)
        self.normalization: Normalization | None = None
        self._flattening = None  # (edge, post-edge polynomial) applied to the readings
        self.latest_ranking: RankingResult | None = None
        self.history: list[dict] = []
        self.summary: dict = {}
        self.run_counts: Counter = Counter()
        self.run_start: dict | None = None
        self.xas: dict = {}
        self.descriptors: set[str] = set()
        self.open = False
        self._stream_descriptors: set[str] = set()
        self._seen: set = set()
        self._last_seq: dict[str, int] = {}
        self._n_at_norm = 0
        #: Gaussian FWHM (eV) the readings are broadened by to rank them: > 0 for a measurement
        #: sharper than the candidates (HERFD), refitted with each normalisation
        self.measurement_broadening = 0.0
        self._candidates_rise: float | None = None  # the candidates' 20-80 % edge rise (eV), a low percentile
        self._E: list[float] = []
        self._mu: list[float] = []
        self._var: list[float] = []
        self._ref: tuple[list, list, list] = ([], [], [])  # the reference foil's readings
        self._foil_prior = None  # the offset prior from the foil, once it is measured
        self._compose = None
        self._rank_desc = None
        self._last_time = None

    def count(self, what: str, n: int = 1) -> None:
        self.owner.counts[what] += n
        self.run_counts[what] += n

    # --------------------------------------------------------------- documents
    def start(self, doc):
        self.run_start = doc
        self.xas = doc["xas"]
        self.open = True
        self.foil = self.owner.foil_for(self.library, self.xas.get("element"))
        self._open_analysis_run(doc)

    def descriptor(self, doc):
        self.descriptors.add(doc["uid"])
        if doc.get("name") == self.owner.stream_name:
            self._stream_descriptors.add(doc["uid"])

    def event(self, doc):
        self._process_event(doc)

    def event_page(self, doc):
        for event in unpack_event_page(doc):
            try:
                self._process_event(event)
            except Exception as exc:  # noqa: BLE001 -- one bad event does not lose the page
                self.count("callback_errors")
                logger.exception("XASRankingCallback: error on an event of a page: %s", exc)

    def stop(self, doc):
        self._finish(doc)

    def close_unfinished(self) -> None:
        """End the analysis run of a raw run that never stopped (a new run started)."""
        self._finish(None)

    # ----------------------------------------------------------------- readings
    def _process_event(self, ev: dict) -> None:
        if ev.get("descriptor") not in self._stream_descriptors:
            return
        key = ev.get("uid") or (ev.get("descriptor"), ev.get("seq_num"))
        seq_key = (ev.get("descriptor"), ev.get("seq_num"))
        if key in self._seen or seq_key in self._seen:
            self.count("duplicates")
            return
        self._seen.add(key)
        self._seen.add(seq_key)
        seq = ev.get("seq_num")
        last = self._last_seq.get(ev.get("descriptor"))
        if isinstance(seq, (int, np.integer)):
            if last is not None and seq < last:
                self.count("out_of_order")
            self._last_seq[ev.get("descriptor")] = max(seq, last) if last is not None else seq
        self.count("events")
        data = ev.get("data") or {}
        efield = self.xas.get("energy_field", "energy")
        roles = self.xas.get("detectors") or {}
        energy = _as_float(data.get(efield))
        if energy is None or not np.isfinite(energy):
            self.count("missing_fields" if efield not in data else "bad_energy")
            return
        counts = {}
        for role in MODE_ROLES[self.mode]:
            key_ = roles.get(role)
            if key_ is None or key_ not in data:
                self.count("missing_fields")
                return
            value = _as_float(data.get(key_))
            counts[role] = value if value is not None else float("nan")
        mu, var, bad = mu_from_counts(
            self.mode, i0=counts.get("i0"), it=counts.get("it"), ir=counts.get("ir"), if_=counts.get("if"),
        )
        self._take_reference(energy, data, roles)
        if bad[0]:
            self.count("bad_i0" if self.mode != "reference" and not (counts["i0"] > 0) else "bad_counts")
            return
        self._E.append(energy)
        self._mu.append(float(mu[0]))
        self._var.append(float(var[0]))
        self.count("points")
        self._last_time = ev.get("time")
        self._update(ev)

    def _take_reference(self, energy: float, data: dict, roles: dict) -> None:
        """Keep the reference foil's reading (``ln(it/ir)``) where the run has the channel."""
        if self.foil is None or self._foil_prior is not None or not {"it", "ir"} <= set(roles):
            return
        it, ir = _as_float(data.get(roles["it"])), _as_float(data.get(roles["ir"]))
        mu, var, bad = mu_from_counts("reference", it=it, ir=ir)
        if not bad[0]:
            for store, value in zip(self._ref, (energy, float(mu[0]), float(var[0]))):
                store.append(value)

    def _offset_prior(self, E, y):
        """The offset prior from the reference foil once it is measured, else from the edges."""
        if self._foil_prior is None and self.foil is not None and len(self._ref[0]) >= 10:
            from xas_callbacks.foil import foil_offset_prior

            self._foil_prior = foil_offset_prior(*map(np.asarray, self._ref), self.foil, self.owner.config)
        if self._foil_prior is not None:
            return self._foil_prior
        return data_offset_prior(E, y, self.library.energies, self.library.mean)

    def _update(self, ev: dict) -> None:
        eng = self.engine
        E = np.asarray(self._E)
        e0 = _as_float(self.xas.get("e0"))
        new = normalize(E, np.asarray(self._mu), e0, use_larch=self.owner.use_larch)
        cur = self.normalization
        n = len(self._E)
        renorm = cur is None or (
            not cur.close_to(new, self.owner.renorm_rtol)
            and (n >= self.owner.renorm_growth * self._n_at_norm
                 or (cur.method == "provisional" and new.method != "provisional"))
        )
        if renorm:
            self.normalization = new
            self._n_at_norm = n
            y, v = new.apply(E, np.asarray(self._mu), np.asarray(self._var))
            y = self._flatten(E, y, refit=True)
            prior = self._offset_prior(E, y)
            if prior is not None and not np.allclose(prior, eng.offset_prior, atol=0.25):
                eng.set_offset_prior(*prior)
            # only once pre- and post-edge are measured: a provisional step sharpens any rise
            order = np.argsort(E, kind="stable")
            self.measurement_broadening = self._sharper_by(E, y, order) if new.method != "provisional" else 0.0
            eng.rebuild(E, *self._broadened(E, y, v, order))
            if n > 1:
                self.count("renormalizations")
        elif self.measurement_broadening > 0:  # a new reading changes its neighbours' convolution
            y, v = self.normalization.apply(E, np.asarray(self._mu), np.asarray(self._var))
            eng.rebuild(E, *self._broadened(E, self._flatten(E, y), v))
        else:
            y, v = self.normalization.apply(E[-1:], np.asarray(self._mu[-1:]), np.asarray(self._var[-1:]))
            eng.add_point(E[-1], self._flatten(E[-1:], y)[0], v[0])
        self.run_counts["outside_model_range"] = eng.n_outside
        res = eng.result()  # with the leader's reduced chi^2 and the calibrated p_none
        if self.measurement_broadening > 0:
            res.measurement_broadening_eV = self.measurement_broadening
            res.warnings.append(f"the measurement is sharper than the candidates (high-energy-resolution "
                                f"fluorescence?): broadened by {self.measurement_broadening:g} eV FWHM to rank it")
        self.latest_ranking = res
        self.history.append({
            "n_points": res.n_points,
            "probabilities": {eng.names[i]: float(p) for i, p in
                              zip(res.order[: self.top_k], res.probabilities[: self.top_k])},
        })
        self._emit_ranking(res, ev)

    def _sharper_by(self, energy, y, order) -> float:
        """The FWHM (eV) the readings are broadened by because their edge rises more steeply than
        the candidates' (HERFD; :func:`~xas_callbacks.ranking.sharper_measurement_broadening`);
        ``order`` sorts ``energy``."""
        if self._candidates_rise is None:
            self._candidates_rise = candidates_rise_width(self.library.energies, self.library.mean)
        return sharper_measurement_broadening(energy[order], np.asarray(y)[order], self.library.energies,
                                              self.library.mean, self._candidates_rise)

    def _broadened(self, energy, y, var, order=None):
        """``(y, var)`` convolved in energy with :attr:`measurement_broadening` (unchanged at 0),
        in the readings' own order (``order``, if given, sorts ``energy``)."""
        y, var = np.asarray(y, dtype=float), np.asarray(var, dtype=float)
        if self.measurement_broadening <= 0:
            return y, var
        if order is None:
            order = np.argsort(energy, kind="stable")
        yb, vb = broaden_readings(energy[order], y[order], var[order], self.measurement_broadening)
        out_y, out_v = np.empty_like(y), np.empty_like(var)
        out_y[order], out_v[order] = yb, vb
        return out_y, out_v

    def _flatten(self, energy, y, refit: bool = False) -> np.ndarray:
        """Normalised readings flattened as the candidates were; the flattening is refitted with
        the normalisation and applied unchanged to the readings in between."""
        window = self.engine.tables.flat_window
        if refit:
            edge = edge_half_height(energy, y) if window is not None else float("nan")
            self._flattening = (edge, flattening(energy, y, edge, window)) if np.isfinite(edge) else None
        if self._flattening is None:
            return np.asarray(y, dtype=float)
        return flatten(energy, y, *self._flattening)

    # ------------------------------------------------------------ analysis run
    def _open_analysis_run(self, raw_start: dict) -> None:
        cfg, eng = self.owner.config, self.engine
        md = {
            "purpose": "xas-ranking",
            "parent_uid": raw_start.get("uid"),
            "provenance": library_provenance(self.library),
            "ranking_config": {
                **to_jsonable(asdict(cfg)),
                "offsets_eV": [float(eng.offsets[0]), float(eng.offsets[-1]),
                               float(eng.offsets[1] - eng.offsets[0]) if eng.offsets.size > 1 else 0.0],
                "window_eV": [float(w) for w in eng.window],
                "top_k": self.top_k,
                "mode": self.mode,
                "engine": type(eng).__name__,
            },
            "failures": dict(self.library.failures),
        }
        bundle = compose_run(metadata=md, time=raw_start.get("time"))
        self._compose = bundle
        self.owner._publish("start", bundle.start_doc)
        k = self.top_k

        def number(units=None):
            key = {"source": "xas-ranking", "dtype": "number", "shape": [], "dtype_numpy": "<f8"}
            return {**key, "units": units} if units else key

        data_keys = {
            "energy": number("eV"),
            "mu": number(),
            "mu_sigma": number(),
            "top_names": {"source": "xas-ranking", "dtype": "array", "shape": [k], "dtype_numpy": "<U64"},
            "top_probabilities": {"source": "xas-ranking", "dtype": "array", "shape": [k], "dtype_numpy": "<f8"},
            "top_log_evidence": {"source": "xas-ranking", "dtype": "array", "shape": [k], "dtype_numpy": "<f8"},
            "offset": number("eV"),
            "offset_sd": number("eV"),
            "broadening": number("eV"),
            "entropy": number(),
            "top_reduced_chi2": number(),
            "p_none": number(),
            "p_none_raw": number(),
            "offset_prior_mean": number("eV"),
            "offset_prior_sd": number("eV"),
            "warnings": {"source": "xas-ranking", "dtype": "string", "shape": [], "dtype_numpy": "<U400"},
            "n_points": {"source": "xas-ranking", "dtype": "integer", "shape": [], "dtype_numpy": "<i8"},
            "raw_seq_num": {"source": "xas-ranking", "dtype": "integer", "shape": [], "dtype_numpy": "<i8"},
        }
        self._rank_desc = bundle.compose_descriptor(
            name="ranking", data_keys=data_keys, time=raw_start.get("time"),
            hints={"xas-ranking": {"fields": ["top_names", "top_probabilities", "offset"]}},
        )
        self.owner._publish("descriptor", self._rank_desc.descriptor_doc)

    def _emit_ranking(self, res: RankingResult, ev: dict) -> None:
        k = self.top_k
        names = (res.names[:k] + [""] * k)[:k]
        probs = np.full(k, np.nan)
        loge = np.full(k, np.nan)
        m = min(k, len(res.names))
        probs[:m] = res.probabilities[:m]
        loge[:m] = res.log_evidence[:m]
        t = ev.get("time")
        data = {
            "energy": float(self._E[-1]),
            "mu": float(self._mu[-1]),
            "mu_sigma": float(math.sqrt(self._var[-1])),
            "top_names": names,
            "top_probabilities": [float(p) for p in probs],
            "top_log_evidence": [float(x) for x in loge],
            "offset": float(res.offset_mean),
            "offset_sd": float(res.offset_sd),
            "broadening": float(res.broadening_mean),
            "entropy": float(res.entropy),
            "top_reduced_chi2": float(res.top_reduced_chi2),
            "p_none": float(res.p_none),
            "p_none_raw": float(res.p_none_raw),
            "offset_prior_mean": float(self.engine.offset_prior[0]),
            "offset_prior_sd": float(self.engine.offset_prior[1]),
            "warnings": "; ".join(res.warnings)[:400],
            "n_points": int(res.n_points),
            "raw_seq_num": int(ev.get("seq_num") or 0),
        }
        doc = self._rank_desc.compose_event(data=data, timestamps={key: t for key in data}, time=t)
        self.owner._publish("event", doc)

    def _finish(self, raw_stop: dict | None) -> None:
        if not self.open:
            return
        self.open = False
        counts = dict(self.run_counts)
        res = self.latest_ranking
        self.summary = {
            "run_uid": (self.run_start or {}).get("uid"),
            "counts": counts,
            "n_points_used": self.engine.n_points,
            "normalization": None if self.normalization is None else {
                "e0": self.normalization.e0, "edge_step": self.normalization.edge_step,
                "method": self.normalization.method},
            "ranking": None if res is None else res.as_dict(self.top_k),
        }
        problems = {k: v for k, v in counts.items()
                    if k not in ("events", "points", "outside_model_range", "renormalizations") and v}
        if problems:
            logger.warning("XASRankingCallback: run %s finished with %s", self.summary["run_uid"], problems)
        else:
            logger.info("XASRankingCallback: run %s finished, %s points", self.summary["run_uid"],
                        counts.get("points", 0))
        status = (raw_stop or {}).get("exit_status", "fail" if raw_stop is None else "success")
        if status not in ("success", "abort", "fail"):
            status = "fail"
        reason = "" if raw_stop is not None else "raw run never stopped"
        stop = self._compose.compose_stop(exit_status=status, reason=reason,
                                          time=(raw_stop or {}).get("time", self._last_time))
        self.owner._publish("stop", stop)


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


_LIBRARIES: OrderedDict = OrderedDict()


def _library_from_start(xas: dict) -> CandidateLibrary:
    """The candidates a start document names (``xas.candidates``, ``xas.model``), built once.

    Cached by the start document's source, candidate-set sha256 and model; a library is only
    read, never changed, so runs may share it.
    """
    cands = xas.get("candidates") or {}
    model = (xas.get("model") or {}).get("name")
    key = (cands.get("source"), cands.get("sha256"), model, tuple(cands.get("names") or ()))
    lib = _LIBRARIES.get(key)
    if lib is None:
        lib = CandidateLibrary.from_start_doc(xas)
        if cands.get("names"):
            lib = lib.subset([str(n) for n in cands["names"]])
        _LIBRARIES[key] = lib
        while len(_LIBRARIES) > 2:
            _LIBRARIES.popitem(last=False)
    return lib
