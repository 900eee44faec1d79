"""A realistic verdicts document (SPEC §7) for the report tests, built without pytest or models:
two models (a real-shaped smollm2-135m with 30 layers and a planted synthetic one with 8),
their random-init twins in run.models, several claims with phases × families, N/A records,
twin verdicts (some SUPPORTED: artifacts), Holm adjustment, per-record profiles and L×L
matrices. Verdicts come from the real ``decide`` rule, Holm from ``probes.stats.holm``.
"""

from __future__ import annotations

import copy

import numpy as np

from probes.evidence import Claim, Evidence, Matrix, Profile, decide
from probes.phases import default_phases
from probes.stats import holm

ALPHA = 0.05

ADJ = Claim("adjacent-far-from-null", "Adjacent layers' weights are more alike than an entry "
            "shuffle of them.", "mean adjacent cos over the phase's pairs",
            "entry-permutation (exact moments)", "two-sided", 0.05)
SCALE = Claim("scale-schedule-low-dim", "The log Frobenius-norm schedule is low-dimensional: "
              "mode 1 explains more than a layer shuffle.", "mode-1 explained-variance share",
              "per-family layer shuffle", "greater", 0.1)
QK = Claim("qk-sym-positive", "The symmetric part of the head metric has more positive than "
           "negative eigen-mass.", "positive eigen-mass share of g + gᵀ", "random value 0.5",
           "greater", 0.02)
GAUGE = Claim("gauge-delta-null", "After gauge alignment, excess over the null-aligned "
              "similarity is ≈ 0.", "aligned − null-aligned cos", "sign-permuted residual side",
              "equivalent", 0.02)
LATE = Claim("late-layers-change-least", "The smallest angular step h_L → h_L+1 lies in the "
             "second half of depth.", "argmin layer of the angular step / depth",
             "uniform layer (first half vs second)", "greater", 0.0)

FAMILIES = ("q_proj", "k_proj", "down_proj", "input_ln")
MODELS = (("smollm2-135m", 30, "a1b2c3d4e5f60718293a4b5c6d7e8f90"),
          ("synthetic:planted-adjacent", 8, "0f1e2d3c4b5a69788796a5b4c3d2e1f0"))


def _evidence(rng, observed, null_mean, null_sd, direction, profile=None, matrix=None, **extra):
    eff = observed - null_mean if direction != "less" else null_mean - observed
    z = abs(eff) / null_sd if null_sd > 0 else np.inf
    from scipy.stats import norm
    p = float(2 * norm.sf(z)) if direction in ("two-sided", "equivalent") else float(norm.sf(eff / null_sd))
    if direction == "equivalent":
        p = float(max(norm.sf((eff + 0.02) / null_sd), norm.sf((0.02 - eff) / null_sd)))
    return Evidence(observed=observed, null_kind="", null_mean=null_mean, null_sd=null_sd,
                    effect=eff, ci=(eff - 1.96 * null_sd, eff + 1.96 * null_sd), p=p,
                    profile=profile, matrix=matrix, extra=dict(extra))


