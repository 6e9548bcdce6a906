"""Per-image results of a run: one compressed NumPy file per split beside its checkpoints.

`<run dir>/predictions-<split>.npz` (split "test" or "val") holds, row by row in split order: the image path,
its true class, the top-5 classes with softmax probabilities, the cross-entropy loss and every class's logit
(`logits`; files written before it was recorded lack it: recompute them), plus the class names. The engine writes it when it evaluates the best weights; `caltech_core.use.recompute` rebuilds it from `best.pt`.
The analysis helpers (confusion cells, confident mistakes, per-class table, confused pairs) read only it.
`Predictions` (what an evaluation pass collects) and `metrics` live here too, so that reading results needs no
torch (training/evaluation.py makes them from a model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix

from caltech_core import layout
from caltech_core.data.dataset import Sample
from caltech_core.files import atomic_write

SPLITS = ("test", "val")


class ResultsError(RuntimeError):
    """Per-image results cannot be made or read; the message says why and what to do."""


def results_path(run_dir: str | Path, split: str) -> Path:
    """Where a run's per-image results of `split` live."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    return layout.predictions(Path(run_dir), split)


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


def metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(accuracy, mean per-class accuracy, per-class accuracy with NaN for absent classes, confusion[true, pred])."""
    confusion = confusion_matrix(labels, preds, labels=np.arange(num_classes))
    if len(labels) == 0:
        return float("nan"), float("nan"), np.full(num_classes, np.nan), confusion
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / support, np.nan)
    return float(accuracy_score(labels, preds)), float(np.nanmean(per_class)), per_class, confusion


@dataclass(frozen=True)
class ImageResults:
    """One split's per-image results. Row i: `paths[i]`, `labels[i]`, `top_classes[i]` (best first) with
    `top_probs[i]`, `losses[i]`, `logits[i]` (None in older files); class indices refer to `classes`."""

    split: str
    classes: list[str]
    paths: np.ndarray  # str (N,)
    labels: np.ndarray  # int64 (N,)
    top_classes: np.ndarray  # int64 (N, k)
    top_probs: np.ndarray  # float32 (N, k)
    losses: np.ndarray  # float32 (N,)
    logits: np.ndarray | None = None  # float32 (N, classes)

    @classmethod
    def from_predictions(cls, pred: Predictions, samples: list[Sample], classes: list[str],
                         split: str) -> ImageResults:
        if len(samples) != len(pred.labels):
            raise ValueError(f"{len(samples)} samples but {len(pred.labels)} predictions")
        return cls(split, list(classes), np.array([str(s.path) for s in samples], dtype=str), pred.labels,
                   pred.top_classes, pred.top_probs, pred.losses, pred.logits)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def preds(self) -> np.ndarray:
        return self.top_classes[:, 0]

    @property
    def correct(self) -> np.ndarray:
        return self.preds == self.labels

    def summary(self) -> dict[str, Any]:
        """Accuracy, mean per-class accuracy, mean loss and size (JSON-able)."""
        acc, mean_class, _, _ = metrics(self.labels, self.preds, len(self.classes))
        return {"split": self.split, "images": len(self), "acc": acc, "mean_class_acc": mean_class,
                "loss": float(self.losses.astype(np.float64).mean()) if len(self) else None}

    def confusion(self) -> np.ndarray:
        return metrics(self.labels, self.preds, len(self.classes))[3]

    def cell(self, true: int, pred: int) -> np.ndarray:
        """Rows with true class `true` predicted as `pred`, most confident first."""
        rows = np.flatnonzero((self.labels == true) & (self.preds == pred))
        return rows[np.argsort(-self.top_probs[rows, 0], kind="stable")]

    def confident_mistakes(self) -> np.ndarray:
        """Wrongly classified rows, highest probability of the wrong class first."""
        rows = np.flatnonzero(~self.correct)
        return rows[np.argsort(-self.top_probs[rows, 0], kind="stable")]

    def mistakes_of(self, true: int) -> np.ndarray:
        """Wrongly classified rows of class `true`, most confident mistake first."""
        rows = np.flatnonzero((self.labels == true) & ~self.correct)
        return rows[np.argsort(-self.top_probs[rows, 0], kind="stable")]

    def per_class(self) -> list[dict[str, Any]]:
        """One row per class with images: class, images, correct, accuracy, most often predicted instead."""
        confusion = self.confusion()
        rows = []
        for c, name in enumerate(self.classes):
            total = int(confusion[c].sum())
            if not total:
                continue
            wrong = confusion[c].copy()
            wrong[c] = 0
            other = int(wrong.argmax())
            rows.append({"class": name, "index": c, "images": total, "correct": int(confusion[c, c]),
                         "accuracy": confusion[c, c] / total,
                         "confused with": self.classes[other] if wrong[other] else ""})
        return rows

    def confused_pairs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The (true, predicted) pairs of different classes with the most images, most first."""
        confusion = self.confusion().copy()
        np.fill_diagonal(confusion, 0)
        support = confusion.sum(axis=1) + np.diag(self.confusion())
        flat = np.argsort(-confusion, axis=None, kind="stable")[:limit]
        pairs = []
        for true, pred in zip(*np.unravel_index(flat, confusion.shape), strict=True):
            count = int(confusion[true, pred])
            if count == 0:
                break
            pairs.append({"true": self.classes[true], "predicted": self.classes[pred], "images": count,
                          "share of true class": count / support[true], "true index": int(true),
                          "predicted index": int(pred)})
        return pairs

    def top_of(self, row: int) -> list[tuple[str, float]]:
        """Row's top classes as (name, probability), best first."""
        return [(self.classes[int(c)], float(p)) for c, p in zip(self.top_classes[row], self.top_probs[row],
                                                                 strict=True)]


def save(results: ImageResults, path: str | Path) -> Path:
    """Write `results` to `path` atomically (a reader never sees half a file)."""
    path = Path(path)
    extra = {} if results.logits is None else {"logits": results.logits.astype(np.float32)}
    with atomic_write(path) as f:
        np.savez_compressed(
            f, split=np.array(results.split), classes=np.array(results.classes, dtype=str),
            paths=results.paths.astype(str), labels=results.labels.astype(np.int16),
            top_classes=results.top_classes.astype(np.int16), top_probs=results.top_probs.astype(np.float32),
            losses=results.losses.astype(np.float32), **extra,
        )
    return path


def load(path: str | Path) -> ImageResults:
    """Read a results file (no pickles); ResultsError when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return ImageResults(
                split=str(z["split"]), classes=[str(c) for c in z["classes"]], paths=z["paths"],
                labels=z["labels"].astype(np.int64), top_classes=z["top_classes"].astype(np.int64),
                top_probs=z["top_probs"], losses=z["losses"],
                logits=z["logits"] if "logits" in z.files else None,
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ResultsError(f"{path} is not a per-image results file ({exc})") from exc


def load_run(store: Any, run_id: int, split: str) -> ImageResults | None:
    """A stored run's results of `split`, or None when they have not been computed."""
    path = results_path(store.run_dir(run_id), split)
    return load(path) if path.is_file() else None
