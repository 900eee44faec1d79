"""End-to-end: the plugins driven through pytest itself, on synthetic models."""

import json
import os
import shutil
import xml.etree.ElementTree as ET
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
    # the controller decides the progress letters and counts from the workers' reports
    counts = [line for line in parallel.stdout.splitlines() if line.startswith("strata: ")]
    assert counts == [line for line in serial.stdout.splitlines() if line.startswith("strata: ")]
    assert " refuted" in parallel.stdout.splitlines()[-1] and "FAILED" not in parallel.stdout
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
    # the machine it ran on, as the benchmarks name it (probes.machine)
    from probes.machine import cpu_description
    assert doc["run"]["machine"] == cpu_description()
    assert f"**machine:** {cpu_description()}" in (tmp_path / "r" / "verdicts.md").read_text()
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
    # REFUTED records are listed one per line with their numbers (their test still fails:
    # exit status 1), under their own heading and without a traceback
    assert res.returncode == 1
    refuted = [r for r in doc["records"] if r["verdict"] == "REFUTED"]
    listed = res.stdout.split("strata: refuted claims")[1].split("strata verdicts")[0]
    assert sum(line.startswith("adjacent-far-from-null · ") for line in listed.splitlines()) == \
        sum(r["claim"] == "adjacent-far-from-null" for r in refuted) > 0
    assert "FAILED" not in res.stdout and "Traceback" not in res.stdout
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
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest("--model=synthetic:tiny-llama", f"--cache-dir={tmp_path / 'c'}",
                                f"--report-dir={tmp_path / 'r'}", "-rA", "-p", "no:cacheprovider",
                                f"--junitxml={junit}")
    # the terminal speaks verdicts: progress letters S/R/I/N (t: a twin), the claims' records
    # and the twins counted apart, each REFUTED record on its own line, no FAILED, no traceback
    assert result.ret == 1  # a refuted claim still fails the run (people guard claims in CI)
    result.stdout.fnmatch_lines(["test_toy.py StRtItNt*",
                                 "*strata: refuted claims*",
                                 "toy · synthetic:tiny-llama: effect +0.01 ?-0.02, +0.04?, p 0.50, null 0 ± 0.1*",
                                 "*strata: 1 supported, 1 refuted, 1 inconclusive, 1 n/a · twins: 1 of 4 supported*",
                                 "report: */verdicts.html*",
                                 "*1 supported, 4 twins, 1 refuted, 1 inconclusive, 1 n/a in *"])
    assert "FAILED" not in result.stdout.str() and "Traceback" not in result.stdout.str()
    assert "= FAILURES =" not in result.stdout.str()
    # JUnit keeps pytest's outcomes: the refuted claim is a failure there, N/A and INCONCLUSIVE
    # are skips, so CI dashboards see a refutation
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == \
        ("8", "1", "2", "0")
    failure = next(tc for tc in suite.iter("testcase") if tc.find("failure") is not None)
    assert failure.get("name").startswith("test_refuted") and "REFUTED toy" in failure.find("failure").get("message")
    verbose = pytester.runpytest("--model=synthetic:tiny-llama", f"--cache-dir={tmp_path / 'c'}",
                                 f"--report-dir={tmp_path / 'r'}", "-v", "-p", "no:cacheprovider")
    verbose.stdout.fnmatch_lines(["*test_refuted?synthetic:tiny-llama? REFUTED*",
                                  "*test_not_applicable?random:synthetic:tiny-llama? TWIN N/A*"])
    quiet = pytester.runpytest("--model=synthetic:tiny-llama", f"--cache-dir={tmp_path / 'c'}",
                               f"--report-dir={tmp_path / 'r'}", "-q", "-p", "no:cacheprovider")
    quiet.stdout.fnmatch_lines(["StRtItNt*", "strata: 1 supported, 1 refuted*"])
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
    result.stdout.fnmatch_lines(["claim * synthetic:tiny-llama * synthetic:tiny-mistral",
                                 "claim * synthetic:tiny-qwen2 * all",
                                 "all: pooled over >= 3 models*"])
    one = records(tmp_path / "zoo")
    assert [m["spec"] for m in one["run"]["models"] if m["role"] == "model"] == ZOO_SPECS
    assert merge([*singles, "--out", str(tmp_path / "merged")]) == 0
    two = records(tmp_path / "merged")
    assert len(one["pooled"]) >= 14 and one["pooled"] == two["pooled"]
    assert comparable(one) == comparable(two)
    assert all(p["k"] == 3 and p["twin"] is not None and p["twin"]["k"] == 3 for p in one["pooled"])
    html = (tmp_path / "zoo" / "verdicts.html").read_text()
    assert html.count('<svg class="forest"') == len(one["pooled"])


