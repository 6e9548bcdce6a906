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


ROUNDS = 3  # estimate and run, interleaved (how they are compared: see below)


@pytest.mark.timing  # run alone: beside the other test process the fast path's estimate ran 1.3x its run, twice
@pytest.mark.parametrize("fast_path", [False, True], ids=["full-training", "fast-path"])
def test_estimate_within_a_quarter_of_the_real_epochs(
    fast_path: bool, cpu_clock: None, tiny_config, caltech_root: Path, tmp_path: Path
) -> None:
    """Even CPU time grows when the other test process and a browser share the two cores, unevenly between the
    short probe and the run: in two CI runs the fast path's guesses were 1.2-1.4x its runs (0.35-0.38 s against
    0.27-0.34 s; alone both are about 0.2 s, ratio 0.85-0.95). So this runs with the timing tests, alone, with three
    interleaved estimates and runs (the fast path: the fastest of each; the full training: the median ratio)."""
    changes = {"train": "fc", "augment": [], "lr": 0.01} if fast_path else {}
    cfg = tiny_config(epochs=3, class_names=CLASSES, max_per_class=40, **changes)
    splits = Splits.from_config(cfg, caltech_root)
    guesses, reals = [], []
    # The full training: each round's estimate against its own run, and the median of the three ratios checked (a
    # lone pair came out 1.30x in one clean-clone CI, 0.74 s against 0.56 s; the fastest of each side, as for the
    # fast path, once paired a warm process's run with an earlier estimate: 0.54 s against 0.69 s).
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
            guesses.append(estimate.epoch_seconds)
            reals.append(statistics.median(epochs))
        else:  # epochs of milliseconds after the features: the run's time is the features, paid once
            guesses.append(estimate.feature_seconds + cfg.epochs * estimate.epoch_seconds)
            reals.append(first[Phase.TRAINING] - last[Phase.CACHING] + sum(epochs))
            assert estimate.seconds_per_feature_image is not None
            if round_ == 0:  # once, as before the rounds: each extra round was another chance of a near tie
                assert estimate.feature_seconds > sum(epochs)
    if fast_path:
        ratio = min(guesses) / min(reals)
    else:
        ratio = statistics.median(guess / real for guess, real in zip(guesses, reals, strict=True))
    assert abs(ratio - 1) <= TOLERANCE, (guesses, reals)


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
