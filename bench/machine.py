"""What a benchmark ran on, printed beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform's description."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform's description below is the best there is
    return platform.processor() or platform.machine()


def cpu_flag_set() -> set[str] | None:
    """Every flag Linux lists for the CPU in /proc/cpuinfo (none on a CPU whose lines name none, e.g. ARM's
    "Features"); None without /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def cpu_flags() -> str:
    """The CPU flags that decide which kernels and precisions pay (AVX2/FMA, AVX-512 and its bf16/VNNI, AMX)."""
    flags = cpu_flag_set()
    if flags is None:
        return "(no /proc/cpuinfo)"
    wanted = sorted({f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")})
    # /proc/cpuinfo lists the CPU's own flags; under bench/avx2only.sh the libraries see AVX2 only: say so.
    seen = torch.backends.cpu.get_cpu_capability()
    held = f" (the libraries see {seen} only: bench/avx2only.sh)" if "avx2only" in os.environ.get("LD_PRELOAD", "") else ""
    return (" ".join(wanted) or "(no AVX2/AVX-512/AMX flags)") + held


def describe(device: torch.device | str = "cpu") -> str:
    """One line: the accelerator when there is one, the CPU, cores and torch threads."""
    device = torch.device(device)
    gpu = f"{torch.cuda.get_device_name(device)} (CUDA), " if device.type == "cuda" else ""
    return (f"{gpu}CPU: {cpu_model()}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads")
