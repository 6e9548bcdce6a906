"""Loss, accuracy, mean per-class accuracy, confusion matrix and per-image top-k of a model over a loader."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix
from torch import nn

TOP = 5  # classes kept per image


@dataclass
class Predictions:
    """Per image, in loader order: true label, the most likely classes (best first) with probabilities, loss,
    and every class's logit (calibration and label-issue search need the whole distribution)."""

    labels: np.ndarray  # int64 (N,)
    top_classes: np.ndarray  # int64 (N, k), k = min(TOP, classes)
    top_probs: np.ndarray  # float32 (N, k)
    losses: np.ndarray  # float32 (N,) cross-entropy of each image
    logits: np.ndarray | None = None  # float32 (N, classes)

    @property
    def preds(self) -> np.ndarray:
        return self.top_classes[:, 0] if len(self.labels) else np.zeros(0, dtype=np.int64)


@dataclass
class Evaluation:
    """`per_class_acc[c]` is the recall of class c (NaN when c has no samples); `confusion[true, pred]`."""

    loss: float
    acc: float
    mean_class_acc: float
    per_class_acc: np.ndarray
    confusion: np.ndarray
    predictions: Predictions


def autocast_for(device: torch.device, amp: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 when supported, else fp16); plain fp32 elsewhere."""
    if device.type != "cuda" or not amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, amp: bool = True, top: int = TOP
) -> Predictions:
    """Every image's label, top classes with softmax probabilities and cross-entropy; model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    labels, classes, probs, losses, raw = [], [], [], [], []
    for x, y in loader:
        with autocast_for(device, amp):
            logits = model(x)
        logits = logits.float()
        losses.append(nn.functional.cross_entropy(logits, y, reduction="none").cpu())
        p, i = logits.softmax(dim=1).topk(min(top, logits.shape[1]), dim=1)
        labels.append(y.cpu())
        classes.append(i.cpu())
        probs.append(p.cpu())
        raw.append(logits.cpu())
    if not labels:
        return Predictions(np.zeros(0, np.int64), np.zeros((0, top), np.int64), np.zeros((0, top), np.float32),
                           np.zeros(0, np.float32))
    return Predictions(
        labels=torch.cat(labels).numpy().astype(np.int64), top_classes=torch.cat(classes).numpy().astype(np.int64),
        top_probs=torch.cat(probs).numpy().astype(np.float32), losses=torch.cat(losses).numpy().astype(np.float32),
        logits=torch.cat(raw).numpy().astype(np.float32),
    )


def metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(accuracy, mean per-class accuracy, per-class accuracy with NaN for absent classes, confusion[true, pred])."""
    confusion = confusion_matrix(labels, preds, labels=np.arange(num_classes))
    if len(labels) == 0:
        return float("nan"), float("nan"), np.full(num_classes, np.nan), confusion
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / support, np.nan)
    return float(accuracy_score(labels, preds)), float(np.nanmean(per_class)), per_class, confusion


def evaluate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, *, amp: bool = True
) -> Evaluation:
    """Metrics of `model` on every batch of `loader`. An empty loader gives NaN loss/accuracies."""
    pred = predict(model, loader, amp=amp)
    acc, mean_class, per_class, confusion = metrics(pred.labels, pred.preds, num_classes)
    loss = float(pred.losses.astype(np.float64).mean()) if len(pred.labels) else float("nan")
    return Evaluation(loss=loss, acc=acc, mean_class_acc=mean_class, per_class_acc=per_class, confusion=confusion,
                      predictions=pred)
