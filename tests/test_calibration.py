"""The calibration of the claims (benchmarks/calibration.py) and what it is built on: null models,
the claim runner, planted strengths, the binomial interval, the paired-difference evidence."""

# Tolerances (tests/tolerance.py): statistics are float64 (scipy references, pytest.approx's
# default rel=1e-6 ≫ float64 rounding); abs=1e-4 on a printed 4-digit quantile; abs=0.03 on a
# Monte Carlo mean is its sampling error.

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps

from benchmarks import calibration as cal
from benchmarks.claims import Session, discover, evaluate
from probes import adjacent, synthetic
from probes.cache import Cache
from probes.errors import NotApplicable, StrataError
from probes.models import open_model
from probes.models.loaded import TWIN_SALT, random_twin
from probes.null_models import iid_draw, null_model, shuffled
from probes.phases import default_phases
from probes.stats import clopper_pearson, paired_difference
from probes.synthetic.base import random_state_dict

REPO = Path(__file__).resolve().parent.parent
CLAIM_IDS = {"adjacent-far-from-null", "scale-schedule-low-dim", "head-metric-adjacent",
             "qk-sym-positive", "phase-C-shared-subspace", "phase-E-specialized",
             "late-layers-change-least", "aligned-delta-E-exceeds-C", "gauge-delta-null"}


# -- the binomial interval -------------------------------------------------------------------
def test_clopper_pearson_known_values():
    # k = 0: the one-sided 95 % upper bound is 1 − 0.05^(1/n) — 0.139 for 20, < 0.1 from 29 on
    assert clopper_pearson(0, 20, 0.90) == (0.0, pytest.approx(1 - 0.05 ** (1 / 20)))
    assert clopper_pearson(0, 20, 0.90)[1] == pytest.approx(0.1391, abs=1e-4)
    assert clopper_pearson(0, 28, 0.90)[1] > 0.10 > clopper_pearson(0, 29, 0.90)[1]
    lo, hi = clopper_pearson(20, 20, 0.90)
    assert hi == 1.0 and lo == pytest.approx(0.05 ** (1 / 20))
    # symmetric in k ↔ n − k, and equal to scipy's exact interval
    lo, hi = clopper_pearson(3, 40, 0.95)
    assert clopper_pearson(37, 40, 0.95) == (pytest.approx(1 - hi), pytest.approx(1 - lo))
    ref = sps.binomtest(3, 40).proportion_ci(0.95, method="exact")
    assert (lo, hi) == (pytest.approx(ref.low), pytest.approx(ref.high))
    with pytest.raises(ValueError):
        clopper_pearson(0, 0)


# -- paired differences ----------------------------------------------------------------------
def test_paired_difference_is_the_paired_t_test():
    x = np.array([0.1, 0.05, 0.2, -0.01, 0.08, 0.03])
    for direction, alt in (("greater", "greater"), ("less", "less"), ("two-sided", "two-sided")):
        ev = paired_difference(x, direction)
        assert ev.p == pytest.approx(sps.ttest_1samp(x, 0.0, alternative=alt).pvalue)
    ev = paired_difference(x, "greater")
    se = x.std(ddof=1) / math.sqrt(x.size)
    q = sps.t.ppf(0.975, x.size - 1)
    assert ev.observed == pytest.approx(x.mean()) and ev.null_mean == 0 and ev.null_sd == pytest.approx(se)
    assert ev.ci == (pytest.approx(x.mean() - q * se), pytest.approx(x.mean() + q * se))
    less = paired_difference(x, "less")  # effect oriented: the claimed direction is positive
    assert less.effect == pytest.approx(-x.mean()) and less.ci[1] == pytest.approx(-ev.ci[0])


@pytest.mark.parametrize("values", [[0.3], [], [0.1, 0.1, 0.1], [0.1, float("nan"), 0.2]])
def test_paired_difference_not_applicable_without_warnings(values):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NotApplicable):
            paired_difference(values, "greater")


