"""CPU classes: what int8 speed and exactness depend on, detected once and recordable with every result.

Latency and int8 behaviour are properties of a CPU class, not of a model: results carry the class
they were measured on, and nothing is compared across classes.

Owns: the CPU class (detected from /proc/cpuinfo, or ``DETZOO_CPU_CLASS``), the machine facts
recorded with results and the line on int8 vs fp32 speed. Does not touch: timing (callers
measure), files, models.
"""

from __future__ import annotations

import platform
from pathlib import Path

from detzoo.errors import DetzooError

CPU_CLASS_ENV = "DETZOO_CPU_CLASS"
CPU_CLASSES = {  # what int8 speed and exactness depend on
    "vnni": "x86 with an int8 dot product (AVX-512 VNNI, AVX-VNNI or AMX): u8 x s8 sums in int32",
    "avx512": "x86 AVX-512 without VNNI: u8 x s8 pairs summed in saturating int16 (VPMADDUBSW)",
    "avx2": "x86 AVX2 without VNNI: u8 x s8 pairs summed in saturating int16 (VPMADDUBSW)",
    "arm": "ARM: int8 products widened before they are summed",
    "other": "neither x86 with AVX2 nor ARM",
}
# The instruction a class lacks for fast int8, for the one line that says why int8 is not faster.
MISSING_INT8 = {"avx512": "AVX-512 VNNI (VPDPBUSD)", "avx2": "AVX-VNNI or AVX-512 VNNI (VPDPBUSD)"}


def _cpu_facts() -> tuple[str, set]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return model, flags


def detected_cpu_class(flags: set, machine: str | None = None) -> str:
    machine = (machine or platform.machine()).lower()
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
        return "vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    if machine.startswith(("arm", "aarch64")):
        return "arm"
    return "other"


def cpu_class() -> str:
    """This machine's CPU class, or the one ``DETZOO_CPU_CLASS`` forces (tests, cross-class planning)."""
    import os

    forced = os.environ.get(CPU_CLASS_ENV)
    if forced is not None:
        if forced not in CPU_CLASSES:
            raise DetzooError(f"{CPU_CLASS_ENV}={forced!r} is not a CPU class; expected one of "
                              f"{', '.join(CPU_CLASSES)}")
        return forced
    return detected_cpu_class(_cpu_facts()[1])


def machine_info() -> dict:
    """CPU model, class and the instruction-set flags int8 speed depends on."""
    import os

    model, flags = _cpu_facts()
    cls = cpu_class()
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return {"cpu": model, "cpu_count": os.cpu_count(), "flags": [f for f in wanted if f in flags],
            "cpu_class": cls, "cpu_class_forced": os.environ.get(CPU_CLASS_ENV) is not None,
            "int8_dot_product": cls == "vnni", "platform": platform.platform()}



NOT_FASTER = 0.95   # int8/fp32 p50 at or above this reads "not faster" (a shared core's timing noise is ~5%)


def speed_line(speed: dict) -> str:
    """The one line on int8 against fp32 on the CPU that measured it, naming the missing instruction."""
    cls, ratio = speed["cpu_class"], speed["ratio"]
    where = f"on this CPU ({cls}): p50 {speed['int8_ms']:.1f} vs {speed['fp32_ms']:.1f} ms"
    if ratio >= NOT_FASTER and cls in MISSING_INT8:
        return f"int8 is not faster than fp32 {where}; this CPU lacks {MISSING_INT8[cls]}"
    if ratio >= NOT_FASTER:
        return f"int8 is not faster than fp32 {where}"
    return f"int8 runs at {ratio:.2f}x fp32's latency {where}"
