"""Planted-structure control for the gauge-alignment claims (SPEC §5.4, §9).

`planted-gauge` (llama, 24 layers, hidden 64, 4 heads / 2 kv heads of 16, ff 128; fractional
phases A 0-2, B 3, C 4-11, D 12-17, E 18-22, tail 23): in phase E every layer after the first
is a *gauge-transformed* copy of the layer before plus noise,

    W_{L+1} = (g_L · W_L + 0.5·N) / √1.25,     N of the same scale as W_L,

where g_L is an exact symmetry of the layer's function drawn afresh per layer:
- attention: per kv head j an orthogonal A_j (head_dim) applied to the rows of k head j and
  of every q head reading it (scores qᵀk unchanged; RoPE ignored), and an orthogonal B_j
  applied to the rows of v head j and, transposed, to the o columns of the q heads reading it;
- MLP: one random neuron permutation shared by gate rows, up rows and down columns.
So the raw adjacent cos is ≈ 0 in E, while the gauge-aligned cos is ≈ 1/√1.25 ≈ 0.89, far
above the alignment's spectrum-preserving null. Phase C (and every other layer) is the
architecture's independent random init: aligned ≈ null-aligned there.
`aligned-delta-E-exceeds-C` must be SUPPORTED for every projection family; on the random-init
twin (`random:synthetic:planted-gauge`) it must not be.

Strength (``synthetic:planted-gauge?strength=s&seed=n``, s ≥ 0, default 1 = the control above):
the noise ratio is NOISE/s, so the copy's gauge-aligned cos is ≈ 1/√(1 + 0.25/s²); s = 0 is
the plain random init (no copy).
"""

from __future__ import annotations

import math

import torch

from probes.phases import default_phases
from probes.synthetic import SyntheticSpec, register
from probes.synthetic.base import random_state_dict, tiny_config

NUM_LAYERS = 24
NOISE = 0.5
SEED = 23
_PATH = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
         "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
         "down_proj": "mlp.down_proj"}


def planted_layers() -> list[int]:
    """Layers that are gauge copies of their predecessor: phase E minus its first layer."""
    e = default_phases(NUM_LAYERS)["E"]
    return [L for L in e if L - 1 in e]


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    """Haar-random orthogonal n × n (QR of a Gaussian with the sign of R's diagonal fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(torch.float32)


def gauge_transform(layer: dict[str, torch.Tensor], num_heads: int, num_kv_heads: int,
                    head_dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Apply one random exact gauge element (per-kv-head orthogonal maps on q/k and v/o, a
    shared MLP neuron permutation) to a layer's projections (HF [out, in] layout)."""
    group = num_heads // num_kv_heads
    q, k, v, o = (layer[f].clone() for f in ("q_proj", "k_proj", "v_proj", "o_proj"))
    for j in range(num_kv_heads):
        a, b = random_orthogonal(head_dim, gen), random_orthogonal(head_dim, gen)
        kv = slice(j * head_dim, (j + 1) * head_dim)
        k[kv] = a @ layer["k_proj"][kv]
        v[kv] = b @ layer["v_proj"][kv]
        for h in range(j * group, (j + 1) * group):
            hs = slice(h * head_dim, (h + 1) * head_dim)
            q[hs] = a @ layer["q_proj"][hs]
            o[:, hs] = layer["o_proj"][:, hs] @ b.T
    perm = torch.randperm(layer["gate_proj"].shape[0], generator=gen)
    return {"q_proj": q, "k_proj": k, "v_proj": v, "o_proj": o,
            "gate_proj": layer["gate_proj"][perm], "up_proj": layer["up_proj"][perm],
            "down_proj": layer["down_proj"][:, perm]}


@register("planted-gauge")
def planted_gauge(strength: float = 1.0, seed: int = SEED) -> SyntheticSpec:
    config = tiny_config("llama", num_layers=NUM_LAYERS)
    state = random_state_dict(config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    noise_ratio = NOISE / strength if strength > 0 else float("inf")
    heads, kv_heads, hd = (config["num_attention_heads"], config["num_key_value_heads"],
                           config["head_dim"])

    def name(L, fam):
        return f"model.layers.{L}.{_PATH[fam]}.weight"

    for L in (planted_layers() if strength > 0 else []):
        prev = {fam: state[name(L - 1, fam)] for fam in _PATH}
        moved = gauge_transform(prev, heads, kv_heads, hd, gen)
        for fam, w in moved.items():
            noise = torch.randn(w.shape, generator=gen) * prev[fam].std()
            state[name(L, fam)] = (w + noise_ratio * noise) / math.sqrt(1 + noise_ratio ** 2)
    first, last = planted_layers()[0] - 1, planted_layers()[-1]
    return SyntheticSpec(config, state,
                         f"llama, {NUM_LAYERS} layers: phase E ({first}-{last}) projections are "
                         f"gauge-transformed copies (per-kv-head rotations, shared MLP neuron "
                         f"permutation) of the layer before plus noise {noise_ratio:.3g}; other "
                         f"layers independent random init",
                         meta={"planted_layers": planted_layers(), "noise": noise_ratio,
                               "strength": strength, "seed": seed})