def test_worked_example_in_hypotheses_readme_runs_and_raises_not_applicable(tmp_path):
    text = (REPO / "hypotheses" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "test_mlp_closer_than_attention.py").write_text(code)
    (claim,) = discover(tmp_path)
    assert claim.claim.id == "mlp-closer-than-attention" and "0.02" in claim.claim.statement
    model = open_model("synthetic:planted-adjacent")
    phases = default_phases(model.layout.num_layers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recs = {r["phase"]: r for r in evaluate(model, [claim], Session(Cache(tmp_path / "c")),
                                                phases=phases)}
    too_few = [ph for ph, layers in phases.items() if len(layers) < 3]  # 0 or 1 pair
    assert too_few == ["B", "tail"]
    assert all(recs[ph]["verdict"] == "N/A" and "< 2 needed" in recs[ph]["reason"]
               for ph in too_few)
    # in C both families are planted copies: no difference between them to support
    gram = adjacent.compute(model)
    pairs = [L for L in phases["C"] if L + 1 in phases["C"]]
    diff = adjacent.adjacent(gram, "up_proj")["cos"][pairs] - adjacent.adjacent(gram, "q_proj")["cos"][pairs]
    assert recs["C"]["observed"] == pytest.approx(diff.mean())
    assert recs["C"]["verdict"] != "SUPPORTED"


# -- the claims' statements show their numbers ------------------------------------------------
def test_every_claim_is_discovered_and_states_its_numbers():
    claims = {c.claim.id: c.claim for c in discover()}
    assert set(claims) == CLAIM_IDS
    for cid, claim in claims.items():
        assert claim.min_effect_why, cid
        assert f"{claim.min_effect:g}" in claim.statement, (cid, claim.statement)
        assert not re.search(r"\b[A-Z_]{4,}\b", claim.statement.replace("SUPPORTED", "")), claim.statement
    assert "±0.02" in claims["gauge-delta-null"].statement


# -- null models -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    # norm gains differ per layer (a depth profile), so every tensor's values are its own
    return open_model("synthetic:planted-adjacent")


def test_iid_draws_are_independent_and_the_twin_is_unchanged(base):
    twin = open_model("random:synthetic:planted-adjacent")
    assert random_twin(base.config, "x", None, salt=TWIN_SALT).fingerprint == twin.fingerprint
    draws = [iid_draw(base, i) for i in range(3)]
    assert len({d.fingerprint for d in draws} | {twin.fingerprint}) == 4
    w = [d.weight(2, "q_proj") for d in draws]
    assert not torch.equal(w[0], w[1]) and torch.equal(w[0], iid_draw(base, 0).weight(2, "q_proj"))
    # same init distribution: N(0, 0.02²)
    assert abs(float(torch.cat([x.flatten() for x in w]).std()) / 0.02 - 1) < 0.02


def test_shuffled_keeps_each_tensors_values_and_destroys_its_layout(base):
    a, b = shuffled(base, 0), shuffled(base, 1)
    assert a.fingerprint != b.fingerprint != base.fingerprint
    n = base.layout.num_layers
    for fam in ("q_proj", "down_proj", "k_proj"):
        real = [base.weight(L, fam) for L in range(n)]
        got = [a.weight(L, fam) for L in range(n)]
        # each shuffled tensor is a permutation of the entries of one real layer's tensor, and
        # the layers it came from are a permutation of the layers
        src = [next(i for i, r in enumerate(real)
                    if torch.equal(torch.sort(r.flatten()).values, torch.sort(g.flatten()).values))
               for g in got]
        assert sorted(src) == list(range(n))
        assert all(not torch.equal(g, real[s]) for g, s in zip(got, src))
        assert src != list(range(n))
    gains = [torch.sort(base.weight(L, "input_ln")).values for L in range(n)]
    assert all(any(torch.equal(torch.sort(a.weight(L, "input_ln")).values, g) for g in gains)
               for L in range(n))
    sources = {f: [a.source.source_name(f"model.layers.{L}.{p}.weight") for L in range(n)]
               for f, p in (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"))}
    assert sources["q"] != [s.replace("k_proj", "q_proj") for s in sources["k"]]  # per family
    assert torch.equal(a.weight(3, "k_proj"), shuffled(base, 0).weight(3, "k_proj"))
    emb = "model.embed_tokens.weight"
    assert torch.equal(torch.sort(a.source.get(emb).flatten()).values,
                       torch.sort(base.source.get(emb).flatten()).values)
    with pytest.raises(ValueError):
        null_model("other", base, 0)


def test_shuffled_model_runs_a_forward_pass(base):
    logits = shuffled(base, 2).hf_model()(torch.tensor([[1, 5, 9, 200]])).logits
    assert logits.shape == (1, 4, 256) and torch.isfinite(logits).all()


# -- planted strengths -----------------------------------------------------------------------
def test_planted_strength_zero_is_the_random_init_and_parameters_are_checked():
    spec = synthetic.get("planted-adjacent?strength=0&seed=11")
    ref = random_state_dict(spec.config, seed=11)
    assert all(torch.equal(spec.state_dict[k], ref[k]) for k in ref)
    assert synthetic.get("planted-adjacent?strength=1&seed=11").state_dict.keys() == ref.keys()
    default = synthetic.get("planted-adjacent")
    explicit = synthetic.get("planted-adjacent?strength=1&seed=11")
    assert all(torch.equal(default.state_dict[k], explicit.state_dict[k]) for k in ref)
    assert synthetic.parse_name("x?strength=0.5&seed=3") == ("x", {"strength": 0.5, "seed": 3})
    with pytest.raises(StrataError):
        synthetic.get("planted-adjacent?strength=big")
    with pytest.raises(StrataError):
        synthetic.get("planted-adjacent?noise=1")


def test_planted_strength_sets_the_adjacent_cos():
    # W_{L+1} = (W_L + (0.5/s) N)/√(1 + 0.25/s²): cos ≈ s/√(s² + 0.25) in phase C
    for s in (0.25, 1.0):
        gram = adjacent.compute(open_model(f"synthetic:planted-adjacent?strength={s}&seed=5"))
        cos = adjacent.adjacent(gram, "up_proj")["cos"][4:11]
        assert cos.mean() == pytest.approx(s / math.sqrt(s * s + 0.25), abs=0.03)


# -- the claim runner ------------------------------------------------------------------------
def test_runner_gives_the_probes_evidence_and_the_plugins_records(tmp_path):
    model = open_model("synthetic:planted-adjacent")
    claims = [c for c in discover() if c.claim.id == "adjacent-far-from-null"]
    recs = evaluate(model, claims, Session(Cache(tmp_path)))
    phases = default_phases(24)
    assert len(recs) == len(phases) * len(model.families)
    by = {(r["phase"], r["family"]): r for r in recs}
    ev = adjacent.far_from_null(adjacent.compute(model), phases, "C", "q_proj")
    assert by[("C", "q_proj")]["verdict"] == "SUPPORTED"
    assert by[("C", "q_proj")]["p"] == pytest.approx(ev.p) and by[("C", "q_proj")]["effect"] == pytest.approx(ev.effect)
    assert by[("B", "q_proj")]["verdict"] == "N/A"  # one layer: no pair
    assert by[("D", "q_proj")]["verdict"] == "REFUTED"


# -- the calibration script, end to end on a tiny base ----------------------------------------
def test_null_schedule_runs_cheap_groups_first_and_covers_every_model():
    sched = cal.null_schedule(30, 5)
    assert sched[0] == (cal.PROBE_ORDER[0], range(0, 20))
    assert [g for g, _ in sched].index(cal.PROBE_ORDER[-1]) == 2  # gauge after the first 20
    covered = {(g, i) for g, r in sched for i in r}
    assert covered == {(g, i) for g in cal.PROBE_ORDER[:-1] for i in range(30)} | \
        {(cal.PROBE_ORDER[-1], i) for i in range(5)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    cache = root / "cache"
    store = cal.Store(root / "store")
    claims = discover()
    power = {"adjacent-far-from-null": cal.PowerTarget("planted-adjacent", cal._fams("C"),
                                                       (0.0, 1.0), "C"),
             "gauge-delta-null": cal.PowerTarget("planted-gauge", cal._fams("E"), (0.0, 1.0),
                                                 "E", max_seeds=1)}
    logs = []
    cal.run_nulls(claims, store, "synthetic:planted-adjacent", 2, 1, 64, set(), logs.append,
                  cache_root=cache)
    cal.run_power(claims, store, 2, set(), logs.append, cache_root=cache, power=power,
                  calib_tokens=64)
    summary = cal.summarise(claims, store, 2, 1, 2, power=power)
    summary["rows"] = {cid: cal.row_cells(e) for cid, e in summary["claims"].items()}
    return {"store": store, "claims": claims, "cache": cache, "logs": logs, "summary": summary,
            "power": power}


def test_calibration_counts_every_claim_on_both_null_families(tiny_run):
    s = tiny_run["summary"]
    assert set(s["claims"]) == CLAIM_IDS
    assert tiny_run["store"].count("null", "iid") == 2 and tiny_run["store"].count("null", "x") == 0
    for cid, e in s["claims"].items():
        for fam in ("iid", "shuffled"):
            c = e["null_families"][fam]
            models = 1 if "gauge" in cid or "aligned" in cid else 2
            assert c["models"] == models, (cid, fam)
            stored = [r for i in range(models)
                      for r in tiny_run["store"].load("null", f"{fam}-{i}")[cid]]
            assert c["n"] + c["not_applicable"] == len(stored)
            assert c["k"] == sum(r["verdict"] == "SUPPORTED" for r in stored)
    # 24 layers: A 0-2, B 3, C 4-11, D 12-17, E 18-22, tail 23 → ≥ 2 pairs in A, C, D, E
    adj = s["claims"]["adjacent-far-from-null"]["null_families"]
    # the base's norm gains are constant within each layer (shuffled or not): N/A, not counted
    for fam in ("iid", "shuffled"):
        assert adj[fam]["n"] == 2 * 4 * 7 and adj[fam]["not_applicable"] == 2 * (6 * 9 - 4 * 7)


def test_calibration_power_and_table(tiny_run):
    s = tiny_run["summary"]
    curve = s["claims"]["adjacent-far-from-null"]["power"]["curve"]
    assert [c["strength"] for c in curve] == [0.0, 1.0]
    assert curve[1]["k"] == curve[1]["n"] == 2 * 7          # planted: every C record SUPPORTED
    assert curve[0]["k"] == 0 and curve[0]["n"] == 2 * 7    # strength 0 is the random init
    assert cal.verdict_on_calibration(s["claims"]["adjacent-far-from-null"])["power_0_8_at"] == 1.0
    gauge = s["claims"]["gauge-delta-null"]
    assert gauge["power"]["curve"][1]["beyond_margin"]["n"] == 7  # s = 1: every family beyond ±0.02
    assert gauge["power"]["curve"][1]["beyond_margin"]["k"] == 0
    text = cal.table(s)
    lines = text.splitlines()
    assert len(lines) == 2 + len(CLAIM_IDS)
    for cid in CLAIM_IDS:
        assert f'<a id="trust-{cid.lower()}"></a>`{cid}`' in text
    assert "s = 1" in [ln for ln in lines if "`adjacent-far-from-null`" in ln][0]


def test_calibration_resumes_without_recomputing(tiny_run, monkeypatch):
    calls = []
    monkeypatch.setattr(cal, "evaluate", lambda *a, **k: calls.append(a) or [])
    cal.run_nulls(tiny_run["claims"], tiny_run["store"], "synthetic:planted-adjacent", 2, 1, 64, set(),
                  cache_root=tiny_run["cache"])
    cal.run_power(tiny_run["claims"], tiny_run["store"], 2, set(), cache_root=tiny_run["cache"],
                  power=tiny_run["power"], calib_tokens=64)
    assert calls == []
    # --redo re-evaluates that claim only
    cal.run_nulls(tiny_run["claims"], tiny_run["store"], "synthetic:planted-adjacent", 2, 1, 64,
                  {"qk-sym-positive"}, cache_root=tiny_run["cache"])
    assert len(calls) == 4 and all([c.claim.id for c in a[1]] == ["qk-sym-positive"] for a in calls)


def test_equivalence_false_positives_are_counted_beyond_the_margin_only():
    rec = lambda fam, eff, v="SUPPORTED": {"phase": "E", "family": fam, "effect": eff, "verdict": v}  # noqa: E731
    recs = [rec("q", 0.01), rec("q", 0.015), rec("k", 0.03), rec("k", 0.02, "REFUTED"),
            rec("v", -0.05, "N/A")]
    got = cal.beyond_margin(recs, 0.02)
    assert [r["family"] for r in got] == ["k", "k"]          # q's mean 0.0125 is inside ±0.02
    assert cal.rate(got) == {**cal.rate(got), "k": 1, "n": 2}


# -- the HTML report shows the table and links each claim to its row --------------------------
def test_html_report_links_each_claim_to_its_trust_row(tmp_path, monkeypatch):
    import json
    from html.parser import HTMLParser

    from reports import html
    from tests.report_docs import make_doc
    rows = {"gauge-delta-null": {"null": "sign-permuted", "min_effect": "within ± 0.02: why",
                                 "fp_iid": "true here", "fp_shuffled": "true here",
                                 "power": "planted-gauge: 0: 24/28", "power_0_8": "s = 0"},
            "qk-sym-positive": {"null": "1/2", "min_effect": "effect ≥ 0.05: why",
                                "fp_iid": "0/180 = 0.000 [0.000, 0.017]",
                                "fp_shuffled": "0/180 = 0.000 [0.000, 0.017]",
                                "power": "planted-heads: 0.1: 10/10", "power_0_8": "s = 0.1"},
            "not-in-this-report": {"null": "x"}}
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(html, "TRUST_JSON", path)
    page = html.render_html(make_doc())

    class Links(HTMLParser):
        ids, hrefs = set(), []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if "id" in a:
                self.ids.add(a["id"])
            if tag == "a" and "href" in a:
                self.hrefs.append(a["href"])

    p = Links()
    p.feed(page)
    for cid in ("gauge-delta-null", "qk-sym-positive"):
        assert f"trust-{cid.lower()}" in p.ids
        assert f"#trust-{cid.lower()}" in p.hrefs
    assert "trust-not-in-this-report" not in p.ids  # only the report's claims
    assert "0/180 = 0.000 [0.000, 0.017]" in page and "s = 0.1" in page
    assert "trust-adjacent-far-from-null" not in p.ids  # no row: no section entry, no link
    monkeypatch.setattr(html, "TRUST_JSON", tmp_path / "absent.json")
    assert 'id="trust"' not in html.render_html(make_doc())


def test_redecide_applies_the_current_minimum_effect_to_stored_numbers():
    from probes.evidence import Claim
    stored = [{"verdict": "SUPPORTED", "observed": 0.75, "null_mean": 0.41, "effect": 0.34,
               "ci": [0.1, 0.58], "p": 0.035},
              {"verdict": "N/A", "reason": "too few layers"}]
    low = Claim("c", "s", "x", "n", "greater", 0.1)
    high = Claim("c", "s", "x", "n", "greater", 0.69)
    assert [r["verdict"] for r in cal.redecide(stored, low)] == ["SUPPORTED", "N/A"]
    again = cal.redecide(stored, high)
    assert [r["verdict"] for r in again] == ["REFUTED", "N/A"]  # interval [0.1, 0.58] < 0.69
    assert again[0]["min_effect"] == 0.69 and stored[0]["verdict"] == "SUPPORTED"
