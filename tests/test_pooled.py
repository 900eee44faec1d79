"""Pooling across models: the random-effects numbers against a dense computation of their
definitions, the pooled verdict rule, each record's standard error, which models are pooled
together (revisions, equal weights, N/A), the schema, zoo files and reports.merge's refusals."""

# Tolerances (tests/tolerance.py): float64 statistics (statsmodels / scipy references, the same
# formulas in another order): pytest.approx's default rel=1e-6 and the stated 1e-9…1e-12 are far
# above float64 rounding of these ≤ 10²-term sums and far below a wrong formula.

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from probes.errors import StrataError
from probes.meta_analysis import RandomEffects, pooled_verdict, random_effects
from reports import schema
from reports.pooled import lineage, pooled_records, standard_error
from tests.report_docs import as_version_1, make_doc, make_zoo_doc

# -- the numbers -------------------------------------------------------------------------------
effects_and_ses = st.integers(3, 12).flatmap(lambda k: st.tuples(
    st.lists(st.floats(-2, 2, allow_nan=False), min_size=k, max_size=k),
    st.lists(st.floats(1e-3, 0.5), min_size=k, max_size=k)))


def dense(y, s, tau2, alpha=0.05):
    """The random-effects quantities at a given τ², from their definitions."""
    y, v = np.asarray(y, float), np.asarray(s, float) ** 2
    k = y.size
    w = 1 / (v + tau2)
    mu = float(w @ y / w.sum())
    se = float(w.sum() ** -0.5)
    w0 = 1 / v
    q = float(w0 @ (y - w0 @ y / w0.sum()) ** 2)
    t1, t2 = stats.t.ppf(1 - alpha / 2, k - 1), stats.t.ppf(1 - alpha / 2, k - 2)
    half = t2 * math.sqrt(tau2 + se ** 2)
    return {"effect": mu, "se": se, "ci": (mu - t1 * se, mu + t1 * se), "q": q,
            "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0,
            "prediction_interval": (mu - half, mu + half),
            "weighted_resid": float(w @ (y - mu) ** 2)}


@settings(max_examples=60, deadline=None)
@given(effects_and_ses)
def test_paule_mandel_solves_its_estimating_equation(data):
    y, s = data
    re = random_effects(y, s)
    k = len(y)
    ref = dense(y, s, re.tau2)
    assert re.tau2 >= 0
    # τ² > 0: Σ w (y − μ̂)² = k − 1 (statsmodels stops at |·| ≤ 1e-5); τ² = 0: already ≤ k − 1
    if re.tau2 > 0:
        assert ref["weighted_resid"] == pytest.approx(k - 1, abs=1e-4)
    else:
        assert ref["weighted_resid"] <= k - 1 + 1e-4
    scale = max(1.0, *map(abs, y))
    for name in ("effect", "se"):
        assert getattr(re, name) == pytest.approx(ref[name], rel=1e-9, abs=1e-12 * scale)
    for name in ("ci", "prediction_interval"):
        assert getattr(re, name) == pytest.approx(ref[name], rel=1e-9, abs=1e-12 * scale)
    assert re.q == pytest.approx(ref["q"], rel=1e-9, abs=1e-9)
    assert re.i2 == pytest.approx(ref["i2"], abs=1e-9)
    lo, hi = re.ci
    plo, phi = re.prediction_interval
    assert plo <= lo <= re.effect <= hi <= phi


@settings(max_examples=60, deadline=None)
@given(effects_and_ses)
def test_dersimonian_laird_is_the_truncated_moment_estimator(data):
    y, s = data
    v = np.asarray(s, float) ** 2
    w = 1 / v
    k = len(y)
    q = dense(y, s, 0.0)["q"]
    tau2 = max(0.0, (q - (k - 1)) / (w.sum() - (w ** 2).sum() / w.sum()))
    re = random_effects(y, s, method="dl")
    assert re.tau2 == pytest.approx(tau2, rel=1e-9, abs=1e-15)
    assert re.effect == pytest.approx(dense(y, s, tau2)["effect"], rel=1e-9, abs=1e-12)


