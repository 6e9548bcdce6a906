"""The learning-rate range test (Smith 2017; fastai's and Lightning's `lr_find`): train for a few hundred batches
at most while the learning rate grows exponentially from `start_lr` to `end_lr`, record the loss of each batch,
smooth it (an exponential moving average, bias-corrected as fastai does) and stop once the smoothed loss is
non-finite or `diverge_factor` times its minimum. The model's weights and the optimizer's state are put back
afterwards.

The suggestion is Lightning's rule: the learning rate where the smoothed loss falls fastest (the most negative
slope of loss against log(lr)), skipping the first `skip_start` points and the last `skip_end`; `lr_min` is
fastai's older rule (the lowest loss's rate / 10), kept for the plot. Those rules, the defaults and the result
record are in training/lrcurve.py (no torch there); this module runs the batches.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.device import resolve_device
from caltech_core.nets.models import apply_train_mode, build_model, set_train_mode_eval
from caltech_core.nets.weights import fetch as fetch_weights
from caltech_core.status import ProgressFn
from caltech_core.training.checkpointing import seed_everything
from caltech_core.training.engine import optimizer_and_schedule
from caltech_core.training.evaluation import autocast_for
from caltech_core.training.lrcurve import (
    DIVERGE_FACTOR,
    END_LR,
    NUM_STEPS,
    SMOOTHING,
    START_LR,
    LRFinding,
    lr_min,
    suggest,
)


def lr_range_test(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Any, criterion: nn.Module, *,
    device: torch.device, start_lr: float = START_LR, end_lr: float = END_LR, num_steps: int = NUM_STEPS,
    amp: bool = False, progress: ProgressFn | None = None,
) -> LRFinding:
    """Run the range test on `model` with `optimizer` over `batches` (an iterable of (x, y), read again from the
    start when it runs out); the model's weights and the optimizer's state are restored afterwards."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr (got {start_lr:g}, {end_lr:g})")
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 (got {num_steps})")
    started = time.perf_counter()
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    gamma = (end_lr / start_lr) ** (1.0 / (num_steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, stopped_early = 0.0, math.inf, False
    model.train()
    set_train_mode_eval(model)
    try:
        step = 0
        while step < num_steps and not stopped_early:
            seen = 0
            iterator = iter(batches)
            for x, y in iterator:
                lr = start_lr * gamma**step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast_for(device, amp):
                    loss = criterion(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value, step, seen = loss.item(), step + 1, seen + 1
                lrs.append(lr)
                losses.append(value)
                if progress is not None:
                    progress(step, num_steps)
                if not math.isfinite(value):
                    stopped_early = True
                    break
                average = SMOOTHING * average + (1 - SMOOTHING) * value
                smooth = average / (1 - SMOOTHING**step)
                smoothed.append(smooth)
                best = min(best, smooth)
                if smooth > DIVERGE_FACTOR * best:
                    stopped_early = True
                    break
                if step >= num_steps:
                    break
            if hasattr(iterator, "close"):  # a loader left mid-pass stops its prefetch threads now, not at GC
                iterator.close()
            if seen == 0:
                raise ValueError("no training batches to run the range test on")
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
    finite_lrs = lrs[:len(smoothed)]
    return LRFinding(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=suggest(finite_lrs, smoothed),
                     lr_min=lr_min(finite_lrs, smoothed), stopped_early=stopped_early,
                     seconds=time.perf_counter() - started)


def find_lr(
    cfg: TrainConfig, data: Splits, *, cache_dir: Path, start_lr: float = START_LR, end_lr: float = END_LR,
    num_steps: int = NUM_STEPS, progress: ProgressFn | None = None,
) -> LRFinding:
    """The range test of `cfg`'s model, optimizer and training batches (augmentation included), built the way
    `engine.fit` builds them; `progress` gets (batches done, num_steps). Nothing is written but the image cache."""
    device = resolve_device(cfg.device)
    if cfg.pretrained and not cfg.weights_path:
        fetch_weights(cfg.arch)
    seed_everything(cfg.seed)
    model = build_model(cfg.arch, data.num_classes, pretrained=cfg.pretrained, weights_path=cfg.weights_path)
    apply_train_mode(model, cfg.arch, cfg.train)
    model.to(device)
    optimizer, _ = optimizer_and_schedule(cfg, model)
    cache = ImageCache.build(data.all_paths(), cache_dir, resize_size=cfg.resize_size)
    train = data.without(cache.unreadable).train
    if not train:
        raise ValueError("no readable training images in this split")
    batches = BatchLoader(cache, [cache.index_of(s.path) for s in train], [s.label for s in train],
                          batch_size=cfg.batch_size, train=True, cfg=cfg, device=device,
                          generator=torch.Generator().manual_seed(cfg.seed))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    return lr_range_test(model, optimizer, batches, criterion, device=device, start_lr=start_lr, end_lr=end_lr,
                         num_steps=num_steps, amp=cfg.amp, progress=progress)
