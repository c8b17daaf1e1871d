"""How a live plot reaches the screen: the session's backend, the GUI thread, throttled redraws,
and where headless plots are saved.

Bluesky runs the plan (and so every callback) in the RunEngine's worker thread, while Qt may only
be touched from the main thread. As in :mod:`bluesky.callbacks.mpl_plotting`, a live plot here is a
:class:`~bluesky.callbacks.mpl_plotting.QtAwareCallback`: with a Qt backend each document is
"teleported" (a queued Qt signal) to the main thread, and the figure is created, updated and drawn
there only. The main thread processes Qt events while ``RE(...)`` runs (bluesky's
``DefaultDuringTask``) and at the IPython prompt (``%matplotlib qt``), so windows repaint, resize
and close during a scan.

* :func:`start_session_gui` -- called once by the IPython profile, in the main thread: a Qt event
  loop where a display can be opened, the Agg backend (PNG files) otherwise; then bluesky's
  teleporter, so that plots made later, from any thread, draw in the main thread.
* :class:`LiveFigure` -- the base of the live plots: per-run figure (a window, or an off-screen
  figure saved as PNG at the end of the run), redraws throttled to ``min_interval_s`` however fast
  the points come, a closed window that is simply left closed, and no exception ever raised into
  the RunEngine (nor out of a Qt slot, which would abort the process).
* :func:`default_plot_dir` -- ``$XAS_USER_DIR/plots`` (``~/.local/share/steered-xas/plots``),
  where headless runs write ``scan{scan_id}-{uid8}-{what}.png``.
* :func:`virtual_display` -- a virtual X server (Debian's ``xvfb``) for real windows without a
  screen: the real-window test, the overhead benchmark, screenshots.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from bluesky.callbacks.mpl_plotting import QtAwareCallback

logger = logging.getLogger(__name__)

__all__ = [
    "start_session_gui",
    "display_available",
    "qt_binding_available",
    "uses_qt",
    "default_plot_dir",
    "plot_file_name",
    "LiveFigure",
    "RedrawThrottle",
    "virtual_display",
]

#: Qt bindings matplotlib's ``qt_compat`` can use, in its order of preference.
QT_BINDINGS = ("PyQt6", "PySide6", "PyQt5", "PySide2")

#: Shortest time between two redraws of a live plot: at most 4 per second look live.
DEFAULT_MIN_INTERVAL_S = 0.25

#: Largest share of the time a live plot may spend rendering. Rendering holds the GIL, which the
#: RunEngine's thread needs: a two-panel figure took 130 ms to render on the shared 2-core
#: development machine (mostly tick labels and text; profiled with cProfile), so at 4 redraws per
#: second a plot alone would hold the GIL half of the time. After each redraw the next waits at
#: least render time / MAX_BUSY (about 0.9 s there, 0.25 s on a desktop that renders in 35 ms).
MAX_BUSY = 0.15

#: ... but a plot is never left more than this long without a redraw while data come (renders
#: timed while other threads hold the GIL look slow: a figure that looks frozen is worse).
MAX_GAP_S = 2.0


# ----------------------------------------------------------------------------- the session
def qt_binding_available() -> bool:
    """Whether a Qt binding matplotlib can use is installed (nothing is imported)."""
    wanted = os.environ.get("QT_API", "").lower()
    names = [b for b in QT_BINDINGS if b.lower() == wanted] or list(QT_BINDINGS)
    return any(importlib.util.find_spec(name) is not None for name in names)


def display_available() -> bool:
    """Whether windows can be shown: always on macOS and Windows; on Linux a Wayland display or an
    X display that really opens (a stale ``DISPLAY`` would make Qt abort the process)."""
    if sys.platform in ("darwin", "win32"):
        return True
    if os.environ.get("WAYLAND_DISPLAY"):
        return True
    if not os.environ.get("DISPLAY"):
        return False
    return _x_display_opens()


def _x_display_opens() -> bool:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("X11")
    if name is None:  # no Xlib: Qt's xcb platform plugin (which links it) cannot start either
        return False
    try:
        xlib = ctypes.cdll.LoadLibrary(name)
        xlib.XOpenDisplay.restype = ctypes.c_void_p
        xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
        xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
        handle = xlib.XOpenDisplay(None)
        if not handle:
            return False
        xlib.XCloseDisplay(handle)
        return True
    except OSError:
        return False


def uses_qt() -> bool:
    """Whether matplotlib's current backend is a Qt one (the teleporter's rule)."""
    import matplotlib

    return "qt" in matplotlib.get_backend().lower()


def start_session_gui(ipython=None, *, environ=None) -> str:
    """Choose how this session shows plots; call once, in the main thread, before the RunEngine.

    * ``XAS_PLOTS=0``: ``"off"`` (nothing changed, no live plots).
    * ``MPLBACKEND`` set: that backend; a Qt one gets IPython's Qt event loop (where a display
      opens: otherwise headless, with a warning).
    * a display that opens and a Qt binding: ``"qt"`` -- IPython's ``%matplotlib qt`` (the event
      loop runs while the prompt waits), or the QtAgg backend in a script (bluesky's
      ``DefaultDuringTask`` runs the loop during ``RE(...)``).
    * otherwise ``"headless"``: the Agg backend; live plots write PNG files
      (:func:`default_plot_dir`).

    With Qt, bluesky's teleporter is created here, in the main thread, so that plots created later
    in the RunEngine's thread still draw in the main thread.

    Returns
    -------
    str
        ``"qt"``, ``"headless"`` or ``"off"`` (or ``"other"`` for a requested non-Qt GUI backend).
    """
    env = os.environ if environ is None else environ
    if env.get("XAS_PLOTS", "1") == "0":
        return "off"
    import matplotlib

    requested = env.get("MPLBACKEND", "")
    if requested and "qt" not in requested.lower():
        return "headless" if matplotlib.get_backend().lower() in _NON_INTERACTIVE else "other"
    qt = display_available() and qt_binding_available()
    if requested and not qt:  # Qt would abort the process without a display
        logger.warning("MPLBACKEND=%s but no display opens or no Qt binding is installed: plots go to "
                       "PNG files in %s", requested, default_plot_dir())
    if not qt:
        matplotlib.use("Agg")
        return "headless"
    if ipython is not None:
        ipython.run_line_magic("matplotlib", "qt")  # backend + the prompt's Qt input hook
    else:
        matplotlib.use("QtAgg")
        import matplotlib.pyplot as plt

        plt.ion()
    if threading.current_thread() is threading.main_thread():
        from bluesky.callbacks.mpl_plotting import initialize_qt_teleporter

        initialize_qt_teleporter()
    return "qt"


@contextmanager
def virtual_display(size=(1280, 1000), depth: int = 24, timeout_s: float = 20.0) -> Iterator[str]:
    """Run a virtual X server (``Xvfb``) for the duration; yields its ``DISPLAY`` (e.g. ``":3"``).

    Xvfb picks a free display number itself (``-displayfd``). Raises ``RuntimeError`` when Xvfb
    is not installed (Debian: ``apt-get install xvfb``) or does not start in ``timeout_s``.
    """
    exe = shutil.which("Xvfb")
    if exe is None:
        raise RuntimeError("Xvfb not found (Debian/Ubuntu: apt-get install xvfb)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(write_fd), "-screen", "0", f"{size[0]}x{size[1]}x{depth}",
                             "-nolisten", "tcp"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    os.close(write_fd)
    try:
        number = b""
        deadline = time.monotonic() + timeout_s
        while not number.endswith(b"\n") and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([read_fd], [], [], 0.2)
            if ready:
                chunk = os.read(read_fd, 64)
                if not chunk:
                    break
                number += chunk
        if not number.strip():
            err = proc.stderr.read().decode(errors="replace")[-400:] if proc.poll() is not None else ""
            raise RuntimeError(f"Xvfb did not start within {timeout_s} s {err}".strip())
        yield f":{int(number)}"
    finally:
        os.close(read_fd)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template", "module://matplotlib_inline.backend_inline"}


# ---------------------------------------------------------------------------- saved plots
def default_plot_dir() -> Path:
    """Where headless runs save their plots: ``models.paths.user_data_dir()/plots``."""
    from models.paths import user_data_dir

    return user_data_dir() / "plots"


def plot_file_name(start_doc: dict | None, what: str) -> str:
    """``scan{scan_id}-{uid8}-{what}.png`` for a run's start document."""
    start_doc = start_doc or {}
    scan_id = start_doc.get("scan_id")
    uid = str(start_doc.get("uid", "run"))[:8]
    return f"scan{scan_id if scan_id is not None else ''}-{uid}-{what}.png"


