"""Live plots headless (Agg): what they draw from real documents, the files they write, and that
neither a broken plot nor a broken event ever stops a scan. The real-window session is in
tests/test_gui_session.py."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine
from event_model import compose_run

from xas_callbacks.gui import RedrawThrottle, default_plot_dir, plot_file_name, start_session_gui
from xas_callbacks.plotting import LiveRankingPlot
from xas_callbacks.scan_plot import LiveXASPlot, XASBestEffortCallback

E0 = 8979.0


@pytest.fixture
def endstation(synthetic_library):
    from endstation import SimulatedSample, make_endstation

    energy = np.linspace(8800.0, 9400.0, 1201)
    mu = 0.3 + np.interp(energy, synthetic_library.energies, synthetic_library.mean[3])
    sample = SimulatedSample.from_spectrum(energy, mu, element="Cu", edge="K")
    return make_endstation(sample, seed=1, time_scale=0, settle_time=0, speed=0)


GRID = {"bounds": "-60 -10 30 120", "steps": "10 1 5", "times": "0.1 0.1 0.1"}


def _ranking_documents(n=6, p_none=None, scan_id=7):
    """The documents of a raw run's linked xas-ranking run, as XASRankingCallback publishes them."""
    raw = compose_run(metadata={"scan_id": scan_id, "xas": {"e0": E0}})
    run = compose_run(metadata={"purpose": "xas-ranking", "parent_uid": raw.start_doc["uid"],
                                "ranking_config": {"window_eV": [8920.0, 9100.0]}})
    keys = {k: {"source": "x", "dtype": "number", "shape": []} for k in (
        "energy", "mu", "mu_sigma", "offset", "offset_sd", "broadening", "entropy", "top_reduced_chi2")}
    keys.update({k: {"source": "x", "dtype": "array", "shape": [3]} for k in ("top_names", "top_probabilities")})
    keys["n_points"] = {"source": "x", "dtype": "integer", "shape": []}
    if p_none is not None:
        keys["p_none"] = {"source": "x", "dtype": "number", "shape": []}
    desc = run.compose_descriptor(name="ranking", data_keys=keys)
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    for i, e in enumerate(np.linspace(8930.0, 9050.0, n)):
        p = min(0.3 + 0.1 * i, 0.9)
        data = {"energy": e, "mu": 0.3 + (e > E0), "mu_sigma": 0.01, "offset": 0.5, "offset_sd": 0.2,
                "broadening": 1.0, "entropy": 0.5, "top_reduced_chi2": 1.1, "n_points": i + 1,
                "top_names": ["A", "B", "C"], "top_probabilities": [p, (1 - p) / 2, (1 - p) / 2]}
        if p_none is not None:
            data["p_none"] = p_none
        docs.append(("event", desc.compose_event(data=data, timestamps={k: 0.0 for k in data})))
    docs.append(("stop", run.compose_stop()))
    return raw.start_doc, docs


@pytest.mark.parametrize("p_none", [None, 0.04])
def test_ranking_plot_draws_the_documents_and_saves_a_png_named_by_scan_and_uid(p_none):
    raw_start, docs = _ranking_documents(p_none=p_none)
    said = []
    plot = LiveRankingPlot(lookup=lambda uid: (raw_start, None), announce=said.append)
    assert not plot.windows  # Agg: an off-screen figure, drawn once at the end
    for name, doc in docs:
        plot(name, doc)
    assert plot.errors == 0
    (path,) = plot.saved
    assert path == default_plot_dir() / f"scan7-{raw_start['uid'][:8]}-ranking.png"
    assert path.stat().st_size > 5000
    assert said == [f"Ranking plot of scan 7 saved: {path}"]
    title = plot.fig._suptitle.get_text()
    assert title.startswith(f"Scan 7 ({raw_start['uid'][:8]})") and "leader A p=0.800" in title
    assert ("none of these p=0.040" in title) == (p_none is not None)
    assert plot._none_line.get_visible() == (p_none is not None)
    assert plot.throttle.requests == 6 and plot.throttle.draws == 1  # headless: one draw, at the stop


