"""Frozen features through OpenVINO: the backbone's ONNX export compiled by OpenVINO's CPU plugin.

The fast path of an EfficientNet-Lite backbone (the best-offline preset's) spends nearly all of a cold run
computing features, and OpenVINO's CPU plugin runs that export faster than onnxruntime's CPU provider:
- in fp32, with the same features to float rounding (7e-6), 1.18x and 1.62x the images/second on two AVX-512
  CPUs, and still faster with its convolutions held to AVX2 (docs/benchmarks.md, "fp32 features through
  OpenVINO"): `fp32_pays()`;
- in bf16 on a CPU with native bf16 (AVX-512 BF16, AMX), about twice as fast again, with features at cosine
  0.9996 of fp32's and the preset's accuracy unchanged (docs/benchmarks.md, "bf16 features"): `bf16_native()`;
  onnxruntime's CPU provider has no bf16 convolutions, and elsewhere bf16 would be emulated.
The speed mode decides (training/speed.py) and the run records it. `$CALTECH_STUDIO_FEATURE_RUNTIME`
(settings.py) can keep every feature pass on onnxruntime, e.g. where OpenVINO misbehaves.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

from caltech_core import settings

# Measured on x86-64 only; elsewhere (an ARM laptop) onnxruntime stays until someone measures there.
_MEASURED_MACHINES = ("x86_64", "amd64")


@functools.cache
def _core() -> Any:
    import openvino

    return openvino.Core()


@functools.cache
def installed() -> bool:
    """OpenVINO can be imported here (not on the GPU machine's preinstalled environment, for one)."""
    try:
        _core()
    except ImportError:
        return False
    return True


def allowed() -> bool:
    """The feature runtime setting lets the fast path use OpenVINO, and OpenVINO is installed; ValueError when
    the setting asks for OpenVINO and it is not installed, or names no runtime."""
    wanted = settings.feature_runtime()
    if wanted == "openvino" and not installed():
        raise ValueError(f"{settings.FEATURE_RUNTIME.name}=openvino, but OpenVINO is not installed here "
                         "(pip install -r requirements.txt)")
    return wanted != "onnxruntime" and installed()


def fp32_pays() -> bool:
    """Where OpenVINO is allowed, its fp32 features are taken: asked for by name, or measured to pay on this kind
    of machine."""
    return settings.feature_runtime() == "openvino" or platform.machine().lower() in _MEASURED_MACHINES


@functools.cache
def bf16_native() -> bool:
    """OpenVINO is installed and its CPU plugin runs bf16 natively on this CPU."""
    return installed() and "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def runner(model: bytes, threads: int, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    """The ONNX `model` (input "x", one output) compiled at `precision` (OpenVINO's inference precision hint:
    "f32" or "bf16") on `threads` CPU threads: a function from a float32 NCHW batch to its float32 outputs."""
    core = _core()
    # One request a batch (latency mode): OpenVINO's throughput streams over chunks of a batch measured the same in
    # the feature pass's loop (59.1 vs 58.3 images/s, docs/benchmarks.md).
    compiled = core.compile_model(core.read_model(model, b""), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": max(1, threads),
    })
    request = compiled.create_infer_request()
    # The output tensor is the request's own memory, overwritten by the next batch: hand out a copy.
    return lambda x: request.infer({"x": x})[0].copy()