def test_homogeneous_effects_pool_to_the_fixed_effect_mean():
    # every model at 0.3 ± its se: Q < k − 1, so τ² = 0, I² = 0 and μ̂ is the inverse-variance
    # mean; the prediction interval is then only the mean's own uncertainty, t with k − 2 df
    y, s = [0.3, 0.3, 0.3, 0.3], [0.01, 0.02, 0.04, 0.02]
    re = random_effects(y, s)
    assert re.tau2 == 0 and re.i2 == 0 and re.effect == pytest.approx(0.3, abs=1e-15)
    se = 1 / math.sqrt(sum(1 / x ** 2 for x in s))
    assert re.se == pytest.approx(se, rel=1e-12)
    assert re.prediction_interval[1] - 0.3 == pytest.approx(stats.t.ppf(0.975, 2) * se, rel=1e-12)


def test_results_do_not_depend_on_the_order_of_the_models():
    y, s = [0.1, 0.5, 0.3, 0.9, 0.2], [0.05, 0.02, 0.1, 0.03, 0.04]
    a, b = random_effects(y, s), random_effects(y[::-1], s[::-1])
    for name in ("effect", "se", "tau2", "i2", "q"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9)


@pytest.mark.parametrize("y, s, message", [
    ([0.1, 0.2], [0.1, 0.1], "need ≥ 3"),
    ([0.1, 0.2, 0.3], [0.1, 0.0, 0.1], "finite and > 0"),
    ([0.1, float("nan"), 0.3], [0.1, 0.1, 0.1], "finite"),
])
def test_bad_inputs_are_refused(y, s, message):
    with pytest.raises(ValueError, match=message):
        random_effects(y, s)


# -- the verdict rule ---------------------------------------------------------------------------
def _re(ci, pi, q_p, tau2=0.01):
    return RandomEffects(k=5, method="pm", effect=(ci[0] + ci[1]) / 2, se=0.1, ci=ci,
                         ci_level=0.95, tau2=tau2, i2=0.5, q=8.0, q_p=q_p,
                         prediction_interval=pi, pi_level=0.95, fixed_effect=0.0)


DIFFER, AGREE = 0.01, 0.4   # Cochran's Q p: the models differ (≤ α) or show no sign of it


@pytest.mark.parametrize("direction, ci, pi, q_p, verdict", [
    ("greater", (0.20, 0.30), (0.12, 0.40), DIFFER, "GENERAL"),     # the PI clears m = 0.1
    ("greater", (0.20, 0.30), (0.12, 0.40), AGREE, "GENERAL"),
    ("greater", (0.20, 0.30), (0.05, 0.45), DIFFER, "HETEROGENEOUS"),  # the mean does, a new model may not
    ("greater", (0.20, 0.30), (0.05, 0.45), AGREE, "INCONCLUSIVE"),    # ... and too few models to say
    ("greater", (-0.05, 0.08), (-0.3, 0.4), DIFFER, "ABSENT"),      # the pooled interval lies below m
    ("greater", (0.05, 0.20), (-0.1, 0.4), DIFFER, "HETEROGENEOUS"),  # it straddles m; models differ
    ("greater", (0.05, 0.20), (-0.1, 0.4), AGREE, "INCONCLUSIVE"),
    ("less", (0.20, 0.30), (0.10, 0.40), AGREE, "GENERAL"),         # oriented: the same rule
    ("two-sided", (-0.4, -0.2), (-0.6, -0.12), AGREE, "GENERAL"),   # wholly ≤ −m
    ("two-sided", (-0.4, -0.2), (-0.6, 0.05), DIFFER, "HETEROGENEOUS"),
    ("two-sided", (-0.05, 0.05), (-0.3, 0.3), DIFFER, "ABSENT"),    # inside ±m
    ("two-sided", (-0.3, 0.3), (-0.6, 0.6), AGREE, "INCONCLUSIVE"),
    ("equivalent", (-0.02, 0.03), (-0.08, 0.09), AGREE, "GENERAL"),  # the PI within ±m
    ("equivalent", (-0.02, 0.03), (-0.2, 0.2), DIFFER, "HETEROGENEOUS"),
    ("equivalent", (0.15, 0.3), (0.0, 0.5), AGREE, "ABSENT"),        # wholly beyond +m
    ("equivalent", (0.05, 0.15), (-0.2, 0.4), AGREE, "INCONCLUSIVE"),
])
def test_pooled_verdict_rule(direction, ci, pi, q_p, verdict):
    m = 0.1
    got, reason = pooled_verdict(_re(ci, pi, q_p), direction, m, alpha=0.05)
    assert got == verdict, reason
    assert f"{pi[0]:+.4g}" in reason or f"{ci[0]:+.4g}" in reason or "Q p" in reason


