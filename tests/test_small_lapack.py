"""probes.small_lapack: batched eigenproblems equal LAPACK's per-matrix answer, and the thread
controls do what they say (and undo it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.linalg import lapack

from probes import small_lapack as small_lapack_module
from probes.small_lapack import (available_cores, batched_top_eigh, lend_threads,
                                 one_blas_thread, small_lapack, top_eigh_stream)

REPO = Path(__file__).resolve().parents[1]


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@settings(max_examples=25, deadline=None)
@given(b=st.integers(0, 150), n=st.integers(2, 40), r=st.integers(1, 8),
       seed=st.integers(0, 2**31 - 1))
def test_batched_top_eigh_equals_dsyevr(b, n, r, seed):
    r = min(r, n)
    x = np.random.default_rng(seed).standard_normal((b, n, n + 3))
    mats = x @ x.transpose(0, 2, 1)
    vals, vecs = batched_top_eigh(mats, r, chunk=16)   # several chunks, a ragged last one
    assert vals.shape == (b, r) and vecs.shape == (b, n, r)
    for i in range(b):
        w, z, found, _, info = lapack.dsyevr(mats[i], compute_v=1, range="I", il=n - r + 1,
                                             iu=n, lower=1)
        assert info == 0 and found == r
        scale = abs(w[r - 1])
        assert np.max(np.abs(vals[i] - w[:r])) <= 1e-12 * scale
        # eigenvectors up to sign: |⟨a, b⟩| = 1 where the eigenvalue is simple
        overlap = np.abs(np.sum(vecs[i] * z[:, :r], axis=0))
        gaps = np.diff(np.concatenate([[-np.inf], np.sort(np.linalg.eigvalsh(mats[i]))]))[n - r:]
        simple = gaps > 1e-6 * scale
        assert np.all(overlap[simple] > 1 - 1e-9)



@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_top_eigh_stream_gives_each_batch_in_order_and_draws_ahead(ahead):
    """Each batch's result equals :func:`batched_top_eigh` of it alone (same kernel, same
    chunks: identical bits), in order, an empty batch included; the stream draws at most
    ``ahead`` + 1 batches beyond the one it yields (what bounds its memory), and torch's
    thread count is back once it is consumed."""
    rng = np.random.default_rng(7)
    sizes = [40, 0, 17, 65, 3]
    batches = [(lambda x: x @ x.transpose(0, 2, 1))(rng.standard_normal((b, 12, 15)))
               for b in sizes]
    drawn = []

    def source():
        for i, mats in enumerate(batches):
            drawn.append(i)
            yield mats

    threads = torch.get_num_threads()
    got = []
    for i, (vals, vecs) in enumerate(top_eigh_stream(source(), 4, chunk=16, ahead=ahead)):
        assert len(drawn) <= min(len(batches), i + ahead + 2)
        got.append((vals, vecs))
    assert torch.get_num_threads() == threads and len(got) == len(batches)
    for mats, (vals, vecs) in zip(batches, got):
        want_vals, want_vecs = batched_top_eigh(mats, 4, chunk=16)
        assert vals.shape == (len(mats), 4) and vecs.shape == (len(mats), 12, 4)
        np.testing.assert_array_equal(vals, want_vals)
        np.testing.assert_array_equal(vecs, want_vecs)

def test_small_lapack_runs_every_job_and_restores_threads():
    before = torch.get_num_threads()
    with small_lapack("cpu") as pool:
        inside = torch.get_num_threads()
        results = [pool.submit(lambda v: v * v, i) for i in range(20)]
        assert [f.result() for f in results] == [i * i for i in range(20)]
    assert torch.get_num_threads() == before
    assert inside == 1 or before == 1


def test_lent_threads_widen_the_pool_and_leave_every_eigenpair_bit_for_bit():
    # under --cluster local:N the client is lent the idle workers' threads for its claims'
    # eigensolves: the pool grows, torch's own count is back afterwards, answers do not move
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 24, 24))
    mats = x @ x.transpose(0, 2, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = batched_top_eigh(mats, 8, chunk=16)
        lend_threads(3)
        with small_lapack("cpu") as pool:
            widths = {pool._max_workers}
        lent = batched_top_eigh(mats, 8, chunk=16)
        assert torch.get_num_threads() == 1
    finally:
        lend_threads(0)
        torch.set_num_threads(before)
    assert widths == {3} and small_lapack_module._LENT == 0
    np.testing.assert_array_equal(alone[0], lent[0])
    np.testing.assert_array_equal(alone[1], lent[1])


def test_small_lapack_passes_a_jobs_exception_to_its_future():
    with small_lapack("cpu") as pool:
        fut = pool.submit(torch.linalg.cholesky, -torch.eye(3, dtype=torch.float64))
        with pytest.raises(RuntimeError):
            fut.result()


def test_one_blas_thread_limits_and_restores():
    before = _blas_threads()
    with one_blas_thread():
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before


_CHILD = """
import json, os, torch
from threadpoolctl import threadpool_info
from probes.small_lapack import share_cores
n = share_cores({workers})
print(json.dumps({{"returned": n, "torch": torch.get_num_threads(),
                  "omp": os.environ.get("OMP_NUM_THREADS"),
                  "blas": sorted({{l["num_threads"] for l in threadpool_info()
                                   if l["user_api"] == "blas"}})}}))
"""


def _share_cores_in_child(workers: int, omp: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    out = subprocess.run([sys.executable, "-c", _CHILD.format(workers=workers)], cwd=REPO,
                         env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("workers", [1, 2, 64])
def test_share_cores_gives_each_worker_its_share(workers):
    expected = max(1, available_cores() // workers)
    got = _share_cores_in_child(workers, None)
    assert got == {"returned": expected, "torch": expected, "omp": str(expected),
                   "blas": [expected]}


def test_share_cores_keeps_the_users_omp_num_threads():
    got = _share_cores_in_child(2, "3")
    assert got["returned"] == 3 and got["omp"] == "3"
