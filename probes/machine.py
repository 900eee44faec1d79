"""The machine a figure was measured on, in words: the CPU's name, its x86 family and model
(which name the microarchitecture: virtual machines often show only "AMD EPYC"), the cores this
process may use, and the bf16 units the forward's dtype choice depends on.

Benchmarks print :func:`cpu_description` beside their figures and the verdict report records it
(``run.machine``): speeds measured on an AMD EPYC Zen 4 and on an Intel Xeon with AMX are not
comparable, and a tolerance that held on one may not on the other.
"""

from __future__ import annotations

import platform

# (vendor, family, first model, last model) -> microarchitecture; x86 family/model as Linux
# prints them in /proc/cpuinfo (decimal). Only what the numbers name unambiguously.
MICROARCHITECTURES = [
    ("AuthenticAMD", 23, 0x00, 0x2F, "Zen/Zen+"),
    ("AuthenticAMD", 23, 0x30, 0xFF, "Zen 2"),
    ("AuthenticAMD", 25, 0x00, 0x0F, "Zen 3"),
    ("AuthenticAMD", 25, 0x10, 0x1F, "Zen 4"),
    ("AuthenticAMD", 25, 0x20, 0x5F, "Zen 3"),
    ("AuthenticAMD", 25, 0x60, 0x7F, "Zen 4"),
    ("AuthenticAMD", 25, 0xA0, 0xAF, "Zen 4"),
    ("AuthenticAMD", 26, 0x00, 0xFF, "Zen 5"),
    ("GenuineIntel", 6, 0x55, 0x55, "Skylake-SP/Cascade Lake"),
    ("GenuineIntel", 6, 0x6A, 0x6A, "Ice Lake-SP"),
    ("GenuineIntel", 6, 0x6C, 0x6C, "Ice Lake-SP"),
    ("GenuineIntel", 6, 0x8F, 0x8F, "Sapphire Rapids"),
    ("GenuineIntel", 6, 0xAD, 0xAD, "Granite Rapids"),
    ("GenuineIntel", 6, 0xCF, 0xCF, "Emerald Rapids"),
]


def _read_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def cpu_info(cpuinfo: str | None = None, cores: int | None = None) -> dict:
    """``name``, ``vendor``, ``family``, ``model``, ``microarchitecture`` (None where the table
    above does not name it), ``cores`` (this process's CPU affinity) and ``bf16_units`` of the
    first processor in ``/proc/cpuinfo`` (or ``cpuinfo``); elsewhere what ``platform`` says."""
    from .forward_dtype import cpu_bf16_units
    from .small_lapack import available_cores
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            if fields:
                break          # the first processor's block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())

    def number(key):
        value = fields.get(key, "")
        return int(value) if value.isdigit() else None

    vendor, family, model = fields.get("vendor_id"), number("cpu family"), number("model")
    arch = next((name for v, fam, lo, hi, name in MICROARCHITECTURES
                 if v == vendor and fam == family and model is not None and lo <= model <= hi),
                None)
    return {"name": fields.get("model name") or platform.processor() or "unknown CPU",
            "vendor": vendor, "family": family, "model": model, "microarchitecture": arch,
            "cores": available_cores() if cores is None else cores,
            "bf16_units": (cpu_bf16_units(fields.get("flags", "")) if text is not None
                           else cpu_bf16_units())}


def cpu_description(info: dict | None = None) -> str:
    """One line, e.g. ``AMD EPYC (family 26 model 2: Zen 5), 2 cores, avx512_bf16``."""
    info = cpu_info() if info is None else info
    ident = ""
    if info.get("family") is not None and info.get("model") is not None:
        ident = f"family {info['family']} model {info['model']}"
        if info.get("microarchitecture"):
            ident += f": {info['microarchitecture']}"
        ident = f" ({ident})"
    units = "/".join(info.get("bf16_units") or []) or "no bf16 units"
    cores = info.get("cores")
    return f"{info.get('name')}{ident}, {cores} core{'s' if cores != 1 else ''}, {units}"
