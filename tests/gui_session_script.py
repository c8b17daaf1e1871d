"""A beamline session in real Qt windows, run by tests/test_gui_session.py in its own process.

Usage: ``python gui_session_script.py OUT_DIR`` with ``DISPLAY`` set (a virtual X server) and no
``MPLBACKEND``. It loads the IPython profile's startup files (as ``ipython --profile-dir`` would,
without the terminal), enables the ranking of the synthetic candidates, and runs
``RE(adaptive(...))`` on the simulated endstation while, from the GUI thread, the ranking window
is resized and moved every 150 ms and the mu(E) window is closed half way; an outside X client
(``xdotool``, where installed) resizes the windows too. It takes screenshots of the screen during
the scan and after it, and prints one JSON line with what happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def main(out: Path) -> dict:
    from synthetic import synthetic_library, write_sample_xdi

    out.mkdir(parents=True, exist_ok=True)
    library = synthetic_library()
    os.environ["XAS_SAMPLE_XDI"] = str(write_sample_xdi(out / "sample.xdi", library.mean[3]))
    os.environ.setdefault("XAS_TIME_SCALE", "1")  # real (simulated) waits: the scan lasts seconds

    import importlib.util

    spec = importlib.util.spec_from_file_location("profile_loader", ROOT / "profile_collection" / "loader.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    from endstation.catalog import DocumentCache

    store = DocumentCache()  # storage is not what this tests: the documents kept in memory
    ns = loader.load_profile({"catalog": store})
    report: dict = {"plots": ns["PLOTS"]}
    if ns["PLOTS"] != "qt":
        return report

    import matplotlib.pyplot as plt
    from matplotlib.backends.qt_compat import QtCore, QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["gui-session-test"])
    RE, xas_plot = ns["RE"], ns["xas_plot"]
    callback = ns["enable_ranking"](library)
    ranking_plot = callback.plot
    report["ranking_plot"] = type(ranking_plot).__name__
    shots: list[str] = []
    events = {"resizes": 0, "closed_mu_window_at": None, "xdotool_resizes": 0}
    t_start = time.monotonic()

    def screenshot(name: str) -> None:
        path = out / name
        app.primaryScreen().grabWindow(0).save(str(path))
        shots.append(str(path))

    def poke() -> None:  # runs in the GUI thread, while the RunEngine runs in its own
        i = events["resizes"]
        fig = ranking_plot.fig
        if fig is not None and not ranking_plot.closed:
            window = fig.canvas.manager.window
            window.resize(640 + 70 * (i % 5), 330 + 40 * (i % 4))
            window.move(20 * (i % 7), 480 + 10 * (i % 3))
            events["resizes"] += 1
        n = len(xas_plot.energy) if xas_plot.xas is not None else 0
        if events["closed_mu_window_at"] is None and n >= 8 and xas_plot.fig is not None:
            events["closed_mu_window_at"] = n
            plt.close(xas_plot.fig)  # as the user closing the window mid-scan
        for at in (4, 7):  # screenshots at given readings, not times: the same on any machine
            if n >= at and f"during-{at}" not in events:
                events[f"during-{at}"] = True
                screenshot(f"during-{at}-readings.png")

    timer = QtCore.QTimer()
    timer.timeout.connect(poke)
    timer.start(150)
    stop = threading.Event()

    def outside_resizer() -> None:  # another X client resizing the windows, as a window manager does
        n = 0
        while not stop.wait(0.2):
            for name, size in (("XAS ranking", (900 - 30 * (n % 4), 420)), ("XAS scan", (700, 520 + 20 * (n % 3)))):
                found = subprocess.run(["xdotool", "search", "--name", name], capture_output=True, text=True)
                for wid in found.stdout.split()[:1]:
                    subprocess.run(["xdotool", "windowsize", wid, *map(str, size)], capture_output=True)
                    events["xdotool_resizes"] += 1
            n += 1

    outside = threading.Thread(target=outside_resizer, daemon=True)
    if shutil.which("xdotool"):
        outside.start()
    try:
        (uid,) = RE(ns["adaptive"](library, "Cu", "K", dwell_s=0.1, max_points=24, confidence=0.9999,
                                   md={"XDI": {"Sample": {"name": "unknown powder"}}}))
    finally:
        stop.set()
        timer.stop()
    scan_s = time.monotonic() - t_start
    # After the run, Qt events are processed again (as at the IPython prompt): one more resize.
    if ranking_plot.fig is not None and not ranking_plot.closed:
        ranking_plot.fig.canvas.manager.window.resize(960, 440)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    screenshot("after.png")
    stop_doc = next(doc for name, doc in store.documents(uid) if name == "stop")
    n_final = len(ranking_plot.trace.energy) if ranking_plot.trace is not None else 0
    report.update({
        "exit_status": stop_doc["exit_status"],
        "scan_s": scan_s,
        "points": n_final,
        "ranking_draw_log": [[n, t - t_start] for n, t in ranking_plot.draw_log],
        "ranking_requests": ranking_plot.throttle.requests,
        "ranking_throttled_draws": ranking_plot.throttle.draws,
        "ranking_errors": ranking_plot.errors,
        "ranking_title": ranking_plot.fig._suptitle.get_text() if ranking_plot.fig is not None else "",
        "mu_closed": xas_plot.closed,
        "mu_points": len(xas_plot.energy),
        "mu_errors": xas_plot.errors,
        "callback_errors": dict(callback.counts),
        "screenshots": shots,
        **{k: v for k, v in events.items() if not k.startswith("during-")},
    })
    return report


if __name__ == "__main__":
    result = main(Path(sys.argv[1]))
    print("GUI-SESSION " + json.dumps(result), flush=True)
