"""The cost estimates that order a cluster's work (probes/probe_cost.py): the weight counts they
start from equal the checkpoints' own, and each estimate grows with what its probe does."""

from __future__ import annotations

import json
import re
import struct
from types import SimpleNamespace

import pytest

from benchmarks import compatibility as compat
from probes import probe_cost
from probes.models import open_model
from probes.models.adapters import ARCHITECTURES
from probes.models.base import Layout

RATES = {"gemm_f32_gflops": 100.0, "gemm_bf16_gflops": 400.0, "eig512_s": 0.01,
         "lsa512_s": 0.01, "topk_s_per_entry": 1e-8}


def header(path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def layer0_matrix_weights(directory, num_experts: int) -> int:
    """Entries of layer 0's 2-D tensors in the checkpoint, the MoE router's left out."""
    total = 0
    for shard in sorted(directory.glob("*.safetensors")):
        for name, meta in header(shard).items():
            shape = meta.get("shape", []) if isinstance(meta, dict) else []
            # the layer index is a name's first number (model.layers.0., transformer.h.0.)
            first = re.search(r"\.(\d+)\.", f".{name}")
            if first is None or first.group(1) != "0" or len(shape) != 2:
                continue
            if num_experts and num_experts in shape and "expert" not in name:
                continue   # the router: hidden × experts
            total += shape[0] * shape[1]
    return total


@pytest.mark.parametrize("arch", [compat.tiny_arch(a) for a in ARCHITECTURES])
def test_layer_params_are_the_checkpoints_projection_weights(arch, tmp_path):
    path = compat.tiny_checkpoint(arch, tmp_path / arch)
    model = open_model(str(path))
    # GPT-2, GPT-NeoX, Phi-2, ...: up and down only; the others gate, up and down
    assert probe_cost.model_layer_params(model) == layer0_matrix_weights(
        path, model.layout.num_experts)


def test_qwen3_4b_layers_hold_its_published_non_embedding_weights():
    qwen3_4b = Layout("qwen3", num_layers=36, hidden=2560, num_heads=32, num_kv_heads=8,
                      head_dim=128, intermediate=9728)
    # Qwen3-4B's model card: 4.0 B parameters, 3.6 B of them outside the embedding
    assert probe_cost.layer_params(qwen3_4b) * 36 == pytest.approx(3.6e9, rel=0.01)


def test_each_estimate_grows_with_its_probe_work():
    def model(layers):
        return SimpleNamespace(families=("q_proj", "gate_proj", "up_proj", "down_proj"),
                               layout=Layout("qwen3", num_layers=layers, hidden=256, num_heads=4,
                                             num_kv_heads=2, head_dim=64, intermediate=768))
    small, deep = model(6), model(24)
    fwd = lambda layout, tokens, bf16=False: probe_cost.forward_seconds(  # noqa: E731
        layout, tokens, bf16, rates=RATES)
    assert fwd(small, 2000) > fwd(small, 1000) > 0
    assert fwd(small, 1000, bf16=True) < fwd(small, 1000)   # 4× the GEMM rate here
    assert fwd(deep, 1000) == pytest.approx(4 * fwd(small, 1000))
    gram = lambda layout: probe_cost.weight_gram_seconds(layout, rates=RATES)  # noqa: E731
    heads = lambda layout: probe_cost.head_metric_seconds(layout, rates=RATES)  # noqa: E731
    assert gram(deep) > 4 * gram(small) * 0.999   # L × P: more than linear in depth
    assert heads(deep) > 4 * heads(small)          # the all-pairs Gram: quadratic in depth
