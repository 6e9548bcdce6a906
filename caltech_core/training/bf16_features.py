"""Bf16 frozen features on CPUs with native bf16 (AVX-512 BF16, AMX): the backbone's ONNX export run by OpenVINO.

The fast path of an EfficientNet-Lite backbone (the best-offline preset's) spends nearly all of a cold run
computing features. On a CPU with native bf16, OpenVINO's CPU plugin runs the fp32 export in bf16 (its
`INFERENCE_PRECISION_HINT`) about twice as fast as onnxruntime runs it in fp32, with features at cosine 0.9996 of
fp32's and the preset's accuracy unchanged (docs/benchmarks.md, "bf16 features"); onnxruntime's CPU provider has
no bf16 convolutions. Elsewhere bf16 would be emulated: `supported()` is False and the fast path stays on
onnxruntime fp32. The speed mode decides (training/speed.py, under the `amp` setting) and the run records it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np


@functools.cache
def _core() -> Any:
    import openvino

    return openvino.Core()


@functools.cache
def supported() -> bool:
    """OpenVINO is installed and its CPU plugin runs bf16 natively on this CPU."""
    try:
        core = _core()
    except ImportError:  # e.g. the GPU machine's preinstalled environment: the fast path stays on onnxruntime
        return False
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def runner(model: bytes, threads: int, precision: str = "bf16") -> Callable[[np.ndarray], np.ndarray]:
    """The ONNX `model` (input "x", one output) compiled at `precision` (OpenVINO's inference precision hint;
    "f32" for bench/frozen_features.py's comparison) on `threads` CPU threads: a function from a float32 NCHW
    batch to its float32 outputs."""
    core = _core()
    # One request a batch (latency mode): OpenVINO's throughput streams over chunks of a batch measured the same in
    # the feature pass's loop (59.1 vs 58.3 images/s, docs/benchmarks.md).
    compiled = core.compile_model(core.read_model(model, b""), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": max(1, threads),
    })
    request = compiled.create_infer_request()
    # The output tensor is the request's own memory, overwritten by the next batch: hand out a copy.
    return lambda x: request.infer({"x": x})[0].copy()
