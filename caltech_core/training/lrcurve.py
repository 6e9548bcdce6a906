"""The learning-rate range test's curve without torch: its defaults, the result record, the suggestion (Lightning's
steepest-descent rule) and fastai's `lr_min`, and which settings a result depends on. training/lrfinder.py runs the
batches; the CLI's options and the Train page read the defaults from here without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from caltech_core.config import TrainConfig

START_LR = 1e-7
END_LR = 10.0
NUM_STEPS = 100  # fastai's and Lightning's default number of batches
SMOOTHING = 0.98  # fastai's beta
DIVERGE_FACTOR = 4.0  # fastai stops at 4 x the lowest smoothed loss
SKIP_START, SKIP_END = 10, 1  # Lightning's suggestion skips these points at each end
# Settings the range test does not read: the rate is its own, and no schedule, epoch count or run bookkeeping is
# involved (`settings_used` leaves them out, so changing them keeps an earlier result).
UNUSED_SETTINGS = ("lr", "epochs", "step_size", "gamma", "lr_schedule", "warmup_epochs", "early_stopping_patience",
                   "retrain_on_train_val", "name", "group", "fast_path", "compile")


@dataclass
class LRFinding:
    """The test's curve and its suggestion (None when too few points were recorded to pick one)."""

    lrs: list[float]
    losses: list[float]  # raw per-batch losses
    smoothed: list[float]
    suggestion: float | None
    lr_min: float | None  # fastai's rule: the lowest smoothed loss's rate / 10
    stopped_early: bool  # the loss diverged before end_lr
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """Lightning's rule: the rate of the steepest descent of the smoothed loss against log(lr)."""
    end = len(smoothed) - SKIP_END
    if end - SKIP_START < 3:
        return None
    window = np.asarray(smoothed[SKIP_START:end])
    slope = np.gradient(window, np.log(np.asarray(lrs[SKIP_START:end])))
    return float(lrs[SKIP_START + int(np.argmin(slope))])


def lr_min(lrs: list[float], smoothed: list[float]) -> float | None:
    """fastai's older rule: the lowest smoothed loss's rate / 10."""
    return float(lrs[int(np.argmin(smoothed))]) / 10 if smoothed else None


def settings_used(cfg: TrainConfig) -> dict[str, Any]:
    """The settings of `cfg` the range test depends on (e.g. to key a stored or cached result)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in UNUSED_SETTINGS}
