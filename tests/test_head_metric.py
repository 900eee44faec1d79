"""Known answers, streaming/caching equivalence and the planted controls of the head-metric probe."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from hypotheses.test_head_metric_adjacent import CLAIM as ADJACENT_CLAIM
from hypotheses.test_qk_sym_positive import CLAIM as POSITIVE_CLAIM
from tests import tolerance as tol
from probes import head_metric as hm
from probes.cache import Cache
from probes.errors import NotApplicable
from probes.evidence import decide
from probes.models.base import Layout, Model
from probes.phases import default_phases
from probes.synthetic.planted_heads import ADJACENT_PHASE, POSITIVE_PHASE

ALPHA = 0.05


@dataclass
class ArrayModel(Model):
    """A Model over explicit per-layer tensors: {(layer, family): tensor}."""

    tensors: dict = field(default_factory=dict)

    def weight(self, layer, family):
        t = self.tensors.get((layer, family))
        return None if t is None else t.detach().clone().to(torch.float32)


def array_model(qs, ks, hd, q_norms=None, k_norms=None) -> ArrayModel:
    n_l = len(qs)
    h, kv, n = qs[0].shape[0] // hd, ks[0].shape[0] // hd, qs[0].shape[1]
    tensors = {}
    for layer in range(n_l):
        tensors[layer, "q_proj"] = qs[layer]
        tensors[layer, "k_proj"] = ks[layer]
        if q_norms is not None:
            tensors[layer, "q_norm"] = q_norms[layer]
            tensors[layer, "k_norm"] = k_norms[layer]
    fams = ("q_proj", "k_proj") + (("q_norm", "k_norm") if q_norms is not None else ())
    return ArrayModel(spec="arrays", fingerprint="arrays", config={}, families=fams,
                      layout=Layout("llama", n_l, n, h, kv, hd, 4), tensors=tensors)


def dense_reference(model: Model, fold: bool):
    """A plain per-head double loop in float64 with every g_h formed densely."""
    lay = model.layout
    kv_of = hm.kv_index(lay.num_heads, lay.num_kv_heads)
    gs = []
    for layer in range(lay.num_layers):
        q, k = hm.load_heads(model, layer, fold)
        q, k = q.double(), k.double()
        gs.append(np.stack([(k[kv_of[h]].T @ q[h]).numpy() for h in range(lay.num_heads)]))
    n_l = lay.num_layers
    gram = np.einsum("ahij,bhij->abh", np.stack(gs), np.stack(gs))
    cross = np.stack([np.einsum("aij,bij->ab", gs[a], gs[a + 1]) for a in range(n_l - 1)])
    eig = np.stack([[np.linalg.eigvalsh(g + g.T)[::-1] for g in layer] for layer in gs])
    sv = np.stack([[np.linalg.svd(g, compute_uv=False) for g in layer] for layer in gs])
    trace = np.stack([[np.trace(g) for g in layer] for layer in gs])
    return gram, cross, eig, sv, trace


def test_compute_equals_dense_double_loop_and_blocks_do_not_matter():
    """On the planted qwen3 model (GQA 6/2, hd 16 > hidden/heads, gains folded): Gram, adjacent
    head × head inner products, spectra and traces equal a dense float64 per-head loop, whether
    the layers stream one per block or all sit in one block."""
    from probes.models import open_model
    model = open_model("synthetic:planted-heads")
    whole = hm.compute(model, gram_dtype="float64")
    one = hm.compute(model, gram_dtype="float64", block_mb=1e-6)
    assert whole["layers_per_block"] == model.layout.num_layers and one["layers_per_block"] == 1
    assert whole["fold_norms"] is True
    gram, cross, eig, sv, trace = dense_reference(model, fold=True)
    scale = np.abs(gram).max()
    # float64 against float64 (gram_dtype='float64'; spectra are float64 throughout): products of
    # ≤ 10³ terms and small eigensolves err by ≈ √n·u₆₄·cond ≪ 1e-12, so 1e-10 / 1e-9 of the
    # scale leave room for the eigensolvers' condition and are 1e9 below a wrong formula
    for res in (whole, one):
        np.testing.assert_allclose(res["gram"], gram, rtol=0, atol=1e-10 * scale)
        np.testing.assert_allclose(res["cross_adjacent"], cross, rtol=0, atol=1e-10 * scale)
        np.testing.assert_allclose(res["trace"], trace, rtol=0, atol=1e-10 * np.abs(trace).max())
        m, r = res["sym_eigenvalues"].shape[-1], res["singular_values"].shape[-1]
        ours = res["sym_eigenvalues"]  # the m = min(2·hd, n) non-zero ones; the rest are 0
        padded = np.concatenate([ours, np.zeros(ours.shape[:-1] + (eig.shape[-1] - m,))], -1)
        np.testing.assert_allclose(-np.sort(-padded, -1), eig, atol=1e-9 * np.abs(eig).max())
        np.testing.assert_allclose(res["singular_values"], sv[..., :r], atol=1e-9 * sv.max())
    # the default float32 cross-layer matmuls (dots of n = hidden terms, then a float64 sum over
    # hd² entries): measured bound. The worst case 2·sum_rtol(n)·Σ‖k_i‖‖q_i‖·Σ‖k'_j‖‖q'_j‖ is
    # ≈ 2·hd·sum_rtol(n) ≈ 1e-4 of ‖g‖‖g'‖, but the hd² entries' errors are independent and
    # cancel: ≈ √n·u/√hd ≈ 1e-7 typical; measured 0.8e-7 … 1.0e-7 (ATen avx512/default, MKL
    # AVX-512/AVX2/SSE4.2, 1–2 threads); 1e-5 is 100× that and 1e4 below a wrong head pairing
    f32 = hm.compute(model)
    nrm = hm.metric_norms(whole)
    np.testing.assert_allclose(f32["gram"] / (nrm[:, None] * nrm[None]),
                               hm.metric_cosines(whole), atol=1e-5)


def test_known_answers_on_hand_built_layers():
    """Layer 1 = layer 0 (cos 1), layer 2 = layer 1 with W_Q negated (cos −1); W_K = W_Q gives a
    positive semi-definite g (share 1), W_K = −W_Q a negative one (share 0)."""
    rng = np.random.default_rng(0)
    hd, h, n = 3, 2, 10
    q0 = torch.from_numpy(rng.standard_normal((h * hd, n)))
    k0 = torch.from_numpy(rng.standard_normal((h * hd, n)))
    model = array_model([q0, q0, -q0, q0, q0], [k0, k0, k0, q0, -q0], hd)
    res = hm.compute(model)
    cos = hm.metric_cosines(res)
    # cross-layer inner products: float32 dots of n terms per entry, float64 sum over hd² entries;
    # the norms are float64. Relative to ‖g‖‖g'‖ the error is ≤ 2·sum_rtol(n)·Σ_i‖k_i‖‖q_i‖·
    # Σ_j‖k'_j‖‖q'_j‖/(‖g‖‖g'‖) ≤ 2·hd·sum_rtol(n) (Cauchy–Schwarz: Σ_i‖k_i‖‖q_i‖ ≤ √hd·‖g‖… up to
    # the heads' conditioning; here hd = 3), plus the float32 rounding of the float64 inputs
    cos_tol = 2 * hd * tol.sum_rtol(n) + 4 * tol.U32
    np.testing.assert_allclose(cos[0, 1], 1, atol=cos_tol)
    np.testing.assert_allclose(cos[1, 2], -1, atol=cos_tol)
    np.testing.assert_allclose(np.einsum("lhh->lh", hm.adjacent_cross_cosines(res))[:2],
                               [[1, 1], [-1, -1]], atol=cos_tol)
    # per-layer spectra are float64 (head_metric: "per-layer quantities … float64 throughout"):
    # a PSD g's eigenvalues are ≥ −√n·u₆₄·λ_max, so 1e-9 is 1e5 above float64 rounding
    share = hm.positive_shares(res)
    np.testing.assert_allclose(share[3], 1, atol=1e-9)
    np.testing.assert_allclose(share[4], 0, atol=1e-9)
    assert (res["sym_eigenvalues"][3] > -1e-9 * np.abs(res["sym_eigenvalues"][3]).max()).all()
    table = hm.head_table(res)
    assert len(table) == 5 * h and table["next_layer_cos"].iloc[0] == pytest.approx(1, abs=cos_tol)


def test_fold_norms_applies_per_head_dim_gains():
    """Gains multiply W_Q,h and W_K,h row-wise (same gains for every head); folding is recorded
    and off by default where the architecture has no q_norm/k_norm."""
    rng = np.random.default_rng(1)
    hd, n = 2, 6
    q = torch.from_numpy(rng.standard_normal((4 * hd, n)))
    k = torch.from_numpy(rng.standard_normal((2 * hd, n)))
    gq, gk = torch.tensor([2.0, 0.5]), torch.tensor([3.0, 1.0])
    folded = array_model([q, q], [k, k], hd, [gq, gq], [gk, gk])
    res = hm.compute(folded)
    assert res["fold_norms"] is True
    assert hm.compute(folded, fold_norms=False)["fold_norms"] is False
    qf, kf = hm.load_heads(folded, 0, True)
    # float32 heads: the float64 weights rounded once, the gain product rounded once (2u)
    np.testing.assert_allclose(qf.numpy(), (q.reshape(4, hd, n) * gq[None, :, None]).numpy(),
                               rtol=2 * tol.U32)
    np.testing.assert_allclose(kf.numpy(), (k.reshape(2, hd, n) * gk[None, :, None]).numpy(),
                               rtol=2 * tol.U32)
    plain = array_model([q, q], [k, k], hd)
    assert hm.compute(plain)["fold_norms"] is False
    expected = hm.metric_inner(qf.double(), kf.double(), qf.double(), kf.double()).numpy()
    # diagonal ‖g‖²: float64 per-layer path from the same float32 heads: float64 rounding only
    np.testing.assert_allclose(res["gram"][0, 0], expected, rtol=tol.f64_rtol(n * hd * hd, 10))


def _verdicts(model_spec):
    from probes.models import open_model
    model = open_model(model_spec)
    res = hm.compute(model)
    phases = default_phases(model.layout.num_layers)
    out = {}
    for phase in phases:
        for claim, fn in ((ADJACENT_CLAIM, hm.adjacent_vs_head_permuted),
                          (POSITIVE_CLAIM, hm.positive_share_vs_half)):
            try:
                ev = fn(res, phases, phase, seed=0)
            except NotApplicable:
                out[claim.id, phase] = ("N/A", None)
                continue
            out[claim.id, phase] = (decide(claim, ev, ALPHA).verdict, ev)
    return phases, out


def test_planted_heads_supported_where_planted_and_nowhere_else():
    phases, out = _verdicts("synthetic:planted-heads")
    assert phases["C"] == list(ADJACENT_PHASE) and phases["D"] == list(POSITIVE_PHASE)
    verdict, ev = out["head-metric-adjacent", "C"]
    assert verdict == "SUPPORTED", ev
    assert ev.observed > 0.6 and abs(ev.null_mean) < 0.05 and ev.p < 0.001
    verdict, ev = out["qk-sym-positive", "D"]
    assert verdict == "SUPPORTED", ev
    assert ev.observed > 0.75 and ev.null_mean == 0.5
    supported = {key for key, (v, _) in out.items() if v == "SUPPORTED"}
    assert supported == {("head-metric-adjacent", "C"), ("qk-sym-positive", "D")}
    # the profiles span the whole depth and show the planted pairs
    ev = out["head-metric-adjacent", "C"][1]
    assert list(ev.profile.layers) == list(range(23))
    assert min(ev.profile.values[4:11]) > 0.5 > max(ev.profile.values[:3] + ev.profile.values[12:])
    assert len(ev.matrix.values) == 24 and ev.extra["metric_norm_profile"]["layers"] == list(range(24))


def test_adjacent_gram_pairs_match_the_full_pass_and_give_the_same_verdicts():
    """gram_pairs="adjacent" (one pass, each layer read once) gives the full pass's numbers on
    the diagonal, the adjacent pairs, the head × head cross matrices and the spectra, leaves the
    other pairs NaN, and the claims' statistics, nulls and p-values are identical (no L × L view)."""
    from probes.models import open_model
    model = open_model("synthetic:planted-heads")
    full = hm.compute(model, gram_dtype="float64")
    adj = hm.compute(model, gram_dtype="float64", gram_pairs="adjacent")
    n_l = model.layout.num_layers
    band = np.abs(np.subtract.outer(np.arange(n_l), np.arange(n_l))) <= 1
    scale = np.abs(full["gram"]).max()
    np.testing.assert_allclose(adj["gram"][band], full["gram"][band], rtol=0, atol=1e-12 * scale)
    assert np.isnan(adj["gram"][~band]).all() and np.isfinite(full["gram"]).all()
    for key in ("cross_adjacent", "sym_eigenvalues", "singular_values", "trace"):
        np.testing.assert_allclose(adj[key], full[key], rtol=0, atol=1e-12 * np.abs(full[key]).max())
    assert (adj["gram_pairs"], full["gram_pairs"]) == ("adjacent", "all")
    phases = default_phases(n_l)
    for claim in (hm.adjacent_vs_head_permuted, hm.positive_share_vs_half):
        a, f = claim(adj, phases, "C"), claim(full, phases, "C")
        assert (a.observed, a.null_mean, a.null_sd, a.p) == pytest.approx(
            (f.observed, f.null_mean, f.null_sd, f.p), rel=1e-9, abs=1e-12)
    assert hm.adjacent_vs_head_permuted(adj, phases, "C").matrix is None
    assert hm.adjacent_vs_head_permuted(full, phases, "C").matrix is not None
    with pytest.raises(ValueError, match="gram_pairs"):
        hm.params(model, gram_pairs="some")


