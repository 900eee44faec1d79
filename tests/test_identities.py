"""Property tests of the linear-algebra identities the head-metric probe relies on (SPEC §5.3),
each against a dense float64 computation, over random shapes: query heads = kv heads × group
with any group size, head_dim unrelated to hidden/heads, hidden both above and below
heads·head_dim (and below head_dim and 2·head_dim, where the factorisations are rank-deficient).

Every identity runs on ≥ 200 generated examples and must hold to 1e-6 relative (the numbers
reach ~1e-13). The two checks against transformers' own attention modules are bounded by their
float32 softmax/RMSNorm: bounds on probabilities derived from float32 rounding
(``tests/tolerance.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from probes import head_metric as hm
from tests import tolerance as tol

N_EXAMPLES = 200
REL = 1e-6  # float64 identities (they reach ≈ 1e-13): 1e7 of room for ill-conditioned draws
SETTINGS = settings(max_examples=N_EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- generated shapes and weights ----------------------------------------------------------------
@st.composite
def head_shapes(draw, max_hidden=20):
    """(H, KV, hd, n, seed): KV ∈ 1..3, group ∈ 1..3, hd ∈ 1..6, hidden n ∈ 1..max_hidden."""
    kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    hd = draw(st.integers(1, 6))
    n = draw(st.integers(1, max_hidden))
    seed = draw(st.integers(0, 2**32 - 1))
    return kv * group, kv, hd, n, seed


def weights(h, kv, hd, n, seed, layers=1):
    """Per layer q [H, hd, n], k [KV, hd, n] in float64; rows of uneven scale (not orthonormal)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        q = rng.standard_normal((h, hd, n)) * rng.uniform(0.2, 3.0, (h, hd, 1))
        k = rng.standard_normal((kv, hd, n)) * rng.uniform(0.2, 3.0, (kv, hd, 1))
        out.append((torch.from_numpy(q), torch.from_numpy(k)))
    return out


def dense_metrics(q, k):
    """g_h = W_K,kv(h)ᵀ W_Q,h formed densely, float64 numpy [H, n, n]."""
    kv_of = hm.kv_index(q.shape[0], k.shape[0])
    return np.stack([(k[kv_of[h]].T @ q[h]).numpy() for h in range(q.shape[0])])


def assert_rel(actual, expected, rel=REL, scale=None):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    ref = scale if scale is not None else max(np.abs(expected).max(initial=0.0), 1e-300)
    err = np.abs(actual - expected).max(initial=0.0)
    assert err <= rel * ref, f"max error {err:.3g} > {rel:g} × {ref:.3g}"


def padded_desc(values, length):
    """Values padded with zeros to ``length``, sorted descending (the rest of a spectrum is 0)."""
    v = np.asarray(values, float)
    return np.sort(np.concatenate([v, np.zeros(length - v.size)]))[::-1]


# -- Gram shortcut -------------------------------------------------------------------------------
@SETTINGS
@given(head_shapes(), st.integers(1, 3))
def test_gram_shortcut_equals_dense_frobenius_inner(shape, block):
    """⟨g_a,h, g_b,h⟩_F = Σ (K_a K_bᵀ) ∘ (Q_a Q_bᵀ), for a block of layers against one layer,
    and ⟨g_a,h, g_b,h'⟩ for every head pair."""
    h, kv, hd, n, seed = shape
    layers = weights(h, kv, hd, n, seed, layers=block + 1)
    q_b, k_b = layers[-1]
    g_b = dense_metrics(q_b, k_b)
    q_blk = torch.stack([q for q, _ in layers[:-1]], 1)
    k_blk = torch.stack([k for _, k in layers[:-1]], 1)
    got = hm.block_inner(q_blk, k_blk, q_b, k_b).numpy()
    dense = np.stack([np.einsum("hij,hij->h", dense_metrics(q, k), g_b) for q, k in layers[:-1]])
    norms_b = np.sqrt(np.einsum("hij,hij->h", g_b, g_b))
    scale = max(np.sqrt(np.einsum("hij,hij->h", dense_metrics(q, k), dense_metrics(q, k)).max())
                for q, k in layers[:-1]) * norms_b.max()  # cancellation is relative to ‖g_a‖‖g_b‖
    assert_rel(got, dense, scale=scale + 1e-300)
    q_a, k_a = layers[0]
    cross = hm.cross_head_inner(q_a, k_a, q_b, k_b).numpy()
    assert_rel(cross, np.einsum("aij,bij->ab", dense_metrics(q_a, k_a), g_b))
    # T formed a few hidden columns at a time (the CPU path's chunking) gives the same matrix
    assert_rel(hm.cross_head_inner(q_a, k_a, q_b, k_b, chunk=3).numpy(), cross,
               scale=np.abs(cross).max())
    assert_rel(np.diag(cross), hm.metric_inner(q_a, k_a, q_b, k_b).numpy(),
               scale=np.abs(cross).max())


