"""The ranking, drawn: live during a run (:class:`LiveRankingPlot`) and once (:func:`plot_ranking`).

:class:`LiveRankingPlot` is a subscriber of the ``xas-ranking`` documents (the linked analysis run
:class:`xas_callbacks.callback.XASRankingCallback` publishes for every usable reading), a
:class:`bluesky.callbacks.mpl_plotting.QtAwareCallback` like bluesky's own live plots: in a Qt
session it is created, updated and drawn in the GUI thread only, at most a few times per second
(:class:`xas_callbacks.gui.LiveFigure`); headless it draws once, at the end of each run, and saves a
PNG. One window, reused from run to run:

* left: the normalised measured mu(E) as markers (an adaptive scan measures out of order), the
  latest reading highlighted, and the leading candidates' predicted spectra with 1-sigma bands, at
  the ranking's common offset and broadening, scaled by their fitted amplitude and background;
* right: the leading candidates' probabilities against the number of readings used, and, when the
  ranking reports it (``p_none``), the probability that the sample is none of the candidates;
* title: scan id, uid, plan, the leader and its probability.

Everything drawn comes from the ranking documents, so the same plot follows a replayed run or a
ranking service's documents. The callback that publishes them also passes, per run, the raw run's
start document (scan id, E0 for the normalisation) and the candidates' ranking tables (immutable,
for the candidate curves); without them the plot shows the readings and the probabilities only.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
from event_model import unpack_event_page
from matplotlib.ticker import MaxNLocator

from models.normalization import normalize
from xas_callbacks.gui import DEFAULT_MIN_INTERVAL_S, LiveFigure

logger = logging.getLogger(__name__)

__all__ = ["LiveRankingPlot", "plot_ranking", "candidate_curve", "fitted_scale"]

#: Colours of the leading candidates, in rank order.
COLORS = ("C0", "C1", "C2", "C3", "C4", "C5")


def plot_ranking(engine, result, ax_spec, ax_prob=None, history=None, top: int = 3, title: str = ""):
    """Draw measured points, top candidates with 1-sigma bands, and probability history.

    Parameters
    ----------
    engine : RankingEngine
        Holds the points (normalised) and the candidate tables.
    result : RankingResult
    ax_spec, ax_prob : matplotlib Axes
    history : list of dict, optional
        ``{"n_points": n, "probabilities": {name: p}}`` per update.
    top : int
        How many candidates to draw.
    """
    E, y, var = engine.points
    ax_spec.clear()
    ax_spec.errorbar(E, y, yerr=np.sqrt(var), fmt="o", ms=2.5, color="k", lw=0.5,
                     label="measured", zorder=5)
    if E.size:
        e_plot = np.linspace(max(E.min(), engine.window[0]), min(E.max(), engine.window[1]), 400)
        colors = ["C0", "C1", "C2", "C3", "C4"]
        for rank, idx in enumerate(result.order[:top]):
            m, s = engine.model_at(idx, e_plot, result.offset_mean, result.broadening_map)
            a, b = engine.best_fit(idx, result.offset_mean, result.broadening_map)
            c = colors[rank % len(colors)]
            ax_spec.plot(e_plot, a * m + b, color=c,
                         label=f"{engine.names[idx]} p={result.probabilities[rank]:.3f}")
            ax_spec.fill_between(e_plot, a * (m - s) + b, a * (m + s) + b, color=c, alpha=0.2, lw=0)
    ax_spec.set_xlabel("energy (eV)")
    ax_spec.set_ylabel("normalised mu")
    ax_spec.set_title(title or f"offset {result.offset_mean:+.2f} ± {result.offset_sd:.2f} eV, "
                      f"broadening {result.broadening_mean:.1f} eV, n={result.n_points}", fontsize=9)
    ax_spec.legend(fontsize=7, loc="lower right")
    if ax_prob is not None:
        ax_prob.clear()
        if history:
            final = [engine.names[i] for i in result.order[:top]]
            n = [h["n_points"] for h in history]
            for name in final:
                ax_prob.plot(n, [h["probabilities"].get(name, np.nan) for h in history], label=name)
        ax_prob.set_xlabel("point number")
        ax_prob.set_ylabel("probability")
        ax_prob.set_ylim(-0.02, 1.02)
        ax_prob.legend(fontsize=7)


def candidate_curve(tables, index: int, energy, offset: float, broadening: float):
    """Mean and 1-sigma of candidate ``index`` of :class:`~xas_callbacks.ranking.RankingTables` at
    measured ``energy``, for a common ``offset`` and the grid broadening nearest ``broadening``
    (what :meth:`RankingEngine.model_at` evaluates, from the shared immutable tables)."""
    jb = int(np.argmin(np.abs(np.asarray(tables.broadenings) - broadening)))
    e = np.asarray(energy, dtype=float) + offset
    m = np.interp(e, tables.grid, tables.M[jb, :, index])
    v = np.interp(e, tables.grid, tables.V[jb, :, index])
    return m, np.sqrt(np.maximum(v, 0.0))


def fitted_scale(m, s, y, var, config) -> tuple[float, float]:
    """Posterior-mean amplitude and background (a, b) of a candidate ``m +- s`` against readings
    ``y +- sqrt(var)``, under the ranking's Gaussian priors (as :meth:`RankingEngine.best_fit`)."""
    if len(y) == 0:
        return float(config.amplitude_prior[0]), float(config.background_prior[0])
    w = 1.0 / (np.asarray(var) + np.asarray(s) ** 2 + config.model_floor**2)
    (ma, sa), (mb, sb) = config.amplitude_prior, config.background_prior
    A = np.array([[np.sum(w * m * m) + sa**-2, np.sum(w * m)], [np.sum(w * m), np.sum(w) + sb**-2]])
    h = np.array([np.sum(w * m * y) + ma / sa**2, np.sum(w * y) + mb / sb**2])
    a, b = np.linalg.solve(A, h)
    return float(a), float(b)


