"""Helpers for the tests of the fast path's other feature kinds (int8, bf16) against fp32 on the mini split."""

from __future__ import annotations

from pathlib import Path

import torch

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader


def crops(splits: Splits, cache_dir: Path, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Every mini image's centre crop as the feature pass feeds it (train, then val, then test) and its label."""
    samples = splits.train + splits.val + splits.test
    cache = ImageCache.build([s.path for s in samples], cache_dir, resize_size=cfg.resize_size)
    indices = [cache.index_of(s.path) for s in samples]
    [(x, _)] = list(BatchLoader(cache, indices, [0] * len(indices), batch_size=len(indices), train=False, cfg=cfg))
    return x, torch.tensor([s.label for s in samples])


def nearest_mean_correct(feats: torch.Tensor, y: torch.Tensor, n: int, classes: int) -> int:
    """Rows after the first `n` whose nearest class mean (cosine) of the first `n` rows' features is their class."""
    means = torch.nn.functional.normalize(torch.stack([feats[:n][y[:n] == c].mean(0) for c in range(classes)]), dim=1)
    guess = (torch.nn.functional.normalize(feats[n:], dim=1) @ means.T).argmax(1)
    return int((guess == y[n:]).sum())
