"""Per-layer residual-stream statistics over calibration text (SPEC §5.5).

What is read
------------
Decoder layer L's input h_L and output h_{L+1}, so δ_L = h_{L+1} − h_L is the layer's own
update. The model's ``output_hidden_states[-1]`` is *not* used: transformers applies the final
norm to that last entry, which turns the last layer's "update" into mostly the final RMSNorm
(relative step ≈ 0.99 on SmolLM2; see the research notes). Tests check that the hook δ equals
the difference of consecutive ``output_hidden_states`` for every layer but the last, and
differs for the last.

Two ways to run the model, same statistics
------------------------------------------
:func:`compute` (what the claims use) streams the model one decoder layer at a time
(:class:`probes.layer_stream.LayerStream`): every window of the corpus goes through layer L
before layer L+1 is loaded; between layers the hidden states of all tokens (T × d float32, twice:
in and out) are held, plus one layer's weights (float32, or bf16 under ``--dtype``, see
:mod:`probes.forward_dtype`) and the layer's second moment of δ: a d × d float64 Gram, or — when
the scored tokens T are fewer than d — the T × d δ rows, whose T × T token Gram gives the same
spectrum for T²d + T³ instead of d²T + d³ flops. Qwen3-4B: ≈ 0.4 GB of weights + 2 × T × 10 kB;
the whole model is never in memory. Whatever the forward's dtype, the hidden states are float32
and every statistic is accumulated in float32/float64.

Unit of work. Per layer, the statistics are sums over windows (:class:`LayerAccumulator`): two
runs over disjoint sets of windows merge exactly (:meth:`LayerAccumulator.merge`), so a corpus
can be split by windows into units whose per-layer accumulators are merged before the spectra
are taken.

:func:`compute_hooked` is the reference: the whole transformers model in float32 with a forward
pre-hook and hook on each decoder layer (one window at a time, at most one layer's input held
beyond what the model keeps; when L·d²·8 bytes exceed ``gram_budget_bytes`` the layers are split
into groups and the corpus is run once per group). It needs the whole model in memory (20 GB
for Qwen3-4B); tests compare the two on every architecture.

Each document (or window of at most ``window`` tokens) is its own sequence (batch 1, no
padding), starting with the model's BOS where its tokenizer adds one (``corpus.bos``: what
the model saw first in training). The first position of every window — that BOS, else the
text's first token — is dropped from every statistic.

Result (all arrays indexed by layer, cached by :mod:`probes.cache`)
-------------------------------------------------------------------
eigvals (n, d) squared singular values of δ, descending; top_dirs (n, k, d) top-k right singular
directions; effective_rank, top1/3/10_energy, rel_step, parallel_frac, cos_delta_h,
angular_step, delta_norm_mean, h_norm_mean, delta_sq_mean, h_sq_mean, dot_mean (n,);
tok_delta_sq, tok_dot, tok_h_sq (T, n) per scored token: ‖δ‖², ⟨h, δ⟩, ‖h‖² (3 scalars per
token and layer, for the exchangeable-layers null of the late-layers claim);
isotropic: the same spectrum statistics for isotropic Gaussian updates of the same size
(T × d, one seeded draw) as their null; calibration: {source, sha256, tokens, …}; memory: bytes;
forward: {dtype, requested, reason, device}; timing: seconds by stage (layer loading, forward,
Gram + eigensolve, per-token scalars, isotropic null) and the forward's flops.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import numpy as np
import torch

from . import probe_cost
from .calibration import TokenizedCorpus
from .errors import StrataError
from .layer_stream import LayerStream
from .progress import progress
from .forward_dtype import ForwardDtype
from .residual import effective_rank, spectrum_from_gram, spectrum_from_rows, top_energy

PROBE_ID = "residual-stream"
VERSION = 5  # 2: layer-streamed forward pass (same statistics to float32 rounding)
# 3: forward dtype (float32 | bf16, in the key); token Gram when T < d; spectrum from one
#    tridiagonal reduction (same statistics to float32 rounding)
# 4: the token Gram's eigenproblem by that reduction too (float64 rounding: a cached result
#    of 3 would differ from a fresh one in its last bits, so it is not served)
# 5: windows start with the tokenizer's BOS where it adds one (Llama, Gemma, Mistral):
#    the BOS position is the one dropped, every text token is scored
TOP_K = 8
GRAM_BUDGET_BYTES = 1 << 30
MAX_WINDOW = 1024
# rows per float32 Gram GEMM (the precision of one full window's Gram)
GRAM_BLOCK_ROWS = MAX_WINDOW


def decoder_layers(hf_model, num_layers: int) -> list[torch.nn.Module]:
    """The decoder layer modules of a transformers causal LM, in order: the base model's
    (``hf_model.base_model``) list named by the architecture table (``layers``; GPT-2's ``h``),
    else the first ``ModuleList`` named ``…layers`` with ``num_layers`` entries (multimodal
    wrappers such as ``model.language_model.layers``)."""
    from .models.adapters import SUPPORTED_ARCHITECTURES, architecture
    body = getattr(hf_model, "base_model", hf_model)
    try:
        attr = architecture(body.config.get_text_config().model_type).layers
    except (StrataError, AttributeError):
        attr = "layers"
    layers = getattr(body, attr, None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) >= num_layers:
        return list(layers)[:num_layers]
    for name, mod in hf_model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and name.endswith("layers") and len(mod) == num_layers:
            return list(mod)
    raise StrataError(f"cannot find the {num_layers} decoder layers in "
                      f"{type(hf_model).__name__}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")


class _StopForward(Exception):
    """Raised by the last hooked layer of a group to end a pass early."""


class LayerAccumulator:
    """Sufficient statistics of one layer's updates over a set of windows (the first token of
    each window dropped by the caller): sums of the per-token scalars, the per-token arrays, and
    the second moment of δ — as the d × d Gram Σ δᵀδ (``gram="hidden"``) or as the δ rows
    themselves (``gram="tokens"``, chosen when the scored tokens are fewer than d: the spectrum
    then comes from the T × T token Gram, see :func:`probes.residual.spectrum_from_rows`).

    Accumulators of one layer over disjoint sets of windows :meth:`merge` exactly (sums add,
    Grams add, per-token arrays and rows concatenate in window order), so a corpus split into
    units of windows gives the serial result. ``seconds`` times the Gram and the scalars."""

    def __init__(self, hidden: int, device, with_gram: bool, with_scalars: bool,
                 gram: str = "hidden"):
        if gram not in ("hidden", "tokens"):
            raise ValueError(f"gram must be 'hidden' or 'tokens', not {gram!r}")
        self.hidden = hidden
        self.mode = gram if with_gram else None
        self.gram = (torch.zeros(hidden, hidden, dtype=torch.float64, device=device)
                     if self.mode == "hidden" else None)
        self.rows: list[torch.Tensor] = []          # per window: δ rows (float64), mode "tokens"
        self.with_scalars = with_scalars
        self.sums = {k: 0.0 for k in ("rel_step", "parallel_frac", "cos_delta_h", "angular_step",
                                      "delta_norm", "h_norm", "delta_sq", "h_sq", "dot")}
        self.tokens = 0
        self.tok_delta_sq: list[torch.Tensor] = []  # per window: ‖δ_t‖² (float64, CPU)
        self.tok_dot: list[torch.Tensor] = []       # per window: ⟨h_t, δ_t⟩
        self.tok_h_sq: list[torch.Tensor] = []      # per window: ‖h_t‖²
        self.seconds = {"gram": 0.0, "scalars": 0.0}

    def add(self, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        """Fold one window: ``h_in``, ``h_out`` (T, d) of this layer, first token dropped already."""
        self.add_windows([(h_in, h_out)])

    def add_windows(self, pairs) -> None:
        """Fold consecutive windows ``[(h_in, h_out), …]`` (each (T, d), first token dropped).

        Same statistics as :meth:`add` window by window, computed on the windows' rows stacked:
        the Gram as one float32 GEMM per block of ≤ ``GRAM_BLOCK_ROWS`` rows (summed in
        float64); the scalars window by window. Short windows each paid a d × d GEMM output,
        its float64 conversion and its add: stacked, the built-in corpus's Grams took 44 s
        instead of 53 s (Qwen3-4B shapes, AMD EPYC Zen 4, idle), the eigensolves (24 s) included."""
        t0 = time.perf_counter()
        if self.mode == "hidden":
            block: list[torch.Tensor] = []
            for h_in, h_out in pairs:
                block.append(h_out.to(torch.float32) - h_in.to(torch.float32))
                if sum(x.shape[0] for x in block) >= GRAM_BLOCK_ROWS:
                    self._add_gram(block)
                    block = []
            if block:
                self._add_gram(block)
        elif self.mode == "tokens":
            self.rows.extend(h_out.to(torch.float64) - h_in.to(torch.float64)
                             for h_in, h_out in pairs)
        self.seconds["gram"] += time.perf_counter() - t0
        if self.with_scalars:
            # per window: float64 copies of a block would hold several × 2048 × d × 8 bytes
            for h_in, h_out in pairs:
                self._add_scalars(h_in, h_out)

    def _add_gram(self, deltas: list[torch.Tensor]) -> None:
        # float32 Gram of one block (< GRAM_BLOCK_ROWS + one window's rows), summed in float64
        d32 = deltas[0] if len(deltas) == 1 else torch.cat(deltas)
        self.gram += (d32.T @ d32).to(torch.float64)

    def _add_scalars(self, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        t1 = time.perf_counter()
        h = h_in.to(torch.float64)
        delta = h_out.to(torch.float64) - h
        out = h_out.to(torch.float64)
        dn, hn, on = delta.norm(dim=1), h.norm(dim=1), out.norm(dim=1)
        dot = (delta * h).sum(dim=1)
        tiny = torch.finfo(torch.float64).tiny
        cos_dh = dot / (dn * hn).clamp_min(tiny)
        cos_ho = ((h * out).sum(dim=1) / (hn * on).clamp_min(tiny)).clamp(-1.0, 1.0)
        s = self.sums
        s["rel_step"] += float((dn / hn.clamp_min(tiny)).sum())
        s["parallel_frac"] += float(cos_dh.abs().sum())
        s["cos_delta_h"] += float(cos_dh.sum())
        s["angular_step"] += float((torch.arccos(cos_ho) / math.pi).sum())
        s["delta_norm"] += float(dn.sum())
        s["h_norm"] += float(hn.sum())
        s["delta_sq"] += float((dn * dn).sum())
        s["h_sq"] += float((hn * hn).sum())
        s["dot"] += float(dot.sum())
        self.tok_delta_sq.append((dn * dn).cpu())
        self.tok_dot.append(dot.cpu())
        self.tok_h_sq.append((hn * hn).cpu())
        self.tokens += int(h.shape[0])
        self.seconds["scalars"] += time.perf_counter() - t1

    def merge(self, other: "LayerAccumulator") -> "LayerAccumulator":
        """Fold in ``other``: the same layer over windows that come after this one's."""
        if (self.mode, self.with_scalars, self.hidden) != (other.mode, other.with_scalars,
                                                           other.hidden):
            raise ValueError("accumulators of different kinds do not merge")
        if self.gram is not None:
            self.gram += other.gram.to(self.gram.device)
        self.rows += other.rows
        for key, value in other.sums.items():
            self.sums[key] += value
        self.tokens += other.tokens
        self.tok_delta_sq += other.tok_delta_sq
        self.tok_dot += other.tok_dot
        self.tok_h_sq += other.tok_h_sq
        for key, value in other.seconds.items():
            self.seconds[key] += value
        return self

    def finish_spectrum(self, top_k: int) -> None:
        """Eigenvalues and top-k directions of Σ δᵀδ into ``self.spectrum``; the Gram or the
        rows are released."""
        t0 = time.perf_counter()
        if self.mode == "hidden":
            self.spectrum = spectrum_from_gram(self.gram.cpu().numpy(), top_k)
        else:
            rows = torch.cat(self.rows) if self.rows else torch.zeros(0, self.hidden)
            self.spectrum = spectrum_from_rows(rows.cpu().numpy(), top_k)
        self.gram, self.rows = None, []
        self.seconds["gram"] += time.perf_counter() - t0


