"""The Train page's estimate against the run it estimates: wall-clock seconds, one machine, one invocation.

For a preset's first config (or with `--set` overrides), `estimate_epoch_seconds` is run, then the config is
trained by `engine.train` on the same image cache, the estimate runs again, and the run trains again (ABAB,
so a machine whose load changes affects both alike). Printed: the estimated and the real epoch (median of the
run's epochs) and whole run (features and epochs; image caching is measured apart as it happens once per
store), and their ratio.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/estimate.py --preset quick-demo
    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/estimate.py --preset best-offline --set epochs=60
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import describe

from caltech_core.data.dataset import Splits
from caltech_core.status import Phase
from caltech_core.study.experiments import get_preset
from caltech_core.training import engine
from caltech_core.training.estimate import estimate_epoch_seconds


def real_run(cfg, splits: Splits, work: Path, cache: Path) -> tuple[float, float]:
    """(median epoch seconds, seconds from the end of image caching to the end of the last epoch)."""
    marks: dict[Phase, float] = {}

    def on_phase(phase: Phase, _done: int, _total: int) -> None:
        marks[phase] = time.perf_counter()  # the last call of each phase

    result = engine.train(cfg.replace(retrain_on_train_val=False), splits, engine.Callbacks(on_phase=on_phase),
                          workdir=work, cache_dir=cache)
    if result.status != "finished":
        raise SystemExit(f"the run did not finish: {result.status} {result.error}")
    return statistics.median(m.seconds for m in result.epochs), marks[Phase.TESTING] - marks[Phase.CACHING]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick-demo")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    changes = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    cfg = get_preset(args.preset).configs[0].replace(**changes)
    splits = Splits.from_config(cfg)
    print(describe(cfg.device if cfg.device != "auto" else "cpu"), f"| load average {os.getloadavg()[0]:.1f}")
    print(f"{args.preset}: {cfg.arch}, {cfg.image_size} px, batch {cfg.batch_size}, {cfg.epochs} epochs, "
          f"{len(splits.train)}/{len(splits.val)}/{len(splits.test)} images")
    print("| round | estimate took s | est. epoch s | real epoch s | ratio | est. run s (no caching) | "
          "real run s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for r in range(1, args.rounds + 1):
            started = time.perf_counter()
            est = estimate_epoch_seconds(cfg, None, cache_dir=cache, splits=splits)
            took = time.perf_counter() - started
            guess_run = est.feature_seconds + cfg.epochs * est.epoch_seconds
            epoch, run = real_run(cfg, splits, Path(tmp) / f"run{r}", cache)
            print(f"| {r} | {took:.1f} | {est.epoch_seconds:.1f} | {epoch:.1f} | {est.epoch_seconds / epoch:.2f} | "
                  f"{guess_run:.1f} | {run:.1f} | {guess_run / run:.2f} |", flush=True)
    print(f"speed mode {est.speed}; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
