"""Loss, accuracy, mean per-class accuracy and confusion matrix of a model over a loader (scikit-learn)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix
from torch import nn


@dataclass
class Evaluation:
    """`per_class_acc[c]` is the recall of class c (NaN when c has no samples); `confusion[true, pred]`."""

    loss: float
    acc: float
    mean_class_acc: float
    per_class_acc: np.ndarray
    confusion: np.ndarray


def autocast_for(device: torch.device, amp: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 when supported, else fp16); plain fp32 elsewhere."""
    if device.type != "cuda" or not amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, amp: bool = True
) -> tuple[float, np.ndarray, np.ndarray]:
    """(summed cross-entropy, true labels, predicted labels) over `loader`, model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    total_loss = 0.0
    labels, preds = [], []
    for x, y in loader:
        with autocast_for(device, amp):
            logits = model(x)
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        labels.append(y.cpu())
        preds.append(logits.argmax(dim=1).cpu())
    if not labels:
        return 0.0, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return total_loss, torch.cat(labels).numpy(), torch.cat(preds).numpy()


def evaluate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, *, amp: bool = True
) -> Evaluation:
    """Metrics of `model` on every batch of `loader`. An empty loader gives NaN loss/accuracies."""
    total_loss, y_true, y_pred = predict(model, loader, amp=amp)
    confusion = confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    if len(y_true) == 0:
        nan = float("nan")
        return Evaluation(nan, nan, nan, np.full(num_classes, np.nan), confusion)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / support, np.nan)
    return Evaluation(
        loss=total_loss / len(y_true),
        acc=float(accuracy_score(y_true, y_pred)),
        mean_class_acc=float(np.nanmean(per_class)),
        per_class_acc=per_class,
        confusion=confusion,
    )