# ------------------------------------------------------------------------------- redraws
class RedrawThrottle:
    """Calls ``draw()`` at most once per ``min_interval_s``, and at most ``max_busy`` of the time;
    the latest request is always honoured.

    In a Qt session :meth:`request` is called in the GUI thread (where a teleported callback's
    methods run): a single-shot ``QTimer`` there coalesces every request until it fires. After a
    draw that took ``t`` seconds the next one waits ``max(min_interval_s, t / max_busy)``, at most
    :data:`MAX_GAP_S`.
    Without Qt, requests are only remembered and :meth:`flush` draws (at the end of a run).

    Attributes
    ----------
    requests, draws : int
        Requests received and draws made (for tests and the benchmark).
    gap_s : float
        The current shortest time between two draws.
    """

    def __init__(self, draw: Callable[[], None], min_interval_s: float = DEFAULT_MIN_INTERVAL_S, *,
                 max_busy: float = MAX_BUSY, live: bool = True) -> None:
        self._draw = draw
        self.min_interval_s = max(0.0, float(min_interval_s))
        self.max_busy = min(1.0, max(1e-3, float(max_busy)))
        self.live = bool(live)
        self.requests = 0
        self.draws = 0
        self.pending = False
        self.gap_s = self.min_interval_s
        self._last = -float("inf")
        self._timer = None

    def request(self) -> None:
        """Ask for a redraw of the latest state."""
        self.requests += 1
        self.pending = True
        if not self.live:
            return
        if self._timer is None:
            from matplotlib.backends.qt_compat import QtCore

            self._timer = QtCore.QTimer()
            self._timer.setSingleShot(True)
            self._timer.timeout.connect(self._fire)
        if not self._timer.isActive():
            wait = max(0.0, self.gap_s - (time.monotonic() - self._last))
            self._timer.start(int(1000 * wait))

    def flush(self) -> None:
        """Draw now if a request is pending (and cancel the timer)."""
        if self._timer is not None:
            self._timer.stop()
        if self.pending:
            self._fire()

    def _fire(self) -> None:
        self.pending = False
        self.draws += 1
        t0 = time.monotonic()
        try:
            self._draw()
        finally:
            self._last = time.monotonic()
            busy_gap = (self._last - t0) / self.max_busy
            self.gap_s = max(self.min_interval_s, min(busy_gap, MAX_GAP_S))