ERROR_FILE = CLAIM_FILE.split("def test_supported")[0] + '''
import pytest

@pytest.fixture
def broken_probe(model):
    raise AssertionError("Padding_idx must be within num_embeddings\\n(the rest of a long message)")

def test_setup_raises(model, broken_probe, verdict):
    verdict(CLAIM, ev(0.5, 0.4, 0.6, 0.001))

def test_body_raises(model, verdict):
    raise ValueError("a probe's own failure")

def test_supported(model, verdict):
    verdict(CLAIM, ev(0.5, 0.4, 0.6, 0.001))
'''


def test_a_probe_that_raises_is_an_error_record_in_the_report_and_matrix(pytester, tmp_path):
    pytester.makeconftest('pytest_plugins = ["fixtures.plugin", "reports.plugin"]')
    pytester.makepyfile(test_toy=ERROR_FILE)
    result = pytester.runpytest("--model=synthetic:tiny-llama", f"--cache-dir={tmp_path / 'c'}",
                                f"--report-dir={tmp_path / 'r'}", "-p", "no:cacheprovider")
    assert result.ret == 1
    doc = json.loads((tmp_path / "r" / "verdicts.json").read_text())
    by_test = {r["nodeid"].split("::")[1].split("[")[0]: r for r in doc["records"]}
    assert by_test["test_setup_raises"]["verdict"] == "ERROR"
    assert by_test["test_setup_raises"]["reason"] == \
        "setup: AssertionError: Padding_idx must be within num_embeddings"
    assert by_test["test_body_raises"]["reason"] == "call: ValueError: a probe's own failure"
    assert by_test["test_supported"]["verdict"] == "SUPPORTED"
    assert [t["verdict"] for t in doc["twin_records"]].count("ERROR") == 2
    # the matrix cell counts the errors; the terminal lists them with their causes, and pytest
    # keeps its own ERROR/FAILED outcome with the traceback (an error is a bug to look into)
    result.stdout.fnmatch_lines(["*strata: claims whose probe raised*",
                                 "toy · synthetic:tiny-llama: setup: AssertionError: Padding_idx*",
                                 "toy*M 1S 2E*", "strata: 1 supported, 0 refuted, 0 inconclusive, 0 n/a, 2 error*"])
    assert "= ERRORS =" in result.stdout.str()
    md = (tmp_path / "r" / "verdicts.md").read_text()
    assert "ERROR" in md and "Padding_idx must be within num_embeddings" in md
    html = (tmp_path / "r" / "verdicts.html").read_text()
    assert 'data-state="MIXED"' in html and "Padding_idx must be within num_embeddings" in html


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "pytest").exists() or shutil.which("make") is None,
                    reason="make verdicts runs the project's .venv (make install)")
