"""The training loop: one plain function, `train`, read top to bottom.

cache images → loaders → model (+ train mode) → optimizer / LR schedule / cross-entropy → epochs (per-batch
callbacks, cancel, divergence check; per-epoch validation, best weights kept in memory, last.pt + best.pt at
most every `checkpoint_seconds`) → best weights → test metrics → optional retrain on train+val.

Retention: a finished (or diverged) run keeps best.pt (+ retrain.pt when it retrained on train+val) and no
last.pt: nothing can resume it. A cancelled run keeps its last.pt (an interrupted one whatever was last
written), so it resumes. Checkpoints are written only when they change what a resume would need: at most once
per `checkpoint_seconds` of training (a kill loses at most that much work), never after the final epoch. Epochs and batches are numbered from 1. On CUDA: mixed precision (bf16
when supported, else fp16 with a GradScaler), channels_last, cudnn.benchmark, torch.compile when asked; on
the CPU plain fp32, and a seeded run repeats exactly (resume included: last.pt carries every RNG state).
"""

from __future__ import annotations

import gc
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from caltech_core import layout
from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Sample, Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.checkpoints import save_atomic
from caltech_core.nets.models import apply_train_mode, build_model, set_train_mode_eval, split_for_features
from caltech_core.nets.weights import fetch as fetch_weights
from caltech_core.status import RunStatus
from caltech_core.training import predictions
from caltech_core.training.evaluation import Evaluation, autocast_for, evaluate
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
    should_stop: Callable[[], bool] | None = None  # checked before every batch
    # (phase, done, total): "model", "caching", "features", "training", "testing", "retraining".
    on_phase: Callable[[str, int, int], None] | None = None


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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able results (for the store)."""
        d = asdict(self)
        d["checkpoint_path"] = str(self.checkpoint_path) if self.checkpoint_path else None
        return d


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available else CPU; asking for 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; choose 'auto' or 'cpu'")
    return torch.device(name)


def seconds_per_training_image(arch: str, train_mode: str, image_size: int, batch: int, device: str) -> float:
    """Time a forward+backward+SGD step on one small random batch (best of two after a warm-up): s/image."""
    dev = resolve_device(device)
    model = build_model(arch, 10).to(dev)
    apply_train_mode(model, arch, train_mode)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(batch, 3, image_size, image_size, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:]) / batch


def train(
    cfg: TrainConfig, data: Splits, callbacks: Callbacks | None = None, *, workdir: Path, cache_dir: Path,
    resume: bool = False, checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> RunResult:
    """Train `cfg` on `data`; never raises for training failures (status "failed" with the reason instead).

    `checkpoint_seconds`: least training time between two last.pt writes (0 = after every epoch).
    """
    cb = callbacks or Callbacks()
    workdir = Path(workdir)
    history: list[EpochMetrics] = []  # shared with _train so failures still return the curves so far
    try:
        return _train(cfg, data, cb, workdir, Path(cache_dir), resume, history, checkpoint_seconds)
    except Exception as exc:  # reported as a failed run; the traceback (and its tensors) dies with this block
        error = _failure_message(exc, cfg)
    _free_memory()
    last = layout.last(workdir)
    return RunResult(RunStatus.FAILED, epochs=history, error=error, checkpoint_path=last if last.is_file() else None,
                     classes=list(data.classes))


def _train(
    cfg: TrainConfig, data: Splits, cb: Callbacks, workdir: Path, cache_dir: Path, resume: bool,
    history: list[EpochMetrics], checkpoint_seconds: float,
) -> RunResult:
    workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    if cfg.pretrained and not cfg.weights_path:
        # ImageNet weights not cached yet are downloaded once, as a phase of their own (bytes done / total).
        fetch_weights(cfg.arch, progress=lambda done, total: _phase(cb, "downloading", done, total))
    _phase(cb, "model")
    _seed_everything(cfg.seed)

    # Model first: missing pretrained weights fail here, before any image is decoded or batch is run.
    model = build_model(cfg.arch, data.num_classes, pretrained=cfg.pretrained, weights_path=cfg.weights_path)
    apply_train_mode(model, cfg.arch, cfg.train)
    model.to(device, memory_format=torch.channels_last if on_cuda else torch.contiguous_format)

    # Optimizer on the trainable parameters only; the learning-rate schedule steps per epoch.
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "step":  # StepLR itself: old runs' last.pt hold its state and resume with it
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    else:  # the config's own formula, so the Train page's planned schedule is the one trained with
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: cfg.lr_factor(epoch))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    use_fp16 = on_cuda and cfg.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)
    loader_gen = torch.Generator().manual_seed(cfg.seed)  # shuffling + augmentation draws

    start_epoch, best_val_acc, best_epoch = 1, None, None
    best = _Best(layout.best(workdir), list(data.classes), cfg)
    if resume:
        last = layout.last(workdir)
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {last}")
        state = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], loader_gen)
        history[:] = [EpochMetrics(**m) for m in state["metrics"]]
        start_epoch, best_val_acc, best_epoch = state["epoch"] + 1, state["best_val_acc"], state["best_epoch"]
        best.load()

    # Decoded-image cache. Unreadable images are dropped from the splits (and listed in skipped).
    cache = ImageCache.build(
        data.all_paths(), cache_dir, resize_size=cfg.resize_size,
        progress=lambda done, total: _phase(cb, "caching", done, total),
    )
    data = data.without(cache.unreadable)
    if not data.train:
        raise ValueError("no readable training images in this split")

    # Frozen backbone + deterministic transform: train only the head, on backbone features computed once.
    net, features, feature_file = model, None, None
    if fast_path_applies(cfg, model):
        backbone, net = split_for_features(model, cfg.arch)
        found = cached_features(
            cfg, backbone, cache, cache_dir, device, batch_size=max(cfg.batch_size, 32),
            should_stop=cb.should_stop, progress=lambda done, total: _phase(cb, "features", done, total),
        )
        if found is None:
            return _stopped(RunStatus.CANCELLED, None, history, workdir, best_val_acc, best_epoch, data, best)
        features, feature_file = found

    def loader(samples: list[Sample], train: bool) -> BatchLoader | FeatureLoader:
        indices, labels = [cache.index_of(s.path) for s in samples], [s.label for s in samples]
        generator = loader_gen if train else None
        if features is not None:  # the very batches BatchLoader would give, as feature rows
            return FeatureLoader(features, indices, labels, batch_size=cfg.batch_size, train=train, cfg=cfg,
                                 generator=generator)
        return BatchLoader(cache, indices, labels, batch_size=cfg.batch_size, train=train, cfg=cfg,
                           device=device, generator=generator, reuse_buffers=True)

    train_loader, val_loader, test_loader = loader(data.train, True), loader(data.val, False), loader(data.test, False)
    # Compiled for the training steps only (evaluation stays eager: its batches vary in size); the first
    # batch of each shape pays the compilation. On the CPU the switch is ignored, like amp.
    step_net = torch.compile(net, dynamic=False) if cfg.compile and on_cuda else net

    _phase(cb, "training", start_epoch - 1, cfg.epochs)
    saved_at = time.monotonic()  # training time since the last last.pt
    for epoch in range(start_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        net.train()
        set_train_mode_eval(net)  # frozen BatchNorm layers keep their running statistics
        loss_sum, correct, seen = 0.0, 0, 0
        for batch, (x, y) in enumerate(train_loader, start=1):
            if cb.should_stop is not None and cb.should_stop():
                return _stopped(RunStatus.CANCELLED, None, history, workdir, best_val_acc, best_epoch, data, best)
            with autocast_for(device, cfg.amp):
                logits = step_net(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            value = loss.item()
            if cb.on_batch is not None:
                cb.on_batch(epoch, batch, len(train_loader), value)
            if not math.isfinite(value):
                message = (f"loss became {value} at epoch {epoch}, batch {batch} (learning rate {lr:g}); "
                           "training diverged: lower the learning rate")
                return _stopped(RunStatus.DIVERGED, message, history, workdir, best_val_acc, best_epoch, data, best)
            loss_sum += value * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(y)
        val = evaluate(net, val_loader, data.num_classes, amp=cfg.amp) if data.val else None
        scheduler.step()
        metrics = EpochMetrics(
            epoch=epoch, train_loss=loss_sum / max(seen, 1), train_acc=correct / max(seen, 1),
            val_loss=val.loss if val else None, val_acc=val.acc if val else None,
            lr=lr, seconds=time.perf_counter() - started,
        )
        history.append(metrics)
        if cb.on_epoch is not None:
            cb.on_epoch(metrics)

        # Best validation accuracy so far (without validation images, simply the last epoch), kept in memory.
        if val is None or best_val_acc is None or val.acc > best_val_acc:
            best_val_acc, best_epoch = (val.acc if val else None), epoch
            best.keep(model, epoch, best_val_acc)
            if val is not None:  # the best weights' per-image validation results, free from this pass
                _save_results(val, data.val, data.classes, "val", workdir)
        patience = cfg.early_stopping_patience
        if val is not None and patience and epoch - best_epoch >= patience:
            break
        if epoch < cfg.epochs and time.monotonic() - saved_at >= checkpoint_seconds:
            best.save()  # first: last.pt never names a best epoch whose weights are not on disk
            save_atomic(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                 "rng": _rng_state(loader_gen), "metrics": [m.to_dict() for m in history],
                 "best_val_acc": best_val_acc, "best_epoch": best_epoch, "classes": list(data.classes),
                 "config": cfg.to_dict()},
                layout.last(workdir),
            )
            saved_at = time.monotonic()
            if cb.on_checkpoint is not None:
                cb.on_checkpoint(epoch, layout.last(workdir))

    # Finished: best.pt is what is kept; last.pt (model + optimizer state) can no longer be resumed.
    best.save()
    (layout.last(workdir)).unlink(missing_ok=True)

    # Test the best-validation weights.
    _phase(cb, "testing")
    model.load_state_dict(best.state)
    test: Evaluation | None = evaluate(net, test_loader, data.num_classes, amp=cfg.amp) if data.test else None
    if test is not None:
        _save_results(test, data.test, data.classes, "test", workdir)
    result = RunResult(
        RunStatus.FINISHED, epochs=list(history), best_val_acc=best_val_acc, best_epoch=best_epoch,
        test_acc=test.acc if test else None, mean_class_acc=test.mean_class_acc if test else None,
        per_class_acc=_per_class(test, data.classes), confusion=test.confusion.tolist() if test else None,
        checkpoint_path=layout.best(workdir), classes=list(data.classes), fast_path=features is not None,
        feature_cache=feature_file.name if feature_file else None,
    )

    # The study's last step: retrain from scratch on train+val for the best number of epochs, then test.
    if cfg.retrain_on_train_val and data.val and data.test:
        _phase(cb, "retraining")
        merged = Splits(root=data.root, classes=data.classes, train=[*data.train, *data.val], val=[],
                        test=data.test, skipped=data.skipped, protocol=data.protocol)
        # A cosine schedule is laid over the retrain's epochs (its warm-up kept shorter than they are).
        again = cfg.replace(epochs=best_epoch, retrain_on_train_val=False, early_stopping_patience=0,
                            warmup_epochs=min(cfg.warmup_epochs, best_epoch - 1))
        retrain_dir = workdir / "retrain"
        del model, net, step_net, optimizer, features, train_loader, val_loader, test_loader  # free first
        retrained = train(again, merged, Callbacks(should_stop=cb.should_stop),
                          workdir=retrain_dir, cache_dir=cache_dir, checkpoint_seconds=math.inf)
        if retrained.status == RunStatus.FINISHED:
            result.retrain_test_acc = retrained.test_acc
            os.replace(layout.best(retrain_dir), layout.retrained(workdir))  # Classify can use the retrained model
        shutil.rmtree(retrain_dir, ignore_errors=True)
        if retrained.status != RunStatus.FINISHED:
            result.status = retrained.status if retrained.status == RunStatus.CANCELLED else result.status
            result.error = f"retraining on train+val {retrained.status}: {retrained.error or ''}".strip()
    return result


# -- helpers ----------------------------------------------------------------------------------------------


def _phase(cb: Callbacks, name: str, done: int = 0, total: int = 0) -> None:
    if cb.on_phase is not None:
        cb.on_phase(name, done, total)


class _Best:
    """The best epoch's weights, in memory (CPU), written to best.pt only when they would otherwise be lost."""

    def __init__(self, path: Path, classes: list[str], cfg: TrainConfig) -> None:
        self.path, self.classes, self.cfg = path, classes, cfg
        self.state: dict[str, torch.Tensor] | None = None
        self.epoch: int | None = None
        self.val_acc: float | None = None
        self.dirty = False

    def keep(self, model: nn.Module, epoch: int, val_acc: float | None) -> None:
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.epoch, self.val_acc, self.dirty = epoch, val_acc, True

    def save(self) -> None:
        if self.dirty and self.state is not None:
            save_atomic({"model": self.state, "classes": self.classes, "config": self.cfg.to_dict(),
                         "epoch": self.epoch, "val_acc": self.val_acc}, self.path)
            self.dirty = False

    def load(self) -> None:
        """A resumed run: the best weights written before it stopped."""
        if self.path.is_file():
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            self.state, self.epoch, self.val_acc = saved["model"], saved["epoch"], saved.get("val_acc")


