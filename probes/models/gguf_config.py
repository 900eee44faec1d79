"""A GGUF file's model configuration: transformers' own reading, completed where it drops keys.

transformers turns a GGUF's metadata into a config through a per-architecture table
(``transformers.integrations.ggml.GGUF_CONFIG_MAPPING``, the "legacy" path; a few architectures
have their own builder, ``GGUF_CONFIG_ARCHS``, which we leave as they are). A metadata key that an
architecture's entry does not name, or maps to ``None``, is dropped, and the config class's
default stands in for it. Where that default is not the file's value the converted model is
another model:

* Qwen3 (and Qwen2, Mistral, Phi-3, StarCoder2, ...): ``attention.key_length`` (llama.cpp writes
  it whenever the HF config has a ``head_dim``) is dropped; Qwen3's default ``head_dim`` is 128,
  so a Qwen3 whose ``head_dim`` is anything else gets projections split into the wrong heads and
  shapes that do not match its tensors;
* rope scaling (``rope.scaling.type``/``factor``/``original_context_length``: Gemma 3's linear ×8 on
  its global layers, Qwen's YaRN) is dropped everywhere but gpt-oss: the rotary angles are
  another model's;
* Gemma 2's ``attn_logit_softcapping``/``final_logit_softcapping``, the MoE models' per-expert
  width ``expert_feed_forward_length``, Qwen2-MoE's shared-expert width, a sliding window,
  a partial rotary dimension.

:data:`COMPLETIONS` is one table for all architectures: a metadata key → the config attribute it
sets. An entry applies to a file whose architecture's loader entry does not map that key to an
attribute of its own (so Gemma 4's ``key_length`` → ``global_head_dim`` stands); it sets the
attribute where the config class has it (``head_dim`` always: attention modules read it when
present). :data:`DERIVED` holds what llama.cpp itself derives instead of storing: Gemma 2/3's
attention scale (``query_pre_attn_scalar``: head_dim, except hidden/heads on the 27B models, as
llama.cpp's ``llama-model.cpp`` picks it by layer count).

What the table cannot fix is caught afterwards: :func:`check_shapes` compares every tensor the
file holds with the model the completed config builds and names the first that differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from probes.errors import StrataError


@dataclass(frozen=True)
class Completion:
    """One metadata key (after the ``<arch>.`` prefix) and the config attribute it sets."""

    key: str
    attribute: str
    why: str


COMPLETIONS: tuple[Completion, ...] = (
    Completion("attention.key_length", "head_dim",
               "per-head query/key width; llama.cpp writes it whenever the HF config has head_dim"),
    Completion("attention.sliding_window", "sliding_window", "local attention window"),
    Completion("attn_logit_softcapping", "attn_logit_softcapping", "Gemma 2 attention tanh cap"),
    Completion("final_logit_softcapping", "final_logit_softcapping", "Gemma 2 logit tanh cap"),
    Completion("expert_feed_forward_length", "moe_intermediate_size",
               "one expert's MLP width (MoE)"),
    Completion("expert_shared_feed_forward_length", "shared_expert_intermediate_size",
               "the shared expert's MLP width (Qwen2-MoE)"),
)
# handled by their own functions below, for the same architectures (keys the loader drops)
ROPE_DIMENSION_KEY = "rope.dimension_count"      # a partial rotary factor
VALUE_LENGTH_KEY = "attention.value_length"      # must equal the key width (one head_dim)
ROPE_SCALING_KEYS = {                            # → rope_parameters[...]
    "rope.scaling.type": "rope_type",
    "rope.scaling.factor": "factor",
    "rope.scaling.original_context_length": "original_max_position_embeddings",
    "rope.scaling.yarn_beta_fast": "beta_fast",
    "rope.scaling.yarn_beta_slow": "beta_slow",
    "rope.scaling.attn_factor": "attention_factor",
}


def _gemma_query_scale(layers_27b: int) -> Callable[[dict], float]:
    """llama.cpp's Gemma attention scale: 1/√(hidden/heads) on the 27B model (identified by its
    layer count), 1/√head_dim otherwise — as transformers' ``query_pre_attn_scalar``."""
    def derive(cfg: dict) -> float:
        if cfg["num_hidden_layers"] == layers_27b:
            return cfg["hidden_size"] // cfg["num_attention_heads"]
        return cfg["head_dim"]
    return derive


# loader architecture → {config attribute: derived from the completed config dict}
DERIVED: dict[str, dict[str, Callable[[dict], object]]] = {
    "gemma2": {"query_pre_attn_scalar": _gemma_query_scale(46)},
    "gemma3": {"query_pre_attn_scalar": _gemma_query_scale(62)},
}


def metadata(path: Path) -> dict:
    """The file's metadata as {key: value} (strings and numbers; arrays of numbers as lists;
    the tokenizer's arrays left out), read with transformers' own reader."""
    from transformers.integrations.gguf import read_gguf_metadata
    meta, _ = read_gguf_metadata(str(path))
    return meta


