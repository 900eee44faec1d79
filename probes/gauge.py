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

computed without forming the n × n product when n > m: with factors A = Q_A C_A (any C with Cᵀ C = Aᵀ A: a thin QR, or the Cholesky factor of the Gram the probe uses),
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
by gate rows, up rows and down columns — by up rows and down columns alone where the MLP has no
gate (GPT-2, GPT-NeoX, Phi-2, StarCoder2: down(act(up x))). With each family's internal-major
matrix scaled to unit Frobenius norm and the two or three concatenated along the residual side
(``X``: ff × 3·hidden, or ff × 2·hidden), the assignment π maximising Σ_i ⟨X_L[i], X_L'[π(i)]⟩ —
i.e. the sum of the permuted cosines —
is found by ``probes.assignment`` on the ff × ff similarity X_L X_L'ᵀ: exact
(``linear_sum_assignment``) up to ``EXACT_ASSIGNMENT_MAX`` = 4096 neurons, above it the stated
approximation ``approx:knn32+sparse-lsa`` (a sparse nearest-neighbour candidate graph matched
exactly; its gap to the exact solver is measured there, and recorded per pair as
``assignment_gap``). ``perm_aligned_cos`` per family is that family's cosine under the shared
π. (The joint sign flip / rescaling of an up row and its down column is also exact and is not
aligned over.) Above ``EXACT_ASSIGNMENT_MAX`` neurons the MLP families' orthogonal O(ff)
alignment (not a symmetry of the MLP, and the costliest of the orthogonal ones) is not
computed: their orth_* fields are NaN.

Router (mixtures of experts). Its rows score the experts, so a relabelling of a layer's experts
permutes them: the router is aligned like q/k/v, orthogonally over its rows (O(experts), a
superset of the expert permutations). The expert MLPs themselves are not aligned: experts are
unordered across layers and no expert matching is implemented (their records are N/A with that
reason: ``probes.models.base.UNORDERED_FAMILIES``).

Null (spectrum preserving). The same alignment of layer L against layer L' whose residual side
is scrambled by a random signed permutation S (random permutation × random ±1): B → B S. This
keeps every singular value (and the column-norm multiset) of B, so it keeps everything an
alignment of *unrelated* matrices with those spectra can reach, and destroys the
correspondence between L and L' through the residual basis they share. One S per draw is
applied to all families of L' (a functionally equivalent layer in a scrambled residual basis),
seeded by (seed, first layer). A null draw reuses both layers' factors: (C_B S)ᵀ is a row
gather of C_Bᵀ. Draws per pair and family: ``MIN_NULL_DRAWS`` = 2, then one more at a time while
the null mean's standard error sd/√d exceeds ``NULL_SE_TARGET`` = 0.001 (20× below the claims'
0.02 margins), up to ``NULL_DRAWS`` = 8 (orthogonal) / ``PERM_NULL_DRAWS`` = 4 (permutation);
unused draws are NaN. Measured null sds: ≈ 1e-4 on Qwen3-4B shapes (two draws suffice),
0.001–0.003 on SmolLM2, ≈ 0.01 on 64-wide synthetic models (they reach the cap). On matrices
with i.i.d. entries (random init) the observed alignment and the null have the same
distribution, so excess ≈ 0.

Fields per family and adjacent pair (L, L+1): raw_cos; aligned_cos (primary alignment: the
permutation for MLP families, orthogonal otherwise); null_aligned_mean / null_aligned_sd over
the draws made; excess = aligned − null mean; delta = aligned − raw. MLP families also carry
the orthogonal versions (orth_*).

Precision. Factors: the float32 Gram AᵀA (one GEMM; a float64 QR is ≈ 30× slower on a CPU),
then C = Lᵀ from its float64 Cholesky (eigendecomposition if singular). Nuclear norms: float32
products, eigenvalues of the float32 Gram. Measured against float64: ≤ 2.5e-5 relative on
spectra spanning three decades, tested at ≤ 1e-4 — 200× below the margins, and shared by the
observed value and its null. The MLP similarity only ranks candidate neurons (bf16 on a bf16
checkpoint when the hardware multiplies bf16 faster: ``probes.assignment``); every reported
cosine is float32 products summed in float64.

