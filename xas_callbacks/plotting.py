"""Live plots of the ranking, in the Bluesky manner.

:class:`LiveRankingPlot` is driven by :class:`xas_callbacks.callback.XASRankingCallback`
(``plot=LiveRankingPlot(...)``): after each update it draws

* left: the normalised measured mu(E) with the top candidates' predicted spectra and their
  1-sigma bands, evaluated at the common offset and broadening (and their fitted amplitude and
  background);
* right: the top candidates' probabilities against point number.

In an IPython session with a Qt backend call :func:`install_qt_teleporter` once (it wraps
``bluesky.callbacks.mpl_plotting.initialize_qt_teleporter``) so that drawing happens in the Qt
main thread; headless (Agg) the figure is saved as PNG at the end of the run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["LiveRankingPlot", "plot_ranking", "install_qt_teleporter"]


def install_qt_teleporter() -> bool:
    """Initialise bluesky's Qt teleporter when matplotlib uses a Qt backend; True if done."""
    import matplotlib

    if "qt" not in matplotlib.get_backend().lower():
        return False
    from bluesky.callbacks.mpl_plotting import initialize_qt_teleporter

    initialize_qt_teleporter()
    return True


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


class LiveRankingPlot:
    """Figure updated by :class:`XASRankingCallback` and saved at the end of each run.

    Parameters
    ----------
    save_path : str or Path, optional
        PNG written at the end of the run; ``{uid}`` is replaced by the raw run's uid (first 8).
    every : int
        Redraw after every ``every`` updates (drawing is far slower than ranking).
    top : int
        Candidates drawn.
    """

    def __init__(self, save_path=None, every: int = 5, top: int = 3) -> None:
        self.save_path = save_path
        self.every = max(1, int(every))
        self.top = int(top)
        self.fig = None
        self._n = 0
        self.saved: list[Path] = []

    def _ensure(self):
        if self.fig is None:
            import matplotlib.pyplot as plt

            self.fig, (self.ax_spec, self.ax_prob) = plt.subplots(1, 2, figsize=(11, 4.2))
        return self.fig

    def update(self, cb) -> None:
        """Redraw from the callback's engine, latest ranking and history (throttled)."""
        self._n += 1
        if self._n % self.every:
            return
        self._draw(cb)
        import matplotlib

        if "agg" not in matplotlib.get_backend().lower():
            self.fig.canvas.draw_idle()
            self.fig.canvas.flush_events()

    def _draw(self, cb) -> None:
        if cb.latest_ranking is None or cb.engine is None:
            return
        self._ensure()
        plot_ranking(cb.engine, cb.latest_ranking, self.ax_spec, self.ax_prob, cb.history, self.top)
        self.fig.tight_layout()

    def finish(self, cb) -> None:
        """Final draw; save the PNG when ``save_path`` is set."""
        self._draw(cb)
        if self.save_path and self.fig is not None:
            uid = str((cb.run_start or {}).get("uid", "run"))[:8]
            path = Path(str(self.save_path).replace("{uid}", uid))
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fig.savefig(path, dpi=110)
            self.saved.append(path)
            logger.info("LiveRankingPlot: saved %s", path)
        self._n = 0
