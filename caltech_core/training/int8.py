"""Int8 frozen features on the CPU: a backbone's fp32 ONNX export quantised statically by onnxruntime.

Static quantisation (`onnxruntime.quantization.quantize_static`, QDQ format, int8 weights per output channel,
uint8 activations) needs each activation's range, measured by running the fp32 model on calibration batches;
those come from the training split only (`calibration_images`), so the quantised features never saw a
validation or test image. The fast path uses it when a run sets `int8_features` (training/features.py);
bench/frozen_features.py measured its speed and the best-offline preset's validation accuracy against the fp32
path (docs/benchmarks.md: 1.89x the images/second, -0.07 points).
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Sample
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader

CALIBRATION_IMAGES = 64  # what the preset's measurement used (docs/benchmarks.md)
CALIBRATION_BATCH = 16


def calibration_images(train: Sequence[Sample], count: int = CALIBRATION_IMAGES) -> list[Path]:
    """Paths of `count` of the training samples (all when fewer), drawn with a fixed seed from the sorted paths:
    the same training split always calibrates on the same images, so runs with other seeds reuse the cached
    features."""
    ordered = sorted((s.path for s in train), key=str)
    return sorted(random.Random(0).sample(ordered, min(count, len(ordered))), key=str)


def calibration_batches(cache: ImageCache, paths: Sequence[Path], cfg: TrainConfig) -> Iterator[np.ndarray]:
    """The centre-crop batches of `paths` (in `cache`) that the feature pass would feed the backbone."""
    indices = [cache.index_of(p) for p in paths]
    loader = BatchLoader(cache, indices, [0] * len(indices), batch_size=CALIBRATION_BATCH, train=False, cfg=cfg)
    for x, _ in loader:
        yield x.contiguous().numpy()


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


