"""The spectral bounds in tests/tolerance.py hold: a Gram perturbed by ‖ΔG‖_F = atol (and its trace
by at most rel·tr) moves eigenvalues, top-k energies, the effective rank and resolved directions
by no more than they say — for random perturbations and for the ones that push hardest (along the
eigenvectors, lifting the round-off tail)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.residual import effective_rank, top_energy
from tests import tolerance as tol


def _gram(rng, d, decay, tail_zeros):
    """A d × d PSD Gram with eigenvalues λ_i ∝ i^−decay, the last ``tail_zeros`` set to 0 (the
    round-off tail of a Gram of fewer rows than d)."""
    lam = np.arange(1, d + 1, dtype=np.float64) ** -decay
    lam[d - tail_zeros:] = 0.0
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * lam) @ q.T, q, lam


def _perturbations(rng, q, lam, atol):
    """ΔG with ‖ΔG‖_F = atol: a random symmetric one; two diagonal in G's eigenbasis (every
    eigenvalue raised by the same amount, and the tail alone raised: the effective rank's worst);
    and one coupling the first two eigenvectors (rotates them the most for its size)."""
    d = len(lam)
    pair = np.outer(q[:, 0], q[:, 1])
    yield (pair + pair.T) * (atol / np.sqrt(2))
    e = rng.standard_normal((d, d))
    yield (e + e.T) * (atol / np.linalg.norm(e + e.T))
    yield (q * np.full(d, atol / np.sqrt(d))) @ q.T
    tail = lam < lam[0] * 1e-2
    if tail.any():
        yield (q * (tail * atol / np.sqrt(tail.sum()))) @ q.T


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31), d=st.integers(4, 48), decay=st.floats(0.0, 3.0),
       tail=st.integers(0, 20), log_rel=st.floats(-8, -2))
def test_spectral_bounds_hold(seed, d, decay, tail, log_rel):
    rng = np.random.default_rng(seed)
    g, q, lam = _gram(rng, d, decay, min(tail, d - 2))
    rel = 10.0 ** log_rel
    atol = tol.gram_eig_atol(lam, rel)
    for dg in _perturbations(rng, q, lam, atol):
        # the trace's own error is bounded by rel·tr (a sum of the diagonal's |ΔG_ii| ≤ ‖ΔG‖_F·√d
        # would not be); scale the perturbation so this one respects it
        dtr = abs(np.trace(dg))
        if dtr > rel * lam.sum():
            dg *= rel * lam.sum() / dtr
        w, v = np.linalg.eigh(g + dg)
        # float64's own error in forming G and solving it (≈ d·u₆₄·λ₁): the room the checks need
        eigh_err = 100 * d * tol.U64 * lam[0]
        w, v = w[::-1], v[:, ::-1]
        assert np.max(np.abs(w - lam)) <= atol + eigh_err                      # Weyl
        for k in (1, 3, 10):
            assert abs(top_energy(w, k) - top_energy(lam, k)) <= \
                tol.top_energy_atol(lam, k, atol, rel + eigh_err)
        erank = effective_rank(lam)
        assert abs(effective_rank(w) - erank) <= \
            tol.effective_rank_rtol(lam, atol + eigh_err, rel + eigh_err) * erank
        for k in range(min(4, d)):
            # u: the float64 eigenvectors and their dot product (d terms) round too
            bound = tol.direction_cos_atol(lam, k, atol + eigh_err, u=d * tol.U64)
            assert 1 - abs(float(v[:, k] @ q[:, k])) <= bound


def test_bounds_are_zero_for_no_perturbation_and_infinite_for_a_degenerate_pair():
    lam = np.array([4.0, 2.0, 2.0, 1.0, 0.0])
    assert tol.gram_eig_atol(lam, 0.0) == 0.0
    assert tol.effective_rank_rtol(lam, 0.0, 0.0) == 0.0
    assert tol.top_energy_atol(lam, 3, 0.0, 0.0) == 0.0
    assert tol.direction_cos_atol(lam, 1, 1e-9) == np.inf      # λ₂ = λ₃: no direction
    assert tol.direction_cos_atol(lam, 0, 0.0) == 4 * tol.U32  # stored float32 unit vector


def test_effective_rank_bound_is_not_vacuous():
    """At the Gram accuracy the activation tests use (agree_rtol of 2,048 float32 rows), the
    bound on a 64-wide spectrum with a long tail is well under 1 %: a streaming bug (≥ 1e-2) is
    still caught by the effective rank, not only by the eigenvalues."""
    lam = np.arange(1, 65, dtype=np.float64) ** -1.5
    rel = tol.agree_rtol(2048)
    assert tol.effective_rank_rtol(lam, tol.gram_eig_atol(lam, rel), rel) < 1e-2
