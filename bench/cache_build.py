"""Cold build of the decoded-image cache over the whole Caltech-101 split: the index checkpointed after every
round of the decode pool (128 images, as before) vs every `CHECKPOINT_SECONDS` of decoding (today), side by side.

Each build starts from an empty folder (the JPEGs are in the OS's page cache after the first); the variants
alternate for `--rounds` rounds. The default resize size is the best-offline preset's (292 for its 260 crop).

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/cache_build.py --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from machine import cpu_flags, cpu_model

from caltech_core.data import imagecache
from caltech_core.data.dataset import Splits
from caltech_core.study.experiments import BEST_OFFLINE_HEAD

VARIANTS = {"every round (128 images)": 0.0, f"every {imagecache.CHECKPOINT_SECONDS:g} s": imagecache.CHECKPOINT_SECONDS}


def build(paths: list[Path], folder: Path, resize_size: int, seconds: float) -> tuple[float, float, int]:
    """(wall s, CPU s, index checkpoints) of one cold build into `folder` with checkpoints every `seconds`."""
    shutil.rmtree(folder, ignore_errors=True)
    os.sync()  # the previous build's writes are not flushed during this one
    saves, real_save = [0], imagecache._save

    def counted(*args: object) -> None:
        saves[0] += 1
        real_save(*args)  # type: ignore[arg-type]

    imagecache._save, imagecache.CHECKPOINT_SECONDS = counted, seconds
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        cache = imagecache.ImageCache.build(paths, folder, resize_size=resize_size)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        imagecache._save = real_save
    assert len(cache) == len(paths), "every image cached"
    return wall, cpu, saves[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="Caltech-101 folder (default: $CALTECH101_ROOT)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--resize-size", type=int, default=BEST_OFFLINE_HEAD.resize_size)
    args = parser.parse_args()
    paths = Splits.from_config(BEST_OFFLINE_HEAD, root=args.root).all_paths()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, flags {cpu_flags()}; {len(paths)} images at "
          f"{args.resize_size} px", flush=True)
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="cache-build-") as tmp:
        for r in range(args.rounds):
            for name, seconds in VARIANTS.items():
                wall, cpu, saves = build(paths, Path(tmp) / "cache", args.resize_size, seconds)
                walls[name].append(wall)
                print(f"round {r + 1}, index checkpointed {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                      f"{saves} checkpoints", flush=True)
    old, new = (statistics.median(v) for v in walls.values())
    print(f"median cold build: {old:.1f} s vs {new:.1f} s, {old / new:.2f}x")


if __name__ == "__main__":
    main()
