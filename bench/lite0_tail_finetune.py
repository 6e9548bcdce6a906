"""Does fine-tuning EfficientNet-Lite0's last blocks pay, on top of the frozen-feature head? (best-offline)

On a 2-core CPU a full fine-tune is out of reach (one epoch over the 2892 training images takes many minutes),
so this tries the cheap version: everything up to block 5 stays frozen and its output maps (112 x 14 x 14 at
224 px) are computed once, for every image and for its horizontal flip; then only the tail is trained on them,
with random horizontal flips as augmentation. Compared on the study's split, same maps for all:

- head:       frozen network, a new linear layer (what the best-offline preset trains), flips as augmentation;
- conv_head:  the final 1x1 conv (320 -> 1280) + its BatchNorm + the new layer;
- block6:     the last inverted-residual block + conv_head + the new layer;
- block5:     `--deep` only: the last two stages (slow: about 30 s an epoch here).

Each prints validation accuracy (plain and with flip test-time augmentation), then test accuracy the same two
ways, and its seconds. Choices should be made on validation; test is printed for the record.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/lite0_tail_finetune.py --work /tmp/tail
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import cpu_model
from torch import nn

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.models import build_model

FROZEN_BLOCKS = 5  # blocks[:5] always frozen: their output maps are what gets cached
# name -> (index of the first trained block (7 = none, only conv_head; 8 = nothing but the new layer),
#          learning rate of the tail, of the new layer, epochs, StepLR step)
SETTINGS = {
    "head": (8, 0.0, 0.1, 30, 20),
    "conv_head": (7, 0.01, 0.1, 10, 7),
    "block6": (6, 0.01, 0.1, 10, 7),
    "block5": (5, 0.01, 0.1, 10, 7),
}


def block_maps(cfg: TrainConfig, splits: Splits, work: Path) -> dict[str, tuple[torch.Tensor, ...]]:
    """{split: (maps, maps of the flipped images, labels)} after blocks[:5], computed once into `work`."""
    path = work / f"maps-{cfg.image_size}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    cache = ImageCache.build(splits.all_paths(), work / "cache", resize_size=cfg.resize_size)
    model = build_model("efficientnet_lite0", splits.num_classes, pretrained=True).eval()
    frozen = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:FROZEN_BLOCKS])
    out = {}
    for name in ("train", "val", "test"):
        samples = getattr(splits, name)
        loader = BatchLoader(cache, [cache.index_of(s.path) for s in samples], [s.label for s in samples],
                             batch_size=64, train=False, cfg=cfg, reuse_buffers=True)
        maps, flipped = [], []
        with torch.no_grad():
            for x, _ in loader:
                maps.append(frozen(x))
                flipped.append(frozen(x.flip(3)))
        out[name] = (torch.cat(maps), torch.cat(flipped), torch.tensor([s.label for s in samples]))
        print(f"maps of {name}: {tuple(out[name][0].shape)}", flush=True)
    torch.save(out, path)
    return out


def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int = 256) -> torch.Tensor:
    """fn over `x` in batches of `size` rows, concatenated (bounded memory for 2892-image splits)."""
    return torch.cat([fn(x[i: i + size]) for i in range(0, len(x), size)])


def run(setting: str, maps: dict[str, tuple[torch.Tensor, ...]], num_classes: int, seed: int) -> dict:
    """Train one tail on the cached maps; accuracies on val/test, plain and flip-averaged."""
    first, tail_lr, head_lr, epochs, step = SETTINGS[setting]
    torch.manual_seed(seed)
    model = build_model("efficientnet_lite0", num_classes, pretrained=True)
    # What follows the cached maps, in order; the first `first - FROZEN_BLOCKS` of them stay frozen.
    layers = [*model.blocks[FROZEN_BLOCKS:], nn.Sequential(model.conv_head, model.bn2)]
    cut = first - FROZEN_BLOCKS
    frozen = nn.Sequential(*layers[:cut]).eval()
    tail = nn.Sequential(*layers[cut:]) if cut < len(layers) else None
    head = nn.Sequential(nn.Dropout(0.2), model.classifier)
    start = time.perf_counter()
    with torch.no_grad():  # the frozen part of the tail once
        data = {split: (in_chunks(frozen, images), in_chunks(frozen, flipped), labels)
                for split, (images, flipped, labels) in maps.items()}

    def forward(x: torch.Tensor) -> torch.Tensor:
        features = tail(x) if tail is not None else x
        return head(features.mean((2, 3)))

    groups = [{"params": list(model.classifier.parameters()), "lr": head_lr}]
    if tail is not None:
        groups.append({"params": list(tail.parameters()), "lr": tail_lr})
    optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step, 0.1)
    x, x_flipped, y = data["train"]
    for _ in range(epochs):
        for module in (tail, head):
            if module is not None:
                module.train()
        order = torch.randperm(len(y))
        for i in range(0, len(y) - 1, 64):
            idx = order[i: i + 64]
            flip = (torch.rand(len(idx)) < 0.5).view(-1, 1, 1, 1)
            batch = torch.where(flip, x_flipped[idx], x[idx])
            loss = nn.functional.cross_entropy(forward(batch), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()

    def accuracy(split: str, tta: bool) -> float:
        for module in (tail, head):
            if module is not None:
                module.eval()
        images, flipped, labels = data[split]
        with torch.no_grad():
            prob = in_chunks(forward, images).softmax(1)
            if tta:
                prob += in_chunks(forward, flipped).softmax(1)
        return round(float((prob.argmax(1) == labels).float().mean()), 4)

    return {"setting": setting, "val": accuracy("val", False), "val_flip_tta": accuracy("val", True),
            "test": accuracy("test", False), "test_flip_tta": accuracy("test", True),
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="Caltech-101 folder (default: $CALTECH101_ROOT)")
    parser.add_argument("--work", type=Path, required=True, help="image cache + cached maps (reused)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--deep", action="store_true", help="also fine-tune the last two stages (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    cfg = TrainConfig(arch="efficientnet_lite0", pretrained=True, train="fc", image_size=args.image_size)
    splits = Splits.from_config(cfg, root=args.root)
    start = time.perf_counter()
    maps = block_maps(cfg, splits, args.work)
    print(f"block maps ready in {time.perf_counter() - start:.0f} s", flush=True)
    for setting in [s for s in SETTINGS if args.deep or s != "block5"]:
        print(run(setting, maps, splits.num_classes, args.seed), flush=True)


if __name__ == "__main__":
    main()
