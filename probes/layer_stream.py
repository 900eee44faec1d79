"""The model's own decoder, run one layer at a time over many sequences (activation probes).

What is built
-------------
``transformers`` builds the architecture's base model (``LlamaModel``, ``Qwen3Model``,
``Gemma3TextModel``, …) from the model's (text) config on the ``meta`` device: no memory. From it:

* the **embedding** module (the architecture's own, e.g. gemma's scaled embedding) gets only the
  rows of the token ids in use (``Model.embedding_rows``); ids are renumbered into that table;
* the **per-layer call arguments** (attention mask per layer type, rotary ``(cos, sin)``,
  position ids) come from the base model's own ``forward``: its decoder layers are swapped for
  stand-ins that record the keyword arguments they are called with and pass the hidden states
  through, so masks, sliding windows and rotary embeddings are exactly what transformers
  computes (nothing is re-implemented here);
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

import time
from typing import Iterator

import torch

from .errors import StrataError
from .forward_dtype import ForwardDtype


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer ``index``: records its keyword arguments, passes through."""

    def __init__(self, index: int, calls: dict):
        super().__init__()
        self.index, self.calls = index, calls

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise StrataError("decoder layers called with positional arguments beyond the "
                              "hidden states; this transformers version is not supported")
        self.calls[self.index] = kwargs
        return hidden_states


def _base_model(config: dict):
    """The architecture's base model (no LM head) on the meta device."""
    from transformers import AutoModel

    from .models.adapters import text_config
    from .models.random_init import hf_config
    cfg = hf_config(text_config(config))
    with torch.device("meta"):
        body = AutoModel.from_config(cfg)
    layers = getattr(body, "layers", None)
    n = cfg.num_hidden_layers
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != n:
        raise StrataError(f"{type(body).__name__} has no list of {n} decoder layers; supported: "
                          f"llama, mistral, qwen2, qwen3, gemma3")
    return body.eval()


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
        self.body = _base_model(model.config)
        self.num_layers = model.layout.num_layers
        self.meta_layers = list(self.body.layers)
        self.layer_bytes = 0
        self.embedded_rows = 0
        self.timing = {"load_s": 0.0, "forward_s": 0.0}

    def window_limit(self, default: int) -> int:
        """``default`` capped at the config's ``max_position_embeddings``."""
        max_pos = getattr(self.body.config, "max_position_embeddings", None)
        return min(default, int(max_pos)) if max_pos else default

    # -- inputs ----------------------------------------------------------------------------
    def embed(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        """Input hidden states (1, T, d) float32 per sequence, through the architecture's own
        embedding module holding only the rows of the ids in ``seqs``."""
        used = sorted({i for s in seqs for i in s})
        vocab = int(self.body.config.vocab_size)
        if used and not 0 <= used[0] <= used[-1] < vocab:
            raise StrataError(f"token id {used[-1] if used[-1] >= vocab else used[0]} outside the "
                              f"model's vocabulary of {vocab}: the tokenizer does not belong "
                              f"to this checkpoint")
        emb = self.body.get_input_embeddings()
        rows = self.model.embedding_rows(used).to(torch.float32)
        self.embedded_rows = len(used)
        emb.weight = torch.nn.Parameter(rows.to(self.device), requires_grad=False)
        emb.num_embeddings = len(used)
        _fill_buffers(self.body, emb, self.device)
        index = torch.full((vocab,), -1, dtype=torch.long)
        index[torch.tensor(used, dtype=torch.long)] = torch.arange(len(used))
        with torch.no_grad():
            out = [emb(index[torch.tensor([s])].to(self.device)) for s in seqs]
        self.body.set_input_embeddings(torch.nn.Identity())  # rows no longer needed
        return out

    def layer_kwargs(self, hidden: list[torch.Tensor]) -> list[dict[int, dict]]:
        """For each sequence, the keyword arguments the base model passes to each decoder layer
        (masks, rotary embeddings, position ids), recorded from its own forward."""
        body = self.body
        calls: dict[int, dict] = {}
        body.layers = torch.nn.ModuleList(_Recorder(i, calls) for i in range(self.num_layers))
        body.norm = torch.nn.Identity()
        rotary = getattr(body, "rotary_emb", None)
        if rotary is not None:
            _fill_buffers(body, rotary, self.device)
        out = []
        with torch.no_grad():
            for h in hidden:
                calls.clear()
                body(inputs_embeds=h, use_cache=False)
                if len(calls) != self.num_layers:
                    raise StrataError(f"{type(body).__name__}.forward called {len(calls)} of "
                                      f"{self.num_layers} decoder layers")
                out.append(dict(calls))
        return out

    # -- layers ----------------------------------------------------------------------------
    def load_layer(self, layer: int) -> torch.nn.Module:
        """Decoder layer ``layer`` with its stored weights on the device: matrices in the
        forward dtype, 1-D tensors (norm gains, biases) in float32 (elementwise work outside
        autocast keeps float32)."""
        module = self.meta_layers[layer]
        if module is None:
            raise StrataError(f"decoder layer {layer} was already run and released")
        matrix_dtype = self.forward.dtype
        state = {k: v.to(matrix_dtype if v.dim() >= 2 else torch.float32)
                 for k, v in self.model.layer_state(layer).items()}
        expected = set(module.state_dict())
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
        hidden = self.embed(seqs)
        kwargs = self.layer_kwargs(hidden)
        for layer in range(self.num_layers):
            t0 = time.perf_counter()
            module = self.load_layer(layer)
            self._sync()
            t1 = time.perf_counter()
            outputs = []
            with torch.no_grad(), self.forward.autocast(self.device):
                for h, kw in zip(hidden, kwargs):
                    out = module(h, **kw[layer])
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    # the residual stream stays float32 whatever the layers compute in
                    outputs.append(out.to(torch.float32))
            self._sync()
            self.timing["load_s"] += t1 - t0
            self.timing["forward_s"] += time.perf_counter() - t1
            self.meta_layers[layer] = None
            del module
            yield layer, hidden, outputs
            hidden = outputs

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
