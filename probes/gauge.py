"""Gauge alignment of adjacent layers (SPEC §5.4): raw, aligned, null-aligned cosine.

The research notebook compared the raw adjacent-layer cosine of each projection with the cosine
after a "rotation alignment" (the script that aligned is lost). This module rebuilds it with
the right gauge side per family, the MLP's true symmetry, and the alignment's own null.

Gauge side. In HF Linear layout ``W`` is ``[out, in]``. The layer-internal side — rows of
q/k/v/gate/up, columns of o/down (``probes.models.base.INTERNAL_SIDE``) — is private to the
layer; the other side is the residual stream, shared by all layers. Every function here works
on the *internal-major* matrix ``A`` (``n × m``: internal side as rows, residual side as
columns): ``A = W`` for rows-gauge families, ``A = Wᵀ`` for cols-gauge families.

Orthogonal alignment (every projection family). For layers L, L' with internal-major A, B::

    max_{R ∈ O(n)} ⟨R A, B⟩ = ‖B Aᵀ‖_*          (nuclear norm; von Neumann's trace inequality)
    aligned_cos = ‖B Aᵀ‖_* / (‖A‖_F ‖B‖_F)

computed without forming the n × n product when n > m: with thin QR factors A = Q_A C_A,
B = Q_B C_B (C: m × m) the nonzero singular values of B Aᵀ are those of C_B C_Aᵀ, and for any
M acting on the residual side ‖B M Aᵀ‖_* = ‖C_B M C_Aᵀ‖_*. So each layer is reduced once to a
``min(n, m) × m`` *compact factor* and every alignment (observed and null) is a small product.
Invariances: aligned_cos is unchanged by any orthogonal map of either layer's internal side
(that is the point) and by a common orthogonal map of both residual sides; it is ≥ |raw cos|
(R = ±I are candidates) and ≤ 1, with equality iff B = c·R A.

Group aligned over, and why. The SPEC aligns the whole internal side with O(n). For
q/k (and v/o) the exact symmetry of attention is smaller: per kv head an orthogonal (in general
invertible) map shared by that head's q and k rows (resp. v rows and o columns), plus head
permutations, and RoPE restricts q/k further to maps commuting with its 2×2 rotations.
O(n) over all rows is a superset of those groups, so ``aligned_cos`` is an upper bound on the
true-gauge alignment; the null below is aligned over the same group, so ``excess`` compares
like with like. For gate/up/down the orthogonal value is reported too, but O(ff) is not a
symmetry of the MLP (the activation is elementwise): their primary alignment is the neuron
permutation below.

Permutation alignment (MLP). The MLP's exact discrete symmetry is a neuron permutation shared
by gate rows, up rows and down columns. With each family's internal-major matrix scaled to unit
Frobenius norm and the three concatenated along the residual side (``X``: ff × 3·hidden), the
assignment π maximising Σ_i ⟨X_L[i], X_L'[π(i)]⟩ — i.e. the sum of the three permuted cosines —
is solved by ``scipy.optimize.linear_sum_assignment`` on the ff × ff similarity X_L X_L'ᵀ;
``perm_aligned_cos`` per family is that family's cosine under the shared π. (The joint sign
flip / rescaling of an up row and its down column is also exact and is not aligned over.)
The solver is cubic: above ``EXACT_ASSIGNMENT_MAX`` neurons a stated approximation is used
and the result records ``assignment = "approx:<method>"``.

Null (spectrum preserving). The same alignment of layer L against layer L' whose residual side
is scrambled by a random signed permutation S (random permutation × random ±1): B → B S. This
keeps every singular value (and the column-norm multiset) of B, so it keeps everything an
alignment of *unrelated* matrices with those spectra can reach, and destroys the
correspondence between L and L' through the residual basis they share. One S per draw is
applied to all families of L' (a functionally equivalent layer in a scrambled residual basis),
``draws`` seeded draws per pair (seed, first layer); the permutation null uses the first
``perm_draws`` of them (each costs an ff × ff assignment, ≈ 0.25 s at ff = 1536; its per-pair
sd is ≈ 0.001, so 4 draws fix its mean to ≈ 0.0005, far below any margin used). On matrices
with i.i.d. entries (random init) the observed alignment and the null have the same
distribution, so excess ≈ 0.

Fields per family and adjacent pair (L, L+1): raw_cos; aligned_cos (primary alignment: the
permutation for MLP families, orthogonal otherwise); null_aligned_mean / null_aligned_sd over
the draws; excess = aligned − null mean; delta = aligned − raw. MLP families also carry the
orthogonal versions (orth_*).

Cost. Layers are streamed: at most layers L and L+1 are held (float32 internal-major copies and
their compact factors). Per pair: one batched float32 Gram + ``ssyevr`` per family for the
observed and null nuclear norms (relative error ≲ 1e-5 against float64, tested), and
1 + perm_draws ff × ff assignments. Independent jobs run on a thread pool (LAPACK, BLAS and
``linear_sum_assignment`` release the GIL); results do not depend on the thread count.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import scipy.linalg
from scipy import stats as sps
from scipy.optimize import linear_sum_assignment

from . import stats
from .errors import NotApplicable
from .evidence import Evidence, Profile
from .models.base import INTERNAL_SIDE, PROJECTIONS
from .phases import adjacent_pairs

PROBE_ID = "gauge"
VERSION = "3"

NULL_DRAWS = 8                  # signed-permutation draws per adjacent pair (orthogonal null)
PERM_NULL_DRAWS = 4             # the first 4 of them also for the permutation null (cost below)
EXACT_ASSIGNMENT_MAX = 4096     # linear_sum_assignment is O(ff³): exact up to this many neurons
APPROX_CORE = 2048              # approximation above it: exact on the top-norm core, greedy rest
MLP_FAMILIES = ("gate_proj", "up_proj", "down_proj")
NULL_KIND = "spectrum-preserving: alignment against L+1 with its residual side sign-permuted"
PERMUTATION_TEST_EXACT_MAX = 20000  # exact label enumeration up to this many splits
PERMUTATION_TEST_DRAWS = 19999      # Monte Carlo label permutations above it


def gauge_of(family: str) -> str:
    """The alignment a family's primary ``aligned_cos`` uses: permutation (MLP) or orthogonal."""
    return "permutation" if family in MLP_FAMILIES else "orthogonal"


