"""The loader alone: host path (BatchLoader) vs images resident on the device (ResidentLoader), img/s.

Batches of crop + hflip (+ rotation with --rotate) from the real image cache, nothing trained; A and B
interleaved (ABAB...) on the same machine in one run. On the CPU the resident path is the same gather the GPU
does (the engine uses it on CUDA only); on a GPU machine pass --device cuda.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/resident_loader.py --images 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from machine import describe

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import load_splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.resident import ResidentImages, ResidentLoader
from caltech_core.data.transforms import BatchLoader


def rate(loader, device: torch.device) -> float:
    """Images per second of one pass over `loader`."""
    started, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rotate", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    splits = load_splits(args.root)
    samples = splits.train[: args.images]
    augment = ("crop", "hflip", "rotate") if args.rotate else ("crop", "hflip")
    cfg = TrainConfig(augment=augment, batch_size=args.batch_size, device=device.type)
    cache = ImageCache.build([s.path for s in samples], tempfile.mkdtemp(prefix="resident-bench-"),
                             resize_size=cfg.resize_size)
    indices, labels = [cache.index_of(s.path) for s in samples], [s.label for s in samples]
    started = time.perf_counter()
    images = ResidentImages(cache, device)
    upload = time.perf_counter() - started
    host, resident = [], []
    for _ in range(args.rounds):  # ABAB: both see the same load from the other users of the machine
        host.append(rate(BatchLoader(cache, indices, labels, batch_size=args.batch_size, train=True, cfg=cfg,
                                     device=device, reuse_buffers=True), device))
        resident.append(rate(ResidentLoader(images, indices, labels, batch_size=args.batch_size, train=True,
                                            cfg=cfg), device))
    h, r = statistics.median(host), statistics.median(resident)
    print(describe(device))
    print(f"{len(samples)} images, batch {args.batch_size}, {cfg.image_size} px, {'+'.join(augment)}, {device}; "
          f"upload {images.nbytes / 2**20:.0f} MiB in {upload:.2f} s")
    print(f"host path: {h:.0f} img/s (rounds {', '.join(f'{v:.0f}' for v in host)})")
    print(f"resident:  {r:.0f} img/s (rounds {', '.join(f'{v:.0f}' for v in resident)})")
    print(f"ratio resident / host: {r / h:.2f}x")


if __name__ == "__main__":
    main()
