"""Where probes run when ``--cluster`` is given: a Dask cluster, behind a narrow seam.

The seam is ``concurrent.futures``-shaped: :func:`connect` returns an :class:`Engine` whose
``submit(fn, *args, name=...)`` gives a future with ``result()``, ``done()`` and
``add_done_callback(fn)``; ``close()`` ends it. Another engine (a ``ProcessPoolExecutor``, Ray)
would plug in by giving the same four methods. One is built: Dask's ``distributed``.

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

import os
import re
import time

from .errors import StrataError

CONNECT_TIMEOUT_S = 10


class Engine:
    """A Dask client, shaped like ``concurrent.futures.Executor``."""

    def __init__(self, client, cluster=None, address: str = ""):
        self.client = client
        self.cluster = cluster
        self.address = address

    def submit(self, fn, *args, name: str) -> "Task":
        # pure=False: two submissions of one probe are two tasks, never a stale shared result;
        # the key keeps the probe and model readable in Dask's dashboard and logs
        key = f"{_slug(name)}-{os.urandom(4).hex()}"
        return Task(self.client.submit(_timed, fn, *args, key=key, pure=False), name)

    def workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def record(self) -> None:
        """Start recording the scheduler's task stream (every task's compute and transfers)."""
        from distributed import get_task_stream
        self._stream = get_task_stream(self.client)
        self._stream.__enter__()

    def activity(self) -> dict:
        """Since :meth:`record`: tasks run, seconds computing and moving results between
        workers (Dask's task stream), and the workers that did it."""
        stream, self._stream = getattr(self, "_stream", None), None
        if stream is None:
            return {}
        stream.__exit__(None, None, None)
        seconds = {"compute": 0.0, "transfer": 0.0}
        for row in stream.data:
            for step in row.get("startstops", ()):
                if step["action"] in seconds:
                    seconds[step["action"]] += step["stop"] - step["start"]
        return {"tasks": len(stream.data), "compute_s": seconds["compute"],
                "transfer_s": seconds["transfer"],
                "workers": len({row.get("worker") for row in stream.data} - {None})}

    def close(self) -> None:
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
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               # no memory limit: Dask would pause or kill a worker whose
                               # streamed model sits in page cache; memory is left to the
                               # operating system, as in a serial run
                               dashboard_address=None, memory_limit=0,
                               env={"OMP_NUM_THREADS": str(threads)})
        return Engine(Client(cluster), cluster, address)
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise StrataError(f"--cluster {address}: no Dask scheduler answered "
                          f"({type(exc).__name__}: {exc}); start one (dask scheduler) or check "
                          f"the address") from None
    return Engine(client, None, address)


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