# -- standard errors and who is pooled ------------------------------------------------------------
def test_standard_error_from_each_kind_of_record():
    rec = {"effect": 0.3, "ci": [0.3 - 1.96 * 0.05, 0.3 + 1.96 * 0.05], "null": {"sd": 0.05},
           "extra": {}}
    assert standard_error({**rec, "se": 0.07}) == 0.07            # /2: the record's own se
    assert standard_error({**rec, "se": None}) is None           # /2, N/A or not finite
    # /1 records: the null sd when the interval is effect ± 1.96·null sd (Z95 = 1.95996...)
    from probes.stats import Z95
    rec["ci"] = [0.3 - Z95 * 0.05, 0.3 + Z95 * 0.05]
    assert standard_error(rec) == 0.05
    assert standard_error({**rec, "extra": {"se": 0.011}}) == 0.011  # gauge-delta-null's
    t_rec = {**rec, "ci": [0.2, 0.4]}                            # a t interval: not recoverable
    assert standard_error(t_rec) is None


def test_every_claim_records_the_standard_error_its_interval_uses():
    """The probes' evidence: se = the interval's half-width over its quantile."""
    from probes.adjacent import far_from_null
    from probes.stats import Z95, evidence_vs_null_samples, paired_difference
    ev = paired_difference([0.1, 0.3, 0.2, 0.25])
    assert (ev.ci[1] - ev.ci[0]) / 2 == pytest.approx(stats.t.ppf(0.975, 3) * ev.standard_error)
    ev = evidence_vs_null_samples(0.5, np.random.default_rng(0).normal(0, 0.1, 500), "greater", "mc")
    assert (ev.ci[1] - ev.ci[0]) / 2 == pytest.approx(Z95 * ev.standard_error)
    assert ev.standard_error == ev.null_sd
    # adjacent-far-from-null: t interval over the phase's pairs (not the tiny null sd)
    rng = np.random.default_rng(1)
    w = [rng.normal(size=(8, 8)) for _ in range(5)]
    w = [w[0]] + [0.7 * w[i - 1] + 0.7 * w[i] for i in range(1, 5)]
    flat = np.stack([x.ravel() for x in w])
    result = {"families": ["q_proj"], "q_proj/gram": flat @ flat.T,
              "q_proj/sums": flat.sum(1), "q_proj/n": np.array(64)}
    ev = far_from_null(result, {"A": [0, 1, 2, 3, 4]}, "A", "q_proj")
    assert (ev.ci[1] - ev.ci[0]) / 2 == pytest.approx(stats.t.ppf(0.975, 3) * ev.standard_error)
    from probes.adjacent import adjacent
    adj = adjacent(result, "q_proj")
    diff = adj["cos"] - adj["null_mean"]
    assert ev.standard_error == pytest.approx(diff.std(ddof=1) / 2, rel=1e-12)  # 4 pairs