Execution. Layers are streamed: at most layers L and L+1 are held (float32 internal-major
copies, factors, bf16 neuron vectors). Independent jobs run on a thread pool (torch, LAPACK and
the assignment solvers release the GIL); results do not depend on the thread count. Everything
but the assignment solvers runs on ``device`` (CUDA included). The cost model
(``probes.gauge_cost``) estimates the run time from these operation counts and is printed
before the probe starts.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from . import assignment, stats
from .errors import NotApplicable
from .evidence import Evidence, Profile, require
from .models.base import GAUGE_FAMILIES, INTERNAL_SIDE, UNORDERED_FAMILIES
from .phases import adjacent_pairs
from .small_lapack import available_cores

PROBE_ID = "gauge"
VERSION = "4"

NULL_DRAWS = 8                  # most signed-permutation draws per pair (orthogonal null)
PERM_NULL_DRAWS = 4             # most for the permutation null (each costs an ff × ff matching)
MIN_NULL_DRAWS = 2              # fewest: two give the per-pair null sd
NULL_SE_TARGET = 0.001          # draws are added until the null mean's se sd/√d ≤ this
MLP_FAMILIES = ("gate_proj", "up_proj", "down_proj")
NULL_KIND = "spectrum-preserving: alignment against L+1 with its residual side sign-permuted"


def mlp_families(present) -> list[str]:
    """The MLP families the neuron permutation is shared by: gate, up and down, or up and down
    where the MLP has no gate; none without both up and down."""
    fams = [f for f in MLP_FAMILIES if f in present]
    return fams if "up_proj" in fams and "down_proj" in fams else []


def gauge_of(family: str) -> str:
    """The alignment a family's primary ``aligned_cos`` uses: permutation (MLP) or orthogonal."""
    return "permutation" if family in MLP_FAMILIES else "orthogonal"


# -- pure maths on arrays (float64 references) --------------------------------------------------
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
    """Nuclear norm (sum of singular values) of each matrix in a ``[..., p, q]`` stack, float64
    (eigenvalues of the smaller Gram; the reference the fast paths are tested against)."""
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


def scramble_residual(x, perm, sign):
    """x S: columns (residual side) of an internal-major matrix permuted and sign-flipped."""
    return x[..., perm] * sign


# -- the fast paths (torch, any device) --------------------------------------------------------
def _t(x, device=None, dtype=torch.float32) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def gram_factor(a: torch.Tensor) -> torch.Tensor:
    """A ``min(n, m) × m`` factor C with Cᵀ C = Aᵀ A, float32, on A's device.

    n ≤ m: C = A. n > m: the float32 Gram G = Aᵀ A (one GEMM, n·m² multiply-adds, where the
    float64 QR of :func:`compact_factor` is ≈ 30× slower on a CPU), then C = Lᵀ from the float64
    Cholesky G = L Lᵀ; a singular G (rank-deficient A) falls back to C = Λ^½ Vᵀ from its
    eigendecomposition, negative rounding eigenvalues clipped. Any C with Cᵀ C = Aᵀ A gives the
    same ‖C_B M C_Aᵀ‖_* (A = U C with U a partial isometry), so the alignment is unchanged up to
    the float32 Gram's rounding (relative error ≲ 1e-5 on the cosines, tested against float64).
    """
    n, m = a.shape
    if n <= m:
        return a
    g = (a.T @ a).double()
    l, info = torch.linalg.cholesky_ex(g)
    if int(info) == 0:
        return l.T.contiguous().float()
    ev, vec = torch.linalg.eigh(g)
    return (vec * ev.clamp_min(0).sqrt()).T.contiguous().float()


def nuclear_norms_fast(m) -> np.ndarray:
    """:func:`nuclear_norms` in float32 on the input's device (torch): the smaller Gram by one
    batched GEMM, its eigenvalues by ``torch.linalg.eigvalsh``, √ summed in float64. Relative
    error ≲ 1e-5 against float64 (tested), three orders of magnitude below the null's sd."""
    m = _t(m, dtype=torch.float32)
    mt = m.transpose(-1, -2)
    g = mt @ m if m.shape[-1] <= m.shape[-2] else m @ mt
    ev = torch.linalg.eigvalsh(g).double()
    return ev.clamp_min(0).sqrt().sum(-1).cpu().numpy()


def orth_nuclear(ca: torch.Tensor, cbt: torch.Tensor, perm=None, sign=None) -> float:
    """‖C_A (C_B S)ᵀ‖_* with C_Bᵀ given (``m × kb``): (C_B S)ᵀ is a row gather and sign flip of
    C_Bᵀ, so a null draw reuses both layers' factors and costs one product and one eigensolve."""
    if perm is not None:
        cbt = cbt[torch.as_tensor(perm, device=cbt.device)] * torch.as_tensor(
            sign, dtype=cbt.dtype, device=cbt.device)[:, None]
    return float(nuclear_norms_fast(ca @ cbt))