def test_random_twin_of_planted_heads_supports_nothing():
    _, out = _verdicts("random:synthetic:planted-heads")
    assert not [key for key, (v, _) in out.items() if v == "SUPPORTED"]
    ev = out["qk-sym-positive", "D"][1]
    assert abs(ev.effect) < 0.05


def test_not_applicable_cases():
    rng = np.random.default_rng(2)
    q = torch.from_numpy(rng.standard_normal((4, 5)))
    res = hm.compute(array_model([q, q * 0, q], [q, q, q], 2))
    phases = {"A": [0], "B": [1, 2]}
    with pytest.raises(NotApplicable, match="0 adjacent pairs on phase A < 1 needed"):
        hm.adjacent_vs_head_permuted(res, phases, "A")
    with pytest.raises(NotApplicable, match="zero or non-finite"):
        hm.adjacent_vs_head_permuted(res, phases, "B")
    with pytest.raises(NotApplicable, match="zero or non-finite"):
        hm.positive_share_vs_half(res, phases, "B")
    single = hm.compute(array_model([q[:2], q[:2]], [q[:2], q[:2]], 2))
    with pytest.raises(NotApplicable, match="1 head per layer .* < 2 needed"):
        hm.adjacent_vs_head_permuted(single, {"A": [0, 1]}, "A")
    bad = q.clone()
    bad[0, 0] = float("nan")
    res = hm.compute(array_model([q, bad, q], [q, q, q], 2))
    assert res["nonfinite_layers"] == [1] and np.isnan(res["gram"][1]).all()
    with pytest.raises(NotApplicable):
        hm.positive_share_vs_half(res, {"A": [0, 1, 2]}, "A")


