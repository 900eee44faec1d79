"""Residual-stream statistics and nulls on plain arrays: known answers, dense float64 checks."""

# Tolerances (tests/tolerance.py): every path here is float64 numpy on float64 arrays, rounding
# ≈ √n·u₆₄ ≈ 1e-15 times the problem's condition: 1e-9/1e-12 where the two sides are the same
# formula rearranged, 1e-8·s² and 1e-6 where a Gram-based eigensolve meets an SVD (the Gram
# squares the condition; hypothesis draws near-degenerate spectra); abs=0.005/0.015 are Monte
# Carlo bounds (≈ 4 standard errors of the draws).

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from probes import calibration, residual
from probes.errors import NotApplicable, StrataError
from probes.evidence import Claim, decide
from probes.phases import default_phases


# ----------------------------------------------------------------------------- spectra ----
def test_effective_rank_known_answers():
    assert residual.effective_rank([1, 1, 1, 1]) == pytest.approx(4)
    assert residual.effective_rank([5, 0, 0]) == pytest.approx(1)
    assert residual.effective_rank([0, 0]) == 0.0
    assert residual.effective_rank([2, 2, -1e-18]) == pytest.approx(2)  # round-off clipped
    p = np.array([0.5, 0.25, 0.25])
    assert residual.effective_rank(7 * p) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-100, 1e3)), min_size=1, max_size=30),
       st.floats(1e-3, 1e3))
def test_effective_rank_bounds_and_scale_invariance(w, c):
    w = np.array(w)
    r = residual.effective_rank(w)
    nz = int((w > 0).sum())
    if nz == 0:
        assert r == 0.0
    else:
        assert 1 - 1e-9 <= r <= nz + 1e-9
        assert residual.effective_rank(c * w) == pytest.approx(r, rel=1e-9)


def test_top_energy():
    assert residual.top_energy([1, 3, 6], 1) == pytest.approx(0.6)
    assert residual.top_energy([1, 3, 6], 2) == pytest.approx(0.9)
    assert residual.top_energy([1, 3, 6], 10) == pytest.approx(1.0)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 40), st.integers(2, 12))
def test_gram_spectrum_equals_svd(seed, t, d):
    x = np.random.default_rng(seed).standard_normal((t, d))
    vals, top = residual.spectrum_from_gram(x.T @ x, 3)
    _, s, vt = np.linalg.svd(x)
    s2 = np.zeros(d)
    s2[:len(s)] = s ** 2
    np.testing.assert_allclose(vals, s2, atol=1e-8 * s2[0])
    k = min(3, len(s), d - 1)
    gaps_ok = all(s2[i] - s2[i + 1] > 1e-6 * s2[0] for i in range(k))
    if gaps_ok:
        np.testing.assert_allclose(np.abs(np.sum(top[:k] * vt[:k], axis=1)), 1.0, atol=1e-6)


def test_angular_step_known_values():
    h = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    out = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    np.testing.assert_allclose(residual.angular_step(h, out), [0.0, 0.5, 1.0], atol=1e-12)


# --------------------------------------------------------------- random-direction values ----
def test_random_abs_cos_known_answers():
    assert residual.random_abs_cos_mean(2) == pytest.approx(2 / math.pi)
    assert residual.random_abs_cos_mean(3) == pytest.approx(0.5)
    assert residual.random_abs_cos_mean(4096) == pytest.approx(math.sqrt(2 / (math.pi * 4096)), rel=1e-3)
    x = np.random.default_rng(0).standard_normal((20000, 2, 16))
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    mc = np.abs(np.sum(x[:, 0] * x[:, 1], axis=1)).mean()
    assert mc == pytest.approx(residual.random_abs_cos_mean(16), abs=0.005)


def test_random_capture_is_r_over_d():
    rng = np.random.default_rng(1)
    d, n, k = 32, 6, 8
    caps = []
    for _ in range(200):
        topk = rng.standard_normal((n, k, d))
        topk /= np.linalg.norm(topk, axis=2, keepdims=True)
        caps.append(residual.loo_capture(topk, np.arange(n), rank=4).mean())
    assert np.mean(caps) == pytest.approx(residual.random_capture(4, d), abs=0.015)


# --------------------------------------------------------------------- across layers ----
def _unit_topk(rng, n, k, d):
    x = rng.standard_normal((n, k, d))
    return x / np.linalg.norm(x, axis=2, keepdims=True)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 7), st.integers(1, 5), st.integers(3, 30),
       st.integers(1, 9))
