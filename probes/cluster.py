"""Where probes run when ``--cluster`` is given: a Dask cluster, behind a narrow seam.

The seam is ``concurrent.futures``-shaped: :func:`connect` returns an :class:`Engine` whose
``submit(fn, *args, name=...)`` gives a future with ``result()``, ``done()`` and
``add_done_callback(fn)`` (a submitted future may be passed as an argument: the engine hands
its result over), ``slots()`` says how many tasks it runs at once, ``close()`` ends it. Another
engine (a ``ProcessPoolExecutor``, Ray) would plug in by giving the same methods. One is
built: Dask's ``distributed``. :func:`connect_soon` does the connecting in a background
thread (workers start and import while the client collects). :class:`Dispatcher` feeds an
engine in a planned order (:func:`start_order`), no faster than its workers free up.

Addresses:

* ``local:N`` — a ``LocalCluster`` of N worker processes on this machine, one task at a time
  each, every worker's torch/BLAS/OpenMP given ``cores // N`` threads (or the user's
  ``OMP_NUM_THREADS``), so N workers never spin more threads than there are cores;
* ``tcp://host:8786`` (or any address ``distributed.Client`` takes) — a running scheduler. Its
  workers size their threads from ``OMP_NUM_THREADS`` when set on the worker, else
  ``cores // nthreads`` of that worker (:func:`worker_threads`).

A scheduler that cannot be reached is a :class:`~probes.errors.StrataError` naming the
address. Tasks are submitted with ``pure=False`` and a readable key, and Dask reruns a task whose
worker died on another worker (its default ``allowed-failures``: 3).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import re
import threading
import time
from collections import deque

from .errors import StrataError

CONNECT_TIMEOUT_S = 10


class Engine:
    """A Dask client, shaped like ``concurrent.futures.Executor``."""

    def __init__(self, client, cluster=None, address: str = "", local_threads: int | None = None):
        self.client = client
        self.cluster = cluster
        self.address = address
        # a local cluster's threads, all its workers together: this machine's cores it may use
        # (None for a remote cluster: its workers are not this machine's)
        self.local_threads = local_threads
        self._closing: concurrent.futures.Future | None = None   # close_soon's, once started

    def submit(self, fn, *args, name: str) -> "Task":
        """Run ``fn(*args)`` on a worker (a :class:`Task`'s future among ``args``: its
        result)."""
        # pure=False: two submissions of one probe are two tasks, never a stale shared result;
        # the key keeps the probe and model readable in Dask's dashboard and logs
        key = f"{_slug(name)}-{os.urandom(4).hex()}"
        return Task(self.client.submit(_timed, fn, *args, key=key, pure=False), name)

    def workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def slots(self) -> int:
        """Tasks the cluster runs at once now: its workers' threads."""
        info = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return sum(int(w.get("nthreads", 1)) for w in info.values())

    def record(self) -> None:
        """Start recording the scheduler's task stream (every task's compute and transfers)."""
        from distributed import get_task_stream
        self._stream = get_task_stream(self.client)
        self._stream.__enter__()

    def activity(self) -> dict:
        """Since :meth:`record`: tasks run, seconds computing and moving results between
        workers (Dask's task stream), the workers that did it, and ``timeline``: per task its
        key, worker, start (Unix seconds) and seconds computing and transferring, by start."""
        stream, self._stream = getattr(self, "_stream", None), None
        if stream is None:
            return {}
        stream.__exit__(None, None, None)
        timeline = []
        for row in stream.data:
            steps = row.get("startstops", ())
            spent = {"compute": 0.0, "transfer": 0.0}
            for step in steps:
                if step["action"] in spent:
                    spent[step["action"]] += step["stop"] - step["start"]
            timeline.append({"key": row.get("key"), "worker": row.get("worker"),
                             "start": min((s["start"] for s in steps), default=None),
                             "compute_s": spent["compute"], "transfer_s": spent["transfer"]})
        timeline.sort(key=lambda t: (t["start"] is None, t["start"] or 0.0))
        return {"tasks": len(timeline), "compute_s": sum(t["compute_s"] for t in timeline),
                "transfer_s": sum(t["transfer_s"] for t in timeline),
                "workers": len({t["worker"] for t in timeline} - {None}), "timeline": timeline}

    def close(self) -> None:
        """Close the client (and a local cluster: its worker processes exit); waits for a
        :meth:`close_soon` already started instead of closing twice."""
        if self._closing is not None:
            self._closing.result()
            return
        self._close()

    def close_soon(self) -> None:
        """Start closing in a background thread, for a caller that has taken every result and
        has other work to do meanwhile (a local cluster's workers take ≈ 1 s to exit once torch
        is loaded); :meth:`close` then waits for it and raises what it raised."""
        if self._closing is None:
            self._closing = concurrent.futures.Future()

            def run():
                try:
                    self._close()
                    self._closing.set_result(None)
                except BaseException as exc:   # re-raised by close()
                    self._closing.set_exception(exc)
            threading.Thread(target=run, name="strata-cluster-close", daemon=True).start()

    def _close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def parse(address: str) -> tuple[str, int | None]:
    """``("local", N)`` for ``local:N``, ``("remote", None)`` for a scheduler address."""
    m = re.fullmatch(r"local:(\d+)", address.strip())
    if m:
        n = int(m.group(1))
        if n < 1:
            raise StrataError(f"--cluster {address}: need at least one worker (local:1 or more)")
        return "local", n
    if address.startswith("local"):
        raise StrataError(f"--cluster {address}: write local:N, N the number of worker processes")
    return "remote", None


