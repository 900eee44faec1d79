"""The cheaper nulls and spectra of issue 19 give the numbers the previous code gave.

The previous implementations are kept here, verbatim in their arithmetic, as references:
``loo_capture_batch`` built every eigenpair of each (m−1)k Gram with ``np.linalg.eigh``,
``exchangeable_angles`` gathered columns of token-major arrays and recomputed ρ·n, n² and H²,
``spectrum_from_gram`` called ``np.linalg.eigh`` on the d × d Gram. The new code computes the same
quantities in another order (subset eigensolver, per-layer factors once, one tridiagonal
reduction, the token Gram), so the comparison tolerance is float64 rounding grown by the
problem: 1e-12 absolute on captures and angles (values in [0, 1], ~10² operations deep), and the
p-values and null moments the claims report are compared on seeded draws."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from probes import activations, calibration, residual
from probes.activations import LayerAccumulator, forward_flops
from probes.models import open_model
from probes.phases import default_phases
from tests import tolerance as tol


# -- the references (the code before issue 19) -----------------------------------------------
def reference_loo_capture_batch(gram, k, subsets, rank=residual.CAPTURE_RANK):
    subsets = np.asarray(subsets)
    b, m = subsets.shape
    offs = np.arange(k)
    out = np.empty((b, m))
    for j in range(m):
        others = np.delete(subsets, j, axis=1)
        rows = (others[:, :, None] * k + offs).reshape(b, -1)
        target = subsets[:, j] * k
        xx = gram[rows[:, :, None], rows[:, None, :]]
        xu = gram[rows, target[:, None]]
        vals, vecs = np.linalg.eigh(xx)
        r = min(rank, rows.shape[1])
        vals, vecs = vals[:, -r:], vecs[:, :, -r:]
        ok = vals > 1e-10 * vals[:, -1:]
        proj = np.einsum("bri,br->bi", vecs, xu)
        out[:, j] = np.where(ok, proj ** 2 / np.where(ok, vals, 1.0), 0.0).sum(axis=1)
    return np.clip(out, 0.0, 1.0)


def reference_exchangeable_angles(h0_sq, delta_sq, dot, orders, block=128):
    orders = np.atleast_2d(orders)
    b, m = orders.shape
    n_t = np.sqrt(np.maximum(delta_sq, 0.0))
    h_t = np.sqrt(np.maximum(np.cumsum(np.concatenate(
        [h0_sq[:, None], 2 * dot + delta_sq], axis=1), axis=1)[:, :m], 1e-300))
    rho = dot / np.maximum(h_t * n_t, 1e-300)
    out = np.empty((b, m))
    for lo in range(0, b, block):
        ords = orders[lo:lo + block]
        h = np.broadcast_to(np.sqrt(h0_sq)[None, :], (len(ords), len(h0_sq))).copy()
        for pos in range(m):
            nj, rj = n_t[:, ords[:, pos]].T, rho[:, ords[:, pos]].T
            c = rj * nj * h
            h_next = np.sqrt(np.maximum(h * h + 2 * c + nj * nj, 1e-300))
            cos = np.clip((h * h + c) / np.maximum(h * h_next, 1e-300), -1.0, 1.0)
            out[lo:lo + block, pos] = (np.arccos(cos) / np.pi).mean(axis=1)
            h = h_next
    return out


def reference_spectrum_from_gram(gram, k):
    vals, vecs = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    vals, vecs = vals[::-1], vecs[:, ::-1]
    top = vecs[:, :k].T.copy()
    idx = np.argmax(np.abs(top), axis=1)
    top *= np.sign(top[np.arange(top.shape[0]), idx])[:, None]
    return np.clip(vals, 0.0, None), top


# -- layer-label null (phase-C capture) -------------------------------------------------------
def _directions(rng, n, k, d, orthonormal):
    x = rng.standard_normal((n, k, d))
    if orthonormal:  # as stored: each layer's top-k eigenvectors
        return np.stack([np.linalg.qr(layer.T)[0].T for layer in x])
    return x / np.linalg.norm(x, axis=2, keepdims=True)


@pytest.mark.parametrize("orthonormal", [True, False])
def test_loo_capture_null_equals_the_reference(orthonormal):
    rng = np.random.default_rng(1)
    top = _directions(rng, 30, 8, 96, orthonormal)
    gram = residual.direction_gram(top)
    subsets, exact = residual.label_subsets(30, 9, seed=0, draws=300)
    assert not exact
    new = residual.loo_capture_batch(gram, 8, subsets)
    old = reference_loo_capture_batch(gram, 8, subsets)
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-12)


def test_shared_subspace_evidence_equals_the_reference(monkeypatch):
    """The claim's observed value, null moments and p on a model-shaped result (30 layers)."""
    rng = np.random.default_rng(2)
    top = _directions(rng, 30, 8, 64, True)
    top[4:15, 0] += 0.8 * top[5, 0]              # a partly shared direction in phase C
    result = {"top_dirs": top}
    phases = default_phases(30)
    new = residual.shared_subspace(result, phases, "C", seed=3, draws=200)
    monkeypatch.setattr(residual, "loo_capture_batch", reference_loo_capture_batch)
    old = residual.shared_subspace(result, phases, "C", seed=3, draws=200)
    assert new.p == old.p
    for attr in ("observed", "null_mean", "null_sd"):
        assert getattr(new, attr) == pytest.approx(getattr(old, attr), abs=1e-12)