def test_sign_flip_null_exact_enumeration_small_phase():
    """With ≤ 12 heads the p-value enumerates every sign pattern: all shares above 1/2 give
    p = 2^-N, and the null sd is √Σ(s − 1/2)² / N."""
    eig = np.array([[[3.0, -1.0]], [[2.0, -1.0]]])  # shares 0.75, 2/3
    res = {"sym_eigenvalues": eig, "gram": np.ones((2, 2, 1)), "fold_norms": False}
    ev = hm.positive_share_vs_half(res, {"A": [0, 1]}, "A")
    assert ev.p == pytest.approx(0.25)
    assert ev.null_sd == pytest.approx(np.sqrt(0.25**2 + (1 / 6) ** 2) / 2)
    assert ev.observed == pytest.approx((0.75 + 2 / 3) / 2)


def test_probe_result_round_trips_through_the_cache(tmp_path):
    from probes.models import open_model
    model = open_model("synthetic:tiny-qwen3")
    cache = Cache(tmp_path)
    prm = hm.params(model)
    first = cache.get_or_compute(hm.PROBE_ID, hm.VERSION, model.fingerprint, prm, lambda: hm.compute(model))
    again = Cache(tmp_path).get_or_compute(hm.PROBE_ID, hm.VERSION, model.fingerprint, prm,
                                           lambda: pytest.fail("recomputed a cached entry"))
    for key in ("gram", "cross_adjacent", "sym_eigenvalues", "singular_values", "left_vectors"):
        np.testing.assert_array_equal(first[key], again[key])
    assert again["fold_norms"] is True and prm["fold_norms"] is True


