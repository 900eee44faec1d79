"""The model's own decoder, run one layer at a time over many sequences (activation probes).

What is built
-------------
``transformers`` builds the architecture's base model (``LlamaModel``, ``GPT2Model``,
``Qwen3MoeModel``, …) from the model's (text) config on the ``meta`` device: no memory. From it:

* the **embedding** module (the architecture's own, e.g. gemma's scaled embedding) gets only the
  rows of the token ids in use (``Model.embedding_rows``); ids are renumbered into that table.
  So no config id may index it: its ``padding_idx`` (the config's pad id, e.g. Qwen2.5's
  151643) is cleared — it only masks a gradient —, a pad id outside the vocabulary is dropped
  before the modules are built (``random_init.buildable_pad``), and ids are bounded by the rows
  the checkpoint's embedding stores (``Model.embedding_size``), not only by ``vocab_size``;
* the **per-layer call arguments** (attention mask per layer type, rotary ``(cos, sin)``,
  position ids) and **layer 0's input** come from the base model's own ``forward``: its decoder
  layers (the architecture table's ``layers``: ``layers``, GPT-2's ``h``) are swapped for
  stand-ins that record the arguments they are called with and pass the hidden states through,
  so masks, sliding windows, rotary embeddings and the embedding stage between the embedding
  module and layer 0 (GPT-2's learned positions, Granite's embedding multiplier) are exactly what
  transformers computes (nothing is re-implemented here). The last stand-in ends the pass, so
  the final norm never runs; the base model's few tensors outside its layers other than the
  token embedding (GPT-2's position table, the final norm) are loaded (``Model.base_tensor``);
* **decoder layer L** is the meta module ``layers[L]`` loaded with that layer's stored tensors
  (``Model.layer_state``, its matrices converted to the forward dtype and its 1-D gains to
  float32, ``load_state_dict(assign=True)``), moved to the device, run over every sequence, then
  dropped before layer L+1 is loaded.

Forward dtype (:mod:`probes.forward_dtype`): float32, or bf16 matrices run under
``torch.autocast`` while the hidden states entering and leaving every layer stay float32.

Memory: one decoder layer's weights (float32: Qwen3-4B 0.40 GB, Qwen3-32B 1.95 GB; half that in
bf16) plus, for
every sequence, its hidden states before and after the current layer (2 × T × d float32 over
all T tokens) and the embedding rows of the ids in use. The final norm and LM head are never
built. Non-persistent buffers (rotary frequencies, gemma's embedding scale) are filled by the
model class's own initialisation.

On ``device="cuda"`` each layer is moved to the GPU after loading and the hidden states stay
there (untested here: no GPU was available when this was written).
"""

from __future__ import annotations

import re
import time
from typing import Iterator

import torch

from .errors import StrataError
from .forward_dtype import ForwardDtype
from .models.base import TensorPool


# buffers older transformers versions saved in decoder layers, which today's modules rebuild or
# no longer have: rotary frequencies (GPT-NeoX/Pythia, early llama) and GPT-2/GPT-NeoX's
# ``masked_bias`` constant; dropped from a layer's stored tensors like the class's own
# ``_keys_to_ignore_on_load_unexpected`` (transformers warns and ignores them too)
_LEGACY_BUFFERS = (r"rotary_emb\.inv_freq$", r"(^|\.)masked_bias$")


