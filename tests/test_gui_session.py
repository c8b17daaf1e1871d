"""Real Qt windows under a real (virtual) X server: the profile's session during an adaptive scan.

The session runs in its own process (tests/gui_session_script.py): a crash of Qt (the
segmentation fault of a window resized while another thread draws it) ends that process, not
pytest, and shows as its exit status. Skipped, with the reason, only where no X server or no Qt
binding can be had (.ci/run installs Debian's xvfb where it can).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def x_display():
    from xas_callbacks.gui import qt_binding_available, virtual_display

    if not qt_binding_available():
        pytest.skip("no Qt binding installed (pip install -c constraints.txt -e '.[test]' brings PyQt5)")
    try:
        with virtual_display() as display:
            yield display
    except RuntimeError as exc:
        pytest.skip(f"no X server can be had: {exc}")


@pytest.fixture(scope="module")
def session(x_display, tmp_path_factory):
    out = tmp_path_factory.mktemp("gui-session")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "XAS_PLOTS", "QT_QPA_PLATFORM")}
    env.update(DISPLAY=x_display, XAS_USER_DIR=str(out / "user"), PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, str(HERE / "gui_session_script.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("GUI-SESSION ")]
    report = json.loads(lines[-1][len("GUI-SESSION "):]) if lines else None
    return proc, report


def test_the_session_survives_resizing_moving_and_closing_windows_mid_scan(session):
    proc, report = session
    # -11 would be the segmentation fault, -6 a Qt abort (e.g. an exception out of a slot)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert report is not None, proc.stdout[-2000:]
    if report["plots"] != "qt":
        pytest.fail(f"the profile did not start a Qt session on {os.environ.get('DISPLAY')}: {report}")
    assert report["exit_status"] == "success"
    assert report["resizes"] >= 5  # the ranking window was resized and moved while the scan ran
    assert report["closed_mu_window_at"] is not None and report["mu_closed"]
    assert report["mu_points"] > report["closed_mu_window_at"]  # the plot kept up with the data after the close
    assert report["ranking_errors"] == 0 and report["mu_errors"] == 0
    assert not report["callback_errors"].get("emit_errors")
    # what Qt and matplotlib say when a window is made or drawn from the RunEngine's thread
    for sign in ("different thread", "QObject::setParent", "outside of the main thread", "Segmentation"):
        assert sign not in proc.stderr, proc.stderr[-2000:]


def test_the_ranking_is_drawn_during_the_scan_not_only_at_the_end(session):
    _, report = session
    assert report and report.get("plots") == "qt", report
    final = report["points"]
    assert final >= 8
    drawn = [n for n, _ in report["ranking_draw_log"]]
    # renders showing part of the readings: the figure was drawn while points were still coming
    partial = sorted({n for n in drawn if 0 < n < final})
    assert len(partial) >= 2, drawn
    assert max(drawn) == final  # and it shows them all at the end
    # throttled: fewer redraws than ranking events
    assert report["ranking_throttled_draws"] < report["ranking_requests"]
    assert "unknown powder" in report["ranking_title"] and "leader" in report["ranking_title"]


def test_the_screen_shows_the_windows(session):
    from PIL import Image

    _, report = session
    assert report and report.get("plots") == "qt", report
    assert len(report["screenshots"]) >= 2
    for path in report["screenshots"]:
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert pixels.std() > 10, f"{path} looks blank"
        # a window (white background) covers part of the otherwise black screen
        assert (pixels > 240).mean() > 0.1, path