def test_ranking_plot_of_a_real_run_draws_candidate_bands_and_history(synthetic_library, endstation, tmp_path):
    from plans import xafs_scan
    from xas_callbacks.callback import XASRankingCallback

    plot = LiveRankingPlot(save_path=tmp_path / "r-{scan_id}-{uid}.png", announce=None)
    callback = XASRankingCallback(synthetic_library, plot=plot)
    RE = RunEngine({})
    RE.subscribe(callback)
    (uid,) = RE(xafs_scan(endstation.detectors, endstation.energy, element="Cu", edge="K", grid=GRID))
    assert plot.errors == 0 and callback.counts.get("emit_errors", 0) == 0
    assert plot.saved == [tmp_path / f"r-1-{uid[:8]}.png"]
    assert plot.run_start["uid"] == uid and plot.tables is callback.last_run.engine.tables
    shown = [c for c in plot._curves if c.get_visible()]
    assert len(shown) == 3 and len(plot._bands) == 3
    assert shown[0].get_label().startswith(synthetic_library.names[3])  # the sample leads
    assert len(plot._histories[0].get_xdata()) == len(plot.trace.energy)


def test_a_failing_plot_never_stops_the_scan(synthetic_library, endstation, caplog):
    from plans import xafs_scan
    from xas_callbacks.callback import XASRankingCallback

    class Broken(LiveRankingPlot):
        def redraw(self):
            raise RuntimeError("drawing failed")

        def event(self, doc):
            if doc["seq_num"] == 3:
                raise ValueError("a broken event")
            return super().event(doc)

    plot = Broken(announce=None)
    callback = XASRankingCallback(synthetic_library, plot=plot)
    RE = RunEngine({})
    RE.subscribe(callback)
    stops = []
    RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
    RE(xafs_scan(endstation.detectors, endstation.energy, element="Cu", edge="K", grid=GRID))
    assert stops[-1]["exit_status"] == "success"
    assert plot.errors == 2  # the broken event and the failed redraw, each counted and logged
    assert callback.last_run.summary["n_points_used"] > 10


def test_mu_plot_draws_normalised_mu_of_conventional_and_adaptive_runs(synthetic_library, endstation):
    from plans import adaptive_xas_plan, xafs_scan

    said = []
    plot = LiveXASPlot(announce=said.append)
    RE = RunEngine({})
    RE.subscribe(plot)
    (uid,) = RE(xafs_scan(endstation.detectors, endstation.energy, element="Cu", edge="K", grid=GRID,
                          md={"XDI": {"Sample": {"name": "CuO pellet"}}}))
    assert plot.errors == 0 and plot.bad_readings == 0
    assert plot.saved[-1] == default_plot_dir() / f"scan1-{uid[:8]}-mu.png"
    assert said[-1].startswith("mu(E) plot of scan 1 saved: ")
    x, y = plot._sorted_line.get_data()
    assert np.all(np.diff(x) >= 0)  # joined in energy order
    assert abs(np.median(y[x < E0 - 20])) < 0.05 and abs(np.median(y[x > E0 + 60]) - 1) < 0.15  # normalised
    assert "CuO pellet" in plot.fig._suptitle.get_text() and plot.ax_dec is None

    (uid,) = RE(adaptive_xas_plan(endstation.detectors, endstation.energy, element="Cu", edge="K",
                                  candidates=synthetic_library, dwell_s=0.1, max_points=16))
    assert plot.errors == 0 and plot.ax_dec is not None
    assert plot.decisions and plot.decisions[-1]["action"] == "stop"  # fields without the recorder's prefix
    assert plot.ax_dec.get_title().startswith(f"decision {len(plot.decisions)}: stop: ")
    energies = plot._points.get_offsets()[:, 0]
    assert np.any(np.diff(energies) < 0)  # measured out of order: drawn as markers, coloured by order
    assert list(plot._points.get_array()) == list(range(1, len(energies) + 1))


def test_best_effort_callback_leaves_xas_runs_to_the_mu_plot(endstation):
    import matplotlib.pyplot as plt
    from bluesky.plans import scan
    from ophyd.sim import det, motor

    from plans import xafs_scan

    plt.close("all")
    bec = XASBestEffortCallback()  # plots enabled, as in a Qt session
    RE = RunEngine({})
    RE.subscribe(bec)
    RE(xafs_scan(endstation.detectors, endstation.energy, element="Cu", edge="K", grid=GRID))
    assert plt.get_fignums() == []  # no raw-count figure for an XAS run
    assert bec.noplot_streams == ["baseline", "primary", "decision"]
    RE(scan([det], motor, -1, 1, 5))
    assert plt.get_fignums() != []  # any other run: bluesky's plots as ever
    assert bec.noplot_streams == ["baseline"]
    plt.close("all")