def orthogonal_alignment(ca, cb, norm_a: float, norm_b: float, perms: np.ndarray,
                         signs: np.ndarray) -> tuple[float, np.ndarray]:
    """Observed aligned cos of compact factors C_A, C_B and its null draws (C_B S per draw),
    float32 (:func:`orth_nuclear`)."""
    ca = _t(ca)
    cbt = _t(cb).T.contiguous()
    den = norm_a * norm_b
    obs = orth_nuclear(ca, cbt) / den
    return obs, np.array([orth_nuclear(ca, cbt, p, s) / den for p, s in zip(perms, signs)])


def neuron_matrix(mlp: Mapping[str, np.ndarray]) -> np.ndarray:
    """ff × k·hidden: internal-major gate (if any), up, downᵀ, each scaled to unit Frobenius norm."""
    return np.concatenate([mlp[f] / np.linalg.norm(mlp[f]) for f in mlp_families(mlp)], axis=1)


def _neurons(mlp: Mapping[str, torch.Tensor], norms: Mapping[str, float], dtype) -> torch.Tensor:
    """ff × k·hidden neuron vectors (gate, up, downᵀ rows, each family / its Frobenius norm)."""
    return torch.cat([mlp[f] / norms[f] for f in mlp_families(mlp)], dim=1).to(dtype).contiguous()


def _scramble_neurons(x: torch.Tensor, perm: np.ndarray, sign: np.ndarray) -> torch.Tensor:
    """The neuron vectors of L' with the same signed permutation S on each family's residual side."""
    h = len(perm)
    k = x.shape[1] // h
    idx = torch.as_tensor(np.concatenate([perm + i * h for i in range(k)]), device=x.device)
    s = torch.as_tensor(np.tile(sign, k), dtype=x.dtype, device=x.device)
    return x[:, idx] * s


def permutation_cosines(fa: Mapping[str, torch.Tensor], fb: Mapping[str, torch.Tensor],
                        perm: np.ndarray, scr=None) -> np.ndarray:
    """Per MLP family (gate if any, up, down) cos(A_f, P B_f S): float32 products summed in
    float64."""
    p = torch.as_tensor(perm, device=fb["up_proj"].device)
    out = []
    for f in mlp_families(fa):
        b = fb[f] if scr is None else scramble_residual(
            fb[f], torch.as_tensor(scr[0], device=p.device),
            torch.as_tensor(scr[1], dtype=fb[f].dtype, device=p.device))
        out.append(float((fa[f] * b[p]).sum(dtype=torch.float64)))
    return np.array(out)


def permutation_alignment(mlp_a: Mapping[str, np.ndarray], mlp_b: Mapping[str, np.ndarray],
                          perms: np.ndarray, signs: np.ndarray, seed: int = 0, device="cpu"):
    """Shared-permutation alignment of two MLPs (internal-major gate, up, downᵀ — or up and downᵀ
    of an MLP without gate) and its null.

    Null draw d scrambles the residual side of every MLP family of L' with the same signed
    permutation (perms[d], signs[d]). Returns (observed {family: cos}, null {family: [draws]},
    method of the assignment: "exact" or "approx:...").
    """
    fams = mlp_families(mlp_a)
    a = {f: _t(mlp_a[f], device) for f in fams}
    b = {f: _t(mlp_b[f], device) for f in fams}
    mp = _MLPPair(a, b, seed=seed, sim_dtype=torch.float32)
    got = [mp.draw(None)] + [mp.draw((p, s)) for p, s in zip(perms, signs)]
    cos = np.stack([g[0] for g in got])
    return ({f: float(cos[0, i]) for i, f in enumerate(fams)},
            {f: cos[1:, i] for i, f in enumerate(fams)}, got[0][1])


