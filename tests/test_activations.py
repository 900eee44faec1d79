"""The activation probe: hooks read the layers' own residual stream; statistics streamed
correctly; the three residual claims on the planted model and its random twin.
(The layer-streamed pass against the whole-model pass: tests/test_layer_stream.py.)"""

import numpy as np
import pytest
import torch

from tests import tolerance as tol
from tests.word_tokenizer import checkpoint_with_tokenizer
from probes import activations, calibration, residual
from probes.evidence import decide
from probes.models import open_model
from probes.phases import default_phases


def _hook_pairs(model, ids):
    """(inputs, outputs) of every decoder layer via the probe's hook class, plus HF's
    output_hidden_states, for one sequence."""
    hf = model.hf_model()
    layers = activations.decoder_layers(hf, model.layout.num_layers)

    class Recorder:
        def __init__(self):
            self.pairs = []

        def add(self, h_in, h_out):
            self.pairs.append((h_in.clone(), h_out.clone()))

    recs = {i: Recorder() for i in range(len(layers))}
    with torch.no_grad(), activations.ResidualHooks(layers, recs, None) as hooks:
        out = hf(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    assert hooks.max_held == 1  # never more than one layer's input held
    return [recs[i].pairs[0] for i in range(len(layers))], out.hidden_states


@pytest.mark.parametrize("spec", ["synthetic:tiny-llama", "synthetic:tiny-gemma3",
                                  "synthetic:tiny-qwen3"])
def test_hook_delta_matches_hidden_states_except_last(spec):
    model = open_model(spec)
    ids = model.encode("The quick brown fox jumps over the lazy dog, twice.")
    pairs, hs = _hook_pairs(model, ids)
    n = model.layout.num_layers
    assert len(hs) == n + 1
    for L in range(n - 1):
        h_in, h_out = pairs[L]
        torch.testing.assert_close(h_in, hs[L][0, 1:], rtol=0, atol=0)
        # the same float32 states (h_in is bitwise hs[L]), differenced once each side: one
        # float32 rounding of a difference of values ≤ max|h| (2u relative to the states' scale)
        scale = float(hs[L + 1].abs().max())
        torch.testing.assert_close(h_out - h_in, (hs[L + 1] - hs[L])[0, 1:], rtol=2 * tol.U32,
                                   atol=2 * tol.U32 * scale)
    # the last entry of output_hidden_states has the final norm applied: not the layer's output
    h_in, h_out = pairs[-1]
    hf_delta = (hs[n] - hs[n - 1])[0, 1:]
    assert (h_out - h_in - hf_delta).norm() > 0.1 * hf_delta.norm()
    final_norm = model.hf_model().model.norm
    # RMSNorm in float32 (a mean of d squares, rsqrt, gain) of the same states: sum_rtol(d)
    d = model.layout.hidden
    torch.testing.assert_close(final_norm(h_out), hs[n][0, 1:], rtol=tol.agree_rtol(d),
                               atol=tol.agree_rtol(d) * float(hs[n].abs().max()))


def _corpus(model, budget):
    return calibration.tokenize(calibration.load_corpus(), model.encode, budget)


def test_streamed_statistics_equal_dense_computation():
    model = open_model("synthetic:tiny-llama")
    tc = _corpus(model, 300)
    res = activations.compute(model, tc, top_k=4)
    n, d = model.layout.num_layers, model.layout.hidden
    ins = [[] for _ in range(n)]
    outs = [[] for _ in range(n)]
    for ids in activations.windows(tc, 512):
        pairs, _ = _hook_pairs(model, ids)
        for L, (a, b) in enumerate(pairs):
            ins[L].append(a.double().numpy())
            outs[L].append(b.double().numpy())
    # Per-token scalars: float64 arithmetic on the float32 states the streamed pass sees (the same
    # float32 ops as this hooked forward); rel=1e-6 is float64's √n·u₆₄
    # times 1e7 of room, the room for a kernel that blocks the two forwards' GEMMs differently (a
    # state's rounding u·‖h‖ becomes u·‖h‖/‖δ‖ ≈ 1e-6 in a statistic of δ = o − h, ‖δ‖ ≈ ‖h‖/10).
    window = 512  # activations.windows(tc, 512): float32 Gram of ≤ 512 tokens, summed in float64
    for L in range(n):
        h, o = np.concatenate(ins[L]), np.concatenate(outs[L])
        delta = o - h
        dn, hn = np.linalg.norm(delta, axis=1), np.linalg.norm(h, axis=1)
        cos = np.sum(delta * h, 1) / (dn * hn)
        assert res["rel_step"][L] == pytest.approx((dn / hn).mean(), rel=1e-6)
        assert res["parallel_frac"][L] == pytest.approx(np.abs(cos).mean(), rel=1e-6)
        assert res["cos_delta_h"][L] == pytest.approx(cos.mean(), rel=1e-6, abs=1e-9)
        assert res["angular_step"][L] == pytest.approx(residual.angular_step(h, o).mean(), rel=1e-6)
        _, s, vt = np.linalg.svd(delta, full_matrices=False)
        # Gram entries err by ≤ sum_rtol(window)·√(G_ii G_jj), so ‖ΔG‖₂ ≤ ‖ΔG‖_F ≤ that · tr G and
        # each eigenvalue moves by at most this much (Weyl)
        weyl = tol.sum_rtol(window) * float((s ** 2).sum())
        np.testing.assert_allclose(res["eigvals"][L][:d], s ** 2, rtol=0, atol=weyl)
        # measured bounds (≤ 1e-6 here): the effective rank's and the top direction's sensitivity
        # to those eigenvalue errors is 1/gap-like (Davis–Kahan), not a fixed multiple of u
        assert res["effective_rank"][L] == pytest.approx(residual.effective_rank(s ** 2), rel=1e-4)
        assert abs(float(res["top_dirs"][L][0] @ vt[0])) == pytest.approx(1.0, abs=1e-4)
    assert res["scored_tokens"] == tc.scored_tokens == len(np.concatenate(ins[0]))
    assert res["calibration"]["tokens"] == 300
    assert res["memory"]["layers_in_memory"] == 1


def test_hooked_path_holds_one_layer_input_of_one_window():
    model = open_model("synthetic:tiny-llama")
    tc = _corpus(model, 300)
    res = activations.compute_hooked(model, tc, top_k=4)
    d = model.layout.hidden
    assert res["memory"]["max_layer_inputs_held"] == 1
    # peak extra memory: one layer's hidden states of one window, not all layers'
    assert res["memory"]["max_window_hidden_bytes"] == max(len(w) for w in activations.windows(tc, 512)) * d * 4


def test_grouped_passes_equal_single_pass():
    model = open_model("synthetic:tiny-qwen3")
    tc = _corpus(model, 200)
    one = activations.compute_hooked(model, tc, top_k=3)
    d = model.layout.hidden
    grouped = activations.compute_hooked(model, tc, top_k=3, gram_budget_bytes=3 * d * d * 8)
    assert grouped["memory"]["passes"] == 3 and one["memory"]["passes"] == 1
    # the same float32 windows and float64 Grams grouped differently: float64 rounding only
    np.testing.assert_allclose(grouped["eigvals"], one["eigvals"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grouped["rel_step"], one["rel_step"], rtol=1e-12)


def test_layer_groups_fit_budget():
    assert activations.layer_groups(5, 10, 10 * 10 * 8 * 2) == [[0, 1], [2, 3], [4]]
    assert activations.layer_groups(3, 10, 1) == [[0], [1], [2]]


@pytest.fixture(scope="module")
def planted_results():
    out = {}
    for spec in ("synthetic:planted-residual", "random:synthetic:planted-residual"):
        model = open_model(spec)
        out[spec] = activations.compute(model, _corpus(model, 1000))
    return out


CLAIMS = {
    "phase-C-shared-subspace": lambda r, ph: residual.shared_subspace(r, ph, "C"),
    "phase-E-specialized": lambda r, ph: residual.specialized(r, ph, "E"),
    "late-layers-change-least": lambda r, ph: residual.late_layers_change_least(r),
}


@pytest.mark.parametrize("claim_id", sorted(CLAIMS))
def test_claims_supported_on_planted_not_on_twin(planted_results, claim_id):
    import importlib
    mod = importlib.import_module("hypotheses.test_" + claim_id.lower().replace("-", "_"))
    claim = mod.CLAIM
    assert claim.id == claim_id
    phases = default_phases(24)
    planted = CLAIMS[claim_id](planted_results["synthetic:planted-residual"], phases)
    twin = CLAIMS[claim_id](planted_results["random:synthetic:planted-residual"], phases)
    assert decide(claim, planted, 0.05).verdict == "SUPPORTED", planted
    assert decide(claim, twin, 0.05).verdict != "SUPPORTED", twin


@pytest.mark.slow
def test_smollm2_last_layer_is_not_the_final_norm_artifact():
    model = open_model("smollm2-135m")
    tc = _corpus(model, 600)
    res = activations.compute(model, tc)
    n = model.layout.num_layers
    # the artifact: output_hidden_states[-1] − [-2] over the same tokens
    hf = model.hf_model()
    rel = []
    for ids in activations.windows(tc, 1024):
        with torch.no_grad():
            hs = hf(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False).hidden_states
        h, o = hs[n - 1][0, 1:].double(), hs[n][0, 1:].double()
        rel.append(((o - h).norm(dim=1) / h.norm(dim=1)).numpy())
    artifact = float(np.concatenate(rel).mean())
    assert artifact > 0.97  # what delta_svd.py reported (≈ 0.99)
    assert res["rel_step"][n - 1] < 0.95 and abs(res["rel_step"][n - 1] - artifact) > 0.05
    assert calibration.tokenize(calibration.load_corpus(), model.encode).tokens >= 2000


@pytest.mark.parametrize("budget, gram", [(40, "tokens"), (None, "hidden")])
@pytest.mark.parametrize("parts", [2, 3])
def test_a_forward_split_by_token_windows_merges_to_the_serial_statistics(budget, gram, parts):
    """--cluster-split: units of windows streamed separately, then merged, give compute()'s
    result: per-token arrays and token-Gram spectra bit for bit; the hidden Gram to the float32
    rounding of the block of rows that straddles a share boundary."""
    model = open_model("synthetic:tiny-llama")
    corpus = _corpus(model, budget)
    serial = activations.compute(model, corpus)
    units = [activations.compute_part(model, corpus, i, parts) for i in range(parts)]
    assert {u["gram"] for u in units} == {gram} and all(u["accumulators"] for u in units)
    assert sum(u["accumulators"][0].tokens for u in units) == serial["scored_tokens"]
    merged = activations.combine_parts(model, corpus, units[::-1])   # any order in
    for key in ("tok_delta_sq", "tok_dot", "tok_h_sq"):
        assert np.array_equal(merged[key], serial[key]), key
    for key in ("rel_step", "parallel_frac", "cos_delta_h", "angular_step", "delta_sq_mean"):
        np.testing.assert_allclose(merged[key], serial[key], rtol=1e-12, err_msg=key)
    if gram == "tokens":
        assert np.array_equal(merged["eigvals"], serial["eigvals"])
    else:
        # Weyl: |Δλ| ≤ ‖ΔG‖₂; each path's float32 block GEMMs (≤ 2 × GRAM_BLOCK_ROWS rows)
        # err by ≤ λ√k·u·Σ‖δ‖² (typical bound, tests/tolerance.py), Σ‖δ‖² = trace = Σλ
        k = 2 * activations.GRAM_BLOCK_ROWS
        bound = 2 * tol.LAMBDA * np.sqrt(k) * tol.U32 * serial["eigvals"].sum(axis=1)
        assert (np.abs(merged["eigvals"] - serial["eigvals"]).max(axis=1) <= bound).all()
    overlap = np.abs(np.einsum("lkd,lkd->lk", merged["top_dirs"], serial["top_dirs"]))
    assert overlap[:, 0].min() > 1 - 1e-4   # the top direction (well separated here)
    with pytest.raises(ValueError, match="every part"):
        activations.combine_parts(model, corpus, units[:-1])


def test_window_shares_cover_the_windows_in_order_with_balanced_tokens():
    lengths = [1024, 1024, 300, 1024, 50, 1024, 800]
    for parts in (1, 2, 3, 7, 9):
        shares = activations.window_shares(lengths, parts)
        assert len(shares) == parts
        assert [i for r in shares for i in r] == list(range(len(lengths)))
    two = activations.window_shares(lengths, 2)
    assert abs(sum(lengths[i] for i in two[0]) - sum(lengths[i] for i in two[1])) <= 1024


# -- the tokenizer's BOS: every window starts with it, and it is the position left out ---------
@pytest.mark.parametrize("template,bos", [
    ("<s> $A", 1), ("$A </s>", None), (None, None), ("<s> $A </s>", 1),
    # more than one token after the text: the leading one counts as it is the declared BOS
    ("<s> $A </s> </s>", 1),
    # whatever one token the tokenizer puts first is what the model is fed first, BOS or not
    ("</s> $A", 2)])
def test_bos_is_read_off_the_tokenizer(tmp_path, template, bos):
    assert open_model(str(checkpoint_with_tokenizer(tmp_path, template))).bos_id == bos


def test_windows_start_with_the_bos_and_every_text_token_is_scored(tmp_path):
    model = open_model(str(checkpoint_with_tokenizer(tmp_path, "<s> $A")))
    docs = calibration.corpus_from_text("the quick brown fox jumps over the lazy dog\n\n"
                                        "a cat sat on the mat and ran far away", "test", None)
    tc = calibration.tokenize_for(model, docs)
    text = [model.encode("the quick brown fox jumps over the lazy dog"),
            model.encode("a cat sat on the mat and ran far away")]
    assert tc.bos == 1 and tc.documents == tuple(map(tuple, text))
    assert tc.scored_tokens == sum(map(len, text)) and tc.tokens == sum(map(len, text)) + 2
    assert tc.record()["bos"] == 1
    # a window limit of 4 cuts each document into pieces of 3 text tokens after the BOS
    assert activations.windows(tc, 4) == [[1, *doc[i:i + 3]] for doc in text
                                          for i in range(0, len(doc), 3)]
    assert [len(doc) for doc in text] == [9, 10]
    res = activations.compute(model, tc, top_k=2)
    assert res["scored_tokens"] == tc.scored_tokens == 19
    assert res["calibration"]["bos"] == 1
    # the statistics are those of the text tokens in windows that start with the BOS: the
    # hooked forward of [BOS] + text, BOS position left out
    n = model.layout.num_layers
    ins = [[] for _ in range(n)]
    outs = [[] for _ in range(n)]
    for ids in activations.windows(tc, 512):
        assert ids[0] == 1
        pairs, _ = _hook_pairs(model, ids)
        for L, (a, b) in enumerate(pairs):
            ins[L].append(a.double().numpy())
            outs[L].append(b.double().numpy())
    for L in range(n):
        h, o = np.concatenate(ins[L]), np.concatenate(outs[L])
        assert len(h) == 19
        dn, hn = np.linalg.norm(o - h, axis=1), np.linalg.norm(h, axis=1)
        assert res["rel_step"][L] == pytest.approx((dn / hn).mean(), rel=1e-6)
    # without the BOS the same text is another computation (first text token dropped instead)
    plain = calibration.tokenize(docs, model.encode)
    assert plain.bos is None and plain.scored_tokens == 17
    assert activations.compute(model, plain, top_k=2)["scored_tokens"] == 17
