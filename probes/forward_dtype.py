"""Which dtype the activation probes' forward pass runs in (``--dtype {auto,float32,bfloat16}``).

What changes with the dtype
---------------------------
Only the decoder layers' own arithmetic. Under ``bfloat16`` each layer's weights are held in
bf16 and the layer runs under ``torch.autocast(dtype=bfloat16)``: its matrix products
(projections, attention, MLP) take bf16 inputs and accumulate in float32 inside the GEMM, its
norms compute in float32 (transformers' RMSNorm upcasts). The **residual stream stays float32**:
a layer reads the float32 hidden state, its bf16 branch outputs are added to it in float32
(``residual + branch`` promotes), and δ_L = h_{L+1} − h_L and every statistic are taken from
float32 states and accumulated in float32/float64 as under ``float32``. Rounding the residual
itself to bf16 (a plain bf16 model, as the research scripts ran) would put an error of
≈ 2⁻⁹‖h‖ into every δ — 10–40 % of a late layer's update, whose ‖δ‖/‖h‖ is 0.01–0.05 — so it
is not done.

``auto`` (the default)
----------------------
``bfloat16`` when the checkpoint is stored in bf16 (its config's ``dtype``/``torch_dtype``) and
the device multiplies bf16 fast: CUDA, or a CPU with AMX-BF16 or AVX512-BF16 (``/proc/cpuinfo``
flags ``amx_bf16``/``avx512_bf16``, else torch's own CPU probe) whose ATen kernels run at
their AVX-512 level. ``float32`` otherwise — on a CPU without those units torch emulates bf16
products and they run slower than float32, and with ``ATEN_CPU_CAPABILITY`` lowered (``default``,
``avx2``) torch's bf16 kernels are not vectorised. Checkpoints stored in float16 or quantized
(GGUF, dequantized to float32) run in float32.

An explicit ``bfloat16`` on a CPU with ATen below AVX-512 runs attention by SDPA's math backend:
torch's CPU flash-attention kernel sees AMX in the CPU and packs bf16 for it, which that ATen
level lacks ("pack_vnni2 is only supported when avx512 is supported", torch 2.13, sequences of
≳ 200 tokens).

How far bf16 moves each statistic, against its null's spread: ``benchmarks/README.md``
(``python -m benchmarks.bf16_effect``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import StrataError

CHOICES = ("auto", "float32", "bfloat16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class ForwardDtype:
    """The resolved choice: ``name`` (float32 | bfloat16), what was asked, and why."""

    name: str
    requested: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def record(self) -> dict:
        """What the result and the report's run metadata carry."""
        return {"dtype": self.name, "requested": self.requested, "reason": self.reason}

    def autocast(self, device: torch.device | str):
        """The context a decoder layer runs in: autocast to bf16, or nothing for float32."""
        if self.name == "float32":
            return contextlib.nullcontext()
        kind = torch.device(device).type
        cast = torch.autocast(device_type=kind, dtype=self.dtype)
        if kind != "cpu" or not aten_below_avx512():
            return cast
        from torch.nn.attention import SDPBackend, sdpa_kernel
        stack = contextlib.ExitStack()  # see the module docstring: torch's flash kernel fails here
        stack.enter_context(cast)
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return stack


def cpu_bf16_units(cpuinfo: str | None = None) -> list[str]:
    """The CPU's bf16 matrix units: the flags of ``BF16_CPU_FLAGS`` in ``/proc/cpuinfo`` (or in
    ``cpuinfo``), else what torch's own probe reports (other OSes)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read(1 << 20)
        except OSError:
            cpuinfo = None
    if cpuinfo is not None:
        words = set(cpuinfo.split())
        return [f for f in BF16_CPU_FLAGS if f in words]
    probes = {"amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
              "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None)}
    return [flag for flag, fn in probes.items() if fn is not None and fn()]


def aten_capability() -> str:
    """The level torch's own CPU kernels run at: DEFAULT, AVX2, AVX512 (``ATEN_CPU_CAPABILITY``
    lowers it below what the CPU has)."""
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return str(get()).upper() if get is not None else "AVX512"


def aten_below_avx512() -> bool:
    return not aten_capability().startswith("AVX512")


def fast_bf16(device: str) -> tuple[bool, str]:
    """(does ``device`` multiply bf16 fast, in words)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return True, "CUDA"
    if kind != "cpu":
        return False, f"device {kind}: no bf16 detection"
    units = cpu_bf16_units()
    if units and aten_below_avx512():
        return False, (f"CPU with {'/'.join(units)} but torch's kernels at {aten_capability()} "
                       "(ATEN_CPU_CAPABILITY): bf16 not vectorised")
    if units:
        return True, "CPU with " + "/".join(units)
    return False, "CPU without amx_bf16/avx512_bf16 (bf16 products are emulated, slower than float32)"


def checkpoint_dtype(config: dict) -> str | None:
    """The dtype the checkpoint declares (``dtype`` or ``torch_dtype`` of its text config)."""
    for cfg in (config.get("text_config") or {}, config):
        value = cfg.get("dtype") or cfg.get("torch_dtype")
        if value:
            return str(value).removeprefix("torch.")
    return None


def resolve(requested: str, device: str, config: dict) -> ForwardDtype:
    """The forward dtype for ``requested`` (one of :data:`CHOICES`) on ``device`` for a model
    with HF ``config``."""
    if requested not in CHOICES:
        raise StrataError(f"--dtype {requested!r}: one of {', '.join(CHOICES)}")
    fast, why = fast_bf16(device)
    if requested != "auto":
        note = "" if requested == "float32" or fast else f"; {why}"
        return ForwardDtype(requested, requested, f"asked for{note}")
    stored = checkpoint_dtype(config)
    if stored != "bfloat16":
        return ForwardDtype("float32", "auto", f"checkpoint dtype {stored or 'not declared'}")
    if not fast:
        return ForwardDtype("float32", "auto", f"bf16 checkpoint on a {why}")
    return ForwardDtype("bfloat16", "auto", f"bf16 checkpoint on {why}")
