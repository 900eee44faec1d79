"""Architecture adapters: (layer, canonical family) → stored tensor and layout, from one table.

Every supported architecture is one :class:`Architecture` entry in :data:`ARCHITECTURES`: where
its decoder layers sit in a checkpoint (``<prefix><layers>.<i>.``), which stored tensor holds
each canonical family and how (:class:`Fused` rows — ``[q; k; v]`` blocks, or GPT-NeoX's per-head
``[heads, 3, head_dim]`` interleave; GPT-2's ``Conv1D`` storage ``[in, out]``; gemma's ``1 + w``
gains; mixture-of-experts tensors stored one per expert on the hub or fused ``[experts, 2·I, H]``
by transformers 5), plus what the probes and the reader need to know about the layer (norm kind,
gated MLP, parallel attention + MLP, q/k norm over a head or the whole projection, positions,
which biases are left out). Adding an architecture is adding an entry (and its known-answer test
in ``tests/test_architectures.py``); :class:`Adapter` has no per-architecture branch.

Family tensors come out in HF Linear layout ``[out, in]`` (heads as row blocks of ``head_dim``),
norms as the gain the layer multiplies by, expert families as ``[experts, out, in]``. Biases are
left out of the families (each entry says which ones the architecture stores).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

import torch

from probes.errors import StrataError
from probes.models.base import (CANONICAL_FAMILIES, EXPERT_FAMILIES, MOE_FAMILIES, NORMS,
                                PROJECTIONS, ROUTER, Layout)


@dataclass(frozen=True)
class Fused:
    """One stored tensor holding several families' rows, in storage order.

    ``per_head=False``: consecutive blocks (``[q; k; v]`` of ``num_heads·hd``, ``num_kv·hd``,
    ``num_kv·hd`` rows; ``[gate; up]`` of ``intermediate`` rows each). ``per_head=True``: rows laid
    out ``[heads, parts, head_dim]`` (GPT-NeoX's ``query_key_value``: head h's q, k, v rows are
    adjacent), so a family is one part of every head."""

    suffix: str
    families: tuple[str, ...]
    per_head: bool = False


@dataclass(frozen=True)
class Experts:
    """Where a mixture of experts keeps its expert MLPs.

    ``per_expert``: expert family → stored suffix with ``{e}`` (hub checkpoints: Mixtral's
    ``w1/w3/w2`` = gate/up/down, Qwen3-MoE's and OLMoE's ``gate_proj/up_proj/down_proj``).
    ``fused_gate_up`` ``[experts, 2·I, hidden]`` (gate rows first, as the module's
    ``chunk(2)`` reads them) and ``fused_down`` ``[experts, hidden, I]``: transformers 5's own
    layout (``save_pretrained(..., save_original_format=False)``, and the random twin's).
    ``renames``: stored-name prefixes the decoder-layer module calls otherwise (Mixtral's hub
    ``block_sparse_moe.`` is the module's ``mlp.``)."""

    per_expert: Mapping[str, str]
    fused_gate_up: str = "mlp.experts.gate_up_proj"
    fused_down: str = "mlp.experts.down_proj"
    renames: tuple[tuple[str, str], ...] = ()


_ATTN = {"q_proj": ("self_attn.q_proj.weight",), "k_proj": ("self_attn.k_proj.weight",),
         "v_proj": ("self_attn.v_proj.weight",), "o_proj": ("self_attn.o_proj.weight",)}
_MLP = {"gate_proj": ("mlp.gate_proj.weight",), "up_proj": ("mlp.up_proj.weight",),
        "down_proj": ("mlp.down_proj.weight",)}
_PRE_NORMS = {"input_ln": ("input_layernorm.weight",),
              "post_attn_ln": ("post_attention_layernorm.weight",)}
_QK_NORMS = {"q_norm": ("self_attn.q_norm.weight",), "k_norm": ("self_attn.k_norm.weight",)}
_FF_NORMS = {"pre_ff_ln": ("pre_feedforward_layernorm.weight",),
             "post_ff_ln": ("post_feedforward_layernorm.weight",)}
_LLAMA = {**_ATTN, **_MLP, **_PRE_NORMS}
_ROUTER = {ROUTER: ("mlp.gate.weight",)}
_QWEN_EXPERTS = Experts({"expert_gate_proj": "mlp.experts.{e}.gate_proj.weight",
                         "expert_up_proj": "mlp.experts.{e}.up_proj.weight",
                         "expert_down_proj": "mlp.experts.{e}.down_proj.weight"})


@dataclass(frozen=True)
class Architecture:
    """One table entry (see the module docstring). Descriptive fields (``norm``, ``positions``,
    ``parallel``, ``biases``, ``notes``) are what ``tests/test_architectures.py`` checks against
    the transformers module and what the README's compatibility table shows."""

    model_types: tuple[str, ...]
    names: Mapping[str, tuple[str, ...]]       # family → stored suffix(es) under the layer
    fused: tuple[Fused, ...] = ()
    layers: str = "layers"                     # the decoder layers' ModuleList in the base model
    prefixes: tuple[str, ...] = ("model.",)    # the base model's prefix in a checkpoint
    embed: str = "embed_tokens.weight"         # input embedding, under the prefix
    transposed: bool = False                   # projections stored [in, out] (GPT-2's Conv1D)
    plus_one: bool = False                     # norms multiply by 1 + w (gemma)
    norm: str = "RMSNorm"                      # RMSNorm | LayerNorm | LayerNorm without gain
    gated: bool = True                         # MLP down(act(gate x) ⊙ up x), else down(act(up x))
    parallel: bool | str = False               # attention and MLP read one input (or config key)
    qk_norm: str | None = None                 # "per head" | "whole projection"
    experts: Experts | None = None
    positions: str = "rotary"
    biases: str = "none"                       # stored biases, left out of the families
    config_keys: Mapping[str, str] = field(default_factory=dict)  # Layout field → config key(s)
    notes: str = ""

    @property
    def name(self) -> str:
        return self.model_types[0]


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(("llama",), _LLAMA, fused=(
        Fused("self_attn.qkv_proj.weight", ("q_proj", "k_proj", "v_proj")),
        Fused("mlp.gate_up_proj.weight", ("gate_proj", "up_proj")))),
    Architecture(("mistral",), _LLAMA, fused=(
        Fused("self_attn.qkv_proj.weight", ("q_proj", "k_proj", "v_proj")),
        Fused("mlp.gate_up_proj.weight", ("gate_proj", "up_proj"))),
        notes="sliding-window attention (the module's own masks)"),
    Architecture(("qwen2",), _LLAMA, fused=(
        Fused("self_attn.qkv_proj.weight", ("q_proj", "k_proj", "v_proj")),
        Fused("mlp.gate_up_proj.weight", ("gate_proj", "up_proj"))),
        biases="q, k, v"),
    Architecture(("qwen3",), {**_LLAMA, **_QK_NORMS}, fused=(
        Fused("self_attn.qkv_proj.weight", ("q_proj", "k_proj", "v_proj")),
        Fused("mlp.gate_up_proj.weight", ("gate_proj", "up_proj"))),
        qk_norm="per head"),
    Architecture(("gemma3_text", "gemma3"), {**_LLAMA, **_QK_NORMS, **_FF_NORMS},
                 prefixes=("model.", "model.language_model.", "language_model.model."),
                 plus_one=True, qk_norm="per head",
                 notes="scaled embedding; sliding/global layers; multimodal checkpoints: the text "
                       "model"),
    Architecture(("gemma",), _LLAMA, plus_one=True,
                 notes="scaled embedding; head_dim from the config (≠ hidden / heads)"),
    Architecture(("gemma2",), {**_LLAMA, **_FF_NORMS}, plus_one=True,
                 notes="scaled embedding; pre/post-feedforward and post-attention norms; logit "
                       "soft-capping; sliding/global layers"),
    Architecture(("gpt2",), {"o_proj": ("attn.c_proj.weight",), "up_proj": ("mlp.c_fc.weight",),
                             "down_proj": ("mlp.c_proj.weight",),
                             "input_ln": ("ln_1.weight",), "post_attn_ln": ("ln_2.weight",)},
                 fused=(Fused("attn.c_attn.weight", ("q_proj", "k_proj", "v_proj")),),
                 layers="h", prefixes=("transformer.", ""), embed="wte.weight",
                 transposed=True, norm="LayerNorm", gated=False, positions="learned (wpe)",
                 biases="q, k, v, o, up, down, norms",
                 config_keys={"hidden": "n_embd", "num_heads": "n_head",
                              "num_layers": "n_layer", "intermediate": "n_inner"}),
    Architecture(("gpt_neox",), {"o_proj": ("attention.dense.weight",),
                                 "up_proj": ("mlp.dense_h_to_4h.weight",),
                                 "down_proj": ("mlp.dense_4h_to_h.weight",), **_PRE_NORMS},
                 fused=(Fused("attention.query_key_value.weight", ("q_proj", "k_proj", "v_proj"),
                              per_head=True),),
                 prefixes=("gpt_neox.",), embed="embed_in.weight", norm="LayerNorm",
                 gated=False, parallel="use_parallel_residual",
                 positions="partial rotary (rotary_pct)",
                 biases="q, k, v, o, up, down, norms"),
    Architecture(("olmo",), {**_ATTN, **_MLP}, norm="LayerNorm without gain",
                 notes="optional clip_qkv (the module's own clamp)"),
    Architecture(("olmo2", "olmo3"), {**_ATTN, **_MLP, **_QK_NORMS,
                                      "post_attn_ln": ("post_attention_layernorm.weight",),
                                      "post_ff_ln": ("post_feedforward_layernorm.weight",)},
                 qk_norm="whole projection",
                 notes="norms on the attention and MLP outputs, none on their inputs"),
    Architecture(("phi",), {**{f: s for f, s in _ATTN.items() if f != "o_proj"},
                            "o_proj": ("self_attn.dense.weight",), "up_proj": ("mlp.fc1.weight",),
                            "down_proj": ("mlp.fc2.weight",),
                            "input_ln": ("input_layernorm.weight",)},
                 norm="LayerNorm", gated=False, parallel=True,
                 positions="partial rotary (partial_rotary_factor)",
                 biases="q, k, v, o, up, down, norms",
                 notes="optional q/k LayerNorms (qk_layernorm, off in Phi-2) are not folded"),
    Architecture(("phi3",), {"o_proj": ("self_attn.o_proj.weight",),
                             "down_proj": ("mlp.down_proj.weight",), **_PRE_NORMS},
                 fused=(Fused("self_attn.qkv_proj.weight", ("q_proj", "k_proj", "v_proj")),
                        Fused("mlp.gate_up_proj.weight", ("gate_proj", "up_proj")))),
    Architecture(("starcoder2",), {**_ATTN, "up_proj": ("mlp.c_fc.weight",),
                                   "down_proj": ("mlp.c_proj.weight",), **_PRE_NORMS},
                 norm="LayerNorm", gated=False, biases="q, k, v, o, up, down, norms (use_bias)",
                 notes="sliding-window attention"),
    Architecture(("granite",), _LLAMA,
                 notes="embedding, residual and attention multipliers (the module's own)"),
    Architecture(("mixtral",), {**_ATTN, **_PRE_NORMS,
                                ROUTER: ("block_sparse_moe.gate.weight", "mlp.gate.weight")},
                 experts=Experts({"expert_gate_proj": "block_sparse_moe.experts.{e}.w1.weight",
                                  "expert_up_proj": "block_sparse_moe.experts.{e}.w3.weight",
                                  "expert_down_proj": "block_sparse_moe.experts.{e}.w2.weight"},
                                 renames=(("block_sparse_moe.", "mlp."),))),
    Architecture(("qwen3_moe",), {**_ATTN, **_PRE_NORMS, **_QK_NORMS, **_MLP, **_ROUTER},
                 experts=_QWEN_EXPERTS, qk_norm="per head",
                 config_keys={"expert_intermediate": "moe_intermediate_size"},
                 notes="layers listed in mlp_only_layers (or off decoder_sparse_step) are dense: "
                       "families present in only some layers are left out"),
    Architecture(("olmoe",), {**_ATTN, **_PRE_NORMS, **_QK_NORMS, **_ROUTER},
                 experts=_QWEN_EXPERTS, qk_norm="whole projection"),
    # decoder-only model_types a table entry away (each with its known-answer tests)
    Architecture(("helium",), _LLAMA),
    Architecture(("smollm3",), _LLAMA, notes="NoPE layers (no rotary every few layers)"),
    Architecture(("ministral",), _LLAMA, notes="sliding-window attention"),
    Architecture(("ernie4_5",), _LLAMA),
    Architecture(("seed_oss",), _LLAMA, biases="q, k, v (attention_bias)"),
    Architecture(("arcee",), {**_ATTN, "up_proj": ("mlp.up_proj.weight",),
                              "down_proj": ("mlp.down_proj.weight",), **_PRE_NORMS},
                 gated=False, notes="ReLU² MLP"),
    Architecture(("glm",), {**_ATTN, "down_proj": ("mlp.down_proj.weight",), **_PRE_NORMS},
                 fused=(Fused("mlp.gate_up_proj.weight", ("gate_proj", "up_proj")),),
                 positions="partial rotary (partial_rotary_factor)", biases="q, k, v"),
    Architecture(("exaone4",), {**_ATTN, **_MLP, **_QK_NORMS,
                                "post_attn_ln": ("post_attention_layernorm.weight",),
                                "post_ff_ln": ("post_feedforward_layernorm.weight",)},
                 qk_norm="per head",
                 notes="norms on the attention and MLP outputs, none on their inputs; "
                       "sliding/global layers"),
    Architecture(("cohere",), {**_ATTN, **_MLP, "input_ln": ("input_layernorm.weight",)},
                 norm="LayerNorm", parallel=True,
                 notes="optional q/k LayerNorms (use_qk_norm) are not folded; logit scale"),
    Architecture(("stablelm",), {**_ATTN, **_MLP, **_PRE_NORMS}, norm="LayerNorm",
                 parallel="use_parallel_residual",
                 positions="partial rotary (partial_rotary_factor)",
                 biases="norms; q, k, v with use_qkv_bias",
                 notes="optional q/k LayerNorms (qk_layernorm) are not folded"),
    Architecture(("nemotron",), {**_ATTN, "up_proj": ("mlp.up_proj.weight",),
                                 "down_proj": ("mlp.down_proj.weight",), **_PRE_NORMS},
                 plus_one=True, norm="LayerNorm", gated=False,
                 positions="partial rotary (partial_rotary_factor)", biases="norms",
                 notes="ReLU² MLP"),
)

_BY_TYPE = {t: a for a in ARCHITECTURES for t in a.model_types}
SUPPORTED_ARCHITECTURES = tuple(t for a in ARCHITECTURES for t in a.model_types)
_LAYOUT_KEYS = {"hidden": "hidden_size", "num_heads": "num_attention_heads",
                "num_layers": "num_hidden_layers", "intermediate": "intermediate_size",
                "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
                "num_experts": ("num_experts", "num_local_experts"),
                "expert_intermediate": "intermediate_size"}


def architecture(model_type: str) -> Architecture:
    """The table entry for ``model_type``; StrataError naming the supported ones otherwise."""
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        raise StrataError(f"unsupported architecture {model_type!r} (model_type in "
                          f"config.json); supported: {', '.join(SUPPORTED_ARCHITECTURES)}") from None


def text_config(config: dict) -> dict:
    """The decoder's config: ``config`` itself, or a gemma3 multimodal config's ``text_config``
    (as a ``gemma3_text`` config). Raises StrataError for unsupported architectures."""
    model_type = config.get("model_type")
    if model_type == "gemma3" and isinstance(config.get("text_config"), dict):
        text = dict(config["text_config"])
        text["model_type"] = "gemma3_text"
        text.setdefault("architectures", ["Gemma3ForCausalLM"])
        return text
    if model_type == "gemma3":
        raise StrataError("a gemma3 config.json without its text_config; give the model's own "
                          "config.json")
    architecture(model_type)
    return config


def _key(cfg: dict, arch: Architecture, fld: str):
    """The config value of Layout field ``fld`` (the first of its keys present; hub configs and
    transformers' own ``to_dict`` may name it differently: Qwen3-MoE's ``num_experts`` is saved
    as ``num_local_experts``)."""
    keys = arch.config_keys.get(fld, _LAYOUT_KEYS[fld])
    for key in (keys,) if isinstance(keys, str) else keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def layout_of(config: dict) -> Layout:
    """Shapes from a (text) config, through the entry's config keys; head_dim from the config or
    hidden // num_heads; GPT-2's intermediate 4·hidden when ``n_inner`` is null."""
    cfg = text_config(config)
    arch = architecture(cfg["model_type"])

    def need(fld: str) -> int:
        value = _key(cfg, arch, fld)
        keys = arch.config_keys.get(fld, _LAYOUT_KEYS[fld])
        try:
            return int(value)
        except (TypeError, ValueError):
            names = " or ".join([keys] if isinstance(keys, str) else keys)
            raise StrataError(f"config.json lacks a usable {names} ({value!r}) for a "
                              f"{cfg['model_type']} model") from None

    hidden, heads = need("hidden"), need("num_heads")
    kv = need("num_kv_heads") if _key(cfg, arch, "num_kv_heads") is not None else heads
    head_dim = need("head_dim") if _key(cfg, arch, "head_dim") is not None else hidden // heads
    inter = need("intermediate") if _key(cfg, arch, "intermediate") is not None else 4 * hidden
    experts = need("num_experts") if arch.experts and _key(cfg, arch, "num_experts") else 0
    return Layout(architecture=cfg["model_type"], num_layers=need("num_layers"), hidden=hidden,
                  num_heads=heads, num_kv_heads=kv, head_dim=head_dim, intermediate=inter,
                  num_experts=experts,
                  expert_intermediate=need("expert_intermediate") if experts else 0)


def parallel_attention(arch: Architecture, config: dict) -> bool:
    """Whether the layer's attention and MLP read one input (the entry's flag or config key)."""
    if isinstance(arch.parallel, str):
        return bool(text_config(config).get(arch.parallel, True))
    return bool(arch.parallel)


# ---------------------------------------------------------------------------------------------
# Where one family's tensor lives
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorRef:
    """A family's tensor inside a stored tensor: the whole of it, a block of rows (``rows``, on
    ``axis`` 0, or on axis 1 of a fused ``[experts, 2·I, H]`` tensor), one part of every head
    (``per_head = (parts, part, head_rows)``: stored rows ``[heads, parts, head_rows]``), the
    transpose of a ``[in, out]`` Conv1D tensor (``transposed``), and gemma's ``1 + w``.
    ``fused_size`` is the stored size the config implies along the split axis (checked)."""

    name: str
    rows: tuple[int, int] | None = None
    plus_one: bool = False
    fused_size: int | None = None
    axis: int = 0
    transposed: bool = False
    per_head: tuple[int, int, int] | None = None

    @property
    def simple_rows(self) -> bool:
        """Family rows are a contiguous row range of the stored tensor (cheap row reads)."""
        return not self.transposed and self.per_head is None and self.axis == 0

    def _stored_dim(self) -> int:
        return 1 if self.transposed else self.axis

    def family_shape(self, stored: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the family's tensor given the stored tensor's shape."""
        shape = list(stored[::-1] if self.transposed else stored)
        if self.per_head is not None:
            shape[0] //= self.per_head[0]
        if self.rows is not None:
            shape[self.axis] = self.rows[1] - self.rows[0]
        return tuple(shape)

    def _check(self, stored_shape) -> None:
        if self.fused_size is not None and stored_shape[self._stored_dim()] != self.fused_size:
            raise StrataError(f"fused tensor {self.name} has {stored_shape[self._stored_dim()]} "
                              f"rows; the config implies {self.fused_size}")

    def finish(self, tensor: torch.Tensor) -> torch.Tensor:
        """float32, a fresh copy, gemma's ``1 + w`` applied."""
        # always a fresh copy: sources may hand out views of a shared memory map, and a
        # caller that modifies its weight in place must not change the next read
        tensor = tensor.to(torch.float32, copy=True).contiguous()
        if self.plus_one:
            tensor += 1.0
        return tensor

    def _select(self, stored: torch.Tensor) -> torch.Tensor:
        """The family's tensor from the whole stored tensor (no copy, no dtype change)."""
        t = stored.T if self.transposed else stored
        if self.per_head is not None:
            parts, part, hr = self.per_head
            return t.reshape(-1, parts, hr, t.shape[-1])[:, part].reshape(-1, t.shape[-1])
        if self.rows is not None:
            t = t.narrow(self.axis, self.rows[0], self.rows[1] - self.rows[0])
        return t

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """The family's tensor (float32, fresh) from the whole stored tensor."""
        self._check(tuple(tensor.shape))
        return self.finish(self._select(tensor))

    def read_rows(self, source, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of the family's tensor, as stored (dtype), reading only
        the stored block that holds them (``source.get_block``)."""
        shape = source.shape(self.name)
        self._check(shape)
        rows = self.family_shape(shape)[0]
        start, stop = max(0, start), min(stop, rows)
        if stop <= start:
            dtype = _block(source, self.name, (slice(0, 0),)).dtype
            return torch.empty((0, *self.family_shape(shape)[1:]), dtype=dtype)
        off = self.rows[0] if self.rows is not None else 0
        if self.transposed:    # family rows are stored columns
            return _block(source, self.name, (slice(None), slice(off + start, off + stop))).T
        if self.per_head is not None:
            parts, part, hr = self.per_head
            g0, g1 = start // hr, (stop - 1) // hr + 1
            block = _block(source, self.name, (slice(g0 * parts * hr, g1 * parts * hr),))
            sel = block.reshape(g1 - g0, parts, hr, -1)[:, part].reshape(-1, block.shape[-1])
            return sel[start - g0 * hr:stop - g0 * hr]
        if self.axis == 1:     # experts start:stop, the family's block of each
            index = (slice(start, stop),) + (() if self.rows is None
                                             else (slice(self.rows[0], self.rows[1]),))
            return _block(source, self.name, index)
        return _block(source, self.name, (slice(off + start, off + stop),))

    def stored_rows(self, start: int, stop: int) -> tuple[int, int]:
        """Rows of the stored tensor holding the family's rows ``start:stop`` (``simple_rows``
        refs only)."""
        offset = 0 if self.rows is None else self.rows[0]
        return offset + start, offset + stop


def _block(source, name: str, index: tuple[slice, ...]) -> torch.Tensor:
    """``tensor[index]`` from a tensor source: ``get_rows`` for a row range (every source has
    it), ``get_block`` for more (sources that read only the block), else a whole read."""
    if len(index) == 1:
        return source.get_rows(name, index[0].start, index[0].stop)
    get_block = getattr(source, "get_block", None)
    return get_block(name, index) if get_block is not None else source.get(name)[index]


@dataclass(frozen=True)
class StackedRef:
    """An expert family stored one tensor per expert: ``[experts, out, in]`` = the parts
    stacked in expert order."""

    parts: tuple[TensorRef, ...]
    plus_one: bool = False

    @property
    def simple_rows(self) -> bool:
        return False

    @property
    def name(self) -> str:
        return self.parts[0].name

    def family_shape(self, stored: tuple[int, ...]) -> tuple[int, ...]:
        return (len(self.parts), *stored)

    def apply_all(self, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
        return torch.stack([p.apply(get(p.name)) for p in self.parts])

    def read_rows(self, source, start: int, stop: int) -> torch.Tensor:
        chosen = self.parts[max(0, start):max(0, stop)]
        if not chosen:
            return torch.empty(0, *source.shape(self.parts[0].name))
        return torch.stack([source.get(p.name) for p in chosen])

    def finish(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(torch.float32, copy=True).contiguous()


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------
class Adapter:
    """Maps (layer, family) to a :class:`TensorRef` (or :class:`StackedRef`) for one model
    given its tensor names, from the model's :class:`Architecture` entry."""

    def __init__(self, config: dict, names: Collection[str]):
        self.config = text_config(config)
        self.layout = layout_of(self.config)
        self.arch = self.layout.architecture
        self.entry = architecture(self.arch)
        names = set(names)
        self.prefix = self._find_prefix(names)
        self._refs: dict[tuple[int, str], TensorRef | StackedRef] = {}
        for layer in range(self.layout.num_layers):
            for fam in self.families_order():
                ref = self._resolve(layer, fam, names)
                if ref is not None:
                    self._refs[(layer, fam)] = ref
        self.families = tuple(f for f in self.families_order()
                              if all((l, f) in self._refs for l in range(self.layout.num_layers)))
        self.absent = self._absent_reasons()

    def families_order(self) -> tuple[str, ...]:
        return CANONICAL_FAMILIES + (MOE_FAMILIES if self.entry.experts else ())

    def _find_prefix(self, names: set[str]) -> str:
        layers = self.entry.layers
        for prefix in (*self.entry.prefixes, ""):
            if any(n.startswith(f"{prefix}{layers}.0.") for n in names):
                return prefix
        raise StrataError(f"no decoder layers found in the checkpoint (expected tensors named "
                          f"'{self.entry.prefixes[0]}{layers}.0....' for a {self.arch} model)")

    def layer_prefix(self, layer: int) -> str:
        return f"{self.prefix}{self.entry.layers}.{layer}."

    @property
    def embed_name(self) -> str:
        return f"{self.prefix}{self.entry.embed}"

    def _sizes(self, fused: Fused) -> list[int]:
        lay = self.layout
        size = {"q_proj": lay.num_heads * lay.head_dim, "k_proj": lay.num_kv_heads * lay.head_dim,
                "v_proj": lay.num_kv_heads * lay.head_dim, "gate_proj": lay.intermediate,
                "up_proj": lay.intermediate}
        return [size[f] for f in fused.families]

    def _resolve(self, layer: int, fam: str, names: set[str]):
        base = self.layer_prefix(layer)
        entry = self.entry
        plus_one = entry.plus_one and fam in NORMS
        transposed = entry.transposed and fam in PROJECTIONS
        for suffix in entry.names.get(fam, ()):
            if base + suffix in names:
                return TensorRef(base + suffix, plus_one=plus_one, transposed=transposed)
        for fused in entry.fused:
            if fam in fused.families and base + fused.suffix in names:
                i = fused.families.index(fam)
                sizes = self._sizes(fused)
                if fused.per_head:
                    lay = self.layout
                    if len(set(sizes)) != 1:
                        raise StrataError(f"{self.arch}: per-head fused {fused.suffix} needs "
                                          f"equal part sizes (no grouped-query heads)")
                    return TensorRef(base + fused.suffix, per_head=(len(sizes), i, lay.head_dim),
                                     fused_size=sum(sizes), transposed=transposed)
                start = sum(sizes[:i])
                return TensorRef(base + fused.suffix, rows=(start, start + sizes[i]),
                                 fused_size=sum(sizes), transposed=transposed)
        if fam in EXPERT_FAMILIES and entry.experts is not None:
            return self._resolve_expert(base, fam, names)
        return None

    def _resolve_expert(self, base: str, fam: str, names: set[str]):
        ex, lay = self.entry.experts, self.layout
        per = [base + ex.per_expert[fam].format(e=e) for e in range(lay.num_experts)]
        if per and all(n in names for n in per):
            return StackedRef(tuple(TensorRef(n) for n in per))
        i = lay.expert_intermediate
        if fam == "expert_down_proj" and base + ex.fused_down in names:
            return TensorRef(base + ex.fused_down)
        if fam != "expert_down_proj" and base + ex.fused_gate_up in names:
            start = 0 if fam == "expert_gate_proj" else i
            return TensorRef(base + ex.fused_gate_up, rows=(start, start + i), axis=1,
                             fused_size=2 * i)
        return None

    def _absent_reasons(self) -> dict[str, str]:
        """Why a family a reader would look for is missing (the N/A reason of its records)."""
        entry, out = self.entry, {}
        if entry.experts is not None:
            for f in ("gate_proj", "up_proj", "down_proj"):
                if f not in self.families:
                    out[f] = ("a mixture of experts: the MLP is the experts (the expert_* "
                              "families, unordered across layers) and a router")
        elif not entry.gated:
            out["gate_proj"] = "the MLP is not gated: down(act(up x)), no gate_proj"
        if entry.norm == "LayerNorm without gain":
            for f in ("input_ln", "post_attn_ln"):
                out[f] = "the LayerNorms have no learned gain"
        elif "input_ln" not in self.families and "post_attn_ln" in self.families:
            out["input_ln"] = ("the norms are on the attention and MLP outputs (post_attn_ln, "
                               "post_ff_ln), not on their inputs")
        if parallel_attention(entry, self.config) and "post_attn_ln" not in self.families:
            out.setdefault("post_attn_ln", "attention and MLP read one input norm (input_ln)")
        return {f: r for f, r in out.items() if f not in self.families}

    def ref(self, layer: int, family: str):
        if not 0 <= layer < self.layout.num_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.layout.num_layers - 1}")
        return self._refs.get((layer, family))

    def read(self, layer: int, family: str, get: Callable[[str], torch.Tensor]):
        ref = self.ref(layer, family)
        if ref is None:
            return None
        return ref.apply_all(get) if isinstance(ref, StackedRef) else ref.apply(get(ref.name))

    # -- the decoder-layer module's state ---------------------------------------------------
    def module_state(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A decoder layer's stored tensors (names relative to the layer) renamed and stacked as
        the architecture's transformers module holds them: experts stored one per expert become
        the fused ``gate_up_proj [experts, 2·I, H]`` (gate rows first) and ``down_proj
        [experts, H, I]``; the entry's renames applied. Other tensors pass through."""
        ex = self.entry.experts
        if ex is None:
            return dict(tensors)
        out, experts = {}, {}
        patterns = {f: s.split("{e}") for f, s in ex.per_expert.items()}
        for name, t in tensors.items():
            for fam, (head, tail) in patterns.items():
                if name.startswith(head) and name.endswith(tail):
                    e = name[len(head):len(name) - len(tail)]
                    if e.isdigit():
                        experts.setdefault(fam, {})[int(e)] = t
                        break
            else:
                for old, new in ex.renames:
                    if name.startswith(old):
                        name = new + name[len(old):]
                out[name] = t
        if experts:
            n = self.layout.num_experts
            if any(sorted(experts.get(f, {})) != list(range(n)) for f in EXPERT_FAMILIES):
                raise StrataError(f"{self.arch}: a decoder layer does not store all {n} experts' "
                                  f"gate, up and down weights")
            gate, up, down = ([experts[f][e] for e in range(n)] for f in EXPERT_FAMILIES)
            out[ex.fused_gate_up] = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
            out[ex.fused_down] = torch.stack(down)
        return out