# ------------------------------------------------------------------------ the live figure
class LiveFigure(QtAwareCallback):
    """Base of the live plots: one figure per run, drawn in the GUI thread, throttled, never raising.

    Subclasses implement :meth:`begin` (a run of theirs starts: return True to draw it),
    :meth:`layout` (make the axes of a fresh figure), :meth:`redraw` (update the artists from the
    data collected so far) and the document methods that collect data, calling
    :meth:`request_draw` after new data and :meth:`end_run` at the run's stop.

    Parameters
    ----------
    label : str
        Window title (figures are reused by label: one window per kind of plot).
    size_px : (int, int)
        Figure size in pixels (fits a 1,000-pixel screen with the window's frame and toolbar).
    save_path : str or Path, optional
        PNG written at the end of every run; ``{uid}`` (8 characters of the raw run's uid) and
        ``{scan_id}`` are filled in. Headless (no Qt), default :func:`default_plot_dir` /
        :func:`plot_file_name`; with windows, nothing is saved unless given.
    min_interval_s : float
        Shortest time between two redraws.
    announce : callable, optional
        Told ``"<what> of scan N saved: path"`` for each file written (default ``print``: the
        IPython session shows where the plot went).
    use_teleporter : bool, optional
        Default: with a Qt backend (as bluesky's live plots).

    Attributes
    ----------
    errors : int
        Exceptions caught (logged, never raised).
    saved : list of Path
        Files written.
    draw_log : list of (n, time)
        For each completed render of the figure (``draw_event``): :meth:`n_drawn`, monotonic time.
    """

    what = "plot"  # said when a file is saved: "<what> of scan N saved: path"
    file_tag = "plot"  # the file name's last part: scan{scan_id}-{uid8}-{file_tag}.png

    def __init__(self, *, label: str, size_px=(900, 560), save_path=None,
                 min_interval_s: float = DEFAULT_MIN_INTERVAL_S, announce: Callable[[str], object] | None = print,
                 use_teleporter: bool | None = None) -> None:
        if use_teleporter is None:
            use_teleporter = uses_qt()
        super().__init__(use_teleporter=use_teleporter)
        self.windows = bool(use_teleporter)
        self.label = label
        self.size_px = (int(size_px[0]), int(size_px[1]))
        self.save_path = save_path
        self.announce = announce
        self.errors = 0
        self.saved: list[Path] = []
        self.draw_log: list[tuple[int, float]] = []
        self.fig = None
        self.closed = False
        self.run_start: dict | None = None  # the start document naming files and titles
        self.throttle = RedrawThrottle(self._redraw_safely, min_interval_s, live=self.windows)

    # ------------------------------------------------------------------ safety
    def __call__(self, name, doc, *, escape=False):
        try:
            if not escape:
                self.before_teleport(name, doc)
            return super().__call__(name, doc, escape=escape)
        except Exception as exc:  # noqa: BLE001 -- a plot never stops a scan, nor kills Qt
            self.errors += 1
            logger.exception("%s: error on a %r document: %s", type(self).__name__, name, exc)

    # ------------------------------------------------------------ for subclasses
    def before_teleport(self, name: str, doc: dict) -> None:
        """Called in the sender's thread (the RunEngine's), before the document goes to the GUI
        thread: the place to look up what is only current now. Default: nothing."""

    def begin(self, doc) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def layout(self, fig) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def redraw(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def n_drawn(self) -> int:
        """How many points the figure shows now (recorded with each render)."""
        return 0

    def request_draw(self) -> None:
        self.throttle.request()

    # --------------------------------------------------------------- the figure
    def start(self, doc):
        if self.begin(doc):
            self._new_figure()
        return super().start(doc)

    def _new_figure(self) -> None:
        dpi = 100.0
        size = (self.size_px[0] / dpi, self.size_px[1] / dpi)
        self.throttle.pending = False
        if self.fig is not None:  # this plot's previous run: its handlers go
            for cid in getattr(self, "_cids", ()):
                self.fig.canvas.mpl_disconnect(cid)
        if self.windows:
            import matplotlib.pyplot as plt

            fig = plt.figure(self.label, figsize=size, dpi=dpi, clear=True)
            manager = getattr(fig.canvas, "manager", None)
            if manager is not None:
                scan = (self.run_start or {}).get("scan_id")
                manager.set_window_title(self.label if scan is None else f"{self.label}: scan {scan}")
            self.closed = False
        else:  # off-screen: never registered with pyplot, safe in any thread
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = Figure(figsize=size, dpi=dpi)
            FigureCanvasAgg(fig)
        # A window is reused by the next plot of the same label (e.g. one ranking plot per
        # adaptive run): the figure remembers its current owner, whose handlers alone count.
        fig._xas_live_owner = self
        self._cids = [fig.canvas.mpl_connect("close_event", self._on_close),
                      fig.canvas.mpl_connect("draw_event", self._on_draw)]
        self.fig = fig
        self.layout(fig)
        if self.windows:
            fig.show()
            fig.canvas.draw_idle()

    def _owns(self, fig) -> bool:
        return fig is not None and getattr(fig, "_xas_live_owner", None) is self

    def _on_close(self, event) -> None:
        if self._owns(event.canvas.figure):
            self.closed = True

    def _on_draw(self, event) -> None:
        if self._owns(event.canvas.figure):
            self.draw_log.append((self.n_drawn(), time.monotonic()))
        else:  # another plot took the window over: let go of it
            for cid in getattr(self, "_cids", ()):
                event.canvas.mpl_disconnect(cid)
            self._cids = []

    def _redraw_safely(self) -> None:
        if not self._owns(self.fig) or (self.windows and self.closed):
            return
        try:
            self.redraw()
            if self.windows:
                self.fig.canvas.draw()  # now, in this (the GUI) thread: the throttle times it
        except Exception as exc:  # noqa: BLE001 -- e.g. a window closed while drawing
            self.errors += 1
            logger.exception("%s: redraw failed: %s", type(self).__name__, exc)

    def end_run(self) -> None:
        """The run stopped: last redraw, then the PNG (headless by default, else when asked)."""
        if self.fig is None:
            return
        self.throttle.pending = True
        self.throttle.flush()
        path = self.save_file()
        if path is not None:
            self._save(path)

    def save_file(self) -> Path | None:
        """Where this run's figure goes (None: nowhere)."""
        if self.save_path:
            start = self.run_start or {}
            text = str(self.save_path).replace("{uid}", str(start.get("uid", "run"))[:8])
            return Path(text.replace("{scan_id}", str(start.get("scan_id", ""))))
        if not self.windows:
            return default_plot_dir() / plot_file_name(self.run_start, self.file_tag)
        return None

    def _save(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fig.savefig(path, dpi=self.fig.dpi)
        except Exception as exc:  # noqa: BLE001
            self.errors += 1
            logger.exception("%s: could not save %s: %s", type(self).__name__, path, exc)
            return
        self.saved.append(path)
        scan = (self.run_start or {}).get("scan_id")
        message = f"{self.what} of scan {scan if scan is not None else '?'} saved: {path}"
        logger.info(message)
        if self.announce is not None:
            self.announce(message)
