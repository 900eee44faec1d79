"""The activation probes' forward dtype (``--dtype``): how ``auto`` decides, what bf16 changes.

Tolerances. A bf16 forward rounds every matrix product's inputs to 8 significant bits (unit
roundoff u = 2⁻⁹ ≈ 2e-3, products accumulated in float32): a layer's update δ then carries a
relative error of a few u times the number of roundings along its path (norm → q/k/v → attention
→ o; norm → gate/up → down: ≈ 4 in sequence), ≈ 1e-2, and a statistic that averages over tokens
less than that. We bound δ's relative error by 0.05 — far below the 0.2–1 that rounding the
residual stream itself to bf16 gives when ‖δ‖/‖h‖ ≈ 0.01 (2⁻⁹‖h‖/‖δ‖), which the second test
provokes and checks."""

import numpy as np
import pytest
import torch

from probes import activations, calibration, forward_dtype
from probes.errors import StrataError
from probes.forward_dtype import ForwardDtype, resolve
from probes.layer_stream import LayerStream
from probes.models import open_model
from probes.models.checkpoint import write_checkpoint
from probes.synthetic.base import random_state_dict, tiny_config

from tests.test_plugin_e2e import records, run_pytest

BF16 = ForwardDtype("bfloat16", "bfloat16", "test")
F32 = ForwardDtype("float32", "float32", "test")


def _corpus(model, budget):
    return calibration.tokenize(calibration.load_corpus(), model.encode, budget)


def test_cpu_flags_are_read_from_cpuinfo():
    text = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    assert forward_dtype.cpu_bf16_units(text) == ["amx_bf16", "avx512_bf16"]
    assert forward_dtype.cpu_bf16_units("flags : avx2 fma\n") == []
    # a substring is not a flag
    assert forward_dtype.cpu_bf16_units("flags : xavx512_bf16y\n") == []


@pytest.mark.parametrize("config,device,units,expected", [
    ({"torch_dtype": "bfloat16"}, "cpu", ["amx_bf16"], "bfloat16"),
    ({"dtype": "bfloat16"}, "cpu", ["avx512_bf16"], "bfloat16"),
    ({"dtype": "bfloat16"}, "cpu", [], "float32"),             # AVX2 only: emulated, slower
    ({"text_config": {"dtype": "bfloat16"}}, "cpu", ["amx_bf16"], "bfloat16"),
    ({"torch_dtype": "float16"}, "cpu", ["amx_bf16"], "float32"),
    ({"dtype": "float32"}, "cpu", ["amx_bf16"], "float32"),    # e.g. a dequantized GGUF
    ({}, "cpu", ["amx_bf16"], "float32"),                      # undeclared
    ({"torch_dtype": "bfloat16"}, "cuda", [], "bfloat16"),
])
def test_auto_takes_the_checkpoint_bf16_only_where_it_is_fast(monkeypatch, config, device,
                                                              units, expected):
    monkeypatch.setattr(forward_dtype, "cpu_bf16_units", lambda cpuinfo=None: units)
    monkeypatch.setattr(forward_dtype, "aten_capability", lambda: "AVX512")
    got = resolve("auto", device, config)
    assert got.name == expected and got.requested == "auto" and got.reason
    assert got.dtype == forward_dtype.DTYPES[expected]
    # an explicit choice is obeyed whatever the hardware
    assert resolve("float32", device, config).name == "float32"
    assert resolve("bfloat16", device, config).name == "bfloat16"


@pytest.mark.parametrize("capability", ["DEFAULT", "AVX2"])
def test_auto_is_float32_where_atens_kernels_are_below_avx512(monkeypatch, capability):
    """ATEN_CPU_CAPABILITY=default/avx2 on a CPU with AMX: bf16 is not vectorised (and torch's
    flash attention fails on it), so auto stays float32; an explicit bf16 runs (math SDPA)."""
    monkeypatch.setattr(forward_dtype, "cpu_bf16_units", lambda cpuinfo=None: ["amx_bf16"])
    monkeypatch.setattr(forward_dtype, "aten_capability", lambda: capability)
    got = resolve("auto", "cpu", {"dtype": "bfloat16"})
    assert got.name == "float32" and "ATEN_CPU_CAPABILITY" in got.reason
    forward = resolve("bfloat16", "cpu", {"dtype": "bfloat16"})
    q = torch.randn(1, 2, 256, 16)
    with forward.autocast("cpu"):
        out = torch.nn.functional.scaled_dot_product_attention(q.bfloat16(), q.bfloat16(),
                                                               q.bfloat16(), is_causal=True)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_bad_dtype_is_a_strata_error():
    with pytest.raises(StrataError, match="--dtype"):
        resolve("float16", "cpu", {})


