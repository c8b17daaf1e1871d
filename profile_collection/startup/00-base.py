"""00-base: RunEngine, storage (Tiled catalog + in-memory copy), live feedback.

Start the session with::

    ipython --profile-dir=profile_collection

Live plots (``xas_callbacks.gui``): with a display, a Qt event loop starts here (IPython's
``%matplotlib qt``) and XAS runs are drawn in windows that update during the scan: normalised
mu(E) and the adaptive plan's decisions (``xas_plot``), the ranking (``enable_ranking``, or
``adaptive`` by itself). Without a display the same plots are written as PNG files to
``$XAS_USER_DIR/plots`` (``scanN-uid-mu.png``, ``scanN-uid-ranking.png``) at the end of each run.
``PLOTS`` says which: ``"qt"``, ``"headless"`` or ``"off"``.

Settings (environment): ``XAS_TILED_URI`` / ``XAS_TILED_API_KEY`` (a facility Tiled server;
default the local catalog in ``models.paths.user_data_dir()/catalog``), ``XAS_PLOTS=0`` (no
live plots), ``MPLBACKEND`` (a backend of your choice, e.g. ``Agg`` for files only),
``XAS_TIME_SCALE`` (see 10-endstation.py).
"""

import logging

from bluesky import RunEngine
from bluesky.utils import ProgressBarManager

try:  # running inside the queue server's RE worker?
    from bluesky_queueserver import is_re_worker_active
except ImportError:  # queue server not installed: never inside its worker

    def is_re_worker_active():
        return False


from endstation.catalog import open_catalog
from xas_callbacks.gui import start_session_gui
from xas_callbacks.scan_plot import LiveXASPlot, XASBestEffortCallback

logging.getLogger("endstation").setLevel(logging.INFO)

# Live plots: chosen before the RunEngine exists, in the main thread (the Qt event loop and
# bluesky's teleporter, which moves every plot's drawing into this thread).
try:
    _ipython = get_ipython()  # noqa: F821 -- defined in an IPython session
except NameError:
    _ipython = None
PLOTS = "off" if is_re_worker_active() else start_session_gui(_ipython)


def ranking_plot():
    """A live ranking plot for a ranking callback (a window, or PNG files headless); None when off."""
    if PLOTS == "off":
        return None
    from xas_callbacks.plotting import LiveRankingPlot

    return LiveRankingPlot()


RE = RunEngine({})
RE.md.setdefault("beamline_id", "sim-xas")
RE.md.setdefault("facility", "simulated NSLS-II-style")

# Storage: every run goes to the catalog (the local one is served to all your processes, so
# xas-replay or a notebook read it while this session writes); a write failure is logged, counted
# in catalog.failures, the run stays in catalog.cache (retry/export it), and catalog.checked fails
# the plan (and marks the run's stop document) so that neither you nor the queue take it for success.
if "catalog" not in globals():
    catalog = open_catalog()
RE.subscribe(catalog)
if hasattr(catalog, "checked"):  # a plain document callback given as the catalog has no storage check
    RE.preprocessors.append(catalog.checked)

if not is_re_worker_active():
    # Interactive session: progress bars, the live table, and live plots. bluesky's plots of
    # XAS runs (raw counts) give way to xas_plot's normalised mu(E); other runs keep them. The
    # queue server's worker has no terminal or display; it gets neither.
    RE.waiting_hook = ProgressBarManager()
    bec = XASBestEffortCallback()
    if PLOTS in ("off", "headless"):
        bec.disable_plots()
    RE.subscribe(bec)
else:
    bec = None
xas_plot = None if PLOTS == "off" else LiveXASPlot()
if xas_plot is not None:
    RE.subscribe(xas_plot)
