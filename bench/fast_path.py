"""Frozen-feature fast path vs the plain training loop, same "FC only" run side by side.

The study's "FC only" fine-tune trains AlexNet's classifier on a frozen backbone. ImageNet AlexNet weights
cannot be downloaded here, so by default the backbone is randomly initialised (same compute, same timing;
pass --pretrained to use torchvision's cached file, or --arch efficientnet_lite0 --pretrained for the
offline EfficientNet-Lite0 weights). Three runs of the same config and epochs:
  plain  — fast_path=False: every epoch runs the frozen backbone on every train and validation image;
  cold   — fast path, feature cache empty: backbone once over all images, then head-only epochs;
  warm   — fast path, features already on disk (a rerun / sweep over head settings).
The decoded-image cache is built first and timed separately, so no run pays for JPEG decoding.

    .venv/bin/python bench/fast_path.py --classes 10 --max-per-class 16 --epochs 5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from machine import describe

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import load_splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.training import engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="Caltech-101 root (default: $CALTECH101_ROOT)")
    parser.add_argument("--arch", default="alexnet")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--max-per-class", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="image cache folder (default: a temporary one)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        arch=args.arch, pretrained=args.pretrained, train="fc", epochs=args.epochs, step_size=max(1, args.epochs),
        batch_size=args.batch_size, image_size=args.image_size, lr=1e-3, device="cpu",
        classes=args.classes, max_per_class=args.max_per_class,
    )
    data = load_splits(args.root, classes=args.classes, max_per_class=args.max_per_class)
    work = Path(tempfile.mkdtemp(prefix="fastpath-"))
    cache_dir = Path(args.cache_dir) if args.cache_dir else work / "cache"
    print(f"machine: {describe()}")
    print(f"config: {args.arch} ({'ImageNet' if args.pretrained else 'random-init'} backbone), train=fc, "
          f"{args.epochs} epochs, batch {args.batch_size}, image {args.image_size}, {len(data.classes)} classes, "
          f"train/val/test = {len(data.train)}/{len(data.val)}/{len(data.test)}")

    t = time.perf_counter()
    ImageCache.build(data.all_paths(), cache_dir, resize_size=cfg.resize_size)
    print(f"image cache build (not counted below): {time.perf_counter() - t:.1f} s")
    shutil.rmtree(cache_dir / "features", ignore_errors=True)

    rows = []
    for label, run_cfg in (("plain loop", cfg.replace(fast_path=False)), ("fast path, cold", cfg),
                           ("fast path, warm", cfg)):
        t = time.perf_counter()
        result = engine.train(run_cfg, data, workdir=work / label.replace(" ", "_").replace(",", ""),
                              cache_dir=cache_dir)
        wall = time.perf_counter() - t
        if result.status != "finished":
            raise SystemExit(f"{label}: {result.status}: {result.error}")
        rows.append((label, wall, result))

    plain_wall, plain = rows[0][1], rows[0][2]
    print()
    print("| run | fast path used | wall time (s) | speed-up vs plain | final train loss | test acc |")
    print("|---|---|---|---|---|---|")
    for label, wall, r in rows:
        print(f"| {label} | {r.fast_path} | {wall:.1f} | {plain_wall / wall:.1f}x | "
              f"{r.epochs[-1].train_loss:.6f} | {r.test_acc:.3f} |")
    worst = max(
        abs(f.train_loss - p.train_loss) / abs(p.train_loss)
        for _, _, r in rows[1:] for f, p in zip(r.epochs, plain.epochs, strict=True)
    )
    print(f"\nlargest relative difference of a per-epoch train loss vs the plain loop: {worst:.2e}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