class _LastLayerDone(Exception):
    """Raised by the last stand-in: the rest of the base model's forward is not needed."""


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer ``index``: records its arguments (and, for layer 0, its input
    hidden states), passes the hidden states through; the last one ends the pass."""

    def __init__(self, index: int, calls: dict, last: bool):
        super().__init__()
        self.index, self.calls, self.last = index, calls, last

    def forward(self, hidden_states, *args, **kwargs):
        self.calls[self.index] = (args, kwargs)
        if self.index == 0:
            self.calls["input"] = hidden_states
        if self.last:
            raise _LastLayerDone
        return hidden_states


def _base_model(config: dict):
    """The architecture's base model (no LM head) on the meta device, and its decoder-layer
    list's attribute name (from the architecture table)."""
    from transformers import AutoModel

    from .models.adapters import SUPPORTED_ARCHITECTURES, architecture, text_config
    from .models.random_init import hf_config
    text = text_config(config)
    cfg = hf_config(text)
    attr = architecture(text["model_type"]).layers
    with torch.device("meta"):
        body = AutoModel.from_config(cfg)
    layers = getattr(body, attr, None)
    n = cfg.num_hidden_layers
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != n:
        raise StrataError(f"{type(body).__name__} has no list of {n} decoder layers; supported: "
                          f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    return body.eval(), attr


def _fill_buffers(body, module: torch.nn.Module, device) -> None:
    """Give ``module``'s meta buffers real values from the model class's own initialisation
    (``_init_weights``), leaving its (already loaded) parameters untouched."""
    for sub in module.modules():
        meta = [k for k, b in sub._buffers.items() if b is not None and b.is_meta]
        if not meta:
            continue
        for k in meta:
            sub._buffers[k] = torch.empty_like(sub._buffers[k], device=device)
        # _init_weights also draws parameters (in place): hand it throwaway ones
        real = {k: p for k, p in sub._parameters.items() if p is not None}
        padding = getattr(sub, "padding_idx", None)
        for k, p in real.items():
            sub._parameters[k] = torch.nn.Parameter(torch.empty_like(p), requires_grad=False)
        if padding is not None:
            sub.padding_idx = None
        try:
            body._init_weights(sub)
        finally:
            sub._parameters.update(real)
            if padding is not None:
                sub.padding_idx = padding


class LayerStream:
    """Run sequences of token ids through ``model``'s decoder layers, layer-outer.

    ``model`` is a :class:`probes.models.base.Model` with ``embedding_rows`` and
    ``layer_state``. Hidden states are float32 on ``device``; the layers compute in
    ``forward``'s dtype (default float32). ``timing`` sums the seconds spent loading layers
    (read + dtype conversion + move to the device) and running them (the forward itself)."""

    def __init__(self, model, device: str = "cpu", forward: ForwardDtype | None = None):
        self.model = model
        self.device = torch.device(device)
        self.forward = forward or ForwardDtype("float32", "float32", "default")
        self.body, self.layers_attr = _base_model(model.config)
        self.num_layers = model.layout.num_layers
        self.meta_layers = list(getattr(self.body, self.layers_attr))
        self.layer_bytes = 0
        self.embedded_rows = 0
        self.timing = {"load_s": 0.0, "forward_s": 0.0}
        self._spare = TensorPool()   # the released layer's weights, for the next layer's reads

    def window_limit(self, default: int) -> int:
        """``default`` capped at the config's ``max_position_embeddings``."""
        max_pos = getattr(self.body.config, "max_position_embeddings", None)
        return min(default, int(max_pos)) if max_pos else default

    # -- inputs ----------------------------------------------------------------------------
    def embed(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        """Input hidden states (1, T, d) float32 per sequence, through the architecture's own
        embedding module holding only the rows of the ids in ``seqs``."""
        used = sorted({i for s in seqs for i in s})
        # the bound is the embedding as stored, which may hold fewer rows than the config's
        # vocab_size says (and a tokenizer may know more ids than either)
        vocab = int(self.body.config.vocab_size)
        stored = self.model.embedding_size()
        rows_held = vocab if stored is None else min(vocab, stored)
        if used and not 0 <= used[0] <= used[-1] < rows_held:
            what = (f"vocabulary of {vocab}" if rows_held == vocab else
                    f"vocabulary: its input embedding stores {rows_held} rows (config "
                    f"vocab_size {vocab})")
            raise StrataError(f"token id {used[-1] if used[-1] >= rows_held else used[0]} outside "
                              f"the model's {what}: the tokenizer does not belong to this "
                              f"checkpoint")
        emb = self.body.get_input_embeddings()
        rows = self.model.embedding_rows(used).to(torch.float32)
        self.embedded_rows = len(used)
        emb.weight = torch.nn.Parameter(rows.to(self.device), requires_grad=False)
        emb.num_embeddings = len(used)
        # padding_idx only masks gradients; the config's pad id (Qwen2's 151643) indexes the
        # full vocabulary and would fail torch's bound check against the rows kept here
        emb.padding_idx = None
        _fill_buffers(self.body, emb, self.device)
        index = torch.full((vocab,), -1, dtype=torch.long)
        index[torch.tensor(used, dtype=torch.long)] = torch.arange(len(used))
        with torch.no_grad():
            out = [emb(index[torch.tensor([s])].to(self.device)) for s in seqs]
        self.body.set_input_embeddings(torch.nn.Identity())  # rows no longer needed
        return out

    def _load_base_tensors(self) -> None:
        """Give the base model's parameters outside its decoder layers (all but the token
        embedding, already replaced) their stored values: GPT-2's position table, final norms."""
        layers = getattr(self.body, self.layers_attr)
        for mod_name, module in self.body.named_modules():
            if module is layers or any(module is m for m in layers.modules()):
                continue
            for pname, param in list(module.named_parameters(recurse=False)):
                if param.is_meta:
                    full = f"{mod_name}.{pname}" if mod_name else pname
                    value = self.model.base_tensor(full).to(torch.float32)
                    setattr(module, pname, torch.nn.Parameter(value.to(self.device),
                                                              requires_grad=False))

    def layer_kwargs(self, hidden: list[torch.Tensor]) -> tuple[list[dict[int, tuple]],
                                                                 list[torch.Tensor]]:
        """For each sequence, the arguments the base model passes to each decoder layer (masks,
        rotary embeddings, position ids), recorded from its own forward, and the hidden states
        it hands to layer 0 (after its embedding stage)."""
        body = self.body
        calls: dict = {}
        setattr(body, self.layers_attr, torch.nn.ModuleList(
            _Recorder(i, calls, i == self.num_layers - 1) for i in range(self.num_layers)))
        self._load_base_tensors()
        for module in body.modules():   # rotary frequencies and other non-persistent buffers
            if any(b is not None and b.is_meta for b in module._buffers.values()):
                _fill_buffers(body, module, self.device)
        out, inputs = [], []
        with torch.no_grad():
            for h in hidden:
                calls.clear()
                try:
                    body(inputs_embeds=h, use_cache=False)
                except _LastLayerDone:
                    pass
                if len(calls) != self.num_layers + 1:
                    raise StrataError(f"{type(body).__name__}.forward called "
                                      f"{len(calls) - ('input' in calls)} of "
                                      f"{self.num_layers} decoder layers")
                inputs.append(calls.pop("input"))
                out.append(dict(calls))
        return out, inputs

    # -- layers ----------------------------------------------------------------------------
    def load_layer(self, layer: int) -> torch.nn.Module:
        """Decoder layer ``layer`` with its stored weights on the device: matrices in the
        forward dtype, 1-D tensors (norm gains, biases) in float32 (elementwise work outside
        autocast keeps float32)."""
        module = self.meta_layers[layer]
        if module is None:
            raise StrataError(f"decoder layer {layer} was already run and released")
        expected = set(module.state_dict())
        ignore = [re.compile(p) for p in
                  (*(getattr(self.body, "_keys_to_ignore_on_load_unexpected", None) or ()),
                   *_LEGACY_BUFFERS)]
        # stored tensors the module does not hold and transformers does not load: old GPT-2 and
        # GPT-NeoX checkpoints' causal-mask buffers (the class's own ignore list) and constants
        # matrices in the forward dtype; 1-D gains and biases stay float32 (not rounded to bf16)
        matrix_dtype = self.forward.dtype
        stored = self.model.layer_state(layer, reuse=self._spare)
        state, converted = {}, []
        for k, v in stored.items():
            if k not in expected and any(p.search(k) for p in ignore):
                continue
            dtype = matrix_dtype if v.dim() >= 2 else torch.float32
            if v.dtype == dtype:
                state[k] = v
                continue
            # converted into the previous layer's weights' memory where it fits (a random
            # twin's float32 draws, a float32 checkpoint run in bf16)
            buf = self._spare.take(v.shape, dtype)
            state[k] = buf.copy_(v) if buf is not None else v.to(dtype)
            converted.append(v)
        del stored
        self._spare.clear()     # what the previous layer left and this one did not take
        # the stored copies just converted are ours (layer_state hands out owned tensors):
        # the next layer reads into them
        self._spare.give(converted)
        del converted
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise StrataError(f"{self.model.spec}: layer {layer} tensors do not match the "
                              f"{self.model.layout.architecture} decoder layer (missing "
                              f"{missing[:3]}, unexpected {extra[:3]})")
        module.load_state_dict(state, strict=True, assign=True)
        del state
        _fill_buffers(self.body, module, "cpu")
        self.layer_bytes = max(self.layer_bytes, sum(p.numel() * p.element_size()
                                                     for p in module.parameters()))
        return module.to(self.device).eval()

    def run(self, seqs: list[list[int]]) -> Iterator[tuple[int, list[torch.Tensor],
                                                            list[torch.Tensor]]]:
        """Yield ``(L, inputs, outputs)`` for L = 0 … n−1: every sequence's hidden states
        (1, T, d) entering and leaving decoder layer L. Layer L is released after its outputs
        are computed; the outputs become layer L+1's inputs."""
        kwargs, hidden = self.layer_kwargs(self.embed(seqs))
        for layer in range(self.num_layers):
            t0 = time.perf_counter()
            module = self.load_layer(layer)
            self._sync()
            t1 = time.perf_counter()
            outputs = []
            with torch.no_grad(), self.forward.autocast(self.device):
                for h, kw in zip(hidden, kwargs):
                    args, kws = kw[layer]
                    out = module(h, *args, **kws)
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    # the residual stream stays float32 whatever the layers compute in
                    outputs.append(out.to(torch.float32))
            self._sync()
            self.timing["load_s"] += t1 - t0
            self.timing["forward_s"] += time.perf_counter() - t1
            self.meta_layers[layer] = None
            # its weights' memory takes the next layer's (no page faults on fresh memory); only
            # tensors read as stored qualify (a converted copy has another dtype than the next
            # layer's stored ones and is dropped at the next load)
            self._spare.give(module.parameters())
            del module
            yield layer, hidden, outputs
            hidden = outputs

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
