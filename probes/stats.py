"""Small statistics shared by the probes: p-values, intervals, multiplicity, label permutation
tests.

Everything returns plain floats or numpy arrays. The Evidence builders orient the effect so the
claimed direction is positive (see ``probes.evidence``).
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
from scipy import stats as sps

from .evidence import Direction, Evidence, Profile, require

Z95 = float(sps.norm.ppf(0.975))
PERMUTATION_TEST_EXACT_MAX = 20000  # exact label enumeration up to this many splits
PERMUTATION_TEST_DRAWS = 19999      # Monte Carlo label permutations above it


def oriented(observed: float, null_mean: float, direction: Direction) -> float:
    """Effect with the claimed direction positive (``less``: null − observed)."""
    return null_mean - observed if direction == "less" else observed - null_mean


def normal_p(z: float, direction: Direction) -> float:
    """p-value of a standard-normal score ``z`` = (observed − null mean)/sd."""
    if direction == "greater":
        return float(sps.norm.sf(z))
    if direction == "less":
        return float(sps.norm.cdf(z))
    return float(2 * sps.norm.sf(abs(z)))


def monte_carlo_p(observed: float, null_samples: np.ndarray, direction: Direction) -> float:
    """Permutation p-value with the +1 correction (never 0): (1 + #{null as extreme}) / (B + 1)."""
    null_samples = np.asarray(null_samples, dtype=float)
    b = null_samples.size
    if direction == "greater":
        k = np.sum(null_samples >= observed)
    elif direction == "less":
        k = np.sum(null_samples <= observed)
    else:
        centre = null_samples.mean()
        k = np.sum(np.abs(null_samples - centre) >= abs(observed - centre))
    return float((1 + k) / (b + 1))


def t_interval(values: Sequence[float], conf: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t interval of ``values`` (needs ≥ 2 values)."""
    x = np.asarray(values, dtype=float)
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    se = float(x.std(ddof=1) / math.sqrt(n))
    q = float(sps.t.ppf(0.5 + conf / 2, n - 1))
    return mean, mean - q * se, mean + q * se


def tost_p(effect: float, se: float, margin: float, df: float | None = None) -> float:
    """Two one-sided tests p-value for |true effect| < margin (normal, or t with ``df``)."""
    if se <= 0:
        return 0.0 if abs(effect) < margin else 1.0
    dist = sps.norm if df is None else sps.t(df)
    p_low = dist.sf((effect + margin) / se)   # H0: effect ≤ −margin
    p_high = dist.cdf((effect - margin) / se)  # H0: effect ≥ +margin
    return float(max(p_low, p_high))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1). NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q)
    adj = np.maximum.accumulate((m - np.arange(m)) * q[order])
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def evidence_vs_null_samples(observed: float, null_samples: np.ndarray, direction: Direction,
                             null_kind: str, profile: Profile | None = None,
                             **extra) -> Evidence:
    """Evidence for a statistic against a Monte Carlo (or exact enumeration) null.

    effect = observed − null mean (oriented); interval = effect ± 1.96·null sd, i.e. the
    statistic's spread under the null used as its standard error; p = permutation p-value.
    """
    null_samples = np.asarray(null_samples, dtype=float)
    mu, sd = float(null_samples.mean()), float(null_samples.std(ddof=1)) if null_samples.size > 1 else 0.0
    eff = oriented(observed, mu, direction)
    test_dir = "greater" if direction == "greater" else ("less" if direction == "less" else "two-sided")
    p = monte_carlo_p(observed, null_samples, test_dir)
    return Evidence(observed=float(observed), null_kind=null_kind, null_mean=mu, null_sd=sd,
                    effect=eff, ci=(eff - Z95 * sd, eff + Z95 * sd), p=p, profile=profile,
                    extra={"null_draws": int(null_samples.size), **extra})


def clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided ``conf`` interval of a binomial rate, k of n.

    Its upper end is the one-sided (1 + conf)/2 upper bound: with conf = 0.90 and k = 0 it is
    1 − 0.05^(1/n) (0.139 for n = 20, below 0.10 from n = 29 on)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"clopper_pearson: need 0 ≤ k ≤ n and n > 0, got k={k}, n={n}")
    tail = (1 - conf) / 2
    lo = 0.0 if k == 0 else float(sps.beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


def paired_difference(diff: Sequence[float], direction: Direction = "greater",
                      null_kind: str = "no difference (paired t over pairs)",
                      min_pairs: int = 2, profile: Profile | None = None,
                      where: str = "", **extra) -> Evidence:
    """Evidence for "the mean of paired differences is positive" (or negative, or either, by
    ``direction``): one-sample t test of ``diff`` against 0 over its entries (e.g. a phase's
    adjacent pairs), null mean 0, null sd = the mean's standard error, effect oriented so the
    claimed direction is positive, 95 % t interval of that effect.

    Raises :class:`~probes.errors.NotApplicable` when there are fewer than ``min_pairs``
    (default 2: one value has no spread, so no t statistic and no interval; the reason is
    :func:`probes.evidence.require`'s, ``where`` saying where: ``"on phase tail"``) or non-finite
    differences, or when every difference is equal (zero spread). So a claim built on it needs
    no guard of its own and never emits NumPy's "degrees of freedom <= 0" warnings.
    """
    from .errors import NotApplicable
    x = np.asarray(diff, dtype=float)
    require(x.size, min_pairs, "paired difference", where)
    if not np.all(np.isfinite(x)):
        raise NotApplicable("a paired difference is NaN/Inf (zero-norm or non-finite inputs)")
    if np.ptp(x) == 0:
        raise NotApplicable("every paired difference is equal: no spread to test against")
    n = x.size
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(n))
    sign = -1.0 if direction == "less" else 1.0
    eff = sign * mean
    q = float(sps.t.ppf(0.975, n - 1))
    t = mean / se
    if direction == "greater":
        p = float(sps.t.sf(t, n - 1))
    elif direction == "less":
        p = float(sps.t.cdf(t, n - 1))
    else:
        p = float(2 * sps.t.sf(abs(t), n - 1))
    return Evidence(observed=mean, null_kind=null_kind, null_mean=0.0, null_sd=se, effect=eff,
                    ci=(eff - q * se, eff + q * se), p=p, se=se, profile=profile,
                    extra={"pairs": int(n), "t": t, "df": n - 1, **extra})


def label_permutation_null(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Null of mean(x[first group]) − mean(x[rest]) over relabellings of the pooled values,
    the first group of size ``k``: every split when C(n, k) ≤ PERMUTATION_TEST_EXACT_MAX
    (returns exact=True; the observed split is among them), else PERMUTATION_TEST_DRAWS seeded
    random splits."""
    x = np.asarray(x, float)
    n = x.size
    total = x.sum()
    if math.comb(n, k) <= PERMUTATION_TEST_EXACT_MAX:
        combos = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), k)),
                             dtype=np.int64).reshape(-1, k)
        exact = True
    else:
        rng = np.random.default_rng([seed, n, k])
        combos = np.argsort(rng.random((PERMUTATION_TEST_DRAWS, n)), axis=1)[:, :k]
        exact = False
    s = x[combos].sum(axis=1)
    return s / k - (total - s) / (n - k), exact


def permutation_test(x_first: np.ndarray, x_second: np.ndarray, seed: int = 0) -> dict:
    """Difference of means first − second and its label-permutation null (one-sided, greater)."""
    x_first, x_second = np.asarray(x_first, float), np.asarray(x_second, float)
    observed = float(x_first.mean() - x_second.mean())
    null, exact = label_permutation_null(np.concatenate([x_first, x_second]), x_first.size, seed)
    tol = 1e-12 * max(1.0, float(np.max(np.abs(null))))
    ge = int(np.sum(null >= observed - tol))
    p = ge / null.size if exact else (1 + int(np.sum(null >= observed))) / (null.size + 1)
    return {"observed": observed, "null": null, "p": float(p), "exact": exact}
