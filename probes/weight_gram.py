"""One streamed pass over a family's weights: the exact L×L Gram of flattened layers.

For family f with per-layer tensors W_0 … W_{L−1} (flattened to vectors of n entries) this
computes G[i, j] = ⟨W_i, W_j⟩ and s[i] = Σ_k W_i[k] (float64). Everything the adjacent and
scale probes report follows from (G, s, n): norms ‖W_i‖ = √G[i, i], cosines, and the exact
moments of the entry-permutation null.

Memory: rows are read in chunks across all layers (``Model.weight_rows``), so at most
``budget_bytes`` of float32 weights are alive at once, whatever the model's size; the model is
read exactly once per family. Precision: float32 products in blocks of 2¹⁶ entries, summed in
float64; the error reaches ≈ 7e-6 of the reported scale ‖W_i‖‖W_j‖ at 8 layers of 2²⁰ entries
(``benchmarks/precision.py``; bounded at 1e-5 by ``tests/test_bf16_choice.py``), still well
below the 1e-4 the tests demand of the cosines.
"""

from __future__ import annotations

import numpy as np
import torch

from .models.base import Model
from .progress import progress

BLOCK = 1 << 16
DEFAULT_BUDGET = 256 << 20


def family_gram(model: Model, family: str, budget_bytes: int = DEFAULT_BUDGET,
                device: str = "cpu") -> dict[str, np.ndarray] | None:
    """``{"gram": (L, L), "sums": (L,), "n": int}`` for ``family``, or None if the model lacks it.

    A family whose shape differs across layers is treated as absent (None)."""
    num_layers = model.layout.num_layers
    shapes = {model.shape(layer, family) for layer in range(num_layers)}
    if None in shapes or len(shapes) != 1:
        return None
    shape = shapes.pop()
    rows = shape[0]
    row_len = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    chunk_rows = max(1, budget_bytes // (4 * num_layers * row_len))
    gram = torch.zeros(num_layers, num_layers, dtype=torch.float64, device=device)
    sums = torch.zeros(num_layers, dtype=torch.float64, device=device)
    buf = torch.empty(num_layers, chunk_rows * row_len, dtype=torch.float32, device=device)
    bar = progress(rows * num_layers, f"Gram pass {family}", unit="row", unit_scale=True)
    for start in range(0, rows, chunk_rows):
        stop = min(rows, start + chunk_rows)
        x = buf[:, : (stop - start) * row_len]
        for layer in range(num_layers):
            model.read_rows_into(layer, family, start, stop, x[layer])
        g, s_ = _blocked_gram_and_sums(x)
        gram += g
        sums += s_
        bar.update((stop - start) * num_layers)
    bar.close()
    return {"gram": gram.cpu().numpy(), "sums": sums.cpu().numpy(),
            "n": int(rows * row_len)}


def _blocked_gram_and_sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x xᵀ, row sums of x): float32 products and sums over blocks of BLOCK columns,
    accumulated in float64 (no float64 copy of x is made)."""
    num_layers, m = x.shape
    full = (m // BLOCK) * BLOCK
    gram = torch.zeros(num_layers, num_layers, dtype=torch.float64, device=x.device)
    sums = torch.zeros(num_layers, dtype=torch.float64, device=x.device)
    if full:
        xb = x[:, :full].reshape(num_layers, -1, BLOCK).transpose(0, 1)  # (nb, L, BLOCK)
        gram += torch.bmm(xb, xb.transpose(1, 2)).sum(dim=0, dtype=torch.float64)
        sums += xb.sum(dim=2).sum(dim=0, dtype=torch.float64)
    if full < m:
        rest = x[:, full:]
        gram += (rest @ rest.T).double()
        sums += rest.sum(dim=1).double()
    return gram, sums
