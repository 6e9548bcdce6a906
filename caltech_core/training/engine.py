"""The training loop, read top to bottom like torchvision's references/classification/train.py.

`train` is the one entry point: it never raises (a failure is a "failed" result with the reason) and talks to
its caller only through `Callbacks`. It runs `fit`: ImageNet weights → model (+ train mode) → optimizer / LR
schedule / cross-entropy → cached images → loaders → epochs (`train_one_epoch`: per-batch callbacks, cancel,
divergence check; then validation, best weights kept in memory, last.pt + best.pt at most every
`checkpoint_seconds`) → test of the best weights. When asked, `retrain_on_train_val` then trains a fresh
model on train+val with the same `fit`.

Retention: a finished (or diverged) run keeps best.pt (+ retrain.pt when it retrained on train+val) and no
last.pt: nothing can resume it. A cancelled run keeps its last.pt (an interrupted one whatever was last
written), so it resumes. Checkpoints are written only when they change what a resume would need: at most once
per `checkpoint_seconds` of training (a kill loses at most that much work), never after the final epoch.
Epochs and batches are numbered from 1. On CUDA: mixed precision (bf16 when supported, else fp16 with a
GradScaler), channels_last, cudnn.benchmark, torch.compile when asked; on the CPU what training/speed.py
chose (plain fp32 unless measured to pay; recorded in the result). A seeded CPU run repeats exactly (resume
included: last.pt carries every RNG state, see `checkpointing`).

Over 400 lines on purpose: the loop is meant to read in one file, top to bottom; its parts with a job of their own
already live beside it (evaluation, checkpointing, features, speed).
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from caltech_core import layout
from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Sample, Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.resident import ResidentLoader, loader_images
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.device import resolve_device
from caltech_core.nets.models import apply_train_mode, build_model, set_train_mode_eval, split_for_features
from caltech_core.nets.weights import fetch as fetch_weights
from caltech_core.status import Phase, RunStatus
from caltech_core.training import int8, predictions, speed
from caltech_core.training.checkpointing import BestWeights, load_last, save_last, seed_everything
from caltech_core.training.evaluation import Evaluation, autocast_for, evaluate
from caltech_core.training.failures import failure_message
from caltech_core.training.features import FeatureLoader, cached_features, fast_path_applies

CHECKPOINT_SECONDS = 60.0  # last.pt at most this often; a crash loses at most this much training


@dataclass
class EpochMetrics:
    """One finished epoch; val_* are None when the split has no validation images."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Callbacks:
    """Optional hooks; all run on the training thread and should return quickly."""

    on_batch: Callable[[int, int, int, float], None] | None = None  # (epoch, batch, num_batches, loss)
    on_epoch: Callable[[EpochMetrics], None] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None  # (epoch, path of last.pt)
    # (epoch last.pt held): a resumed run goes on after it, so rows of later epochs will be trained again.
    on_resume: Callable[[int], None] | None = None
    should_stop: Callable[[], bool] | None = None  # checked before every batch
    # (phase, done, total): downloading, model, caching, features, training, testing, retraining.
    on_phase: Callable[[Phase, int, int], None] | None = None


@dataclass
class RunResult:
    """Outcome of `train`. per_class_acc maps class name → test accuracy; confusion[true][pred] counts."""

    status: RunStatus  # finished | cancelled | diverged | failed
    epochs: list[EpochMetrics] = field(default_factory=list)
    best_val_acc: float | None = None
    best_epoch: int | None = None
    test_acc: float | None = None
    mean_class_acc: float | None = None
    per_class_acc: dict[str, float] | None = None
    confusion: list[list[int]] | None = None
    checkpoint_path: Path | None = None
    error: str | None = None
    retrain_test_acc: float | None = None
    classes: list[str] = field(default_factory=list)
    fast_path: bool = False  # whether the head was trained on cached backbone features
    feature_cache: str | None = None  # the features/ file it used (store.prune_caches keeps it)
    speed: str | None = None  # how its training steps ran (training/speed.py's mode label)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able results (for the store)."""
        d = asdict(self)
        d["checkpoint_path"] = str(self.checkpoint_path) if self.checkpoint_path else None
        return d