# -- pure maths on arrays ---------------------------------------------------------------------
def internal_major(weight, family: str) -> np.ndarray:
    """The weight with its layer-internal side as rows (``n × m``, m = residual side), float64."""
    a = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight, dtype=np.float64)
    return a.T if INTERNAL_SIDE[family] == "cols" else a


def compact_factor(a: np.ndarray) -> np.ndarray:
    """A ``min(n, m) × m`` matrix C with Cᵀ C = Aᵀ A: the R of a thin QR when n > m, else A.

    A = Q C with Q having orthonormal columns, so ‖A M Bᵀ‖_* = ‖C_A M C_Bᵀ‖_* for any M.
    """
    n, m = a.shape
    return np.linalg.qr(a, mode="r") if n > m else a


def nuclear_norms(m: np.ndarray) -> np.ndarray:
    """Nuclear norm (sum of singular values) of each matrix in a ``[..., p, q]`` stack.

    Via the eigenvalues of the smaller Gram (Mᵀ M or M Mᵀ) in float64: eigvalsh of a symmetric
    matrix is about twice as fast as an SVD, and the absolute error per singular value is
    ≲ √(p·eps)·σ_max, far below the cosine resolution used here.
    """
    m = np.asarray(m, dtype=np.float64)
    g = m.swapaxes(-1, -2) @ m if m.shape[-1] <= m.shape[-2] else m @ m.swapaxes(-1, -2)
    ev = np.linalg.eigvalsh(g)
    return np.sqrt(np.clip(ev, 0.0, None)).sum(axis=-1)


def orthogonal_aligned_cos(a: np.ndarray, b: np.ndarray) -> float:
    """max over R ∈ O(n) of cos(R A, B) = ‖C_B C_Aᵀ‖_*/(‖A‖‖B‖) for internal-major A, B."""
    ca, cb = compact_factor(np.asarray(a, float)), compact_factor(np.asarray(b, float))
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(nuclear_norms(cb @ ca.T) / den) if den > 0 else float("nan")