def _scaled_stream_model(tmp_path, scale):
    """tiny llama whose embeddings are ``scale`` × the init: the stream ‖h‖ grows by ``scale``
    while the updates (computed from RMS-normed inputs) keep their size."""
    cfg = tiny_config("llama", num_layers=4)
    state = random_state_dict(cfg, seed=5)
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"] * scale
    # gains with more bits than bf16 holds (the init's are all 1)
    gain = state["model.layers.0.input_layernorm.weight"]
    state["model.layers.0.input_layernorm.weight"] = gain + torch.linspace(0, 1e-3, len(gain))
    return open_model(str(write_checkpoint((cfg, state), tmp_path / "m")))


def test_bf16_layers_keep_a_float32_residual_stream(tmp_path):
    model = _scaled_stream_model(tmp_path, 300.0)
    seqs = activations.windows(_corpus(model, 200), 512)
    stream32 = LayerStream(model, forward=F32)
    stream16 = LayerStream(model, forward=BF16)
    for (layer, in32, out32), (_, in16, out16) in zip(stream32.run(seqs), stream16.run(seqs)):
        assert all(t.dtype == torch.float32 for t in (*in16, *out16))
        d32 = torch.cat([o - i for i, o in zip(in32, out32)], 1)[0].double()
        d16 = torch.cat([o - i for i, o in zip(in16, out16)], 1)[0].double()
        h = torch.cat(in32, 1)[0].double()
        rel_step = float(d32.norm() / h.norm())
        assert rel_step < 0.02  # the regime where a bf16 residual would swamp δ
        err = float((d16 - d32).norm() / d32.norm())
        assert 0 < err < 0.05, (layer, err)
        # what rounding the stream itself to bf16 would cost: ≥ 5× more
        rounded = (h.to(torch.bfloat16).double() - h).norm() / d32.norm()
        assert float(rounded) > 5 * err
    loaded = LayerStream(model, forward=BF16).load_layer(0)
    dtypes = {name: p.dtype for name, p in loaded.named_parameters()}
    assert dtypes["self_attn.q_proj.weight"] == torch.bfloat16
    assert dtypes["input_layernorm.weight"] == torch.float32
    # gains are not rounded through bf16 on their way in
    stored = model.layer_state(0)["input_layernorm.weight"]
    assert stored.dtype == torch.float32 and not torch.equal(stored.bfloat16().float(), stored)
    assert torch.equal(loaded.input_layernorm.weight, stored)


@pytest.mark.parametrize("spec", ["synthetic:tiny-qwen3", "synthetic:tiny-gemma3"])
def test_bf16_statistics_close_to_float32(spec):
    model = open_model(spec)
    tc = _corpus(model, 400)
    a = activations.compute(model, tc, top_k=4, forward=F32)
    b = activations.compute(model, tc, top_k=4, forward=BF16)
    assert a["forward"]["dtype"] == "float32" and b["forward"]["dtype"] == "bfloat16"
    for key in ("rel_step", "parallel_frac", "angular_step", "effective_rank", "top1_energy"):
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert np.all(np.abs(x - y) <= 0.05 * np.abs(x).max()), (key, np.abs(x - y).max())
        assert not np.array_equal(x, y)  # the dtype did change the arithmetic
    assert a["scored_tokens"] == b["scored_tokens"]


def test_dtype_is_in_the_cache_key_and_the_report(tmp_path):
    claim = "hypotheses/test_late_layers_change_least.py"
    base = [claim, "--model=synthetic:tiny-llama", "--no-twin", "--calib-tokens=300"]
    res = run_pytest([*base, "--dtype=bfloat16"], tmp_path / "c", tmp_path / "bf16")
    # auto on this model: a synthetic config declares no bf16 → float32, its own cache entry
    run_pytest(base, tmp_path / "c", tmp_path / "auto")
    entries = list((tmp_path / "c" / "probes" / activations.PROBE_ID).glob("*.safetensors"))
    assert len(entries) == 2, res.stdout[-2000:]   # one per dtype, neither served for the other
    for name, dtype, requested in (("bf16", "bfloat16", "bfloat16"), ("auto", "float32", "auto")):
        forward = records(tmp_path / name)["run"]["models"][0]["activation_forward"]
        assert (forward["dtype"], forward["requested"]) == (dtype, requested)
