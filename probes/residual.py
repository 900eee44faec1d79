"""Residual-stream update statistics and their nulls (SPEC §5.5), on plain arrays.

Notation: layer L reads the residual stream h_L (its input) and writes h_{L+1} = h_L + δ_L
(its output); δ_L is stacked over calibration tokens into a T × d matrix with singular values
s_i and right singular vectors v_i (directions in the d-dimensional stream). The activation
probe (:mod:`probes.activations`) accumulates the Gram δ_Lᵀδ_L, whose eigenvalues are s_i² and
eigenvectors the v_i; everything here works from those accumulated arrays.

Per layer
  effective rank   exp(−Σ p_i log p_i), p_i = s_i²/Σ s_j²   (1 … d; invariant to scaling δ and
                   to rotating the stream; isotropic updates give ≈ d)
  top-k energy     Σ_{i≤k} p_i                                (isotropic value ≈ k/d)
  relative step    mean_t ‖δ_t‖/‖h_t‖
  parallel frac.   mean_t |cos(δ_t, h_t)|                    (random direction: E|cos| ≈ √(2/(πd)))
  mean cos(δ, h)   mean_t cos(δ_t, h_t)                      (random direction: 0)
  angular step     mean_t arccos(cos(h_t, h_t + δ_t))/π       (in [0, 1])

Across layers (unit top-1 directions u_L = v_1 of layer L; signs are arbitrary, so |cos|)
  |cos| matrix     |⟨u_L, u_L'⟩|
  intra / cross    mean |cos| over pairs inside a phase / between the phase and all other layers
  LOO capture      ‖P_{−L} u_L‖², P_{−L} = projector on the top-r (r = 8) right singular
                   subspace of the stacked top-k directions of the *other* layers of L's phase
                   (random value r/d). Computed in the (m−1)k-dimensional span through the
                   Gram of the directions, never forming d × d matrices.
  block eff. rank  effective rank of the m × d stack of a phase's top-1 directions (1 … m)

Nulls
  layer-label permutation: the phase's layers replaced by a random set of the same size
  (every C(n, m) set enumerated when that is ≤ ``draws``, else ``draws`` seeded random sets);
  the random-direction values above are reported beside it.
  Exchangeable-layers null (late-layers claim): see :func:`exchangeable_angles`.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
from scipy.special import gammaln

from .errors import NotApplicable
from .small_lapack import one_blas_thread, small_lapack, top_eigh_stream
from .evidence import Evidence, Matrix, Profile, require
from .stats import Z95, monte_carlo_p, oriented

CAPTURE_RANK = 8
DEFAULT_DRAWS = 1000


# --------------------------------------------------------------------------- per layer ----
def effective_rank(weights: np.ndarray) -> float:
    """exp of the Shannon entropy of ``weights`` normalised to sum 1 (negatives clipped to 0,
    as round-off in Gram eigenvalues). ``weights`` are squared singular values. 0 if all zero."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = w.sum()
    if total <= 0:
        return 0.0
    p = w / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def top_energy(weights: np.ndarray, k: int) -> float:
    """Share of Σ s² in the k largest squared singular values."""
    w = np.sort(np.clip(np.asarray(weights, dtype=np.float64), 0.0, None))[::-1]
    total = w.sum()
    return float(w[:k].sum() / total) if total > 0 else float("nan")


def _sign_fixed(top: np.ndarray) -> np.ndarray:
    """Rows each multiplied by the sign of their largest-magnitude entry (directions are
    defined up to sign; this makes them reproducible)."""
    idx = np.argmax(np.abs(top), axis=1)
    return top * np.sign(top[np.arange(top.shape[0]), idx])[:, None]