def test_loo_capture_gram_trick_equals_explicit_svd(seed, m, k, d, rank):
    rng = np.random.default_rng(seed)
    topk = _unit_topk(rng, m + 2, k, d)
    members = np.sort(rng.choice(m + 2, m, replace=False))
    fast = residual.loo_capture(topk, members, rank)
    slow = residual.loo_capture_direct(topk, members, rank)
    np.testing.assert_allclose(fast, slow, atol=1e-6)


def test_loo_capture_rotation_invariant_and_known_answer():
    rng = np.random.default_rng(3)
    topk = _unit_topk(rng, 5, 3, 10)
    q = np.linalg.qr(rng.standard_normal((10, 10)))[0]
    a = residual.loo_capture(topk, np.arange(5))
    b = residual.loo_capture(topk @ q.T, np.arange(5))
    np.testing.assert_allclose(a, b, atol=1e-9)
    # every layer's top-1 lies in a shared 2-d subspace that the others span → capture 1
    u = np.linalg.qr(rng.standard_normal((10, 2)))[0]
    shared = np.einsum("dr,nkr->nkd", u, rng.standard_normal((5, 3, 2)))
    shared /= np.linalg.norm(shared, axis=2, keepdims=True)
    np.testing.assert_allclose(residual.loo_capture(shared, np.arange(5)), 1.0, atol=1e-9)


def test_intra_cross_batch_matches_loops():
    rng = np.random.default_rng(4)
    a = residual.abs_cos_matrix(rng.standard_normal((9, 6)))
    subs = np.array([[0, 1, 2], [2, 5, 8], [1, 3, 7]])
    got = residual._intra_cross_batch(a, subs)
    for s, g in zip(subs, got):
        intra, cross = residual.intra_cross(a, s)
        others = [j for j in range(9) if j not in s]
        pairs = [a[i, j] for i in s for j in s if i < j]
        assert intra == pytest.approx(np.mean(pairs))
        assert cross == pytest.approx(np.mean([a[i, j] for i in s for j in others]))
        assert g == pytest.approx(intra - cross)


def test_block_effective_rank_known_and_batch():
    e = np.eye(5)[:4]
    assert residual.block_effective_rank(e) == pytest.approx(4)
    assert residual.block_effective_rank(np.tile(e[:1], (3, 1)) * [[1], [-2], [3]]) == pytest.approx(1)
    rng = np.random.default_rng(5)
    top1 = rng.standard_normal((8, 6))
    subs = np.array([[0, 1, 2], [3, 4, 7]])
    got = residual._block_rank_batch(top1, subs)
    for s, g in zip(subs, got):
        assert g == pytest.approx(residual.block_effective_rank(top1[s]))


def test_label_subsets_exact_and_monte_carlo():
    subs, exact = residual.label_subsets(8, 3, seed=0, draws=100)
    assert exact and len(subs) == math.comb(8, 3) and len({tuple(s) for s in subs}) == 56
    a, ex = residual.label_subsets(30, 10, seed=7, draws=50)
    b, _ = residual.label_subsets(30, 10, seed=7, draws=50)
    assert not ex and a.shape == (50, 10) and np.array_equal(a, b)
    assert all(len(set(r)) == 10 and list(r) == sorted(r) for r in a)
    assert residual.null_p(3.0, np.array([1.0, 2.0, 3.0, 4.0]), "greater", True) == 0.5
    assert residual.null_p(3.0, np.array([1.0, 2.0, 3.0, 4.0]), "less", True) == 0.75


def _fake_result(top_dirs):
    return {"top_dirs": top_dirs}


def _planted_topk(n, d, shared_layers, seed=0, k=4):
    rng = np.random.default_rng(seed)
    topk = _unit_topk(rng, n, k, d)
    u = np.linalg.qr(rng.standard_normal((d, 2)))[0]
    for L in shared_layers:
        c = rng.standard_normal((k, 2))
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        v = c @ u.T + 0.01 * rng.standard_normal((k, d))
        topk[L] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return topk


