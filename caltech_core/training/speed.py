"""How a training step runs on this device: memory format, CPU bf16 autocast, torch.compile, the CPU heap.

`choose(cfg, device)` picks a `SpeedMode` at the start of a run and the run records it (`RunResult.speed`).
On CUDA it is what the engine always did (channels_last, mixed precision when `amp`, compile when asked). On
the CPU the choice comes from `CPU_PAYS`, the modes measured side by side per architecture
(bench/cpu_training.py, docs/benchmarks.md), restricted to what this CPU supports: bf16 autocast only when
`amp` is on and oneDNN reports bf16 support (AVX-512 BF16 or AMX). Runs of a frozen backbone ("fc") and
anything not measured to pay stay eager fp32. Either way a seeded run repeats exactly; a bf16 run's curves
differ from fp32's by rounding only (tests/test_speed.py states the tolerance). A frozen-backbone run with
`int8_features` computes its features with the backbone's int8 copy on the CPU (training/int8.py), never on
CUDA; without it an EfficientNet-Lite fast path computes them through OpenVINO (training/openvino_features.py):
in bf16 on a CPU with native bf16 and `amp` on, else in fp32 where OpenVINO is installed (x86-64); the mode says
which it did.

On the CPU `prepare` also has glibc's malloc keep freed memory for reuse (`reuse_freed_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from caltech_core import settings
from caltech_core.config import TrainConfig
from caltech_core.nets.architectures import get_spec
from caltech_core.training import openvino_features
from caltech_core.training.features import fast_path_asked


@dataclass(frozen=True)
class SpeedMode:
    """How training steps run; the default is plain eager fp32."""

    channels_last: bool = False
    bf16: bool = False  # autocast to bfloat16 on the CPU (on CUDA, `amp` decides the dtype)
    compile: bool = False
    int8_features: bool = False  # the fast path's frozen features from the backbone's int8 copy (CPU)
    bf16_features: bool = False  # the fast path's frozen features in bf16 through OpenVINO (CPU)
    openvino_features: bool = False  # the fast path's frozen features in fp32 through OpenVINO (CPU)

    @property
    def label(self) -> str:
        parts = [name for name, on in (("channels_last", self.channels_last), ("bf16 autocast", self.bf16),
                                       ("torch.compile", self.compile), ("int8 features", self.int8_features),
                                       ("bf16 features", self.bf16_features),
                                       ("OpenVINO fp32 features", self.openvino_features))
                 if on]
        return " + ".join(parts) or "eager fp32"

    @property
    def openvino_precision(self) -> str | None:
        """The precision OpenVINO computes the fast path's features at ("bf16", "f32"); None: not OpenVINO."""
        return "bf16" if self.bf16_features else "f32" if self.openvino_features else None

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


EAGER = SpeedMode()

# CPU modes measured to pay, per architecture (bench/cpu_training.py, docs/benchmarks.md: AMD EPYC with
# AVX-512 BF16, 2 shared cores, ABAB rounds, two runs at different loads). channels_last + bf16 autocast:
# AlexNet 1.24x and 1.22x, ResNet-18 1.08x and 1.89x; never slower than eager fp32 in either run.
# torch.compile (1.12x / 1.35x in the first run) compiled for 115 s / 211 s: not adopted. Not listed: eager fp32.
CPU_PAYS: dict[str, SpeedMode] = {arch: SpeedMode(channels_last=True, bf16=True) for arch in ("alexnet", "resnet18")}


