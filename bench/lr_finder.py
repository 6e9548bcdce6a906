"""The LR range test against the study's way of choosing a learning rate (a grid of full trainings), in one run.

Runs `lrfinder.find_lr` on a config, then (unless --grid-epochs 0) trains the study's five learning rates
(0.001, 0.005, 0.01, 0.05, 0.1) for --grid-epochs epochs each with the same config, and prints both picks
(grid: best validation accuracy), both times and their ratio, with the CPU model and flags.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/lr_finder.py --image-size 128   # AlexNet, batch 256
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from machine import cpu_flags, cpu_model

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.training import engine, lrcurve, lrfinder

STUDY_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="alexnet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--steps", type=int, default=lrcurve.NUM_STEPS)
    parser.add_argument("--grid-epochs", type=int, default=0, help="epochs per grid run (0: no grid)")
    parser.add_argument("--root", default=None)
    parser.add_argument("--cache", default=None, help="image cache folder (default: a temporary one)")
    args = parser.parse_args()
    cfg = TrainConfig(arch=args.arch, image_size=args.image_size, batch_size=args.batch_size, classes=args.classes,
                      device="cpu", epochs=max(1, args.grid_epochs), step_size=max(1, args.grid_epochs))
    data = Splits.from_config(cfg, args.root)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache or tmp)
        started = time.perf_counter()
        finding = lrfinder.find_lr(cfg, data, cache_dir=cache, num_steps=args.steps)
        finder_s = time.perf_counter() - started
        grid: dict[float, float | None] = {}
        grid_s = 0.0
        for lr in STUDY_GRID if args.grid_epochs else ():
            started = time.perf_counter()
            result = engine.train(cfg.replace(lr=lr), data, workdir=Path(tmp) / f"lr{lr}", cache_dir=cache)
            grid_s += time.perf_counter() - started
            grid[lr] = result.best_val_acc
    flags = cpu_flags()
    print(json.dumps({"config": {"arch": cfg.arch, "image_size": cfg.image_size, "batch_size": cfg.batch_size,
                                 "classes": cfg.classes, "train_images": len(data.train)},
                      "finder": {"suggestion": finding.suggestion, "lr_min": finding.lr_min,
                                 "batches": len(finding.lrs), "stopped_early": finding.stopped_early,
                                 "seconds": round(finder_s, 1)},
                      "grid": {"epochs": args.grid_epochs, "val_acc": grid, "seconds": round(grid_s, 1),
                               "best": max(grid, key=lambda k: grid[k] or 0) if grid else None},
                      "ratio_grid_over_finder": round(grid_s / finder_s, 2) if grid else None,
                      "cpu": cpu_model(), "avx512": "avx512f" in flags, "avx2": "avx2" in flags}, indent=1))


if __name__ == "__main__":
    main()