def test_lineage_of_specs():
    assert lineage("EleutherAI/pythia-160m@step1000") == ("EleutherAI/pythia-160m", "step1000")
    assert lineage("random:EleutherAI/pythia-160m@step1000") == ("EleutherAI/pythia-160m", "step1000")
    assert lineage("EleutherAI/pythia-160m") == ("EleutherAI/pythia-160m", None)
    assert lineage("/data/model@v2/x") == ("/data/model@v2/x", None)   # a path, not a revision
    assert lineage("x", {"repo": "org/x", "revision": "main"}) == ("org/x", "main")


@pytest.fixture(scope="module")
def zoo():
    return make_zoo_doc()


def by(zoo, claim, scope="models", family=None, phase="C"):
    return next(p for p in zoo["pooled"] if (p["claim"], p["scope"], p["phase"], p["family"])
                == (claim, scope, phase, family))


def test_revisions_count_once_and_are_pooled_by_themselves(zoo):
    p = by(zoo, "zoo-greater")
    assert [i["model"] for i in p["inputs"]] == ["org/alpha", "org/beta", "org/delta", "org/gamma"]
    reasons = {x["model"]: x["reason"] for x in p["left_out"]}
    assert all("a revision of org/alpha" in reasons[f"org/alpha@step{n}000"] for n in (1, 2, 3))
    assert "the same weights as org/delta" in reasons["org/delta-copy"]
    rev = by(zoo, "zoo-greater", scope="revisions of org/alpha")
    assert [i["model"] for i in rev["inputs"]] == [f"org/alpha@step{n}000" for n in (1, 2, 3)]
    assert rev["effect"] == pytest.approx(random_effects([0.05, 0.15, 0.28], [0.02] * 3).effect)


def test_not_applicable_models_are_left_out_and_counted(zoo):
    p = by(zoo, "zoo-equivalent")
    assert p["k"] == 3 and "org/gamma" not in [i["model"] for i in p["inputs"]]
    assert any(x["model"] == "org/gamma" and x["reason"].startswith("N/A") for x in p["left_out"])


def test_pooled_inputs_are_the_records_numbers(zoo):
    recs = {(r["claim"], r["model"], r["phase"], r["family"]): r for r in zoo["records"]}
    for p in zoo["pooled"]:
        for inp in p["inputs"]:
            r = recs[(p["claim"], inp["model"], p["phase"], p["family"])]
            assert (inp["effect"], inp["se"], inp["ci"]) == (r["effect"], r["se"], r["ci"])
        re = random_effects([i["effect"] for i in p["inputs"]], [i["se"] for i in p["inputs"]],
                            ci_alpha=0.1 if p["direction"] == "equivalent" else 0.05)
        assert (p["effect"], p["tau2"], p["ci"]) == (re.effect, re.tau2, list(re.ci))


def test_twins_pool_beside_and_flag_artifacts(zoo):
    q = by(zoo, "zoo-two-sided", family="q_proj")
    assert q["verdict"] == "GENERAL" and q["twin"]["verdict"] == "GENERAL" and q["twin_artifact"]
    # four distinct twins (llama, qwen2, qwen3, mistral): org/delta's twin stands for both qwen3s
    assert sorted(i["model"] for i in q["twin"]["inputs"]) == [
        "random:org/alpha", "random:org/beta", "random:org/delta", "random:org/gamma"]
    k = by(zoo, "zoo-two-sided", family="k_proj")
    assert k["verdict"] == "ABSENT" and k["twin_artifact"] is False
    rev = by(zoo, "zoo-greater", scope="revisions of org/alpha")
    assert rev["twin"] is None and "1 distinct random-init twin" in rev["twin_reason"]


