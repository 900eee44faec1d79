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
"""

from __future__ import annotations

import math

import torch

from probes.models.base import PROJECTIONS
from probes.synthetic import SyntheticSpec, register
from probes.synthetic.base import random_state_dict, tiny_config

_PREFIX = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
           "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
           "down_proj": "mlp.down_proj"}
PLANTED_PHASE = range(4, 12)  # phase C of a 24-layer model under the fractional map


def depth_profile(layer: int, num_layers: int) -> float:
    return math.exp(0.8 * math.sin(math.pi * layer / (num_layers - 1)))


@register("planted-adjacent")
def planted_adjacent() -> SyntheticSpec:
    num_layers = 24
    config = tiny_config("llama", num_layers=num_layers)
    state = random_state_dict(config, seed=11)
    gen = torch.Generator().manual_seed(11)
    for fam, path in _PREFIX.items():
        names = [f"model.layers.{L}.{path}.weight" for L in range(num_layers)]
        for L in PLANTED_PHASE:
            if L - 1 in PLANTED_PHASE:
                prev = state[names[L - 1]]
                noise = torch.randn(prev.shape, generator=gen) * prev.std()
                state[names[L]] = (prev + 0.5 * noise) / math.sqrt(1.25)
        for L in range(num_layers):
            state[names[L]] = state[names[L]] * depth_profile(L, num_layers)
    for L in range(num_layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"model.layers.{L}.{norm}.weight"] = state[f"model.layers.{L}.{norm}.weight"] \
                * depth_profile(L, num_layers)
    return SyntheticSpec(config, state, "llama, 24 layers: phase C (4-11) projections are "
                         "continued copies plus noise (adjacent cos ≈ 0.89); every family scaled "
                         "by one smooth depth profile")
