"""The gauge probe's cost model: seconds per adjacent pair, printed before the probe starts.

What is counted (``probes.gauge`` streams the layers; the figures follow its work). Per layer: a
Gram + Cholesky per family with n > hidden (the compact factor). Per pair and family:
(1 + draws) × (one product, one Gram, one eigensolve of size min(n, hidden)); for the MLP
(1 + perm draws) × (similarity GEMM 2·ff²·k·hidden — k = 3 MLP families, 2 without a gate —,
top-k, sparse matching or exact assignment: ``probes.assignment``), plus one exact sub-problem
of ``GAP_CHECK`` neurons per pair above the exact size. Above ``EXACT_ASSIGNMENT_MAX`` neurons
the MLP families' orthogonal alignment is not computed, so it costs nothing.

How. FLOP counts over this machine's unit rates (:func:`machine_rates`, measured once per
device, ≈ 0.3 s on an idle machine): GEMM GFLOP/s (float32 and bf16), an eigensolve scaled as
n³, the exact assignment scaled as n^2.5 (the measured growth from 2048 to 9728 random
neurons), the top-k rate per similarity entry. These are estimates, not measurements of the probe: the printed total
assumes the fewest null draws the probe allows (``MIN_NULL_DRAWS``); the adaptive null may add
draws.
"""

from __future__ import annotations

import functools
import time
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from . import assignment
from .gauge import MIN_NULL_DRAWS, MLP_FAMILIES, mlp_families
from .models.base import GAUGE_FAMILIES, INTERNAL_SIDE


@functools.lru_cache(maxsize=4)
def machine_rates(device: str = "cpu") -> dict:
    """Measured unit rates of this machine (≈ 0.3 s idle): float32 and bf16 GEMM GFLOP/s, float32
    eigvalsh seconds at 512 (measured at 1024, scaled as n³), assignment seconds at 512 (exact: scaled as n^2.5,
    the measured growth from 2048 to 9728 random neurons on this CPU)."""
    dev = torch.device(device)

    def timed(fn, reps=3):
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 1024, generator=g).to(dev)
    xb = x.bfloat16()
    f32 = 2 * 1024 ** 3 / timed(lambda: x @ x) / 1e9
    bf16 = 2 * 1024 ** 3 / timed(lambda: xb @ xb) / 1e9 if assignment._bf16_fast(dev) else f32
    sym = x @ x.T
    eig512 = timed(lambda: torch.linalg.eigvalsh(sym), 2) / 8  # measured at 1024, scaled n³
    sim = np.random.default_rng(0).standard_normal((512, 512))
    lsa512 = timed(lambda: linear_sum_assignment(sim), 2)
    blk = torch.randn(assignment.SIM_BLOCK, 4096, generator=g).to(dev)
    k = assignment.CANDIDATES
    topk = timed(lambda: (blk.topk(k, dim=1), blk.topk(k, dim=0)), 2) / blk.numel()
    return {"gemm_f32_gflops": f32, "gemm_bf16_gflops": bf16, "eig512_s": eig512,
            "lsa512_s": lsa512, "topk_s_per_entry": topk}


def estimate(shapes: Mapping[str, tuple[int, int]], num_layers: int, device: str = "cpu",
             draws: int = MIN_NULL_DRAWS, perm_draws: int = MIN_NULL_DRAWS,
             bf16: bool = True, rates: Mapping | None = None) -> pd.DataFrame:
    """The probe's cost model: seconds per adjacent pair for each family (rows) in four parts —
    ``factor`` (one layer's Gram + Cholesky, counted once per layer), ``observed`` and ``null``
    nuclear norms (one product, Gram and eigensolve each; ``draws`` null draws) and, for the MLP,
    ``assignment`` (similarity GEMM, top-k and sparse matching, or the exact solver; shared by
    gate/up/down — up/down without a gate —, booked on the first; ``perm_draws`` null draws). ``shapes`` are HF ``[out, in]``
    per family. Figures are FLOP counts over this machine's measured rates (:func:`machine_rates`),
    so they are estimates: the printed total assumes the fewest draws the null allows."""
    r = dict(rates or machine_rates(device))
    f32 = r["gemm_f32_gflops"] * 1e9
    eig = lambda k: r["eig512_s"] * (k / 512) ** 3  # noqa: E731
    rows = {}
    ff = None
    for fam, (out_, in_) in shapes.items():
        n, m = (in_, out_) if INTERNAL_SIDE[fam] == "cols" else (out_, in_)
        if fam in MLP_FAMILIES:
            ff = n
        k = min(n, m)
        orth = fam not in MLP_FAMILIES or n <= assignment.EXACT_ASSIGNMENT_MAX
        factor = (2 * n * m * m / f32 + eig(m) / 3) if (orth and n > m) else 0.0
        one = (2 * k * k * m + 2 * k ** 3) / f32 + eig(k) if orth else 0.0
        rows[fam] = {"factor": factor, "observed": one, "null": one * draws, "assignment": 0.0}
    mlp = mlp_families(shapes)
    if ff is not None and mlp:
        h = min(shapes["up_proj"])
        rate = (r["gemm_bf16_gflops"] if bf16 else r["gemm_f32_gflops"]) * 1e9
        gemm = 2 * ff * ff * len(mlp) * h / rate
        if ff <= assignment.EXACT_ASSIGNMENT_MAX:
            match = r["lsa512_s"] * (ff / 512) ** 2.5
        else:  # row and column top-k over the ff² similarity, LAPJVsp on ≈ 2·k·ff edges
            # (0.2 s for 350 k edges measured here), the merge of the column candidates
            match = (r.get("topk_s_per_entry", 1.5e-8) * ff * ff * 1.2
                     + 6e-7 * 2 * assignment.CANDIDATES * ff)
            match += r["lsa512_s"] * (assignment.GAP_CHECK / 512) ** 2.5 / (1 + perm_draws)
        rows[mlp[0]]["assignment"] = (gemm + match) * (1 + perm_draws)
    df = pd.DataFrame(rows).T
    df["per_pair"] = df[["observed", "null", "assignment"]].sum(axis=1) + df["factor"]
    df.attrs["pairs"] = max(num_layers - 1, 0)
    df.attrs["total_s"] = float(df["per_pair"].sum() * df.attrs["pairs"] + df["factor"].sum())
    return df


def describe_estimate(df: pd.DataFrame, label: str = "gauge") -> str:
    """One line for the terminal: total and the parts, summed over pairs and families."""
    p = df.attrs["pairs"]
    parts = {c: float(df[c].sum() * p) for c in ("factor", "observed", "null", "assignment")}
    return (f"{label}: estimated {df.attrs['total_s'] / 60:.1f} min for {p} adjacent pairs × "
            f"{len(df)} families (factors {parts['factor']:.0f} s, observed {parts['observed']:.0f} s, "
            f"null {parts['null']:.0f} s, assignment {parts['assignment']:.0f} s)")


def model_shapes(model) -> dict[str, tuple[int, int]]:
    """HF ``[out, in]`` shape of each gauge family of layer 0 (read from headers)."""
    out = {}
    for f in GAUGE_FAMILIES:
        if f in model.families:
            s = model.shape(0, f)
            if s is not None:
                out[f] = tuple(int(x) for x in s)
    return out
