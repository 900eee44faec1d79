"""Building blocks for synthetic models: a valid tiny HF config per architecture and the
architecture's random init with HF tensor names."""

from __future__ import annotations

import torch

from probes.models.random_init import draw, full_config, init_plan

ARCH_MODEL_TYPE = {"gemma3": "gemma3_text"}   # a tiny_config name that is not a model_type
# architectures whose attention has no grouped-query heads and whose head_dim is hidden / heads
_MHA_ONLY = ("gpt2", "gpt_neox")
# per architecture: config keys that make the tiny model exercise what differs (sliding windows
# shorter than the calibration windows, non-trivial multipliers, experts) — valid for
# ``AutoConfig.for_model`` and a forward pass
_ARCH_KWARGS = {
    "gemma3_text": lambda hd: dict(sliding_window=16, query_pre_attn_scalar=hd, bos_token_id=2,
                                   eos_token_id=1),
    "gemma2": lambda hd: dict(sliding_window=16, query_pre_attn_scalar=hd),
    "gpt_neox": lambda hd: dict(rotary_pct=0.25, use_parallel_residual=True),
    "phi": lambda hd: dict(partial_rotary_factor=0.5),
    "starcoder2": lambda hd: dict(sliding_window=16),
    "olmo3": lambda hd: dict(sliding_window=16),
    "granite": lambda hd: dict(embedding_multiplier=2.0, residual_multiplier=0.5,
                               attention_multiplier=0.2, logits_scaling=2.0),
    "mixtral": lambda hd: dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": lambda hd: dict(num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                                 mlp_only_layers=[], norm_topk_prob=True),
    "olmoe": lambda hd: dict(num_experts=4, num_experts_per_tok=2),
    "smollm3": lambda hd: dict(no_rope_layer_interval=2),
    "ministral": lambda hd: dict(sliding_window=16),
    "exaone4": lambda hd: dict(sliding_window=16, sliding_window_pattern=2),
    "stablelm": lambda hd: dict(use_parallel_residual=True, use_qkv_bias=True),
}
_DROP = ("transformers_version", "_name_or_path")


def tiny_config(arch: str = "llama", num_layers: int = 8, hidden: int = 64, num_heads: int = 4,
                num_kv_heads: int = 2, head_dim: int = 16, intermediate: int = 128,
                vocab_size: int = 256, **overrides) -> dict:
    """A complete HF ``config.json`` dict for a small model of architecture ``arch`` (a
    supported model_type, or ``gemma3`` for ``gemma3_text``), valid for
    ``AutoConfig.for_model`` and a forward pass. GPT-2 and GPT-NeoX have no grouped-query
    heads: there ``num_kv_heads = num_heads`` and ``head_dim = hidden / num_heads``; mixtures of
    experts get 4 experts of ``intermediate`` width, 2 per token. ``overrides`` are further HF
    config keys (e.g. ``tie_word_embeddings=False``). Transformers' completion of the config is
    kept in the cache :func:`~probes.models.random_init.documents_kept_in` names, if any."""
    from probes.models.adapters import SUPPORTED_ARCHITECTURES
    model_type = ARCH_MODEL_TYPE.get(arch, arch)
    if model_type not in SUPPORTED_ARCHITECTURES or model_type == "gemma3":
        raise ValueError(f"tiny_config: unknown arch {arch!r}; one of "
                         f"{sorted(set(SUPPORTED_ARCHITECTURES) - {'gemma3_text'})}")
    if model_type in _MHA_ONLY:
        num_kv_heads, head_dim = num_heads, hidden // num_heads
    kwargs = dict(num_hidden_layers=num_layers, hidden_size=hidden,
                  num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                  head_dim=head_dim, intermediate_size=intermediate, vocab_size=vocab_size,
                  max_position_embeddings=512, initializer_range=0.02, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model_type == "gpt2":   # no intermediate_size, kv heads or head_dim in its config
        kwargs["n_inner"] = kwargs.pop("intermediate_size")
        del kwargs["num_key_value_heads"], kwargs["head_dim"]
    if model_type == "gpt_neox":
        del kwargs["num_key_value_heads"], kwargs["head_dim"]
    if model_type == "qwen3_moe":
        kwargs["moe_intermediate_size"] = intermediate
    kwargs.update(_ARCH_KWARGS.get(model_type, lambda hd: {})(head_dim))
    kwargs.update(overrides)
    cfg, causal_lm = full_config({"model_type": model_type, **kwargs})
    for key in _DROP:
        cfg.pop(key, None)
    cfg["model_type"] = model_type
    cfg["architectures"] = [causal_lm]
    if model_type not in _MHA_ONLY:
        cfg.setdefault("head_dim", head_dim)
    return cfg


def random_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every parameter the HF model for ``config`` holds (tied lm_head omitted), drawn from the
    architecture's init (:mod:`probes.models.random_init`: N(0, initializer_range²) for
    Linear/Embedding, norms 1 — gemma 0), each tensor seeded by ``(seed, name)``."""
    salt = f"synthetic/{seed}"
    return {name: draw(name, init, salt) for name, init in init_plan(config).items()}
