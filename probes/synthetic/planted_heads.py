"""Planted-structure control for the head-metric claims (``head-metric-adjacent``,
``qk-sym-positive``).

`planted-heads` (qwen3, 24 layers, hidden 48, 6 query heads reading 2 kv heads, head_dim 16, so
heads·head_dim = 96 > hidden; fractional phases A 0-2, B 3, C 4-11, D 12-17, E 18-22, tail 23):

- phase C: every head's W_Q and W_K continue the layer before plus noise,
  W_{L+1} = (W_L + 0.5·N)/√1.25 (N of the init's scale), so the matched head metrics
  g_L,h = W_K,hᵀ W_Q,h of adjacent layers have cosine ≈ 1/1.25 = 0.8, while other heads' metrics
  (and every metric outside C) are independent draws with cosine ≈ 0;
- phase D: every query head copies its kv head plus equal-scale noise,
  W_Q,h = (W_K,kv(h) + N_h)/√2, so g_h = W_Kᵀ W_K/√2 + noise has a positive semi-definite
  dominant symmetric part: the positive eigen-mass share of g + gᵀ is well above 1/2 there and
  1/2 in expectation elsewhere (Q, K independent, sign-symmetric);
- q_norm / k_norm gains exp(0.2·N) (positive, per head_dim) in every layer, so the folded metric
  diag(γ_k) … diag(γ_q) is exercised; positive gains keep both planted effects.

`head-metric-adjacent` must be SUPPORTED in C (and not in D), `qk-sym-positive` SUPPORTED in D
(and not in C); the random-init twin ``random:synthetic:planted-heads`` supports neither.

Strength (``synthetic:planted-heads?strength=s&seed=n``, s ≥ 0, default 1 = the control above):
the walk's noise ratio is 0.5/s (matched metric cos ≈ 1/(1 + 0.25/s²)) and the query heads copy
their kv head with weight s, W_Q,h = (s·W_K,kv(h) + N_h)/√(1 + s²); s = 0 is the random init
(with the random q/k gains).
"""

from __future__ import annotations

import math

import torch

from probes.synthetic import SyntheticSpec, register
from probes.synthetic.base import random_state_dict, tiny_config

NUM_LAYERS = 24
ADJACENT_PHASE = range(4, 12)   # phase C of 24 layers under the fractional map
POSITIVE_PHASE = range(12, 18)  # phase D
WALK_NOISE = 0.5
GAIN_LOG_SD = 0.2


def _name(layer: int, part: str) -> str:
    return f"model.layers.{layer}.self_attn.{part}.weight"


@register("planted-heads")
def planted_heads(strength: float = 1.0, seed: int = 23) -> SyntheticSpec:
    num_heads, num_kv_heads, head_dim, hidden = 6, 2, 16, 48
    config = tiny_config("qwen3", num_layers=NUM_LAYERS, hidden=hidden, num_heads=num_heads,
                         num_kv_heads=num_kv_heads, head_dim=head_dim, intermediate=96)
    state = random_state_dict(config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    group = num_heads // num_kv_heads
    walk_noise = WALK_NOISE / strength if strength > 0 else float("inf")

    for layer in ADJACENT_PHASE:
        if layer - 1 in ADJACENT_PHASE and strength > 0:
            for part in ("q_proj", "k_proj"):
                prev = state[_name(layer - 1, part)]
                noise = torch.randn(prev.shape, generator=gen) * prev.std()
                state[_name(layer, part)] = (prev + walk_noise * noise) / math.sqrt(1 + walk_noise ** 2)

    for layer in POSITIVE_PHASE:
        k = state[_name(layer, "k_proj")].reshape(num_kv_heads, head_dim, hidden)
        k_rep = k.repeat_interleave(group, 0)  # query head h reads kv head h // group
        noise = torch.randn(k_rep.shape, generator=gen) * k.std()
        state[_name(layer, "q_proj")] = ((strength * k_rep + noise)
                                         / math.sqrt(1 + strength ** 2)).reshape(-1, hidden)

    for layer in range(NUM_LAYERS):
        for part in ("q_norm", "k_norm"):
            state[_name(layer, part)] = torch.exp(GAIN_LOG_SD * torch.randn(head_dim, generator=gen))

    return SyntheticSpec(config, state,
                         "qwen3, 24 layers, 6 heads / 2 kv heads: phase C (4-11) q/k continue the "
                         "previous layer plus noise (matched head-metric cos ≈ 0.8); phase D "
                         "(12-17) W_Q,h = (W_K,kv(h) + N)/√2 (g + gᵀ mostly positive); random "
                         "q_norm/k_norm gains" + (f" (strength {strength:g})" if strength != 1 else ""),
                         meta={"strength": strength, "seed": seed})