class _MLPPair:
    """One adjacent pair's MLPs, unit-norm per family, ready for the observed and null matchings."""

    def __init__(self, a, b, seed: int, sim_dtype, layer: int = 0):
        fams = mlp_families(a)
        self.fa = {f: a[f] / float(torch.linalg.vector_norm(a[f], dtype=torch.float64)) for f in fams}
        self.fb = {f: b[f] / float(torch.linalg.vector_norm(b[f], dtype=torch.float64)) for f in fams}
        one = {f: 1.0 for f in fams}
        self.xa = _neurons(self.fa, one, sim_dtype)
        self.xb = _neurons(self.fb, one, sim_dtype)
        self.n = self.xa.shape[0]
        self.rng = np.random.default_rng([seed, layer, 7])

    def draw(self, scr):
        """(cosines per family, method, gap) of the observed pair (scr None) or one null draw."""
        xb = self.xb if scr is None else _scramble_neurons(self.xb, scr[0], scr[1])
        perm, method = assignment.match_neurons(self.xa, xb)
        gap = 0.0
        if method != "exact" and scr is None:
            gap = assignment.subproblem_gap(self.xa, xb, perm, assignment.GAP_CHECK, self.rng)
        return permutation_cosines(self.fa, self.fb, perm, scr), method, gap


class _Serial:
    """Stand-in for a thread pool when one thread is asked for."""

    def map(self, fn, items):
        return map(fn, items)


def default_threads() -> int:
    """Threads for the probe: OMP_NUM_THREADS when set, else the cores this process may use.

    LAPACK, BLAS, torch and the assignment solvers release the GIL, so a thread pool runs
    independent alignments side by side."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()


def params(seed: int, device: str = "cpu") -> dict:
    """The cache key's parameters (everything that changes the result besides the weights)."""
    return {"draws": NULL_DRAWS, "perm_draws": PERM_NULL_DRAWS, "min_draws": MIN_NULL_DRAWS,
            "null_se": NULL_SE_TARGET, "seed": seed,
            "exact_assignment_max": assignment.EXACT_ASSIGNMENT_MAX,
            "candidates": assignment.CANDIDATES, "gap_check": assignment.GAP_CHECK,
            "similarity": "bf16" if assignment._bf16_fast(torch.device(device)) else "float32"}


# -- the probe -----------------------------------------------------------------------------
def _prepare(weights: Mapping[str, object], device, pool) -> dict[str, dict]:
    """Per family: internal-major float32 matrix on ``device``, its float64 norm and compact
    factor Cᵀ (:func:`gram_factor`; NaN norm if unusable)."""
    def one(item):
        fam, w = item
        a = _t(w, device)
        a = a.T if INTERNAL_SIDE[fam] == "cols" else a
        norm = float(torch.linalg.vector_norm(a, dtype=torch.float64))
        ok = math.isfinite(norm) and norm > 0
        return fam, {"a": a, "norm": norm if ok else float("nan"), "fam": fam}
    return dict(pool.map(one, list(weights.items())))


def _factor(x: dict) -> None:
    if "ct" not in x:
        x["c"] = gram_factor(x["a"])
        x["ct"] = x["c"].T.contiguous()


def _usable(*prepared) -> bool:
    return all(math.isfinite(x["norm"]) for x in prepared)


def _needs_more(null: np.ndarray, d: int, cap: int, target: float) -> bool:
    """Whether a null with ``d`` draws so far needs another: se = sd/√d above ``target``."""
    if d >= cap:
        return False
    if d < 2:
        return True
    vals = null[:d]
    if not np.all(np.isfinite(vals)):
        return False
    return float(np.std(vals, ddof=1)) / math.sqrt(d) > target