@contextlib.contextmanager
def environment_kept():
    """This process's environment as it was before the block, after it. Starting a
    ``LocalCluster`` needs it: Dask's nannies run in the starting process and set their workers'
    spawn-time variables (``OMP_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_=65536``, ...) in *its*
    environment, where they stay — and every subprocess it starts inherits them (a benchmark's
    serial pytest run then allocated every buffer as a fresh mmap: 128 s against 104 s)."""
    environ = dict(os.environ)
    try:
        yield
    finally:   # key by key: pytest may be reading the environment in another thread
        for key in set(os.environ) - set(environ):
            os.environ.pop(key, None)
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def connect(address: str) -> Engine:
    """Start (``local:N``) or reach (an address) the cluster; a one-line error when it can't."""
    kind, n = parse(address)
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - declared in pyproject.toml
        raise StrataError("--cluster needs Dask's distributed: pip install distributed") from None
    if kind == "local":
        from .small_lapack import available_cores
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else max(1, available_cores() // n)
        with environment_kept():
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   # no memory limit: Dask would pause or kill a worker whose
                                   # streamed model sits in page cache; memory is left to the
                                   # operating system, as in a serial run
                                   dashboard_address=None, memory_limit=0,
                                   # no dashboard; the scheduler's HTTP routes on a free port
                                   # (its default 8787 is taken by a second cluster here)
                                   scheduler_kwargs={"dashboard_address": ":0"},
                                   env={"OMP_NUM_THREADS": str(threads)})
        return Engine(Client(cluster), cluster, address,
                      local_threads=min(available_cores(), n * threads))
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise StrataError(f"--cluster {address}: no Dask scheduler answered "
                          f"({type(exc).__name__}: {exc}); start one (dask scheduler) or check "
                          f"the address") from None
    return Engine(client, None, address)


def connect_soon(address: str, warm=None) -> concurrent.futures.Future:
    """:func:`connect` in a background thread, then ``warm()`` run once on every worker (the
    imports each worker would otherwise do in its first task): a future of the
    :class:`Engine`, so worker processes start and import while pytest collects. Its
    ``result()`` raises what :func:`connect` raised."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def start():
        try:
            engine = connect(address)
        except BaseException as exc:   # handed to whoever takes the engine
            future.set_exception(exc)
            return
        try:
            if warm is not None:
                engine.client.run(warm)
        except Exception:   # a worker that cannot warm up fails its first task instead, loudly
            pass
        future.set_result(engine)

    threading.Thread(target=start, name="strata-cluster-connect", daemon=True).start()
    return future


# -- starting before pytest has parsed its options ------------------------------------------
# Workers take ≈ 3 s to start and import torch and the probes. Started at session start they are
# ready ≈ 2–3 s after pytest has planned the tasks; started while pytest still imports its
# plugins (the root conftest.py calls start_early) they overlap those imports. Only the command
# line is read (not addopts or PYTEST_ADDOPTS): a run whose --cluster comes from elsewhere starts
# at session start as before, and an early engine that the parsed options do not ask for is
# closed (discard_early).
_EARLY: tuple[str, concurrent.futures.Future] | None = None
# no tests run (help, version, collect-only), or a usage error follows (-n with --cluster)
_NOT_A_RUN = ("-h", "--help", "--version", "-V", "--co", "--collect-only", "--fixtures",
              "--markers", "--fixtures-per-test", "-n", "--numprocesses")


def early_address(argv: list[str]) -> str | None:
    """The ``--cluster`` address on a pytest command line (``--cluster X`` or ``--cluster=X``),
    None if there is none, it cannot be parsed, or the command runs no tests (help, version,
    collect-only)."""
    address = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in _NOT_A_RUN or arg.startswith(("-n=", "--numprocesses=")) or \
                (arg.startswith("-n") and arg[2:].isdigit()):
            return None
        if arg == "--cluster" and i + 1 < len(argv):
            address = argv[i + 1]
        elif arg.startswith("--cluster="):
            address = arg.split("=", 1)[1]
    if address is None:
        return None
    try:
        parse(address)
    except StrataError:
        return None   # pytest_configure says so, in one line
    return address


def _run_named(target: str) -> None:
    """Run ``module:function`` (the worker's warm-up, named so this module imports no caller)."""
    import importlib
    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)()


