"""Per-head QK metric geometry (SPEC §5.3).

For query head ``h`` of a layer, with ``W_Q,h`` the ``head_dim × hidden`` rows
``h·hd:(h+1)·hd`` of ``q_proj`` and ``W_K,h`` the rows of the kv head it reads
(``h // (num_heads / num_kv_heads)``, as transformers' ``repeat_kv`` does), the head's QK metric
is the ``hidden × hidden`` matrix

    g_h = W_K,hᵀ W_Q,h            so that the attention logit is  yᵀ g_h x = (W_K y)·(W_Q x)

for a query token with residual state ``x`` and a key token ``y`` (RoPE off, i.e. relative
position 0; projection biases, which qwen2 has, are ignored). ``g_h`` has rank ≤ head_dim and
is never formed. Everything below is exact linear algebra on ``head_dim``-sized factors:

* Gram shortcut. ``⟨g, g'⟩_F = tr(W_Qᵀ W_K W_K'ᵀ W_Q') = Σ (W_K W_K'ᵀ) ∘ (W_Q W_Q'ᵀ)``, a sum over a
  ``head_dim × head_dim`` product: ``⟨g_L,h, g_L',h⟩`` for all L ≤ L' (batched over heads, the
  K-side product computed once per kv head and shared by its query heads) and, for adjacent
  layers only, the full head × head matrix ``⟨g_L,h, g_L+1,h'⟩`` (the head-permuted null needs
  the off-diagonal pairs). ``‖g‖² = ⟨g, g⟩ = Σ (W_K W_Kᵀ) ∘ (W_Q W_Qᵀ)`` — *not* the research
  script's ``‖W_K W_Qᵀ‖² = ⟨W_KᵀW_K, W_QᵀW_Q⟩`` (see :func:`seed_fro_sq`).
* Exact singular values / vectors. With ``W_Qᵀ = U_q R_q`` and ``W_Kᵀ = U_k R_k`` (QR of the
  ``hidden × head_dim`` matrices), ``g = U_k (R_k R_qᵀ) U_qᵀ``; the SVD ``R_k R_qᵀ = U S Vᵀ`` of
  the ``head_dim × head_dim`` core gives the singular values ``S`` of ``g``, its left (key-side)
  singular vectors ``U_k U`` and right (query-side) ones ``U_q V``.
* Signed eigenvalues of the symmetric part. ``g + gᵀ = Xᵀ J X`` with ``X = [W_Q; W_K]``
  (``2·hd × hidden``) and ``J = [[0, I], [I, 0]]``. With ``Xᵀ = W R`` (W orthonormal columns),
  ``g + gᵀ = W (R J Rᵀ) Wᵀ``, so its non-zero eigenvalues are those of the symmetric
  ``R J Rᵀ`` (the Jordan–Wielandt identity made symmetric so ``eigvalsh`` applies); the other
  ``hidden − 2·hd`` eigenvalues are 0. The research script's route, ``eig(J X Xᵀ)``, has the same
  non-zero spectrum (``eig(AB) = eig(BA)``) but needs a non-symmetric eigensolver.

How the R factors are computed: ``R`` of ``Aᵀ = U R`` is the (transposed) Cholesky factor of the
small Gram ``A Aᵀ`` (CholeskyQR), formed in float64 from the float32 weights — backward stable
for the spectra (absolute error ~1e-16·‖A‖²) and ~10× cheaper than Householder QR of the tall
``hidden × 2·hd`` matrix. Where the Gram is singular (``hidden < 2·hd``, rank-deficient or zero
weights) or badly conditioned (κ ≳ 1e4 estimated from R's diagonal, where CholeskyQR's singular
vectors would lose orthogonality) the batch falls back to Householder QR (``torch.linalg.qr``),
which gives the same ``R`` up to the signs of its rows (the spectra do not depend on those
signs). Singular vectors are ``Aᵀ (R⁻¹ V)`` (a triangular solve on the small factor), accurate to
~1e-16·κ(A)², or ``U V`` from the Householder U.

Statistics derived here (the claims in ``hypotheses/``):

* metric cosine ``cos(g, g') = ⟨g, g'⟩ / (‖g‖‖g'‖)``; scale-invariant per head (``W_Q → c W_Q``
  scales ``g`` by ``c``), invariant to a rotation of a head's inner dimension applied to both
  ``W_Q`` and ``W_K`` (``g`` unchanged), and to a common rotation of the residual basis
  (``g → O g Oᵀ`` in every layer). The sign of ``g`` is meaningful (it flips the logits).
* positive eigen-mass share ``s = Σ_{λ>0} λ / Σ |λ|`` over the eigenvalues of ``g + gᵀ``
  (L1 mass). Since ``Σ λ = tr(g + gᵀ) = 2·tr(g) = 2⟨W_Q,h, W_K,h⟩_F``,
  ``s = 1/2 + tr(g) / ‖g + gᵀ‖_*``. Flipping the sign of ``W_K`` (or ``W_Q``) of a head negates
  the spectrum, so ``s → 1 − s``: for any init whose distribution is symmetric under that flip
  (independent zero-mean Gaussian Q and K, the random twin) ``s`` is symmetric about 1/2 in
  distribution and ``E[s] = 1/2`` exactly. Scaling either factor by ``c > 0`` leaves ``s``
  unchanged.

Optional norm folding (``fold_norms``): qwen3, qwen3_moe and gemma3 apply an RMSNorm over
``head_dim`` to each head's query and key after the projection. Its gain is linear, so it folds
into the metric as ``W_Q,h ← diag(γ_q) W_Q,h`` and ``W_K,h ← diag(γ_k) W_K,h`` (the same gains for
every head); the RMS division is a positive per-token, per-head scalar, which changes no cosine,
sign or share. OLMo 2 and OLMoE normalise the whole q (and k) projection instead: one RMS over
all heads' rows and a gain per row, so head h folds its own slice ``γ_q[h·hd:(h+1)·hd]``; the
RMS is then a positive per-token scalar shared by the heads, and the same holds. Folding is on
by default where the architecture has q_norm/k_norm and is recorded in the result. (GPT-NeoX,
Phi-2 and GPT-2 have no q/k norm; Phi's optional q/k LayerNorms — centring and a bias, not a
gain — are not folded: the table does not map them.)

Memory and time (the streaming plan): weights are read layer by layer with ``Model.weight``.
The L ≤ L' Gram is computed in blocks: a block of ``b`` layers' q/k (float32, head-major) stays
resident while every later layer is streamed past it once; ``b`` is the largest number of layers
whose q+k fit in ``block_mb`` (default 512 MiB). Peak memory ≈ ``block_mb`` + one streamed layer
+ one layer's q/k in float64 (per-layer spectra) + a ``chunk``-column slice of the adjacent
head × head product; on Qwen3-4B shapes (36 layers, hidden 2560, 32 heads, 8 kv heads, hd 128:
50 MiB of q+k per layer) that is 10 layers per block, 4 blocks, 84 layer reads, and a measured
peak of 1.3 GB anonymous memory for the whole process (Python and torch included).
``gram_pairs="adjacent"`` instead reads each layer once and holds two.
Arithmetic: the all-pairs Gram costs ``L(L+1)/2 · 2·(H + KV)·hd²·hidden`` flops (2.2 TFLOP on
Qwen3-4B; it is the floor for exact all-pairs inner products of these factors: each pair needs
the ``hd × hd`` products of both sides), the adjacent head × head matrices
``(L−1)·2·(KV² + H·KV)·hd²·hidden`` (0.9 TFLOP; see :func:`cross_head_inner`), the per-layer
spectra ``L·2·(2H + KV)·hd²·hidden`` in float64 (0.2 TFLOP) plus batched ``hd``/``2·hd``-sized
SVDs and eigensolves. The cross-layer matmuls run in ``gram_dtype`` (float32 by default, TF32
disabled on GPU; relative error ~1e-8–1e-6 of ‖g‖‖g'‖) and their product-sums over ``hd`` rows in
float64; the per-layer quantities (‖g‖², spectra) are float64 throughout.
"""

