"""The profile under a real queue server: redis, ``start-re-manager`` with the profile as startup
directory, ``bluesky-queueserver-api``. Plans are offered with typed parameters, bad arguments are
refused before anything runs, a conventional and an adaptive plan run from JSON arguments, and
this process reads both runs back from the local catalog while the worker holds it open."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = 3  # the synthetic candidate the simulated sample is
TIMEOUT_S = 600  # environment opening on a busy 2-core machine: 10-60 s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_addr(tmp_path_factory):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does it)")
    redis = pytest.importorskip("redis")
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not answer")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_library):
    from synthetic import write_sample_xdi

    folder = tmp_path_factory.mktemp("queue")
    user_dir = folder / "user"
    sample = write_sample_xdi(folder / "sample.xdi", synthetic_library.mean[SAMPLE])
    candidates = synthetic_library.save(folder / "candidates.npz")
    return {"folder": folder, "user_dir": user_dir, "sample": sample, "candidates": str(candidates)}


@pytest.fixture(scope="module")
def manager(redis_addr, setup):
    api = pytest.importorskip("bluesky_queueserver_api.zmq")
    control, info = _free_port(), _free_port()
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "XAS_USER_DIR": str(setup["user_dir"]), "XAS_SAMPLE_XDI": str(setup["sample"]),
           "XAS_TIME_SCALE": "0", "XAS_PLOTS": "0", "MPLBACKEND": "Agg"}
    console = open(setup["folder"] / "console.txt", "w")
    argv = ["--startup-dir", str(ROOT / "profile_collection" / "startup"),
            "--existing-plans-devices", str(setup["folder"] / "existing_plans_and_devices.yaml"),
            "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
            "--redis-addr", redis_addr, "--redis-name-prefix", f"xas_test_{os.getpid()}",
            "--zmq-control-addr", f"tcp://127.0.0.1:{control}", "--zmq-info-addr", f"tcp://127.0.0.1:{info}",
            "--zmq-publish-console", "OFF", "--console-output", "ON"]
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from bluesky_queueserver.manager.start_manager import start_manager; "
                               "sys.argv[0] = 'start-re-manager'; sys.exit(start_manager())", *argv],
        env=env, stdout=console, stderr=subprocess.STDOUT, cwd=str(setup["folder"]))
    RM = api.REManagerAPI(zmq_control_addr=f"tcp://127.0.0.1:{control}", zmq_info_addr=f"tcp://127.0.0.1:{info}",
                          timeout_recv=30)
    try:
        RM.wait_for_idle(timeout=120)
        t0 = time.perf_counter()
        RM.environment_open()
        RM.wait_for_idle(timeout=TIMEOUT_S)
        assert RM.status()["worker_environment_exists"], (setup["folder"] / "console.txt").read_text()[-3000:]
        setup["environment_open_s"] = time.perf_counter() - t0
        yield RM
    finally:
        try:
            if RM.status()["worker_environment_exists"]:
                RM.environment_close()
                RM.wait_for_idle(timeout=120)
            RM.send_request(method="manager_stop")
        except Exception:  # noqa: BLE001 -- the manager may already be gone
            pass
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        RM.close()
        console.close()


def _plan(RM, name):
    return RM.plans_allowed()["plans_allowed"][name]


def _parameters(plan):
    return {p["name"]: (p.get("annotation", {}).get("type"), p.get("default")) for p in plan["parameters"]}


def test_the_plans_a_user_queues_have_typed_parameters_with_defaults(manager):
    allowed = manager.plans_allowed()["plans_allowed"]
    for name in ("xafs", "adaptive", "xafs_scan", "adaptive_xas_plan", "count", "scan", "list_scan", "mv"):
        assert name in allowed, name
    adaptive = _parameters(allowed["adaptive"])
    assert adaptive["candidates"] == ("str", None)
    assert adaptive["max_points"] == ("int", "40")
    assert adaptive["confidence"] == ("float", "0.95")
    assert adaptive["dwell_s"] == ("float", "1.0")
    assert adaptive["tail"] == ("dict[str, typing.Any] | None", "None")
    assert adaptive["agent"][0] == "typing.Literal['information-gain', 'space-filling']"
    assert "description" in allowed["adaptive"]
    xafs = _parameters(allowed["xafs"])
    assert xafs["element"] == ("str", "'Cu'") and xafs["grid"] == ("dict[str, typing.Any] | None", "None")
    assert _parameters(allowed["xafs_scan"])["detectors"][0].startswith("collections.abc.Sequence")
    assert _parameters(allowed["count"])["num"][1] == "1"


@pytest.mark.parametrize("name, args, kwargs, message", [
    ("adaptive", [], {"max_points": "ten"}, "max_points"),
    ("adaptive", [], {"agent": "greedy"}, "agent"),
    ("adaptive", [], {"confidence": "high"}, "confidence"),
    ("xafs", [5], {}, "element"),
    ("xafs", [], {"mode": "xes"}, "mode"),
    ("xafs", [], {"grid": "fine"}, "grid"),
    ("xafs", [], {"detail": 1}, "detail"),
])
def test_wrong_arguments_are_refused_before_the_item_is_queued(manager, setup, name, args, kwargs, message):
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.comm_base import RequestFailedError

    if name == "adaptive":
        args = [setup["candidates"], *args]
    before = manager.queue_get()["items"]
    with pytest.raises(RequestFailedError, match=message):
        manager.item_add(BPlan(name, *args, **kwargs))
    assert manager.queue_get()["items"] == before


def test_queued_plans_run_and_are_read_back_while_the_worker_writes(manager, setup, synthetic_library):
    from bluesky_queueserver_api import BPlan

    from endstation.catalog import open_catalog

    manager.history_clear()
    grid = {"bounds": "-30 0 20", "steps": "10 5", "times": "0.1 0.1"}
    manager.item_add(BPlan("xafs", "Cu", "K", grid=grid, md={"XDI": {"Sample": {"name": "queued CuO"}}}))
    manager.item_add(BPlan("adaptive", setup["candidates"], "Cu", "K", model=None, dwell_s=0.1, max_points=16,
                           confidence=0.95))
    manager.item_add(BPlan("count", ["I0", "It"], num=2))
    t0 = time.perf_counter()
    manager.queue_start()
    manager.wait_for_idle(timeout=TIMEOUT_S)
    setup["plans_s"] = time.perf_counter() - t0
    history = manager.history_get()["items"]
    assert [item["result"]["exit_status"] for item in history] == ["completed"] * 3, history[-1]["result"]
    xafs_uid, adaptive_uid, count_uid = (item["result"]["run_uids"][0] for item in history)

    # This process joins the catalog server the worker uses, while the worker's environment is open.
    catalog = open_catalog(directory=setup["user_dir"] / "catalog")
    xafs_run = catalog[xafs_uid]
    assert xafs_run.metadata["start"]["XDI"]["Sample"]["name"] == "queued CuO"
    assert xafs_run.metadata["stop"]["exit_status"] == "success"
    assert len(xafs_run["primary"]["I0"].read()) == xafs_run.metadata["start"]["num_points"] > 0
    adaptive_run = catalog[adaptive_uid]
    assert adaptive_run.metadata["start"]["plan_name"] == "adaptive_xas_plan"
    decision = adaptive_run["decision"]
    assert decision["decision_action"].read()[-1] == "stop"
    ranking_uid = adaptive_run.metadata["analysis_runs"]["xas-ranking"]
    ranking = catalog[ranking_uid]
    assert ranking.metadata["start"]["parent_uid"] == adaptive_uid
    assert ranking["ranking"]["top_names"].read()[-1][0] == synthetic_library.names[SAMPLE]
    assert catalog[count_uid].metadata["start"]["plan_name"] == "count"

    # xas-replay in a third process, the worker still holding the catalog.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    replayed = subprocess.run([sys.executable, "-m", "apps.replay", xafs_uid, "--catalog",
                               str(setup["user_dir"] / "catalog"), "--xdi", str(setup["folder"] / "queued.xdi")],
                              capture_output=True, text=True, env=env, timeout=300)
    assert replayed.returncode == 0, replayed.stderr
    assert "exit_status success" in replayed.stderr and (setup["folder"] / "queued.xdi").exists()

    # A model, element and candidates that do not belong together: refused before any run opens.
    n_runs = len(catalog)
    manager.item_add(BPlan("adaptive", setup["candidates"], "Fe", "K", model="cu-k"))
    manager.queue_start()
    manager.wait_for_idle(timeout=TIMEOUT_S)
    last = manager.history_get()["items"][-1]["result"]
    assert last["exit_status"] == "failed"
    assert "predicts the Cu K-edge, not the Fe K-edge" in last["msg"]
    assert last["run_uids"] == []
    assert len(catalog) == n_runs

    # The queue console carries no library warnings (zarr's string dtypes, ...).
    console = (setup["folder"] / "console.txt").read_text()
    warnings = [line for line in console.splitlines() if "Warning" in line]
    assert warnings == [], warnings[:5]
    print(f"queue server: environment opened in {setup['environment_open_s']:.1f} s; "
          f"three plans ran in {setup['plans_s']:.1f} s")