def test_shared_subspace_detects_planted_and_not_random():
    n, d = 24, 48
    phases = default_phases(n)
    claim = Claim("c", "", "", "", "greater", 0.1)
    ev = residual.shared_subspace(_fake_result(_planted_topk(n, d, phases["C"])), phases, "C", draws=300)
    assert ev.extra["captures"] and min(ev.extra["captures"]) > 0.9
    assert decide(claim, ev, 0.05).verdict == "SUPPORTED"
    ev0 = residual.shared_subspace(_fake_result(_planted_topk(n, d, [])), phases, "C", draws=300)
    assert decide(claim, ev0, 0.05).verdict != "SUPPORTED"
    assert abs(ev0.observed - ev0.null_mean) < 3 * ev0.null_sd
    with pytest.raises(NotApplicable):
        residual.shared_subspace(_fake_result(_planted_topk(n, d, [])), {"all": list(range(n))}, "C")


def test_specialized_detects_orthogonal_phase_among_shared_layers():
    n, d = 24, 48
    phases = default_phases(n)
    topk = _planted_topk(n, d, phases["C"] + phases["D"])
    q = np.linalg.qr(np.random.default_rng(9).standard_normal((d, d)))[0]
    for i, L in enumerate(phases["E"]):
        topk[L, 0] = q[:, i]
    ev = residual.specialized(_fake_result(topk), phases, "E")
    assert ev.observed == pytest.approx(1.0) and ev.extra["not_more_aligned"]
    claim = Claim("e", "", "", "", "greater", 0.05)
    assert decide(claim, ev, 0.05).verdict == "SUPPORTED"
    # E sharing one direction: the condition fails → p = 1
    for L in phases["E"]:
        topk[L, 0] = q[:, 0]
    ev = residual.specialized(_fake_result(topk), phases, "E")
    assert ev.p == 1.0 and decide(claim, ev, 0.05).verdict != "SUPPORTED"
    with pytest.raises(NotApplicable):
        residual.specialized(_fake_result(topk), {"A": list(range(n))}, "E")


# ------------------------------------------------------------------ late layers -------------
def _stream(rng, t, n, d, scale):
    """Explicit per-token residual streams: returns per-token arrays and measured angles."""
    h = rng.standard_normal((t, d))
    tok_d, tok_dot, tok_h, ang = [], [], [], []
    mix = rng.standard_normal((d, d)) / math.sqrt(d)
    for L in range(n):
        delta = scale[L] * (rng.standard_normal((t, d)) + 0.5 * h @ mix)  # correlated with h
        tok_d.append((delta ** 2).sum(1))
        tok_dot.append((delta * h).sum(1))
        tok_h.append((h ** 2).sum(1))
        ang.append(residual.angular_step(h, h + delta).mean())
        h = h + delta
    return {"tok_delta_sq": np.stack(tok_d, 1), "tok_dot": np.stack(tok_dot, 1),
            "tok_h_sq": np.stack(tok_h, 1), "angular_step": np.array(ang)}


def test_exchangeable_angles_identity_order_is_exact():
    rng = np.random.default_rng(0)
    n = 7
    r = _stream(rng, 50, n, 12, rng.uniform(0.2, 2.0, n))
    got = residual.exchangeable_angles(r["tok_h_sq"][:, 0], r["tok_delta_sq"], r["tok_dot"],
                                       np.arange(n)[None, :])[0]
    np.testing.assert_allclose(got, r["angular_step"], rtol=1e-10)


def test_half_min_contrast_sign_is_argmin_half():
    n = 10  # candidates 0..8, second half from 5
    prof = np.linspace(1.0, 0.5, n - 1)
    assert residual.second_half_start(n) == 5
    assert residual.half_min_contrast(prof, n) > 0
    assert residual.half_min_contrast(prof[::-1], n) < 0


def test_late_layers_planted_supported_exchangeable_not():
    rng = np.random.default_rng(2)
    n = 16
    claim = Claim("late", "", "", "", "greater", 0.1)
    small = np.ones(n)
    small[8:15] = 0.1
    ev = residual.late_layers_change_least(_stream(rng, 80, n, 16, small), draws=400)
    assert ev.extra["argmin_in_second_half"]
    assert decide(claim, ev, 0.05).verdict == "SUPPORTED"
    # equal layers: steps shrink with depth only through accumulation → not supported
    flat = residual.late_layers_change_least(_stream(rng, 80, n, 16, np.ones(n)), draws=400)
    assert np.argmin(flat.profile.values[:n - 1]) >= 8  # accumulation alone puts argmin late...
    assert decide(claim, flat, 0.05).verdict != "SUPPORTED"  # ...and the null knows it
    # small steps early: argmin in the first half → p = 1
    early = np.ones(n)
    early[1:7] = 0.05
    ev = residual.late_layers_change_least(_stream(rng, 80, n, 16, early), draws=100)
    assert not ev.extra["argmin_in_second_half"] and ev.p == 1.0