def compute_from_layers(layers: Iterable[Mapping[str, object]], draws: int = NULL_DRAWS,
                        seed: int = 0, families: Iterable[str] | None = None,
                        perm_draws: int = PERM_NULL_DRAWS, threads: int | None = None,
                        min_draws: int = MIN_NULL_DRAWS, null_se: float = NULL_SE_TARGET,
                        device: str = "cpu", sim_dtype: torch.dtype | None = None,
                        on_pair=None, first_layer: int = 0) -> dict:
    """The probe on a stream of layers (each ``{family: [out, in] weight}``, in depth order;
    the first is layer ``first_layer``: the pairs' seeds are their layer indices).

    Holds two prepared layers at a time. Null draws per pair and family: at least
    ``min(min_draws, cap)``, then one more at a time while the null mean's standard error
    sd/√d exceeds ``null_se``, up to the cap (``draws`` orthogonal, ``perm_draws`` permutation;
    ``null_se=0`` always uses the cap). Returns a dict of numpy arrays (cacheable): ``pairs``
    (first layer of each adjacent pair) and per family ``<fam>.raw_cos``, ``<fam>.orth_aligned``,
    ``<fam>.orth_null`` ([pairs, draws], NaN past the draws used); for MLP families
    ``<fam>.perm_aligned`` and ``<fam>.perm_null`` ([pairs, perm_draws], the first of the same
    signed permutations); ``assignment_gap`` per pair (``assignment.subproblem_gap``, summed over the
    three MLP cosines; 0 for exact); plus ``families``, ``draws``, ``perm_draws``, ``seed``,
    ``assignment``, ``similarity_dtype``. Above EXACT_ASSIGNMENT_MAX neurons the MLP families'
    orthogonal alignment (not a symmetry of the MLP) is skipped: its orth_* fields are NaN.
    Results do not depend on ``threads`` (default :func:`default_threads`; 1 on CUDA).
    ``on_pair(L)`` is called after each pair (progress).
    """
    perm_draws = min(perm_draws, draws)
    dev = torch.device(device)
    if threads is None:
        threads = 1 if dev.type == "cuda" else default_threads()
    threads = max(1, int(threads))
    fams = [f for f in (families or GAUGE_FAMILIES) if f in INTERNAL_SIDE]
    rows: dict[str, dict[str, list]] = {}
    pairs: list[int] = []
    info = {"methods": set(), "gaps": [], "sim_dtype": None}
    prev = None
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        mapper = pool or _Serial()
        for layer, weights in enumerate(layers, start=first_layer):
            present = {f: weights[f] for f in fams if weights.get(f) is not None}
            if sim_dtype is None and info["sim_dtype"] is None and mlp_families(present):
                info["sim_dtype"] = assignment.similarity_dtype(
                    [_t(present[f]) for f in mlp_families(present)], dev)
            cur = _prepare(present, dev, mapper)
            if prev is not None:
                pairs.append(layer - 1)
                _pair(prev, cur, layer - 1, fams, rows, draws, perm_draws, seed, mapper,
                      min_draws, null_se, sim_dtype or info["sim_dtype"] or torch.float32, info)
                if on_pair is not None:
                    on_pair(layer - 1)
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
    methods = info["methods"]
    out["assignment"] = "exact" if methods <= {"exact"} else sorted(methods - {"exact"})[0]
    if info["gaps"]:
        out["assignment_gap"] = np.asarray(info["gaps"], dtype=np.float64)
    dt = sim_dtype or info["sim_dtype"]
    out["similarity_dtype"] = str(dt).replace("torch.", "") if dt is not None else "float32"
    return out


