"""Random-effects pooling of one claim's effects over several models, and the pooled verdict.

Model (the usual random-effects meta-analysis): model i reports an effect y_i with standard
error s_i (its record's); y_i = θ_i + e_i, e_i ~ N(0, s_i²), and the models' true effects vary
around a mean, θ_i ~ N(μ, τ²). μ is the effect of "a model like these" on average, τ² the
between-model variance. The null of every effect is 0 (records orient ``effect`` = observed −
null, claimed direction positive), so the null of μ is 0 too.

The estimators are statsmodels' (``statsmodels.stats.meta_analysis.combine_effects``):

* τ² by Paule–Mandel (default, ``method="pm"``): the τ² ≥ 0 at which the weighted residual sum
  Σ w_i (y_i − μ̂)² with w_i = 1/(s_i² + τ²) equals its expectation k − 1 (0 when even τ² = 0
  gives less); or DerSimonian–Laird (``"dl"``): the one-step moment estimator
  (Q − (k − 1)) / (Σw − Σw²/Σw) with w = 1/s², truncated at 0 (statsmodels leaves it
  negative; the truncated value is passed back as a fixed τ², see :func:`random_effects`);
* μ̂ = Σ w_i y_i / Σ w_i with SE(μ̂) = (Σ w_i)^−½, and its interval μ̂ ± t_{k−1} SE
  (``CombineResults.conf_int(use_t=True)``, random-effects row: with Paule–Mandel the
  Hartung–Knapp scale is 1, so this is also the Hartung–Knapp–Sidik–Jonkman interval);
* Cochran's Q = Σ (y_i − μ̂_FE)²/s_i² with its χ²_{k−1} p-value, and I² = max(0, 1 − (k−1)/Q),
  the share of the spread that is between models (Higgins & Thompson 2002, Stat. Med.
  21:1539); statsmodels' ``i2`` is the same before the truncation at 0.

statsmodels has no prediction interval; it is the standard one of Higgins, Thompson &
Spiegelhalter (2009, "A re-evaluation of random-effects meta-analysis", J. R. Stat. Soc. A
172:137–159): the range in which the true effect of a *new* model from the same population
falls with probability 1 − α, μ̂ ± t_{k−2, 1−α/2} √(τ̂² + SE(μ̂)²), computed here from
statsmodels' τ̂² and SE. It needs k ≥ 3 (k − 2 degrees of freedom), which is why a pooled
record needs three models. It treats τ̂² as known, so with few models its coverage is below
nominal (Nagashima, Noma & Furukawa 2019, Stat. Methods Med. Res. 28:1689): a GENERAL verdict
from three or four models is the optimistic reading of little evidence.

The pooled verdict compares these intervals with the claim's *supported region* S — where an
effect counts as showing the claim: [m, ∞) for ``greater``/``less`` (m = minimum effect),
|x| ≥ m for ``two-sided``, (−m, m) for ``equivalent``:

* **GENERAL**: the prediction interval lies in S — a new model is expected to show the claim;
* **ABSENT**: the pooled interval lies outside S — the average model does not show it;
* **HETEROGENEOUS**: neither, and the models' effects differ beyond their standard errors
  (Cochran's Q test of homogeneity rejects at α) — whether the claim holds depends on the model;
* **INCONCLUSIVE**: neither, with no evidence that the models differ — more models, or more
  precise ones, are needed (with three models the prediction interval is μ̂ ± 12.7·…, so
  even effects that agree and whose mean lies in S stay here).

The Q test has little power with few models, so HETEROGENEOUS is the lower bound of the spread
(τ² and I² say how much); a homogeneous-looking zoo of three is INCONCLUSIVE, not GENERAL.

Levels: the pooled interval at 1 − α (1 − 2α for ``equivalent``, as the records' TOST
intervals are), the prediction interval at 1 − α.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

POOLED_VERDICTS = ("GENERAL", "HETEROGENEOUS", "ABSENT", "INCONCLUSIVE")
METHODS = {"pm": "Paule–Mandel", "dl": "DerSimonian–Laird"}
MIN_MODELS = 3            # the prediction interval needs k − 2 ≥ 1 degrees of freedom
PM_MAXITER = 1000         # Paule–Mandel Newton steps (statsmodels' default is 50)


@dataclass(frozen=True)
class RandomEffects:
    """One random-effects pooling: estimate, intervals, heterogeneity."""

    k: int
    method: str               # "pm" or "dl"
    effect: float             # μ̂
    se: float                 # SE(μ̂)
    ci: tuple[float, float]   # μ̂ ± t_{k−1} SE at ci_level
    ci_level: float
    tau2: float               # τ̂² ≥ 0
    i2: float                 # I² ∈ [0, 1]
    q: float                  # Cochran's Q (fixed-effect residual sum)
    q_p: float                # its χ²_{k−1} p-value (homogeneity)
    prediction_interval: tuple[float, float]  # μ̂ ± t_{k−2} √(τ̂² + SE²) at pi_level
    pi_level: float
    fixed_effect: float       # the inverse-variance (τ² = 0) mean, for comparison

    def to_json(self) -> dict:
        out = asdict(self)
        out["ci"] = list(self.ci)
        out["prediction_interval"] = list(self.prediction_interval)
        out["tau"] = math.sqrt(self.tau2)
        out["method"] = method_text(self.method)
        return out


def method_text(method: str) -> str:
    return (f"random effects, {METHODS[method]} τ² (statsmodels combine_effects); interval "
            f"t with k−1 df; prediction interval Higgins–Thompson–Spiegelhalter, t with k−2 df")


def random_effects(effects: Sequence[float], ses: Sequence[float], *, alpha: float = 0.05,
                   method: str = "pm", ci_alpha: float | None = None) -> RandomEffects:
    """Pool ``effects`` with standard errors ``ses`` (k ≥ 3, every se finite and > 0).

    ``alpha`` sets the prediction interval's level 1 − α; ``ci_alpha`` the pooled interval's
    (default ``alpha``)."""
    from statsmodels.stats.meta_analysis import combine_effects
    y = np.asarray(effects, dtype=np.float64)
    s = np.asarray(ses, dtype=np.float64)
    k = y.size
    if method not in METHODS:
        raise ValueError(f"method {method!r}: one of {', '.join(METHODS)}")
    if k < MIN_MODELS or s.shape != y.shape:
        raise ValueError(f"random_effects: need ≥ {MIN_MODELS} effects with one se each, "
                         f"got {k} effects and {s.size} ses")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("random_effects: effects must be finite and ses finite and > 0")
    ci_alpha = alpha if ci_alpha is None else ci_alpha
    var = s ** 2
    # statsmodels computes I² = 1 − (k−1)/Q, which divides by zero when every effect is equal
    # (Q = 0); I² is 0 then, set below
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "pm":
            res = combine_effects(y, var, method_re="iterated", maxiter=PM_MAXITER)
            _check_paule_mandel(y, var, float(res.tau2))
        else:
            res = combine_effects(y, var, method_re="dl")
            if res.tau2 < 0:  # truncate at 0: the same computation at the fixed τ² = 0
                res = combine_effects(y, var, method_re="iterated", tau2_start=0.0, maxiter=0)
    tau2 = float(res.tau2)
    mu, se = float(res.mean_effect_re), float(res.sd_eff_w_re)
    ci = res.conf_int(alpha=ci_alpha, use_t=True)[1]  # rows: fe, re, fe_hksj, re_hksj
    half = float(sps.t.ppf(1 - alpha / 2, k - 2)) * math.sqrt(tau2 + se ** 2)
    q = float(res.q)
    return RandomEffects(
        k=k, method=method, effect=mu, se=se, ci=(float(ci[0]), float(ci[1])),
        ci_level=1 - ci_alpha, tau2=tau2, i2=max(0.0, float(res.i2)) if q > 0 else 0.0,
        q=q, q_p=float(res.test_homogeneity().pvalue),
        prediction_interval=(mu - half, mu + half), pi_level=1 - alpha,
        fixed_effect=float(res.mean_effect_fe))


def _check_paule_mandel(y: np.ndarray, var: np.ndarray, tau2: float) -> None:
    """statsmodels drops the iteration's convergence flag: check the estimating equation
    Σ w (y − μ̂_w)² = k − 1 (or, at τ² = 0, Σ w (y − μ̂_w)² ≤ k − 1) to its own tolerance
    (1e-5 absolute, in units of that sum, a χ²_{k−1} quantity)."""
    w = 1.0 / (var + tau2)
    mu = float(w @ y / w.sum())
    resid = float(w @ (y - mu) ** 2) - (y.size - 1)
    if not (abs(resid) <= 1e-4 or (tau2 == 0 and resid <= 0)):
        raise ArithmeticError(f"Paule–Mandel τ² did not converge in {PM_MAXITER} steps "
                              f"(estimating equation off by {resid:.3g})")


def supported_region_contains(lo: float, hi: float, direction: str, m: float) -> bool:
    """Does the interval [lo, hi] lie inside the region where an effect shows the claim?"""
    if direction in ("greater", "less"):
        return lo >= m
    if direction == "two-sided":
        return lo >= m or hi <= -m
    if direction == "equivalent":
        return -m < lo and hi < m
    raise ValueError(f"unknown direction {direction!r}")


def supported_region_excludes(lo: float, hi: float, direction: str, m: float) -> bool:
    """Does the interval [lo, hi] lie wholly outside that region?"""
    if direction in ("greater", "less"):
        return hi < m
    if direction == "two-sided":
        return -m < lo and hi < m
    if direction == "equivalent":
        return lo >= m or hi <= -m
    raise ValueError(f"unknown direction {direction!r}")


def region_text(direction: str, m: float) -> str:
    """The supported region in words (effects oriented: claimed direction positive)."""
    return "the region " + {"greater": f"effect ≥ {m:g}", "less": f"effect ≥ {m:g}",
                            "two-sided": f"|effect| ≥ {m:g}",
                            "equivalent": f"|effect| < {m:g}"}[direction]


def pooled_verdict(re: RandomEffects, direction: str, min_effect: float,
                   alpha: float = 0.05) -> tuple[str, str]:
    """(verdict, reason) by the rule in the module docstring; ``alpha`` is the level of the
    homogeneity test."""
    ci, pi = re.ci, re.prediction_interval
    where = region_text(direction, min_effect)
    ci_t = f"pooled interval [{ci[0]:+.4g}, {ci[1]:+.4g}]"
    pi_t = f"prediction interval [{pi[0]:+.4g}, {pi[1]:+.4g}]"
    spread = f"τ² = {re.tau2:.3g}, I² = {re.i2:.0%}, Q p = {re.q_p:.2g}"
    if supported_region_contains(*pi, direction, min_effect):
        return "GENERAL", f"{pi_t} lies in {where}: a new model is expected to show the claim"
    if supported_region_excludes(*ci, direction, min_effect):
        return "ABSENT", f"{ci_t} lies outside {where}: the average model does not show it"
    average = (f"{ci_t} lies in {where} (the average model shows it)"
               if supported_region_contains(*ci, direction, min_effect)
               else f"{ci_t} straddles the edge of {where}")
    if re.q_p <= alpha:
        return "HETEROGENEOUS", (f"{average}, and the models differ beyond their standard "
                                 f"errors ({spread}): whether it holds depends on the model")
    return "INCONCLUSIVE", (f"{average}, with no evidence that the models differ ({spread}); "
                            f"the {pi_t} of {re.k} models reaches outside it: more models needed")


def levels(direction: str, alpha: float) -> tuple[float, float]:
    """(ci_alpha, pi_alpha): the pooled interval at 1 − 2α for equivalence claims (the
    records' TOST convention), 1 − α otherwise; the prediction interval at 1 − α."""
    return (2 * alpha if direction == "equivalent" else alpha), alpha
