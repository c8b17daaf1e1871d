"""00-base: RunEngine, storage (Tiled catalog + in-memory copy), live feedback.

Start the session with::

    ipython --profile-dir=profile_collection

Settings (environment): ``XAS_TILED_URI`` / ``XAS_TILED_API_KEY`` (a facility Tiled server;
default the local catalog in ``models.paths.user_data_dir()/catalog``), ``XAS_PLOTS=0`` (no
live plots), ``XAS_TIME_SCALE`` (see 10-endstation.py).
"""

import logging
import os

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.utils import ProgressBarManager

try:  # running inside the queue server's RE worker?
    from bluesky_queueserver import is_re_worker_active
except ImportError:  # queue server not installed: never inside its worker

    def is_re_worker_active():
        return False


from endstation.catalog import open_catalog

logging.getLogger("endstation").setLevel(logging.INFO)

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
RE.preprocessors.append(catalog.checked)

if not is_re_worker_active():
    # Interactive session: progress bars and live table/plots. The queue server's worker
    # has no terminal or display; it gets neither.
    RE.waiting_hook = ProgressBarManager()
    bec = BestEffortCallback()
    if os.environ.get("XAS_PLOTS", "1") == "0" or os.environ.get("MPLBACKEND", "").lower() == "agg":
        bec.disable_plots()
    RE.subscribe(bec)
else:
    bec = None
