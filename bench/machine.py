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


def describe(device: torch.device | str = "cpu") -> str:
    """One line: the accelerator when there is one, the CPU, cores and torch threads."""
    device = torch.device(device)
    gpu = f"{torch.cuda.get_device_name(device)} (CUDA), " if device.type == "cuda" else ""
    return (f"{gpu}CPU: {cpu_model()}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads")