# -- ‖g‖² is the Gram diagonal, not the research script's fro_sq ---------------------------------
@SETTINGS
@given(head_shapes())
def test_norm_is_gram_diagonal_and_seed_quantity_is_another(shape):
    h, kv, hd, n, seed = shape
    ((q, k),) = weights(h, kv, hd, n, seed)
    g = dense_metrics(q, k)
    norm_sq = np.einsum("hij,hij->h", g, g)
    assert_rel(hm.layer_spectra(q, k)["norm_sq"].numpy(), norm_sq)
    assert_rel(hm.metric_inner(q, k, q, k).numpy(), norm_sq)
    # the seed stored ‖W_K W_Qᵀ‖² = ⟨W_KᵀW_K, W_QᵀW_Q⟩ (hidden-space products), not ⟨W_K W_Kᵀ, W_Q W_Qᵀ⟩
    kv_of = hm.kv_index(h, kv)
    seed_q = np.array([np.sum((k[kv_of[i]] @ q[i].T).numpy() ** 2) for i in range(h)])
    assert_rel(hm.seed_fro_sq(q, k).numpy(), seed_q)


def test_seed_fro_sq_differs_from_metric_norm_unless_rows_orthonormal():
    """The documented difference: for a head with hidden 3, hd 2 the two quantities disagree;
    they agree when W_Q is square orthogonal (then both equal ‖W_K‖²)."""
    q = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], dtype=torch.float64)
    k = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 3.0]]], dtype=torch.float64)
    metric = float(hm.metric_inner(q, k, q, k)[0])   # ‖KᵀQ‖² = ⟨KKᵀ, QQᵀ⟩ = 2·1 + 9·4 = 38
    seed = float(hm.seed_fro_sq(q, k)[0])            # ‖KQᵀ‖² = 1 + 4 = 5
    assert metric == pytest.approx(38.0) and seed == pytest.approx(5.0)
    rot = torch.from_numpy(scipy.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0])
    k3 = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 3)))
    assert float(hm.metric_inner(rot[None], k3, rot[None], k3)[0]) == pytest.approx(
        float(hm.seed_fro_sq(rot[None], k3)[0]))


# -- exact singular values and vectors ------------------------------------------------------------
@SETTINGS
@given(head_shapes())
def test_qr_core_gives_singular_values_and_vectors(shape):
    h, kv, hd, n, seed = shape
    ((q, k),) = weights(h, kv, hd, n, seed)
    r = min(hd, n)
    spec = hm.layer_spectra(q, k, topk=r)
    g = dense_metrics(q, k)
    s = spec["singular_values"].numpy()
    u = spec["left_vectors"].numpy()    # [H, r, n]
    v = spec["right_vectors"].numpy()
    for i in range(h):
        scale = np.linalg.norm(g[i], 2)
        assert_rel(s[i], np.linalg.svd(g[i], compute_uv=False)[:r], scale=scale)
        # vectors reconstruct g and satisfy g v = σ u (only where σ > 0 are they determined)
        assert_rel(np.einsum("j,ja,jb->ab", s[i], u[i], v[i]), g[i], scale=scale)
        keep = s[i] > 1e-9 * max(scale, 1e-300)
        assert_rel((g[i] @ v[i][keep].T).T, s[i][keep, None] * u[i][keep], scale=scale)
        assert_rel(u[i][keep] @ u[i][keep].T, np.eye(keep.sum()), scale=1.0)
        assert_rel(v[i][keep] @ v[i][keep].T, np.eye(keep.sum()), scale=1.0)