class ResidualHooks:
    """Hooks on the decoder layers that stream (input, output) pairs into accumulators.

    ``max_held`` records the largest number of layer inputs held at once (1 by construction:
    the memory claim of this module, checked by the tests)."""

    def __init__(self, layers, accumulators: dict[int, LayerAccumulator], stop_after: int | None):
        self.layers, self.acc, self.stop_after = layers, accumulators, stop_after
        self.held: dict[int, torch.Tensor] = {}
        self.max_held = 0
        self.max_window_bytes = 0
        self.handles = []

    def __enter__(self):
        for i, layer in enumerate(self.layers):
            if i in self.acc:
                self.handles.append(layer.register_forward_pre_hook(self._pre(i), with_kwargs=True))
                self.handles.append(layer.register_forward_hook(self._post(i)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.held.clear()

    def _pre(self, i):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.held[i] = x
            self.max_held = max(self.max_held, len(self.held))
        return hook

    def _post(self, i):
        def hook(module, args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            h_in = self.held.pop(i)
            if h_in.shape != out.shape or h_in.shape[0] != 1:
                raise StrataError(f"layer {i}: unexpected hidden-state shapes "
                                  f"{tuple(h_in.shape)} → {tuple(out.shape)} (batch 1 expected)")
            self.max_window_bytes = max(self.max_window_bytes, out[0].numel() * out.element_size())
            self.acc[i].add(h_in[0, 1:], out[0, 1:])
            if self.stop_after is not None and i == self.stop_after:
                raise _StopForward
        return hook


def windows(corpus: TokenizedCorpus, window: int) -> list[list[int]]:
    """Each document split into consecutive windows of ≤ ``window`` tokens (windows of < 2
    tokens dropped); each window is run and scored as its own sequence. With a BOS
    (``corpus.bos``) every window starts with it and holds ≤ ``window`` − 1 of the text's
    tokens, so the dropped first position is the BOS and every text token is scored."""
    lead = [] if corpus.bos is None else [corpus.bos]
    step = window - len(lead)
    out = []
    for doc in corpus.documents:
        for start in range(0, len(doc), step):
            piece = lead + list(doc[start:start + step])
            if len(piece) >= 2:
                out.append(piece)
    return out


def layer_groups(num_layers: int, hidden: int, budget_bytes: int) -> list[list[int]]:
    """Consecutive layer groups whose float64 Grams fit ``budget_bytes`` together (≥ 1 layer)."""
    per = max(1, budget_bytes // (hidden * hidden * 8))
    return [list(range(a, min(a + per, num_layers))) for a in range(0, num_layers, per)]


@torch.no_grad()
def compute(model, corpus: TokenizedCorpus, device: str = "cpu", top_k: int = TOP_K,
            seed: int = 0, forward: ForwardDtype | None = None) -> dict:
    """Run ``corpus`` through ``model`` (a :class:`probes.models.base.Model`) one decoder layer
    at a time and return the per-layer residual statistics described in the module docstring.

    ``forward``: the dtype the decoder layers compute in (:mod:`probes.forward_dtype`; default
    float32); hidden states and statistics are float32/float64 either way.

    Held at once: one layer's weights, every window's hidden states entering and leaving that
    layer, and the layer's second moment of δ — a d × d float64 Gram, or the T × d δ rows when
    the scored tokens T are fewer than d (smaller, and the spectrum then costs T²d + T³
    instead of d³). ``timing`` in the result splits the seconds: layer loading (read + dtype
    conversion), the forward, the Gram and its eigensolve, the per-token scalars, the
    isotropic reference."""
    t_start = time.perf_counter()
    # each layer's spectrum taken as soon as its windows are in: one Gram alive at a time
    run = _stream_share(model, corpus, 0, 1, device, forward, finish_top_k=top_k)
    return _result(model, corpus, [run], top_k, seed, forward, t_start)


@torch.no_grad()
def compute_part(model, corpus: TokenizedCorpus, part: int, parts: int, device: str = "cpu",
                 forward: ForwardDtype | None = None) -> dict:
    """Unit ``part`` of ``parts`` of :func:`compute`, for running on separate workers: the
    per-layer :class:`LayerAccumulator` of a contiguous share of the corpus's windows
    (:func:`window_shares`: balanced by tokens), spectra not yet taken. The shares' Gram mode
    (hidden or tokens) is decided from the whole corpus, so every part's accumulators merge.
    :func:`combine_parts` merges the parts in order and takes the spectra: the result equals
    :func:`compute`'s — per-token arrays, token-Gram spectra (T < d) bit for bit; the hidden
    Gram and the scalar means to float64 rounding of their sums' order, plus, for the Gram,
    float32 rounding of the one block of rows that straddles a share boundary (tested)."""
    return _stream_share(model, corpus, part, parts, device, forward, finish_top_k=None)


def combine_parts(model, corpus: TokenizedCorpus, results: list[dict], top_k: int = TOP_K,
                  seed: int = 0, forward: ForwardDtype | None = None) -> dict:
    """:func:`compute`'s result from every :func:`compute_part` of one split, in part order."""
    t_start = time.perf_counter()
    results = sorted(results, key=lambda r: r["part"])
    if [r["part"] for r in results] != list(range(results[0]["parts"])):
        raise ValueError("combine_parts needs every part of the split exactly once")
    merged = results[0]["accumulators"]
    for r in results[1:]:
        for layer, acc in r["accumulators"].items():
            merged[layer].merge(acc)
    for acc in merged.values():
        acc.finish_spectrum(top_k)
    out = _result(model, corpus, results, top_k, seed, forward, t_start, merged)
    out["timing"]["parts"] = len(results)
    return out


def window_shares(lengths: list[int], parts: int) -> list[range]:
    """``parts`` contiguous ranges of window indices, each cut at the window boundary nearest
    to an equal share of the tokens (shares differ by at most about one window; a range may be
    empty when there are fewer windows than parts)."""
    prefix = np.concatenate([[0], np.cumsum(lengths)])
    bounds = [0]
    for k in range(1, parts):
        target = prefix[-1] * k / parts
        i = int(np.searchsorted(prefix, target))
        if i > 0 and (i == len(prefix) or target - prefix[i - 1] <= prefix[i] - target):
            i -= 1
        bounds.append(max(i, bounds[-1]))
    bounds.append(len(lengths))
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _stream_share(model, corpus, part, parts, device, forward, finish_top_k):
    n, d = model.layout.num_layers, model.layout.hidden
    forward = forward or ForwardDtype("float32", "float32", "default")
    stream = LayerStream(model, device, forward)
    window = stream.window_limit(MAX_WINDOW)
    seqs = windows(corpus, window)
    if not seqs:
        raise StrataError("calibration corpus gave no scored tokens")
    scored = sum(len(s) - 1 for s in seqs)
    gram = "tokens" if scored < d else "hidden"
    share = [seqs[i] for i in window_shares([len(s) for s in seqs], parts)[part]]
    accs: dict[int, LayerAccumulator] = {}
    hidden_bytes = 0
    label = f"residual stream ({corpus.tokens} tokens" + (f", part {part + 1}/{parts})"
                                                          if parts > 1 else ")")
    with progress(n, label, unit="layer") as bar:
        for layer, inputs, outputs in (stream.run(share) if share else ()):
            acc = LayerAccumulator(d, stream.device, with_gram=True, with_scalars=True, gram=gram)
            acc.add_windows([(h_in[0, 1:], h_out[0, 1:]) for h_in, h_out in zip(inputs, outputs)])
            hidden_bytes = max(hidden_bytes, sum(t.numel() * t.element_size()
                                                 for t in (*inputs, *outputs)))
            if finish_top_k is not None:
                acc.finish_spectrum(finish_top_k)
            elif acc.gram is not None:
                acc.gram = acc.gram.cpu()   # what travels to the combining worker
            accs[layer] = acc
            del inputs, outputs   # only the next layer's inputs stay alive
            bar.update(1)
    if not share:   # more parts than windows: empty accumulators merge as zeros
        accs = {layer: LayerAccumulator(d, "cpu", with_gram=True, with_scalars=True, gram=gram)
                for layer in range(n)}
    return {"part": part, "parts": parts, "accumulators": accs, "gram": gram, "window": window,
            "scored": scored, "lengths": [len(s) for s in seqs], "hidden_bytes": hidden_bytes,
            "layer_bytes": stream.layer_bytes, "embedding_rows": stream.embedded_rows,
            "timing": dict(stream.timing), "device": str(stream.device)}


def _result(model, corpus, runs, top_k, seed, forward, t_start, accs=None) -> dict:
    n, d = model.layout.num_layers, model.layout.hidden
    forward = forward or ForwardDtype("float32", "float32", "default")
    accs = accs if accs is not None else runs[0]["accumulators"]
    first = runs[0]
    seconds = {k: sum(a.seconds[k] for a in accs.values()) for k in ("gram", "scalars")}
    t_iso = time.perf_counter()
    isotropic_reference(accs[0].tokens, d, seed)  # timed here; _finalise reads it from the cache
    t_fin = time.perf_counter()
    gram, scored = first["gram"], first["scored"]
    res = _finalise(accs, n, d, top_k, corpus, seed,
                    memory={"streamed": True, "layers_in_memory": 1,
                            "layer_weight_bytes": first["layer_bytes"],
                            "hidden_bytes": max(r["hidden_bytes"] for r in runs), "gram": gram,
                            "gram_bytes": (d * d if gram == "hidden" else scored * d) * 8,
                            "embedding_rows": max(r["embedding_rows"] for r in runs),
                            "window": first["window"]})
    done = time.perf_counter()
    res["forward"] = {**forward.record(), "device": first["device"]}
    res["timing"] = {"load_s": sum(r["timing"]["load_s"] for r in runs),
                     "forward_s": sum(r["timing"]["forward_s"] for r in runs),
                     "gram_eigensolve_s": seconds["gram"], "token_scalars_s": seconds["scalars"],
                     "isotropic_s": t_fin - t_iso, "finalise_s": done - t_fin,
                     "total_s": done - t_start,
                     "forward_flops": forward_flops(model.layout, first["lengths"],
                                                    gated=probe_cost.has_gate(model))}
    return res


def forward_flops(layout, window_lengths, gated: bool = True) -> int:
    """Multiply–add flops (×2) of the decoder layers over windows of the given lengths: the
    projections (q, k, v, o, and gate, up, down — up and down alone where the MLP has no gate,
    ``gated=False``: GPT-2, GPT-NeoX, Phi-2) per token, and attention's QKᵀ and AV over the
    causal pairs t(t+1)/2 of each window (a sliding window's shorter reach is not subtracted:
    an upper bound for gemma3's and mistral's local layers). Norms, rotary and activations are
    left out (O(d) per token)."""
    d, hd = layout.hidden, layout.head_dim
    proj = probe_cost.attention_params(layout) + (3 if gated else 2) * d * layout.intermediate
    tokens = sum(window_lengths)
    pairs = sum(t * (t + 1) // 2 for t in window_lengths)
    per_layer = 2 * proj * tokens + 2 * 2 * layout.num_heads * hd * pairs
    return int(per_layer * layout.num_layers)


@torch.no_grad()
def compute_hooked(model, corpus: TokenizedCorpus, device: str = "cpu", top_k: int = TOP_K,
                   gram_budget_bytes: int = GRAM_BUDGET_BYTES, seed: int = 0) -> dict:
    """The reference path: the whole transformers model (``model.hf_model``, float32) with
    hooks on its decoder layers; same result as :func:`compute` (to float32 rounding)."""
    n, d = model.layout.num_layers, model.layout.hidden
    hf = model.hf_model(device, torch.float32)
    hf.eval()
    layers = decoder_layers(hf, n)
    cfg = getattr(hf, "config", None)
    max_pos = getattr(getattr(cfg, "get_text_config", lambda: cfg)(), "max_position_embeddings", None)
    window = min(MAX_WINDOW, int(max_pos)) if max_pos else MAX_WINDOW
    seqs = windows(corpus, window)
    dev = next(hf.parameters()).device
    # the decoder stack without the LM head: logits (T × vocab) are not needed and cost more
    # than the layers on small models
    body = getattr(hf, "base_model", hf)
    groups = layer_groups(n, d, gram_budget_bytes)
    accs: dict[int, LayerAccumulator] = {}
    max_held, max_window_bytes = 0, 0
    for gi, group in enumerate(groups):
        group_acc = {i: LayerAccumulator(d, dev, with_gram=i in group, with_scalars=gi == 0)
                     for i in (range(n) if gi == 0 else group)}
        stop = None if gi == 0 else group[-1]
        with ResidualHooks(layers, group_acc, stop) as hooks:
            for ids in seqs:
                try:
                    body(input_ids=torch.tensor([ids], device=dev), use_cache=False)
                except _StopForward:
                    pass
        max_held = max(max_held, hooks.max_held)
        max_window_bytes = max(max_window_bytes, hooks.max_window_bytes)
        if gi == 0:
            accs = group_acc
        else:
            for i in group:
                accs[i].gram = group_acc[i].gram
        # finalise this group's Grams now, so at most one group's Grams are alive
        for i in group:
            g = accs[i].gram.cpu().numpy()
            accs[i].gram = None
            accs[i].spectrum = spectrum_from_gram(g, top_k)
    return _finalise(accs, n, d, top_k, corpus, seed,
                     memory={"max_layer_inputs_held": max_held,
                             "max_window_hidden_bytes": max_window_bytes,
                             "gram_bytes_per_pass": len(groups[0]) * d * d * 8,
                             "passes": len(groups), "window": window})


def _finalise(accs, n, d, top_k, corpus: TokenizedCorpus, seed: int, memory: dict) -> dict:
    t = accs[0].tokens
    if t == 0:
        raise StrataError("calibration corpus gave no scored tokens")
    eig = np.stack([accs[i].spectrum[0] for i in range(n)])
    dirs = np.stack([accs[i].spectrum[1] for i in range(n)]).astype(np.float32)
    mean = lambda key: np.array([accs[i].sums[key] / t for i in range(n)])  # noqa: E731
    res = {
        "eigvals": eig, "top_dirs": dirs,
        "effective_rank": np.array([effective_rank(e) for e in eig]),
        "top1_energy": np.array([top_energy(e, 1) for e in eig]),
        "top3_energy": np.array([top_energy(e, 3) for e in eig]),
        "top10_energy": np.array([top_energy(e, 10) for e in eig]),
        "rel_step": mean("rel_step"), "parallel_frac": mean("parallel_frac"),
        "cos_delta_h": mean("cos_delta_h"), "angular_step": mean("angular_step"),
        "delta_norm_mean": mean("delta_norm"), "h_norm_mean": mean("h_norm"),
        "delta_sq_mean": mean("delta_sq"), "h_sq_mean": mean("h_sq"), "dot_mean": mean("dot"),
        "scored_tokens": int(t),
        # per token (rows) and layer (columns): what the exchangeable-layers null needs
        "tok_delta_sq": np.stack([torch.cat(accs[i].tok_delta_sq).numpy() for i in range(n)], 1),
        "tok_dot": np.stack([torch.cat(accs[i].tok_dot).numpy() for i in range(n)], 1),
        "tok_h_sq": np.stack([torch.cat(accs[i].tok_h_sq).numpy() for i in range(n)], 1),
        "isotropic": isotropic_reference(t, d, seed),
        "calibration": corpus.record(),
        "memory": memory,
    }
    return res


def isotropic_reference(tokens: int, hidden: int, seed: int = 0) -> dict:
    """Spectrum statistics of a T × d matrix of i.i.d. Gaussian updates (one seeded draw, T
    capped at 4096): the per-layer statistics' null for updates with no preferred direction;
    also E|cos| of a random direction with h (parallel fraction) and 0 for mean cos.

    Depends only on (min(T, 4096), d, seed), so it is computed once per shape and process
    (a model and its random twin share it; at Qwen3-4B shapes one draw costs a 2560² Gram of
    4096 rows and its eigenvalues)."""
    return dict(_isotropic(min(tokens, 4096), hidden, seed))


@lru_cache(maxsize=8)
def _isotropic(rows: int, hidden: int, seed: int) -> dict:
    from .residual import random_abs_cos_mean
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, hidden))
    s2 = np.linalg.eigvalsh(x @ x.T if x.shape[0] < hidden else x.T @ x)
    return {"effective_rank": effective_rank(s2), "top1_energy": top_energy(s2, 1),
            "top3_energy": top_energy(s2, 3), "top10_energy": top_energy(s2, 10),
            "parallel_frac": random_abs_cos_mean(hidden), "cos_delta_h": 0.0}
