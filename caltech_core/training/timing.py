"""How long one training step takes per image on this machine (the Train page's time-per-epoch estimate)."""

from __future__ import annotations

import time

import torch
from torch import nn

from caltech_core.nets.device import resolve_device
from caltech_core.nets.models import apply_train_mode, build_model


def seconds_per_training_image(arch: str, train_mode: str, image_size: int, batch: int, device: str) -> float:
    """Time a forward+backward+SGD step on one small random batch (best of two after a warm-up): s/image."""
    dev = resolve_device(device)
    model = build_model(arch, 10).to(dev)
    apply_train_mode(model, arch, train_mode)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(batch, 3, image_size, image_size, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:]) / batch
