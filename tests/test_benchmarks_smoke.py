"""Smoke test of benchmarks/: the scripts run on a shrunken Qwen3 and print their table.

Not a timed test — it checks that the checkpoint writer produces a checkpoint both Strata and
transformers read identically, that the naive references compute the same numbers as the probes
they are timed against, and that ``benchmarks.run`` prints a table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import make_checkpoint, naive, run
from probes.models import open_model
from tests import tolerance as tol



@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny"
    assert make_checkpoint.main(["--shape", "tiny-qwen3", "--layers", "3", "--out", str(out)]) == 0
    return out


def test_checkpoint_has_real_layout_and_init(tiny_ckpt):
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["model_type"] == "qwen3"
    index = json.loads((tiny_ckpt / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 4  # one per layer + embeddings/final norm
    assert index["weight_map"]["model.layers.1.mlp.up_proj.weight"] == shards[1]
    model = open_model(str(tiny_ckpt))
    lay = model.layout
    assert (lay.num_layers, lay.hidden, lay.num_heads, lay.num_kv_heads, lay.head_dim,
            lay.intermediate) == (3, 64, 4, 2, 16, 192)
    assert {"q_norm", "k_norm", "gate_proj"} <= set(model.families)
    gate = torch.cat([model.weight(layer, "gate_proj").flatten() for layer in range(3)])
    assert abs(float(gate.std()) - 0.02) < 0.001 and abs(float(gate.mean())) < 0.001
    assert torch.equal(model.weight(2, "q_norm"), torch.ones(16))
    # layers are independent draws
    assert abs(float(torch.nn.functional.cosine_similarity(
        model.weight(0, "q_proj").flatten(), model.weight(1, "q_proj").flatten(), dim=0))) < 0.05


def test_checkpoint_is_reproducible_and_read_by_transformers(tiny_ckpt, tmp_path):
    again = tmp_path / "again"
    make_checkpoint.make_checkpoint("tiny-qwen3", again, layers=3)
    for f in sorted(p.name for p in tiny_ckpt.glob("*.safetensors")):
        assert (tiny_ckpt / f).read_bytes() == (again / f).read_bytes()
    hf = naive.load_model(str(tiny_ckpt))
    model = open_model(str(tiny_ckpt))
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied
    for layer, fam, w in ((0, "k_proj", hf.model.layers[0].self_attn.k_proj.weight),
                          (2, "down_proj", hf.model.layers[2].mlp.down_proj.weight)):
        assert torch.equal(w.float(), model.weight(layer, fam))


def test_shape_configs_are_the_real_models():
    c4 = make_checkpoint.shape_config("qwen3-4b")
    assert (c4["num_hidden_layers"], c4["hidden_size"], c4["num_attention_heads"],
            c4["num_key_value_heads"], c4["head_dim"], c4["intermediate_size"],
            c4["vocab_size"], c4["tie_word_embeddings"]) == (36, 2560, 32, 8, 128, 9728,
                                                              151936, True)
    c32 = make_checkpoint.shape_config("qwen3-32b", layers=2, vocab=1024)
    assert (c32["num_hidden_layers"], c32["hidden_size"], c32["num_attention_heads"],
            c32["intermediate_size"], c32["vocab_size"], c32["tie_word_embeddings"]) == (
        2, 5120, 64, 25600, 1024, False)


def test_naive_references_agree_with_the_probes(tiny_ckpt):
    """The naive references compute the probes' numbers (so timing them is a fair comparison)."""
    from probes import adjacent, gauge, head_metric, scale
    model = open_model(str(tiny_ckpt))
    adj = adjacent.compute(model)
    ref = naive.adjacent(str(tiny_ckpt))
    # Both sides take float32 norms of the same weights by different kernels (numpy/OpenBLAS
    # sdot vs torch/MKL sgemm summed in float64), so the log-norms differ by a relative error of
    # standard deviation ≤ ½·√n·u per path (√ halves a sum of squares' error), √2× that for two
    # independent paths; the share's sensitivity to them (random-init norms agree to 1 %, so
    # the tracks barely vary) turns this into ≈ 1e-6 here, and 2e-6 or more on other kernels.
    fams, tracks = scale.log_tracks(adj)
    n_max = max(int(adj[f"{f}/n"]) for f in fams)
    sigma = math.sqrt(2) * 0.5 * math.sqrt(n_max) * tol.U32
    share_tol = tol.mode1_share_atol(tracks, sigma)
    assert share_tol < 1e-3  # a wrong share (no centring, σ instead of σ²) is off by ≥ 1e-2
    assert ref["mode1_share"] == pytest.approx(scale.explained_variance(tracks)[0], abs=share_tol)
    # a float32 sum of n signed entries per path errs by ≤ sum_rtol(n)·Σ|w| (Higham §4.2)
    w0 = model.weight(0, "q_proj").double()
    assert ref["sum_q0"] == pytest.approx(
        adj["q_proj/sums"][0], abs=tol.agree_rtol(w0.numel()) * float(w0.abs().sum()))
    hm = head_metric.compute(model, fold_norms=False)
    # ‖W_QK‖²_F: entries are float32 dots of head_dim terms (signed: Σ|q k| ≈ √head_dim·|Σ q k|),
    # squared and summed over hidden² terms; both paths float32 (naive: via a float32 SVD)
    lay = model.layout
    gram_rtol = (2 * math.sqrt(lay.head_dim) * tol.agree_rtol(lay.head_dim)
                 + tol.agree_rtol(lay.hidden ** 2))
    assert naive.head_metric(str(tiny_ckpt))["gram00"] == pytest.approx(hm["gram"][0, 0, 0],
                                                                        rel=gram_rtol)
    g = gauge.compute(model, draws=2, seed=0)
    ng = naive.gauge(str(tiny_ckpt), draws=2, seed=0)
    assert ng["complete"] and ng["units_done"]["lsa:mlp"] == 2 * 3
    for L in (0, 1):
        for fam in ("q_proj", "k_proj", "o_proj", "down_proj"):
            raw, aligned, null_mean = ng["aligned"][f"{L}/{fam}"]
            n = model.weight(L, fam).numel()
            # a cosine of n-entry weights, float32 on both sides
            assert raw == pytest.approx(g[f"{fam}.raw_cos"][L], abs=tol.cos_atol(n, paths=2))
            # measured bound: the aligned cosines go through a float32 SVD (naive) vs a float32
            # Gram + float64 Cholesky (probes.gauge), measured ≤ 2.5e-5 apart relative
            # (probes/gauge.py "Precision"); 1e-4 is 4× that, 100× below the alignment gain
            assert aligned == pytest.approx(g[f"{fam}.orth_aligned"][L], abs=1e-4)
            assert null_mean == pytest.approx(np.mean(g[f"{fam}.orth_null"][L]), abs=1e-4)
        assert ng["aligned"][f"{L}/gate_proj/perm"][0] == pytest.approx(
            g["gate_proj.perm_aligned"][L], abs=1e-4)  # measured, as above


