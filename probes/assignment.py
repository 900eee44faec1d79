"""MLP neuron assignment for the gauge probe's permutation alignment (SPEC §5.4).

The problem. Neuron vectors ``xa`` of layer L and ``xb`` of layer L' (n × d each; for the gauge
probe d = 3·hidden: the gate, up and downᵀ rows, each family scaled to unit Frobenius norm, see
``probes.gauge``) and the permutation π maximising Σ_i ⟨xa[i], xb[π(i)]⟩ — or Σ_i sim[i, π(i)]
when one similarity matrix is given. Invariances (exact arithmetic): π depends on the vectors
only through the similarity xa xbᵀ, so it is unchanged by any common orthogonal map of both
layers' vector coordinates, and relabelling the neurons of either layer relabels π accordingly.
No null here: the gauge probe's null reruns the same assignment against a scrambled L'.

Exact up to ``EXACT_ASSIGNMENT_MAX`` = 4096 neurons: ``scipy.optimize.linear_sum_assignment``
on the n × n similarity.

Above it (Qwen3-4B: 9728 neurons) the stated approximation ``approx:knn32+sparse-lsa``: the
similarity is formed ``SIM_BLOCK`` rows at a time and never stored; each neuron of L keeps its
32 most similar neurons of L' and each neuron of L' its 32 most similar of L; the assignment
maximising the similarity over that sparse candidate graph is solved exactly by
``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (k doubles if the graph has no full
matching). Its gap to the exact solver, measured where exact is feasible: 0 on a random
9728 × 9728 similarity (exact: 10–12 s here; the optimum's edges sit at row rank ≤ 26),
≤ 1e-4 relative at 4096 (tested, random and planted, float32 and bf16 similarities). Each
gauge result also records, per pair, ``assignment_gap`` (:func:`subproblem_gap`): what the exact
solver gains over the matching found on a ``GAP_CHECK`` = 2048-neuron sub-problem (random
neurons of L and their partners); 0 for an optimal matching, a lower bound on the full gap, in
units of the sum of the three cosines.

Similarity precision (:func:`similarity_dtype`). bf16 on a bf16 checkpoint when the hardware
multiplies bf16 faster (inputs exact, output rounded: it only ranks candidates; its effect is
inside the measured gap), else float32. The cosines the gauge probe reports are recomputed
under the matching found, in float32 products summed in float64.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import scipy.sparse
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

EXACT_ASSIGNMENT_MAX = 4096     # linear_sum_assignment (≈ 1 s at 4096) up to this many neurons
CANDIDATES = 32                 # above it: each neuron's 32 nearest neighbours, both sides
GAP_CHECK = 2048                # neurons in the per-pair exact sub-problem check of the approximation
SIM_BLOCK = 1024                # rows of the similarity formed at a time


def approx_method(k: int = None) -> str:
    """The record's name of the approximate assignment (see :func:`assign_sparse`)."""
    return f"approx:knn{CANDIDATES if k is None else k}+sparse-lsa"


