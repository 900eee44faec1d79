"""The cache under faults: killed runs, concurrent sessions, unwritable or full directories,
altered bytes, refused locks, shared-disk modes. Correct results every time; no partial entry
is ever read."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from probes import cache as cache_mod
from probes.cache import Cache, CacheWarning
from tests.test_plugin_e2e import ROOT, WEIGHT_CLAIMS, comparable, records

EXPECTED = np.arange(50_000, dtype=np.float64) * 0.5


def expected_result():
    return {"x": EXPECTED.copy(), "label": "ok"}


def entries(root: Path) -> list[Path]:
    """Entries in place (a temp file beside them is not an entry: it is never read)."""
    return sorted(p for p in (root / "probes").rglob("*.safetensors")
                  if not p.name.startswith(".tmp-"))


def start_child(root: Path, ready: Path, where: str) -> subprocess.Popen:
    """A process that stops (and waits to be killed) in the middle of computing ('compute') or
    of writing the entry ('write': half the bytes written to its temp file)."""
    code = textwrap.dedent(f"""
        import os, time, numpy as np
        from pathlib import Path
        from probes import cache as c
        ready = Path({str(ready)!r})
        def hang():
            ready.write_text(str(os.getpid()))
            while True:
                time.sleep(1)
        if {where!r} == "write":
            import safetensors.numpy as stn
            real = stn.save_file
            def half_then_hang(arrays, path, metadata=None):
                real(arrays, path, metadata=metadata)
                data = Path(path).read_bytes()
                Path(path).write_bytes(data[: len(data) // 2])
                hang()
            stn.save_file = half_then_hang
            compute = lambda: {{"x": np.arange(50_000, dtype=np.float64) * 0.5, "label": "ok"}}
        else:
            compute = hang
        c.Cache({str(root)!r}).get_or_compute("probe", 1, "fp", {{}}, compute)
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


def kill_when_ready(proc: subprocess.Popen, ready: Path) -> None:
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, "child exited before reaching the fault point"
        assert time.monotonic() < deadline, "child never reached the fault point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("where", ["compute", "write"])
def test_sigkill_mid_probe_or_mid_write_leaves_no_entry_and_the_rerun_is_correct(tmp_path, where):
    root = tmp_path / "cache"
    proc = start_child(root, tmp_path / "ready", where)
    kill_when_ready(proc, tmp_path / "ready")
    assert entries(root) == []                      # nothing half-written in place
    temps = list((root / "probes").rglob(".tmp-*"))
    assert len(temps) == (1 if where == "write" else 0)
    # the killed holder's lock is gone with it: the rerun neither waits nor reads the temp file
    started = time.monotonic()
    result = Cache(root).get_or_compute("probe", 1, "fp", {}, expected_result)
    assert time.monotonic() - started < 30
    assert np.array_equal(result["x"], EXPECTED) and result["label"] == "ok"
    assert len(entries(root)) == 1
    assert Cache(root).get_or_compute("probe", 1, "fp", {}, lambda: 1 / 0)["label"] == "ok"
    if temps:  # a crashed writer's temp file is swept once it is a day old
        old = time.time() - cache_mod.STALE_TEMP_S - 60
        os.utime(temps[0], (old, old))
        Cache(root).get_or_compute("probe", 1, "fp", {"other": 1}, expected_result)
        assert not temps[0].exists()


def test_altered_entry_bytes_are_detected_and_recomputed(tmp_path):
    c = Cache(tmp_path)
    c.get_or_compute("probe", 1, "fp", {}, expected_result)
    (path,) = entries(tmp_path)
    data = bytearray(path.read_bytes())
    data[-2048:-1024] = os.urandom(1024)            # 1 KB of the array data altered on disk
    path.write_bytes(bytes(data))
    calls = []

    def recompute():
        calls.append(1)
        return expected_result()

    result = Cache(tmp_path).get_or_compute("probe", 1, "fp", {}, recompute)
    assert calls == [1] and np.array_equal(result["x"], EXPECTED)


def test_altered_metadata_values_are_detected(tmp_path):
    c = Cache(tmp_path)
    c.get_or_compute("probe", 1, "fp", {}, lambda: {"x": np.ones(3), "observed": 0.910})
    (path,) = entries(tmp_path)
    raw = path.read_bytes()
    assert raw.count(b"0.91") == 1
    path.write_bytes(raw.replace(b"0.91", b"0.99"))   # same length: the header still parses
    result = Cache(tmp_path).get_or_compute("probe", 1, "fp", {},
                                            lambda: {"x": np.ones(3), "observed": 0.910})
    assert result["observed"] == 0.910


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_unwritable_or_full_cache_warns_once_and_computes_without_caching(tmp_path, monkeypatch, err):
    import safetensors.numpy as stn
    real_save = stn.save_file

    def failing_save(arrays, path, metadata=None):
        real_save(arrays, path, metadata=metadata)     # bytes land in the temp file, then
        raise OSError(err, os.strerror(err))            # the disk fills / the mount is read-only

    monkeypatch.setattr(stn, "save_file", failing_save)
    c = Cache(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r1 = c.get_or_compute("probe", 1, "fp", {"a": 1}, expected_result)
        r2 = c.get_or_compute("probe", 1, "fp", {"a": 2}, expected_result)
    msgs = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(msgs) == 1 and "cannot be written" in msgs[0] and "\n" not in msgs[0]
    assert np.array_equal(r1["x"], EXPECTED) and np.array_equal(r2["x"], EXPECTED)
    assert entries(tmp_path) == [] and not list(tmp_path.rglob(".tmp-*"))
    assert c.writable is False


def test_read_only_cache_directory_serves_its_entries_and_computes_the_rest(tmp_path, monkeypatch):
    Cache(tmp_path).get_or_compute("probe", 1, "fp", {}, expected_result)
    # a read-only mount: every attempt to create a file fails with EROFS (root ignores chmod)
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(cache_mod.FileLock, "acquire", lambda self, *a, **k: read_only())
    c = Cache(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hit = c.get_or_compute("probe", 1, "fp", {}, lambda: 1 / 0)
        miss = c.get_or_compute("probe", 1, "fp", {"b": 1}, expected_result)
    assert hit["label"] == "ok" and np.array_equal(miss["x"], EXPECTED)
    assert sum(issubclass(w.category, CacheWarning) for w in caught) == 1
    assert len(entries(tmp_path)) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_real_read_only_directory(tmp_path):
    Cache(tmp_path).get_or_compute("probe", 1, "fp", {}, expected_result)
    for d in [tmp_path, *[p for p in tmp_path.rglob("*") if p.is_dir()]]:
        d.chmod(0o555)
    try:
        with pytest.warns(CacheWarning):
            r = Cache(tmp_path).get_or_compute("probe", 1, "fp", {"b": 1}, expected_result)
        assert np.array_equal(r["x"], EXPECTED)
    finally:
        for d in [tmp_path, *[p for p in tmp_path.rglob("*") if p.is_dir()]]:
            d.chmod(0o755)


def test_filesystem_without_locks_warns_and_still_writes_whole_entries(tmp_path, monkeypatch):
    def no_locks(self, *a, **k):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(cache_mod.FileLock, "acquire", no_locks)
    c = Cache(tmp_path)
    with pytest.warns(CacheWarning, match="refuses file locks"):
        r = c.get_or_compute("probe", 1, "fp", {}, expected_result)
    assert np.array_equal(r["x"], EXPECTED) and len(entries(tmp_path)) == 1
    # a second cache on that filesystem reads the entry (nothing recomputed) and says it too
    with pytest.warns(CacheWarning, match="refuses file locks"):
        assert Cache(tmp_path).get_or_compute("probe", 1, "fp", {}, lambda: 1 / 0)["label"] == "ok"


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_entries_get_the_umask_modes(tmp_path, mask):
    old = os.umask(mask)
    try:
        c = Cache(tmp_path)
        c.get_or_compute("probe", 1, "fp", {}, expected_result)
        c.get_or_build_json("docs", {"a": 1}, lambda: {"v": 1})
    finally:
        os.umask(old)
    files = [*entries(tmp_path), *(tmp_path / "docs").glob("*.json")]
    assert len(files) == 2
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, (f, oct(f.stat().st_mode))


COUNTER_PLUGIN = '''
import os, fcntl
from probes import cache as c
_real = c.Cache.get_or_compute
def counting(self, probe_id, version, fingerprint, params, compute):
    def logged():
        with open(os.environ["STRATA_COMPUTE_LOG"], "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(probe_id + "\\n")
        return compute()
    return _real(self, probe_id, version, fingerprint, params, logged)
c.Cache.get_or_compute = counting
'''


def test_two_sessions_at_once_compute_each_probe_once_and_agree(tmp_path):
    (tmp_path / "count_computes.py").write_text(COUNTER_PLUGIN)
    log = tmp_path / "computed.log"
    env = {"STRATA_COMPUTE_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    cmd = lambda report: [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "-p", "count_computes", f"--cache-dir={tmp_path / 'cache'}",
                          f"--report-dir={report}", *WEIGHT_CLAIMS,
                          "--model=synthetic:planted-adjacent"]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    procs = [subprocess.Popen(cmd(tmp_path / f"r{i}"), cwd=ROOT, env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for out in outs:
        assert "verdicts" in out, out[-2000:]
    computed = log.read_text().split()
    entries_written = entries(tmp_path / "cache")
    assert len(computed) == len(entries_written) >= 2, (computed, entries_written)
    assert comparable(records(tmp_path / "r1")) == comparable(records(tmp_path / "r2"))