def _record(claim, model, phase, family, ev, twin_ev=None, na_reason=None):
    if ev is None:
        d = decide(claim, None, ALPHA)
        verdict, reason = "N/A", na_reason or d.reason
    else:
        d = decide(claim, ev, ALPHA)
        verdict, reason = d.verdict, d.reason
    rec = {"claim": claim.id, "statement": claim.statement, "statistic": claim.statistic,
           "direction": claim.direction, "model": model, "phase": phase, "family": family,
           "observed": None, "null": {"kind": claim.null, "mean": None, "sd": None},
           "effect": None, "min_effect": claim.min_effect, "ci": [None, None], "p": None,
           "p_holm": None, "holm_survives": None, "verdict": verdict, "reason": reason,
           "twin": None, "twin_artifact": None, "profile": None, "matrix": None, "extra": {},
           "role": "model", "twin_of": None, "nodeid": f"hypotheses/test_x.py::t[{model}-{phase}-{family}]"}
    if ev is not None:
        rec.update({"observed": ev.observed, "null": {"kind": claim.null, "mean": ev.null_mean, "sd": ev.null_sd},
                    "effect": ev.effect, "ci": list(ev.ci), "p": ev.p,
                    "profile": ev.profile.to_json() if ev.profile else None,
                    "matrix": ev.matrix.to_json() if ev.matrix else None, "extra": ev.extra})
    if twin_ev is not None:
        td = decide(claim, twin_ev, ALPHA)
        rec["twin"] = {"observed": twin_ev.observed, "effect": twin_ev.effect, "p": twin_ev.p,
                       "verdict": td.verdict, "reason": td.reason}
        rec["twin_artifact"] = td.verdict == "SUPPORTED"
    return rec


def _phases_for(name, n):
    if n == 8:
        return {"A": [0, 1], "B": [2], "C": [3, 4, 5], "E": [6, 7]}
    return default_phases(n)


