"""An XAS run drawn as a scientist reads it, live: normalised mu(E) and an adaptive run's decisions.

:class:`LiveXASPlot` follows the raw documents of every run whose start document has the ``xas``
block (``xafs_scan``, ``adaptive_xas_plan``): it forms mu(E) from the detector roles and the mode
of that block (:func:`endstation.modes.mu_from_counts`), normalises the readings so far
(:func:`models.normalization.normalize`) and draws

* top: normalised mu(E) as markers coloured by the order of measurement (an adaptive scan measures
  out of order: a line through the readings in time order would zig-zag), a thin line through them
  in energy order, the latest reading ringed;
* bottom, for an adaptive run: the decision history (the ``decision`` stream): the leader's
  probability at each decision against the readings taken, the leader's name where it changes,
  the stopping confidence, and the latest decision's action and reason.

It is a :class:`xas_callbacks.gui.LiveFigure`: drawn in the GUI thread, at most a few times per
second, headless saved as ``scan{scan_id}-{uid8}-mu.png``.

:class:`XASBestEffortCallback` is bluesky's ``BestEffortCallback`` (heading, live table, baseline,
and the plots of any other run) that leaves the plots of XAS runs to :class:`LiveXASPlot`: its own
would show the raw I0/It/Ir/If counts in one tall window, joined in time order.
"""

from __future__ import annotations

import logging

import numpy as np
from bluesky.callbacks.best_effort import BestEffortCallback
from event_model import unpack_event_page
from matplotlib.ticker import MaxNLocator

from endstation.modes import MODE_ROLES, mu_from_counts
from models.normalization import normalize
from xas_callbacks.gui import DEFAULT_MIN_INTERVAL_S, LiveFigure

logger = logging.getLogger(__name__)

__all__ = ["LiveXASPlot", "XASBestEffortCallback", "is_xas_run"]


def is_xas_run(start_doc: dict) -> bool:
    """Whether a start document is that of a raw XAS run (an ``xas`` block, not a ranking run)."""
    return isinstance(start_doc.get("xas"), dict) and start_doc.get("purpose") != "xas-ranking"


class XASBestEffortCallback(BestEffortCallback):
    """``BestEffortCallback`` whose plots leave out the streams of XAS runs that
    :class:`LiveXASPlot` draws (``xas_streams``); everything else as bluesky's."""

    #: Streams of an XAS run drawn by :class:`LiveXASPlot` instead.
    xas_streams = ("primary", "decision")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._xas_noplot: list[str] = []

    def start(self, doc):
        base = [s for s in self.noplot_streams if s not in self._xas_noplot]
        self._xas_noplot = [s for s in self.xas_streams if s not in base] if is_xas_run(doc) else []
        self.noplot_streams = base + self._xas_noplot
        return super().start(doc)