def test_pooled_section_validates_and_reports_read_both_versions(zoo):
    schema.validate(zoo)
    doc = make_doc()
    assert doc["schema"] == "strata.verdicts/2" and doc["pooled"] == []   # two models
    schema.validate(doc)
    schema.validate(as_version_1(doc))
    bad = copy.deepcopy(zoo)
    bad["pooled"][0]["prediction_interval"] = [0.0, 0.0]
    with pytest.raises(ValueError, match="intervals must nest"):
        schema.validate(bad)
    bad = copy.deepcopy(zoo)
    bad["pooled"][0]["verdict"] = "SUPPORTED"
    with pytest.raises(ValueError, match="'SUPPORTED' is not one of"):
        schema.validate(bad)
    bad = copy.deepcopy(zoo)
    del bad["pooled"]
    with pytest.raises(ValueError, match="needs 'pooled'"):
        schema.validate(bad)
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(schema.SCHEMA)


def test_version_1_records_pool_from_their_intervals():
    """A /1 record has no se; where its interval is effect ± Z95·null sd (the Monte Carlo and
    exact-null claims), that null sd is its se, and the pooled numbers are the /2 ones."""
    from probes.stats import Z95
    now = make_zoo_doc()
    for r in now["records"] + now["twin_records"]:
        if r["effect"] is not None:
            sd = r["null"]["sd"]
            r["ci"] = [r["effect"] - Z95 * sd, r["effect"] + Z95 * sd]
    v1 = as_version_1(now)
    for r in v1["twin_records"]:
        r.pop("se", None)
    again, want = pooled_records(v1), pooled_records(now)
    assert len(again) == len(want) == 10
    for a, b in zip(again, want):
        assert (a["claim"], a["scope"], a["phase"], a["family"], a["effect"], a["tau2"], a["ci"]) == \
            (b["claim"], b["scope"], b["phase"], b["family"], b["effect"], b["tau2"], b["ci"])
    # an interval that is not of that form (a t interval) gives no se: left out, and said so
    for r in v1["records"]:
        if r["model"] == "org/beta" and r["effect"] is not None:
            r["ci"] = [r["ci"][0] - 0.01, r["ci"][1] + 0.01]
    p = next(x for x in pooled_records(v1) if x["claim"] == "zoo-greater" and x["phase"] == "C"
             and x["scope"] == "models")
    assert "org/beta" not in [i["model"] for i in p["inputs"]]
    assert any(x["model"] == "org/beta" and "no standard error" in x["reason"] for x in p["left_out"])


def test_pooled_frame(zoo, tmp_path):
    from reports.api import pooled_frame
    df = pooled_frame(zoo)
    assert len(df) == len(zoo["pooled"])
    row = df[(df.claim == "zoo-greater") & (df.scope == "models") & (df.phase == "C")].iloc[0]
    assert row.models == ["org/alpha", "org/beta", "org/delta", "org/gamma"]
    assert row.pi_lo < row.ci_lo < row.effect < row.ci_hi < row.pi_hi
    assert pooled_frame(as_version_1(make_doc())).empty