# -- signed eigenvalues of g + gᵀ -----------------------------------------------------------------
def _jw_matrix(hd):
    z, i = np.zeros((hd, hd)), np.eye(hd)
    return np.block([[z, i], [i, z]])


@SETTINGS
@given(head_shapes())
def test_jordan_wielandt_symmetric_route_equals_dense_and_seed_route(shape):
    """eigvalsh(R J Rᵀ) = the non-zero eigenvalues of g + gᵀ (dense eigvalsh) = the eigenvalues
    of the seed's non-symmetric J·X·Xᵀ (np.linalg.eigvals, real up to rounding)."""
    h, kv, hd, n, seed = shape
    ((q, k),) = weights(h, kv, hd, n, seed)
    eig = hm.layer_spectra(q, k)["sym_eigenvalues"].numpy()
    assert eig.shape == (h, min(2 * hd, n))
    g = dense_metrics(q, k)
    kv_of = hm.kv_index(h, kv)
    j = _jw_matrix(hd)
    for i in range(h):
        dense = np.linalg.eigvalsh(g[i] + g[i].T)[::-1]
        scale = np.abs(dense).max()
        assert_rel(padded_desc(eig[i], n), dense, scale=scale)
        assert np.all(np.diff(eig[i]) <= 0)
        x = np.concatenate([q[i].numpy(), k[kv_of[i]].numpy()])
        seed_ev = np.linalg.eigvals(j @ x @ x.T)
        assert np.abs(seed_ev.imag).max() <= 1e-6 * scale
        m = max(n, 2 * hd)
        assert_rel(padded_desc(eig[i], m), padded_desc(seed_ev.real, m), scale=scale)


@SETTINGS
@given(head_shapes(max_hidden=24))
def test_cholesky_and_householder_r_factors_give_the_same_spectra(shape):
    """CholeskyQR (R from chol(X Xᵀ)) and Householder QR of Xᵀ agree (R up to row signs)."""
    h, kv, hd, n, seed = shape
    assume(n >= 2 * hd)
    ((q, k),) = weights(h, kv, hd, n, seed)
    chol = hm.layer_spectra(q, k, topk=hd, method="cholesky")
    house = hm.layer_spectra(q, k, topk=hd, method="householder")
    for key in ("singular_values", "sym_eigenvalues", "norm_sq", "trace"):
        assert_rel(chol[key].numpy(), house[key].numpy())
    r_c = hm.r_factor(q, method="cholesky").numpy()
    r_h = hm.r_factor(q, method="householder").numpy()
    assert_rel(np.abs(r_c), np.abs(r_h))
    # same left/right singular pairs: compare the rank-k reconstructions
    rec = {name: np.einsum("hj,hja,hjb->hab", s["singular_values"].numpy(),
                           s["left_vectors"].numpy(), s["right_vectors"].numpy())
           for name, s in (("chol", chol), ("house", house))}
    assert_rel(rec["chol"], rec["house"])


@SETTINGS
@given(head_shapes())
def test_positive_share_closed_form_and_sign_flip(shape):
    """s = Σλ₊/Σ|λ| = 1/2 + tr(g)/‖g + gᵀ‖_*, and negating W_K maps s → 1 − s (so a
    sign-symmetric init has E[s] = 1/2)."""
    h, kv, hd, n, seed = shape
    ((q, k),) = weights(h, kv, hd, n, seed)
    spec = hm.layer_spectra(q, k)
    eig = spec["sym_eigenvalues"].numpy()
    share = hm.positive_mass_share(eig)
    nuclear = np.abs(eig).sum(-1)
    assert_rel(share, 0.5 + spec["trace"].numpy() / nuclear, scale=1.0)
    g = dense_metrics(q, k)
    assert_rel(spec["trace"].numpy(), np.einsum("hii->h", g))
    flipped = hm.layer_spectra(q, -k)["sym_eigenvalues"].numpy()
    assert_rel(hm.positive_mass_share(flipped), 1 - share, scale=1.0)
    assert_rel(np.sort(flipped, -1), np.sort(-eig, -1), scale=np.abs(eig).max())