class LiveXASPlot(LiveFigure):
    """Live normalised mu(E) of each XAS run, and the decisions of an adaptive one.

    Subscribe it to the RunEngine (``RE.subscribe(LiveXASPlot())``); runs without an ``xas`` block
    are ignored.

    Parameters
    ----------
    save_path : str or Path, optional
        PNG written at the end of each run (``{uid}``, ``{scan_id}`` filled in). Headless, the
        default is ``default_plot_dir()/scan{scan_id}-{uid8}-mu.png``; with windows, none.
    min_interval_s : float
        Shortest time between two redraws.
    size_px : (int, int)
        Window size.
    label : str
        Window title; one window, reused by every run.
    announce : callable, optional
        Told where each PNG went (default ``print``).
    use_teleporter : bool, optional
        Default: with a Qt backend.

    Attributes
    ----------
    bad_readings : int
        Readings of the current run whose mu could not be formed (missing or non-positive counts).
    """

    what = "mu(E) plot"
    file_tag = "mu"

    def __init__(self, save_path=None, *, min_interval_s: float = DEFAULT_MIN_INTERVAL_S, size_px=(820, 620),
                 label: str = "XAS scan", announce=print, use_teleporter: bool | None = None) -> None:
        super().__init__(label=label, size_px=size_px, save_path=save_path, min_interval_s=min_interval_s,
                         announce=announce, use_teleporter=use_teleporter)
        self.xas: dict | None = None
        self.bad_readings = 0
        self._n_drawn = 0

    # ------------------------------------------------------------- documents
    def begin(self, doc) -> bool:
        if not is_xas_run(doc):
            self.xas = None
            return False
        self.run_start = doc
        self.xas = doc["xas"]
        self.mode = self.xas.get("mode", "transmission")
        self.adaptive = isinstance(self.xas.get("policy"), dict)
        self.confidence = (self.xas.get("policy") or {}).get("confidence")
        self._primary: set[str] = set()
        self._decision: set[str] = set()
        self._decision_fields: dict[str, str] = {}
        self.energy: list[float] = []
        self.mu: list[float] = []
        self.var: list[float] = []
        self.decisions: list[dict] = []
        self.bad_readings = 0
        return True

    def descriptor(self, doc):
        if self.xas is None or doc.get("run_start") != self.run_start.get("uid"):
            return
        if doc.get("name") == "primary":
            self._primary.add(doc["uid"])
        elif doc.get("name") == "decision":
            self._decision.add(doc["uid"])
            # data keys are "<recorder>_<field>" (ophyd names): keep the field
            for obj, keys in (doc.get("object_keys") or {}).items():
                self._decision_fields.update({k: k[len(obj) + 1:] for k in keys if k.startswith(f"{obj}_")})

    def event(self, doc):
        if self.xas is None:
            return
        descriptor = doc.get("descriptor")
        if descriptor in self._primary:
            self._add_reading(doc.get("data") or {})
        elif descriptor in self._decision:
            fields = self._decision_fields
            self.decisions.append({fields.get(k, k): v for k, v in (doc.get("data") or {}).items()})
        else:
            return
        self.request_draw()

    def event_page(self, doc):
        for event in unpack_event_page(doc):
            self.event(event)

    def stop(self, doc):
        if self.xas is not None and doc.get("run_start") == self.run_start.get("uid"):
            self.end_run()

    def _add_reading(self, data: dict) -> None:
        roles = self.xas.get("detectors") or {}
        try:
            energy = float(data[self.xas.get("energy_field", "energy")])
            counts = {role: data[roles[role]] for role in MODE_ROLES.get(self.mode, ("i0", "it"))}
            mu, var, bad = mu_from_counts(self.mode, i0=counts.get("i0"), it=counts.get("it"),
                                          ir=counts.get("ir"), if_=counts.get("if"))
        except (KeyError, TypeError, ValueError):
            self.bad_readings += 1
            return
        if bad[0] or not np.isfinite(energy):
            self.bad_readings += 1
            return
        self.energy.append(energy)
        self.mu.append(float(mu[0]))
        self.var.append(float(var[0]))

    def n_drawn(self) -> int:
        return self._n_drawn

    # --------------------------------------------------------------- drawing
    def layout(self, fig) -> None:
        if self.adaptive:
            self.ax_mu, self.ax_dec = fig.subplots(2, 1, gridspec_kw={"height_ratios": (2.0, 1.0)})
            fig.subplots_adjust(left=0.1, right=0.9, bottom=0.08, top=0.9, hspace=0.42)
        else:
            self.ax_mu, self.ax_dec = fig.subplots(1, 1), None
            fig.subplots_adjust(left=0.1, right=0.96, bottom=0.1, top=0.9)
        ax = self.ax_mu
        ax.set_xlabel("energy (eV)")
        ax.set_ylabel(f"normalised mu(E), {self.mode}")
        (self._sorted_line,) = ax.plot([], [], "-", color="0.6", lw=0.8, zorder=2)
        if self.adaptive:  # measured out of order: colour says when
            self._points = ax.scatter([], [], c=[], s=16, cmap="viridis", zorder=3)
            self._points.set_clim(1, 2)
            colorbar = fig.colorbar(self._points, ax=ax, pad=0.02, fraction=0.04)
            colorbar.set_label("reading number", fontsize=8)
            colorbar.locator = MaxNLocator(integer=True)
        else:
            self._points = ax.scatter([], [], s=12, color="k", zorder=3)
        (self._latest,) = ax.plot([], [], "o", ms=8, mfc="none", mec="red", mew=1.5, zorder=4)
        if self.ax_dec is not None:
            ax = self.ax_dec
            ax.set_xlabel("readings taken")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("leader's probability")
            ax.set_ylim(-0.02, 1.08)
            ax.set_xlim(0, int((self.xas.get("policy") or {}).get("max_points") or 5) + 1)
            (self._decision_line,) = ax.plot([], [], "o-", ms=3.5, lw=1.0, color="C0", drawstyle="steps-post")
            if self.confidence:
                ax.axhline(float(self.confidence), ls="--", lw=0.8, color="C3")
            self._leader_texts: list = []
        self._n_drawn = 0
        fig.suptitle(self._title(), fontsize=10)

    def redraw(self) -> None:
        if self.energy:
            E = np.asarray(self.energy)
            mu = np.asarray(self.mu)
            nm = normalize(E, mu, self.xas.get("e0"), use_larch=False)
            y = nm.apply(E, mu)
            order = np.argsort(E, kind="stable")
            self._sorted_line.set_data(E[order], y[order])
            self._points.set_offsets(np.column_stack([E, y]))
            if self.adaptive:
                self._points.set_array(np.arange(1, E.size + 1, dtype=float))
                self._points.set_clim(1, max(2, E.size))
            self._latest.set_data(E[-1:], y[-1:])
            ax = self.ax_mu
            ax.set_ylabel(f"normalised mu(E), {self.mode}" + (" (provisional)" if nm.method == "provisional" else ""))
            ax.relim(visible_only=True)  # the line holds every reading
            ax.autoscale_view()
            self._n_drawn = int(E.size)
        if self.ax_dec is not None and self.decisions:
            self._draw_decisions()
        self.fig.suptitle(self._title(), fontsize=10)

    def _draw_decisions(self) -> None:
        ax = self.ax_dec
        n = np.array([float(d.get("n_points", np.nan)) for d in self.decisions])
        p = np.array([float(d.get("top_probability", np.nan)) for d in self.decisions])
        self._decision_line.set_data(n, p)
        for text in self._leader_texts:
            text.remove()
        self._leader_texts = []
        previous = None
        for x, y, d in zip(n, p, self.decisions):
            leader = str(d.get("top_candidate") or "")
            if leader and leader != previous and np.isfinite(y):
                self._leader_texts.append(ax.annotate(leader, (x, y), xytext=(2, 4), textcoords="offset points",
                                                      fontsize=7, rotation=30, color="C0"))
            previous = leader or previous
        finite = n[np.isfinite(n)]
        if finite.size and finite.max() >= ax.get_xlim()[1]:
            ax.set_xlim(0, float(finite.max()) + 1)
        last = self.decisions[-1]
        reason = str(last.get("reason") or "")
        reason = reason if len(reason) <= 110 else reason[:107] + "..."
        ax.set_title(f"decision {len(self.decisions)}: {last.get('action', '')}: {reason}", fontsize=8)

    def _title(self) -> str:
        start = self.run_start or {}
        scan = start.get("scan_id")
        parts = [f"Scan {scan if scan is not None else '?'} ({str(start.get('uid', ''))[:8]})",
                 str(start.get("plan_name", ""))]
        xas = self.xas or {}
        if xas.get("element"):
            parts.append(f"{xas['element']} {xas.get('edge', '')}".strip())
        sample = ((start.get("XDI") or {}).get("Sample") or {}).get("name")
        if sample:
            parts.append(str(sample))
        return " · ".join(p for p in parts if p) + f": {len(getattr(self, 'energy', []))} readings"