def _pair(prev, cur, L, fams, rows, draws, perm_draws, seed, pool, min_draws, null_se,
          sim_dtype, info) -> None:
    """Fill ``rows`` with the pair (L, L+1): raw, orthogonal and permutation alignments, the
    nulls drawn in rounds (all first ``min_draws`` together, then one more where still needed)."""
    present = [f for f in fams if f in prev and f in cur]
    hidden = {prev[f]["a"].shape[1] for f in present}
    if len(hidden) > 1:
        raise ValueError(f"families disagree on the residual width: {sorted(hidden)}")
    m = hidden.pop() if hidden else 0
    perms, signs = signed_permutations(m, draws, np.random.default_rng([seed, L]))
    mlp_fams = mlp_families(present)
    mlp = bool(mlp_fams)
    mlp_ok = mlp and _usable(*(prev[f] for f in mlp_fams), *(cur[f] for f in mlp_fams))
    ff = prev["up_proj"]["a"].shape[0] if mlp else 0
    skip_orth = {f for f in mlp_fams if ff > assignment.EXACT_ASSIGNMENT_MAX}
    orth_fams = [f for f in present if f not in skip_orth and _usable(prev[f], cur[f])]
    list(pool.map(_factor, [x[f] for x in (prev, cur) for f in orth_fams]))

    orth_obs = {f: np.nan for f in present}
    orth_null = {f: np.full(draws, np.nan) for f in present}
    perm_obs = {f: np.nan for f in mlp_fams}
    perm_null = np.full((perm_draws, len(mlp_fams)), np.nan)
    used = {f: 0 for f in orth_fams}
    pused = 0
    mp = (_MLPPair({f: prev[f]["a"] for f in mlp_fams}, {f: cur[f]["a"] for f in mlp_fams},
                   seed, sim_dtype, L) if mlp_ok else None)

    def orth_job(f, d):
        a, b = prev[f], cur[f]
        den = a["norm"] * b["norm"]
        if d < 0:
            return ("orth", f, d, orth_nuclear(a["c"], b["ct"]) / den)
        return ("orth", f, d, orth_nuclear(a["c"], b["ct"], perms[d], signs[d]) / den)

    def perm_job(d):
        return ("perm", None, d, mp.draw(None if d < 0 else (perms[d], signs[d])))

    jobs = []
    if mp is not None:  # the assignments, the longest, first
        jobs += [functools.partial(perm_job, d) for d in range(-1, min(min_draws, perm_draws))]
        pused = min(min_draws, perm_draws)
    for f in orth_fams:
        jobs += [functools.partial(orth_job, f, d) for d in range(-1, min(min_draws, draws))]
        used[f] = min(min_draws, draws)
    while jobs:
        for kind, f, d, val in pool.map(lambda job: job(), jobs):
            if kind == "orth":
                if d < 0:
                    orth_obs[f] = val
                else:
                    orth_null[f][d] = val
            else:
                cos, method, gap = val
                info["methods"].add(method)
                if d < 0:
                    perm_obs = dict(zip(mlp_fams, cos))
                    if method != "exact":
                        info["gaps"].append(gap)
                else:
                    perm_null[d] = cos
        jobs = []
        if mp is not None and any(_needs_more(perm_null[:, i], pused, perm_draws, null_se)
                                  for i in range(len(mlp_fams))):
            jobs.append(functools.partial(perm_job, pused))
            pused += 1
        for f in orth_fams:
            if _needs_more(orth_null[f], used[f], draws, null_se):
                jobs.append(functools.partial(orth_job, f, used[f]))
                used[f] += 1
    for f in present:
        a, b = prev[f], cur[f]
        if _usable(a, b):
            raw = float((a["a"] * b["a"]).sum(dtype=torch.float64)) / (a["norm"] * b["norm"])
        else:
            raw = np.nan
        r = rows.setdefault(f, {"raw_cos": [], "orth_aligned": [], "orth_null": []})
        r["raw_cos"].append(raw)
        r["orth_aligned"].append(orth_obs[f])
        r["orth_null"].append(orth_null[f])
    if mlp:
        for i, f in enumerate(mlp_fams):
            r = rows[f]
            r.setdefault("perm_aligned", []).append(perm_obs[f] if mlp_ok else np.nan)
            r.setdefault("perm_null", []).append(perm_null[:, i])
    for x in (prev,):  # layer L's factors are no longer needed
        for f in list(x):
            x[f].pop("c", None)
            x[f].pop("ct", None)


def compute(model, draws: int = NULL_DRAWS, seed: int = 0, perm_draws: int = PERM_NULL_DRAWS,
            threads: int | None = None, device: str = "cpu", on_pair=None, **kw) -> dict:
    """Gauge alignment of every adjacent pair of ``model`` (a ``probes.models.base.Model``).

    Streams the projection families layer by layer (``model.iter_layers``): at most layers
    L and L+1 are held. See the module docstring for the maths, invariances and null.
    """
    fams = [f for f in GAUGE_FAMILIES if f in model.families]
    out = compute_from_layers((w for _, w in model.iter_layers(fams)), draws=draws, seed=seed,
                              families=fams, perm_draws=perm_draws, threads=threads,
                              device=device, on_pair=on_pair, **kw)
    out["absent"] = {f: r for f, r in getattr(model, "absent", {}).items()}
    return out


