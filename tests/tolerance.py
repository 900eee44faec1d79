"""Tolerances from the arithmetic: every numerical comparison in tests/ takes its tolerance from
the precision of the path it checks, never a bare ``1e-6``.

Which kernel computes a float32 sum or dot product depends on the machine: torch's own
reductions dispatch on ``ATEN_CPU_CAPABILITY`` (default / avx2 / avx512), its GEMMs go through
MKL or oneDNN (``MKL_ENABLE_INSTRUCTIONS``, and MKL takes its AVX2 path on AMD CPUs), numpy's
through OpenBLAS (``OPENBLAS_CORETYPE``), and the thread count changes the blocking. Each
kernel sums in its own order (SIMD lanes of 4, 8 or 16, blocks, a final horizontal reduction), so
two float32 paths agree only to their rounding error, and a tolerance tuned on one CPU fails on
another (issue 17: 0.7957742 vs 0.7957755 under ``abs=1e-6`` on an Intel CPU, passing on AMD).
Measured with torch 2.13 (MKL 2024.2, oneDNN 3.12) and numpy's OpenBLAS 0.3.31 on an AVX-512
Xeon: ``ATEN_CPU_CAPABILITY=default`` changes the bits of torch's sums, norms and matmuls, ``avx2``
leaves them as ``avx512``; ``MKL_ENABLE_INSTRUCTIONS`` (AVX2, SSE4_2), ``MKL_CBWR`` and the
thread count change torch's GEMMs; ``OPENBLAS_CORETYPE`` and the thread count change numpy's.
``make test-kernels`` reruns the numerical tests on such a combination.

The error analysis (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3–4):
a sum of n terms in floating point with unit roundoff u, in any order, satisfies

    |fl(Σ x_i) − Σ x_i| ≤ γ_{n−1} Σ |x_i|,      γ_n = n·u / (1 − n·u)          (worst case)

and a dot product likewise with Σ |x_i y_i| (≤ ‖x‖‖y‖). The worst case is attained only when
every rounding error has the same sign; modelling the errors as independent and mean-zero
(Higham & Mary, SIAM J. Sci. Comput. 41 (2019) A2815), the error is a martingale with n steps of
size ≤ u·|partial sum|, so by Azuma–Hoeffding it exceeds

    λ·√n·u Σ |x_i|                                                              (typical)

with probability ≤ 2·exp(−λ²/2): 7.5e-6 for the λ = 5 used here. Real kernels sum in 4–16
lanes and blocks, which only shortens the chains (their error is ≈ √(n/lanes)·u), so the typical
bound covers every order a CPU kernel uses. The typical bound is the default; the worst case is
there for short sums where it is not much larger (n·u ≪ √n·u·λ for n < 25).

u is the unit roundoff, half of ``numpy.finfo(dtype).eps``: 2⁻²⁴ for float32, 2⁻⁵³ for float64,
2⁻⁸ for bfloat16 (8 significand bits: a float32 rounded to bfloat16 errs by ≤ 2⁻⁸ relative).

A tolerance built here states the path (the dtype, and n: the number of terms summed in that
dtype), so it grows with the problem size and stays orders of magnitude below the error a real
bug makes (a wrong sign, a missing centring, a wrong normalisation: ≥ 1e-2 relative). A
comparison whose bound could not be derived states a *measured* bound and its reason in a
comment next to it.
"""

from __future__ import annotations

import math

import numpy as np

U32 = 2.0 ** -24    # float32 unit roundoff  (np.finfo(np.float32).eps / 2)
U64 = 2.0 ** -53    # float64 unit roundoff  (np.finfo(np.float64).eps / 2)
UBF16 = 2.0 ** -8   # bfloat16 unit roundoff (8 significand bits)
LAMBDA = 5.0        # typical-bound confidence: P(error > λ√n·u·Σ|x|) ≤ 2·exp(−λ²/2) = 7.5e-6

__all__ = ["U32", "U64", "UBF16", "LAMBDA", "gamma", "sum_rtol", "agree_rtol", "cos_atol",
           "f64_rtol", "unit_roundoff", "mode1_share_atol", "mixed_dot_rtol", "gram_eig_atol",
           "top_energy_atol", "effective_rank_rtol", "direction_cos_atol"]


def unit_roundoff(dtype) -> float:
    """u of a numpy or torch dtype (half its machine epsilon)."""
    name = str(dtype).replace("torch.", "")
    if name == "bfloat16":
        return UBF16
    return float(np.finfo(np.dtype(name)).eps) / 2