from __future__ import annotations

import contextlib
from itertools import product as _product
from typing import Mapping

import numpy as np
import torch

from probes.errors import NotApplicable
from probes.progress import progress
from probes.small_lapack import small_lapack
from probes.evidence import Evidence, Matrix, Profile, require
from probes.phases import adjacent_pairs
from probes.stats import Z95, monte_carlo_p

PROBE_ID = "head-metric"
VERSION = "1"
DEFAULT_TOPK = 8
DEFAULT_BLOCK_MB = 512
NORM_FAMILIES = ("q_norm", "k_norm")
CHOLESKY_MAX_COND = 1e4


# ---------------------------------------------------------------------------------------------
# Pure maths on head-split weights: q [H, hd, n], k [KV, hd, n]; query head h reads kv head
# h // (H // KV). Any float dtype, any device.
# ---------------------------------------------------------------------------------------------
def split_heads(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """HF ``[num_heads·head_dim, hidden]`` projection → ``[num_heads, head_dim, hidden]``
    (head h = rows ``h·hd:(h+1)·hd``)."""
    rows, hidden = weight.shape
    if rows != num_heads * head_dim:
        raise ValueError(f"projection has {rows} rows, expected {num_heads}×{head_dim}")
    return weight.reshape(num_heads, head_dim, hidden)


def kv_index(num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """The kv head each query head reads: ``h // (num_heads // num_kv_heads)`` (repeat_kv)."""
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    return torch.arange(num_heads) // (num_heads // num_kv_heads)


def fold_gain(heads: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
    """``diag(gain) W_h`` for every head: an RMSNorm gain folded into the rows — one per
    ``head_dim`` entry shared by every head (qwen3, gemma3: the norm is over each head), or one
    per row of the whole projection (OLMo 2, OLMoE: ``num_heads·head_dim`` entries)."""
    if gain is None:
        return heads
    h, hd, _ = heads.shape
    if gain.numel() not in (hd, h * hd):
        raise ValueError(f"a q/k norm gain of {gain.numel()} entries fits neither head_dim {hd} "
                         f"nor the projection's {h}×{hd} rows")
    return heads * gain.to(heads.dtype).reshape(-1 if gain.numel() == h * hd else 1, hd, 1)


def _group(q: torch.Tensor, k: torch.Tensor) -> int:
    h, kv = q.shape[-3], k.shape[-3]
    if kv <= 0 or h % kv:
        raise ValueError(f"{h} query heads are not a multiple of {kv} kv heads")
    return h // kv


def block_inner(q_blk: torch.Tensor, k_blk: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                out_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``⟨g_a,h, g_b,h⟩`` for each layer ``a`` of a block and every head ``h`` → ``[B, H]``.

    ``q_blk [H, B, hd, n]`` and ``k_blk [KV, B, hd, n]`` hold B layers head-major; ``q [H, hd, n]``,
    ``k [KV, hd, n]`` is layer ``b``. Uses ``⟨g_a, g_b⟩ = Σ (K_a K_bᵀ) ∘ (Q_a Q_bᵀ)``: one batched
    matmul per side (the K side once per kv head), then a float64 product-sum per head.
    """
    h, b, hd, n = q_blk.shape
    kv = k_blk.shape[0]
    g = _group(q, k)
    qq = torch.bmm(q_blk.reshape(h, b * hd, n), q.transpose(1, 2))   # [H, B·hd, hd]
    kk = torch.bmm(k_blk.reshape(kv, b * hd, n), k.transpose(1, 2))  # [KV, B·hd, hd]
    qq = qq.to(out_dtype).view(kv, g, b, hd, hd)
    kk = kk.to(out_dtype).view(kv, 1, b, hd, hd)
    return (qq * kk).sum(dim=(-1, -2)).reshape(h, b).T


def metric_inner(q_a, k_a, q_b, k_b, out_dtype=torch.float64) -> torch.Tensor:
    """``⟨g_a,h, g_b,h⟩`` for every head ``h`` of two layers → ``[H]``."""
    return block_inner(q_a.unsqueeze(1), k_a.unsqueeze(1), q_b, k_b, out_dtype)[0]


def cross_head_inner(q_a, k_a, q_b, k_b, out_dtype=torch.float64,
                     chunk: int = 256) -> torch.Tensor:
    """``⟨g_a,h, g_b,h'⟩`` for every pair of heads of two layers → ``[H, H]`` (row h of layer a,
    column h' of layer b).

    With ``B = W_K,a,κ W_K,b,κ'ᵀ`` (κ, κ' the kv heads of h, h'; all of them in one
    ``(KV·hd)² · n`` matmul), ``⟨g_a,h, g_b,h'⟩ = Σ B ∘ (W_Q,a,h W_Q,b,h'ᵀ) = ⟨Bᵀ W_Q,a,h, W_Q,b,h'⟩_F``.
    ``T = Bᵀ W_Q,a,h`` (``hd × n``) depends on h and κ' only, so it is formed ``H·KV`` times
    (``2·H·KV·hd²·n`` flops) and each entry is then one ``hd·n`` dot product, instead of the
    ``2·(H·hd)²·n`` of forming every ``W_Q,a,h W_Q,b,h'ᵀ``: ``H/KV`` times fewer flops (4× on
    Qwen3-4B, 8× on Qwen3-32B). T is formed ``chunk`` hidden columns at a time so it stays in
    cache (whole, its writes made the product memory-bound: 2× slower on CPU); the dots are
    summed over columns in the weights' dtype per (kv head, row of T) — ≤ ``chunk`` terms per
    chunk — and over rows of T in ``out_dtype``.
    """
    h, hd, n = q_a.shape
    kv = k_a.shape[0]
    g = _group(q_a, k_a)
    kk = (k_a.reshape(kv * hd, n) @ k_b.reshape(kv * hd, n).T).view(kv, hd, kv * hd)
    q_a = q_a.reshape(kv, g, hd, n)
    # [KV'·hd, n, g']: one copy, so each chunk of columns below is a view
    q_b = q_b.reshape(kv, g, hd, n).permute(0, 2, 3, 1).reshape(kv * hd, n, g)
    out = torch.empty(kv, g, kv, g, dtype=out_dtype, device=q_a.device)
    for kappa in range(kv):                                           # kv head of the rows h
        b_t = kk[kappa].T.contiguous()                                # [KV'·hd, hd]: Bᵀ, all κ'
        acc = torch.zeros(kv * hd, g, g, dtype=q_a.dtype, device=q_a.device)
        for s in range(0, n, chunk):
            t = torch.matmul(b_t, q_a[kappa, :, :, s:s + chunk])     # [g, KV'·hd, c]: T
            acc += torch.bmm(t.transpose(0, 1), q_b[:, s:s + chunk])  # [KV'·hd, g, g']
        out[kappa] = acc.to(out_dtype).view(kv, hd, g, g).sum(1).transpose(0, 1)
    return out.reshape(h, h)


def seed_fro_sq(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The research script's ``fro_sq``: ``‖W_K,h W_Q,hᵀ‖²_F = ⟨W_KᵀW_K, W_QᵀW_Q⟩`` per head.

    Kept only to document the difference: it is not ``‖g‖² = ‖W_Kᵀ W_Q‖² = ⟨W_K W_Kᵀ,
    W_Q W_Qᵀ⟩`` in general (equal e.g. when W_Q has orthonormal rows and W_K's rows lie in
    their span; on SmolLM2-135M they differ by a median 73 %).
    """
    g = _group(q, k)
    kq = k.repeat_interleave(g, 0) @ q.transpose(1, 2)  # W_K,h W_Q,hᵀ  [H, hd, hd]
    return (kq.double() ** 2).sum(dim=(-1, -2))


def _cholesky_r(gram: torch.Tensor, method: str) -> torch.Tensor | None:
    """``R = chol(gram)ᵀ`` when the Gram is numerically positive definite (and, for ``"auto"``,
    well enough conditioned); ``None`` otherwise."""
    chol, info = torch.linalg.cholesky_ex(gram)
    diag = torch.diagonal(chol, dim1=-2, dim2=-1)
    ok = bool((info == 0).all()) and bool(torch.isfinite(chol).all()) and bool((diag > 0).all())
    # CholeskyQR's U = rowsᵀR⁻¹ loses orthogonality like ε·κ²: past κ ≳ 1e4 (estimated from R's
    # diagonal) "auto" uses Householder, whose error grows like ε·κ
    if ok and method == "auto":
        ok = bool((diag.amax(-1) <= CHOLESKY_MAX_COND * diag.amin(-1)).all())
    return chol.transpose(-1, -2) if ok else None


def qr_factor(rows, gram: torch.Tensor | None = None,
              method: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(R, U)`` with ``rowsᵀ = U R`` (U orthonormal columns, R ``[..., min(p, n), p]``) for
    ``rows [..., p, n]`` (a tensor, or a zero-argument callable building it only if needed).

    ``method="cholesky"`` (CholeskyQR: ``R = chol(rows rowsᵀ)ᵀ``, U not formed → ``None``; needs
    the Gram positive definite), ``"householder"`` (``torch.linalg.qr``, U returned), or
    ``"auto"``: Cholesky when it succeeds for the whole batch, Householder otherwise. The two R
    agree up to the signs of their rows.
    """
    if method not in ("auto", "cholesky", "householder"):
        raise ValueError(f"unknown QR method {method!r}")
    if method != "householder":
        if gram is None:
            rows = rows() if callable(rows) else rows
            gram = rows @ rows.transpose(-1, -2)
        # more rows than columns: the Gram is singular, Cholesky cannot apply (a lazy ``rows``
        # callable is the caller's promise that it has at least as many columns as rows)
        tall = isinstance(rows, torch.Tensor) and rows.shape[-2] > rows.shape[-1]
        r = None if tall else _cholesky_r(gram, method)
        if r is not None:
            return r, None
        if method == "cholesky":
            raise np.linalg.LinAlgError("Gram matrix is singular or not positive definite")
    rows = rows() if callable(rows) else rows
    u, r = torch.linalg.qr(rows.transpose(-1, -2), mode="reduced")
    return r, u


def r_factor(rows: torch.Tensor, gram: torch.Tensor | None = None,
             method: str = "auto") -> torch.Tensor:
    """``R`` of ``rowsᵀ = U R`` (see :func:`qr_factor`)."""
    return qr_factor(rows, gram, method)[0]


def _orth_vectors(rows: torch.Tensor, r: torch.Tensor, u: torch.Tensor | None,
                  coeffs: torch.Tensor) -> torch.Tensor:
    """``(U @ coeffs)ᵀ`` → ``[H, k, n]`` for ``rowsᵀ = U R``, with ``rows [KV, p, n]`` shared by
    groups of ``H/KV`` consecutive rows of ``r [H, p, p]``, ``u [KV, n, p]`` (or None) and
    ``coeffs [H, p, k]``. Without U it is ``(R⁻¹ coeffs)ᵀ rows``: one contiguous ``[g·k, p]·[p, n]``
    product per kv head (the strided ``rowsᵀ·[p, k]`` form ran at ~1 GFLOP/s on CPU, 0.3 s of each
    Qwen3-4B layer, and indexing rows per head copied them)."""
    h, p, k = coeffs.shape
    kv = rows.shape[0]
    if u is not None:
        return (u[kv_index(h, kv).to(u.device)] @ coeffs).transpose(-1, -2)
    solved = torch.linalg.solve_triangular(r, coeffs, upper=True)          # [H, p, k]
    solved = solved.reshape(kv, h // kv, p, k).permute(0, 1, 3, 2).reshape(kv, -1, p)
    return (solved @ rows).reshape(h, k, rows.shape[-1])


def layer_spectra(q: torch.Tensor, k: torch.Tensor, topk: int = DEFAULT_TOPK,
                  method: str = "auto") -> dict[str, torch.Tensor]:
    """Per-head quantities of one layer, in float64.

    Returns ``norm_sq [H]`` (‖g‖²), ``trace [H]`` (tr g = ⟨W_Q,h, W_K,h⟩), ``singular_values
    [H, r]`` (descending, r = min(hd, n): all non-zero ones), ``left_vectors [H, k, n]`` (key-side,
    ``g v_i = σ_i u_i``), ``right_vectors [H, k, n]`` (query-side), ``sym_eigenvalues [H, m]``
    (eigenvalues of g + gᵀ, descending, m = min(2·hd, n): all non-zero ones).
    """
    q = q.double()
    k = k.double()
    h, hd, n = q.shape
    kv = k.shape[0]
    g = _group(q, k)
    p_q = q @ q.transpose(1, 2)                                  # W_Q W_Qᵀ per head
    p_k = k @ k.transpose(1, 2)                                  # W_K W_Kᵀ per kv head
    c_qk = (q.reshape(kv, g * hd, n) @ k.transpose(1, 2)).reshape(h, hd, hd)  # W_Q,h W_K,hᵀ
    kv_of = kv_index(h, kv).to(q.device)
    p_k_h = p_k[kv_of]
    norm_sq = (p_q * p_k_h).sum(dim=(-1, -2))
    trace = torch.diagonal(c_qk, dim1=-2, dim2=-1).sum(-1)
    topk = max(0, min(topk, hd, n))
    x_gram = torch.cat([torch.cat([p_q, c_qk], 2),
                        torch.cat([c_qk.transpose(1, 2), p_k_h], 2)], 1)

    def singular():  # g = U_k (R_k R_qᵀ) U_qᵀ: the SVD of the hd × hd core
        r_q, u_q = qr_factor(q, p_q, method)
        r_k, u_k = qr_factor(k, p_k, method)
        u, s, vh = torch.linalg.svd(r_k[kv_of] @ r_q.transpose(1, 2))
        right = _orth_vectors(q, r_q, u_q, vh.transpose(1, 2)[..., :topk])
        left = _orth_vectors(k, r_k[kv_of], u_k, u[..., :topk])
        return s, left, right

    def symmetric():  # eigenvalues of g + gᵀ: eigvalsh(R J Rᵀ), Xᵀ = W R, X = [W_Q; W_K]
        r_x = r_factor(lambda: torch.cat([q, k[kv_of]], 1), x_gram,
                       method if 2 * hd <= n else "householder")
        return torch.linalg.eigvalsh(_jordan_wielandt(r_x, hd)).flip(-1)

    with small_lapack(q.device) as pool:
        sv_job, eig_job = pool.submit(singular), pool.submit(symmetric)
        s, left, right = sv_job.result()
        eig = eig_job.result()
    return {"norm_sq": norm_sq, "trace": trace, "singular_values": s,
            "left_vectors": left, "right_vectors": right, "sym_eigenvalues": eig}


def _jordan_wielandt(r: torch.Tensor, hd: int) -> torch.Tensor:
    """``R J Rᵀ`` with ``J = [[0, I], [I, 0]]`` (hd blocks): ``A Bᵀ + B Aᵀ`` for R = [A | B]."""
    a, b = r[..., :hd], r[..., hd:]
    m = a @ b.transpose(-1, -2)
    return m + m.transpose(-1, -2)


def positive_mass_share(eigenvalues) -> np.ndarray:
    """``Σ_{λ>0} λ / Σ |λ|`` along the last axis (L1 eigen-mass); NaN where all λ are 0."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    total = np.abs(ev).sum(-1)
    pos = np.clip(ev, 0, None).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, pos / np.where(total > 0, total, 1), np.nan)


# ---------------------------------------------------------------------------------------------
# Model-level probe
# ---------------------------------------------------------------------------------------------
def has_qk_norms(model) -> bool:
    return all(f in model.families for f in NORM_FAMILIES)


def load_heads(model, layer: int, fold_norms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's ``q [H, hd, n]`` and ``k [KV, hd, n]`` in float32, gains folded if asked."""
    lay = model.layout
    wq, wk = model.weight(layer, "q_proj"), model.weight(layer, "k_proj")
    if wq is None or wk is None:
        raise NotApplicable(f"layer {layer} has no separate q_proj/k_proj: no per-head metric")
    q = split_heads(wq.float(), lay.num_heads, lay.head_dim)
    k = split_heads(wk.float(), lay.num_kv_heads, lay.head_dim)
    if fold_norms:
        q = fold_gain(q, model.weight(layer, "q_norm"))
        k = fold_gain(k, model.weight(layer, "k_norm"))
    return q, k


@contextlib.contextmanager
def _exact_matmul(device: str):
    """fp32 matmuls stay fp32 on GPU (TF32 off) for the duration."""
    if not str(device).startswith("cuda"):
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


GRAM_PAIRS = ("all", "adjacent")


def params(model, fold_norms: bool | None = None, topk: int = DEFAULT_TOPK,
           gram_dtype: str = "float32", gram_pairs: str = "all") -> dict:
    """The cache parameters of :func:`compute` (fold resolved against the architecture)."""
    if gram_pairs not in GRAM_PAIRS:
        raise ValueError(f"gram_pairs must be one of {GRAM_PAIRS}, not {gram_pairs!r}")
    fold = has_qk_norms(model) if fold_norms is None else bool(fold_norms and has_qk_norms(model))
    return {"fold_norms": fold, "topk": int(topk), "gram_dtype": gram_dtype,
            "gram_pairs": gram_pairs}


def compute(model, *, fold_norms: bool | None = None, topk: int = DEFAULT_TOPK,
            device: str = "cpu", block_mb: float = DEFAULT_BLOCK_MB,
            gram_dtype: str = "float32", gram_pairs: str = "all") -> dict:
    """Stream a model's q/k weights once per block and return the head-metric arrays.

    Result (numpy): ``gram [L, L, H]`` = ⟨g_L,h, g_L',h⟩ (symmetric; diagonal = ‖g‖², float64);
    ``cross_adjacent [L−1, H, H]`` = ⟨g_L,h, g_L+1,h'⟩; ``trace [L, H]``; ``singular_values
    [L, H, r]``; ``sym_eigenvalues [L, H, m]``; ``left_vectors``/``right_vectors [L, H, k, n]``
    (float32, unit); ``kv_of [H]``; ``fold_norms`` (bool), ``topk``, ``gram_dtype``,
    ``gram_pairs``, ``nonfinite_layers`` (layers whose q/k hold NaN/Inf: their entries are NaN).

    ``gram_pairs="adjacent"`` computes the Gram only on the diagonal and for adjacent layers
    (the diagonal of ``cross_adjacent``; other entries NaN) in one pass that reads each layer
    once: the claims need no more, and it skips the ``L(L+1)/2``-pair part that dominates the
    cost at depth (2.2 of 3.3 TFLOP on Qwen3-4B shapes, ~25 TFLOP on Qwen3-32B).
    See the module docstring for the maths, memory bound and cost.
    """
    lay = model.layout
    prm = params(model, fold_norms, topk, gram_dtype, gram_pairs)
    fold = prm["fold_norms"]
    dt = {"float32": torch.float32, "float64": torch.float64}[gram_dtype]
    n_l, h, kv, hd, n = lay.num_layers, lay.num_heads, lay.num_kv_heads, lay.head_dim, lay.hidden
    r, m, kk = min(hd, n), min(2 * hd, n), max(0, min(topk, hd, n))
    per_layer = (h + kv) * hd * n * (4 if dt == torch.float32 else 8)
    block = max(1, min(n_l, int(block_mb * 2**20 // max(per_layer, 1))))

    gram = np.full((n_l, n_l, h), np.nan)
    cross = np.full((max(n_l - 1, 0), h, h), np.nan)
    trace = np.full((n_l, h), np.nan)
    svals = np.full((n_l, h, r), np.nan)
    eigs = np.full((n_l, h, m), np.nan)
    left = np.full((n_l, h, kk, n), np.nan, dtype=np.float32)
    right = np.full((n_l, h, kk, n), np.nan, dtype=np.float32)
    bad: set[int] = set()

    checked: set[int] = set()
    loads = n_l if gram_pairs == "adjacent" else sum(n_l - s for s in range(0, n_l, block))
    bar = progress(loads, "head metric (q/k layer reads)", unit="layer")

    def load(layer):
        bar.update(1)
        q, k = load_heads(model, layer, fold)
        if layer not in checked:  # layers streamed past later blocks are re-read: check once
            checked.add(layer)
            if not (torch.isfinite(q).all() and torch.isfinite(k).all()):
                bad.add(layer)
        if layer in bad:
            q, k = torch.zeros_like(q), torch.zeros_like(k)
        return q.to(device=device, dtype=dt), k.to(device=device, dtype=dt)

    def to_np(t):
        return t.detach().cpu().numpy()

    def put_spectra(layer, q, k):
        spec = layer_spectra(q, k, kk)
        gram[layer, layer] = to_np(spec["norm_sq"])
        trace[layer] = to_np(spec["trace"])
        svals[layer] = to_np(spec["singular_values"])
        eigs[layer] = to_np(spec["sym_eigenvalues"])
        left[layer] = to_np(spec["left_vectors"])
        right[layer] = to_np(spec["right_vectors"])

    with torch.no_grad(), _exact_matmul(device):
        if gram_pairs == "adjacent":  # one pass, each layer read once
            prev = None
            for layer in range(n_l):
                q, k = load(layer)
                put_spectra(layer, q, k)
                if prev is not None:
                    cross[layer - 1] = to_np(cross_head_inner(*prev, q, k))
                    gram[layer - 1, layer] = np.diagonal(cross[layer - 1])
                prev = (q, k)
            del prev
        else:  # all pairs: blocks of layers, every later layer streamed past each
            for start in range(0, n_l, block):
                layers = list(range(start, min(start + block, n_l)))
                q_blk = torch.empty(h, len(layers), hd, n, dtype=dt, device=device)
                k_blk = torch.empty(kv, len(layers), hd, n, dtype=dt, device=device)
                for i, layer in enumerate(layers):
                    q, k = load(layer)
                    put_spectra(layer, q, k)
                    if i > 0:
                        vals = to_np(block_inner(q_blk[:, :i], k_blk[:, :i], q, k))
                        gram[layers[:i], layer] = vals
                        cross[layer - 1] = to_np(cross_head_inner(q_blk[:, i - 1],
                                                                  k_blk[:, i - 1], q, k))
                    q_blk[:, i] = q
                    k_blk[:, i] = k
                    del q, k
                for later in range(layers[-1] + 1, n_l):
                    q, k = load(later)
                    gram[layers, later] = to_np(block_inner(q_blk, k_blk, q, k))
                    if later == layers[-1] + 1:
                        cross[later - 1] = to_np(cross_head_inner(q_blk[:, -1], k_blk[:, -1],
                                                                  q, k))
                    del q, k
                del q_blk, k_blk

    bar.close()
    iu = np.triu_indices(n_l, 1)
    gram[iu[1], iu[0]] = gram[iu]
    for layer in bad:
        for arr in (trace, svals, eigs, left, right):
            arr[layer] = np.nan
        gram[layer, :] = np.nan
        gram[:, layer] = np.nan
        if layer < n_l - 1:
            cross[layer] = np.nan
        if layer > 0:
            cross[layer - 1] = np.nan
    return {"gram": gram, "cross_adjacent": cross, "trace": trace, "singular_values": svals,
            "sym_eigenvalues": eigs, "left_vectors": left, "right_vectors": right,
            "kv_of": kv_index(h, kv).numpy().astype(np.int64),
            "nonfinite_layers": sorted(bad),
            "layers_per_block": block if gram_pairs == "all" else 1, **prm}


# ---------------------------------------------------------------------------------------------
# Derived arrays (numpy in, numpy out)
# ---------------------------------------------------------------------------------------------
def metric_norms(result: Mapping) -> np.ndarray:
    """‖g_L,h‖ ``[L, H]`` (square root of the Gram diagonal)."""
    gram = np.asarray(result["gram"])
    return np.sqrt(np.clip(np.einsum("llh->lh", gram), 0, None))


def metric_cosines(result: Mapping) -> np.ndarray:
    """cos(g_L,h, g_L',h) ``[L, L, H]``; NaN where a metric is zero."""
    gram = np.asarray(result["gram"])
    nrm = metric_norms(result)
    with np.errstate(invalid="ignore", divide="ignore"):
        return gram / (nrm[:, None, :] * nrm[None, :, :])


def adjacent_cross_cosines(result: Mapping) -> np.ndarray:
    """cos(g_L,h, g_L+1,h') ``[L−1, H, H]`` (diagonal: matched heads)."""
    cross = np.asarray(result["cross_adjacent"])
    nrm = metric_norms(result)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / (nrm[:-1, :, None] * nrm[1:, None, :])


def positive_shares(result: Mapping) -> np.ndarray:
    """Positive eigen-mass share of g + gᵀ per layer and head ``[L, H]``."""
    return positive_mass_share(result["sym_eigenvalues"])


def head_table(result: Mapping):
    """A pandas DataFrame, one row per (layer, head): metric norm, trace, top singular value,
    positive share, matched-head cosine with the next layer."""
    import pandas as pd
    nrm = metric_norms(result)
    n_l, h = nrm.shape
    adj = np.full((n_l, h), np.nan)
    if n_l > 1:
        adj[:-1] = np.einsum("lhh->lh", adjacent_cross_cosines(result))
    layer, head = np.meshgrid(np.arange(n_l), np.arange(h), indexing="ij")
    return pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(),
                         "kv_head": np.broadcast_to(np.asarray(result["kv_of"]), (n_l, h)).ravel(),
                         "metric_norm": nrm.ravel(), "trace": np.asarray(result["trace"]).ravel(),
                         "top_singular_value": np.asarray(result["singular_values"])[..., 0].ravel(),
                         "positive_share": positive_shares(result).ravel(),
                         "next_layer_cos": adj.ravel()})


# ---------------------------------------------------------------------------------------------
# Claims' evidence
# ---------------------------------------------------------------------------------------------
def random_derangements(rng: np.random.Generator, count: int, n: int) -> np.ndarray:
    """``count`` uniform random derangements of ``range(n)`` (rejection sampling; n ≥ 2)."""
    if n < 2:
        raise ValueError("no derangement of fewer than 2 elements")
    out = np.empty((count, n), dtype=np.int64)
    filled = 0
    while filled < count:
        want = max(16, int((count - filled) * 3))  # P(derangement) → 1/e
        perms = rng.permuted(np.broadcast_to(np.arange(n), (want, n)), axis=1)
        ok = perms[(perms != np.arange(n)).all(axis=1)]
        take = min(len(ok), count - filled)
        out[filled:filled + take] = ok[:take]
        filled += take
    return out


def _profiles_adjacent(result: Mapping):
    cos = adjacent_cross_cosines(result)
    n_pairs, h, _ = cos.shape
    matched = np.einsum("phh->p", cos) / h
    off = (cos.sum(axis=(1, 2)) - np.einsum("phh->p", cos)) / max(h * (h - 1), 1)
    return matched, off


def adjacent_vs_head_permuted(result: Mapping, phases: Mapping, phase: str, *, seed: int = 0,
                              draws: int = 4000, min_pairs: int = 1,
                              min_heads: int = 2) -> Evidence:
    """Matched heads' metric cosine for adjacent layers vs the head-permuted null.

    Statistic: mean over the phase's adjacent pairs (L, L+1) and heads h of
    cos(g_L,h, g_L+1,h). Null: the same mean with layer L+1's heads relabelled by an independent
    uniform derangement π_p per pair (π(h) ≠ h for every h): the null mean is exact (the mean of
    the off-diagonal cosines cos(g_L,h, g_L+1,h'), h ≠ h'), its sd and the p-value come from
    ``draws`` seeded derangement draws (p with the +1 correction). Valid under exchangeable head
    labels (a head permutation is a gauge of the layer); with GQA the null includes pairs that
    share a kv index, which only makes it conservative. Effect = observed − null mean; interval =
    effect ± 1.96·null sd. N/A (:func:`probes.evidence.require`) below ``min_pairs`` adjacent
    pairs in the phase or ``min_heads`` heads per layer (one head has no derangement).
    """
    pairs = adjacent_pairs(phases, phase)
    require(len(pairs), max(min_pairs, 1), "adjacent pair", f"on phase {phase}")
    cos = adjacent_cross_cosines(result)
    h = cos.shape[-1]
    require(h, max(min_heads, 2), "head per layer", "(no head-permuted null)" if h < 2 else "")
    sub = cos[pairs]
    if not np.isfinite(sub).all():
        raise NotApplicable(f"phase {phase}: a head metric is zero or non-finite "
                            f"(layers {result.get('nonfinite_layers') or 'with zero q/k'})")
    observed = float(np.einsum("phh->", sub) / (len(pairs) * h))
    null_mean = float((sub.sum() - np.einsum("phh->", sub)) / (len(pairs) * h * (h - 1)))
    rng = np.random.default_rng(seed)
    perms = random_derangements(rng, draws * len(pairs), h).reshape(draws, len(pairs), h)
    pair_idx = np.arange(len(pairs))[None, :, None]
    head_idx = np.arange(h)[None, None, :]
    samples = sub[pair_idx, head_idx, perms].mean(axis=(1, 2))
    sd = float(samples.std(ddof=1))
    eff = observed - null_mean
    matched, off = _profiles_adjacent(result)
    n_l = len(matched) + 1
    cos_ll = metric_cosines(result)
    return Evidence(
        observed=observed, null_kind="head-permuted (derangement per adjacent pair)",
        null_mean=null_mean, null_sd=sd, effect=eff, ci=(eff - Z95 * sd, eff + Z95 * sd),
        p=monte_carlo_p(observed, samples, "greater"),
        profile=Profile(list(range(n_l - 1)), matched.tolist(), off.tolist(),
                        "matched-head metric cosine, layer L vs L+1 (null: other heads)"),
        # the L × L view exists only where every pair was computed (gram_pairs="all")
        matrix=(Matrix(list(range(n_l)), np.nanmean(cos_ll, axis=-1).tolist(),
                       "metric cosine cos(g_L,h, g_L',h), mean over heads")
                if result.get("gram_pairs", "all") == "all" else None),
        extra={"pairs": [int(p) for p in pairs], "heads": int(h), "null_draws": int(draws),
               "fold_norms": bool(result.get("fold_norms", False)),
               "metric_norm_profile": Profile(list(range(n_l)),
                                              metric_norms(result).mean(-1).tolist(), None,
                                              "‖g‖_F per layer, mean over heads").to_json()})


def positive_share_vs_half(result: Mapping, phases: Mapping, phase: str, *, seed: int = 0,
                           draws: int = 4000, exact_max_heads: int = 12,
                           min_layers: int = 1) -> Evidence:
    """Mean positive eigen-mass share of g + gᵀ over the phase's layers and heads vs 1/2.

    Null: per-head sign flip. Negating one head's W_Q maps its spectrum λ → −λ and its share
    s → 1 − s (and touches no other head), so under "no sign preference" (exactly true for the
    random-init twin) the statistic's null distribution is that of 1/2 + mean(ε_i (s_i − 1/2))
    with independent signs ε_i = ±1: null mean 1/2 exactly, null sd = √(Σ (s_i − 1/2)²)/N
    exactly; p from all 2^N sign patterns when N ≤ ``exact_max_heads``, else from ``draws``
    seeded draws (+1 correction). Effect = observed − 1/2; interval = effect ± 1.96·null sd.
    """
    layers = list(phases.get(phase, ()))
    require(len(layers), max(min_layers, 1), "layer", f"on phase {phase}")
    shares = positive_shares(result)[layers]
    if not np.isfinite(shares).all():
        raise NotApplicable(f"phase {phase}: a head metric is zero or non-finite")
    d = (shares - 0.5).ravel()
    n = d.size
    observed = float(shares.mean())
    sd = float(np.sqrt((d ** 2).sum()) / n)
    if n <= exact_max_heads:
        signs = np.array(list(_product((1.0, -1.0), repeat=n)))
        samples = 0.5 + signs @ d / n
        p = float(np.mean(samples >= observed - 1e-12))
        kind, count = "per-head sign flip (exact enumeration)", len(samples)
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((-1.0, 1.0), size=(draws, n))
        samples = 0.5 + signs @ d / n
        p = monte_carlo_p(observed, samples, "greater")
        kind, count = "per-head sign flip (Monte Carlo)", draws
    eff = observed - 0.5
    share_by_layer = np.nanmean(positive_shares(result), axis=-1)
    n_l = share_by_layer.size
    return Evidence(
        observed=observed, null_kind=kind, null_mean=0.5, null_sd=sd, effect=eff,
        ci=(eff - Z95 * sd, eff + Z95 * sd), p=p,
        profile=Profile(list(range(n_l)), share_by_layer.tolist(), [0.5] * n_l,
                        "positive eigen-mass share of g + gᵀ, mean over heads"),
        extra={"heads": int(n), "null_draws": int(count),
               "fold_norms": bool(result.get("fold_norms", False)),
               "metric_norm_profile": Profile(list(range(n_l)),
                                              metric_norms(result).mean(-1).tolist(), None,
                                              "‖g‖_F per layer, mean over heads").to_json()})