def assign_exact(sim) -> np.ndarray:
    """π (neuron i of L ↦ π[i] of L') maximising Σ_i sim[i, π(i)]: linear_sum_assignment."""
    sim = sim.cpu().numpy() if isinstance(sim, torch.Tensor) else np.asarray(sim)
    rows, cols = linear_sum_assignment(sim, maximize=True)
    perm = np.empty(sim.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def candidate_edges(xa: torch.Tensor, xb: torch.Tensor, k: int, block: int = SIM_BLOCK):
    """The sparse candidate graph of the approximate assignment: for every neuron of L its k most
    similar neurons of L' and for every neuron of L' its k most similar of L, similarities
    ⟨xa[i], xb[j]⟩ formed ``block`` rows at a time (memory O(block·n)) and never stored whole.
    Returns (rows, cols, sims) as numpy arrays, duplicates removed."""
    n = xa.shape[0]
    k = min(k, n)
    r_idx, r_val, c_idx, c_val = [], [], None, None
    xbt = xb.T
    for r0 in range(0, n, block):
        s = (xa[r0:r0 + block] @ xbt).float()
        v, i = s.topk(k, dim=1)
        r_idx.append(i)
        r_val.append(v)
        cv, ci = s.topk(min(k, s.shape[0]), dim=0)
        ci = ci + r0
        if c_val is not None:
            cv, ci = torch.cat([c_val, cv]), torch.cat([c_idx, ci])
            cv, pos = cv.topk(k, dim=0)
            ci = ci.gather(0, pos)
        c_val, c_idx = cv, ci
    rows = np.concatenate([np.repeat(np.arange(n), k), c_idx.cpu().numpy().ravel()])
    cols = np.concatenate([torch.cat(r_idx).cpu().numpy().ravel(), np.tile(np.arange(n), c_idx.shape[0])])
    vals = np.concatenate([torch.cat(r_val).cpu().numpy().ravel(), c_val.cpu().numpy().ravel()])
    key, first = np.unique(rows.astype(np.int64) * n + cols, return_index=True)
    return key // n, key % n, vals[first].astype(np.float64)


def assign_sparse(rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, n: int):
    """The assignment maximising Σ sim over the candidate edges only: the full bipartite matching
    of minimum weight (c − sim, c > max sim so every weight is positive) by
    ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp). Exact on the graph;
    ``None`` when the graph holds no full matching."""
    w = float(sims.max()) + 1.0 - sims
    g = scipy.sparse.csr_matrix((w, (rows, cols)), shape=(n, n))
    try:
        r, c = min_weight_full_bipartite_matching(g)
    except ValueError:
        return None
    perm = np.empty(n, dtype=np.int64)
    perm[r] = c
    return perm


def match_neurons(xa, xb=None, k: int | None = None) -> tuple[np.ndarray, str]:
    """The neuron permutation maximising Σ_i ⟨xa[i], xb[π(i)]⟩ (or Σ_i sim[i, π(i)] when one
    similarity matrix is given): exact ``linear_sum_assignment`` up to EXACT_ASSIGNMENT_MAX
    neurons, else the sparse candidate graph (each neuron's ``CANDIDATES`` nearest neighbours on
    both sides) solved exactly by :func:`assign_sparse`; if that graph has no full matching, k is
    doubled (and past n/4 the exact solver is used)."""
    if xb is None:  # a similarity matrix (float32): factor it as sim · I
        xa = (xa if isinstance(xa, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(xa))).float()
        xb = torch.eye(xa.shape[0], dtype=xa.dtype, device=xa.device)
    n = xa.shape[0]
    if n <= EXACT_ASSIGNMENT_MAX:
        return assign_exact(xa.float() @ xb.float().T), "exact"
    k = CANDIDATES if k is None else k
    while 4 * k <= n:
        perm = assign_sparse(*candidate_edges(xa, xb, k), n)
        if perm is not None:
            return perm, approx_method(k)
        k *= 2
    return assign_exact(xa.float() @ xb.float().T), "exact"


def subproblem_gap(xa: torch.Tensor, xb: torch.Tensor, perm: np.ndarray, size: int,
                   rng: np.random.Generator) -> float:
    """How much the exact solver improves an assignment on a sub-problem where it is feasible:
    ``size`` seeded random neurons I of L and their partners π(I) in L', exact
    ``linear_sum_assignment`` on the float32 similarity of I × π(I) minus Σ_{i∈I} sim[i, π(i)].
    ≥ 0; 0 when π is optimal (an optimal assignment is optimal on every such restriction), and a
    lower bound on the full gap (exact − π) of the objective Σ_i sim[i, π(i)]."""
    n = xa.shape[0]
    idx = np.sort(rng.choice(n, size=min(size, n), replace=False))
    ia = torch.as_tensor(idx, device=xa.device)
    ib = torch.as_tensor(perm[idx], device=xb.device)
    sub = (xa[ia].float() @ xb[ib].float().T).cpu().numpy().astype(np.float64)
    best = assign_exact(sub)
    return float(sub[np.arange(len(idx)), best].sum() - np.trace(sub))


def _bf16_fast(device: torch.device) -> bool:
    """Whether bf16 GEMMs are faster than float32 here: CUDA, or a CPU with AVX512-BF16/AMX."""
    if device.type == "cuda":
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read(1 << 16)
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def similarity_dtype(weights: Iterable[torch.Tensor], device) -> torch.dtype:
    """bf16 for the MLP similarity when every weight is exactly representable in bf16 (a bf16
    checkpoint: the inputs are then exact) and the hardware multiplies bf16 faster; else float32.
    The similarity only ranks candidate neurons; the cosines are computed in float32/float64
    under the matching found, and the matching's gap is measured (``assignment_gap``)."""
    if not _bf16_fast(torch.device(device)):
        return torch.float32
    return torch.bfloat16 if all(torch.equal(w.bfloat16().float(), w) for w in weights) else torch.float32
