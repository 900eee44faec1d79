"""Is bf16 worth it for the weight Gram and head-metric passes on this CPU? Prints the figures.

    python -m benchmarks.precision

1. The CPU's bf16 instructions (``avx512_bf16`` / ``amx_bf16`` in /proc/cpuinfo).
2. torch GEMM GFLOP/s in float32 and bf16 at the passes' shapes (Qwen3-4B: hidden 2560,
   head_dim 128; the Gram pass's L × block products with L = 36).
3. The error against float64 of the same quantities with bf16 inputs — exact for a bf16
   checkpoint — as torch computes them on a CPU: float32 accumulation inside the GEMM, but the
   *output rounded to bf16* (torch has no bf16 × bf16 → float32 matmul on CPU: ``mm.dtype`` is
   CUDA-only), each relative to the scale the probes report (‖W_a‖‖W_b‖, ‖g_a‖‖g_b‖). The
   issue's bound is 1e-5 of that scale.
"""

from __future__ import annotations

import time

import torch

from probes.head_metric import block_inner
from probes.machine import cpu_description


def flags() -> list[str]:
    try:
        text = open("/proc/cpuinfo").read(1 << 16)
    except OSError:
        return []
    return sorted({f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in text.split()})


def gflops(m, k, n, dtype, reps=3):
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def gram_error(num_layers=36, entries=1 << 22, block=1 << 16):
    """The weight Gram pass's blocked product x xᵀ (blocks of 2¹⁶ entries summed in float64)."""
    x = torch.randn(num_layers, entries).bfloat16()
    ref = x.double() @ x.double().T
    xb = x.reshape(num_layers, -1, block).transpose(0, 1)
    out = {}
    for name, dt in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        y = xb.to(dt)
        g = torch.bmm(y, y.transpose(1, 2)).double().sum(0)
        scale = torch.sqrt(torch.outer(ref.diagonal(), ref.diagonal()))
        out[name] = float(((g - ref).abs() / scale).max())
    return out


def head_error(hidden=2560, hd=128, heads=32, kv=8, layers=2, correlated=True):
    """The head metric's ⟨g_a,h, g_b,h⟩ (block_inner) with bf16 inputs/outputs vs float64."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(heads, layers, hd, hidden, generator=g)
    k = torch.randn(kv, layers, hd, hidden, generator=g)
    if correlated:  # trained-like: layer b ≈ layer a (adjacent layers share structure)
        q[:, 1] = q[:, 0] + 0.3 * q[:, 1]
        k[:, 1] = k[:, 0] + 0.3 * k[:, 1]
    q, k = q.bfloat16().float(), k.bfloat16().float()
    ref = block_inner(q.double(), k.double(), q[:, 1].double(), k[:, 1].double())
    norm = lambda i: block_inner(q[:, i:i + 1].double(), k[:, i:i + 1].double(),  # noqa: E731
                                 q[:, i].double(), k[:, i].double())[0]
    scale = torch.sqrt(norm(0) * norm(1))
    out = {}
    for name, dt in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        got = block_inner(q.to(dt), k.to(dt), q[:, 1].to(dt), k[:, 1].to(dt))
        out[name] = float(((got - ref).abs() / scale).max())
    return out


def main():
    print(f"CPU: {cpu_description()}")
    print("CPU bf16 flags:", ", ".join(flags()) or "none")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for label, shape in (("head metric q·qᵀ block (4096 × 2560 × 128)", (4096, 2560, 128)),
                         ("square 4096 × 2560 × 4096", (4096, 2560, 4096)),
                         ("weight Gram block (36 × 65536 × 36)", (36, 65536, 36))):
        f32, bf = gflops(*shape, torch.float32), gflops(*shape, torch.bfloat16)
        print(f"{label}: float32 {f32:.0f} GFLOP/s, bf16 {bf:.0f} GFLOP/s ({bf / f32:.2f}×)")
    for label, fn in (("weight Gram (36 layers, 4 M entries)", gram_error),
                      ("head metric ⟨g_a,h, g_b,h⟩, correlated layers", head_error)):
        err = fn()
        print(f"{label}: max error / scale: float32 {err['float32']:.1e}, "
              f"bf16 (bf16 output) {err['bf16']:.1e}  (bound 1e-5)")


if __name__ == "__main__":
    main()
