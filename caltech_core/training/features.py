"""Frozen-backbone fast path: compute backbone features once, then train only the head on them.

Applies when the backbone is frozen (train mode "fc") and the training transform has no randomness, so every
epoch would feed the frozen backbone the very same center crops. The features of every cached image are
computed once (frozen BatchNorm layers and the backbone have no dropout, so eval mode is what the plain loop
runs too) and stored in ``cache_dir/features/<key>.pt``, the key hashing the architecture, the backbone's
weights (without the head's: a timm backbone module still holds the new, randomly initialised classifier, which
changes nothing of the features but would change the key in every process), the crop size, the resize size,
the normalisation and the image files (path, size, mtime); int8 features (`calibration` given: the backbone's
int8 copy, training/int8.py) also hash their calibration images, and bf16 features (training/openvino_features.py)
their precision, so they never share a file with fp32's. fp32 features share one file whichever runtime computed
them (torch, onnxruntime, OpenVINO): the same numbers to float rounding.

`FeatureLoader` then replays the plain `BatchLoader`'s batches — same `plan_epoch` draws from the same
generator, same batch split, same dropped single-image last batch — over the cached features. The head
(including AlexNet/VGG's dropout layers) runs exactly as inside the full model, drawing the same dropout
masks from the global RNG in the same order, so losses match the plain loop up to float rounding of the
backbone (conv kernels may sum in another order for another batch composition).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from caltech_core import layout
from caltech_core.config import TrainConfig
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader, is_deterministic, plan_epoch
from caltech_core.nets.architectures import get_spec
from caltech_core.nets.checkpoints import save_atomic
from caltech_core.nets.models import is_backbone_frozen
from caltech_core.training import int8, openvino_features
from caltech_core.training.evaluation import autocast_for

FEATURES_VERSION = 1


def fast_path_asked(cfg: TrainConfig) -> bool:
    """cfg asks for it, only the classifier trains and the training transform is deterministic (what the config
    alone says; the speed mode picks the features' kind from it before a model exists)."""
    return cfg.fast_path and cfg.train == "fc" and is_deterministic(cfg)


def fast_path_applies(cfg: TrainConfig, model: nn.Module) -> bool:
    """`fast_path_asked`, and the model's backbone is frozen."""
    return fast_path_asked(cfg) and is_backbone_frozen(model, cfg.arch)


# The feature pass's batch on the CPU for the ONNX runtimes: 16 images ran 1.03-1.11x faster than 64 through
# onnxruntime and 1.08-1.12x through OpenVINO (fp32 and bf16) in every round of four idle runs of the best-offline
# preset's features (bench/frozen_features.py, docs/benchmarks.md): the activations stay in the caches.
CPU_FEATURE_BATCH = 16


def feature_batch_size(cfg: TrainConfig, device: torch.device) -> int:
    """Images per batch of the feature pass: `CPU_FEATURE_BATCH` for an ONNX backbone on the CPU, else at least
    32 (a GPU's throughput, and torch's CPU backbones as they always ran)."""
    if device.type == "cpu" and get_spec(cfg.arch).onnx_features:
        return CPU_FEATURE_BATCH
    return max(cfg.batch_size, 32)


def _weights_digest(backbone: nn.Module, head: nn.Module) -> str:
    """Hash of the backbone's tensors that are not also the head's (by identity)."""
    head_tensors = {id(t) for t in head.state_dict(keep_vars=True).values()}
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict(keep_vars=True).items():
        if id(tensor) in head_tensors:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def feature_key(
    cfg: TrainConfig, backbone: nn.Module, head: nn.Module, paths: Sequence[Path],
    calibration: Sequence[Path] | None = None, bf16: bool = False,
) -> str:
    """Hash of everything the cached features depend on (order of `paths` does not matter); `head` is the other
    half of `models.split_for_features`, left out of the hash; `calibration`: int8 features' calibration images;
    `bf16`: bf16 features."""
    files = []
    for p in sorted(str(p) for p in paths):
        st = os.stat(p)
        files.append([p, st.st_size, st.st_mtime_ns])
    spec = {
        "version": FEATURES_VERSION, "arch": cfg.arch, "weights": _weights_digest(backbone, head),
        "image_size": cfg.image_size, "resize_size": cfg.resize_size, "normalization": cfg.normalization,
        "files": files,
    }
    if calibration is not None:  # absent for fp32 features, so their files keep the keys they always had
        spec["int8_calibration"] = sorted(str(p) for p in calibration)
    if bf16:  # likewise absent for fp32
        spec["precision"] = "bf16"
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def cached_features(
    cfg: TrainConfig, backbone: nn.Module, head: nn.Module, cache: ImageCache, cache_dir: Path,
    device: torch.device, *, should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None, calibration: Sequence[Path] | None = None,
    openvino: str | None = None,
) -> tuple[torch.Tensor, Path] | None:
    """(len(cache), D) float32 features of every cached image, in cache order, on `device`, and their file.

    Read from disk when present, else computed in eval mode, `feature_batch_size` images a batch, and saved. None
    when `should_stop` said stop.
    `calibration` (training images in `cache`): the features of the backbone's int8 copy calibrated on them;
    `openvino`: computed by OpenVINO at that precision ("f32", "bf16"; training/openvino_features.py).
    """
    folder = layout.features_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if calibration is not None:  # those that decoded
        calibration = [p for p in calibration if cache.index_of(p) is not None]
    path = folder / f"{feature_key(cfg, backbone, head, cache.paths, calibration, openvino == 'bf16')}.pt"
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        row = {p: i for i, p in enumerate(stored["paths"])}
        order = torch.tensor([row[str(p)] for p in cache.paths], dtype=torch.long)
        return stored["features"][order].to(device), path

    backbone.eval()
    batches = None if calibration is None else int8.calibration_batches(cache, calibration, cfg)
    run = feature_runner(backbone, cfg, device, calibration=batches, openvino=openvino)
    loader = BatchLoader(
        cache, list(range(len(cache))), [0] * len(cache), batch_size=feature_batch_size(cfg, device),
        train=False, cfg=cfg, device=device, reuse_buffers=True,
    )
    chunks = []
    for i, (x, _) in enumerate(loader):
        if should_stop is not None and should_stop():
            return None
        chunks.append(run(x))
        if progress is not None:
            progress(i + 1, len(loader))
    features = torch.cat(chunks) if chunks else torch.zeros(0, 0, device=device)
    # Stored by sorted path so that any order of the same images reuses the file.
    ranks = sorted(range(len(cache)), key=lambda i: str(cache.paths[i]))
    save_atomic(
        {"paths": [str(cache.paths[i]) for i in ranks], "features": features[torch.tensor(ranks)].cpu()}, path
    )
    return features, path


def feature_runner(
    backbone: nn.Module, cfg: TrainConfig, device: torch.device, *,
    calibration: Iterable[np.ndarray] | None = None, openvino: str | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The frozen backbone as a function of a batch: onnxruntime on the CPU where the architecture table says it
    pays (the same numbers to float rounding, several times faster for EfficientNet-Lite: bench/feature_speed.py),
    else torch. With `calibration` batches: the export quantised to int8 on them (training/int8.py; about 1.9x
    faster again for the best-offline preset, docs/benchmarks.md), which only onnxruntime on the CPU runs.
    `openvino`: the export run by OpenVINO at that precision ("f32", "bf16"; training/openvino_features.py), on
    the CPU only."""
    if calibration is not None and openvino is not None:
        raise ValueError("int8 features run on onnxruntime, not OpenVINO")
    if device.type == "cpu" and get_spec(cfg.arch).onnx_features:
        if openvino is not None:
            model = onnx_export(backbone, cfg.image_size, ["features"])
            run = openvino_features.runner(model, torch.get_num_threads(), openvino)
            return lambda x: torch.from_numpy(run(x.contiguous().numpy()))
        return onnx_runner(backbone, cfg.image_size, torch.get_num_threads(), calibration)
    if calibration is not None or openvino is not None:  # the cache key would say int8 or bf16 of what is not
        kind = "int8" if calibration is not None else f"OpenVINO {openvino}"
        raise ValueError(f"{kind} features need {cfg.arch}'s ONNX export on the CPU (here: {device.type})")

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast_for(device, cfg.amp):
            return backbone(x).float()

    return run


def onnx_runner(
    module: nn.Module, image_size: int, threads: int, calibration: Iterable[np.ndarray] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module` (eval mode, CPU) exported to ONNX in memory (and quantised to int8 on the `calibration` batches
    when given) and run by onnxruntime with `threads` threads."""
    model = onnx_export(module, image_size, ["features"])
    session = cpu_session(model if calibration is None else int8.quantize(model, calibration), threads)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])

    return run