def pair_shares(num_layers: int, parts: int) -> list[range]:
    """``parts`` contiguous ranges of adjacent pairs (pair L is layers L, L+1), as equal in
    length as they can be (empty when there are fewer pairs than parts)."""
    bounds = np.linspace(0, max(num_layers - 1, 0), parts + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def compute_part(model, part: int, parts: int, draws: int = NULL_DRAWS, seed: int = 0,
                 perm_draws: int = PERM_NULL_DRAWS, threads: int | None = None,
                 device: str = "cpu", on_pair=None, **kw) -> dict:
    """Unit ``part`` of ``parts`` of :func:`compute`, for separate workers: the pairs of
    :func:`pair_shares`' range ``part`` (streaming their layers, the first and last of a share
    read by two units). Every pair's alignments and null draws depend only on its two layers,
    the seed and L, and the MLP similarity's dtype is decided on the first MLP layer as in
    :func:`compute`, so :func:`combine_parts` gives :func:`compute`'s result bit for bit."""
    share = pair_shares(model.layout.num_layers, parts)[part]
    fams = [f for f in GAUGE_FAMILIES if f in model.families]
    if kw.get("sim_dtype") is None and share.start > 0:
        kw["sim_dtype"] = _first_similarity_dtype(model, fams, share.start, device)
    layers = ((w for _, w in ((L, model.layer_weights(L, fams))
                              for L in range(share.start, share.stop + 1)))
              if len(share) else iter(()))
    out = compute_from_layers(layers, draws=draws, seed=seed, families=fams,
                              perm_draws=perm_draws, threads=threads, device=device,
                              on_pair=on_pair, first_layer=share.start, **kw)
    out["part"], out["parts"] = part, parts
    return out


def _first_similarity_dtype(model, fams, before: int, device) -> torch.dtype | None:
    """What :func:`compute_from_layers` decides on the first layer with MLP weights, looked
    up among layers ``0 … before`` (None: no MLP there, so the unit decides as it streams)."""
    mlp = mlp_families([f for f in fams if f in INTERNAL_SIDE])
    for layer in range(before + 1) if mlp else ():
        present = model.layer_weights(layer, mlp)
        if mlp_families(present):
            return assignment.similarity_dtype([_t(present[f]) for f in mlp_families(present)],
                                               torch.device(device))
    return None


def combine_parts(model, results: list[dict]) -> dict:
    """:func:`compute`'s result from every :func:`compute_part` of one split: the pairs'
    arrays concatenated in depth order; a family is kept when every unit with pairs has it."""
    results = sorted(results, key=lambda r: r["part"])
    if [r["part"] for r in results] != list(range(results[0]["parts"])):
        raise ValueError("gauge.combine_parts needs every part of the split exactly once")
    full = [r for r in results if len(r["pairs"])] or results[:1]
    out = {k: full[0][k] for k in ("draws", "perm_draws", "seed", "similarity_dtype")}
    out["pairs"] = np.concatenate([r["pairs"] for r in full])
    out["families"] = [f for f in full[0]["families"] if all(f in r["families"] for r in full)]
    for f in out["families"]:
        for key in [k for k in full[0] if k.startswith(f + ".")]:
            out[key] = np.concatenate([r[key] for r in full])
    gaps = [r["assignment_gap"] for r in full if "assignment_gap" in r]
    if gaps:
        out["assignment_gap"] = np.concatenate(gaps)
    inexact = sorted(r["assignment"] for r in full if r["assignment"] != "exact")
    out["assignment"] = inexact[0] if inexact else "exact"
    out["absent"] = {f: r for f, r in getattr(model, "absent", {}).items()}
    return out


# -- reading a result ------------------------------------------------------------------------
def null_moments(null: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair: mean and sd (ddof 1; 0 with one draw) of the null draws actually made (NaN
    past them) and their number. A pair with no finite draw has NaN mean."""
    null = np.asarray(null, float)
    used = np.isfinite(null).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.where(np.isfinite(null), null, 0.0).sum(axis=1)
        mean = np.where(used > 0, total / np.maximum(used, 1), np.nan)
        dev = np.where(np.isfinite(null), null - mean[:, None], 0.0)
        sd = np.where(used > 1, np.sqrt((dev ** 2).sum(axis=1) / np.maximum(used - 1, 1)), 0.0)
    return mean, sd, used


def has_family(result: Mapping, family: str) -> bool:
    return family in list(result.get("families", []))


def family_fields(result: Mapping, family: str) -> dict[str, np.ndarray]:
    """Per-pair arrays for one family: raw_cos, aligned_cos, null_aligned_mean/sd, excess, delta
    (primary alignment: permutation for MLP families, else orthogonal), plus orth_* versions."""
    if family in UNORDERED_FAMILIES:
        raise NotApplicable(UNORDERED_FAMILIES[family])
    if not has_family(result, family):
        raise NotApplicable((result.get("absent") or {}).get(family)
                            or f"model has no {family}")
    kind = gauge_of(family)
    key = "perm" if kind == "permutation" and f"{family}.perm_aligned" in result else "orth"
    raw = np.asarray(result[f"{family}.raw_cos"], float)
    out = {"pairs": np.asarray(result["pairs"], int), "raw_cos": raw}
    for prefix, k in (("", key), ("orth_", "orth")):
        aligned = np.asarray(result[f"{family}.{k}_aligned"], float)
        null = np.asarray(result[f"{family}.{k}_null"], float)
        mean, sd, used = null_moments(null)
        out.update({f"{prefix}aligned_cos": aligned, f"{prefix}null_aligned_mean": mean,
                    f"{prefix}null_aligned_sd": sd, f"{prefix}excess": aligned - mean,
                    f"{prefix}delta": aligned - raw})
        if not prefix:
            null_draws = used
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


def _assignment_extra(result: Mapping, ff: Mapping) -> dict:
    """The record's note on the null draws used and, for the permutation, the assignment method
    and its measured sub-problem gap (max over pairs, summed-cosine units)."""
    out = {"null_draws": np.asarray(ff["null_draws"]).tolist(),
           "assignment": result.get("assignment", "exact")}
    if ff.get("gauge") == "permutation" and "assignment_gap" in result:
        out["assignment_gap_max"] = float(np.max(result["assignment_gap"]))
    return out


# -- the claims ---------------------------------------------------------------------------------
def e_exceeds_c(result: Mapping, phases: Mapping, family: str, seed: int = 0,
                first: str = "E", second: str = "C", min_pairs: int = 2) -> Evidence:
    """``aligned-delta-E-exceeds-C``: mean excess (aligned − null-aligned) over E's adjacent pairs
    minus that over C's, against the permutation null of the pair labels of E ∪ C (exact when
    C(n, k) ≤ 20000). The same test of the raw delta (aligned − raw) is in ``extra``.
    N/A (:func:`probes.evidence.require`) when either phase has fewer than ``min_pairs``
    adjacent pairs: a phase's mean excess is then one pair's value, not the phase's."""
    ff = family_fields(result, family)
    for ph in (first, second):
        if ph not in phases:
            raise NotApplicable(f"model has no phase {ph}")
    e, c = _phase_pairs(ff, phases, first), _phase_pairs(ff, phases, second)
    for ph, sel in ((first, e), (second, c)):
        require(sel.size, max(min_pairs, 1), "adjacent pair", f"on phase {ph}")
    # the label permutation test needs ≥ 3 pairs in all (2 + 1 with min_pairs = 1)
    require(e.size + c.size, 3, "adjacent pair", f"on phases {first} and {second} together")
    both = np.concatenate([e, c])
    _finite(ff, both, family)
    t = stats.permutation_test(ff["excess"][e], ff["excess"][c], seed)
    td = stats.permutation_test(ff["delta"][e], ff["delta"][c], seed)
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
               **_assignment_extra(result, ff)})