def gamma(n: int, u: float = U32) -> float:
    """Worst-case relative error γ_n = n·u/(1 − n·u) of a sum or dot product of n + 1 terms,
    relative to Σ|x_i| (Higham, Lemma 3.1); valid for n·u < 1."""
    nu = n * u
    if nu >= 1:
        raise ValueError(f"γ_n undefined for n·u = {nu:.3g} ≥ 1")
    return nu / (1 - nu)


def sum_rtol(n: int, u: float = U32, lam: float = LAMBDA) -> float:
    """Error of one sum or dot product of n terms computed in a dtype with unit roundoff u,
    relative to Σ|x_i| (for a sum of squares, or any sum of same-signed terms: relative to the
    result): the typical bound λ·√n·u, or the worst case γ_n if that is smaller (short sums),
    plus one rounding of the result."""
    n = max(int(n), 1)
    return min(lam * math.sqrt(n) * u, gamma(n, u) if n * u < 0.5 else math.inf) + u


def agree_rtol(n: int, u: float = U32, paths: int = 2, lam: float = LAMBDA) -> float:
    """Two (or ``paths``) independent computations of the same sum of n terms — different
    kernels, orders or libraries — agree to the sum of their errors."""
    return paths * sum_rtol(n, u, lam)


def cos_atol(n: int, u: float = U32, paths: int = 1, lam: float = LAMBDA) -> float:
    """Absolute error of a cosine ⟨a,b⟩/(‖a‖‖b‖) of n-vectors from ``paths`` float computations
    (1: against an exact/float64 reference; 2: two float paths against each other).
    The dot product errs by sum_rtol·Σ|a_i b_i| ≤ sum_rtol·‖a‖‖b‖, and each norm (√ of a sum of
    squares) by ½·sum_rtol relative, so |Δcos| ≤ sum_rtol·(1 + |cos|) ≤ 2·sum_rtol per path."""
    return paths * 2 * sum_rtol(n, u, lam)


def f64_rtol(n: int = 1, cond: float = 1.0) -> float:
    """A float64 path: the typical bound for n terms times the problem's condition number —
    ≈ 1e-13 or below for the sizes here, so float64 comparisons keep tight tolerances."""
    return cond * sum_rtol(n, U64)


def mode1_share_atol(tracks: np.ndarray, rel_err: np.ndarray | float, lam: float = LAMBDA) -> float:
    """Absolute tolerance on the mode-1 share s = σ₁²/‖A‖²_F of the row-centred F × L log-norm
    tracks A when each entry of row i (a log-norm) errs independently by a standard deviation
    ``rel_err[i]`` (the relative error of that family's norms).

    The gradient of s in the tracks is G = 2(σ₁u₁v₁ᵀ − s·A)/‖A‖²_F (centring is a projection
    that G already satisfies), with ‖G‖_F = 2√(s(1 − s))/‖A‖_F; a first-order error ΣG_ij·Δ_ij
    with independent Δ_ij has standard deviation √(Σ G_ij² σ_i²) ≤ ‖G‖_F·max σ_i, so λ times
    that. The share is ill-conditioned when the tracks barely vary (‖A‖_F ≪ 1: random-init
    weights whose norms agree to 1 %), which is what turns a float32 ε into 1e-6 differences."""
    centred = tracks - tracks.mean(axis=1, keepdims=True)
    s = np.linalg.svd(centred, compute_uv=False)
    size = float(np.linalg.norm(centred))
    share = float(s[0] ** 2) / size ** 2
    return lam * 2 * math.sqrt(share * (1 - share)) / size * float(np.max(rel_err))


def mixed_dot_rtol(n: int, roundings: int = 1) -> float:
    """Worst-case error of a dot product of n terms whose products are formed in float32 (each
    rounded once, plus ``roundings − 1`` further float32 roundings of its operands, e.g. a
    division by a norm) and summed in float64, relative to Σ|x_i y_i|: roundings·u₃₂ + γ_n(u₆₄).
    No √n growth: the float32 errors are per term, the accumulation is float64."""
    return roundings * U32 + gamma(max(int(n), 1), U64)


