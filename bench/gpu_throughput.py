"""Training throughput on real cached data (our BatchLoader) vs the ceiling (synthetic input already on device).

For each architecture: images/second of full training steps (forward, backward, SGD step; AMP bf16/fp16 and
channels_last on CUDA, fp32 on the CPU, exactly as engine.train) fed by BatchLoader over the decoded-image
cache with the study's augmentation, and the same steps on one synthetic batch that never leaves the device.
ratio = real / synthetic: near 1 means the input pipeline keeps the device busy.

    .venv/bin/python bench/gpu_throughput.py --archs resnet18,efficientnet_lite0 --iters 5 --image-size 64

The real loader is measured with one crop thread (the 2-core tuning) and with one per core beyond two
(`--crop-workers 1,auto`), so a run shows what scaling the crop threads with the machine buys.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from machine import describe

from caltech_core.config import ARCHITECTURES, TrainConfig
from caltech_core.data.dataset import load_splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.resident import ResidentImages, ResidentLoader, fits
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.device import resolve_device
from caltech_core.nets.models import build_model
from caltech_core.training.evaluation import autocast_for


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer(
    cfg: TrainConfig, num_classes: int, device: torch.device, *, channels_last: bool | None = None,
    fused: bool = False, compile_backend: str | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A fresh model's training step (forward, backward, SGD step) as engine.train takes it.

    As the engine by default (channels_last and autocast on CUDA when cfg.amp); `channels_last` and `fused`
    (the fused CUDA SGD kernel) switch single settings for the settings table; `compile_backend` wraps the
    model in torch.compile with that backend ("inductor": what cfg.compile does on CUDA).
    """
    torch.manual_seed(0)
    if channels_last is None:
        channels_last = device.type == "cuda"
    model = build_model(cfg.arch, num_classes).to(
        device, memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4,
                                **({"fused": True} if fused else {}))
    net = torch.compile(model, backend=compile_backend, dynamic=False) if compile_backend else model
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and cfg.amp and not torch.cuda.is_bf16_supported())
    criterion = torch.nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast_for(device, cfg.amp):
            loss = criterion(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def rate(step: Callable[[torch.Tensor, torch.Tensor], None], batches, device: torch.device, warmup: int,
         iters: int) -> float:
    """Images per second of `iters` steps on `batches` after `warmup` untimed steps."""
    seen, started = 0, 0.0
    for n, (x, y) in enumerate(itertools.islice(batches, warmup + iters)):
        if n == warmup:
            _sync(device)
            started, seen = time.perf_counter(), 0
        step(x, y)
        seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - started)


def measure(
    cfg: TrainConfig, batches, num_classes: int, device: torch.device, warmup: int, iters: int, *,
    channels_last: bool | None = None, fused: bool = False,
) -> float:
    """Images per second of `iters` training steps of a fresh model on `batches` after `warmup` untimed steps."""
    step = trainer(cfg, num_classes, device, channels_last=channels_last, fused=fused)
    return rate(step, batches, device, warmup, iters)


# GPU settings measured one at a time on a synthetic batch: (label, amp, channels_last, fused SGD).
SETTINGS = (
    ("fp32", False, False, False),
    ("fp32 + channels_last", False, True, False),
    ("bf16/fp16 autocast", True, False, False),
    ("autocast + channels_last (engine)", True, True, False),
    ("autocast + channels_last + fused SGD", True, True, True),
)


