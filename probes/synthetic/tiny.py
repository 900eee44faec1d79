"""Tiny random models, one per supported architecture (8 layers, hidden 64, 4 heads, 2 kv heads)."""

from __future__ import annotations

from functools import partial

from probes.synthetic import SyntheticSpec, register
from probes.synthetic.base import random_state_dict, tiny_config


def _tiny(arch: str) -> SyntheticSpec:
    config = tiny_config(arch)
    return SyntheticSpec(config, random_state_dict(config, seed=0),
                         f"tiny random {arch}: 8 layers, hidden 64, 4 heads, 2 kv heads, "
                         f"head_dim 16, ff 128, vocab 256")


# one registered spec per architecture the adapters support (gemma3_text shares gemma3's)
TINY_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")

for _arch in TINY_ARCHITECTURES:
    register(f"tiny-{_arch}")(partial(_tiny, _arch))
del _arch
