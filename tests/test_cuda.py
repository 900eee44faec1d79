"""Every probe on CUDA against the same probe on CPU (SPEC §10: GPU when present).

Skipped where CUDA is absent — which, so far, is every machine this project has run on: the
CUDA paths are written and guarded but unmeasured (benchmarks/README.md). Tolerances: the
float32 paths differ by reduction order only (cuBLAS vs CPU BLAS; TF32 is off by default for
matmuls), so 1e-4 relative on every float field; the gauge's permutation alignment may pick a
different assignment on exact ties, which random tiny models do not have."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probes import adjacent, gauge, head_metric
from probes.models import open_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA absent")

TINY = ["synthetic:tiny-llama", "synthetic:tiny-qwen3", "synthetic:planted-gauge"]
REL = 1e-4


def assert_close(cpu: dict, gpu: dict, rel=REL):
    assert set(cpu) == set(gpu)
    for key, value in cpu.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            np.testing.assert_allclose(gpu[key], value, rtol=rel, atol=rel * max(
                1.0, float(np.nanmax(np.abs(value))) if np.isfinite(value).any() else 1.0),
                err_msg=key)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(gpu[key], value, err_msg=key)


@pytest.mark.parametrize("spec", TINY)
def test_adjacent_on_cuda_matches_cpu(spec):
    model = open_model(spec)
    cpu = adjacent.compute(model, device="cpu")
    assert_close(cpu, adjacent.compute(model, device="cuda"))


@pytest.mark.parametrize("spec", ["synthetic:tiny-llama", "synthetic:tiny-qwen3",
                                  "synthetic:planted-heads"])
def test_head_metric_on_cuda_matches_cpu(spec):
    model = open_model(spec)
    cpu = head_metric.compute(model, device="cpu")
    assert_close(cpu, head_metric.compute(model, device="cuda"))


@pytest.mark.parametrize("spec", TINY)
def test_gauge_on_cuda_matches_cpu(spec):
    model = open_model(spec)
    cpu = gauge.compute(model, device="cpu", null_se=0)
    gpu = gauge.compute(model, device="cuda", null_se=0)
    assert gpu["assignment"] == cpu["assignment"]
    assert_close(cpu, gpu)


@pytest.mark.slow
def test_the_default_model_gives_the_same_verdicts_on_cuda(tmp_path):
    """The README's main command on SmolLM2-135M with --device cuda and cpu: same verdicts."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    claims = ["hypotheses/test_adjacent_far_from_null.py", "hypotheses/test_scale_schedule_low_dim.py",
              "hypotheses/test_head_metric_adjacent.py", "hypotheses/test_gauge_delta_null.py"]
    docs = {}
    for dev in ("cpu", "cuda"):
        subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *claims,
                        "--no-twin", f"--device={dev}", f"--cache-dir={tmp_path / ('c-' + dev)}",
                        f"--report-dir={tmp_path / dev}"], cwd=root, capture_output=True,
                       timeout=1800, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        doc = json.loads((tmp_path / dev / "verdicts.json").read_text())
        docs[dev] = sorted(json.dumps({k: r[k] for k in ("claim", "phase", "family", "verdict")},
                                      sort_keys=True) for r in doc["records"])
    assert docs["cpu"] == docs["cuda"]