def excess_equivalence(result: Mapping, phases: Mapping, phase: str, family: str,
                       margin: float, min_pairs: int = 2) -> Evidence:
    """``gauge-delta-null``: is the mean excess over ``phase``'s adjacent pairs within ±margin?

    observed = mean aligned cos, null mean = mean null-aligned cos, effect = their difference
    (the mean excess). Its standard error is the larger of the between-pair spread and the
    null's own spread (a single pair's excess has sd ≈ null sd·√(1 + 1/draws) when there is no
    structure): se = √(max(s², v_null)/n), t with n − 1 df when n ≥ 3, normal otherwise.
    p is the TOST p-value against ±margin; the interval is the matching 90 % interval.
    N/A (:func:`probes.evidence.require`) below ``min_pairs`` adjacent pairs in the phase
    (default 2: one pair's excess has no between-pair spread, so its interval would rest on
    the null's spread alone and speak for one pair, not for the phase).
    """
    ff = family_fields(result, family)
    sel = _phase_pairs(ff, phases, phase)
    require(sel.size, max(min_pairs, 1), "adjacent pair", f"on phase {phase}")
    _finite(ff, sel, family)
    n = sel.size
    draws = np.asarray(ff["null_draws"])[sel]
    ex = ff["excess"][sel]
    v_null = float(np.mean(ff["null_aligned_sd"][sel] ** 2 * (1 + 1 / np.maximum(draws, 1))))
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
        ci=(effect - q * se, effect + q * se), p=p, se=se, profile=profile(result, family),
        extra={"gauge": ff["gauge"], "pairs": n, "se": se, "df": df, "margin": margin,
               "mean_raw_cos": float(ff["raw_cos"][sel].mean()),
               "mean_delta": float(ff["delta"][sel].mean()),
               "raw_cos": ff["raw_cos"].tolist(), "excess": ff["excess"].tolist(),
               **_assignment_extra(result, ff)})
