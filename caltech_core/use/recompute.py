"""Rebuild a stored run's per-image results file by evaluating its `best.pt` again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from caltech_core.data import dataset
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.checkpoints import CheckpointError
from caltech_core.nets.device import resolve_device
from caltech_core.training.evaluation import predict
from caltech_core.training.predictions import ImageResults, ResultsError, load_run, results_path, save
from caltech_core.use.inference import Classifier


def recompute(store: Any, run_id: int, split: str = "test", *, data_root: str | Path | None = None,
              device: str | None = None, batch_size: int | None = None) -> tuple[ImageResults, Path]:
    """Evaluate a run's `best.pt` on `split` again, image by image, and (re)write its results file."""
    path = results_path(store.run_dir(run_id), split)  # an unknown split fails before any work
    record = store.get_run(run_id)
    if record is None:
        raise ResultsError(f"run {run_id} does not exist")
    cfg = record.config
    dev = resolve_device(device or cfg.device)
    try:
        classifier = Classifier.from_run(store, run_id, device=dev, calibrated=False)
    except CheckpointError as exc:
        raise ResultsError(str(exc)) from exc
    splits = dataset.Splits.from_config(cfg, root=data_root, home=store.home)
    if list(splits.classes) != list(classifier.classes):
        raise ResultsError(f"run {run_id} was trained on other classes than the dataset at {splits.root} holds")
    samples = splits.test if split == "test" else splits.val
    if not samples:
        raise ResultsError(f"run {run_id} has no {split} images")
    cache = ImageCache.build([s.path for s in samples], store.cache_dir, resize_size=cfg.resize_size)
    samples = [s for s in samples if cache.index_of(s.path) is not None]
    loader = BatchLoader(cache, [cache.index_of(s.path) for s in samples], [s.label for s in samples],
                         batch_size=batch_size or max(cfg.batch_size, 32), train=False, cfg=cfg, device=dev)
    with torch.inference_mode():
        pred = predict(classifier.model, loader, amp=cfg.amp)
    results = ImageResults.from_predictions(pred, samples, classifier.classes, split)
    return results, save(results, path)


def ensure_logits(store: Any, run_id: int, split: str, *, data_root: str | Path | None = None) -> ImageResults:
    """The run's per-image results of `split`, recomputed first when they are missing or were saved before every
    logit was recorded (calibration and label-issue search need them)."""
    results = load_run(store, run_id, split)
    if results is not None and results.logits is not None:
        return results
    return recompute(store, run_id, split, data_root=data_root)[0]