class _Trace:
    """The ranking documents of one analysis run, as plain lists (appended in the GUI thread)."""

    def __init__(self, start: dict) -> None:
        self.uid = start.get("uid")
        self.parent_uid = start.get("parent_uid")
        self.descriptors: set[str] = set()
        self.energy: list[float] = []
        self.mu: list[float] = []
        self.mu_sigma: list[float] = []
        self.n_points: list[int] = []
        self.probabilities: list[dict[str, float]] = []
        self.p_none: list[float] = []
        self.last: dict = {}

    def add(self, data: dict) -> None:
        self.energy.append(float(data.get("energy", np.nan)))
        self.mu.append(float(data.get("mu", np.nan)))
        self.mu_sigma.append(float(data.get("mu_sigma", np.nan)))
        self.n_points.append(int(data.get("n_points", len(self.n_points) + 1)))
        names = [str(n) for n in data.get("top_names", ())]
        probs = [float(p) for p in data.get("top_probabilities", ())]
        self.probabilities.append({n: p for n, p in zip(names, probs) if n})
        self.p_none.append(float(data["p_none"]) if data.get("p_none") is not None else np.nan)
        self.last = data


class LiveRankingPlot(LiveFigure):
    """Live plot of the ranking documents of each XAS run (see the module docstring).

    Subscribe it to a ranking callback: ``XASRankingCallback(library, plot=LiveRankingPlot())``
    (or ``plot=True``) wires it, with the per-run lookup.

    Parameters
    ----------
    save_path : str or Path, optional
        PNG written at the end of each run (``{uid}``, ``{scan_id}`` filled in). Headless, the
        default is ``default_plot_dir()/scan{scan_id}-{uid8}-ranking.png``; with windows, none.
    top : int
        Candidates drawn.
    lookup : callable, optional
        ``lookup(raw_uid) -> (raw start document, RankingTables)`` (either may be None), called
        in the publisher's thread when an analysis run starts. Set by the callback it is given to.
    min_interval_s : float
        Shortest time between two redraws.
    size_px : (int, int)
        Window size.
    label : str
        Window title; one window per label, reused by every run.
    announce : callable, optional
        Told where each PNG went (default ``print``).
    use_teleporter : bool, optional
        Default: with a Qt backend.
    """

    what = "Ranking plot"
    file_tag = "ranking"

    def __init__(self, save_path=None, *, top: int = 3, lookup: Callable | None = None,
                 min_interval_s: float = DEFAULT_MIN_INTERVAL_S, size_px=(960, 440), label: str = "XAS ranking",
                 announce=print, use_teleporter: bool | None = None) -> None:
        super().__init__(label=label, size_px=size_px, save_path=save_path, min_interval_s=min_interval_s,
                         announce=announce, use_teleporter=use_teleporter)
        self.top = max(1, int(top))
        self.lookup = lookup
        self.trace: _Trace | None = None
        self.tables = None
        self._contexts: dict[str, tuple] = {}
        self._bands: list = []

    # ------------------------------------------------------------- documents
    def before_teleport(self, name, doc):
        if name == "start" and doc.get("purpose") == "xas-ranking" and self.lookup is not None:
            try:
                self._contexts[doc.get("uid")] = tuple(self.lookup(doc.get("parent_uid")))
            except Exception as exc:  # noqa: BLE001 -- the plot then shows what the documents hold
                logger.warning("LiveRankingPlot: no run context for %s: %s", doc.get("parent_uid"), exc)

    def begin(self, doc) -> bool:
        if doc.get("purpose") != "xas-ranking":
            self.trace = None
            return False
        raw_start, tables = self._contexts.pop(doc.get("uid"), (None, None))
        self.trace = _Trace(doc)
        self.tables = tables
        self.run_start = raw_start or {"uid": doc.get("parent_uid") or doc.get("uid")}
        return True

    def descriptor(self, doc):
        if self.trace is not None and doc.get("run_start") == self.trace.uid and doc.get("name") == "ranking":
            self.trace.descriptors.add(doc["uid"])

    def event(self, doc):
        if self.trace is not None and doc.get("descriptor") in self.trace.descriptors:
            self.trace.add(doc.get("data") or {})
            self.request_draw()

    def event_page(self, doc):
        for event in unpack_event_page(doc):
            self.event(event)

    def stop(self, doc):
        if self.trace is not None and doc.get("run_start") == self.trace.uid:
            self.end_run()

    def n_drawn(self) -> int:
        return getattr(self, "_n_drawn", 0)

    # --------------------------------------------------------------- drawing
    def layout(self, fig) -> None:
        self.ax_spec, self.ax_prob = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1.7, 1.0)})
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.84, wspace=0.22)
        ax = self.ax_spec
        ax.set_xlabel("energy (eV)")
        ax.set_ylabel("normalised mu(E)")
        self._errbars = ax.vlines([], [], [], color="0.4", lw=0.6, zorder=4)
        (self._points,) = ax.plot([], [], "o", ms=3.5, color="k", zorder=5, label="measured")
        (self._latest,) = ax.plot([], [], "o", ms=7, mfc="none", mec="red", mew=1.5, zorder=6, label="latest")
        self._curves = [ax.plot([], [], color=COLORS[i % len(COLORS)], lw=1.4)[0] for i in range(self.top)]
        ax_p = self.ax_prob
        ax_p.set_xlabel("readings used")
        ax_p.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_p.set_ylabel("probability")
        ax_p.set_ylim(-0.02, 1.02)
        self._histories = [ax_p.plot([], [], "-", color=COLORS[i % len(COLORS)], lw=1.4)[0] for i in range(self.top)]
        (self._none_line,) = ax_p.plot([], [], "--", color="0.3", lw=1.2, label="none of these")
        self._bands = []
        self._n_drawn = 0
        fig.suptitle(self._title(), fontsize=10)

    def redraw(self) -> None:
        t = self.trace
        if t is None or not t.energy:
            return
        E = np.asarray(t.energy)
        mu = np.asarray(t.mu)
        var = np.asarray(t.mu_sigma) ** 2
        xas = (self.run_start or {}).get("xas") or {}
        nm = normalize(E, mu, xas.get("e0"), use_larch=False)
        y, v = nm.apply(E, mu, var)
        sig = np.sqrt(np.where(np.isfinite(v), v, 0.0))
        self._points.set_data(E, y)
        self._latest.set_data(E[-1:], y[-1:])
        self._errbars.set_segments([np.array([[e, a - s], [e, a + s]]) for e, a, s in zip(E, y, sig)])
        last = t.last
        names = [str(n) for n in last.get("top_names", ()) if n][: self.top]
        probs = [float(p) for p in last.get("top_probabilities", ())][: len(names)]
        self._draw_candidates(names, probs, E, y, v, last)
        self._draw_history(names, t)
        ax = self.ax_spec
        ax.relim(visible_only=True)
        ax.autoscale_view()
        handles = [self._points] + [c for c in self._curves if c.get_visible()]
        ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=7, loc="lower right")
        chi2 = float(last.get("top_reduced_chi2", np.nan))
        offset, offset_sd = float(last.get("offset", np.nan)), float(last.get("offset_sd", np.nan))
        broadening = float(last.get("broadening", np.nan))
        ax.set_title(f"offset {offset:+.2f} ± {offset_sd:.2f} eV, broadening {broadening:.1f} eV"
                     + (f", leader's chi²/reading {chi2:.2g}" if np.isfinite(chi2) else ""), fontsize=8)
        ax.set_ylabel("normalised mu(E)" + (" (provisional)" if nm.method == "provisional" else ""))
        self.fig.suptitle(self._title(names[0] if names else None, probs[0] if probs else None), fontsize=10)
        self._n_drawn = len(E)

    def _draw_candidates(self, names, probs, E, y, v, last) -> None:
        for band in self._bands:
            band.remove()
        self._bands = []
        tables = self.tables
        offset = float(last.get("offset", 0.0))
        broadening = float(last.get("broadening", 0.0))
        index = {n: i for i, n in enumerate(tables.names)} if tables is not None else {}
        lo, hi = (tables.window if tables is not None else (np.nanmin(E), np.nanmax(E)))
        inside = (E >= lo) & (E <= hi) & np.isfinite(y) & np.isfinite(v)
        e_plot = np.linspace(lo, hi, 400)
        for rank, curve in enumerate(self._curves):
            if rank >= len(names) or names[rank] not in index:
                curve.set_visible(False)
                continue
            i = index[names[rank]]
            m_pts, s_pts = candidate_curve(tables, i, E[inside], offset, broadening)
            a, b = fitted_scale(m_pts, s_pts, y[inside], v[inside], tables.config)
            m, s = candidate_curve(tables, i, e_plot, offset, broadening)
            curve.set_data(e_plot, a * m + b)
            curve.set_label(f"{names[rank]}  p={probs[rank]:.3f}")
            curve.set_visible(True)
            self._bands.append(self.ax_spec.fill_between(e_plot, a * (m - s) + b, a * (m + s) + b,
                                                         color=curve.get_color(), alpha=0.18, lw=0))

    def _draw_history(self, names, t: _Trace) -> None:
        n = np.asarray(t.n_points)
        for rank, line in enumerate(self._histories):
            if rank >= len(names):
                line.set_visible(False)
                continue
            line.set_data(n, [p.get(names[rank], np.nan) for p in t.probabilities])
            line.set_label(names[rank])
            line.set_visible(True)
        p_none = np.asarray(t.p_none)
        has_none = bool(np.isfinite(p_none).any())
        self._none_line.set_data(n, p_none)
        self._none_line.set_visible(has_none)
        ax = self.ax_prob
        ax.set_xlim(0, max(5, int(n.max()) + 1))
        handles = [h for h in self._histories + [self._none_line] if h.get_visible()]
        ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=7, loc="center right")

    def _title(self, leader: str | None = None, p: float | None = None) -> str:
        start = self.run_start or {}
        scan = start.get("scan_id")
        parts = [f"Scan {scan if scan is not None else '?'} ({str(start.get('uid', ''))[:8]})"]
        el = (start.get("xas") or {}).get("element")
        if el:
            parts.append(f"{el} {(start.get('xas') or {}).get('edge', '')}".strip())
        sample = ((start.get("XDI") or {}).get("Sample") or {}).get("name")
        if sample:
            parts.append(str(sample))
        head = " · ".join(parts)
        t = self.trace
        if t is None or not t.energy:
            return f"{head}: ranking, waiting for readings"
        text = f"{head}: {t.n_points[-1]} readings used"
        if leader is not None:
            text += f", leader {leader} p={p:.3f}"
        p_none = t.p_none[-1] if t.p_none else np.nan
        if np.isfinite(p_none):
            text += f", none of these p={p_none:.3f}"
        return text