def settings_rows(archs: list[str], num_classes: int, device: torch.device, *, batch_size: int, image_size: int,
                  warmup: int, iters: int, log=print) -> list[dict]:
    """Synthetic-batch img/s of each architecture under each of SETTINGS."""
    rows = []
    for arch in archs:
        row: dict = {"arch": arch}
        for label, amp, channels_last, fused in SETTINGS:
            cfg = TrainConfig(arch=arch, image_size=image_size, amp=amp, device=device.type)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)
            x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
            row[label] = measure(cfg, itertools.repeat((x, y)), num_classes, device, warmup, iters,
                                 channels_last=channels_last, fused=fused)
        log(f"settings {arch}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items() if k != "arch"))
        rows.append(row)
    return rows


def throughput_rows(
    cache: ImageCache, samples: list, num_classes: int, archs: list[str], device: torch.device, *,
    batch_size: int, image_size: int, augment: str, warmup: int, iters: int,
    crop_workers: list[int | None], log=print,
) -> list[dict]:
    """One row per architecture: real-loader img/s for each crop-worker count, the synthetic ceiling, ratios.

    `samples` must hold at least (warmup + iters) * batch_size training samples (repeats allowed).
    """
    rows = []
    for arch in archs:
        cfg, real, synthetic = _inputs(cache, samples, num_classes, arch, device, batch_size, image_size, augment)
        row: dict = {"arch": arch, "batch_size": batch_size, "image_size": image_size}
        for workers in crop_workers:
            loader = real(workers)
            row[f"real_{loader.crop_workers}"] = measure(cfg, iter(loader), num_classes, device, warmup, iters)
        row["synthetic"] = measure(cfg, synthetic, num_classes, device, warmup, iters)
        rows.append(_with_ratios(row, log))
    return rows


def _with_ratios(row: dict, log) -> dict:
    """`row` with ratio_X = real_X / synthetic for each real_X figure, logged on one line."""
    for key in [k for k in row if k.startswith("real_")]:
        row[f"ratio_{key[5:]}"] = row[key] / row["synthetic"]
    log(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return row


def loader_rows(
    cache: ImageCache, samples: list, num_classes: int, archs: list[str], device: torch.device, *,
    batch_size: int, image_size: int, augment: str, warmup: int, iters: int, log=print,
) -> list[dict]:
    """The second GPU pass's loader figures: per architecture, img/s of the real loader with the flips on the
    GPU (one crop thread per core beyond two, and one), with every flip forced onto the host per image (the
    old path), of the images resident on the GPU (`data/resident.py`, when they fit: what the engine then uses)
    and of a synthetic batch on the device (the ceiling); ratio_* = real / synthetic (target >= 0.90).
    """
    rows = []
    images = ResidentImages(cache, device) if fits(cache, device) else None  # uploaded once for every arch
    for arch in archs:
        cfg, real, synthetic = _inputs(cache, samples, num_classes, arch, device, batch_size, image_size, augment)
        loader = real()
        row: dict = {"arch": arch, "batch_size": batch_size, "image_size": image_size,
                     "crop_workers": loader.crop_workers}
        row["real_gpu_flips"] = measure(cfg, iter(loader), num_classes, device, warmup, iters)
        row["real_gpu_flips_1"] = measure(cfg, iter(real(1)), num_classes, device, warmup, iters)
        row["real_host_flips"] = measure(cfg, iter(real(flips_on_device=False)), num_classes, device, warmup, iters)
        if images is not None:
            row["real_resident"] = measure(cfg, iter(real(resident=images)), num_classes, device, warmup, iters)
        row["synthetic"] = measure(cfg, synthetic, num_classes, device, warmup, iters)
        rows.append(_with_ratios(row, log))
    return rows


def compile_rows(
    cache: ImageCache, samples: list, num_classes: int, archs: list[str], device: torch.device, *,
    batch_size: int, image_size: int, augment: str, warmup: int, iters: int, backend: str, log=print,
) -> list[dict]:
    """Per architecture, one torch.compile'd model (`backend`; "inductor" is what cfg.compile does on CUDA):
    the seconds of its first step less one steady step (the compilation), then its steady img/s on the
    synthetic and on the real batches (flips on the GPU); ratio = real / synthetic of the compiled model."""
    rows = []
    for arch in archs:
        cfg, real, synthetic = _inputs(cache, samples, num_classes, arch, device, batch_size, image_size, augment)
        step = trainer(cfg, num_classes, device, compile_backend=backend)
        started = time.perf_counter()
        step(*next(synthetic))
        _sync(device)
        first = time.perf_counter() - started
        row: dict = {"arch": arch, "backend": backend}
        row["synthetic_compiled"] = rate(step, synthetic, device, warmup, iters)
        row["real_compiled"] = rate(step, iter(real()), device, warmup, iters)
        row["compile_s"] = max(0.0, first - batch_size / row["synthetic_compiled"])
        row["ratio_compiled"] = row["real_compiled"] / row["synthetic_compiled"]
        log(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        rows.append(row)
    return rows


def _inputs(cache: ImageCache, samples: list, num_classes: int, arch: str, device: torch.device, batch_size: int,
            image_size: int, augment: str) -> tuple[TrainConfig, Callable[..., BatchLoader], Iterator]:
    """`arch`'s config, a maker of real loaders (crop threads, where the flips run) and a synthetic batch."""
    cfg = TrainConfig(arch=arch, image_size=image_size, augment=augment, batch_size=batch_size, device=device.type)
    indices, labels = [cache.index_of(s.path) for s in samples], [s.label for s in samples]

    def real(crop_workers: int | None = None, flips_on_device: bool = True,
             resident: ResidentImages | None = None) -> BatchLoader:
        if resident is not None:
            return ResidentLoader(resident, indices, labels, batch_size=batch_size, train=True, cfg=cfg,
                                  generator=torch.Generator().manual_seed(0))
        return BatchLoader(cache, indices, labels, batch_size=batch_size, train=True, cfg=cfg, device=device,
                           generator=torch.Generator().manual_seed(0), reuse_buffers=True,
                           crop_workers=crop_workers, flips_on_device=flips_on_device)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)
    x = x.contiguous(memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    return cfg, real, itertools.repeat((x, y))


def loader_table(rows: list[dict]) -> str:
    """loader_rows as Markdown (img/s; ratio = real / synthetic)."""
    head = ["architecture", "crop threads", "real, GPU flips", "real, GPU flips, 1 thread", "real, host flips",
            "synthetic", "ratio GPU flips", "ratio GPU flips, 1 thread", "ratio host flips", "real, resident on GPU",
            "ratio resident"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["arch"], str(r["crop_workers"]), *(f"{r[k]:.0f}" for k in (
            "real_gpu_flips", "real_gpu_flips_1", "real_host_flips", "synthetic")),
            *(f"{r[k]:.2f}" for k in ("ratio_gpu_flips", "ratio_gpu_flips_1", "ratio_host_flips")),
            *((f"{r['real_resident']:.0f}", f"{r['ratio_resident']:.2f}") if "real_resident" in r else ("—", "—"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compile_table(rows: list[dict]) -> str:
    """compile_rows as Markdown."""
    lines = ["| architecture | compile (s) | compiled: real (img/s) | compiled: synthetic (img/s) | ratio |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['compile_s']:.1f} | {r['real_compiled']:.0f} | {r['synthetic_compiled']:.0f} | "
              f"{r['ratio_compiled']:.2f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="Caltech-101 root (default: $CALTECH101_ROOT)")
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--augment", default="crop,hflip", help="training augmentations of the real loader")
    parser.add_argument("--cache-dir", default=None, help="image cache folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--crop-workers", default="1,auto",
                        help="crop-thread counts of the real loader to compare ('auto' = one per core beyond two)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = load_splits(args.root)
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="throughput-"))
    # Enough training images for warmup + iters batches without reshuffling mid-measurement.
    needed = (args.warmup + args.iters) * args.batch_size
    samples = (data.train * (needed // max(len(data.train), 1) + 1))[:needed]
    print(f"device: {describe(device)}")
    print(f"batch {args.batch_size}, image {args.image_size}, {args.warmup} warm-up + {args.iters} timed steps, "
          f"real data augmented with {args.augment or 'nothing'}")
    t = time.perf_counter()
    unique = list(dict.fromkeys(s.path for s in samples))
    cache = ImageCache.build(unique, cache_dir, resize_size=TrainConfig(image_size=args.image_size).resize_size)
    print(f"image cache for {len(unique)} images: {time.perf_counter() - t:.1f} s (not timed below)\n")
    workers = [None if w.strip() == "auto" else int(w) for w in args.crop_workers.split(",") if w.strip()]
    rows = throughput_rows(
        cache, samples, data.num_classes, [a.strip() for a in args.archs.split(",") if a.strip()], device,
        batch_size=args.batch_size, image_size=args.image_size, augment=args.augment, warmup=args.warmup,
        iters=args.iters, crop_workers=workers, log=lambda line: print(line, file=sys.stderr),
    )
    print(markdown_table(rows))


def settings_table(rows: list[dict]) -> str:
    """Settings rows as Markdown: img/s per setting, and each one's speed-up over fp32."""
    labels = [label for label, *_ in SETTINGS]
    lines = ["| architecture | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for r in rows:
        base = r[labels[0]]
        lines.append(f"| {r['arch']} | " + " | ".join(f"{r[k]:.0f} ({r[k] / base:.2f}x)" for k in labels) + " |")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table: real img/s per crop-thread count, synthetic img/s, real / synthetic."""
    if not rows:
        return "(no architectures measured)"
    counts = [k[5:] for k in rows[0] if k.startswith("real_")]
    head = ["architecture", *(f"real, {c} crop thread(s) (img/s)" for c in counts), "synthetic (img/s)",
            *(f"ratio, {c} thread(s)" for c in counts)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["arch"], *(f"{r[f'real_{c}']:.0f}" for c in counts), f"{r['synthetic']:.0f}",
                 *(f"{r[f'ratio_{c}']:.2f}" for c in counts)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
