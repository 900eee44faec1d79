"""Why the weight Gram and head-metric passes stay float32 on CPU (benchmarks/precision.py).

The issue's bound for bf16 inputs is an error ≤ 1e-5 of the reported scale against float64.
bf16 inputs are exact for a bf16 checkpoint, but torch on CPU has no bf16 × bf16 → float32
matmul (``mm.dtype`` is CUDA-only): the products come back rounded to bf16, which costs ≈ 5e-4
of the scale — 50× the bound — while float32 stays within it (3e-7 to 7e-6 measured). These tests pin both figures, so the
choice is revisited if torch gains the float32-output path."""

import torch

from benchmarks.precision import gram_error, head_error

BOUND = 1e-5


def test_float32_meets_the_bound_and_bf16_output_rounding_does_not():
    gram = gram_error(num_layers=8, entries=1 << 20)
    head = head_error(hidden=512, hd=64, heads=8, kv=2)
    for err in (gram, head):
        assert err["float32"] <= BOUND
        assert err["bf16"] > 10 * BOUND


def test_torch_cpu_has_no_float32_output_for_bf16_matmul():
    a = torch.ones(4, 4, dtype=torch.bfloat16)
    assert (a @ a).dtype == torch.bfloat16