def onnx_session(module: nn.Module, image_size: int, threads: int, outputs: list[str]) -> Any:
    """An onnxruntime CPU session of `module` (eval mode, CPU; input "x" of any batch size, the named
    `outputs`), exported in memory."""
    return cpu_session(onnx_export(module, image_size, outputs), threads)


def onnx_export(module: nn.Module, image_size: int, outputs: list[str]) -> bytes:
    """`module` (eval mode, CPU) as an ONNX model: input "x" of any batch size, the named `outputs`."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated, but it exports these networks in seconds where the
        # dynamo exporter takes about a minute each, and this file is thrown away after use.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (torch.zeros(1, 3, image_size, image_size),), buffer, input_names=["x"],
                          output_names=outputs, dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    return buffer.getvalue()


def cpu_session(model: bytes | str, threads: int) -> Any:
    """An onnxruntime session of an ONNX model (bytes or a file) on the CPU with `threads` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class FeatureLoader:
    """The batches `BatchLoader(cache, indices, labels, ...)` would yield, as rows of precomputed features."""

    def __init__(
        self, features: torch.Tensor, indices: Sequence[int], labels: Sequence[int], *, batch_size: int,
        train: bool, cfg: TrainConfig, generator: torch.Generator | None = None,
    ) -> None:
        self.features = features
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=features.device)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=features.device)
        self.batch_size = batch_size
        self.train = train
        self.cfg = cfg
        self.generator = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)

    def __len__(self) -> int:
        n = len(self.indices)
        batches = math.ceil(n / self.batch_size)
        if self.train and n > 1 and n % self.batch_size == 1:  # BatchLoader drops a lone last image
            batches -= 1
        return batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Same draws from the same generator as BatchLoader, so the order (and generator state) match.
        plan = plan_epoch(len(self.indices), train=self.train, cfg=self.cfg, generator=self.generator)
        order = plan.order.to(self.features.device)
        for b in range(len(self)):
            positions = order[b * self.batch_size: (b + 1) * self.batch_size]
            yield self.features[self.indices[positions]], self.labels[positions]