def make_doc(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    records = []
    models = []
    for spec, n, fp in MODELS:
        phases = _phases_for(spec, n)
        planted = spec.startswith("synthetic:")
        for s in (spec, "random:" + spec):
            models.append({"spec": s, "architecture": "llama", "num_layers": n,
                           "fingerprint": fp if s == spec else fp[::-1], "phases": phases})
        layers = list(range(n))
        pairs = layers[:-1]
        # adjacent-far-from-null: per family × phase, profile per pair, L×L cos matrix per family
        for fam in FAMILIES:
            base = rng.uniform(0.05, 0.4)
            cos = np.clip(base + 0.1 * np.sin(np.arange(n - 1) / 3) + rng.normal(0, 0.02, n - 1), -1, 1)
            null = rng.normal(0, 0.002, n - 1)
            g = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
            mat = np.where(g == 0, 1.0, base * 0.8 ** (g - 1)) - (0.05 if fam == "input_ln" else 0)
            for phase, members in phases.items():
                ps = [L for L in members if L + 1 in members]
                if not ps:
                    records.append(_record(ADJ, spec, phase, fam, None,
                                           na_reason=f"phase {phase} has no adjacent pair"))
                    continue
                obs = float(np.mean(cos[ps]))
                nsd = 0.01 if fam != "input_ln" else 0.5
                prof = Profile(pairs, cos, null, label="adjacent cos")
                ev = _evidence(rng, obs, float(np.mean(null[ps])), nsd, "two-sided", prof,
                               Matrix(layers, mat, label=f"cos between layers ({fam})"), pairs=len(ps))
                twin = _evidence(rng, float(rng.normal(0, 0.01) + (0.2 if fam == "q_proj" else 0)),
                                 0.0, 0.01, "two-sided")
                records.append(_record(ADJ, spec, phase, fam, ev, twin))
        # scale-schedule-low-dim: one record, profile of log-norm mode 1
        track = np.linspace(0, 1, n) ** 2 + rng.normal(0, 0.02, n)
        ev = _evidence(rng, 0.8 if planted else 0.55, 0.3, 0.08, "greater",
                       Profile(layers, track, [0.0] * n, label="mode-1 score"))
        records.append(_record(SCALE, spec, None, None, ev, _evidence(rng, 0.31, 0.3, 0.08, "greater")))
        # qk-sym-positive: per phase, no family; one borderline support (does not survive Holm)
        for k, phase in enumerate(phases):
            share = 0.5 + rng.normal(0.03, 0.01, n)
            obs = float(np.mean(share[phases[phase]]))
            sd = 0.012 if k else 0.0125
            ev = _evidence(rng, obs if k else 0.5 + 0.021 + 2.0 * sd, 0.5, sd, "greater",
                           Profile(layers, share, [0.5] * n, label="positive share"))
            records.append(_record(QK, spec, phase, None, ev, _evidence(rng, 0.5, 0.5, 0.01, "greater")))
        # gauge-delta-null: equivalence per phase for two families, no profile, one N/A
        for fam in ("o_proj", "gate_proj"):
            for phase in phases:
                if fam == "gate_proj" and phase == "B":
                    records.append(_record(GAUGE, spec, phase, fam, None,
                                           na_reason="zero-norm weights in layer 4 (gate_proj)"))
                    continue
                ev = _evidence(rng, float(rng.normal(0, 0.004 if fam == "o_proj" else 0.05)), 0.0,
                               0.004, "equivalent", hungarian="exact" if n < 10 else "top-512 by norm")
                records.append(_record(GAUGE, spec, phase, fam, ev))
        # late-layers-change-least: real model only (the synthetic one has no activations run)
        if not planted:
            step = np.exp(-np.arange(n - 1) / 10) + rng.normal(0, 0.01, n - 1)
            ev = _evidence(rng, 0.9, 0.5, 0.15, "greater",
                           Profile(pairs, step, [float(np.mean(step))] * (n - 1), label="angular step (rad)"))
            records.append(_record(LATE, spec, None, None, ev))
    ps = holm([r["p"] if r["p"] is not None else np.nan for r in records])
    for r, p in zip(records, ps):
        r["p_holm"] = None if not np.isfinite(p) else float(p)
        if r["verdict"] == "SUPPORTED":
            r["holm_survives"] = bool(r["p_holm"] <= ALPHA)
    for r in records:  # plain floats, like the JSON the plugin writes
        for k in ("observed", "effect", "p"):
            if r[k] is not None:
                r[k] = float(r[k])
        r["ci"] = [None if x is None else float(x) for x in r["ci"]]
    doc = {
        "schema": "strata.verdicts/2",
        "run": {"harness_commit": "acdd2a6f00d1e2c3b4a5968778695a4b3c2d1e0f",
                "started": "2025-01-01T10:00:00+00:00", "finished": "2025-01-01T10:03:12+00:00",
                "versions": {"python": "3.11.9", "torch": "2.13.0", "transformers": "5.23.0",
                             "numpy": "2.1.0"},
                "alpha": ALPHA, "seed": 1234, "models": models,
                "calibration": {"source": "built-in corpus", "sha256": "9f" * 32, "tokens": 18432}},
        "records": records,
        "twin_records": [],
    }
    from reports.pooled import pooled_records
    doc["pooled"] = pooled_records(doc)  # two models: nothing has three, so []
    return doc


def as_version_1(doc: dict) -> dict:
    """The same report as a strata.verdicts/1 writer wrote it (no pooled list, no se)."""
    out = copy.deepcopy(doc)
    out["schema"] = "strata.verdicts/1"
    out.pop("pooled", None)
    for r in out["records"]:
        r.pop("se", None)
    return out


# -- a zoo: several models, revisions of one repository, twins ----------------------------------
ZOO = (  # spec, architecture, layers, effect of claim "zoo-greater" (phase C), its se
    ("org/alpha", "llama", 12, 0.30, 0.02),
    ("org/alpha@step1000", "llama", 12, 0.05, 0.02),
    ("org/alpha@step2000", "llama", 12, 0.15, 0.02),
    ("org/alpha@step3000", "llama", 12, 0.28, 0.02),
    ("org/beta", "qwen2", 12, 0.35, 0.03),
    ("org/gamma", "mistral", 12, 0.25, 0.025),
    ("org/delta", "qwen3", 12, 0.40, 0.02),
    ("org/delta-copy", "qwen3", 12, 0.40, 0.02),  # the same weights under another spec
)
ZOO_GREATER = Claim("zoo-greater", "A planted effect of about 0.3 holds across models.",
                    "planted statistic", "zero", "greater", 0.1)
ZOO_TWO_SIDED = Claim("zoo-two-sided", "Per family, the effect differs from 0 by 0.05 or more.",
                      "planted statistic", "zero", "two-sided", 0.05)
ZOO_EQUIV = Claim("zoo-equivalent", "The effect is within ±0.02 of 0.", "planted statistic",
                  "zero", "equivalent", 0.02)


def _zoo_evidence(effect: float, se: float) -> Evidence:
    from scipy.stats import norm
    return Evidence(observed=effect, null_kind="zero", null_mean=0.0, null_sd=se, effect=effect,
                    ci=(effect - 1.96 * se, effect + 1.96 * se), p=float(norm.sf(effect / se)))


def make_zoo_doc() -> dict:
    """Eight model specs of six distinct weights: ``org/alpha`` with three revisions, a copy of
    ``org/delta`` under another spec (same fingerprint), one N/A record; twins with distinct
    weights per architecture except the two qwen3 ones (one config: one twin). The pooled
    section is computed by ``reports.pooled`` like a run's."""
    rng = np.random.default_rng(7)
    phases = {"A": [0, 1], "C": [2, 3, 4, 5, 6], "E": [7, 8, 9, 10, 11]}
    models, records, twins = [], [], []
    for spec, arch, n, eff, se in ZOO:
        fp = "fp-" + spec.replace("-copy", "")
        models.append({"spec": spec, "architecture": arch, "num_layers": n, "fingerprint": fp,
                       "phases": phases, "role": "model"})
        models.append({"spec": "random:" + spec, "architecture": arch, "num_layers": n,
                       "fingerprint": "twin-" + arch, "phases": phases, "role": "twin"})
        cases = [(ZOO_GREATER, "C", None, eff, se), (ZOO_GREATER, "E", None, eff - 0.25, se)]
        cases += [(ZOO_TWO_SIDED, "C", fam, (0.2 if fam == "q_proj" else 0.0) + rng.normal(0, 0.01), 0.01)
                  for fam in ("q_proj", "k_proj")]
        cases += [(ZOO_EQUIV, "C", None, rng.normal(0, 0.003), 0.004)]
        for claim, phase, fam, e, s in cases:
            na = spec == "org/gamma" and claim is ZOO_EQUIV
            ev = None if na else _zoo_evidence(float(e), s)
            rec = _record(claim, spec, phase, fam, ev, na_reason="phase C has no heads")
            rec["se"] = None if ev is None else s
            rec["nodeid"] = f"hypotheses/test_{claim.id}.py::t[{spec}-{phase}-{fam}]"
            records.append(rec)
            artifact = claim is ZOO_TWO_SIDED and fam == "q_proj"  # random init shows it too
            tev = _zoo_evidence(float(rng.normal(0, s)) + (0.2 if artifact else 0.0), s)
            trec = _record(claim, "random:" + spec, phase, fam, tev)
            trec.update(role="twin", twin_of=spec, se=s,
                        nodeid=f"hypotheses/test_{claim.id}.py::t[random:{spec}-{phase}-{fam}]")
            twins.append(trec)
    for r in records:
        r["p_holm"] = r["p"]
        for k in ("observed", "effect", "p", "p_holm"):
            if r[k] is not None:
                r[k] = float(r[k])
        r["ci"] = [None if x is None else float(x) for x in r["ci"]]
    for t in twins:
        t["ci"] = [float(x) for x in t["ci"]]
    doc = {"schema": "strata.verdicts/2",
           "run": {"harness_commit": "0" * 40, "started": "2025-02-01T09:00:00+00:00",
                   "versions": {"python": "3.11.9"}, "alpha": ALPHA, "seed": 0,
                   "models": models, "calibration": None},
           "records": records, "twin_records": twins}
    from reports.pooled import pooled_records
    doc["pooled"] = pooled_records(doc)
    return doc


def variant(doc: dict, **changes) -> dict:
    out = copy.deepcopy(doc)
    out["run"].update(changes)
    return out
