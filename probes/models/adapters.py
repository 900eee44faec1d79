"""Architecture adapters: (layer, canonical family) → tensor names, and the head layout.

Each supported architecture stores a decoder layer ``i`` under ``<prefix>layers.<i>.`` with the
usual HF names. The adapter finds the prefix from the tensor names (``model.`` for causal LMs;
``model.language_model.`` or ``language_model.model.`` for gemma3's multimodal checkpoints),
maps families to names, splits fused ``qkv_proj`` / ``gate_up_proj`` tensors by rows (q, k, v
blocks of ``num_heads·head_dim``, ``num_kv_heads·head_dim``, ``num_kv_heads·head_dim``; gate then
up, ``intermediate`` rows each) and, for gemma, returns norm gains as ``1 + w`` (gemma's RMSNorm
multiplies by ``1 + weight``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import torch

from probes.errors import StrataError
from probes.models.base import CANONICAL_FAMILIES, NORMS, Layout

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")
_GEMMA = ("gemma3_text",)

# family -> suffix under <prefix>layers.<i>.
_COMMON = {
    "q_proj": "self_attn.q_proj.weight", "k_proj": "self_attn.k_proj.weight",
    "v_proj": "self_attn.v_proj.weight", "o_proj": "self_attn.o_proj.weight",
    "gate_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight",
    "down_proj": "mlp.down_proj.weight",
    "input_ln": "input_layernorm.weight", "post_attn_ln": "post_attention_layernorm.weight",
    "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
}
_ARCH_EXTRA = {
    "gemma3_text": {"pre_ff_ln": "pre_feedforward_layernorm.weight",
                    "post_ff_ln": "post_feedforward_layernorm.weight"},
}
_FUSED_QKV = "self_attn.qkv_proj.weight"
_FUSED_GATE_UP = "mlp.gate_up_proj.weight"
_PREFIXES = ("model.", "model.language_model.", "language_model.model.", "")


def text_config(config: dict) -> dict:
    """The decoder's config: ``config`` itself, or a gemma3 multimodal config's ``text_config``
    (as a ``gemma3_text`` config). Raises StrataError for unsupported architectures."""
    model_type = config.get("model_type")
    if model_type == "gemma3" and isinstance(config.get("text_config"), dict):
        text = dict(config["text_config"])
        text["model_type"] = "gemma3_text"
        text.setdefault("architectures", ["Gemma3ForCausalLM"])
        return text
    if model_type not in SUPPORTED_ARCHITECTURES or model_type == "gemma3":
        raise StrataError(
            f"unsupported architecture {model_type!r} (model_type in config.json); "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return config


def layout_of(config: dict) -> Layout:
    """Shapes from a (text) config; head_dim from the config or hidden // num_heads."""
    cfg = text_config(config)
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        return Layout(architecture=cfg["model_type"], num_layers=int(cfg["num_hidden_layers"]),
                      hidden=hidden, num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
                      intermediate=int(cfg["intermediate_size"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise StrataError(f"config.json lacks a usable {exc} for a "
                          f"{cfg.get('model_type')} model") from None


@dataclass(frozen=True)
class TensorRef:
    """Where a family's tensor lives: a stored tensor, optionally a row block of it, and a
    transform (gemma's ``1 + w``)."""

    name: str
    rows: tuple[int, int] | None = None
    plus_one: bool = False
    fused_rows: int | None = None  # expected row count of a fused tensor

    def family_shape(self, stored: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the family's tensor given the stored tensor's shape."""
        if self.rows is None:
            return tuple(stored)
        return (self.rows[1] - self.rows[0], *stored[1:])

    def stored_rows(self, start: int, stop: int) -> tuple[int, int]:
        """Rows of the stored tensor that hold the family's rows ``start:stop``."""
        offset = 0 if self.rows is None else self.rows[0]
        return offset + start, offset + stop

    def finish(self, tensor: torch.Tensor) -> torch.Tensor:
        """float32, a fresh copy, gemma's ``1 + w`` applied."""
        # always a fresh copy: sources may hand out views of a shared memory map, and a
        # caller that modifies its weight in place must not change the next read
        tensor = tensor.to(torch.float32, copy=True).contiguous()
        if self.plus_one:
            tensor += 1.0
        return tensor

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.fused_rows is not None and tensor.shape[0] != self.fused_rows:
            raise StrataError(f"fused tensor {self.name} has {tensor.shape[0]} rows; the config "
                              f"implies {self.fused_rows}")
        if self.rows is not None:
            tensor = tensor[self.rows[0]:self.rows[1]]
        return self.finish(tensor)


class Adapter:
    """Maps (layer, family) to :class:`TensorRef` for one model given its tensor names."""

    def __init__(self, config: dict, names: Collection[str]):
        self.config = text_config(config)
        self.layout = layout_of(self.config)
        self.arch = self.layout.architecture
        names = set(names)
        self.prefix = self._find_prefix(names)
        self.suffixes = {**_COMMON, **_ARCH_EXTRA.get(self.arch, {})}
        self._refs: dict[tuple[int, str], TensorRef] = {}
        for layer in range(self.layout.num_layers):
            for fam in self.families_order():
                ref = self._resolve(layer, fam, names)
                if ref is not None:
                    self._refs[(layer, fam)] = ref
        self.families = tuple(f for f in self.families_order()
                              if all((l, f) in self._refs for l in range(self.layout.num_layers)))

    def families_order(self) -> tuple[str, ...]:
        extra = tuple(f for f in _ARCH_EXTRA.get(self.arch, {}) if f not in CANONICAL_FAMILIES)
        return CANONICAL_FAMILIES + extra

    def _find_prefix(self, names: set[str]) -> str:
        for prefix in _PREFIXES:
            if any(n.startswith(f"{prefix}layers.0.") for n in names):
                return prefix
        raise StrataError(f"no decoder layers found in the checkpoint (expected tensors named "
                          f"'model.layers.0....' for a {self.arch} model)")

    def layer_prefix(self, layer: int) -> str:
        return f"{self.prefix}layers.{layer}."

    def _resolve(self, layer: int, fam: str, names: set[str]) -> TensorRef | None:
        base = self.layer_prefix(layer)
        plus_one = self.arch in _GEMMA and fam in NORMS
        suffix = self.suffixes.get(fam)
        if suffix is not None and base + suffix in names:
            return TensorRef(base + suffix, plus_one=plus_one)
        lay = self.layout
        if fam in ("q_proj", "k_proj", "v_proj") and base + _FUSED_QKV in names:
            q, kv = lay.num_heads * lay.head_dim, lay.num_kv_heads * lay.head_dim
            start = {"q_proj": 0, "k_proj": q, "v_proj": q + kv}[fam]
            size = q if fam == "q_proj" else kv
            return TensorRef(base + _FUSED_QKV, rows=(start, start + size), fused_rows=q + 2 * kv)
        if fam in ("gate_proj", "up_proj") and base + _FUSED_GATE_UP in names:
            i = lay.intermediate
            start = 0 if fam == "gate_proj" else i
            return TensorRef(base + _FUSED_GATE_UP, rows=(start, start + i), fused_rows=2 * i)
        return None

    def ref(self, layer: int, family: str) -> TensorRef | None:
        if not 0 <= layer < self.layout.num_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.layout.num_layers - 1}")
        return self._refs.get((layer, family))

    def read(self, layer: int, family: str, get: Callable[[str], torch.Tensor]):
        ref = self.ref(layer, family)
        return None if ref is None else ref.apply(get(ref.name))