@dataclass
class EpochTally:
    """One epoch's pass over the training batches: mean loss and accuracy, or why it ended early."""

    loss: float = 0.0
    acc: float = 0.0
    stop: RunStatus | None = None  # CANCELLED or DIVERGED: the epoch did not finish
    error: str | None = None


def train(
    cfg: TrainConfig, data: Splits, callbacks: Callbacks | None = None, *, workdir: Path, cache_dir: Path,
    resume: bool = False, checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> RunResult:
    """Train `cfg` on `data`; never raises for training failures (status "failed" with the reason instead).

    `checkpoint_seconds`: least training time between two last.pt writes (0 = after every epoch).
    """
    cb = callbacks or Callbacks()
    workdir, cache_dir = Path(workdir), Path(cache_dir)
    result = _fit_or_fail(cfg, data, cb, workdir=workdir, cache_dir=cache_dir, resume=resume,
                          checkpoint_seconds=checkpoint_seconds,
                          calibration=int8.calibration_images(data.train))
    # Retrained only when readable validation images chose the epochs and readable test images can score it.
    if (cfg.retrain_on_train_val and result.status == RunStatus.FINISHED and result.best_val_acc is not None
            and result.test_acc is not None):
        _phase(cb, Phase.RETRAINING)
        retrain_on_train_val(result, cfg, data, should_stop=cb.should_stop, workdir=workdir, cache_dir=cache_dir)
    speed.release_freed_memory()  # the CPU heap kept the steps' freed memory for reuse; the run is over
    return result


def _fit_or_fail(
    cfg: TrainConfig, data: Splits, cb: Callbacks, *, workdir: Path, cache_dir: Path, resume: bool,
    checkpoint_seconds: float, calibration: Sequence[Path],
) -> RunResult:
    """`fit`, with any exception turned into a "failed" result that keeps the curves so far."""
    history: list[EpochMetrics] = []  # filled by fit as epochs finish
    try:
        return fit(cfg, data, cb, workdir=workdir, cache_dir=cache_dir, resume=resume,
                   checkpoint_seconds=checkpoint_seconds, history=history, calibration=calibration)
    except Exception as exc:  # reported as a failed run; the traceback (and its tensors) dies with this block
        error = failure_message(exc, cfg)
    _free_memory()
    last = layout.last(workdir)
    return RunResult(RunStatus.FAILED, epochs=history, error=error, checkpoint_path=last if last.is_file() else None,
                     classes=list(data.classes))


def fit(
    cfg: TrainConfig, data: Splits, cb: Callbacks, *, workdir: Path, cache_dir: Path, resume: bool,
    checkpoint_seconds: float, history: list[EpochMetrics], calibration: Sequence[Path],
) -> RunResult:
    """Train one model and test its best weights; raises on failure. Each finished epoch is appended to
    `history` as it ends (so a failure's caller still has the curves). `calibration`: the training images
    that calibrate int8 features when the speed mode computes them (never a validation or test image)."""
    workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    if cfg.pretrained and not cfg.weights_path:
        # ImageNet weights not cached yet are downloaded once, as a phase of their own (bytes done / total).
        fetch_weights(cfg.arch, progress=lambda done, total: _phase(cb, Phase.DOWNLOADING, done, total))
    _phase(cb, Phase.MODEL)
    seed_everything(cfg.seed)

    # Model first: missing pretrained weights fail here, before any image is decoded or batch is run.
    model = build_model(cfg.arch, data.num_classes, pretrained=cfg.pretrained, weights_path=cfg.weights_path)
    apply_train_mode(model, cfg.arch, cfg.train)
    mode = speed.choose(cfg, device)  # channels_last / bf16 / compile: what pays on this device (recorded)
    model.to(device)
    speed.prepare(model, mode, device)
    optimizer, scheduler = optimizer_and_schedule(cfg, model)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler("cuda", enabled=on_cuda and cfg.amp and not torch.cuda.is_bf16_supported())
    loader_gen = torch.Generator().manual_seed(cfg.seed)  # shuffling + augmentation draws
    best = BestWeights(layout.best(workdir), list(data.classes), cfg)
    start_epoch = 1
    if resume:
        done, rows = load_last(layout.last(workdir), device=device, model=model, optimizer=optimizer,
                               scheduler=scheduler, scaler=scaler, loader_gen=loader_gen, best=best)
        history[:] = [EpochMetrics(**row) for row in rows]
        start_epoch = done + 1
        if cb.on_resume is not None:  # the file, not a record of it: a kill can land between the two
            cb.on_resume(done)

    # Decoded-image cache. Unreadable images are dropped from the splits (and listed in skipped).
    cache = ImageCache.build(data.all_paths(), cache_dir, resize_size=cfg.resize_size,
                             progress=lambda done, total: _phase(cb, Phase.CACHING, done, total))
    data = data.without(cache.unreadable)
    if not data.train:
        raise ValueError("no readable training images in this split")

    # Frozen backbone + deterministic transform: train only the head, on backbone features computed once.
    net, features, feature_file = model, None, None
    if fast_path_applies(cfg, model):
        backbone, net = split_for_features(model, cfg.arch)
        found = cached_features(
            cfg, backbone, net, cache, cache_dir, device, should_stop=cb.should_stop,
            progress=lambda done, total: _phase(cb, Phase.FEATURES, done, total),
            calibration=calibration if mode.int8_features else None, openvino=mode.openvino_precision,
        )
        if found is None:
            return _stopped(RunStatus.CANCELLED, None, history=history, workdir=workdir, best=best)
        features, feature_file = found

    # On CUDA, images that fit in GPU memory are uploaded once and every batch is cut out there (same batches).
    resident = loader_images(cache, device) if features is None else None

    def loader(samples: list[Sample], train: bool) -> BatchLoader | FeatureLoader:
        indices, labels = [cache.index_of(s.path) for s in samples], [s.label for s in samples]
        generator = loader_gen if train else None
        if features is not None:  # the very batches BatchLoader would give, as feature rows
            return FeatureLoader(features, indices, labels, batch_size=cfg.batch_size, train=train, cfg=cfg,
                                 generator=generator)
        if resident is not None:
            return ResidentLoader(resident, indices, labels, batch_size=cfg.batch_size, train=train, cfg=cfg,
                                  generator=generator)
        return BatchLoader(cache, indices, labels, batch_size=cfg.batch_size, train=train, cfg=cfg,
                           device=device, generator=generator, reuse_buffers=True)

    train_loader, val_loader, test_loader = loader(data.train, True), loader(data.val, False), loader(data.test, False)
    # Compiled (when the mode says so) for the training steps only: evaluation stays eager, its batches vary
    # in size; the first batch of each shape pays the compilation.
    step_net = speed.step_module(net, mode)

    _phase(cb, Phase.TRAINING, start_epoch - 1, cfg.epochs)
    saved_at = time.monotonic()  # training time since the last last.pt
    for epoch in range(start_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        tally = train_one_epoch(net, step_net, train_loader, criterion=criterion, optimizer=optimizer,
                                scaler=scaler, device=device, amp=cfg.amp, epoch=epoch, cb=cb, mode=mode)
        if tally.stop is not None:
            return _stopped(tally.stop, tally.error, history=history, workdir=workdir, best=best)
        val = evaluate(net, val_loader, data.num_classes, amp=cfg.amp) if data.val else None
        scheduler.step()
        metrics = EpochMetrics(
            epoch=epoch, train_loss=tally.loss, train_acc=tally.acc, val_loss=val.loss if val else None,
            val_acc=val.acc if val else None, lr=lr, seconds=time.perf_counter() - started,
        )
        history.append(metrics)
        if cb.on_epoch is not None:
            cb.on_epoch(metrics)

        # Best validation accuracy so far (without validation images, simply the last epoch), kept in memory.
        if val is None or best.val_acc is None or val.acc > best.val_acc:
            best.keep(model, epoch, val.acc if val else None)
            if val is not None:  # the best weights' per-image validation results, free from this pass
                _save_results(val, data.val, data.classes, "val", workdir)
        patience = cfg.early_stopping_patience
        if val is not None and patience and epoch - best.epoch >= patience:
            break
        if epoch < cfg.epochs and time.monotonic() - saved_at >= checkpoint_seconds:
            save_last(layout.last(workdir), model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                      loader_gen=loader_gen, epoch=epoch, metrics=[m.to_dict() for m in history], best=best)
            saved_at = time.monotonic()
            if cb.on_checkpoint is not None:
                cb.on_checkpoint(epoch, layout.last(workdir))

    # Finished: best.pt is what is kept; last.pt (model + optimizer state) can no longer be resumed.
    best.save()
    layout.last(workdir).unlink(missing_ok=True)

    # Test the best-validation weights.
    _phase(cb, Phase.TESTING)
    model.load_state_dict(best.state)
    test: Evaluation | None = evaluate(net, test_loader, data.num_classes, amp=cfg.amp) if data.test else None
    if test is not None:
        _save_results(test, data.test, data.classes, "test", workdir)
    return RunResult(
        RunStatus.FINISHED, epochs=list(history), best_val_acc=best.val_acc, best_epoch=best.epoch,
        test_acc=test.acc if test else None, mean_class_acc=test.mean_class_acc if test else None,
        per_class_acc=_per_class(test, data.classes), confusion=test.confusion.tolist() if test else None,
        checkpoint_path=layout.best(workdir), classes=list(data.classes), fast_path=features is not None,
        feature_cache=feature_file.name if feature_file else None, speed=mode.label,
    )


def train_one_epoch(
    net: nn.Module, step_net: nn.Module, loader: BatchLoader | FeatureLoader, *, criterion: nn.Module,
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, device: torch.device, amp: bool, epoch: int,
    cb: Callbacks, mode: speed.SpeedMode = speed.EAGER,
) -> EpochTally:
    """One pass over the training batches; `step_net` is `net` itself or its compiled version, `mode` adds
    the CPU's bf16 autocast when it says so. Stops early when `cb.should_stop` says so (cancelled) or the loss
    stops being finite (diverged)."""
    net.train()
    set_train_mode_eval(net)  # frozen BatchNorm layers keep their running statistics
    loss_sum, correct, seen = 0.0, 0, 0
    for batch, (x, y) in enumerate(loader, start=1):
        if cb.should_stop is not None and cb.should_stop():
            return EpochTally(stop=RunStatus.CANCELLED)
        with autocast_for(device, amp), speed.cpu_autocast(device, mode):
            logits = step_net(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        value = loss.item()
        if cb.on_batch is not None:
            cb.on_batch(epoch, batch, len(loader), value)
        if not math.isfinite(value):
            lr = optimizer.param_groups[0]["lr"]  # the schedule steps per epoch: this epoch's rate
            return EpochTally(stop=RunStatus.DIVERGED, error=(
                f"loss became {value} at epoch {epoch}, batch {batch} (learning rate {lr:g}); "
                "training diverged: lower the learning rate"))
        loss_sum += value * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += len(y)
    return EpochTally(loss=loss_sum / max(seen, 1), acc=correct / max(seen, 1))


def retrain_on_train_val(
    result: RunResult, cfg: TrainConfig, data: Splits, *, should_stop: Callable[[], bool] | None, workdir: Path,
    cache_dir: Path,
) -> None:
    """The study's last step: a fresh model trained by the same `fit` on train+val for the run's best number of
    epochs, then tested. Its weights become retrain.pt (Classify can use them) and its test accuracy
    `result.retrain_test_acc`; a retrain that does not finish says so in `result.error` (a cancelled one also
    in `result.status`)."""
    merged = replace(data, train=[*data.train, *data.val], val=[])
    # A cosine schedule is laid over the retrain's epochs (its warm-up kept shorter than they are).
    epochs = result.best_epoch
    again = cfg.replace(epochs=epochs, retrain_on_train_val=False, early_stopping_patience=0,
                        warmup_epochs=min(cfg.warmup_epochs, epochs - 1))
    scratch = layout.retrain_scratch(workdir)  # its best.pt and per-image results stay apart from the run's
    # Int8 features calibrated on the training split as in the run: the very features it cached are reused.
    retrained = _fit_or_fail(again, merged, Callbacks(should_stop=should_stop), workdir=scratch,
                             cache_dir=cache_dir, resume=False, checkpoint_seconds=math.inf,
                             calibration=int8.calibration_images(data.train))
    if retrained.status == RunStatus.FINISHED:
        try:
            os.replace(layout.best(scratch), layout.retrained(workdir))
            result.retrain_test_acc = retrained.test_acc
        except OSError as exc:  # train never raises: a retrain.pt that cannot be kept is the retrain failing
            retrained = RunResult(RunStatus.FAILED, error=f"could not keep {layout.RETRAINED}: {exc}")
    shutil.rmtree(scratch, ignore_errors=True)
    if retrained.status != RunStatus.FINISHED:
        result.status = retrained.status if retrained.status == RunStatus.CANCELLED else result.status
        result.error = f"retraining on train+val {retrained.status}: {retrained.error or ''}".strip()


# -- helpers ----------------------------------------------------------------------------------------------


def _phase(cb: Callbacks, phase: Phase, done: int = 0, total: int = 0) -> None:
    if cb.on_phase is not None:
        cb.on_phase(phase, done, total)


def optimizer_and_schedule(
    cfg: TrainConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Optimizer on the trainable parameters only; the learning-rate schedule steps per epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                           weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "step":  # StepLR itself: old runs' last.pt hold its state and resume with it
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    else:  # the config's own formula, so the Train page's planned schedule is the one trained with
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: cfg.lr_factor(epoch))
    return optimizer, scheduler


def _stopped(
    status: RunStatus, message: str | None, *, history: list[EpochMetrics], workdir: Path, best: BestWeights
) -> RunResult:
    """A cancelled or diverged run: curves and best weights are kept, no test; only a cancelled run keeps last.pt
    (it can be resumed, a diverged one cannot)."""
    best.save()
    last = layout.last(workdir)
    if status != RunStatus.CANCELLED:
        last.unlink(missing_ok=True)
    kept = last if last.is_file() else best.path if best.path.is_file() else None
    return RunResult(
        status, epochs=list(history), best_val_acc=best.val_acc, best_epoch=best.epoch,
        checkpoint_path=kept, error=message, classes=list(best.classes),
    )


def _save_results(evaluation: Evaluation, samples: list[Sample], classes: list[str], split: str,
                  workdir: Path) -> None:
    """Per-image results of `split` beside the checkpoints (predictions.py reads them)."""
    results = predictions.ImageResults.from_predictions(evaluation.predictions, samples, classes, split)
    predictions.save(results, predictions.results_path(workdir, split))


def _per_class(test: Evaluation | None, classes: list[str]) -> dict[str, float] | None:
    if test is None:
        return None
    return {name: float(acc) for name, acc in zip(classes, test.per_class_acc, strict=True) if not np.isnan(acc)}


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