def test_budget_extrapolates_unreached_units_by_n_cubed():
    b = naive._Budget(None)
    b.plan("svd:small", 100, 4)
    b.plan("svd:big", 200, 2)
    for _ in range(4):
        b.record("svd:small", 1.0)
    rep = b.report()
    assert not rep["complete"]
    assert rep["extrapolated_work_s"] - rep["work_s"] == pytest.approx(2 * 8.0)
    assert "n³ scaling" in rep["extrapolation"]["svd:big"]
    assert run.naive_seconds({"complete": False, "wall_s": 10.0, "work_s": 5.0,
                              "extrapolated_work_s": 25.0}) == (30.0, True)


def test_registry_skips_missing_probes():
    ok, notes = run.available(["adjacent", "no_such_probe"])
    assert ok == ["adjacent"] and "no_such_probe" in notes


def test_run_prints_the_table(tiny_ckpt, capsys, tmp_path):
    """The parent in this process; its cold and warm children are real subprocesses."""
    out_json = tmp_path / "bench.json"
    assert run.main([str(tiny_ckpt), "--probes", "adjacent,not_a_probe", "--skip-naive",
                     "--threads", "1", "--quick", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| probe" in out and "| adjacent" in out
    assert "not_a_probe" in out  # skipped with a note
    assert "error" not in out.split("| probe", 1)[1]
    report = json.loads(out_json.read_text())
    row = report["rows"][0]
    assert row["cold"]["misses"] == 1 and row["cold"]["hits"] == 0
    assert row["warm"]["hits"] == 1 and row["warm"]["misses"] == 0  # fresh process, cache hit
    assert row["cold"]["maxrss_gb"] > 0


def test_activation_benchmark_runs_streamed_and_whole_model(tmp_path, capsys):
    """benchmarks.activations on a tiny checkpoint (byte tokens), with the whole-model
    comparison: same statistics (0 relative difference on CPU), same verdicts, figures printed.

    The forward is pinned to float32: the checkpoint is bf16, so ``--dtype auto`` runs a bf16
    forward on a CPU with AVX512-BF16/AMX (probes.forward_dtype) and float32 elsewhere, while the
    hooked reference is float32 — auto made this test pass on AMD and fail on Intel Xeons
    (relative differences up to 2.6: bf16 against float32, not rounding)."""
    from benchmarks import activations as bench_act
    out = tmp_path / "tok"
    assert make_checkpoint.main(["--shape", "tiny-qwen3", "--layers", "3", "--out", str(out)]) == 0
    report = tmp_path / "r.json"
    assert bench_act.main([str(out), "--calib-tokens", "200", "--compare-hooked",
                           "--dtype", "float32", "--json", str(report)]) == 0
    doc = json.loads(report.read_text())
    text = capsys.readouterr().out
    assert "per 1,000 tokens" in text and "peak RSS" in text
    assert all(doc["same_verdicts"].values())
    # the same float32 ops on the same shapes: measured bitwise equal (0, AVX-512 MKL, 2 threads);
    # bound: two float32 orders of sums over tokens × hidden terms
    assert max(doc["max_rel_diff"].values()) <= tol.agree_rtol(200 * 64)
    assert doc["streamed"]["memory"]["layers_in_memory"] == 1
    # the time split and the floor (issue 19), measured in the same run
    assert "time split" in text and "floor:" in text and "GFLOP/s" in text
    streamed = doc["streamed"]
    assert streamed["forward"]["dtype"] == "float32"   # as asked (see the docstring)
    assert streamed["gemm_gflops"] > 0 and streamed["floor_s"] > 0
    parts = streamed["timing"]
    assert parts["forward_s"] > 0 and parts["forward_flops"] > 0
    assert sum(parts[k] for k in ("load_s", "forward_s", "gram_eigensolve_s", "token_scalars_s",
                                  "isotropic_s")) <= parts["total_s"] + 1e-6  # float64 seconds
    assert all(v["seconds"] >= 0 for v in streamed["verdicts"].values())


def test_activation_benchmark_side_by_side_with_a_script(tmp_path, capsys):
    """--vs-script runs the given script on the checkpoint first, reads its token count and
    runs Strata with that many tokens (a stand-in script: the real one needs a real tokenizer)."""
    from benchmarks import activations as bench_act
    ckpt = tmp_path / "ck"
    assert make_checkpoint.main(["--shape", "tiny-qwen3", "--layers", "2", "--out", str(ckpt)]) == 0
    script = tmp_path / "script.py"
    script.write_text("import argparse\np = argparse.ArgumentParser()\n"
                      "for a in ('--model', '--device', '--out'): p.add_argument(a)\n"
                      "args = p.parse_args()\nassert args.model and args.device == 'cpu'\n"
                      "print(' L=2, hidden=64, calibration tokens: 57')\n")
    report = tmp_path / "r.json"
    assert bench_act.main([str(ckpt), "--vs-script", str(script), "--json", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert doc["script"]["tokens"] == 57 and doc["streamed"]["tokens"] == 57
    assert doc["ratio_time"] > 0 and doc["ratio_memory"] > 0
    assert "side by side, 57 tokens" in capsys.readouterr().out


def test_make_checkpoint_copies_a_tokenizer(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    (src / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "ck"
    assert make_checkpoint.main(["--shape", "tiny-qwen3", "--layers", "1", "--tokenizer",
                                 str(src), "--out", str(out)]) == 0
    assert (out / "tokenizer.json").read_text() == "{}"
    with pytest.raises(SystemExit, match="no tokenizer files"):
        make_checkpoint.main(["--shape", "tiny-qwen3", "--layers", "1", "--tokenizer",
                              str(tmp_path / "ck" / "nothing"), "--out", str(tmp_path / "c2")])
    assert not (tmp_path / "c2").exists()   # refused before writing anything
