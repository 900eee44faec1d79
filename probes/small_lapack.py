"""Many small dense factorisations on the CPU, without threads fighting over the cores.

Two libraries run the probes' LAPACK: torch (MKL on x86 wheels, threads = ``torch.get_num_threads``)
and numpy / scipy (each ships its own OpenBLAS, threads = the core count). Both parallelise
*inside* one factorisation and wait for their threads by spinning. On a matrix of a few hundred
rows there is little to share, and when another process holds a core the spinning threads wait
for a descheduled peer: measured on the 2-core Intel Xeon (AMX) with two busy processes beside
it, ``np.linalg.eigh`` of a 326² token Gram took 13× longer on OpenBLAS' two threads than on
one (2.57 s vs 0.20 s for ten), the LOO eigenproblems of the phase-C null 7× (13.3 s vs 1.8 s
per 200 draws); MKL's threaded LAPACK on head-sized matrices 10–12 s vs 0.45 s per Qwen3-4B layer.
Idle, one thread per factorisation is as fast or faster at these sizes.

So independent small factorisations run *side by side*, one LAPACK thread each, in a pool of as
many Python threads as torch was given (torch releases the GIL in its LAPACK calls; scipy's
wrappers do not, which is why the batched ones below go through torch), and numpy/scipy calls
made inside :func:`one_blas_thread` use one OpenBLAS thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch

_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}  # by thread count
_CONTROLLER = None
_LENT = 0   # cores lent to the pool beyond torch's threads (lend_threads)


def lend_threads(threads: int) -> None:
    """Let :func:`small_lapack`'s pool run ``threads`` factorisations at once even where torch
    has fewer threads (0: torch's count again). For cores that are idle for a while but are
    not this process's to keep: under ``--cluster local:N`` the client has one thread while the
    workers compute, and their threads once every probe is in (fixtures/cluster.py). Results do
    not change: each factorisation runs on one LAPACK thread whatever the pool's size."""
    global _LENT
    _LENT = max(0, int(threads))


class Inline:
    """An executor that runs each job at once, in the caller's thread."""

    @staticmethod
    def submit(fn, *args):
        fut = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # re-raised by .result(), as a pool's future would
            fut.set_exception(exc)
        return fut


@contextlib.contextmanager
def small_lapack(device="cpu"):
    """An executor for independent small torch factorisations (svd, eigh, cholesky, qr of
    matrices up to a few hundred rows) — or other jobs that each run on one thread with the GIL
    released, such as blocks of a null's draws — each on one LAPACK thread, as many at once as
    torch had threads. Off the CPU, or with one thread, jobs run inline. torch's thread count is
    restored on exit (:func:`lend_threads` may widen the pool)."""
    threads = torch.get_num_threads()
    restore, threads = threads, max(threads, _LENT)
    if torch.device(device).type != "cpu" or threads == 1:
        yield Inline()
        return
    if threads not in _POOLS:
        _POOLS[threads] = concurrent.futures.ThreadPoolExecutor(threads, "strata-lapack")
    torch.set_num_threads(1)
    try:
        yield _POOLS[threads]
    finally:
        torch.set_num_threads(restore)


@contextlib.contextmanager
def one_blas_thread():
    """numpy's and scipy's OpenBLAS (and any other BLAS threadpoolctl finds) on one thread for
    the block; restored after."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController
    if _CONTROLLER is None:  # scanning the loaded libraries costs ~ms: once per process
        _CONTROLLER = ThreadpoolController()
    with _CONTROLLER.limit(limits=1, user_api="blas"):
        yield


def batched_top_eigh(mats: np.ndarray, r: int, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The r largest eigenvalues (ascending) and their eigenvectors of each symmetric float64
    matrix of ``mats`` (B, R, R): LAPACK's ``syevd`` through ``torch.linalg.eigh`` on chunks of
    ``chunk`` matrices, the chunks side by side in :func:`small_lapack`'s pool. Same values as
    a per-matrix ``dsyevr`` to float64 rounding (tests: 1e-12 relative)."""
    (vals, vecs), = top_eigh_stream([mats], r, chunk)   # consumed whole: the pool's with-block closes
    return vals, vecs


def top_eigh_stream(batches: Iterable[np.ndarray], r: int, chunk: int = 64,
                    ahead: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`batched_top_eigh` of each (B, R, R) batch that ``batches`` yields, in order, with
    the next ``ahead`` batches drawn (the caller's work: gathering them) and queued on the pool
    while the current one is solved — the caller's thread and the pool's overlap, and at most
    ``ahead + 2`` batches are held. Consume it whole: torch runs on one thread until it ends."""
    with small_lapack("cpu") as pool:
        queue: collections.deque = collections.deque()
        source = iter(batches)

        def enqueue() -> bool:
            mats = next(source, None)
            if mats is None:
                return False
            b, n, _ = mats.shape
            batch = torch.from_numpy(np.ascontiguousarray(mats, dtype=np.float64))
            queue.append((b, n, [pool.submit(torch.linalg.eigh, piece)
                                 for piece in torch.split(batch, chunk)] if b else []))
            return True

        for _ in range(ahead + 1):
            if not enqueue():
                break
        while queue:
            b, n, futures = queue.popleft()
            enqueue()                       # drawn while the pool works on queued chunks
            if b == 0:
                yield np.empty((0, r)), np.empty((0, n, r))
                continue
            parts = [f.result() for f in futures]
            yield (torch.cat([p.eigenvalues[:, n - r:] for p in parts]).numpy(),
                   torch.cat([p.eigenvectors[:, :, n - r:] for p in parts]).numpy())


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    import os
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def share_cores(workers: int) -> int:
    """Give this process its share of the cores when ``workers`` processes run side by side
    (pytest-xdist's ``-n N``): ``cores // workers`` threads (≥ 1) for torch, for numpy's and
    scipy's BLAS and, through ``OMP_NUM_THREADS``, for the probes that size their own pools
    (:func:`probes.gauge.default_threads`). Without it each worker starts a thread per core and
    N workers spin N× the cores' threads against each other (above: 7–13× slower factorisations).
    An ``OMP_NUM_THREADS`` already set is the user's choice and is kept. Returns the threads."""
    import os
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    threads = max(1, available_cores() // max(1, workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=threads, user_api="blas")  # stays for the process
    return threads