def spectrum_from_gram(gram: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of a symmetric PSD Gram (descending, = squared singular values of the
    stacked rows) and its top-k eigenvectors as rows (k × d), each sign-fixed so its
    largest-magnitude entry is positive (directions are defined up to sign).

    One tridiagonal reduction (LAPACK ``dsytrd``, 4/3 d³ flops) serves both: every eigenvalue
    from the tridiagonal (``dsterf``), only the top k eigenvectors from it (``dstemr``), carried
    back by the reduction's reflectors (``dormqr``). A full ``eigh`` would also build all d
    eigenvectors (≈ 3.5× the flops at d = 2560) that nothing reads. Same values as ``eigh`` to
    float64 rounding (tests)."""
    from scipy.linalg import lapack
    g = np.array(gram, dtype=np.float64, order="F")
    n = g.shape[0]
    k = min(k, n)
    if n == 1:
        return np.clip(g[0], 0.0, None), np.ones((k, 1))
    block = 64 * n  # workspace for the blocked (BLAS-3) reduction; the default is unblocked
    c, diag, off, tau, info = lapack.dsytrd(g, lower=1, lwork=block, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dsytrd failed ({info})")
    vals, info = lapack.dsterf(diag.copy(), off.copy())
    if info != 0:
        raise np.linalg.LinAlgError(f"dsterf failed ({info})")
    # range 3: eigenvalues il..iu (1-based, ascending) with their eigenvectors
    _, _, z, info = lapack.dstemr(diag.copy(), np.append(off, 0.0), 3, 0.0, 0.0,
                                  n - k + 1, n, compute_v=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dstemr failed ({info})")
    z = np.asfortranarray(z[:, :k][:, ::-1])
    # Q = H(1) … H(n−1) acts on rows 2…n (dormtr's lower case, written with dormqr)
    cq, _, info = lapack.dormqr(b"L", b"N", c[1:, :n - 1], tau, z[1:], lwork=64 * max(k, 1))
    if info != 0:
        raise np.linalg.LinAlgError(f"dormqr failed ({info})")
    z[1:] = cq
    return np.clip(vals[::-1], 0.0, None), _sign_fixed(np.ascontiguousarray(z.T))


def spectrum_from_rows(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`spectrum_from_gram` of ``rowsᵀ rows`` (T × d rows, T < d) without forming the
    d × d Gram: the T × T token Gram ``rows rowsᵀ`` has the same nonzero eigenvalues λ_i, and
    with its eigenvectors a_i the right singular vectors are v_i = rowsᵀ a_i / √λ_i. The
    remaining d − T eigenvalues are 0. Costs T²d + T³ instead of d²T + d³; the token Gram's
    eigenproblem is :func:`spectrum_from_gram`'s (one tridiagonal reduction, only k
    eigenvectors: at T = 2,000, 0.49 s instead of ``eigh``'s 1.17 s on one core, AMD EPYC
    Zen 4)."""
    rows = np.asarray(rows, dtype=np.float64)
    t, d = rows.shape
    k = min(k, d)
    kk = min(k, t)
    with one_blas_thread():  # a few hundred rows: threads only spin (probes.small_lapack)
        vals, token_top = spectrum_from_gram(rows @ rows.T, kk)   # (T,), (kk, T)
    top = np.zeros((k, d))
    scale = np.sqrt(vals[:kk])
    ok = scale > 0
    top[:kk][ok] = (rows.T @ token_top.T[:, ok] / scale[ok]).T
    spectrum = np.zeros(d)
    spectrum[:min(t, d)] = vals[:min(t, d)]
    return spectrum, _sign_fixed(top)


def angular_step(h_in: np.ndarray, h_out: np.ndarray) -> np.ndarray:
    """arccos(cos(h_in, h_out))/π per row (0 = same direction, 1 = opposite)."""
    num = np.einsum("td,td->t", h_in, h_out)
    den = np.linalg.norm(h_in, axis=1) * np.linalg.norm(h_out, axis=1)
    return np.arccos(np.clip(num / np.maximum(den, 1e-30), -1.0, 1.0)) / np.pi


# ----------------------------------------------------------------- random-direction values ----
def random_abs_cos_mean(d: int) -> float:
    """E|⟨u, v⟩| for independent uniform unit vectors in R^d:
    Γ(d/2)/(√π Γ((d+1)/2)) — ≈ √(2/(πd)) for large d."""
    return float(np.exp(gammaln(d / 2) - gammaln((d + 1) / 2)) / math.sqrt(math.pi))


def random_capture(rank: int, d: int) -> float:
    """E‖P u‖² for a uniform unit vector u and a fixed rank-r projector in R^d: r/d."""
    return min(rank, d) / d


def random_block_rank_ratio(m: int, d: int, seed: int = 0, draws: int = 200) -> float:
    """Mean effective rank / m of m independent uniform unit vectors in R^d (Monte Carlo)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((draws, m, d))
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    s2 = np.linalg.svd(x, compute_uv=False) ** 2
    return float(np.mean([effective_rank(row) for row in s2]) / m)


# ------------------------------------------------------------------------- across layers ----
def abs_cos_matrix(directions: np.ndarray) -> np.ndarray:
    """|cos| between rows of ``directions`` (n × d, rows need not be unit)."""
    u = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-30)
    return np.abs(u @ u.T)


def intra_cross(abscos: np.ndarray, members) -> tuple[float, float]:
    """(mean |cos| over distinct pairs inside ``members``, mean |cos| between ``members`` and
    every other layer). NaN where there is no pair."""
    members = np.asarray(members)
    n = abscos.shape[0]
    others = np.setdiff1d(np.arange(n), members)
    sub = abscos[np.ix_(members, members)]
    iu = np.triu_indices(len(members), 1)
    intra = float(sub[iu].mean()) if len(members) > 1 else float("nan")
    cross = float(abscos[np.ix_(members, others)].mean()) if len(others) else float("nan")
    return intra, cross


def _intra_cross_batch(abscos: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """intra − cross for each row of ``subsets`` (B × m), vectorised."""
    n = abscos.shape[0]
    b, m = subsets.shape
    mask = np.zeros((b, n))
    mask[np.arange(b)[:, None], subsets] = 1.0
    a0 = abscos - np.diag(np.diag(abscos))
    inside = np.einsum("bi,ij,bj->b", mask, a0, mask) / 2  # sum over pairs
    row_tot = mask @ a0.sum(axis=1)                          # sum over members × all others
    cross_sum = row_tot - 2 * inside
    intra = inside / (m * (m - 1) / 2)
    cross = cross_sum / (m * (n - m)) if n > m else np.full(b, np.nan)
    return intra - cross


def direction_gram(topk: np.ndarray) -> np.ndarray:
    """Gram of every layer's top-k directions: G[(L,i),(L',j)] = ⟨v_{L,i}, v_{L',j}⟩,
    shape (n·k, n·k); the LOO captures need nothing else."""
    n, k, d = topk.shape
    flat = topk.reshape(n * k, d).astype(np.float64)
    return flat @ flat.T


def loo_capture_batch(gram: np.ndarray, k: int, subsets: np.ndarray,
                      rank: int = CAPTURE_RANK) -> np.ndarray:
    """Leave-one-out capture for every member of every subset: array (B, m).

    For member L of subset S, X = stacked top-k directions of S∖{L} ((m−1)k × d); its top-r
    right singular vectors w_i = Xᵀa_i/σ_i (a_i, σ_i² eigenpairs of XXᵀ) span the basis, so
    ‖P u_L‖² = Σ_{i≤r} (a_iᵀ X u_L)²/σ_i², with X u_L and XXᵀ read off the direction Gram.
    Eigenvalues below 1e-10 of the largest are ignored (rank-deficient stacks). The B
    eigenproblems of each member ((m−1)k)² run batched, side by side on the cores
    (:func:`probes.small_lapack.top_eigh_stream`: the next member's problems are gathered
    while the pool solves this one's).
    """
    subsets = np.asarray(subsets)
    b, m = subsets.shape
    if m < 2:
        raise NotApplicable("leave-one-out capture needs at least 2 layers in the phase")
    nk = gram.shape[0]
    # the Gram as (layer, layer) blocks of k × k: a problem is gathered as (m−1)² blocks, not
    # ((m−1)k)² single entries (6× faster at m = 14, k = 8)
    blocks = gram.reshape(nk // k, k, nk // k, k).transpose(0, 2, 1, 3)
    top1 = gram[::k].reshape(nk // k, nk // k, k)                  # ⟨u_L, v_{M,i}⟩

    def problems():
        for j in range(m):
            others = np.delete(subsets, j, axis=1)                   # (B, m-1)
            xx = blocks[others[:, :, None], others[:, None, :]]      # (B, m-1, m-1, k, k)
            yield xx.transpose(0, 1, 3, 2, 4).reshape(b, (m - 1) * k, (m - 1) * k)

    out = np.empty((b, m))
    solved = top_eigh_stream(problems(), min(rank, (m - 1) * k))
    for j, (vals, vecs) in enumerate(solved):                       # ascending, (B, r), (B, R, r)
        others = np.delete(subsets, j, axis=1)
        xu = top1[subsets[:, j][:, None], others].reshape(b, -1)     # (B, R): X u_j
        ok = vals > 1e-10 * vals[:, -1:]
        proj = np.einsum("bri,br->bi", vecs, xu)
        out[:, j] = np.where(ok, proj ** 2 / np.where(ok, vals, 1.0), 0.0).sum(axis=1)
    return np.clip(out, 0.0, 1.0)


def loo_capture(topk: np.ndarray, members, rank: int = CAPTURE_RANK) -> np.ndarray:
    """LOO capture of each member's top-1 direction (see :func:`loo_capture_batch`)."""
    gram = direction_gram(topk)
    return loo_capture_batch(gram, topk.shape[1], np.asarray(members)[None, :], rank)[0]


def loo_capture_direct(topk: np.ndarray, members, rank: int = CAPTURE_RANK) -> np.ndarray:
    """The same capture by explicit SVD of the stacked directions (reference for tests)."""
    out = []
    for L in members:
        x = np.concatenate([topk[o] for o in members if o != L], axis=0)
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        keep = s[:rank] > 1e-5 * s[0]
        basis = vt[:rank][keep]
        out.append(float(np.sum((basis @ topk[L, 0]) ** 2)))
    return np.array(out)


def block_effective_rank(directions: np.ndarray) -> float:
    """Effective rank of the stacked (unit) directions, m × d: 1 (all parallel) … m (orthogonal)."""
    u = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-30)
    return effective_rank(np.linalg.svd(u, compute_uv=False) ** 2)


def _block_rank_batch(top1: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Block effective rank of each subset's top-1 directions, via the m × m Gram."""
    u = top1 / np.maximum(np.linalg.norm(top1, axis=1, keepdims=True), 1e-30)
    g = u @ u.T
    sub = g[subsets[:, :, None], subsets[:, None, :]]
    vals = np.clip(np.linalg.eigvalsh(sub), 0.0, None)
    p = vals / vals.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)
    return np.exp(ent)


# ------------------------------------------------------------------ layer-label nulls ----
def label_subsets(n: int, m: int, seed: int, draws: int = DEFAULT_DRAWS) -> tuple[np.ndarray, bool]:
    """Sets of m layers out of n standing in for a phase under the layer-label permutation null.

    Returns (subsets B × m sorted, exact): every C(n, m) set when that is ≤ ``draws`` (exact
    null, the observed set among them), else ``draws`` sets drawn uniformly with ``seed``.
    """
    total = math.comb(n, m)
    if total <= draws:
        return np.array(list(combinations(range(n), m)), dtype=np.int64).reshape(-1, m), True
    rng = np.random.default_rng(seed)
    subs = np.sort(np.argsort(rng.random((draws, n)), axis=1)[:, :m], axis=1)
    return subs, False


def null_p(observed: float, samples: np.ndarray, direction: str, exact: bool) -> float:
    """p of ``observed`` against null ``samples``: the exact fraction as extreme when the samples
    enumerate the null (the observed labelling is one of them), else the +1-corrected Monte
    Carlo p. A tolerance of 1e-12 counts ties as extreme."""
    samples = np.asarray(samples, dtype=float)
    if not exact:
        tol_obs = observed - 1e-12 if direction == "greater" else observed + 1e-12
        return monte_carlo_p(tol_obs, samples, direction)
    if direction == "greater":
        return float(np.mean(samples >= observed - 1e-12))
    return float(np.mean(samples <= observed + 1e-12))


def _members(phases: dict, phase: str, n: int, minimum: int) -> np.ndarray:
    """The phase's layers, N/A (:func:`probes.evidence.require`) below ``minimum`` of them or
    with no layer outside the phase (the cross-phase comparison and the layer-label null need
    one)."""
    if phase not in phases:
        raise NotApplicable(f"the phase map has no phase {phase}")
    members = np.array(sorted(phases[phase]), dtype=np.int64)
    require(len(members), minimum, "layer", f"on phase {phase}")
    require(n - len(members), 1, "layer", f"outside phase {phase}")
    return members


def _check_finite(result: dict, *keys: str) -> None:
    for key in keys:
        if not np.all(np.isfinite(np.asarray(result[key], dtype=float))):
            raise NotApplicable(f"residual statistic {key} has NaN/Inf (non-finite activations)")


def _phase_capture_profile(topk: np.ndarray, phases: dict, rank: int) -> np.ndarray:
    """Every layer's LOO capture within its own phase (NaN for single-layer phases)."""
    out = np.full(topk.shape[0], np.nan)
    gram = direction_gram(topk)
    for layers in phases.values():
        if len(layers) >= 2:
            members = np.array(sorted(layers))
            out[members] = loo_capture_batch(gram, topk.shape[1], members[None, :], rank)[0]
    return out


CAPTURE_NULL_ID = "layer_label_capture_null"   # a derived cache entry (fixtures/residual.py)
CAPTURE_NULL_VERSION = 1


def capture_null(result: dict, size: int, seed: int = 0, draws: int = DEFAULT_DRAWS,
                 rank: int = CAPTURE_RANK) -> dict:
    """The layer-label permutation null of the mean LOO capture (:func:`shared_subspace`) for a
    phase of ``size`` layers: the mean capture of each random layer set of that size
    (:func:`label_subsets`: every set when C(n, size) ≤ ``draws``, else ``draws`` sets drawn
    with ``seed``). Depends on the result only through its top-k directions; cached as a derived
    entry of the residual stream, so a rerun (or a cluster worker, right after the forward)
    need not solve its B × size eigenproblems again. Returns ``{"capture": (B,), "size",
    "seed", "draws", "rank", "exact"}``."""
    _check_finite(result, "top_dirs")
    topk = np.asarray(result["top_dirs"], dtype=np.float64)
    n, k, _ = topk.shape
    subsets, exact = label_subsets(n, size, seed, draws)
    # below 2 layers there is nothing to leave one out of: the claim is N/A before any null
    capture = (loo_capture_batch(direction_gram(topk), k, subsets, rank).mean(axis=1)
               if 2 <= size <= n else np.empty(0))
    return {"capture": capture, "size": int(size), "seed": int(seed), "draws": int(draws),
            "rank": int(rank), "exact": bool(exact)}


def _matching_null(null: dict, **expected) -> dict:
    """``null`` (a derived entry) after checking it was drawn for these parameters."""
    differ = {k: (null.get(k), v) for k, v in expected.items() if null.get(k) != v}
    if differ:
        raise ValueError(f"the null was computed for other parameters: "
                         f"{', '.join(f'{k} {a} (wanted {b})' for k, (a, b) in differ.items())}")
    return null


def shared_subspace(result: dict, phases: dict, phase: str = "C", seed: int = 0,
                    draws: int = DEFAULT_DRAWS, rank: int = CAPTURE_RANK,
                    min_layers: int = 3, null: dict | None = None) -> Evidence:
    """Evidence that a phase's layers update the stream in a shared subspace.

    Primary statistic: mean LOO capture over the phase's layers (random-direction value r/d).
    Second statistic: intra − cross mean |cos| of top-1 directions (random-direction value 0).
    Null for both: layer-label permutation — the same statistic for random layer sets of the
    phase's size (exact enumeration when C(n, m) ≤ ``draws``). Direction greater. The verdict's
    p is the intersection–union p = max(p_capture, p_intra−cross), so support needs both to beat
    the null; effect, interval and null moments are the capture's. ``null``: the capture null
    already computed (:func:`capture_null` for this phase's size, ``seed``, ``draws`` and
    ``rank``; a cached derived entry), else it is computed here.
    """
    _check_finite(result, "top_dirs")
    topk = np.asarray(result["top_dirs"], dtype=np.float64)
    n, k, d = topk.shape
    # ≥ 3: leaving one out must leave a pair of layers whose basis captures it
    members = _members(phases, phase, n, max(min_layers, 3))
    subsets, exact = label_subsets(n, len(members), seed, draws)
    if null is None:
        null = capture_null(result, len(members), seed, draws, rank)
    cap_null = np.asarray(_matching_null(null, size=len(members), seed=seed, draws=draws,
                                         rank=rank)["capture"], dtype=np.float64)
    gram = direction_gram(topk)
    caps = loo_capture_batch(gram, k, members[None, :], rank)[0]
    cap_obs = float(caps.mean())
    abscos = abs_cos_matrix(topk[:, 0])
    ic_null = _intra_cross_batch(abscos, subsets)
    intra, cross = intra_cross(abscos, members)
    ic_obs = intra - cross
    p_cap = null_p(cap_obs, cap_null, "greater", exact)
    p_ic = null_p(ic_obs, ic_null, "greater", exact)
    mu, sd = float(cap_null.mean()), float(cap_null.std(ddof=1))
    eff = oriented(cap_obs, mu, "greater")
    profile = Profile(range(n), _phase_capture_profile(topk, phases, rank),
                      [random_capture(rank, d)] * n,
                      label=f"LOO capture of top-1 by rank-{rank} basis of the other layers of "
                            f"the phase (null: random direction r/d)")
    return Evidence(
        observed=cap_obs, null_kind="layer-label permutation" + (" (exact)" if exact else
                                                                  f" (Monte Carlo, seed {seed})"),
        null_mean=mu, null_sd=sd, effect=eff, ci=(eff - Z95 * sd, eff + Z95 * sd),
        p=max(p_cap, p_ic), profile=profile,
        matrix=Matrix(range(n), abscos.tolist(), label="|cos| of top-1 update directions"),
        extra={"layers": members.tolist(), "captures": caps.tolist(), "p_capture": p_cap,
               "capture_random_direction": random_capture(rank, d),
               "intra": intra, "cross": cross, "intra_minus_cross": ic_obs,
               "intra_minus_cross_null_mean": float(ic_null.mean()),
               "intra_minus_cross_null_sd": float(ic_null.std(ddof=1)),
               "p_intra_minus_cross": p_ic, "abs_cos_random_direction": random_abs_cos_mean(d),
               "null_draws": int(len(subsets)), "exact_null": exact, "rank": rank, "top_k": k,
               "hidden": d, **_common_extra(result)})


def specialized(result: dict, phases: dict, phase: str = "E", seed: int = 0,
                draws: int = DEFAULT_DRAWS, min_layers: int = 2) -> Evidence:
    """Evidence that a phase's layers write in their own directions (no shared subspace).

    Primary statistic: block effective rank / m of the phase's top-1 directions (m = #layers;
    1 = mutually orthogonal, 1/m = all parallel), direction *greater* than the layer-label
    permutation null (random layer sets of size m: a set holding layers that share a direction
    has a lower ratio). Condition: the phase's top-1 directions are not more aligned with each
    other than with the other layers' (intra − cross mean |cos| ≤ 0 as measured); when it fails
    p is set to 1. An absence of shared structure alone would hold in any random-init model, so
    the claim is tested against the model's own other layers, not against random directions;
    the random-direction values (ratio of m random directions in R^d, E|cos|) are reported
    beside it, with the permutation null of intra − cross.
    """
    _check_finite(result, "top_dirs")
    topk = np.asarray(result["top_dirs"], dtype=np.float64)
    n, _, d = topk.shape
    members = _members(phases, phase, n, max(min_layers, 2))   # ≥ 2: alignment within it
    subsets, exact = label_subsets(n, len(members), seed, draws)
    top1 = topk[:, 0]
    abscos = abs_cos_matrix(top1)
    ic_null = _intra_cross_batch(abscos, subsets)
    intra, cross = intra_cross(abscos, members)
    ic_obs = intra - cross
    m = len(members)
    ratio_null = _block_rank_batch(top1, subsets) / m
    ratio_obs = block_effective_rank(top1[members]) / m
    p_rank = null_p(ratio_obs, ratio_null, "greater", exact)
    p = p_rank if ic_obs <= 0 else 1.0
    mu, sd = float(ratio_null.mean()), float(ratio_null.std(ddof=1))
    eff = oriented(ratio_obs, mu, "greater")
    mean_other = np.full(n, np.nan)
    for layers in phases.values():
        if len(layers) >= 2:
            idx = np.array(sorted(layers))
            sub = abscos[np.ix_(idx, idx)]
            mean_other[idx] = (sub.sum(axis=1) - 1.0) / (len(idx) - 1)
    return Evidence(
        observed=ratio_obs, null_kind="layer-label permutation" + (" (exact)" if exact else
                                                                    f" (Monte Carlo, seed {seed})"),
        null_mean=mu, null_sd=sd, effect=eff, ci=(eff - Z95 * sd, eff + Z95 * sd), p=p,
        profile=Profile(range(n), mean_other, [random_abs_cos_mean(d)] * n,
                        label="mean |cos| of a layer's top-1 direction with the other layers of "
                              "its phase (null: random directions)"),
        matrix=Matrix(range(n), abscos.tolist(), label="|cos| of top-1 update directions"),
        extra={"layers": members.tolist(), "block_effective_rank": ratio_obs * m,
               "p_block_rank": p_rank, "intra": intra, "cross": cross,
               "intra_minus_cross": ic_obs, "not_more_aligned": bool(ic_obs <= 0),
               "intra_minus_cross_null_mean": float(ic_null.mean()),
               "intra_minus_cross_null_sd": float(ic_null.std(ddof=1)),
               "p_intra_minus_cross_less": null_p(ic_obs, ic_null, "less", exact),
               "block_rank_ratio_random_directions": random_block_rank_ratio(m, d, seed),
               "abs_cos_random_direction": random_abs_cos_mean(d),
               "null_draws": int(len(subsets)), "exact_null": exact, "hidden": d,
               **_common_extra(result)})


# ------------------------------------------------------------ late layers change least ----
def exchangeable_angles(h0_sq: np.ndarray, delta_sq: np.ndarray, dot: np.ndarray,
                        orders: np.ndarray, block: int = 64, chunk: int = 2048) -> np.ndarray:
    """Mean over tokens of the angular step (÷π) when the layers act in ``orders``.

    Per token t and layer j the update is summarised by its norm n_tj = ‖δ_tj‖ and its
    alignment ρ_tj = ⟨h_tj, δ_tj⟩/(‖h_tj‖ n_tj) with the stream it read; the cross-layer terms
    ⟨δ_i, δ_j⟩ are not kept. Placing the layers in an order, from H = ‖h_t0‖:
        c = ρ n H,  H' = √(H² + 2c + n²),  angle = arccos((H² + c)/(H H'))/π.
    In the identity order this is exact (the expansion of ‖h + δ‖² and of cos(h, h + δ)), so
    it reproduces the measured angles. Invariances: a common rescaling of the stream and the
    updates; any rotation of the stream. Inputs: ``h0_sq`` (T,), ``delta_sq`` and ``dot``
    (T, m); ``orders`` (B, m) permutations of 0 … m−1. Returns (B, m).

    Computed in tiles of ``block`` draws × ``chunk`` tokens (1 MiB of float64 per array), each
    carried through every layer position before the next: the tile's few temporaries stay in
    cache instead of streaming (B × T) arrays through memory once per position — 1.4–1.9×
    faster on one core (T = 4,345 and 17,000, AMD EPYC Zen 2), and far less memory traffic
    beside the probes a cluster runs on the same machine.
    """
    orders = np.atleast_2d(orders)
    b, m = orders.shape
    n_t = np.sqrt(np.maximum(delta_sq, 0.0))
    h_t = np.sqrt(np.maximum(np.cumsum(np.concatenate(
        [h0_sq[:, None], 2 * dot + delta_sq], axis=1), axis=1)[:, :m], 1e-300))
    rho = dot / np.maximum(h_t * n_t, 1e-300)
    # per layer, once (rows = layers, contiguous over tokens, so a draw's layer is one row
    # read): c = ρ n H needs ρ·n, H' needs n²
    rho_n = np.ascontiguousarray((rho * n_t).T)
    n_sq = np.ascontiguousarray((n_t * n_t).T)
    h0 = np.sqrt(h0_sq)
    tokens = len(h0)
    angle_sums = np.zeros((b, m))

    def draw_block(lo: int) -> None:
        ords = orders[lo:lo + block]
        for t0 in range(0, tokens, chunk):
            cols = slice(t0, t0 + chunk)
            h = np.broadcast_to(h0[None, cols], (len(ords), len(h0[cols]))).copy()
            for pos in range(m):
                layer = ords[:, pos]
                hh = h * h
                c = rho_n[layer, cols] * h                                 # (blk, chunk)
                h_next = np.sqrt(np.maximum(hh + 2 * c + n_sq[layer, cols], 1e-300))
                cos = np.clip((hh + c) / np.maximum(h * h_next, 1e-300), -1.0, 1.0)
                angle_sums[lo:lo + block, pos] += _arccos(cos).sum(axis=1)
                h = h_next

    # blocks of draws are independent and each is computed alike on any thread (numpy's
    # elementwise kernels and torch's arccos on one thread each, the GIL released), so the
    # values do not depend on the pool's size: one thread each of torch's, or of the cores
    # lent under --cluster once the workers are idle
    with small_lapack() as pool:
        for done in [pool.submit(draw_block, lo) for lo in range(0, b, block)]:
            done.result()
    return angle_sums / (np.pi * tokens)


def _arccos(x: np.ndarray) -> np.ndarray:
    """arccos through torch's vectorised kernel (SLEEF, ≤ 1 ulp; ≈ 2× numpy's scalar libm
    call on AVX2): most of the exchangeable-layers null's time is this call."""
    import torch
    return torch.arccos(torch.from_numpy(x)).numpy()


def second_half_start(num_layers: int) -> int:
    """First layer of the second half of depth: the smallest L with L/num_layers ≥ 0.5."""
    return (num_layers + 1) // 2


def half_min_contrast(angles: np.ndarray, num_layers: int) -> np.ndarray:
    """log(min angle over first-half candidates) − log(min over second-half candidates).

    Candidates are layers 0 … n−2 (the last layer is excluded: it prepares the output); the
    second half is L ≥ ⌈n/2⌉. Positive ⇔ the smallest step is in the second half; larger ⇔ the
    first half is further from having a step as small. Works on (…, n−1) arrays."""
    a = np.log(np.maximum(np.asarray(angles, dtype=np.float64), 1e-300))
    s = second_half_start(num_layers)
    return a[..., :s].min(axis=-1) - a[..., s:num_layers - 1].min(axis=-1)


EXCHANGEABLE_NULL_ID = "exchangeable_layers_null"   # a derived cache entry (fixtures/residual.py)
EXCHANGEABLE_NULL_VERSION = 1
LATE_NULL_DRAWS = 1000


def exchangeable_null(result: dict, seed: int = 0, draws: int = LATE_NULL_DRAWS) -> dict:
    """The exchangeable-layers null of :func:`late_layers_change_least`: the mean angular step of
    layers 0 … n−2 when each token's own updates act in ``draws`` random layer orders (seeded
    permutations, :func:`exchangeable_angles`). Cached as a derived entry of the residual
    stream, so a rerun (or a cluster worker, right after the forward) need not redo its
    draws × layers × tokens angles. Returns ``{"angles": (draws, n−1), "seed", "draws"}``."""
    _check_finite(result, "tok_delta_sq", "tok_dot", "tok_h_sq")
    m = int(np.asarray(result["angular_step"]).shape[0]) - 1
    d_sq = np.asarray(result["tok_delta_sq"], dtype=np.float64)[:, :m]
    dot = np.asarray(result["tok_dot"], dtype=np.float64)[:, :m]
    h0_sq = np.asarray(result["tok_h_sq"], dtype=np.float64)[:, 0]
    orders = np.argsort(np.random.default_rng(seed).random((draws, m)), axis=1)
    # without a layer to place the claim is N/A before any null
    angles = exchangeable_angles(h0_sq, d_sq, dot, orders) if m >= 1 else np.empty((draws, 0))
    return {"angles": angles, "seed": int(seed), "draws": int(draws)}


def late_layers_change_least(result: dict, seed: int = 0, draws: int = LATE_NULL_DRAWS,
                             min_layers: int = 4, null: dict | None = None) -> Evidence:
    """Evidence that the smallest angular step between h_L and h_{L+1} is in the second half.

    Statistic: :func:`half_min_contrast` of the measured angular-step profile (mean over tokens
    of arccos(cos(h_L, h_{L+1}))/π; positive ⇔ argmin in the second half), direction greater.
    Null: exchangeable layers — every token's own layer updates (norm and alignment with the
    stream) applied in a random order of layers 0 … n−2 (:func:`exchangeable_angles`, ``draws``
    seeded permutations). Residual accumulation alone makes steps shrink with depth (‖h‖ grows),
    so shuffling the angle profile would call every random-init model "late layers change
    least"; this null keeps the accumulation and asks whether the late layers' *own* updates
    are small. p = the Monte Carlo p, set to 1 when the argmin lies in the first half (then the
    literal claim is false). Also reported: the argmin-position null, the chance that a random
    candidate layer lies in the second half (#second-half candidates / (n−1)). ``null``: the
    null already computed (:func:`exchangeable_null` for ``seed`` and ``draws``; a cached
    derived entry), else it is computed here.
    """
    _check_finite(result, "tok_delta_sq", "tok_dot", "tok_h_sq", "angular_step")
    n = int(np.asarray(result["angular_step"]).shape[0])
    # ≥ 4 so both halves have a candidate layer (the last layer is not one)
    require(n, max(min_layers, 4), "layer", "in the model")
    d_sq = np.asarray(result["tok_delta_sq"], dtype=np.float64)
    h0_sq = np.asarray(result["tok_h_sq"], dtype=np.float64)[:, 0]
    m = n - 1
    if np.any(h0_sq <= 0) or np.any(d_sq[:, :m].sum(axis=0) <= 0):
        raise NotApplicable("a layer has a zero residual stream or a zero update")
    measured = np.asarray(result["angular_step"], dtype=np.float64)
    if null is None:
        null = exchangeable_null(result, seed, draws)
    null_angles = np.asarray(_matching_null(null, seed=seed, draws=draws)["angles"],
                             dtype=np.float64)
    obs = float(half_min_contrast(measured[:m], n))
    null_contrast = half_min_contrast(null_angles, n)
    argmin = int(np.argmin(measured[:m]))
    s = second_half_start(n)
    p = monte_carlo_p(obs - 1e-12, null_contrast, "greater") if argmin >= s else 1.0
    mu, sd = float(null_contrast.mean()), float(null_contrast.std(ddof=1))
    eff = oriented(obs, mu, "greater")
    return Evidence(
        observed=obs, null_kind=f"exchangeable layers (random layer order, Monte Carlo, seed {seed})",
        null_mean=mu, null_sd=sd, effect=eff, ci=(eff - Z95 * sd, eff + Z95 * sd), p=p,
        profile=Profile(range(n), measured, list(null_angles.mean(axis=0)) + [float("nan")],
                        label="angular step arccos(cos(h_L, h_L+1))/π, mean over tokens "
                              "(null: layers in random order)"),
        extra={"argmin_layer": argmin, "argmin_in_second_half": argmin >= s,
               "second_half_from": s, "candidates": m,
               "argmin_position_null": (m - s) / m, "null_draws": int(draws),
               **_common_extra(result)})


def _common_extra(result: dict) -> dict:
    """Per-layer statistics and their random/isotropic values, and the calibration record."""
    keys = ("effective_rank", "top1_energy", "top3_energy", "top10_energy", "rel_step",
            "parallel_frac", "cos_delta_h", "angular_step")
    out = {"per_layer": {k: np.asarray(result[k], dtype=float).tolist() for k in keys if k in result}}
    if "isotropic" in result:
        out["per_layer_null"] = result["isotropic"]
    if "calibration" in result:
        out["calibration"] = result["calibration"]
    if "forward" in result:
        out["forward"] = result["forward"]
    return out
