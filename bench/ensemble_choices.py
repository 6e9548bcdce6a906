"""How the `lite_ensemble` entry and the `best-offline` head were chosen: validation accuracy only.

Computes the frozen ImageNet features of every image for each EfficientNet-Lite member at one input size (the
product's image cache, centre crop and onnxruntime runner; `--flips` also the mirror images), then trains the
linear head the engine trains (dropout + linear, SGD momentum 0.9, StepLR) on the train split for:
- each member alone and the members concatenated;
- centre crop only vs the mean of an image's and its mirror's features (`--flips`);
- dropout 0 / 0.3, LR 0.1 / 0.03, weight decay 0 / 1e-4, label smoothing 0 / 0.1 / 0.2 / 0.3 (the last three
  on the concatenated features only).
Prints validation accuracy; the test split is never looked at.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/ensemble_choices.py --size 260 --flips --work /tmp/ec
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.models import build_model, split_for_features
from caltech_core.training.features import onnx_runner

MEMBERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def member_features(name: str, cfg: TrainConfig, cache: ImageCache, out: Path, flips: bool) -> dict[str, Path]:
    """Features of every cached image (and of its mirror with `flips`) by member `name`, saved as .npy."""
    files = {"centre": out / f"{name}-{cfg.image_size}.npy", "mirror": out / f"{name}-{cfg.image_size}-mirror.npy"}
    wanted = ["centre", "mirror"] if flips else ["centre"]
    if all(files[k].is_file() for k in wanted):
        return files
    backbone = split_for_features(build_model(name, 10, pretrained=True), name)[0].eval()
    with torch.no_grad():
        run = onnx_runner(backbone, cfg.image_size, torch.get_num_threads())
    loader = BatchLoader(cache, list(range(len(cache))), [0] * len(cache), batch_size=32, train=False, cfg=cfg)
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in wanted}
    started = time.perf_counter()
    for x, _ in loader:
        rows["centre"].append(run(x))
        if flips:
            rows["mirror"].append(run(x.flip(3)))
    for k in wanted:
        np.save(files[k], torch.cat(rows[k]).numpy())
    n = len(cache) * len(wanted)
    print(f"{name} {cfg.image_size} px: {n} images in {time.perf_counter() - started:.0f} s", flush=True)
    return files


def head_val_acc(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *,
                 lr: float, weight_decay: float, dropout: float, smoothing: float = 0.0, epochs: int = 60, step: int = 40,
                 batch: int = 64, seed: int = 42) -> float:
    """The engine's head recipe on feature rows; validation accuracy of the last epoch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(train_x.shape[1], 101))
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step, 0.1)
    for _ in range(epochs):
        head.train()
        order = torch.randperm(len(train_y), generator=generator)
        for b in range(0, len(order), batch):
            rows = order[b: b + batch]
            loss = F.cross_entropy(head(train_x[rows]), train_y[rows], label_smoothing=smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    head.eval()
    with torch.no_grad():
        return float((head(val_x).argmax(1) == val_y).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--size", type=int, default=260, help="input crop of every member")
    parser.add_argument("--flips", action="store_true", help="also compare mirror-averaged features")
    parser.add_argument("--work", type=Path, required=True, help="image cache and feature files")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(arch="lite_ensemble", pretrained=True, train="fc", image_size=args.size, device="cpu")
    splits = Splits.from_config(cfg, root=args.root)
    cache = ImageCache.build(splits.all_paths(), args.work / "cache", resize_size=cfg.resize_size)
    files = {name: member_features(name, cfg, cache, args.work, args.flips) for name in MEMBERS}

    def rows(samples: list, views: list[str], subset: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        index = [cache.index_of(s.path) for s in samples]
        per_view = [np.concatenate([np.load(files[m][v])[index] for m in subset], axis=1) for v in views]
        return torch.from_numpy(np.mean(per_view, axis=0)), torch.tensor([s.label for s in samples])

    subsets = [(m,) for m in MEMBERS] + [MEMBERS]
    view_sets = {"centre": ["centre"], "mirror-averaged": ["centre", "mirror"]} if args.flips else {
        "centre": ["centre"]}
    print("| members | features | dropout | LR | weight decay | label smoothing | val acc |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for subset, (label, views) in itertools.product(subsets, view_sets.items()):
        tx, ty = rows(splits.train, views, subset)
        vx, vy = rows(splits.val, views, subset)
        grid = [(0.3, 0.1, 0.0, 0.0), (0.0, 0.1, 0.0, 0.0), (0.0, 0.03, 0.0, 0.0), (0.0, 0.1, 1e-4, 0.0)]
        if len(subset) > 1:
            grid += [(0.0, 0.1, 1e-4, smoothing) for smoothing in (0.1, 0.2, 0.3)]
        for dropout, lr, wd, smoothing in grid:
            acc = head_val_acc(tx, ty, vx, vy, lr=lr, weight_decay=wd, dropout=dropout, smoothing=smoothing)
            names = "+".join(m.replace("efficientnet_lite", "Lite") for m in subset)
            print(f"| {names} | {label} | {dropout} | {lr} | {wd} | {smoothing} | {acc * 100:.2f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
