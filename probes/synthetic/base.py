"""Building blocks for synthetic models: a valid tiny HF config per architecture and the
architecture's random init with HF tensor names."""

from __future__ import annotations

import torch

from probes.models.random_init import draw, hf_config, init_plan

ARCH_MODEL_TYPE = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                   "gemma3": "gemma3_text", "gemma3_text": "gemma3_text"}
ARCH_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
              "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
              "gemma3_text": "Gemma3ForCausalLM"}
_DROP = ("transformers_version", "_name_or_path")


def tiny_config(arch: str = "llama", num_layers: int = 8, hidden: int = 64, num_heads: int = 4,
                num_kv_heads: int = 2, head_dim: int = 16, intermediate: int = 128,
                vocab_size: int = 256, **overrides) -> dict:
    """A complete HF ``config.json`` dict for a small model of architecture ``arch``
    (llama | mistral | qwen2 | qwen3 | gemma3), valid for ``AutoConfig.for_model`` and a forward
    pass. ``overrides`` are further HF config keys (e.g. ``tie_word_embeddings=False``)."""
    if arch not in ARCH_MODEL_TYPE:
        raise ValueError(f"tiny_config: unknown arch {arch!r}; one of {sorted(ARCH_MODEL_TYPE)}")
    model_type = ARCH_MODEL_TYPE[arch]
    kwargs = dict(num_hidden_layers=num_layers, hidden_size=hidden,
                  num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                  head_dim=head_dim, intermediate_size=intermediate, vocab_size=vocab_size,
                  max_position_embeddings=512, initializer_range=0.02, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model_type == "gemma3_text":
        kwargs.update(sliding_window=16, query_pre_attn_scalar=head_dim,
                      bos_token_id=2, eos_token_id=1, pad_token_id=0)
    kwargs.update(overrides)
    cfg = hf_config({"model_type": model_type, **kwargs}).to_dict()
    for key in _DROP:
        cfg.pop(key, None)
    cfg["model_type"] = model_type
    cfg["architectures"] = [ARCH_CLASS[model_type]]
    cfg.setdefault("head_dim", head_dim)
    return cfg


def random_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every parameter the HF model for ``config`` holds (tied lm_head omitted), drawn from the
    architecture's init (N(0, initializer_range²) for Linear/Embedding, norms 1 — gemma 0),
    each tensor seeded by ``(seed, name)``."""
    salt = f"synthetic/{seed}"
    return {name: draw(name, init, salt) for name, init in init_plan(config).items()}