def loader_architecture(model_type: str) -> str:
    """The key of transformers' ``GGUF_CONFIG_MAPPING`` whose entry read this config
    (``gemma3_text`` → ``gemma3``; the loader renames its model types that way)."""
    return model_type.removesuffix("_text")


def completions(meta: dict, raw: dict, defaults: dict) -> dict:
    """The config attributes to add to ``raw`` (what transformers read from the file) from
    the metadata ``meta`` it dropped, given the config class's ``defaults`` (a dict)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    arch = meta["general.architecture"]
    loader = loader_architecture(str(raw.get("model_type", "")))
    mapped = {k for k, v in GGUF_CONFIG_MAPPING.get(loader, {}).items() if v is not None}

    def dropped(key: str) -> bool:
        return f"{arch}.{key}" in meta and key not in mapped

    out: dict = {}
    for c in COMPLETIONS:
        if not dropped(c.key):
            continue
        if c.attribute == "head_dim" or c.attribute in defaults:
            out[c.attribute] = meta[f"{arch}.{c.key}"]
    head_dim = _head_dim({**defaults, **raw, **out})
    if dropped(VALUE_LENGTH_KEY) and head_dim and meta[f"{arch}.{VALUE_LENGTH_KEY}"] != head_dim:
        raise StrataError(f"GGUF {loader} model with value heads of width "
                          f"{meta[f'{arch}.{VALUE_LENGTH_KEY}']} and query/key heads of width "
                          f"{head_dim}: transformers' {loader} config has one head_dim")
    if dropped(ROPE_DIMENSION_KEY) and head_dim:
        rotary = meta[f"{arch}.{ROPE_DIMENSION_KEY}"]
        if rotary != head_dim:
            if "partial_rotary_factor" not in _rope_of(defaults) \
                    and "partial_rotary_factor" not in defaults:
                raise StrataError(f"GGUF {loader} model rotates {rotary} of each head's "
                                  f"{head_dim} dimensions; transformers' {loader} config "
                                  f"cannot say so (no partial rotary factor)")
            out["partial_rotary_factor"] = rotary / head_dim
    scaling = {hf: meta[f"{arch}.{key}"] for key, hf in ROPE_SCALING_KEYS.items() if dropped(key)}
    if scaling.get("rope_type") not in (None, "none") and _rope_of(defaults):
        out["rope_parameters"] = _rope_parameters(scaling, raw, defaults)
    for attribute, derive in DERIVED.get(loader, {}).items():
        if attribute not in raw:
            out[attribute] = derive({**defaults, **raw, **out, "head_dim": head_dim})
    return out


def _head_dim(cfg: dict) -> int | None:
    """The per-head width a config gives: its ``head_dim``, else hidden / heads (None where
    the config names neither, e.g. GPT-2's ``n_embd``/``n_head``)."""
    if cfg.get("head_dim"):
        return cfg["head_dim"]
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    return hidden // heads if hidden and heads else None


def _rope_of(cfg: dict) -> dict:
    return cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}


def _rope_parameters(scaling: dict, raw: dict, defaults: dict) -> dict:
    """transformers 5's ``rope_parameters`` for the file's scaling. Configs whose rope differs
    per layer type (Gemma 3: local and global layers) get it on the full-attention layers only,
    where llama.cpp applies it (its sliding-window layers keep an unscaled base)."""
    params = {k: v for k, v in scaling.items() if v is not None}
    if raw.get("rope_theta") is not None:
        params["rope_theta"] = raw["rope_theta"]
    if "full_attention" in _rope_of(defaults):
        return {"full_attention": params}
    return params


def read_config(path: Path):
    """The transformers config of GGUF ``path``: transformers' own (``AutoConfig`` with
    ``gguf_file``), completed from the metadata it drops (see the module docstring)."""
    from transformers import AutoConfig, PretrainedConfig
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    path = Path(path)
    meta = metadata(path)
    if meta.get("general.architecture") in GGUF_CONFIG_ARCHS:   # its own complete builder
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    raw, _ = PretrainedConfig.get_config_dict(str(path.parent), gguf_file=path.name)
    config_class = CONFIG_MAPPING[raw["model_type"]]
    defaults = config_class().to_dict()
    added = completions(meta, raw, defaults)
    return config_class.from_dict({**raw, **added})


def check_shapes(path: Path, arch: str, expected: dict, found: dict) -> None:
    """Every tensor the file holds (``found``: HF name → shape) has the shape of the model its
    config builds (``expected``); a StrataError names the first that does not."""
    for name, shape in found.items():
        want = expected.get(name)
        if want is not None and tuple(want) != tuple(shape):
            raise StrataError(f"GGUF file {path}: tensor {name} has shape {tuple(shape)}, but the "
                              f"{arch} model its metadata describes expects {tuple(want)} (a "
                              f"hyperparameter transformers' GGUF reader does not carry over)")
