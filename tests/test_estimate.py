"""The time estimate (training/estimate.py) against the real epochs of a tiny run, and the speed mode it reports.

Both sides are timed on the calling thread's CPU clock (`time.thread_time` in place of `perf_counter`, torch on
one thread): on this shared 2-core machine other processes change wall-clock times several-fold between two
runs, while the CPU work of an epoch is what the estimate has to predict. bench/estimate.py checks wall-clock
time at full scale.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import pytest
import torch

from caltech_core.data.dataset import Splits
from caltech_core.status import Phase
from caltech_core.training import engine
from caltech_core.training.estimate import estimate_epoch_seconds

TOLERANCE = 0.25  # the bar: within 25% of the real epoch time
CLASSES = ["Faces_easy", "Motorbikes", "airplanes"]


@pytest.fixture()
def cpu_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "perf_counter", time.thread_time)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ROUNDS = 5  # estimate and run, interleaved; the median of the five estimate/run ratios is checked
# ...but once three rounds are within the tolerance, so is the median of five whatever the last two give (it is
# one of those three): the same verdict in three rounds.
DECIDED_AFTER = 3


@pytest.mark.timing  # run alone: beside the other test process the fast path's estimate ran 1.3x its run, twice
@pytest.mark.parametrize("fast_path", [False, True], ids=["full-training", "fast-path"])
def test_estimate_within_a_quarter_of_the_real_epochs(
    fast_path: bool, cpu_clock: None, tiny_config, caltech_root: Path, tmp_path: Path
) -> None:
    """Each round's estimate against its own run, and the median of the rounds' ratios checked: a lone round can
    be 30% off even on an idle machine (the thread's CPU time counts the kernel's work for it too, page faults
    included: after the rest of the suite one full-training round's epochs took 0.64-0.70 s against 0.52-0.55 s in
    the rounds beside it), and in clean-clone CI runs a lone pair came out 1.30x and three fast-path pairs 0.72x
    (fastest of each side)."""
    # The fast path at 128 px: there the features it exists for are most of the run (about 0.35 s of CPU against
    # 0.08 s of head epochs); at 64 px both were 0.1-0.15 s, near the run's fixed costs, and the ratio sat at 0.8.
    changes = {"train": "fc", "augment": [], "lr": 0.01, "image_size": 128} if fast_path else {}
    cfg = tiny_config(epochs=3, class_names=CLASSES, max_per_class=40, **changes)
    splits = Splits.from_config(cfg, caltech_root)
    ratios = []
    for round_ in range(ROUNDS):
        cache = tmp_path / f"cache{round_}"  # the run keeps its features there: a second run would reuse them
        estimate = estimate_epoch_seconds(cfg, caltech_root, cache_dir=cache, splits=splits)
        assert estimate.fast_path is fast_path and estimate.speed == "eager fp32"
        assert (estimate.train_images, estimate.val_images) == (len(splits.train), len(splits.val))
        assert estimate.run_seconds >= estimate.setup_seconds + cfg.epochs * estimate.epoch_seconds

        result, first, last = _train_timing_phases(cfg, splits, tmp_path / f"run{round_}", cache)
        assert result.status == "finished", result.error
        assert result.fast_path is fast_path and result.speed == estimate.speed
        epochs = [m.seconds for m in result.epochs]
        if not fast_path:
            guess, real = estimate.epoch_seconds, statistics.median(epochs)
        else:  # epochs of milliseconds after the features: the run's time is the features, paid once
            guess = estimate.feature_seconds + cfg.epochs * estimate.epoch_seconds
            real = first[Phase.TRAINING] - last[Phase.CACHING] + sum(epochs)
            assert estimate.seconds_per_feature_image is not None
            assert estimate.feature_seconds > cfg.epochs * estimate.epoch_seconds  # what the fast path is for
        ratios.append((guess / real, guess, real))
        if len(ratios) == DECIDED_AFTER and all(abs(r - 1) <= TOLERANCE for r, _, _ in ratios):
            break
    ratio = statistics.median(r for r, _, _ in ratios)
    assert abs(ratio - 1) <= TOLERANCE, ratios


def _train_timing_phases(cfg, splits: Splits, workdir: Path, cache: Path) -> tuple:
    """engine.train's result, and each phase's first and last progress call on the CPU clock."""
    first: dict[Phase, float] = {}
    last: dict[Phase, float] = {}

    def on_phase(phase: Phase, _done: int, _total: int) -> None:
        first.setdefault(phase, time.thread_time())
        last[phase] = time.thread_time()

    result = engine.train(cfg, splits, engine.Callbacks(on_phase=on_phase), workdir=workdir, cache_dir=cache)
    return result, first, last


def test_a_split_without_training_images_is_refused(tiny_config, caltech_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(class_names=CLASSES, max_per_class=4)
    splits = Splits.from_config(cfg, caltech_root)
    with pytest.raises(ValueError, match="no training images"):
        estimate_epoch_seconds(cfg, caltech_root, cache_dir=tmp_path, splits=dataclasses.replace(splits, train=[]))
