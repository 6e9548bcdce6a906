"""Int8 frozen features on the CPU: a backbone's fp32 ONNX export quantised statically by onnxruntime.

Static quantisation (`onnxruntime.quantization.quantize_static`, QDQ format, int8 weights per output channel,
uint8 activations) needs each activation's range, measured by running the fp32 model on calibration batches;
those come from the training split only, so the quantised features never saw a validation or test image.
bench/frozen_features.py measures its speed and the preset's validation accuracy against the fp32 path.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


def quantize(model: bytes, calibration: Iterable[np.ndarray]) -> bytes:
    """The fp32 ONNX `model` (input "x") quantised to int8, activation ranges from the `calibration` batches."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"x": np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix="int8-") as folder:
        fp32, prepared, int8 = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(model)
        # Shape inference + graph fusions first, as onnxruntime recommends; the symbolic pass is skipped because
        # timm's dynamic "same" padding defeats it (plain ONNX shape inference still runs).
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return int8.read_bytes()


