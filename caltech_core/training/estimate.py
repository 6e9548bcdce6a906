"""How long a run of a config will take on this machine, from a short run of the real thing.

`estimate_epoch_seconds(cfg, root, cache_dir=...)` builds the run's model as the engine does (speed mode
included), caches a random sample of the training images into the store's real image cache (kept: the run
will need them), and times the engine's own `train_one_epoch` on the real `BatchLoader` over a few batches
(one untimed warm-up batch) and `evaluate` on one validation batch. With the frozen-backbone fast path it
times the feature pass instead (the ONNX export once, two untimed feature batches, then timed ones) and the
head's epoch on feature rows, since that is what the run will do: features of every image once, then epochs
that take milliseconds. What the untimed batches took beyond their images' share counts once, as a set-up.

What is extrapolated: per-image times to the split sizes; the probe's share of images not yet in the image
cache (and their decode time) to the whole dataset. A run that retrains on train+val is counted at its full
number of epochs, which it never exceeds.

Int8 features (`int8_features`, CPU): the export is also quantised, calibrated on the probe's training images
as the run calibrates on 64 of its own, and that one-off time counts with the export; the feature batches
then run on the int8 session the run will use. Features through OpenVINO (the speed mode's bf16 or fp32, CPU):
compiled and timed on OpenVINO as the run will run them.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.device import resolve_device
from caltech_core.nets.models import apply_train_mode, build_model, split_for_features
from caltech_core.status import ProgressFn
from caltech_core.training import int8, speed
from caltech_core.training.checkpointing import BestWeights
from caltech_core.training.engine import Callbacks, train_one_epoch
from caltech_core.training.evaluation import evaluate
from caltech_core.training.features import (
    FeatureLoader,
    fast_path_applies,
    feature_batch_size,
    feature_runner,
)

PROBE_BATCHES = 2  # timed training batches (after one warm-up batch)
# Untimed feature batches first: a fresh onnxruntime session's first two runs are slower (EfficientNet-Lite0,
# 160 px, batch 32: 7.9 and 6.7 ms an image, then 4.4-4.9), and timing the second made the estimate 15-25% high.
FEATURE_WARM_UP = 2


@dataclass(frozen=True)
class EpochEstimate:
    """Seconds for one epoch (training + validation) and for the whole run, with what they were made of."""

    epoch_seconds: float  # a steady epoch: training batches + the validation pass
    caching_seconds: float  # once per run: decoding the images not yet in the image cache
    feature_seconds: float  # once per run, fast path only: ONNX export (+ int8 quantisation) + every image's
    # backbone features
    run_seconds: float  # caching + features + every epoch + the test (+ the retrain on train+val when asked)
    seconds_per_train_image: float  # a training step (fast path: a head step on feature rows)
    seconds_per_eval_image: float
    seconds_per_feature_image: float | None  # fast path: the frozen backbone's forward pass per image
    train_images: int
    val_images: int
    test_images: int
    fast_path: bool
    speed: str  # the speed mode's label (training/speed.py)
    probe_images: int  # training images the probe ran on

    @property
    def setup_seconds(self) -> float:
        return self.caching_seconds + self.feature_seconds

    @property
    def run_minutes(self) -> float:
        return self.run_seconds / 60.0


def estimate_epoch_seconds(
    cfg: TrainConfig, root: str | Path | None, *, cache_dir: str | Path, batches: int = PROBE_BATCHES,
    progress: ProgressFn | None = None, splits: Splits | None = None,
) -> EpochEstimate:
    """Time a short run of `cfg` on the dataset at `root` (or the given `splits`) and extrapolate."""
    try:
        return _estimate(cfg, root, cache_dir=cache_dir, batches=batches, progress=progress, splits=splits)
    finally:
        # The probe's steps kept their freed memory for reuse (`speed.prepare`), in the dashboard's server too.
        speed.release_freed_memory()


def _estimate(
    cfg: TrainConfig, root: str | Path | None, *, cache_dir: str | Path, batches: int, progress: ProgressFn | None,
    splits: Splits | None,
) -> EpochEstimate:
    splits = splits or Splits.from_config(cfg, root)
    if not splits.train:
        raise ValueError("the split has no training images")
    steps = batches + 3  # caching, warm-up, `batches` timed batches, evaluation
    report = progress or (lambda done, total: None)
    device = resolve_device(cfg.device)
    mode = speed.choose(cfg, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, splits.num_classes, pretrained=False)  # same cost as the ImageNet weights
    apply_train_mode(model, cfg.arch, cfg.train)
    model.to(device)
    speed.prepare(model, mode, device)
    fast = fast_path_applies(cfg, model)

    # A random sample of training images: enough for the warm-up batches and the timed ones (fast path: as many
    # images as batches of at least 32 would hold, also where the feature batch is 16: more batches timed).
    probe_size = cfg.batch_size * (batches + 1) if not fast else max(cfg.batch_size, 32) * (batches + FEATURE_WARM_UP)
    probe = random.Random(cfg.seed).sample(splits.train, min(len(splits.train), probe_size))
    decode_per_image, uncached_share, cache = _cache_probe(probe, cfg, cache_dir)
    report(1, steps)

    all_images = len(splits.train) + len(splits.val) + len(splits.test)
    caching = uncached_share * all_images * decode_per_image
    if fast:
        backbone, head = split_for_features(model, cfg.arch)
        calibration = int8.calibration_images(probe) if mode.int8_features else None
        per_feature, rows = _time_features(backbone, cfg, cache, device, batches, report, steps, calibration,
                                            mode.openvino_precision)
        per_train, per_eval = _time_head(head, rows, cfg, splits)
        features = per_feature[0] + per_feature[1] * all_images  # export (+ quantising) + every image's
    else:
        per_train = _time_training(model, mode, cache, probe, cfg, device, batches, report, steps)
        per_eval = _time_evaluation(model, cache, probe, cfg, device, splits.num_classes)
        per_feature, features = None, 0.0
    report(steps, steps)

    epoch = per_train * len(splits.train) + per_eval * len(splits.val) + _keep_seconds(model, cfg)
    run = caching + features + cfg.epochs * epoch + per_eval * len(splits.test)
    if cfg.retrain_on_train_val:  # at most as many epochs again, on train+val, then the test
        run += cfg.epochs * per_train * (len(splits.train) + len(splits.val)) + per_eval * len(splits.test)
    return EpochEstimate(
        epoch_seconds=epoch, caching_seconds=caching, feature_seconds=features, run_seconds=run, seconds_per_train_image=per_train,
        seconds_per_eval_image=per_eval, seconds_per_feature_image=per_feature[1] if per_feature else None,
        train_images=len(splits.train), val_images=len(splits.val), test_images=len(splits.test),
        fast_path=fast, speed=mode.label, probe_images=len(probe),
    )


def _cache_probe(probe: list, cfg: TrainConfig, cache_dir: str | Path) -> tuple[float, float, ImageCache]:
    """Cache the probe's images; (seconds per decoded image, share of them that were not cached, the cache)."""
    first: list[tuple[int, int]] = []

    def seen(done: int, total: int) -> None:
        if not first:
            first.append((done, total))

    started = time.perf_counter()
    cache = ImageCache.build([s.path for s in probe], cache_dir, resize_size=cfg.resize_size, progress=seen)
    elapsed = time.perf_counter() - started
    done, total = first[0] if first else (len(probe), len(probe))
    decoded = total - done
    return (elapsed / decoded if decoded else 0.0), (decoded / total if total else 0.0), cache


