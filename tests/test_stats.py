"""Known answers for the statistics and the verdict rule."""

# Tolerances (tests/tolerance.py): float64 closed forms (rel=1e-12; a t quantile printed to 7
# digits: rel=1e-5); rel=0.15 on a variance of Monte Carlo draws is its sampling error.

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from probes.adjacent import permutation_null_moments
from probes.evidence import Claim, Evidence, decide
from probes.stats import holm, monte_carlo_p, t_interval, tost_p


def test_exact_permutation_moments_match_2000_sampled_permutations():
    rng = np.random.default_rng(1)
    for n in (7, 30, 200):
        a = rng.normal(1.0, 0.3, n)
        b = rng.gamma(2.0, 1.0, n)  # skewed, non-zero mean: the mean term matters
        mean, var = permutation_null_moments(a, b)
        draws = np.array([a @ rng.permutation(b) for _ in range(2000)])
        se_mean = math.sqrt(var / 2000)
        assert abs(draws.mean() - mean) < 4 * se_mean
        # sample variance of 2000 draws: relative sd ≈ sqrt(2/1999) ≈ 3.2 %
        assert draws.var(ddof=1) == pytest.approx(var, rel=0.15)


def test_exact_permutation_moments_by_enumeration():
    import itertools
    a = np.array([0.3, -1.0, 2.0, 0.5, 1.1])
    b = np.array([1.0, 4.0, -2.0, 0.0, 3.0])
    vals = np.array([a @ b[list(p)] for p in itertools.permutations(range(5))])
    mean, var = permutation_null_moments(a, b)
    assert mean == pytest.approx(vals.mean(), rel=1e-12)
    assert var == pytest.approx(vals.var(ddof=0), rel=1e-12)


@given(arrays(np.float64, st.integers(1, 12), elements=st.floats(0, 1)))
def test_holm_is_monotone_bounded_and_dominates_raw(p):
    adj = holm(p)
    assert np.all(adj >= p - 1e-15) and np.all(adj <= 1)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= -1e-15)


def test_holm_known_answer():
    # m=4: sorted p × (4,3,2,1), running max
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm([np.nan, 0.01])[0])


def test_monte_carlo_p_never_zero():
    assert monte_carlo_p(10.0, np.zeros(99), "greater") == pytest.approx(0.01)
    assert monte_carlo_p(-10.0, np.zeros(99), "greater") == 1.0


def test_t_interval_covers_mean():
    m, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and lo < 2.0 < hi
    assert hi - 2.0 == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-5)


def test_tost():
    assert tost_p(0.0, 0.01, 0.1) < 1e-6
    assert tost_p(0.2, 0.01, 0.1) > 0.99


def _ev(effect, lo, hi, p):
    return Evidence(observed=effect, null_kind="k", null_mean=0, null_sd=1, effect=effect,
                    ci=(lo, hi), p=p)


@pytest.mark.parametrize("direction,ev,expected", [
    ("greater", _ev(0.3, 0.2, 0.4, 0.001), "SUPPORTED"),
    ("greater", _ev(0.05, 0.01, 0.09, 0.001), "REFUTED"),       # significant but below minimum
    ("greater", _ev(0.2, -0.1, 0.5, 0.2), "INCONCLUSIVE"),
    ("two-sided", _ev(-0.3, -0.4, -0.2, 0.001), "SUPPORTED"),
    ("two-sided", _ev(0.01, -0.02, 0.04, 0.01), "REFUTED"),
    ("equivalent", _ev(0.01, -0.02, 0.04, 0.01), "SUPPORTED"),
    ("equivalent", _ev(0.3, 0.2, 0.4, 0.9), "REFUTED"),
    ("equivalent", _ev(0.05, -0.05, 0.15, 0.3), "INCONCLUSIVE"),
])
def test_decide(direction, ev, expected):
    claim = Claim("c", "s", "stat", "null", direction=direction, min_effect=0.1)
    assert decide(claim, ev, alpha=0.05).verdict == expected


def test_decide_not_finite_is_na():
    claim = Claim("c", "s", "stat", "null")
    assert decide(claim, _ev(float("nan"), 0, 1, 0.01), 0.05).verdict == "N/A"
    assert decide(claim, None, 0.05).verdict == "N/A"
