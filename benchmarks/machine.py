"""The machine a benchmark ran on, printed with its table: the CPU model and the instruction sets
that decide what reduced precision pays there (AMX multiplies bf16 and int8 tiles; AVX-512 BF16
has bf16 dot products; VNNI has int8 dot products). Timings from different machines are not
comparable without it: the project's machines change from session to session.
"""

from __future__ import annotations

import os
import platform

import torch

from wav2vec2.precision import cpu_flags

# What each column means -> the Linux flags (`lscpu`, /proc/cpuinfo) that provide it.
ISA = {
    "AMX": ("amx_bf16", "amx_int8"),
    "AVX-512 BF16": ("avx512_bf16",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "AVX-512": ("avx512f",),
}


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_machine() -> str:
    """One line: CPU model, cores, the ISA flags present, and PyTorch's kernels."""
    flags = cpu_flags()
    present = ", ".join(f"{name} {'+'.join(f for f in wanted if f in flags) or 'no'}" for name, wanted in ISA.items())
    return (f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {present}; "
            f"torch kernels {torch.backends.cpu.get_cpu_capability()}")