# -- zoo files ----------------------------------------------------------------------------------
def test_zoo_file(tmp_path):
    from probes.zoo import read_zoo
    f = tmp_path / "zoo.txt"
    f.write_text("# a zoo\nsmollm2-135m\n\n  Qwen/Qwen3-4B   # the 4B\n./ckpt/model.gguf\n"
                 "org/x@step1000\nsmollm2-135m\n")
    assert read_zoo(f) == ["smollm2-135m", "Qwen/Qwen3-4B", str(tmp_path / "ckpt" / "model.gguf"),
                           "org/x@step1000"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(StrataError, match="no model spec in it"):
        read_zoo(tmp_path / "empty.txt")
    with pytest.raises(StrataError, match="no such file"):
        read_zoo(tmp_path / "missing.txt")


# -- merge ---------------------------------------------------------------------------------------
def _split(doc, groups):
    """The zoo document as if each group of models had been its own run."""
    out = []
    for models in groups:
        specs = set(models) | {"random:" + m for m in models}
        d = copy.deepcopy(doc)
        d["run"]["models"] = [m for m in d["run"]["models"] if m["spec"] in specs]
        d["records"] = [r for r in d["records"] if r["model"] in specs]
        d["twin_records"] = [r for r in d["twin_records"] if r["model"] in specs]
        d["pooled"] = pooled_records(d)
        out.append(d)
    return out


GROUPS = [["org/alpha", "org/alpha@step1000", "org/beta"],
          ["org/alpha@step2000", "org/alpha@step3000", "org/gamma"],
          ["org/delta", "org/delta-copy"]]


def test_merge_gives_the_pooled_records_of_one_run(zoo, tmp_path):
    from reports.merge import main
    from reports.plugin import write_report
    dirs = []
    for i, d in enumerate(_split(zoo, GROUPS)):
        write_report(d, tmp_path / f"run{i}")
        dirs.append(str(tmp_path / f"run{i}"))
    assert main([*dirs, "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "verdicts.json").read_text())
    assert merged["pooled"] == json.loads(json.dumps(zoo["pooled"]))
    assert [m["source"] for m in merged["run"]["merged_from"]] == dirs
    assert (tmp_path / "merged" / "verdicts.html").read_text().count('<svg class="forest"') == len(zoo["pooled"])


@pytest.mark.parametrize("change, message", [
    (lambda a, b: b["run"].update(alpha=0.01), r"different α \(0.05 in .*run0, 0.01 in .*run1\)"),
    (lambda a, b: [r.update(min_effect=0.2) for r in b["records"] if r["claim"] == "zoo-greater"],
     r"claim zoo-greater differs between .*run0 and .*run1 \(min_effect 0.1 vs 0.2\)"),
    (lambda a, b: b["run"]["models"][0].update(phases={"A": [0, 1, 2, 3, 4, 5], "C": [6, 7, 8, 9, 10, 11]}),
     r"model org/alpha has two different phase maps"),
    (lambda a, b: b["run"]["models"][0].update(fingerprint="other"), r"org/alpha saw different weights"),
    (lambda a, b: b["records"].append(copy.deepcopy(a["records"][0])), r"is in both .*run0 and .*run1"),
    (lambda a, b: b["run"].update(calibration={"source": "x", "sha256": "ab" * 32, "tokens": 9})
     or a["run"].update(calibration={"source": "x", "sha256": "cd" * 32, "tokens": 9}),
     r"different calibration text"),
])
def test_merge_refuses_runs_that_do_not_pool(zoo, tmp_path, capsys, change, message):
    import re

    from reports.merge import main
    from reports.plugin import write_report
    first, second = _split(zoo, GROUPS[:2])
    # org/alpha described in both runs (as when both ran it); harmless unless changed
    second["run"]["models"].insert(0, copy.deepcopy(first["run"]["models"][0]))
    change(first, second)
    write_report(first, tmp_path / "run0")
    write_report(second, tmp_path / "run1")
    rc = main([str(tmp_path / "run0"), str(tmp_path / "run1"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "m").exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: strata: merge: "), err
    assert re.search(message, lines[0]), lines[0]


def test_merge_of_the_same_runs_without_refusals_is_clean(zoo, tmp_path, capsys):
    from reports.merge import main
    assert main([str(tmp_path / "nope"), str(tmp_path / "nope2"), "--out", str(tmp_path / "m")]) == 2
    assert "ERROR: strata: merge: no verdict report at" in capsys.readouterr().err


def test_models_file_adds_to_model_options(pytester, tmp_path):
    from fixtures.plugin import StrataSession
    pytester.makeconftest('pytest_plugins = ["fixtures.plugin"]')
    zoo = tmp_path / "zoo.txt"
    zoo.write_text("synthetic:tiny-qwen2  # b\nsynthetic:tiny-llama\n")
    config = pytester.parseconfigure("--model=synthetic:tiny-llama", f"--models={zoo}",
                                     f"--cache-dir={tmp_path / 'c'}")
    assert StrataSession(config).specs == ["synthetic:tiny-llama", "synthetic:tiny-qwen2"]
    config = pytester.parseconfigure(f"--models={tmp_path / 'missing.txt'}")
    with pytest.raises(StrataError, match="--models .*missing.txt: no such file"):
        StrataSession(config)
