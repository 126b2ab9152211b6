"""The machine a benchmark ran on, printed with its table: the CPU model and the instruction sets
that decide what reduced precision pays there (AMX multiplies bf16 and int8 tiles; AVX-512 BF16
has bf16 dot products; VNNI has int8 dot products). Timings from different machines are not
comparable without it: the project's machines change from session to session.

Run as a script, it also measures what one matrix product of Transformer size (1500 x 768 x 3072,
base's feed-forward on 30 s) reaches through each path our models use: float32 through MKL
(PyTorch's default) and through oneDNN, bf16, and int8 (torch._int_mm):

    python benchmarks/machine.py [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from wav2vec2.kernels import onednn_linear
from wav2vec2.precision import cpu_flags, cpuinfo_field

# What each column means -> the Linux flags (`lscpu`, /proc/cpuinfo) that provide it.
ISA = {
    "AMX": ("amx_bf16", "amx_int8"),
    "AVX-512 BF16": ("avx512_bf16",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "AVX-512": ("avx512f",),
}


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (platform.processor() elsewhere)."""
    return cpuinfo_field(("model name",)) or platform.processor() or platform.machine() or "unknown CPU"


def describe_machine() -> str:
    """One line: CPU model, cores, the ISA flags present, and PyTorch's kernels."""
    flags = cpu_flags()
    present = ", ".join(f"{name} {'+'.join(f for f in wanted if f in flags) or 'no'}" for name, wanted in ISA.items())
    return (f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {present}; "
            f"torch kernels {torch.backends.cpu.get_cpu_capability()}")


def product_rates(threads: int, repeats: int, shape: tuple[int, int, int] = (1500, 768, 3072)) -> dict[str, float]:
    """Best-of-`repeats` GFLOP/s (GOP/s for int8) of one (m, k) x (k, n) product per path."""
    torch.set_num_threads(threads)
    m, k, n = shape
    x, w = torch.randn(m, k), torch.randn(n, k) / k ** 0.5
    xb, wb = x.bfloat16(), w.bfloat16()
    xq, wq = torch.randint(-127, 128, (m, k), dtype=torch.int8), torch.randint(-127, 128, (k, n), dtype=torch.int8)
    paths = {"float32, MKL (torch default)": lambda: torch.nn.functional.linear(x, w),
             "float32, oneDNN": lambda: onednn_linear(x, w, None),
             "bf16": lambda: torch.nn.functional.linear(xb, wb),
             "int8 (torch._int_mm)": lambda: torch._int_mm(xq, wq)}
    rates = {}
    for name, product in paths.items():
        product()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * m * k * n / best / 1e9
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description="The machine, and what its matrix products reach per path.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed products per path, best kept (default: 20)")
    args = parser.parse_args()
    print(describe_machine())
    print(f"\n1500 x 768 x 3072, {args.threads} thread(s), best of {args.repeats}\n")
    print("| path | GFLOP/s |\n|---|---|")
    for name, rate in product_rates(args.threads, args.repeats).items():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
