"""Planted-structure control for the residual-stream claims (SPEC §9).

`planted-residual` (llama, 24 layers, hidden 64 → fractional phases A 0-2, B 3, C 4-11,
D 12-17, E 18-22, tail 23). Structure is planted in the output projections (o_proj, down_proj:
the only weights that write into the residual stream), so a real forward pass produces it:
- phase C: both output projections of every layer are projected onto one shared 2-dimensional
  subspace U of the stream (W ← U Uᵀ W, rescaled by √(d/2) to keep the update's size), so every
  C layer's update lies in span(U): LOO capture ≈ 1 and top-1 |cos| high inside C
  (`phase-C-shared-subspace`);
- phase E: layer L's output projections write only along its own direction e_L (W ← e_L e_Lᵀ W,
  rescaled by √d), the e_L orthonormal and orthogonal to U: E's top-1 directions are mutually
  orthogonal (block effective rank = 5 = #layers) while C shares one subspace
  (`phase-E-specialized`);
- layers 12-22 (second half of depth, the last layer excluded): output projections × 0.1, so
  their updates — and the angular steps they cause — are ~10× smaller than the first half's
  (`late-layers-change-least`).
The random-init twin `random:synthetic:planted-residual` has the same config and none of these.

Strength (``synthetic:planted-residual?strength=s&seed=n``, s in [0, 1], default 1 = the
control above): each planted output projection is (1 − s)·W + s·W_planted (W the random init,
W_planted the projected and rescaled one above), and the second half's scale is 1 − 0.9·s;
s = 0 is the plain random init.
"""

from __future__ import annotations

import math

import torch

from probes.synthetic import SyntheticSpec, register
from probes.synthetic.base import random_state_dict, tiny_config

NUM_LAYERS = 24
HIDDEN = 64
SHARED_LAYERS = range(4, 12)      # phase C
SPECIALIZED_LAYERS = range(18, 23)  # phase E
SMALL_LAYERS = range(12, 23)      # second half of depth, last layer (23) excluded
SHARED_RANK = 2
SMALL_SCALE = 0.1
_WRITERS = ("self_attn.o_proj", "mlp.down_proj")


def _mix(w: torch.Tensor, planted: torch.Tensor, strength: float) -> torch.Tensor:
    return planted if strength == 1 else (1 - strength) * w + strength * planted


@register("planted-residual")
def planted_residual(strength: float = 1.0, seed: int = 23) -> SyntheticSpec:
    config = tiny_config("llama", num_layers=NUM_LAYERS, hidden=HIDDEN)
    state = random_state_dict(config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    small = SMALL_SCALE if strength == 1 else 1 - (1 - SMALL_SCALE) * strength
    basis, _ = torch.linalg.qr(torch.randn(HIDDEN, SHARED_RANK + len(SPECIALIZED_LAYERS),
                                           generator=gen))
    shared = basis[:, :SHARED_RANK]                       # d × 2, orthonormal
    own = {L: basis[:, SHARED_RANK + i:SHARED_RANK + i + 1]  # d × 1, orthogonal to shared
           for i, L in enumerate(SPECIALIZED_LAYERS)}
    for L in range(NUM_LAYERS):
        for writer in _WRITERS:
            name = f"model.layers.{L}.{writer}.weight"
            w = state[name]
            if L in SHARED_LAYERS:
                w = _mix(w, shared @ (shared.T @ w) * math.sqrt(HIDDEN / SHARED_RANK), strength)
            elif L in SPECIALIZED_LAYERS:
                w = _mix(w, own[L] @ (own[L].T @ w) * math.sqrt(HIDDEN), strength)
            if L in SMALL_LAYERS:
                w = w * small
            state[name] = w.contiguous()
    return SyntheticSpec(config, state,
                         "llama, 24 layers, hidden 64: phase C (4-11) writes into one shared "
                         "2-d subspace; phase E (18-22) layers each write along their own "
                         "orthogonal direction; layers 12-22 write 10x smaller updates"
                         + (f" (strength {strength:g})" if strength != 1 else ""),
                         meta={"strength": strength, "seed": seed})
