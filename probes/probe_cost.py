"""Rough seconds each probe will take on this machine, so a cluster starts the longest first.

Used only to order work (``fixtures/cluster.py`` starts a cluster's tasks longest first,
:func:`probes.cluster.start_order`: the classic rule for a short makespan on a few workers — a
long probe started last keeps one worker busy after the rest are idle; a probe and the claims'
nulls derived from it count as one chain: :func:`exchangeable_null_seconds`,
:func:`capture_null_seconds`).
Nothing numerical depends on these figures; a wrong estimate costs time, never a result.

Each estimate is a FLOP count (and, where reading the weights dominates, a byte count) over this
machine's measured unit rates (:func:`probes.gauge_cost.machine_rates`, measured once per device,
≈ 0.3 s): float32 and bf16 GEMM rates, an eigensolve scaled as n³. The gauge probe has its own,
finer cost model (:func:`probes.gauge_cost.estimate`).
"""

from __future__ import annotations

from typing import Mapping

# bytes a probe reads and converts per second when it streams weights (safetensors from the
# page cache, bf16 → float32): the order of one core's copy bandwidth
STREAM_BYTES_PER_S = 2e9


def attention_params(layout) -> int:
    """Weights of one layer's q, k, v and o projections: hidden · head_dim · (2·H + 2·KV)."""
    return layout.hidden * layout.head_dim * (2 * layout.num_heads + 2 * layout.num_kv_heads)


def layer_params(layout, gated: bool = True) -> int:
    """Weights of one decoder layer's projections (q, k, v, o and the MLP: gate, up and down,
    or up and down where the MLP has no gate — GPT-2, GPT-NeoX, Phi-2 —, every expert of a
    mixture), from the layout: norms, biases and a mixture's router left out."""
    d = layout.hidden
    attn = attention_params(layout)
    mats = 3 if gated else 2
    if layout.num_experts:
        mlp = layout.num_experts * mats * d * layout.expert_intermediate
    else:
        mlp = mats * d * layout.intermediate
    return attn + mlp


def model_layer_params(model) -> int:
    """:func:`layer_params` of a :class:`probes.models.base.Model` (gated where it has a
    gate projection, its experts' included)."""
    return layer_params(model.layout, gated=has_gate(model))


def has_gate(model) -> bool:
    """Whether the model's MLP is gated (a ``gate_proj`` family, its experts' included): three
    MLP matrices per layer, not two."""
    return any(f.endswith("gate_proj") for f in model.families)


def _rates(device: str, rates: Mapping | None) -> Mapping:
    if rates is not None:
        return rates
    from .gauge_cost import machine_rates
    return machine_rates(device)


def weight_gram_seconds(model, device: str = "cpu", rates: Mapping | None = None) -> float:
    """The streamed Gram pass (``probes.adjacent``): every layer's weights read once (bytes at
    :data:`STREAM_BYTES_PER_S`, float32) and one L × L Gram per family (2·L·P flops)."""
    r, layout = _rates(device, rates), model.layout
    p = model_layer_params(model) * layout.num_layers
    return p * 4 / STREAM_BYTES_PER_S + 2 * layout.num_layers * p / (r["gemm_f32_gflops"] * 1e9)


def head_metric_seconds(model, device: str = "cpu", rates: Mapping | None = None) -> float:
    """The per-head QK metric (``probes.head_metric``): the all-pairs Gram,
    L(L+1)/2 · 2·(H + KV)·hd²·hidden flops, and the attention weights read once."""
    r, layout = _rates(device, rates), model.layout
    n, hd = layout.num_layers, layout.head_dim
    flops = n * (n + 1) / 2 * 2 * (layout.num_heads + layout.num_kv_heads) * hd * hd * layout.hidden
    return (flops / (r["gemm_f32_gflops"] * 1e9)
            + attention_params(layout) * n * 4 / STREAM_BYTES_PER_S)


def forward_seconds(model, tokens: int, bf16: bool, device: str = "cpu",
                    rates: Mapping | None = None) -> float:
    """The layer-streamed forward (``probes.activations``): the decoder layers' flops over
    ``tokens`` in one window each of at most 512 (``activations.forward_flops``) at the GEMM
    rate of the forward's dtype, each layer read once, and per layer the spectrum of δ's second
    moment: a min(T, d)² · max(T, d) Gram and a min(T, d)-sized eigensolve."""
    from .activations import forward_flops
    r, layout = _rates(device, rates), model.layout
    rate = (r["gemm_bf16_gflops"] if bf16 else r["gemm_f32_gflops"]) * 1e9
    windows = [512] * (tokens // 512) + ([tokens % 512] if tokens % 512 else [])
    k, m = sorted((max(tokens, 1), layout.hidden))
    spectrum = 2 * k * k * m / (r["gemm_f32_gflops"] * 1e9) + r["eig512_s"] * (k / 512) ** 3
    read = model_layer_params(model) * 2 / STREAM_BYTES_PER_S
    return (forward_flops(layout, windows, gated=has_gate(model)) / rate
            + layout.num_layers * (spectrum + read))


# seconds per angle of the late-layers claim's exchangeable-layers null (a few float64
# elementwise operations and an arccos per token, layer and draw): 1.52 s for SmolLM2-135M's
# 1,000 × 29 × 4,345 angles on one AMD EPYC Zen 2 core
ANGLE_SECONDS = 12e-9
# seconds per n³ of a small symmetric eigenproblem solved in a batch (the phase-C null's
# leave-one-out bases): 4.6–5.7 s for SmolLM2-135M's 1,000 × 10 problems of order 72 (phase C
# has 10 of its 30 layers), one AMD EPYC Zen 4 core
EIGH_SECONDS_PER_N3 = 1.4e-9


def exchangeable_null_seconds(model, tokens: int, draws: int = 1000) -> float:
    """The late-layers null (``probes.residual.exchangeable_null``): ``draws`` × (layers − 1) ×
    ``tokens`` angles."""
    layers = max(1, model.layout.num_layers - 1)
    return ANGLE_SECONDS * draws * layers * max(tokens, 1)


def capture_null_seconds(size: int, top_k: int, draws: int = 1000) -> float:
    """The phase-C null (``probes.residual.capture_null``): ``draws`` × ``size`` leave-one-out
    eigenproblems of order (size − 1) · top_k."""
    order = max(size - 1, 1) * top_k
    return EIGH_SECONDS_PER_N3 * draws * max(size, 1) * order ** 3