@pytest.fixture(scope="module")
def smollm2():
    from probes.models import open_model
    try:
        return open_model("smollm2-135m", cache=Cache())
    except Exception as e:  # offline and not converted yet
        pytest.skip(f"smollm2-135m unavailable: {e}")


def test_smollm2_gram_equals_per_head_double_loop_and_seed_fro_sq_differs(smollm2):
    """On the default real model: the streamed Gram equals the research script's plain per-head
    double loop (float64 here); ‖g‖² is its diagonal; the script's ``fro_sq`` = ‖W_K W_Qᵀ‖²
    differs from ‖g‖² by a median ~73 % (printed)."""
    lay = smollm2.layout
    res = hm.compute(smollm2)
    kv_of = hm.kv_index(lay.num_heads, lay.num_kv_heads)
    heads = [hm.load_heads(smollm2, layer, False) for layer in range(lay.num_layers)]
    heads = [(q.double(), k.double()) for q, k in heads]
    loop = np.zeros((lay.num_layers, lay.num_layers, lay.num_heads))
    for a in range(lay.num_layers):
        for b in range(a, lay.num_layers):
            for h in range(lay.num_heads):
                kk = heads[a][1][kv_of[h]] @ heads[b][1][kv_of[h]].T
                qq = heads[a][0][h] @ heads[b][0][h].T
                loop[a, b, h] = loop[b, a, h] = float((kk * qq).sum())
    nrm = np.sqrt(np.einsum("llh->lh", loop))
    err = np.abs(res["gram"] - loop) / (nrm[:, None] * nrm[None])
    # float32 cross-layer matmuls, relative to ‖g‖‖g'‖: measured bound (0.6e-8 … 1.5e-8 across
    # ATen avx512/default, MKL AVX-512/AVX2/SSE4.2, 1–2 threads; the typical √n·u/√hd ≈ 2e-7 at
    # n = 576, hd = 64 is itself an overestimate, the worst case 2·hd·sum_rtol(n) ≈ 1e-3 far more)
    assert err.max() < 1e-6, err.max()
    # ‖g‖² = diagonal, checked against a dense g for the first layer's heads
    q, k = heads[0]
    dense = np.array([np.sum((k[kv_of[h]].T @ q[h]).numpy() ** 2) for h in range(lay.num_heads)])
    # ‖g‖² is float64 on both sides (same float32 heads): rounding ≈ √(hd²·n)·u₆₄ ≈ 1e-13
    np.testing.assert_allclose(np.diag(res["gram"][:, :, 0]), np.einsum("llh->lh", loop)[:, 0], rtol=1e-12)
    np.testing.assert_allclose(res["gram"][0, 0], dense, rtol=1e-10)
    seed = np.stack([hm.seed_fro_sq(q, k).numpy() for q, k in heads])
    rel = np.abs(seed - np.einsum("llh->lh", loop)) / np.einsum("llh->lh", loop)
    median = float(np.median(rel))
    print(f"\nsmollm2-135m: seed fro_sq vs ‖g‖²: median relative difference {median:.1%}")
    assert median > 0.5