def cpu_bf16_supported() -> bool:
    """oneDNN runs bf16 kernels natively here (AVX-512 BF16 / AMX); elsewhere bf16 is emulated and slow."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose(cfg: TrainConfig, device: torch.device) -> SpeedMode:
    """The mode a run of `cfg` trains with on `device`."""
    if device.type == "cuda":  # int8 features are the CPU's (onnxruntime's CPU provider): fp32 here
        return SpeedMode(channels_last=True, bf16=False, compile=cfg.compile)
    if cfg.train == "fc":  # a frozen backbone: the head is all that trains, and its curves match the fast path's
        # The config allows int8 only with the fast path (onnxruntime runs it); else OpenVINO's bf16 where the CPU
        # has it, else OpenVINO's fp32 where it is installed (x86-64).
        if cfg.int8_features or not (_openvino_applies(cfg) and openvino_features.allowed()):
            return SpeedMode(int8_features=cfg.int8_features)
        bf16 = cfg.amp and openvino_features.bf16_native()
        return SpeedMode(bf16_features=bf16, openvino_features=not bf16 and openvino_features.fp32_pays())
    mode = CPU_PAYS.get(cfg.arch, EAGER)
    if mode.bf16 and not (cfg.amp and cpu_bf16_supported()):  # the measured gain was bf16's: without it, eager
        return EAGER
    return mode


def _openvino_applies(cfg: TrainConfig) -> bool:
    # Measured to pay for the EfficientNet-Lite backbones' ONNX export (docs/benchmarks.md, "bf16 features" and
    # "fp32 features through OpenVINO").
    return fast_path_asked(cfg) and get_spec(cfg.arch).onnx_features


def prepare(model: nn.Module, mode: SpeedMode, device: torch.device) -> None:
    """Put the model's weights in the mode's memory format (in place); on the CPU, keep freed memory where that
    helps (`reuse_freed_memory`; the engine's runs and the time estimate alike)."""
    if mode.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        reuse_freed_memory()


# glibc's malloc gives every block over 32 MiB its own mmap and unmaps it when freed, so each training step the
# kernel hands out and zeroes fresh pages for the big gradients again (AlexNet's fc6 gradient alone is 151 MB):
# the reduced protocol spent more CPU time in the kernel (954 s) than in PyTorch (840 s). Served from the heap
# and kept there when freed, the next step reuses them: bench/cpu_heap.py, docs/benchmarks.md ("The CPU heap").
# `train` gives the memory back when the run ends (`release_freed_memory`). Only allocations from the main heap
# gain: glibc gives a worker thread an arena of its own, whose heaps are at most 64 MB, and maps bigger blocks on
# their own whatever is set (measured: the same 442,000 page faults in 3 steps either way). A process started
# with one arena (settings.ONE_MALLOC_ARENA: `make run` starts the dashboard so, and `reproduce` and `sweep` start
# over so, cli/restart.py) serves every thread from the main heap, so there the thread backend's runs gain too.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt's parameter numbers (malloc.h)


@functools.cache
def _glibc() -> Any:
    """glibc's functions, or None without glibc (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 -- both must exist
    except (OSError, TypeError, AttributeError):
        return None
    return libc


def reuse_freed_memory() -> bool:
    """On the main thread (the CLI's foreground runs, a Ray worker's task), or on any thread of a process started
    with one malloc arena (the dashboard by `make run`, `reproduce`, `sweep`): have glibc's malloc serve large
    blocks from its heap and never trim it (process-wide, applied once). False, and nothing changed, on another
    thread (where it would not help) or without glibc."""
    main_heap = threading.current_thread() is threading.main_thread() or settings.one_malloc_arena()
    return main_heap and _keep_heap()


@functools.cache
def _keep_heap() -> bool:
    libc = _glibc()
    # A trim threshold of -1 turns trimming off: a free top of the heap (a step's gradients) stays for the next step.
    return libc is not None and bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))


def release_freed_memory() -> None:
    """Give the heap's free memory back to the kernel: a long-lived process (the dashboard) does not keep a
    finished run's peak."""
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)


def step_module(net: nn.Module, mode: SpeedMode) -> nn.Module:
    """What runs the training steps: `net` itself, or compiled (the first batch of each shape compiles)."""
    return torch.compile(net, dynamic=False) if mode.compile else net


def cpu_autocast(device: torch.device, mode: SpeedMode) -> contextlib.AbstractContextManager:
    """bf16 autocast on the CPU when the mode says so; nothing otherwise (CUDA has its own autocast)."""
    if device.type == "cpu" and mode.bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
