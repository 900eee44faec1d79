"""Adjacent-layer similarity of raw weights, against its nulls (SPEC §5.1).

For a family f and layers L, L' with flattened weights a = W_L, b = W_L' (n entries):

  cos          = ⟨a, b⟩ / (‖a‖ ‖b‖)
  resid        = √(2 − 2 cos)          ‖â − b̂‖ of the unit-normalised pair; orthogonal null √2
  scalar_fit   = √(1 − cos²)           residual of the best scalar fit b̂ ≈ c·â; orthogonal null 1
  improve_frac = 1 − scalar_fit/resid  orthogonal null 1 − 1/√2 ≈ 0.293

The orthogonal null (cos = 0) is what two unrelated high-dimensional matrices give; the seed
script's "improvement ≈ 0.293 for every family" is exactly that null.

Entry-permutation null: cos(a, πb) over uniformly random permutations π of b's entries. Its
first two moments are closed form (no sampling):

  E⟨a, πb⟩   = n ā b̄
  Var⟨a, πb⟩ = Σ(aᵢ − ā)² · Σ(bᵢ − b̄)² / (n − 1)

(divide by ‖a‖‖b‖ for the cosine). It keeps each tensor's entry distribution and destroys
correspondence; it is the right null for norm gains, whose entries all sit near 1 so that any
pair has cos ≈ 1. By the combinatorial CLT (Hoeffding) the permutation distribution is normal
for large n, which the p-values use.

Invariances: cos is invariant to positive rescaling of either layer; it is NOT invariant to the
layer-internal gauge (rotating a layer's heads or permuting its neurons) — see probes.gauge. Nor
to relabelling a mixture of experts' experts: the expert families are N/A here (experts are
unordered across layers; ``probes.models.base.UNORDERED_FAMILIES``), their norms still feed the
scale schedule.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import NotApplicable
from .evidence import Evidence, Matrix, Profile, require
from .models.base import UNORDERED_FAMILIES, Model
from .phases import adjacent_pairs
from .stats import t_interval
from .weight_gram import family_gram

PROBE_ID = "weight-gram"
VERSION = 2  # the cached Gram pass; evidence functions are not cached

ORTHOGONAL_NULL = {"cos": 0.0, "resid": math.sqrt(2.0), "scalar_fit": 1.0,
                   "improve_frac": 1.0 - 1.0 / math.sqrt(2.0)}


def compute(model: Model, families=None, device: str = "cpu") -> dict:
    """One streamed pass per family: ``{f"{family}/gram", f"{family}/sums", f"{family}/n"}``
    for every family the model has (default: all of ``model.families``; see probes.weight_gram),
    plus ``families`` and ``absent`` (why a family one would look for is missing)."""
    out: dict = {"families": [], "absent": dict(getattr(model, "absent", {}))}
    for fam in (model.families if families is None else families):
        g = family_gram(model, fam, device=device)
        if g is None:
            continue
        out["families"].append(fam)
        for key, value in g.items():
            out[f"{fam}/{key}"] = value
    return out


def cosine_matrix(result: dict, family: str) -> np.ndarray:
    """L×L cosine of flattened weights; NaN where a layer has zero norm or non-finite weights."""
    gram = _family(result, family)["gram"]
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = gram / np.outer(norms, norms)
    cos[~np.isfinite(cos)] = np.nan
    return cos


def layer_norms(result: dict, family: str) -> np.ndarray:
    """‖W_L‖_F per layer."""
    return np.sqrt(np.clip(np.diag(_family(result, family)["gram"]), 0, None))


def adjacent(result: dict, family: str) -> dict[str, np.ndarray]:
    """Per adjacent pair (L, L+1): cos, resid, scalar_fit, improve_frac and the exact
    entry-permutation null's mean and sd of cos (arrays of length L−1)."""
    fam = _family(result, family)
    gram, sums, n = fam["gram"], fam["sums"], float(fam["n"])
    sq = np.diag(gram)
    norms = np.sqrt(np.clip(sq, 0, None))
    i = np.arange(gram.shape[0] - 1)
    j = i + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = norms[i] * norms[j]
        cos = gram[i, j] / denom
        mean = sums / n
        centred_sq = np.clip(sq - n * mean ** 2, 0, None)  # Σ(aᵢ − ā)²
        null_mean = n * mean[i] * mean[j] / denom
        null_sd = np.sqrt(centred_sq[i] * centred_sq[j] / (n - 1)) / denom
        resid = np.sqrt(np.clip(2 - 2 * cos, 0, None))
        scalar_fit = np.sqrt(np.clip(1 - cos ** 2, 0, None))
        improve_frac = 1 - scalar_fit / resid
    return {"layer": i, "cos": cos, "resid": resid, "scalar_fit": scalar_fit,
            "improve_frac": improve_frac, "null_mean": null_mean, "null_sd": null_sd}


