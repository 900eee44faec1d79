"""Known answer: a synthetic zoo whose between-model spread is planted.

Eight ``synthetic:planted-adjacent?strength=s&seed=n`` models (24 layers; in phase C, layers
4–11, each projection is a continued copy of the layer before plus noise, so adjacent cos ≈
f(s) = s/√(s² + 1/4) there — ``probes/synthetic/planted_weights.py``), with strengths drawn from
Uniform(0.2, 1.0) by stratified quantiles s_i = 0.2 + 0.8·(i + ½)/8 and independent seeds.
The claim ``adjacent-far-from-null`` on phase C then has true per-model effects θ_i ≈ f(s_i)
(effect = cos − the entry-permutation null mean ≈ 0): the pooled estimate must land on their
mean and τ² on their variance. (Their random-init twins are one draw — the twin depends only
on the config, which the eight share — so they are not pooled.) Population values for this distribution, for scale: E f(S) = (√1.25 − √0.29)/0.8 =
0.7244, sd f(S) ≈ 0.137.

Tolerances from the construction: each model's effect is the mean over C's 7 adjacent pairs of
a finite-matrix cosine, so it deviates from f(s_i) by its sampling error — bounded here by
6 se_i (t with 6 df: P(|t| > 6) ≈ 0.001) — plus the null mean and the O(1/n) bias of the cosine of
n-entry matrices (≤ 2e-3 for the 64-wide tiny config). That per-model bound E is asserted first;
a weighted mean of the θ_i then lies within E of the same weighted mean of the f(s_i), and the
spread's sd within √(k/(k−1))·E of theirs, minus at most √(max s_i²) for the within-model
variance the estimator removes.

Cost: eight tiny models and their twins, one cached weight Gram each (≈ 1 s after imports).
"""

# Tolerances (tests/tolerance.py): float64 against statsmodels' float64 (τ² by an iteration
# converged to ≈ 1e-10: rel=1e-9; closed forms: rel=1e-12).

from __future__ import annotations

import math

import numpy as np
import pytest

K = 8
STRENGTHS = [0.2 + 0.8 * (i + 0.5) / K for i in range(K)]
SPECS = [f"synthetic:planted-adjacent?strength={s:.2f}&seed={101 + i}" for i, s in enumerate(STRENGTHS)]
CLAIM = "adjacent-far-from-null"


def planted_cos(s: float) -> float:
    return s / math.sqrt(s * s + 0.25)


@pytest.fixture(scope="module")
def zoo_doc(tmp_path_factory):
    """A verdicts document (the fields pooling reads) of the zoo and its twins, phase C."""
    from benchmarks.claims import Session, discover, evaluate
    from probes.cache import Cache
    from probes.models import open_model
    from probes.models.base import PROJECTIONS
    claims = [c for c in discover() if c.claim.id == CLAIM]
    only = {CLAIM: [("C", fam) for fam in PROJECTIONS]}  # the planted families (not the norms)
    session = Session(cache=Cache(tmp_path_factory.mktemp("cache")))
    records, twins, models = [], [], []
    for spec in SPECS:
        model = open_model(spec)
        for m, role, out in ((model, "model", records), (open_model(model.twin_spec()), "twin", twins)):
            models.append({"spec": m.spec, "architecture": "llama", "num_layers": 24,
                           "fingerprint": m.fingerprint, "phases": {}, "role": role})
            for r in evaluate(m, claims, session, only=only):
                out.append({**r, "model": m.spec, "twin_of": spec if role == "twin" else None})
    return {"schema": "strata.verdicts/2",
            "run": {"alpha": 0.05, "models": models}, "records": records, "twin_records": twins}


def test_each_model_shows_its_planted_effect(zoo_doc):
    for r in zoo_doc["records"]:
        s = STRENGTHS[SPECS.index(r["model"])]
        assert r["verdict"] == "SUPPORTED", r
        assert abs(r["effect"] - planted_cos(s)) <= 6 * r["se"] + 2e-3, (r["model"], r["family"])


def test_pooled_estimate_and_tau2_land_on_the_construction(zoo_doc):
    from reports.pooled import pooled_records
    pooled = [p for p in pooled_records(zoo_doc) if p["scope"] == "models"]
    fams = sorted({r["family"] for r in zoo_doc["records"]})
    assert sorted(p["family"] for p in pooled) == fams and len(fams) == 7
    truth = np.array([planted_cos(s) for s in STRENGTHS])
    for p in pooled:
        assert p["phase"] == "C" and p["k"] == K
        inputs = {i["model"]: i for i in p["inputs"]}
        se = np.array([inputs[m]["se"] for m in SPECS])
        bound = float(np.max(6 * se + 2e-3))  # the per-model bound asserted above
        w = 1 / (se ** 2 + p["tau2"])
        assert abs(p["effect"] - float(w @ truth / w.sum())) <= bound
        assert abs(p["effect"] - truth.mean()) <= bound + 0.02 * truth.std()  # weights ≈ equal
        sd_true = float(truth.std(ddof=1))
        delta = math.sqrt(K / (K - 1)) * bound + float(se.max())
        assert sd_true - delta <= math.sqrt(p["tau2"]) <= sd_true + delta, (p["tau2"], sd_true ** 2)
        assert p["i2"] > 0.99  # the spread is between models, not within
        # a new model from this zoo shows the claim: the prediction interval clears +0.05
        assert p["verdict"] == "GENERAL" and p["prediction_interval"][0] >= 0.05
        # the eight models share one config, so their random-init twins are one draw (one
        # content fingerprint): nothing to pool, and the record says why
        assert p["twin"] is None and p["twin_artifact"] is None
        assert p["twin_reason"].startswith("1 distinct random-init twin(s) decided")


def test_pooled_numbers_are_statsmodels_on_the_same_inputs(zoo_doc):
    from statsmodels.stats.meta_analysis import combine_effects
    from scipy import stats
    from reports.pooled import pooled_records
    for p in pooled_records(zoo_doc):
        y = np.array([i["effect"] for i in p["inputs"]])
        v = np.array([i["se"] for i in p["inputs"]]) ** 2
        ref = combine_effects(y, v, method_re="pm", use_t=True)
        k = len(y)
        assert p["effect"] == pytest.approx(ref.mean_effect_re, rel=1e-12, abs=1e-15)
        assert p["tau2"] == pytest.approx(ref.tau2, rel=1e-9, abs=1e-15)
        assert p["i2"] == pytest.approx(max(0.0, ref.i2), abs=1e-12)
        assert p["ci"] == pytest.approx(list(ref.conf_int(alpha=0.05, use_t=True)[1]), rel=1e-12)
        half = stats.t.ppf(0.975, k - 2) * math.sqrt(ref.tau2 + ref.sd_eff_w_re ** 2)
        assert p["prediction_interval"] == pytest.approx(
            [ref.mean_effect_re - half, ref.mean_effect_re + half], rel=1e-12)
