"""Planted-structure control for the raw-weight claims (adjacent similarity, scale schedule).

`planted-adjacent` (llama, 24 layers → fractional phases A 0-2, B 3, C 4-11, D 12-17,
E 18-21, tail 22-23):
- in phase C every projection is a continued copy of the layer before plus noise,
  W_{L+1} = W_L + 0.5·N (N of the same scale), so adjacent cos ≈ 1/√(1 + 0.25) ≈ 0.89 there
  and ≈ 0 elsewhere (independent draws);
- every family's weights are multiplied by a common smooth depth profile
  s(L) = exp(0.8·sin(π L / 23)), so all log-norm tracks share one mode across depth.
`adjacent-far-from-null` must be SUPPORTED in C for every projection family, and
`scale-schedule-low-dim` SUPPORTED; the random-init twin has neither.

Strength (``synthetic:planted-adjacent?strength=s&seed=n``, s in [0, 1], default 1 = the control
above): the copy's noise ratio is 0.5/s, W_{L+1} = (W_L + (0.5/s)·N)/√(1 + (0.5/s)²), so
adjacent cos ≈ 1/√(1 + 0.25/s²) in C (0.89 at s = 1, 0.71 at 0.5, 0.45 at 0.25), and the
depth-profile amplitude is 0.8·s; s = 0 is the plain random init. ``chain=0`` leaves out the
phase-C copies (the depth profile alone): a copy chain makes each family's norms in C a random
walk, independent between families, which the scale claim's per-family shuffle null reads as a
shared profile even at tiny s — its power is measured without it. The benchmarks' power curves
(`benchmarks/calibration.py`) sweep s over seeds.
"""

from __future__ import annotations

import math

import torch

from probes.synthetic import SyntheticSpec, register
from probes.synthetic.base import random_state_dict, tiny_config

_PREFIX = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
           "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
           "down_proj": "mlp.down_proj"}
PLANTED_PHASE = range(4, 12)  # phase C of a 24-layer model under the fractional map


def depth_profile(layer: int, num_layers: int, amplitude: float = 0.8) -> float:
    return math.exp(amplitude * math.sin(math.pi * layer / (num_layers - 1)))


@register("planted-adjacent")
def planted_adjacent(strength: float = 1.0, seed: int = 11, chain: int = 1) -> SyntheticSpec:
    num_layers = 24
    config = tiny_config("llama", num_layers=num_layers)
    state = random_state_dict(config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    amplitude = 0.8 * strength
    for fam, path in _PREFIX.items():
        names = [f"model.layers.{L}.{path}.weight" for L in range(num_layers)]
        for L in PLANTED_PHASE:
            if L - 1 in PLANTED_PHASE and strength > 0 and chain:
                prev = state[names[L - 1]]
                noise = torch.randn(prev.shape, generator=gen) * prev.std()
                ratio = 0.5 / strength
                state[names[L]] = (prev + ratio * noise) / math.sqrt(1 + ratio ** 2)
        for L in range(num_layers):
            state[names[L]] = state[names[L]] * depth_profile(L, num_layers, amplitude)
    for L in range(num_layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"model.layers.{L}.{norm}.weight"] = state[f"model.layers.{L}.{norm}.weight"] \
                * depth_profile(L, num_layers, amplitude)
    return SyntheticSpec(config, state, f"llama, 24 layers: phase C (4-11) projections are "
                         f"continued copies plus noise (adjacent cos ≈ "
                         f"{strength / math.sqrt(strength ** 2 + 0.25):.2f}); every family "
                         f"scaled by one smooth depth profile (amplitude {amplitude:.2f})",
                         meta={"strength": strength, "seed": seed})
