"""The loader's host side alone, as it runs when training on CUDA: crops (and flips) into uint8 batches.

Side by side in one run: flips per image on the host (the CPU path, and the CUDA path before) against
flips left to the device (the CUDA path now: the GPU flips a batch at once), for 1 and N crop threads.
A per-image torch op from a loader thread pays torch's intra-op threads every time; with flips left to the
device the host only copies crops.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/host_crops.py --images 1536
"""

from __future__ import annotations

import argparse
import tempfile
import time

from machine import describe

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import load_splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.threads import worker_threads
from caltech_core.data.transforms import BatchLoader, _background


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None)
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many passes")
    args = parser.parse_args()
    samples = load_splits(args.root).train[: args.images]
    cfg = TrainConfig(augment=("crop", "hflip"), batch_size=args.batch_size)
    cache = ImageCache.build([s.path for s in samples], tempfile.mkdtemp(prefix="host-crops-"),
                             resize_size=cfg.resize_size)
    indices, labels = [cache.index_of(s.path) for s in samples], [s.label for s in samples]
    print(f"machine: {describe()}; {len(samples)} images, batch {args.batch_size}, crop + hflip, "
          f"best of {args.repeats}")
    for workers in sorted({1, worker_threads(reserved=2)}):
        loader = BatchLoader(cache, indices, labels, batch_size=args.batch_size, train=True, cfg=cfg,
                             crop_workers=workers)
        rates = {}
        for deferred in (False, True):
            best = 0.0
            for _ in range(args.repeats):
                started, n = time.perf_counter(), 0
                for _host, y, _flips in _background(loader._host_iter(loader._plan(), device_flips=deferred), "b"):
                    n += len(y)
                best = max(best, n / (time.perf_counter() - started))
            rates[deferred] = best
        print(f"{workers} crop thread(s): flips on the host {rates[False]:.0f} img/s, left to the device "
              f"{rates[True]:.0f} img/s, ratio {rates[True] / rates[False]:.1f}x", flush=True)


if __name__ == "__main__":
    main()
