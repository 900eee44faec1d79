"""End-to-end: the plugins driven through pytest itself, on synthetic models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEIGHT_CLAIMS = ["hypotheses/test_adjacent_far_from_null.py",
                 "hypotheses/test_scale_schedule_low_dim.py"]


def run_pytest(args, cache, report=None, env=None, cwd=ROOT):
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
           f"--cache-dir={cache}", *args]
    if report is not None:
        cmd.append(f"--report-dir={report}")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env, timeout=600)


def records(report_dir):
    doc = json.loads((Path(report_dir) / "verdicts.json").read_text())
    return doc


def comparable(doc):
    keep = ("claim", "model", "phase", "family", "observed", "effect", "ci", "p", "p_holm",
            "verdict", "twin", "profile", "null")
    return sorted((json.dumps({k: r[k] for k in keep}, sort_keys=True) for r in doc["records"]))


def test_xdist_run_writes_the_same_records(tmp_path):
    args = [*WEIGHT_CLAIMS, "--model=synthetic:planted-adjacent", "--model=synthetic:tiny-qwen3"]
    serial = run_pytest(args, tmp_path / "cache", tmp_path / "serial")
    parallel = run_pytest([*args, "-n", "2"], tmp_path / "cache2",
                          tmp_path / "parallel")
    assert "verdicts" in serial.stdout and "verdicts" in parallel.stdout, serial.stdout[-2000:]
    a, b = records(tmp_path / "serial"), records(tmp_path / "parallel")
    assert len(a["records"]) > 50
    assert comparable(a) == comparable(b)
    roles = {m["spec"]: m["role"] for m in a["run"]["models"]}
    assert roles == {"synthetic:planted-adjacent": "model", "synthetic:tiny-qwen3": "model",
                     "random:synthetic:planted-adjacent": "twin",
                     "random:synthetic:tiny-qwen3": "twin"}


def test_report_contract_and_planted_verdicts(tmp_path):
    res = run_pytest([*WEIGHT_CLAIMS, "--model=synthetic:planted-adjacent"], tmp_path / "c",
                     tmp_path / "r")
    doc = records(tmp_path / "r")
    assert doc["schema"] == "strata.verdicts/2"
    assert doc["pooled"] == []  # one model: nothing to pool
    assert all(r["se"] is None if r["verdict"] == "N/A" else r["se"] > 0 for r in doc["records"])
    for key in ("harness_commit", "started", "versions", "alpha", "seed", "models", "calibration"):
        assert key in doc["run"]
    model = doc["run"]["models"][0]
    assert model["num_layers"] == 24 and model["phases"]["C"] == list(range(4, 12))
    by = {(r["claim"], r["phase"], r["family"]): r for r in doc["records"]}
    for fam in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        rec = by[("adjacent-far-from-null", "C", fam)]
        assert rec["verdict"] == "SUPPORTED" and rec["twin"]["verdict"] != "SUPPORTED"
        assert rec["twin_artifact"] is False and rec["holm_survives"] is True
        assert len(rec["profile"]["layers"]) == 23 and len(rec["profile"]["null"]) == 23
        assert by[("adjacent-far-from-null", "D", fam)]["verdict"] != "SUPPORTED"
    assert by[("scale-schedule-low-dim", None, None)]["verdict"] == "SUPPORTED"
    for rec in doc["records"]:
        for key in ("statement", "statistic", "observed", "null", "effect", "min_effect", "ci",
                    "p", "p_holm", "verdict", "reason", "twin", "profile"):
            assert key in rec
    # REFUTED records fail their test with the numbers in the message
    assert "REFUTED adjacent-far-from-null" in res.stdout and "CI=[" in res.stdout
    assert (tmp_path / "r" / "verdicts.md").exists()


@pytest.mark.parametrize("make_input,expected", [
    (lambda tmp: "nonexistent-org/no-such-model", "not in the local Hugging Face cache"),
    (lambda tmp: str(tmp / "missing-dir"), "does not exist"),
    ("truncated", "truncated"),
    ("bert", "unsupported architecture"),
    ("bin-only", "never unpickle"),
])
def test_bad_model_input_is_one_line_and_leaves_no_cache(tmp_path, make_input, expected):
    from probes.models.checkpoint import write_checkpoint
    from probes.synthetic import get
    if isinstance(make_input, str):
        d = tmp_path / make_input
        write_checkpoint(get("tiny-llama"), d)
        if make_input == "truncated":
            f = next(d.glob("*.safetensors"))
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        elif make_input == "bert":
            cfg = json.loads((d / "config.json").read_text())
            cfg["model_type"] = "bert"
            (d / "config.json").write_text(json.dumps(cfg))
        else:
            for f in d.glob("*.safetensors"):
                f.rename(f.with_name("pytorch_model.bin"))
        spec = str(d)
    else:
        spec = make_input(tmp_path)
    cache = tmp_path / "cache"
    res = run_pytest([*WEIGHT_CLAIMS, f"--model={spec}"], cache, tmp_path / "report")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    lines = [line for line in out.splitlines() if line.startswith("ERROR: strata:")]
    assert len(lines) == 1 and expected.lower() in lines[0].lower(), out[-3000:]
    assert "Traceback" not in out
    leftovers = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []
    assert not (tmp_path / "report").exists()


def test_bad_phases_is_one_line(tmp_path):
    res = run_pytest([*WEIGHT_CLAIMS, "--model=synthetic:tiny-llama", "--phases=A:0-3,B:5-7"],
                     tmp_path / "c")
    assert res.returncode == 4
    assert "ERROR: strata: --phases: layers 4 are in no phase" in res.stdout + res.stderr


CLAIM_FILE = '''
from probes.errors import NotApplicable
from probes.evidence import Claim, Evidence

CLAIM = Claim(id="toy", statement="toy claim", statistic="x", null="none",
              direction="greater", min_effect=0.1)

def ev(effect, lo, hi, p):
    return Evidence(observed=effect, null_kind="toy null", null_mean=0.0, null_sd=0.1,
                    effect=effect, ci=(lo, hi), p=p)

def test_supported(model, verdict):
    verdict(CLAIM, ev(0.5, 0.4, 0.6, 0.001))

def test_refuted(model, verdict):
    verdict(CLAIM, ev(0.01, -0.02, 0.04, 0.5))

def test_inconclusive(model, verdict):
    verdict(CLAIM, ev(0.2, -0.1, 0.5, 0.3))

def test_not_applicable(model, verdict):
    raise NotApplicable("phase too small")
'''


def test_verdict_outcomes_and_twin_never_fails(pytester, tmp_path):
    pytester.makeconftest('pytest_plugins = ["fixtures.plugin", "reports.plugin"]')
    pytester.makepyfile(test_toy=CLAIM_FILE)
    result = pytester.runpytest("--model=synthetic:tiny-llama", f"--cache-dir={tmp_path / 'c'}",
                                f"--report-dir={tmp_path / 'r'}", "-rs", "-p", "no:cacheprovider")
    # model items: 1 pass, 1 fail, 2 skips; twin items (random:...): all recorded, none fail
    result.assert_outcomes(passed=1 + 4, failed=1, skipped=2)
    result.stdout.fnmatch_lines(["*REFUTED toy: observed=0.01*", "*N/A toy: phase too small*"])
    doc = json.loads((tmp_path / "r" / "verdicts.json").read_text())
    verdicts = {r["nodeid"].split("::")[1].split("[")[0]: r["verdict"] for r in doc["records"]}
    assert verdicts == {"test_supported": "SUPPORTED", "test_refuted": "REFUTED",
                        "test_inconclusive": "INCONCLUSIVE", "test_not_applicable": "N/A"}
    assert all(r["twin"] is not None for r in doc["records"])
    assert len(doc["twin_records"]) == 4


def test_weight_claims_run_on_every_supported_architecture(tmp_path):
    archs = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]
    args = [*WEIGHT_CLAIMS, *[f"--model=synthetic:tiny-{a}" for a in archs], "--no-twin"]
    res = run_pytest(args, tmp_path / "c", tmp_path / "r")
    doc = records(tmp_path / "r")
    families = {}
    for rec in doc["records"]:
        if rec["claim"] == "adjacent-far-from-null":
            families.setdefault(rec["model"], set()).add(rec["family"])
    assert set(families) == {f"synthetic:tiny-{a}" for a in archs}, res.stdout[-2000:]
    assert {"q_norm", "k_norm"} <= families["synthetic:tiny-qwen3"]
    assert {"pre_ff_ln", "post_ff_ln", "q_norm"} <= families["synthetic:tiny-gemma3"]
    assert "q_norm" not in families["synthetic:tiny-llama"]
    assert all(r["twin"] is None for r in doc["records"])


def test_gauge_claims_run_without_a_size_limit_and_a_budget_says_what_it_skipped(tmp_path):
    # phases of ≥ 2 adjacent pairs (gauge-delta-null's minimum): tiny-llama's built-in map
    # (8 layers) has at most one pair per phase, so every record there is N/A by that minimum
    args = ["hypotheses/test_gauge_delta_null.py", "--model=synthetic:tiny-llama", "--no-twin",
            "--phases=C:0-3,E:4-7", "-rs"]
    run_pytest(args, tmp_path / "c", tmp_path / "r")
    doc = records(tmp_path / "r")
    assert any(r["verdict"] != "N/A" for r in doc["records"])
    assert not any("budget" in (r.get("reason") or "") for r in doc["records"])
    res = run_pytest([*args, "--gauge-budget-min=0"], tmp_path / "c2", tmp_path / "r2")
    doc = records(tmp_path / "r2")
    assert doc["records"] and all(r["verdict"] == "N/A" for r in doc["records"])
    reason = doc["records"][0]["reason"]
    assert "estimated" in reason and "over --gauge-budget-min 0" in reason, res.stdout[-2000:]
    assert "skipped" in reason


def test_head_gram_adjacent_gives_the_same_verdicts_without_the_layer_matrix(tmp_path):
    claims = ["hypotheses/test_head_metric_adjacent.py", "hypotheses/test_qk_sym_positive.py"]
    args = [*claims, "--model=synthetic:planted-heads", "--no-twin"]
    run_pytest(args, tmp_path / "c", tmp_path / "full")
    res = run_pytest([*args, "--head-gram=adjacent"], tmp_path / "c", tmp_path / "adj")
    full, adj = records(tmp_path / "full"), records(tmp_path / "adj")
    assert len(full["records"]) > 5, res.stdout[-2000:]
    assert comparable(full) == comparable(adj)
    matrices = {name: [r.get("matrix") for r in doc["records"]
                       if r["claim"] == "head-metric-adjacent" and r["verdict"] != "N/A"]
                for name, doc in (("full", full), ("adj", adj))}
    # (the report keeps one copy of a matrix per model, on its first record)
    assert any(m is not None for m in matrices["full"])
    assert all(m is None for m in matrices["adj"]) and matrices["adj"]



ZOO_SPECS = ["synthetic:tiny-llama", "synthetic:tiny-mistral", "synthetic:tiny-qwen2"]
ZOO_PHASES = "--phases=A:0-3,B:4-7"  # two phases of 3 adjacent pairs on the 8-layer tiny models


def test_zoo_file_run_and_merge_of_single_runs_give_the_same_pooled_records(pytester, tmp_path):
    """``--models FILE`` runs a zoo; ``reports.merge`` of three single-model runs gives the same
    pooled records as the one three-model run. The real claim ``adjacent-far-from-null`` on three
    tiny architectures (three distinct random-init twins, pooled beside), run in-process."""
    from probes.models import open_model
    from reports.merge import main as merge
    # pytester drops the modules a run imported when it ends; transformers' model modules do not
    # survive a second import in one process (torch registers their ops once), so import them
    # here, before the runs, by opening the models and their twins once
    for spec in ZOO_SPECS:
        open_model(spec).describe()
        open_model("random:" + spec).describe()
    pytester.makeconftest('pytest_plugins = ["fixtures.plugin", "reports.plugin"]')
    pytester.makepyfile(test_adjacent=(ROOT / WEIGHT_CLAIMS[0]).read_text())
    common = [ZOO_PHASES, f"--cache-dir={tmp_path / 'cache'}", "-p", "no:cacheprovider"]
    singles = []
    for i, spec in enumerate(ZOO_SPECS):
        pytester.runpytest(f"--model={spec}", f"--report-dir={tmp_path / f'single{i}'}", *common)
        singles.append(str(tmp_path / f"single{i}"))
    zoo = tmp_path / "zoo.txt"
    zoo.write_text("# three tiny models\n" + "\n".join(f"{s}   # {i}" for i, s in enumerate(ZOO_SPECS)) + "\n")
    result = pytester.runpytest(f"--models={zoo}", f"--report-dir={tmp_path / 'zoo'}", *common)
    result.stdout.fnmatch_lines(["claim * M1 * M2 * M3 * all", "all: pooled over >= 3 models*"])
    one = records(tmp_path / "zoo")
    assert [m["spec"] for m in one["run"]["models"] if m["role"] == "model"] == ZOO_SPECS
    assert merge([*singles, "--out", str(tmp_path / "merged")]) == 0
    two = records(tmp_path / "merged")
    assert len(one["pooled"]) >= 14 and one["pooled"] == two["pooled"]
    assert comparable(one) == comparable(two)
    assert all(p["k"] == 3 and p["twin"] is not None and p["twin"]["k"] == 3 for p in one["pooled"])
    html = (tmp_path / "zoo" / "verdicts.html").read_text()
    assert html.count('<svg class="forest"') == len(one["pooled"])
