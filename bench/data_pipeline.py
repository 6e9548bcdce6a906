"""Images/second of the study's data pipeline vs ours, side by side on the same real training images.

(a) study: ImageFolder-style PIL open + Resize(256) + RandomCrop(224) + RandomHorizontalFlip + ToTensor +
    Normalize, through a DataLoader with num_workers = cores (decodes every JPEG every epoch).
(b) ours: BatchLoader over a warm ImageCache (random crop + horizontal flip per image, batched normalise),
    everything on the CPU, float batches out: the like-for-like comparison. Batches are written into reused
    buffers, as the engine's training/evaluation loaders do; (b0) is the same with a fresh tensor per batch.
(c) ours, host share with a CUDA device: the uint8 crop batches the CPU prepares when the float conversion and
    normalisation run on the GPU (BatchLoader.host_batches), i.e. the CPU cost per image when training on CUDA.

    python bench/data_pipeline.py                         # $CALTECH101_ROOT or ./data/caltech101
    python bench/data_pipeline.py --root ../shared/caltech101 --count 500 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_model
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import default_loader

from caltech_core.config import TrainConfig
from caltech_core.data import dataset
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import NORMALIZATION, BatchLoader


class StudyDataset(Dataset):
    """What torchvision's ImageFolder does per item: PIL open/convert, then the transform."""

    def __init__(self, samples: list[dataset.Sample], transform: T.Compose) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.samples[i]
        return self.transform(default_loader(str(s.path))), s.label


def time_epoch(batches) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for x, _ in batches:
        n += len(x)
    return time.perf_counter() - start, n


def time_epochs(make_batches, epochs: int) -> tuple[float, int]:
    """One untimed warm-up pass (files / memmap into the OS page cache), then `epochs` timed passes."""
    time_epoch(make_batches())
    timed = [time_epoch(make_batches()) for _ in range(epochs)]
    return sum(t for t, _ in timed), sum(n for _, n in timed)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="dataset root (default: $CALTECH101_ROOT, ./data/caltech101)")
    parser.add_argument("--count", type=int, default=3000, help="training images to use (default 3000)")
    parser.add_argument("--epochs", type=int, default=2, help="timed passes of each pipeline (default 2)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size, help="default: the study's 256")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="study DataLoader workers")
    parser.add_argument("--cache-dir", default=None, help="image cache folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    splits = dataset.load_splits(args.root)
    pool = splits.train + splits.val  # the study's training list (train.txt), real JPEGs
    samples = pool[: args.count]
    cfg = TrainConfig(augment=("crop", "hflip"), batch_size=args.batch_size)
    mean, std = NORMALIZATION[cfg.normalization]

    study = DataLoader(
        StudyDataset(samples, T.Compose([
            T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std),
        ])),
        batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
    )
    study_s, study_n = time_epochs(lambda: study, args.epochs)

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        start = time.perf_counter()
        cache = ImageCache.build([s.path for s in samples], cache_dir, resize_size=cfg.resize_size)
        build_s = time.perf_counter() - start
        kept = [s for s in samples if cache.index_of(s.path) is not None]
        def loader(reuse_buffers: bool) -> BatchLoader:
            return BatchLoader(
                cache, [cache.index_of(s.path) for s in kept], [s.label for s in kept],
                batch_size=args.batch_size, train=True, cfg=cfg, device="cpu",
                generator=torch.Generator().manual_seed(0), reuse_buffers=reuse_buffers,
            )

        ours = loader(True)  # one loader for all its epochs, as the engine keeps its training loader
        ours_s, ours_n = time_epochs(lambda: ours, args.epochs)
        fresh = loader(False)
        fresh_s, fresh_n = time_epochs(lambda: fresh, args.epochs)
        host_s, host_n = time_epochs(ours.host_batches, args.epochs)

    result = {
        "machine": {
            "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        },
        "images": len(samples), "batch_size": args.batch_size, "study_workers": args.workers,
        "timed_epochs": args.epochs,
        "study_images_per_s": round(study_n / study_s, 1),
        "ours_images_per_s": round(ours_n / ours_s, 1),
        "speedup": round((ours_n / ours_s) / (study_n / study_s), 1),
        "ours_fresh_tensors_images_per_s": round(fresh_n / fresh_s, 1),
        "speedup_fresh_tensors": round((fresh_n / fresh_s) / (study_n / study_s), 1),
        "ours_host_share_images_per_s": round(host_n / host_s, 1),
        "speedup_host_share": round((host_n / host_s) / (study_n / study_s), 1),
        "cache_build_s": round(build_s, 1),
        "cache_build_images_per_s": round(len(samples) / build_s, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        m = result["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}")
        print(f"images: {len(samples)} training images, batch {args.batch_size}, random crop 224 + hflip, "
              f"{args.epochs} timed epochs after one warm-up epoch each")
        print(f"(a) study pipeline (PIL + DataLoader, {args.workers} workers): {result['study_images_per_s']:8.1f} img/s")
        print(f"(b) ours (warm uint8 memmap cache, batched):          {result['ours_images_per_s']:8.1f} img/s")
        print(f"(b0) ours, a fresh float tensor per batch:              {result['ours_fresh_tensors_images_per_s']:8.1f} img/s")
        print(f"(c) ours, CPU share when training on CUDA (uint8 crops): {result['ours_host_share_images_per_s']:8.1f} img/s")
        print(f"speed-up (b)/(a): {result['speedup']}x   (b0)/(a): {result['speedup_fresh_tensors']}x   "
              f"(c)/(a): {result['speedup_host_share']}x")
        print(f"one-off cache build: {result['cache_build_s']} s ({result['cache_build_images_per_s']} img/s)")
    return result


if __name__ == "__main__":
    main()