def test_make_verdicts_succeeds_on_refuted_claims_and_fails_on_bad_input(tmp_path):
    def make(args):
        # -o: never (re)install from inside a test
        return subprocess.run(["make", "-s", "-o", ".venv/bin/.installed", "verdicts",
                               f"ARGS={args} --cache-dir={tmp_path / 'c'} -p no:cacheprovider"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    refuted = make(f"--model=synthetic:tiny-llama -k scale_schedule --report-dir={tmp_path / 'r'}")
    assert refuted.returncode == 0, refuted.stdout[-2000:] + refuted.stderr[-2000:]
    last = refuted.stdout.strip().splitlines()[-3:]
    assert last[0].startswith("strata: 0 supported, 1 refuted") and \
        last[1].startswith(f"report: {tmp_path / 'r' / 'verdicts.html'}"), last
    assert (tmp_path / "r" / "verdicts.json").exists()
    bad = make(f"--model={tmp_path / 'no-such-checkpoint'} --report-dir={tmp_path / 'bad'}")
    assert bad.returncode != 0 and "ERROR: strata:" in bad.stdout + bad.stderr
    assert "bad input (pytest exit 4)" in bad.stderr
    nothing = make(f"--model=synthetic:tiny-llama -k no_such_claim --report-dir={tmp_path / 'none'}")
    assert nothing.returncode != 0 and "no claim collected" in nothing.stderr


def test_report_names_what_each_model_was_fed(tmp_path):
    """A model whose tokenizer adds a BOS and one without, in one run: each model's entry says
    the tokens fed and scored and the BOS its windows started with; the corpus stays run-level."""
    from tests.word_tokenizer import checkpoint_with_tokenizer
    bos_model = checkpoint_with_tokenizer(tmp_path, "<s> $A")
    res = run_pytest(["hypotheses/test_late_layers_change_least.py", f"--model={bos_model}",
                      "--model=synthetic:tiny-qwen3", "--no-twin", "--calib-tokens=200"],
                     tmp_path / "c", tmp_path / "r")
    assert "report:" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    doc = records(tmp_path / "r")
    fed = {m["spec"]: m.get("calibration") for m in doc["run"]["models"]}
    assert fed[str(bos_model)]["bos"] == 1 and fed["synthetic:tiny-qwen3"]["bos"] is None
    # the BOS model's windows: the budget's text tokens, each scored, plus one BOS per document
    assert fed[str(bos_model)]["scored_tokens"] == 200 < fed[str(bos_model)]["tokens"]
    assert fed["synthetic:tiny-qwen3"]["tokens"] == 200 > fed["synthetic:tiny-qwen3"]["scored_tokens"]
    assert "bos" not in doc["run"]["calibration"]
    md = (tmp_path / "r" / "verdicts.md").read_text()
    assert "windows start with BOS 1" in md and "no BOS" in md



def test_a_claims_run_does_not_import_hypothesis(tmp_path):
    # hypothesis's pytest plugin imports the library in its terminal summary (≈ 1.5 s of every
    # claims run); conftest.py drops the plugin when no collected test uses hypothesis
    probe = ("import sys, pytest\n"
             "class Seen:\n"
             "    def pytest_unconfigure(self, config):\n"
             "        kept = config.pluginmanager.get_plugin('hypothesispytest') is not None\n"
             "        print('hypothesis plugin kept:', kept)\n"
             "code = pytest.main(sys.argv[1:], plugins=[Seen()])\n"
             "print('hypothesis imported:', 'hypothesis' in sys.modules)\n"
             "sys.exit(code)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def run(*args):
        return subprocess.run([sys.executable, "-c", probe, "-p", "no:cacheprovider", "-q",
                               *args], cwd=ROOT, capture_output=True, text=True, env=env,
                              timeout=600)
    claims = run(f"--cache-dir={tmp_path / 'cache'}", f"--report-dir={tmp_path / 'report'}",
                 *WEIGHT_CLAIMS, "--model=synthetic:tiny-qwen3", "--no-twin")
    assert "verdicts" in claims.stdout, claims.stdout[-2000:] + claims.stderr[-2000:]
    assert "hypothesis plugin kept: False" in claims.stdout
    assert "hypothesis imported: False" in claims.stdout
    # where a collected test uses hypothesis, the plugin stays
    properties = run("--co", "tests/test_stats.py")
    assert "hypothesis plugin kept: True" in properties.stdout, properties.stdout[-2000:]


def test_the_claims_nulls_are_cached_as_derived_entries(tmp_path):
    # the late-layers and phase-C nulls are entries derived from the residual stream: a rerun
    # reads them (and decides the same), another --seed draws new ones beside them
    claims = ["hypotheses/test_late_layers_change_least.py",
              "hypotheses/test_phase_c_shared_subspace.py"]
    args = [*claims, "--model=synthetic:planted-adjacent", "--no-twin"]
    cache = tmp_path / "cache"

    def entries(probe):
        return sorted(p.name for p in (cache / "probes" / probe).glob("*.safetensors"))
    first = run_pytest(args, cache, tmp_path / "r1")
    assert "verdicts" in first.stdout, first.stdout[-2000:] + first.stderr[-2000:]
    late, capture = entries("exchangeable_layers_null"), entries("layer_label_capture_null")
    assert len(late) == 1 and len(capture) == 1
    stamps = {p: p.stat().st_mtime_ns for p in (cache / "probes").rglob("*.safetensors")}
    again = run_pytest(args, cache, tmp_path / "r2")
    assert "verdicts" in again.stdout, again.stdout[-2000:]
    assert comparable(records(tmp_path / "r2")) == comparable(records(tmp_path / "r1"))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps   # read, not rewritten
    other = run_pytest([*args, "--seed=1"], cache, tmp_path / "r3")
    assert "verdicts" in other.stdout, other.stdout[-2000:]
    assert len(entries("exchangeable_layers_null")) == 2
    assert len(entries("layer_label_capture_null")) == 2
    assert entries("residual-stream") and len(entries("residual-stream")) == 2  # seed in its key
    assert comparable(records(tmp_path / "r3")) != comparable(records(tmp_path / "r1"))