# -- exchangeable-layers null (late-layers claim) ---------------------------------------------
def angle_problem(seed: int, tokens: int, layers: int, draws: int):
    """A residual stream's per-token statistics (‖h_0‖², ‖δ‖², ⟨h, δ⟩ with |cos| ≲ 0.3) and
    ``draws`` random layer orders: the exchangeable-layers null's inputs."""
    rng = np.random.default_rng(seed)
    h0_sq = rng.random(tokens) * 50 + 1
    delta_sq = rng.random((tokens, layers)) * 3
    dot = rng.standard_normal((tokens, layers)) * np.sqrt(h0_sq[:, None] * delta_sq) * 0.3
    orders = np.argsort(rng.random((draws, layers)), axis=1)
    return h0_sq, delta_sq, dot, orders


def test_exchangeable_angles_equal_the_reference():
    h0_sq, delta_sq, dot, orders = angle_problem(4, tokens=700, layers=23, draws=300)
    new = residual.exchangeable_angles(h0_sq, delta_sq, dot, orders)
    old = reference_exchangeable_angles(h0_sq, delta_sq, dot, orders)
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-13)


def test_exchangeable_angles_tiles_and_threads_change_no_value():
    # tiles smaller than the data (3 token chunks, the last partial; 7 draw blocks, the last
    # partial) give the reference's values, and the draw blocks run on two lent threads give
    # exactly the values computed inline: each block is computed alike on any thread
    from probes import small_lapack
    h0_sq, delta_sq, dot, orders = angle_problem(6, tokens=700, layers=11, draws=100)
    old = reference_exchangeable_angles(h0_sq, delta_sq, dot, orders)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inline = residual.exchangeable_angles(h0_sq, delta_sq, dot, orders, block=16, chunk=256)
        small_lapack.lend_threads(2)
        pooled = residual.exchangeable_angles(h0_sq, delta_sq, dot, orders, block=16, chunk=256)
    finally:
        small_lapack.lend_threads(0)
        torch.set_num_threads(threads)
    np.testing.assert_allclose(inline, old, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(pooled, inline)


def test_late_layers_evidence_equals_the_reference(monkeypatch):
    rng = np.random.default_rng(5)
    t, n = 500, 24
    res = {"tok_h_sq": np.tile(rng.random((t, 1)) * 40 + 5, (1, n)),
           "tok_delta_sq": rng.random((t, n)) * np.linspace(3, 0.5, n),
           "tok_dot": rng.standard_normal((t, n)) * 0.5,
           "angular_step": np.linspace(0.2, 0.05, n) + rng.random(n) * 0.01}
    new = residual.late_layers_change_least(res, seed=7, draws=400)
    monkeypatch.setattr(residual, "exchangeable_angles", reference_exchangeable_angles)
    old = residual.late_layers_change_least(res, seed=7, draws=400)
    assert new.p == old.p and new.observed == old.observed
    assert new.null_mean == pytest.approx(old.null_mean, abs=1e-12)
    assert new.null_sd == pytest.approx(old.null_sd, abs=1e-12)


# -- spectra ------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.integers(2, 50), st.integers(1, 8))
def test_spectrum_paths_equal_full_eigh(seed, t, d, k):
    """One tridiagonal reduction (d × d Gram) and the token Gram (T < d) give ``eigh``'s
    eigenvalues (to 1e-12 of the largest) and its top-k directions (|cos| 1 − 1e-9 where the
    eigenvalue gap resolves them)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, d)) * rng.random(d) ** 2
    ref_vals, ref_top = reference_spectrum_from_gram(x.T @ x, k)
    paths = [residual.spectrum_from_gram(x.T @ x, k)]
    if t < d:
        paths.append(residual.spectrum_from_rows(x, k))
    scale = ref_vals[0]
    kk = min(k, d)
    for vals, top in paths:
        assert vals.shape == (d,) and top.shape == (kk, d)
        np.testing.assert_allclose(vals, ref_vals, rtol=0, atol=1e-12 * scale)
        for i in range(min(kk, t)):
            gap = min(ref_vals[i] - ref_vals[i + 1] if i + 1 < d else scale,
                      ref_vals[i - 1] - ref_vals[i] if i > 0 else scale)
            if gap > 1e-6 * scale:
                assert float(top[i] @ ref_top[i]) == pytest.approx(1.0, abs=1e-9)


# -- the probe: token Gram, merging, timing, flops ------------------------------------------------
def test_token_gram_path_when_tokens_are_fewer_than_hidden():
    from tests.test_layer_stream import assert_same_statistics
    model = open_model("synthetic:tiny-qwen3")
    tc = calibration.tokenize(calibration.load_corpus(), model.encode, 40)
    streamed = activations.compute(model, tc, top_k=4)
    assert streamed["scored_tokens"] < model.layout.hidden
    assert streamed["memory"]["gram"] == "tokens"
    reference = activations.compute_hooked(model, tc, top_k=4)
    # the reference sums its d × d Gram from float32 window products, the token Gram is float64:
    # the spectra agree to what the float32 blocking allows (assert_same_statistics' bounds)
    assert_same_statistics(streamed, reference)
    timing = streamed["timing"]
    for key in ("load_s", "forward_s", "gram_eigensolve_s", "token_scalars_s", "isotropic_s"):
        assert 0 <= timing[key] <= timing["total_s"]


@pytest.mark.parametrize("gram", ["hidden", "tokens"])
def test_accumulators_over_window_units_merge_to_the_serial_one(gram):
    """The unit of work a cluster would split the corpus into: windows. Per layer, the
    accumulators of two disjoint runs of windows merge to the serial accumulator (float64
    sums in another order: 1e-12 relative)."""
    g = torch.Generator().manual_seed(0)
    wins = [(torch.randn(n, 16, generator=g, dtype=torch.float64),
             torch.randn(n, 16, generator=g, dtype=torch.float64)) for n in (5, 9, 3, 7)]
    serial = LayerAccumulator(16, "cpu", True, True, gram=gram)
    first, second = (LayerAccumulator(16, "cpu", True, True, gram=gram) for _ in range(2))
    for i, (a, b) in enumerate(wins):
        serial.add(a, b)
        (first if i < 2 else second).add(a, b)
    merged = first.merge(second)
    for acc in (serial, merged):
        acc.finish_spectrum(4)
    np.testing.assert_allclose(merged.spectrum[0], serial.spectrum[0], rtol=1e-12)
    np.testing.assert_allclose(np.abs(merged.spectrum[1]), np.abs(serial.spectrum[1]), atol=1e-10)
    for key, value in serial.sums.items():
        assert merged.sums[key] == pytest.approx(value, rel=1e-12)
    assert torch.equal(torch.cat(merged.tok_dot), torch.cat(serial.tok_dot))
    assert merged.tokens == serial.tokens == 24


@pytest.mark.parametrize("gram", ["hidden", "tokens"])
def test_stacked_windows_give_the_window_by_window_statistics(gram, monkeypatch):
    """``add_windows`` stacks short windows into Gram blocks of ≥ GRAM_BLOCK_ROWS rows (here 10:
    windows of 5, 9, 3, 7, 12 rows make blocks of 14, 10 and 12): the float32 Gram equals the
    dense float64 Σ δᵀδ to the float32 error of a block's dot products (δ rounded once, then
    a sum over ≤ 14 rows); the scalars and per-token arrays are the window-by-window ones."""
    monkeypatch.setattr(activations, "GRAM_BLOCK_ROWS", 10)
    g = torch.Generator().manual_seed(3)
    wins = [(torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g))
            for n in (5, 9, 3, 7, 12)]
    by_window = LayerAccumulator(16, "cpu", True, True, gram=gram)
    for a, b in wins:
        by_window.add(a, b)
    blocks = []
    add_gram = LayerAccumulator._add_gram
    monkeypatch.setattr(LayerAccumulator, "_add_gram",
                        lambda self, deltas: (blocks.append(sum(len(x) for x in deltas)),
                                              add_gram(self, deltas)))
    stacked = LayerAccumulator(16, "cpu", True, True, gram=gram)
    stacked.add_windows(wins)
    assert blocks == ([14, 10, 12] if gram == "hidden" else [])
    delta = torch.cat([b.double() - a.double() for a, b in wins]).numpy()
    if gram == "hidden":
        dense = delta.T @ delta
        bound = (tol.sum_rtol(14) + 2 * tol.U32) * (np.abs(delta).T @ np.abs(delta))
        assert np.all(np.abs(stacked.gram.numpy() - dense) <= bound)
    else:
        np.testing.assert_array_equal(torch.cat(stacked.rows).numpy(), delta)
    assert stacked.sums == by_window.sums
    for name in ("tok_dot", "tok_delta_sq", "tok_h_sq"):
        assert torch.equal(torch.cat(getattr(stacked, name)), torch.cat(getattr(by_window, name)))
    assert stacked.tokens == by_window.tokens == 36


def test_isotropic_reference_is_computed_once_per_shape():
    activations._isotropic.cache_clear()
    a = activations.isotropic_reference(300, 32, seed=1)
    b = activations.isotropic_reference(300, 32, seed=1)
    assert a == b and activations._isotropic.cache_info().hits == 1
    a["effective_rank"] = -1.0   # a caller's copy: the cached value is untouched
    assert activations.isotropic_reference(300, 32, seed=1)["effective_rank"] > 0


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_forward_flops_count_the_layers_matmuls(arch):
    """Against torch's own flop counter on a real decoder layer: the projections exactly (a
    gated MLP's three matrices, GPT-2's and NeoX's two). The counter counts SDPA as full T × T
    products where it sees it (torch 2.13 does not count the CPU kernel), this count keeps the
    causal pairs t(t+1)/2 of QKᵀ and AV."""
    from torch.utils.flop_counter import FlopCounterMode

    from probes.probe_cost import has_gate
    from probes.layer_stream import LayerStream
    model = open_model(f"synthetic:tiny-{arch}")
    gated = has_gate(model)
    assert gated == (arch == "llama")
    stream = LayerStream(model)
    t = 37
    kwargs, hidden = stream.layer_kwargs(stream.embed([list(range(1, t + 1))]))
    args, kws = kwargs[0][0]
    layer = stream.load_layer(0)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        layer(hidden[0], *args, **kws)
    lay = model.layout
    counted = counter.get_total_flops()
    mine = forward_flops(lay, [t], gated=gated) // lay.num_layers
    causal = 2 * 2 * lay.num_heads * lay.head_dim * t * (t + 1) // 2
    full = 2 * 2 * lay.num_heads * lay.head_dim * t * t
    assert counted in (mine - causal, mine - causal + full)
    assert forward_flops(lay, [t, 5], gated=gated) == lay.num_layers * (
        mine + 2 * 5 * (mine - causal) // (2 * t) + 2 * 2 * lay.num_heads * lay.head_dim * 15)