def start_early(argv: list[str], warm: str | None = None) -> bool:
    """:func:`connect_soon` the ``--cluster`` of ``argv`` now, ``warm`` (``"module:function"``)
    then run on every worker; True if started. :func:`take_early` hands it to the session."""
    global _EARLY
    address = early_address(argv)
    if address is None or _EARLY is not None:
        return False
    _EARLY = (address, connect_soon(address, warm=None if warm is None else
                                    functools.partial(_run_named, warm)))
    return True


def take_early(address: str) -> concurrent.futures.Future | None:
    """The early engine's future if it was started for ``address`` (then it is the caller's);
    else None, and an early engine for another address is discarded."""
    global _EARLY
    if _EARLY is not None and _EARLY[0] == address:
        future, _EARLY = _EARLY[1], None
        return future
    discard_early()
    return None


def discard_early() -> None:
    """Close an early engine nobody took (the parsed options have no ``--cluster``, or another
    address, or the run ended before its session started)."""
    global _EARLY
    if _EARLY is None:
        return
    _, future = _EARLY
    _EARLY = None
    try:
        future.result().close()
    except Exception:   # it failed to start: nothing to close, and the options did not ask
        pass


_threads_set = False


def worker_threads() -> int:
    """Give this worker process its threads once (torch, BLAS, OpenMP-sized pools): the worker's
    ``OMP_NUM_THREADS`` when set, else the cores divided by the tasks it runs at once."""
    global _threads_set
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        threads = int(env)
    else:
        from .small_lapack import available_cores
        try:
            from distributed import get_worker
            slots = get_worker().state.nthreads
        except (ImportError, ValueError, AttributeError):
            slots = 1
        threads = max(1, available_cores() // max(1, slots))
    if not _threads_set:
        import torch
        from threadpoolctl import threadpool_limits
        restore_malloc_thresholds()
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        threadpool_limits(limits=threads, user_api="blas")
        _threads_set = True
    return threads


# glibc's mallopt parameters and the ceilings of its own adaptive thresholds (64-bit)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 64 << 20


def restore_malloc_thresholds() -> bool:
    """Undo Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` (set on every worker its nanny spawns, to hand
    freed memory back quickly). Setting it switches off glibc's adaptive mmap threshold, so each
    buffer above 128 KiB — every activation, Gram block and GEMM workspace of a forward pass — is
    a fresh mmap, zeroed page by page, and munmapped when freed: on Qwen3-4B shapes 27× the page
    faults and a 1.35× slower probe (benchmarks/README.md, More than one machine). Here the
    thresholds are fixed where glibc's adaptive ones end: buffers up to 32 MiB are reused from
    the heap, and free memory above 64 MiB is still returned. Linux/glibc only; True if set."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def start_order(costs: list[float]) -> list[int]:
    """The order to start tasks of estimated ``costs`` in (indices into ``costs``): longest first
    (LPT), ties in the given order; a negative or missing estimate counts as 0.

    Started as workers free up (:class:`Dispatcher`), longest first keeps the makespan within
    4/3 − 1/(3·workers) of the best (Graham's bound): a long task started last would keep
    one worker busy after the others are idle. A task's cost includes the entries derived from
    its result (``fixtures/cluster.py``: the claims' nulls run right after it), so the chain,
    not the probe alone, is what is ordered. Before the nulls were derived entries the client
    computed them, one claim after another, beside two busy workers: measured on the zoo
    scenario (benchmarks/cluster.py, 2 cores), three busy processes on two cores slowed the
    gauge probes by 20–40 %, and ordering the residual streams first (their nulls then ran
    early) could not undo that."""
    costs = [max(0.0, float(c)) for c in costs]
    return sorted(range(len(costs)), key=lambda i: -costs[i])


class Dispatcher:
    """Hands tasks to an engine no faster than its workers free up, in the order they were
    added: at most ``engine.slots()`` run at once, so each starts on a worker that is idle.

    Why not submit everything and let Dask place it: Dask assigns a task to a worker when it is
    submitted, by that worker's expected occupancy — which for a task it has never timed is a
    default half second — and steals a queued task for an idle worker only from a worker it
    believes saturated. Two hour-long tasks could so wait one behind the other on one worker
    while another sat idle (measured: a split gauge's two units of the random twin, 224 s and
    217 s, ran in turn on one worker while the other idled for 437 s). Handed out one by one,
    the order is the plan's and every task meets an idle worker; a task whose worker dies is
    still rerun by Dask elsewhere, and its slot stays taken until it completes.

    ``add(fn, *args, name=...)`` returns a :class:`Pending`; ``after(parts, fn, *args, ...)``
    one that starts when every pending in ``parts`` is done, with their results as arguments
    after ``args`` (a split probe's merge), ahead of every task still waiting."""

    def __init__(self, engine):
        self.engine = engine
        self.waiting: deque = deque()
        self.groups: list = []   # (parts, pending, fn, args, name) of merges not yet queued
        self.running = 0
        self.changed = threading.Condition()

    def add(self, fn, *args, name: str) -> "Pending":
        pending = Pending(self.changed)
        with self.changed:
            self.waiting.append((pending, fn, args, name))
            self._dispatch()
        return pending

    def after(self, parts: list["Pending"], fn, *args, name: str) -> "Pending":
        pending = Pending(self.changed)
        with self.changed:
            self.groups.append((list(parts), pending, fn, args, name))
            self._dispatch()   # its parts may be done, or refused, already
        return pending

    def _queue_ready_merges(self) -> None:
        """Put each merge whose parts are all done first in line (so it takes the slot its last
        part freed, before any waiting unit); fail at once a merge one of whose parts failed."""
        for group in [g for g in self.groups
                      if any(p.error is not None for p in g[0]) or all(p.done() for p in g[0])]:
            self.groups.remove(group)
            parts, pending, fn, args, name = group
            failed = next((p.error for p in parts if p.error is not None), None)
            if failed is not None:
                pending._fail(failed)
                continue
            self.waiting.appendleft((pending, fn, (*args, *(p.task.future for p in parts)), name))

    def _dispatch(self) -> None:
        with self.changed:
            slots = max(1, self.engine.slots())
            while True:
                # under the lock, in the same call that frees a slot: no unit takes it first
                self._queue_ready_merges()
                if not self.waiting or self.running >= slots:
                    break
                pending, fn, args, name = self.waiting.popleft()
                try:
                    task = self.engine.submit(fn, *args, name=name)
                except Exception as exc:   # the scheduler went away: the test gets the error
                    pending._fail(exc)
                    self.changed.notify_all()
                    continue   # (a merge waiting on it fails on the next turn)
                self.running += 1
                pending._start(task)
                pending.add_done_callback(self._finished)

    def _finished(self, _task) -> None:
        with self.changed:
            self.running -= 1
            self.changed.notify_all()
            self._dispatch()   # the lock is re-entrant: the freed slot is filled before release

    def idle(self) -> bool:
        """Nothing running, waiting or to be merged: every task added is done."""
        with self.changed:
            return not (self.running or self.waiting or self.groups)

    def wait_first(self, pendings) -> None:
        """Return when at least one of ``pendings`` is done (at once if one already is)."""
        with self.changed:
            self.changed.wait_for(lambda: any(p.done() for p in pendings))


class Pending:
    """A task the :class:`Dispatcher` has not necessarily started yet, shaped like
    :class:`Task` (``done``, ``result``, ``add_done_callback``; ``task`` once started)."""

    def __init__(self, changed: threading.Condition):
        self.task: Task | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._callbacks: list = []
        self._changed = changed

    def _start(self, task: "Task") -> None:
        self.task = task
        callbacks, self._callbacks = self._callbacks, []
        self._started.set()
        task.add_done_callback(self._notify)
        for fn in callbacks:
            task.add_done_callback(fn)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._started.set()

    def _notify(self, _task) -> None:
        with self._changed:
            self._changed.notify_all()

    def done(self) -> bool:
        return self.error is not None or (self.task is not None and self.task.done())

    def add_done_callback(self, fn) -> None:
        # under the dispatcher's lock: _start takes the list it then hands to the task
        with self._changed:
            if self.task is None:
                self._callbacks.append(fn)
                return
        self.task.add_done_callback(fn)

    def result(self, timeout=None):
        self._started.wait()
        if self.error is not None:
            raise self.error
        return self.task.result(timeout=timeout)


def worker_name() -> str:
    """This worker's address (or ``local`` outside a Dask worker), for error messages."""
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return "local"


class Task:
    """One submitted call, ``concurrent.futures.Future``-shaped; after it is done, ``seconds``
    (its run time on the worker) and ``worker`` (where it ran)."""

    def __init__(self, future, name: str):
        self.future, self.name = future, name
        self.seconds: float | None = None
        self.worker: str | None = None

    def done(self) -> bool:
        return self.future.done()

    def add_done_callback(self, fn) -> None:
        self.future.add_done_callback(lambda _f: fn(self))

    def result(self, timeout=None):
        """The call's return value; its exception, with the worker's traceback, if it raised."""
        out, self.seconds, self.worker = self.future.result(timeout=timeout)
        return out


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0, worker_name()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text)[:80]