def signed_permutations(m: int, draws: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` random signed permutations of ``m`` residual coordinates: (perms, signs)."""
    perms = np.stack([rng.permutation(m) for _ in range(draws)]) if draws else np.zeros((0, m), int)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(draws, m))
    return perms, signs


def scramble_residual(x: np.ndarray, perm: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """x S: columns (residual side) of an internal-major matrix permuted and sign-flipped."""
    return x[..., perm] * sign


def nuclear_norms_fast(m: np.ndarray) -> np.ndarray:
    """:func:`nuclear_norms` in float32 (Gram by BLAS, eigenvalues by LAPACK ``ssyevr``): about
    2× faster; relative error ≲ 1e-5 (checked against float64 in the tests), three orders of
    magnitude below the null's per-pair sd."""
    m = np.asarray(m, dtype=np.float32)
    g = m.swapaxes(-1, -2) @ m if m.shape[-1] <= m.shape[-2] else m @ m.swapaxes(-1, -2)
    flat = g.reshape(-1, *g.shape[-2:])
    ev = np.stack([scipy.linalg.eigh(x, eigvals_only=True, driver="evr", check_finite=False)
                   for x in flat]).astype(np.float64)
    return np.sqrt(np.clip(ev, 0.0, None)).sum(axis=-1).reshape(g.shape[:-2])


def orthogonal_alignment(ca: np.ndarray, cb: np.ndarray, norm_a: float, norm_b: float,
                         perms: np.ndarray, signs: np.ndarray) -> tuple[float, np.ndarray]:
    """Observed aligned cos of compact factors C_A, C_B and its null draws (C_B S per draw).

    Uses ‖C_B S C_Aᵀ‖_* = ‖C_A (C_B S)ᵀ‖_* with (C_B S)ᵀ a row gather of C_Bᵀ (one batched
    fancy index and one batched matmul for all draws), in float32 (:func:`nuclear_norms_fast`).
    """
    ca32 = np.asarray(ca, dtype=np.float32)
    cbt = np.ascontiguousarray(cb.T, dtype=np.float32)             # m × kb
    stack = np.concatenate([cbt[None], cbt[perms] * signs[..., None].astype(np.float32)])
    nn = nuclear_norms_fast(ca32 @ stack) / (norm_a * norm_b)
    return float(nn[0]), nn[1:]


def neuron_matrix(mlp: Mapping[str, np.ndarray]) -> np.ndarray:
    """ff × 3·hidden: internal-major gate, up, downᵀ, each scaled to unit Frobenius norm."""
    return np.concatenate([mlp[f] / np.linalg.norm(mlp[f]) for f in MLP_FAMILIES], axis=1)


def assign_exact(sim: np.ndarray) -> np.ndarray:
    """π (neuron i of L ↦ π[i] of L') maximising Σ_i sim[i, π(i)]: linear_sum_assignment."""
    rows, cols = linear_sum_assignment(sim, maximize=True)
    perm = np.empty(sim.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def assign_approx(za: np.ndarray, zb: np.ndarray, weight_a: np.ndarray,
                  weight_b: np.ndarray, block: int = 1024) -> np.ndarray:
    """Approximate assignment for ff > EXACT_ASSIGNMENT_MAX on neuron sketches ``za``, ``zb``
    (ff × d, similarities ⟨za[i], zb[j]⟩): exact ``linear_sum_assignment`` among the APPROX_CORE
    neurons of largest norm in each layer, then every other neuron of L, largest norm first,
    takes its most similar unused neuron of L' (similarities computed ``block`` rows at a time,
    so memory stays O(block · ff))."""
    n = za.shape[0]
    core_a = np.sort(np.argsort(-weight_a, kind="stable")[:APPROX_CORE])
    core_b = np.sort(np.argsort(-weight_b, kind="stable")[:APPROX_CORE])
    perm = np.full(n, -1, dtype=np.int64)
    sub = assign_exact(za[core_a] @ zb[core_b].T)
    perm[core_a] = core_b[sub]
    free = np.ones(n, dtype=bool)
    free[perm[core_a]] = False
    rest = [i for i in np.argsort(-weight_a, kind="stable") if perm[i] < 0]
    for k in range(0, len(rest), block):
        rows = np.asarray(rest[k:k + block])
        sims = za[rows] @ zb.T
        for r, i in enumerate(rows):
            j = int(np.argmax(np.where(free, sims[r], -np.inf)))
            perm[i] = j
            free[j] = False
    return perm


def match_neurons(sim: np.ndarray, weight_a: np.ndarray | None = None,
                  weight_b: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """The neuron permutation maximising Σ_i sim[i, π(i)] for a given similarity matrix:
    exact up to EXACT_ASSIGNMENT_MAX neurons, else :func:`assign_approx` on its rows/columns."""
    n = sim.shape[0]
    if n <= EXACT_ASSIGNMENT_MAX:
        return assign_exact(sim), "exact"
    wa = np.ones(n) if weight_a is None else weight_a
    wb = np.ones(n) if weight_b is None else weight_b
    return assign_approx(sim, np.eye(n, dtype=sim.dtype), wa, wb), f"approx:topnorm{APPROX_CORE}+greedy"


RP_DIM = 256  # sketch width of the approximate matching (seeded Gaussian projection)


def permutation_jobs(mlp_a: Mapping[str, np.ndarray], mlp_b: Mapping[str, np.ndarray],
                     perms: np.ndarray, signs: np.ndarray, seed: int = 0):
    """The work of :func:`permutation_alignment` as independent jobs (observed pair first, then
    one per null draw) and the function that assembles their results.

    Everything is float32 (the similarity only ranks candidate matches; cosines are summed in
    float64) and formed per family, never as one ff × 3·hidden matrix. Above
    EXACT_ASSIGNMENT_MAX neurons the matching runs on a seeded Gaussian sketch of the neuron
    vectors (RP_DIM dims, inner products preserved in expectation) with :func:`assign_approx`;
    the cosines are still exact under the matching found. A null draw scrambles L' by S;
    for the sketch, (F S) P = F (S P), so only the small projection is scrambled.
    """
    fa = {f: (mlp_a[f] / np.linalg.norm(mlp_a[f])).astype(np.float32) for f in MLP_FAMILIES}
    fb = {f: (mlp_b[f] / np.linalg.norm(mlp_b[f])).astype(np.float32) for f in MLP_FAMILIES}
    n, h = fa["gate_proj"].shape
    wa = np.sqrt(sum(np.einsum("ij,ij->i", x, x, dtype=np.float64) for x in fa.values()))
    wb = np.sqrt(sum(np.einsum("ij,ij->i", x, x, dtype=np.float64) for x in fb.values()))
    exact = n <= EXACT_ASSIGNMENT_MAX
    method = "exact" if exact else f"approx:rp{RP_DIM}+topnorm{APPROX_CORE}+greedy"
    if not exact:
        rng = np.random.default_rng([seed, n, h])
        proj = {f: (rng.standard_normal((h, RP_DIM)) / math.sqrt(RP_DIM)).astype(np.float32)
                for f in MLP_FAMILIES}
        za = sum(fa[f] @ proj[f] for f in MLP_FAMILIES)
    scrambles = [None] + list(zip(perms, signs))

    def scrambled(f, scr):
        return fb[f] if scr is None else scramble_residual(fb[f], scr[0], scr[1].astype(np.float32))

    def job(scr):
        if exact:
            sim = np.zeros((n, n), dtype=np.float32)
            for f in MLP_FAMILIES:
                sim += fa[f] @ scrambled(f, scr).T
            perm = assign_exact(sim)
            del sim
        else:
            zb = 0
            for f in MLP_FAMILIES:
                sp = proj[f] if scr is None else np.zeros_like(proj[f])
                if scr is not None:  # rows of S P: (S P)[p[j]] = s[j] P[j]
                    sp[scr[0]] = scr[1][:, None].astype(np.float32) * proj[f]
                zb = zb + fb[f] @ sp
            perm = assign_approx(za, zb, wa, wb)
        return np.array([np.einsum("ij,ij->", fa[f], scrambled(f, scr)[perm], dtype=np.float64)
                         for f in MLP_FAMILIES])

    def finish(got):
        cos = np.stack(got)  # [1 + draws, families]
        return ({f: float(cos[0, i]) for i, f in enumerate(MLP_FAMILIES)},
                {f: cos[1:, i] for i, f in enumerate(MLP_FAMILIES)}, method)

    return [functools.partial(job, scr) for scr in scrambles], finish


def permutation_alignment(mlp_a: Mapping[str, np.ndarray], mlp_b: Mapping[str, np.ndarray],
                          perms: np.ndarray, signs: np.ndarray, seed: int = 0):
    """Shared-permutation alignment of two MLPs (internal-major gate, up, downᵀ) and its null.

    Null draw d scrambles the residual side of all three families of L' with the same signed
    permutation (perms[d], signs[d]). Returns (observed {family: cos}, null {family: [draws]},
    method of the assignment: "exact" or "approx:...").
    """
    jobs, finish = permutation_jobs(mlp_a, mlp_b, perms, signs, seed)
    return finish([j() for j in jobs])


class _Serial:
    """Stand-in for a thread pool when one thread is asked for."""

    def map(self, fn, items):
        return map(fn, items)


def default_threads() -> int:
    """Threads for the probe: OMP_NUM_THREADS when set, else the cores this process may use.

    LAPACK (eigvalsh, QR), BLAS and ``linear_sum_assignment`` all release the GIL, so a thread
    pool runs the per-family alignments and the per-draw assignments side by side."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# -- the probe -----------------------------------------------------------------------------
def _prepare(weights: Mapping[str, object], pool) -> dict[str, dict]:
    """Per family: internal-major matrix, its norm and compact factor (NaN norm if unusable)."""
    def one(item):
        fam, w = item
        a = internal_major(w, fam)
        norm = float(np.linalg.norm(a))
        ok = math.isfinite(norm) and norm > 0
        # held in float32 (two layers at a time); the QR is done in float64
        return fam, {"a": a.astype(np.float32), "norm": norm if ok else float("nan"),
                     "c": compact_factor(a).astype(np.float32) if ok else None}
    return dict(pool.map(one, list(weights.items())))


def _usable(*prepared) -> bool:
    return all(math.isfinite(x["norm"]) for x in prepared)


def compute_from_layers(layers: Iterable[Mapping[str, object]], draws: int = NULL_DRAWS,
                        seed: int = 0, families: Iterable[str] | None = None,
                        perm_draws: int = PERM_NULL_DRAWS, threads: int | None = None) -> dict:
    """The probe on a stream of layers (each ``{family: [out, in] weight}``, in depth order).

    Holds two prepared layers at a time. Returns a dict of numpy arrays (cacheable): ``pairs``
    (first layer of each adjacent pair) and per family ``<fam>.raw_cos``, ``<fam>.orth_aligned``,
    ``<fam>.orth_null`` ([pairs, draws]); for MLP families ``<fam>.perm_aligned`` and
    ``<fam>.perm_null`` ([pairs, perm_draws], the first ``perm_draws`` of the same signed
    permutations); plus ``families``, ``draws``, ``perm_draws``, ``seed`` and ``assignment``.
    Results do not depend on ``threads`` (default :func:`default_threads`).
    """
    perm_draws = min(perm_draws, draws)
    threads = default_threads() if threads is None else max(1, int(threads))
    fams = [f for f in (families or PROJECTIONS) if f in INTERNAL_SIDE]
    rows: dict[str, dict[str, list]] = {}
    pairs: list[int] = []
    methods: set[str] = set()
    prev = None
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        mapper = pool or _Serial()
        for layer, weights in enumerate(layers):
            cur = _prepare({f: weights[f] for f in fams if weights.get(f) is not None}, mapper)
            if prev is not None:
                pairs.append(layer - 1)
                methods |= _pair(prev, cur, layer - 1, fams, rows, draws, perm_draws, seed, pool)
            prev = cur
    finally:
        if pool is not None:
            pool.shutdown()
    out: dict = {"pairs": np.asarray(pairs, dtype=np.int64), "draws": int(draws),
                 "perm_draws": int(perm_draws), "seed": int(seed)}
    present_fams = []
    for f in fams:
        if f not in rows or len(rows[f]["raw_cos"]) != len(pairs):
            continue  # a family absent from some layer is N/A for this model
        present_fams.append(f)
        for k, v in rows[f].items():
            arr = np.asarray(v, dtype=np.float64)
            width = perm_draws if k == "perm_null" else draws
            out[f"{f}.{k}"] = arr.reshape(len(pairs), width) if k.endswith("null") else arr
    out["families"] = present_fams
    out["assignment"] = "exact" if methods <= {"exact"} else sorted(methods - {"exact"})[0]
    return out


def _pair(prev, cur, L, fams, rows, draws, perm_draws, seed, pool) -> set[str]:
    """Fill ``rows`` with the pair (L, L+1): raw, orthogonal and permutation alignments."""
    present = [f for f in fams if f in prev and f in cur]
    hidden = {prev[f]["a"].shape[1] for f in present}
    if len(hidden) > 1:
        raise ValueError(f"families disagree on the residual width: {sorted(hidden)}")
    m = hidden.pop() if hidden else 0
    perms, signs = signed_permutations(m, draws, np.random.default_rng([seed, L]))
    mlp = all(f in present for f in MLP_FAMILIES)
    mlp_ok = mlp and _usable(*(prev[f] for f in MLP_FAMILIES), *(cur[f] for f in MLP_FAMILIES))

    def orth(f):
        a, b = prev[f], cur[f]
        if not _usable(a, b):
            return np.nan, np.nan, np.full(draws, np.nan)
        raw = float(np.einsum("ij,ij->", a["a"], b["a"], dtype=np.float64) / (a["norm"] * b["norm"]))
        return (raw, *orthogonal_alignment(a["c"], b["c"], a["norm"], b["norm"], perms, signs))

    # one flat list of independent jobs (the assignments, the longest, first)
    perm_jobs, finish = (permutation_jobs({f: prev[f]["a"] for f in MLP_FAMILIES},
                                          {f: cur[f]["a"] for f in MLP_FAMILIES},
                                          perms[:perm_draws], signs[:perm_draws], seed)
                         if mlp_ok else ([], None))
    jobs = perm_jobs + [functools.partial(orth, f) for f in present]
    got = list((pool or _Serial()).map(lambda job: job(), jobs))
    for f, (raw, obs, null) in zip(present, got[len(perm_jobs):]):
        r = rows.setdefault(f, {"raw_cos": [], "orth_aligned": [], "orth_null": []})
        r["raw_cos"].append(raw)
        r["orth_aligned"].append(obs)
        r["orth_null"].append(null)
    methods: set[str] = set()
    if mlp:
        if mlp_ok:
            obs, null, method = finish(got[:len(perm_jobs)])
            methods.add(method)
        for f in MLP_FAMILIES:
            r = rows[f]
            r.setdefault("perm_aligned", []).append(obs[f] if mlp_ok else np.nan)
            r.setdefault("perm_null", []).append(null[f] if mlp_ok else np.full(perm_draws, np.nan))
    return methods


def compute(model, draws: int = NULL_DRAWS, seed: int = 0, perm_draws: int = PERM_NULL_DRAWS,
            threads: int | None = None) -> dict:
    """Gauge alignment of every adjacent pair of ``model`` (a ``probes.models.base.Model``).

    Streams the projection families layer by layer (``model.iter_layers``): at most layers
    L and L+1 are held. See the module docstring for the maths, invariances and null.
    """
    fams = [f for f in PROJECTIONS if f in model.families]
    return compute_from_layers((w for _, w in model.iter_layers(fams)), draws=draws, seed=seed,
                               families=fams, perm_draws=perm_draws, threads=threads)


# -- reading a result ------------------------------------------------------------------------
def has_family(result: Mapping, family: str) -> bool:
    return family in list(result.get("families", []))


def family_fields(result: Mapping, family: str) -> dict[str, np.ndarray]:
    """Per-pair arrays for one family: raw_cos, aligned_cos, null_aligned_mean/sd, excess, delta
    (primary alignment: permutation for MLP families, else orthogonal), plus orth_* versions."""
    if not has_family(result, family):
        raise NotApplicable(f"model has no {family}")
    kind = gauge_of(family)
    key = "perm" if kind == "permutation" and f"{family}.perm_aligned" in result else "orth"
    raw = np.asarray(result[f"{family}.raw_cos"], float)
    out = {"pairs": np.asarray(result["pairs"], int), "raw_cos": raw}
    for prefix, k in (("", key), ("orth_", "orth")):
        aligned = np.asarray(result[f"{family}.{k}_aligned"], float)
        null = np.asarray(result[f"{family}.{k}_null"], float)
        mean = null.mean(axis=1)
        sd = null.std(axis=1, ddof=1) if null.shape[1] > 1 else np.zeros(len(mean))
        out.update({f"{prefix}aligned_cos": aligned, f"{prefix}null_aligned_mean": mean,
                    f"{prefix}null_aligned_sd": sd, f"{prefix}excess": aligned - mean,
                    f"{prefix}delta": aligned - raw})
        if not prefix:
            null_draws = null.shape[1]
    out["gauge"] = "permutation" if key == "perm" else "orthogonal"
    out["null_draws"] = null_draws
    return out


def pair_table(result: Mapping, family: str, phases: Mapping | None = None) -> pd.DataFrame:
    """One row per adjacent pair of ``family`` (index: first layer L), every field above."""
    ff = family_fields(result, family)
    gauge = ff.pop("gauge")
    ff.pop("null_draws")
    df = pd.DataFrame({k: v for k, v in ff.items() if k != "pairs"},
                      index=pd.Index(ff["pairs"], name="L"))
    df.insert(0, "gauge", gauge)
    if phases is not None:
        of = {layer: name for name, layers in phases.items() for layer in layers}
        df.insert(0, "phase", [of.get(L) if of.get(L) == of.get(L + 1) else f"{of.get(L)}|{of.get(L + 1)}"
                               for L in df.index])
    return df


def phase_table(result: Mapping, phases: Mapping, field: str = "delta") -> pd.DataFrame:
    """Per-phase mean of ``field`` by family over the phase's adjacent pairs (rows: phases,
    columns: families). ``field="delta"`` is the notebook's table (aligned − raw)."""
    data = {}
    for fam in result.get("families", []):
        ff = family_fields(result, fam)
        idx = {int(L): i for i, L in enumerate(ff["pairs"])}
        col = {}
        for ph in phases:
            sel = [idx[L] for L in adjacent_pairs(phases, ph) if L in idx]
            col[ph] = float(np.mean(ff[field][sel])) if sel else float("nan")
        data[fam] = col
    return pd.DataFrame(data, index=pd.Index(list(phases), name="phase"))


def phase_delta_table(result: Mapping, phases: Mapping) -> pd.DataFrame:
    """The notebook's per-phase mean delta (aligned − raw) table by family."""
    return phase_table(result, phases, "delta")


def profile(result: Mapping, family: str) -> Profile:
    """aligned_cos per pair across depth, with the null-aligned mean as its null."""
    ff = family_fields(result, family)
    return Profile(layers=[int(x) for x in ff["pairs"]], values=ff["aligned_cos"].tolist(),
                   null=ff["null_aligned_mean"].tolist(),
                   label=f"{family} {ff['gauge']}-aligned cos of (L, L+1); null: "
                         f"residual side sign-permuted (raw cos in extra)")


def _phase_pairs(ff: Mapping, phases: Mapping, phase: str) -> np.ndarray:
    idx = {int(L): i for i, L in enumerate(ff["pairs"])}
    return np.asarray([idx[L] for L in adjacent_pairs(phases, phase) if L in idx], dtype=int)


def _finite(ff: Mapping, sel: np.ndarray, family: str) -> None:
    for k in ("raw_cos", "aligned_cos", "null_aligned_mean"):
        if not np.all(np.isfinite(ff[k][sel])):
            raise NotApplicable(f"{family}: NaN/Inf or zero-norm weights in the pairs used")


# -- statistics for the claims ----------------------------------------------------------------
def label_permutation_null(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Null of mean(x[first group]) − mean(x[rest]) over relabellings of the pooled values,
    the first group of size ``k``: every split when C(n, k) ≤ PERMUTATION_TEST_EXACT_MAX
    (returns exact=True; the observed split is among them), else PERMUTATION_TEST_DRAWS seeded
    random splits."""
    x = np.asarray(x, float)
    n = x.size
    total = x.sum()
    if math.comb(n, k) <= PERMUTATION_TEST_EXACT_MAX:
        combos = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), k)),
                             dtype=np.int64).reshape(-1, k)
        exact = True
    else:
        rng = np.random.default_rng([seed, n, k])
        combos = np.argsort(rng.random((PERMUTATION_TEST_DRAWS, n)), axis=1)[:, :k]
        exact = False
    s = x[combos].sum(axis=1)
    return s / k - (total - s) / (n - k), exact


def permutation_test(x_first: np.ndarray, x_second: np.ndarray, seed: int = 0) -> dict:
    """Difference of means first − second and its label-permutation null (one-sided, greater)."""
    x_first, x_second = np.asarray(x_first, float), np.asarray(x_second, float)
    observed = float(x_first.mean() - x_second.mean())
    null, exact = label_permutation_null(np.concatenate([x_first, x_second]), x_first.size, seed)
    tol = 1e-12 * max(1.0, float(np.max(np.abs(null))))
    ge = int(np.sum(null >= observed - tol))
    p = ge / null.size if exact else (1 + int(np.sum(null >= observed))) / (null.size + 1)
    return {"observed": observed, "null": null, "p": float(p), "exact": exact}


def e_exceeds_c(result: Mapping, phases: Mapping, family: str, seed: int = 0,
                first: str = "E", second: str = "C") -> Evidence:
    """``aligned-delta-E-exceeds-C``: mean excess (aligned − null-aligned) over E's adjacent pairs
    minus that over C's, against the permutation null of the pair labels of E ∪ C (exact when
    C(n, k) ≤ 20000). The same test of the raw delta (aligned − raw) is in ``extra``."""
    ff = family_fields(result, family)
    for ph in (first, second):
        if ph not in phases:
            raise NotApplicable(f"model has no phase {ph}")
    e, c = _phase_pairs(ff, phases, first), _phase_pairs(ff, phases, second)
    if e.size < 1 or c.size < 1 or e.size + c.size < 3:
        raise NotApplicable(f"phases {first}/{second} have {e.size}/{c.size} adjacent pairs; "
                            f"the label permutation test needs ≥ 1 each and ≥ 3 in all")
    both = np.concatenate([e, c])
    _finite(ff, both, family)
    t = permutation_test(ff["excess"][e], ff["excess"][c], seed)
    td = permutation_test(ff["delta"][e], ff["delta"][c], seed)
    null = t["null"]
    mu, sd = float(null.mean()), float(null.std(ddof=1))
    eff = t["observed"] - mu
    return Evidence(
        observed=t["observed"], null_kind=f"label permutation of {first} ∪ {second} pairs "
        f"({'exact' if t['exact'] else 'Monte Carlo'}, {null.size} splits)",
        null_mean=mu, null_sd=sd, effect=eff, ci=(eff - stats.Z95 * sd, eff + stats.Z95 * sd),
        p=t["p"], profile=profile(result, family),
        extra={"gauge": ff["gauge"], "pairs_" + first: e.size, "pairs_" + second: c.size,
               f"mean_excess_{first}": float(ff["excess"][e].mean()),
               f"mean_excess_{second}": float(ff["excess"][c].mean()),
               "raw_delta_diff": td["observed"], "raw_delta_p": td["p"],
               f"mean_delta_{first}": float(ff["delta"][e].mean()),
               f"mean_delta_{second}": float(ff["delta"][c].mean()),
               "raw_cos": ff["raw_cos"].tolist(), "excess": ff["excess"].tolist(),
               "null_aligned_sd": ff["null_aligned_sd"].tolist(),
               "null_draws": ff["null_draws"], "assignment": result.get("assignment", "exact")})


def excess_equivalence(result: Mapping, phases: Mapping, phase: str, family: str,
                       margin: float) -> Evidence:
    """``gauge-delta-null``: is the mean excess over ``phase``'s adjacent pairs within ±margin?

    observed = mean aligned cos, null mean = mean null-aligned cos, effect = their difference
    (the mean excess). Its standard error is the larger of the between-pair spread and the
    null's own spread (a single pair's excess has sd ≈ null sd·√(1 + 1/draws) when there is no
    structure): se = √(max(s², v_null)/n), t with n − 1 df when n ≥ 3, normal otherwise.
    p is the TOST p-value against ±margin; the interval is the matching 90 % interval.
    """
    ff = family_fields(result, family)
    sel = _phase_pairs(ff, phases, phase)
    if sel.size == 0:
        raise NotApplicable(f"phase {phase} has no adjacent pair")
    _finite(ff, sel, family)
    n = sel.size
    draws = ff["null_draws"]
    ex = ff["excess"][sel]
    v_null = float(np.mean(ff["null_aligned_sd"][sel] ** 2)) * (1 + 1 / max(draws, 1))
    s2 = float(ex.var(ddof=1)) if n > 1 else 0.0
    se = math.sqrt(max(s2, v_null) / n)
    df = n - 1 if n >= 3 else None
    effect = float(ex.mean())
    q = float(sps.t.ppf(0.95, df)) if df else float(sps.norm.ppf(0.95))
    p = stats.tost_p(effect, se, margin, df)
    return Evidence(
        observed=float(ff["aligned_cos"][sel].mean()), null_kind=NULL_KIND,
        null_mean=float(ff["null_aligned_mean"][sel].mean()),
        null_sd=float(np.mean(ff["null_aligned_sd"][sel])), effect=effect,
        ci=(effect - q * se, effect + q * se), p=p, profile=profile(result, family),
        extra={"gauge": ff["gauge"], "pairs": n, "se": se, "df": df, "margin": margin,
               "mean_raw_cos": float(ff["raw_cos"][sel].mean()),
               "mean_delta": float(ff["delta"][sel].mean()),
               "raw_cos": ff["raw_cos"].tolist(), "excess": ff["excess"].tolist(),
               "null_draws": draws, "assignment": result.get("assignment", "exact")})