def _stopped(
    status: RunStatus, message: str | None, history: list[EpochMetrics], workdir: Path, best_val_acc: float | None,
    best_epoch: int | None, data: Splits, best: _Best,
) -> RunResult:
    """A cancelled or diverged run: curves and best weights are kept, no test; only a cancelled run keeps last.pt
    (it can be resumed, a diverged one cannot)."""
    best.save()
    last = layout.last(workdir)
    if status != RunStatus.CANCELLED:
        last.unlink(missing_ok=True)
    kept = last if last.is_file() else best.path if best.path.is_file() else None
    return RunResult(
        status, epochs=list(history), best_val_acc=best_val_acc, best_epoch=best_epoch,
        checkpoint_path=kept, error=message, classes=list(data.classes),
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


def _failure_message(exc: BaseException, cfg: TrainConfig) -> str:
    """The error text; out-of-memory gets advice on what to change."""
    text = str(exc) or type(exc).__name__
    oom = isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "out of memory" in text.lower()
    )
    if oom:
        smaller = max(1, cfg.batch_size // 2)
        return (f"Out of memory training {cfg.arch} with batch size {cfg.batch_size} at image size "
                f"{cfg.image_size}: reduce batch size (e.g. to {smaller}) or image size, or stop other jobs "
                f"using the device. ({text.splitlines()[0] if text else 'out of memory'})")
    return f"{type(exc).__name__}: {text}"


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    """Every RNG state as tensors / plain types, so last.pt loads with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    loader_gen.set_state(state["loader"].cpu())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
