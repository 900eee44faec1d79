"""probes.machine: the CPU named from /proc/cpuinfo (family and model name the
microarchitecture where a VM shows only "AMD EPYC"), as benchmarks and reports print it."""

import pytest

from probes import machine

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16
"""


def _cpu(vendor, family, model, name, flags):
    return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
            f"model name\t: {name}\nflags\t\t: {flags}\n")


@pytest.mark.parametrize("text,arch,units", [
    (ZEN5, "Zen 5", ["avx512_bf16"]),
    (_cpu("AuthenticAMD", 25, 17, "AMD EPYC", "avx2 avx512f avx512_bf16"), "Zen 4", ["avx512_bf16"]),
    (_cpu("AuthenticAMD", 25, 1, "AMD EPYC 7B13", "avx2"), "Zen 3", []),
    (_cpu("AuthenticAMD", 23, 49, "AMD EPYC 7B12", "avx2"), "Zen 2", []),
    (_cpu("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8481C",
          "avx512f avx512_bf16 amx_tile amx_bf16"), "Sapphire Rapids", ["amx_bf16", "avx512_bf16"]),
    (_cpu("GenuineIntel", 6, 85, "Intel(R) Xeon(R) CPU @ 2.20GHz", "avx512f"),
     "Skylake-SP/Cascade Lake", []),
    (_cpu("GenuineIntel", 6, 151, "12th Gen Intel(R) Core(TM) i7", "avx2"), None, []),
])
def test_family_and_model_name_the_microarchitecture(text, arch, units):
    info = machine.cpu_info(text, cores=2)
    assert info["microarchitecture"] == arch
    assert info["bf16_units"] == units
    line = machine.cpu_description(info)
    assert line.startswith(info["name"] + f" (family {info['family']} model {info['model']}")
    assert (f": {arch})" in line) if arch else line.startswith(
        f"{info['name']} (family {info['family']} model {info['model']}), ")
    assert line.endswith(", 2 cores, " + ("/".join(units) or "no bf16 units"))


def test_only_the_first_processor_is_read():
    text = ZEN5 + "\n" + _cpu("GenuineIntel", 6, 143, "Intel Xeon", "amx_bf16")
    assert machine.cpu_info(text, cores=1)["family"] == 26
    assert machine.cpu_description(machine.cpu_info(text, cores=1)) == \
        "AMD EPYC (family 26 model 2: Zen 5), 1 core, avx512_bf16"


def test_without_cpuinfo_fields_the_line_says_what_is_known():
    info = machine.cpu_info("", cores=4)
    assert info["family"] is None and info["microarchitecture"] is None
    assert machine.cpu_description(info).endswith(", 4 cores, no bf16 units")
