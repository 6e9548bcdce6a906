"""A run's checkpoints: the best weights (best.pt) and the resume point (last.pt), with every RNG state.

best.pt holds the best epoch's weights, kept in memory and written only when they would otherwise be lost.
last.pt holds what a resume needs: weights, optimizer, LR schedule, grad scaler, epoch, curves so far, the
best epoch, and the state of every RNG (Python, NumPy, torch, CUDA, the loader's generator), as tensors and
plain types so it loads with `weights_only=True` and a seeded CPU run resumes exactly.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from caltech_core.config import TrainConfig
from caltech_core.nets.checkpoints import save_atomic


class BestWeights:
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


def save_last(
    path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, loader_gen: torch.Generator,
    epoch: int, metrics: list[dict[str, Any]], best: BestWeights,
) -> None:
    """Write last.pt after `epoch`; best.pt first, so last.pt never names a best epoch whose weights are not on
    disk."""
    best.save()
    save_atomic(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "scaler": scaler.state_dict(), "epoch": epoch, "rng": _rng_state(loader_gen), "metrics": metrics,
         "best_val_acc": best.val_acc, "best_epoch": best.epoch, "classes": list(best.classes),
         "config": best.cfg.to_dict()},
        path,
    )


def load_last(
    path: Path, *, device: torch.device, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, loader_gen: torch.Generator,
    best: BestWeights,
) -> tuple[int, list[dict[str, Any]]]:
    """Restore a cancelled or interrupted run from last.pt (and its best weights from best.pt): every object
    and RNG as they were after the saved epoch. Returns that epoch and the curves' rows up to it."""
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {path}")
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], loader_gen)
    if best.path.is_file():
        best.state = torch.load(best.path, map_location="cpu", weights_only=True)["model"]
    best.epoch, best.val_acc = state["best_epoch"], state["best_val_acc"]
    return state["epoch"], state["metrics"]


def seed_everything(seed: int) -> None:
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