def test_throttle_without_qt_draws_only_when_flushed():
    drawn = []
    throttle = RedrawThrottle(lambda: drawn.append(1), live=False)
    for _ in range(50):
        throttle.request()
    assert drawn == [] and throttle.pending
    throttle.flush()
    throttle.flush()
    assert drawn == [1] and throttle.requests == 50


def test_plot_file_name():
    assert plot_file_name({"scan_id": 12, "uid": "0123456789abcdef"}, "mu") == "scan12-01234567-mu.png"
    assert plot_file_name({"uid": "0123456789abcdef"}, "ranking") == "scan-01234567-ranking.png"


@pytest.mark.parametrize("environ, expected", [
    ({"XAS_PLOTS": "0", "DISPLAY": ":0"}, "off"),
    ({"MPLBACKEND": "Agg", "DISPLAY": ":0"}, "headless"),
    ({}, "headless"),  # no display: PNG files
    ({"DISPLAY": ":987"}, "headless"),  # a display that does not open: never Qt (it would abort)
    ({"DISPLAY": ":987", "MPLBACKEND": "QtAgg"}, "headless"),  # asked for, but no display opens
])
def test_session_gui_is_headless_without_a_display(environ, expected, monkeypatch):
    import matplotlib

    for key in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND", "XAS_PLOTS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert start_session_gui(None) == expected
    assert "qt" not in matplotlib.get_backend().lower()


@pytest.fixture(scope="module")
def headless_profile(synthetic_library, catalog, tmp_path_factory):
    """The profile as a session without a display loads it (plots on, no XAS_PLOTS=0)."""
    import importlib.util
    from pathlib import Path

    from synthetic import write_sample_xdi

    root = Path(__file__).resolve().parent.parent
    sample = write_sample_xdi(tmp_path_factory.mktemp("sample") / "sample.xdi", synthetic_library.mean[3])
    mp = pytest.MonkeyPatch()
    mp.setenv("XAS_TIME_SCALE", "0")
    mp.delenv("XAS_PLOTS", raising=False)
    mp.delenv("DISPLAY", raising=False)
    mp.setenv("XAS_SAMPLE_XDI", str(sample))
    spec = importlib.util.spec_from_file_location("profile_loader", root / "profile_collection" / "loader.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    try:
        yield loader.load_profile({"catalog": catalog})
    finally:
        mp.undo()


def test_headless_profile_writes_the_plots_of_each_run_and_says_where(headless_profile, synthetic_library, capsys):
    ns = headless_profile
    assert ns["PLOTS"] == "headless" and ns["xas_plot"] is not None
    callback = ns["enable_ranking"](synthetic_library)
    try:
        assert isinstance(callback.plot, LiveRankingPlot)  # shown by default
        (uid,) = ns["RE"](ns["adaptive"](synthetic_library, "Cu", "K", dwell_s=0.1, max_points=14))
    finally:
        ns["disable_ranking"]()
    out = capsys.readouterr().out
    for tag in ("mu", "ranking"):
        path = default_plot_dir() / f"scan{ns['RE'].md['scan_id']}-{uid[:8]}-{tag}.png"
        assert path.is_file() and str(path) in out
    assert callback.plot.errors == 0 and ns["xas_plot"].errors == 0
    assert ns["enable_ranking"](synthetic_library, plot=False).plot is None
    ns["disable_ranking"]()


def test_enable_ranking_accepts_a_list_of_smiles_as_adaptive_does(headless_profile):
    ns = headless_profile
    smiles = ["CCO", "CC(=O)O"]
    try:
        callback = ns["enable_ranking"](smiles, model="o-k", plot=False)
        assert len(callback.library) == 2 and callback.library.provenance.get("model") == "o-k"
        assert callback.ranks(ns["candidate_library"](smiles, "o-k", "O", "K"))  # adaptive(smiles) uses it
    finally:
        ns["disable_ranking"]()
