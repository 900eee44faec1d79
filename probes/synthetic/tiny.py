"""Tiny random models, one per supported architecture (8 layers, hidden 64, 4 heads, 2 kv heads)."""

from __future__ import annotations

from probes.synthetic import SyntheticSpec, register
from probes.synthetic.base import random_state_dict, tiny_config


def _tiny(arch: str) -> SyntheticSpec:
    config = tiny_config(arch)
    return SyntheticSpec(config, random_state_dict(config, seed=0),
                         f"tiny random {arch}: 8 layers, hidden 64, 4 heads, 2 kv heads, "
                         f"head_dim 16, ff 128, vocab 256")


@register("tiny-llama")
def tiny_llama() -> SyntheticSpec:
    return _tiny("llama")


@register("tiny-mistral")
def tiny_mistral() -> SyntheticSpec:
    return _tiny("mistral")


@register("tiny-qwen2")
def tiny_qwen2() -> SyntheticSpec:
    return _tiny("qwen2")


@register("tiny-qwen3")
def tiny_qwen3() -> SyntheticSpec:
    return _tiny("qwen3")


@register("tiny-gemma3")
def tiny_gemma3() -> SyntheticSpec:
    return _tiny("gemma3")
