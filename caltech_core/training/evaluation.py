"""Loss, accuracy, mean per-class accuracy, confusion matrix and per-image top-k of a model over a loader."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from caltech_core.training.predictions import TOP, Predictions, metrics


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


def evaluate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, *, amp: bool = True
) -> Evaluation:
    """Metrics of `model` on every batch of `loader`. An empty loader gives NaN loss/accuracies."""
    pred = predict(model, loader, amp=amp)
    acc, mean_class, per_class, confusion = metrics(pred.labels, pred.preds, num_classes)
    loss = float(pred.losses.astype(np.float64).mean()) if len(pred.labels) else float("nan")
    return Evaluation(loss=loss, acc=acc, mean_class_acc=mean_class, per_class_acc=per_class, confusion=confusion,
                      predictions=pred)