def _time_training(
    model: nn.Module, mode: speed.SpeedMode, cache: ImageCache, probe: list, cfg: TrainConfig,
    device: torch.device, batches: int, report: ProgressFn, steps: int,
) -> float:
    """Seconds per training image: the engine's epoch loop on the real loader, first batch not counted."""
    indices = [i for i in (cache.index_of(s.path) for s in probe) if i is not None]
    labels = [s.label for s in probe if cache.index_of(s.path) is not None]
    loader = BatchLoader(cache, indices, labels, batch_size=cfg.batch_size, train=True, cfg=cfg, device=device,
                         generator=torch.Generator().manual_seed(cfg.seed), reuse_buffers=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # weights unchanged
    stamps: list[tuple[float, int]] = [(time.perf_counter(), 0)]  # (when, batches done)

    def on_batch(_epoch: int, batch: int, _batches: int, _loss: float) -> None:
        stamps.append((time.perf_counter(), batch))
        report(min(batch + 1, steps - 1), steps)

    train_one_epoch(model, speed.step_module(model, mode), loader, criterion=nn.CrossEntropyLoss(),
                    optimizer=optimizer, scaler=torch.amp.GradScaler("cuda", enabled=False), device=device,
                    amp=cfg.amp, epoch=1, cb=Callbacks(on_batch=on_batch), mode=mode)
    # The first batch is a warm-up (first-call set-up, a compilation); with a single batch it is all there is.
    (start, first), (end, last) = stamps[1 if len(stamps) > 2 else 0], stamps[-1]
    sizes = [len(loader.indices[b * cfg.batch_size: (b + 1) * cfg.batch_size]) for b in range(first, last)]
    return (end - start) / max(sum(sizes), 1)


def _time_evaluation(model: nn.Module, cache: ImageCache, probe: list, cfg: TrainConfig, device: torch.device,
                     num_classes: int) -> float:
    """Seconds per validation image: `evaluate` over up to two batches of the probe's images, after one untimed
    batch (a first call's set-up is not per image)."""
    chosen = [s for s in probe if cache.index_of(s.path) is not None]

    def loader(samples: list) -> BatchLoader:
        return BatchLoader(cache, [cache.index_of(s.path) for s in samples], [s.label for s in samples],
                           batch_size=cfg.batch_size, train=False, cfg=cfg, device=device)

    evaluate(model, loader(chosen[: cfg.batch_size]), num_classes, amp=cfg.amp)
    timed = chosen[: 2 * cfg.batch_size]
    started = time.perf_counter()
    evaluate(model, loader(timed), num_classes, amp=cfg.amp)
    return (time.perf_counter() - started) / max(len(timed), 1)


def _time_features(
    backbone: nn.Module, cfg: TrainConfig, cache: ImageCache, device: torch.device, batches: int,
    report: ProgressFn, steps: int, calibration: list[Path] | None, openvino: str | None = None,
) -> tuple[tuple[float, float], torch.Tensor]:
    """((export seconds, seconds per image), feature rows) of the fast path's feature pass over the probe; with
    `calibration` images the export is quantised to int8 on them, and that counts as part of the export; `openvino`:
    compiled by OpenVINO at that precision (training/openvino_features.py), which counts likewise."""
    backbone.eval()
    started = time.perf_counter()
    calibrating = None if calibration is None else int8.calibration_batches(cache, calibration, cfg)
    run = feature_runner(backbone, cfg, device, calibration=calibrating, openvino=openvino)
    export = time.perf_counter() - started
    batch = feature_batch_size(cfg, device)  # the engine's
    loader = BatchLoader(cache, list(range(len(cache))), [0] * len(cache), batch_size=batch, train=False, cfg=cfg,
                         device=device, reuse_buffers=True)
    rows, times = [], []  # (seconds, images) of each batch
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            started = time.perf_counter()
            rows.append(run(x))
            times.append((time.perf_counter() - started, len(x)))
            report(min(i + 2, steps - 1), steps)
    warm = max(0, min(FEATURE_WARM_UP, len(times) - 1))  # a probe of one or two batches: time what there is
    steady = times[warm:]
    per_image = sum(s for s, _ in steady) / max(sum(n for _, n in steady), 1)
    # The warm-up batches' time beyond their images' share: the run's first batches pay it too, once.
    warm_up = sum(max(0.0, s - per_image * n) for s, n in times[:warm])
    return (export + warm_up, per_image), torch.cat(rows)


def _time_head(head: nn.Module, rows: torch.Tensor, cfg: TrainConfig, splits: Splits) -> tuple[float, float]:
    """Seconds per image of the head's training epoch and of its validation pass on feature rows, at the
    split's sizes (the probe's rows repeated): a few milliseconds, so timed whole."""
    def loader(n: int, train: bool) -> FeatureLoader:
        features = rows.repeat(math.ceil(n / len(rows)), 1)[:n]
        labels = [i % splits.num_classes for i in range(n)]
        return FeatureLoader(features, list(range(n)), labels, batch_size=cfg.batch_size, train=train, cfg=cfg)

    train, val = loader(len(splits.train), True), loader(max(len(splits.val), 1), False)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.0)
    started = time.perf_counter()
    train_one_epoch(head, head, train, criterion=nn.CrossEntropyLoss(), optimizer=optimizer,
                    scaler=torch.amp.GradScaler("cuda", enabled=False), device=rows.device, amp=cfg.amp, epoch=1,
                    cb=Callbacks())
    per_train = (time.perf_counter() - started) / len(splits.train)
    started = time.perf_counter()
    evaluate(head, val, splits.num_classes, amp=cfg.amp)
    return per_train, (time.perf_counter() - started) / max(len(splits.val), 1)


def _keep_seconds(model: nn.Module, cfg: TrainConfig) -> float:
    """An epoch's bookkeeping: the engine copies the whole model's weights when validation improves (counted
    for every epoch, as in the first ones)."""
    started = time.perf_counter()
    BestWeights(Path(), [], cfg).keep(model, 1, None)
    return time.perf_counter() - started