# -- spectra of a Gram that two paths sum differently ---------------------------------------------
# A Gram G = Σ_t δ_t δ_tᵀ whose entries two paths compute to within ε·√(G_ii G_jj) each (float32
# products of blocks of rows, summed in float64: ε = agree_rtol(rows per block)) differs by
# ‖ΔG‖_F ≤ ε·√(Σ_ij G_ii G_jj) = ε·tr G. What that moves, each bound from a theorem:

def gram_eig_atol(eigvals: np.ndarray, rel: float) -> float:
    """‖ΔG‖_F ≤ rel·tr G for a Gram with eigenvalues ``eigvals`` whose entries err by
    rel·√(G_ii G_jj): the bound on every eigenvalue's move (Weyl), and on the ℓ2 norm of all the
    moves together (Hoffman–Wielandt)."""
    return rel * float(np.clip(eigvals, 0, None).sum())


def top_energy_atol(eigvals: np.ndarray, k: int, atol: float, rel: float) -> float:
    """Absolute error of the top-k energy S_k/tr G when ‖ΔG‖_F ≤ ``atol`` and the trace (a sum of
    the diagonal's sums of squares) errs by ≤ ``rel``·tr G: S_k moves by at most the Ky Fan
    k-norm of ΔG, ≤ √k·‖ΔG‖_F, so |Δ(S_k/tr)| ≤ (√k·atol + (S_k/tr)·rel·tr)/(tr − rel·tr)."""
    w = np.sort(np.clip(eigvals, 0, None))[::-1]
    tr = float(w.sum())
    energy = float(w[:k].sum()) / tr
    return (math.sqrt(k) * atol + energy * rel * tr) / (tr * (1 - rel))


def effective_rank_rtol(eigvals: np.ndarray, atol: float, rel: float) -> float:
    """Relative error of exp(H), H = −Σ p_i log p_i with p = λ/tr (``probes.residual.
    effective_rank``), when the eigenvalues move by an ℓ2 total ≤ ``atol`` (Hoffman–Wielandt)
    and the trace by ≤ ``rel``·tr.

    Each p_i then moves by ≤ η = (atol + rel·tr)/(tr − rel·tr), and all together by
    ‖Δp‖₂ ≤ (atol + ‖p‖₂·rel·tr)/(tr − rel·tr). Where p_i > 2η, f(p) = −p log p has
    |f′| ≤ c_i = |1 + log(p_i − η)| between p_i and its perturbed value, so those terms move H by
    ≤ ‖c‖₂·‖Δp‖₂ (Cauchy–Schwarz). The m others (the tail, down to round-off) move it by
    ≤ Σ f(|Δp_i|) (Fannes: |f(x) − f(y)| ≤ f(|x − y|) for |x − y| ≤ ½) ≤ m·f(‖Δp‖₂/√m), f being
    concave (Jensen, with Σ|Δp_i| ≤ √m·‖Δp‖₂). exp(H) then moves by ≤ e^{|ΔH|} − 1 relative."""
    w = np.clip(np.asarray(eigvals, dtype=np.float64), 0, None)
    tr = float(w.sum())
    p = w / tr
    eta = (atol + rel * tr) / (tr * (1 - rel))
    dp = (atol + float(np.linalg.norm(p)) * rel * tr) / (tr * (1 - rel))
    resolved = p > 2 * eta
    c = np.abs(1 + np.log(p[resolved] - eta))
    m = int((~resolved).sum())
    step = dp / math.sqrt(m) if m else 0.0
    if step > 0.5:
        return math.inf
    tail = -m * step * math.log(step) if step > 0 else 0.0
    return math.expm1(float(np.linalg.norm(c)) * dp + tail)


def direction_cos_atol(eigvals: np.ndarray, k: int, atol: float, u: float = U32) -> float:
    """1 − |cos| between the k-th eigenvector of G and of G + ΔG, ‖ΔG‖₂ ≤ ``atol``: Davis–Kahan
    sin θ ≤ atol/(gap − atol), gap = λ_k's distance to the rest of the spectrum, so
    1 − |cos θ| ≤ sin²θ (plus the rounding of a unit vector stored with unit roundoff ``u``, 4·u:
    the probe stores float32 directions); inf where
    the gap does not exceed 2·atol (the direction is not determined to that accuracy)."""
    w = np.asarray(eigvals, dtype=np.float64)
    others = np.delete(w, k)
    gap = float(np.min(np.abs(others - w[k]))) if others.size else math.inf
    if gap <= 2 * atol:
        return math.inf
    return (atol / (gap - atol)) ** 2 + 4 * u