def permutation_null_moments(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Exact mean and variance of ⟨a, πb⟩ over all permutations π (the closed form above)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    n = a.size
    mean = n * a.mean() * b.mean()
    var = ((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum() / (n - 1)
    return float(mean), float(var)


def far_from_null(result: dict, phases: dict, phase: str, family: str,
                  min_pairs: int = 2) -> Evidence:
    """Evidence that the phase's adjacent cos differs from the entry-permutation null.

    observed = mean cos over the phase's adjacent pairs; null mean = mean of the pairs' exact
    null means, null sd = the null sd of that mean (pairs independent); effect = observed − null
    mean. Interval and p treat the phase's pairs as a sample of its adjacent-layer relations:
    t interval and two-sided one-sample t test of (cos − null mean) over the pairs, so p and the
    interval agree. Each pair's exact permutation z-score and their Stouffer combination (which
    tests "every pair is at its entry-shuffle null", and is astronomically small for any real
    weight pair because n is large) are in ``extra``.
    """
    if family in UNORDERED_FAMILIES:
        raise NotApplicable(UNORDERED_FAMILIES[family])
    pairs = adjacent_pairs(phases, phase)
    require(len(pairs), min_pairs, "adjacent pair", f"on phase {phase}")
    adj = adjacent(result, family)
    idx = np.array(pairs)
    cos, mu, sd = adj["cos"][idx], adj["null_mean"][idx], adj["null_sd"][idx]
    if not (np.all(np.isfinite(cos)) and np.all(np.isfinite(mu)) and np.all(sd > 0)):
        raise NotApplicable(f"{family}: zero-norm, constant or non-finite weights in phase {phase}")
    diff = cos - mu
    effect, lo, hi = t_interval(diff)
    se = float(diff.std(ddof=1) / math.sqrt(diff.size))  # the t interval's standard error
    z = diff / sd
    stouffer = float(z.sum() / math.sqrt(len(z)))
    from scipy.stats import norm, ttest_1samp
    p = float(ttest_1samp(diff, 0.0).pvalue) if np.ptp(diff) > 0 else float("nan")
    all_adj = adj
    orth = {k: float(np.mean(all_adj[k][idx])) for k in ("resid", "scalar_fit", "improve_frac")}
    return Evidence(
        observed=float(cos.mean()), null_kind="entry-permutation (exact moments)",
        null_mean=float(mu.mean()), null_sd=float(math.sqrt(np.sum(sd ** 2)) / len(sd)),
        effect=float(effect), ci=(float(lo), float(hi)), p=p, se=se,
        profile=Profile(layers=all_adj["layer"].tolist(), values=all_adj["cos"].tolist(),
                        null=all_adj["null_mean"].tolist(), null_sd=all_adj["null_sd"].tolist(),
                        label=f"adjacent cos, {family}"),
        matrix=Matrix(layers=list(range(len(all_adj["cos"]) + 1)),
                      values=cosine_matrix(result, family).tolist(), label=f"cos, {family}"),
        extra={"pairs": pairs, "pair_z": z.tolist(), "stouffer_z": stouffer,
               "stouffer_p": float(2 * norm.sf(abs(stouffer))),
               "orthogonal_null": ORTHOGONAL_NULL,
               "resid_mean": orth["resid"], "scalar_fit_mean": orth["scalar_fit"],
               "improve_frac_mean": orth["improve_frac"],
               "null_explains": float(mu.mean() / cos.mean()) if cos.mean() != 0 else None})


def table(result: dict) -> "pandas.DataFrame":
    """All families × adjacent pairs as a DataFrame (for notebooks)."""
    import pandas as pd
    frames = []
    for fam in result["families"]:
        df = pd.DataFrame(adjacent(result, fam))
        df.insert(0, "family", fam)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _family(result: dict, family: str) -> dict:
    if family not in result["families"]:
        raise NotApplicable((result.get("absent") or {}).get(family)
                            or f"the model has no {family} family")
    return {k: result[f"{family}/{k}"] for k in ("gram", "sums", "n")}