def test_a_null_given_is_the_null_used_and_must_match_its_parameters():
    # the claims' nulls come from the cache as derived entries: passing one gives the same
    # evidence as drawing it inline, and one drawn for other parameters is refused
    rng = np.random.default_rng(4)
    n, d = 16, 32
    small = np.ones(n)
    small[9:15] = 0.2
    stream = _stream(rng, 60, n, 16, small)
    null = residual.exchangeable_null(stream, seed=3, draws=200)
    assert null["angles"].shape == (200, n - 1) and (null["seed"], null["draws"]) == (3, 200)
    inline = residual.late_layers_change_least(stream, seed=3, draws=200)
    given = residual.late_layers_change_least(stream, seed=3, draws=200, null=null)
    assert (given.observed, given.null_mean, given.null_sd, given.p) == \
        (inline.observed, inline.null_mean, inline.null_sd, inline.p)
    with pytest.raises(ValueError, match="seed 3 \\(wanted 4\\)"):
        residual.late_layers_change_least(stream, seed=4, draws=200, null=null)

    phases = default_phases(24)
    result = _fake_result(_planted_topk(24, d, phases["C"]))
    size = len(phases["C"])
    null = residual.capture_null(result, size, seed=5, draws=150)
    assert null["capture"].shape == (150,) and not null["exact"]
    inline = residual.shared_subspace(result, phases, "C", seed=5, draws=150)
    given = residual.shared_subspace(result, phases, "C", seed=5, draws=150, null=null)
    assert (given.observed, given.null_mean, given.null_sd, given.p) == \
        (inline.observed, inline.null_mean, inline.null_sd, inline.p)
    with pytest.raises(ValueError, match="size"):
        residual.shared_subspace(result, phases, "C", seed=5, draws=150,
                                 null=residual.capture_null(result, size + 1, seed=5, draws=150))
    # too few layers to leave one out: no null drawn (the claim is N/A before it needs one)
    assert residual.capture_null(result, 1, seed=5)["capture"].shape == (0,)


# --------------------------------------------------------------------- calibration ---------
def test_split_documents_blank_lines_and_separators():
    assert calibration.split_documents("a b\nc\n\n\n  \nd\n\ne") == ["a b\nc", "d", "e"]
    text = "def f():\n    x = 1\n\n    return x\n=====\n\nsecond doc\n\n=====\n"
    assert calibration.split_documents(text) == ["def f():\n    x = 1\n\n    return x", "second doc"]


def test_empty_or_missing_calibration_is_one_line_error(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("\n \n=====\n\n")
    with pytest.raises(StrataError) as e:
        calibration.load_corpus(p)
    assert "empty" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(StrataError):
        calibration.load_corpus(tmp_path / "missing.txt")
    (tmp_path / "one.txt").write_text("x")
    with pytest.raises(StrataError):
        calibration.tokenize(calibration.load_corpus(tmp_path / "one.txt"), lambda s: [1])


def test_tokenize_budget_and_record(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("aaaa\n\nb\n\ncccccc\n\ndd")
    c = calibration.load_corpus(p)
    enc = lambda s: [ord(ch) for ch in s]  # noqa: E731
    full = calibration.tokenize(c, enc)
    assert [len(d) for d in full.documents] == [4, 6, 2]  # 'b' (1 token) skipped
    cut = calibration.tokenize(c, enc, max_tokens=7)
    assert [len(d) for d in cut.documents] == [4, 3]
    rec = cut.record()
    assert rec["tokens"] == 7 and rec["scored_tokens"] == 5 and len(rec["sha256"]) == 64
    assert rec["source"] == str(p)


def test_builtin_corpus_is_varied_and_long():
    c = calibration.load_corpus()
    assert c.source == "builtin:default.txt" and len(c.documents) >= 20
    text = "\n".join(c.documents)
    for marker in ("def ", "SELECT", "fn main", "Theorem", "Customer:", "le ", "die ", "的"):
        assert marker in text
    assert sum(len(d.encode()) for d in c.documents) > 10_000  # ≥ 2,000 tokens (4,345 on SmolLM2)