# -- GQA head mapping = transformers' attention ---------------------------------------------------
@SETTINGS
@given(head_shapes())
def test_kv_index_is_repeat_kv(shape):
    from transformers.models.llama.modeling_llama import repeat_kv
    h, kv, hd, n, seed = shape
    states = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, kv, 3, hd)))
    rep = repeat_kv(states, h // kv)
    kv_of = hm.kv_index(h, kv)
    for i in range(h):
        assert torch.equal(rep[:, i], states[:, kv_of[i]])


def _no_rope(batch, length, hd):
    return (torch.ones(batch, length, hd, dtype=torch.float64),
            torch.zeros(batch, length, hd, dtype=torch.float64))


def _softmax_rows(logits):
    """Row softmax as transformers' eager attention takes it: float64 logits rounded to float32
    and normalised in float32 (``softmax(..., dtype=torch.float32)``), so the comparison below
    measures the metric identity, not the library's softmax precision (~1e-6 at these logits)."""
    return torch.softmax(torch.from_numpy(logits).float(), dim=-1).double().numpy()


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3).map(lambda x: 2 * x),
       st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_head_metric_gives_llama_attention_scores(kv, group, hd, width, seed):
    """A real LlamaAttention (eager, RoPE off, no mask; RoPE needs an even head_dim): head h's attention probabilities equal
    softmax_j(x_jᵀ g_h x_i / √hd) with g_h = W_K,kv(h)ᵀ W_Q,h and kv(h) = h // group."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention
    h = kv * group
    n = h * width  # LlamaConfig insists hidden % heads == 0; head_dim is free
    cfg = LlamaConfig(hidden_size=n, num_attention_heads=h, num_key_value_heads=kv, head_dim=hd,
                      num_hidden_layers=1, vocab_size=8, intermediate_size=4)
    cfg._attn_implementation = "eager"
    attn = LlamaAttention(cfg, layer_idx=0).double().eval()
    ((q, k),) = weights(h, kv, hd, n, seed)
    rng = np.random.default_rng(seed + 1)
    x = torch.from_numpy(rng.standard_normal((1, 5, n)) / np.sqrt(n) * 2)
    with torch.no_grad():
        attn.q_proj.weight.copy_(q.reshape(h * hd, n))
        attn.k_proj.weight.copy_(k.reshape(kv * hd, n))
        _, probs = attn(x, position_embeddings=_no_rope(1, 5, hd), attention_mask=None)
    g = dense_metrics(q, k)
    xs = x[0].numpy()
    logits = np.einsum("ja,hab,ib->hij", xs, g, xs) / np.sqrt(hd)  # [h, query i, key j]
    # float64 logits in two orders, rounded to float32 (a 1-ulp flip moves a logit by u·|l|, a
    # probability by ≤ 2·max|Δl|), then the same float32 softmax of 5 terms
    bound = 2 * 2 * tol.U32 * np.abs(logits).max() + tol.agree_rtol(5)
    assert np.abs(probs[0].numpy() - _softmax_rows(logits)).max() <= bound


@settings(max_examples=N_EXAMPLES, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3).map(lambda x: 2 * x),
       st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_folded_norm_gains_give_qwen3_attention_scores(kv, group, hd, n, seed):
    """Qwen3's q_norm/k_norm: logits = (γ_q⊙q_i/rms(q_i))·(γ_k⊙k_j/rms(k_j))/√hd
    = x_jᵀ g̃_h x_i / (rms(q_i)·rms(k_j)·√hd) with the gains folded, g̃ = (Γ_k W_K)ᵀ (Γ_q W_Q)."""
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention
    h = kv * group
    cfg = Qwen3Config(hidden_size=n, num_attention_heads=h, num_key_value_heads=kv, head_dim=hd,
                      num_hidden_layers=1, vocab_size=8, intermediate_size=4, rms_norm_eps=1e-6)
    cfg._attn_implementation = "eager"
    attn = Qwen3Attention(cfg, layer_idx=0).double().eval()
    ((q, k),) = weights(h, kv, hd, n, seed)
    rng = np.random.default_rng(seed + 2)
    gq = torch.from_numpy(np.exp(0.5 * rng.standard_normal(hd)))
    gk = torch.from_numpy(np.exp(0.5 * rng.standard_normal(hd)))
    x = torch.from_numpy(rng.standard_normal((1, 4, n)))
    with torch.no_grad():
        attn.q_proj.weight.copy_(q.reshape(h * hd, n))
        attn.k_proj.weight.copy_(k.reshape(kv * hd, n))
        attn.q_norm.weight.copy_(gq)
        attn.k_norm.weight.copy_(gk)
        _, probs = attn(x, position_embeddings=_no_rope(1, 4, hd), attention_mask=None)
    g = dense_metrics(hm.fold_gain(q, gq), hm.fold_gain(k, gk))
    xs = x[0].numpy()
    kv_of = hm.kv_index(h, kv).numpy()
    rms_q = np.sqrt(np.mean(np.einsum("hdn,in->hid", q.numpy(), xs) ** 2, -1) + 1e-6)   # [h, i]
    rms_k = np.sqrt(np.mean(np.einsum("kdn,jn->kjd", k.numpy(), xs) ** 2, -1) + 1e-6)[kv_of]
    logits = np.einsum("ja,hab,ib->hij", xs, g, xs) / (rms_q[:, :, None] * rms_k[:, None, :]) / np.sqrt(hd)
    # transformers' RMSNorm runs in float32: q̂ = γ⊙q/rms(q) errs by (sum_rtol(hd) for the mean of
    # squares + 3u: rounding q, rsqrt, the product) relative per entry, likewise k̂; a logit
    # q̂·k̂/√hd then by 2·that·Σ|q̂_d k̂_d|/√hd ≤ 2·that·max γ_q·max γ_k·√hd (‖q̂/γ‖ = √hd), and a
    # probability by ≤ 2·max|Δl|; plus the float32 rounding of the logits and the softmax
    rel = tol.sum_rtol(hd) + 3 * tol.U32
    dlogit = 2 * rel * float(gq.max() * gk.max()) * math.sqrt(hd)
    bound = 2 * dlogit + 2 * 2 * tol.U32 * np.abs(logits).max() + tol.agree_rtol(4)
    assert np.abs(probs[0].numpy() - _softmax_rows(logits)).max() <= bound


# -- orthogonal Procrustes closed form ------------------------------------------------------------
@SETTINGS
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_procrustes_closed_form_is_the_nuclear_norm(rows, cols, seed):
    """max over orthogonal R of ⟨R W, W'⟩ = ‖W' Wᵀ‖_* (gauge alignment of the row side, SPEC
    §5.4), attained by scipy.linalg.orthogonal_procrustes; no random rotation does better."""
    rng = np.random.default_rng(seed)
    w, w2 = rng.standard_normal((rows, cols)), rng.standard_normal((rows, cols))
    closed = np.linalg.svd(w2 @ w.T, compute_uv=False).sum()
    r, scale = scipy.linalg.orthogonal_procrustes(w.T, w2.T)  # min ‖Wᵀ R − W'ᵀ‖: R acts on rows
    attained = np.sum((r.T @ w) * w2)
    assert_rel(attained, closed, scale=max(closed, 1e-300))
    assert_rel(scale, closed, scale=max(closed, 1e-300))
    assert_rel(r.T @ r, np.eye(rows), scale=1.0)
    for _ in range(3):
        o = scipy.linalg.qr(rng.standard_normal((rows, rows)))[0]
        assert np.sum((o @ w) * w2) <= closed * (1 + 1e-12) + 1e-12


# -- invariances ----------------------------------------------------------------------------------
@SETTINGS
@given(head_shapes(), st.floats(-4, 4).filter(lambda c: abs(c) > 0.1))
def test_invariances(shape, c):
    """Scaling W_Q by c scales g by c; rotating each kv group's inner dimension in W_Q and W_K
    together leaves g unchanged; a common rotation O of the residual basis maps g → O g Oᵀ and
    leaves every inner product, singular value and eigenvalue unchanged."""
    h, kv, hd, n, seed = shape
    (q, k), (q2, k2) = weights(h, kv, hd, n, seed, layers=2)
    base = hm.layer_spectra(q, k)
    gram = hm.metric_inner(q, k, q2, k2).numpy()
    # scale
    scaled = hm.layer_spectra(c * q, k)
    assert_rel(scaled["norm_sq"].numpy(), c * c * base["norm_sq"].numpy())
    assert_rel(scaled["singular_values"].numpy(), abs(c) * base["singular_values"].numpy())
    assert_rel(hm.metric_inner(c * q, k, q2, k2).numpy(), c * gram, scale=abs(c) * np.abs(gram).max() + 1e-300)
    share = hm.positive_mass_share(base["sym_eigenvalues"].numpy())
    expect = share if c > 0 else 1 - share
    assert_rel(hm.positive_mass_share(scaled["sym_eigenvalues"].numpy()), expect, scale=1.0)
    # inner (head_dim) rotation per kv group, applied to W_Q of its query heads and to W_K
    rng = np.random.default_rng(seed + 7)
    rots = torch.from_numpy(np.stack([scipy.linalg.qr(rng.standard_normal((hd, hd)))[0]
                                      for _ in range(kv)]))
    kv_of = hm.kv_index(h, kv)
    q_r, k_r = rots[kv_of] @ q, rots @ k
    assert_rel(dense_metrics(q_r, k_r), dense_metrics(q, k))
    rotated = hm.layer_spectra(q_r, k_r)
    for key in ("norm_sq", "trace", "singular_values", "sym_eigenvalues"):
        assert_rel(rotated[key].numpy(), base[key].numpy(), scale=np.abs(base[key].numpy()).max() + 1e-300)
    assert_rel(hm.metric_inner(q_r, k_r, q2, k2).numpy(), gram, scale=np.abs(gram).max() + 1e-300)
    # common residual rotation
    o = torch.from_numpy(scipy.linalg.qr(rng.standard_normal((n, n)))[0])
    res = hm.layer_spectra(q @ o.T, k @ o.T)
    for key in ("norm_sq", "trace", "singular_values", "sym_eigenvalues"):
        assert_rel(res[key].numpy(), base[key].numpy(), scale=np.abs(base[key].numpy()).max() + 1e-300)
    assert_rel(hm.metric_inner(q @ o.T, k @ o.T, q2 @ o.T, k2 @ o.T).numpy(), gram,
               scale=np.abs(gram).max() + 1e-300)


# -- the null of the adjacency claim ---------------------------------------------------------------
@settings(max_examples=N_EXAMPLES, deadline=None)
@given(st.integers(2, 7), st.integers(1, 50), st.integers(0, 2**32 - 1))
def test_random_derangements_have_no_fixed_point_and_are_uniform_off_diagonal(n, count, seed):
    rng = np.random.default_rng(seed)
    perms = hm.random_derangements(rng, count, n)
    assert perms.shape == (count, n)
    assert np.all(np.sort(perms, 1) == np.arange(n))
    assert np.all(perms != np.arange(n))


def test_derangement_null_mean_is_the_off_diagonal_mean():
    """E over uniform derangements of mean_h C[h, π(h)] = mean of C's off-diagonal entries."""
    rng = np.random.default_rng(0)
    c = rng.standard_normal((5, 5))
    perms = hm.random_derangements(rng, 200_000, 5)
    mc = c[np.arange(5), perms].mean()
    off = (c.sum() - np.trace(c)) / 20
    assert abs(mc - off) < 5 * c.std() / np.sqrt(200_000)


def test_sign_flip_null_is_exact_for_a_sign_symmetric_init():
    """Independent Gaussian Q, K: the share has mean 1/2 (to Monte Carlo error) and the sign-flip
    map s → 1 − s is an exact symmetry of its distribution."""
    rng = np.random.default_rng(3)
    shares = []
    for _ in range(400):
        q = torch.from_numpy(rng.standard_normal((2, 3, 9)))
        k = torch.from_numpy(rng.standard_normal((1, 3, 9)))
        shares.append(hm.positive_mass_share(hm.layer_spectra(q, k)["sym_eigenvalues"].numpy()))
    shares = np.concatenate(shares)
    assert abs(shares.mean() - 0.5) < 4 * shares.std() / np.sqrt(shares.size)
