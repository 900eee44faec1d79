"""Tiny random models, one per supported architecture (8 layers, hidden 64, 4 heads, 2 kv heads;
GPT-2 and GPT-NeoX: 4 kv heads; mixtures of experts: 4 experts of width 128, 2 per token)."""

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
TINY_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma", "gemma2", "gpt2",
                      "gpt_neox", "olmo", "olmo2", "olmo3", "phi", "phi3", "starcoder2", "granite",
                      "mixtral", "qwen3_moe", "olmoe", "helium", "smollm3", "ministral",
                      "ernie4_5", "seed_oss", "arcee", "glm", "exaone4", "cohere", "stablelm",
                      "nemotron")

for _arch in TINY_ARCHITECTURES:
    register(f"tiny-{_arch}")(partial(_tiny, _arch))
del _arch
