"""The GPU-resident loader against the host loader: the same draws, labels and pixels for a seed (on the CPU),
and on CUDA when there is one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from caltech_core.config import TrainConfig
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.resident import (
    ROTATION_TOLERANCE,
    ResidentImages,
    ResidentLoader,
    fits,
    resident_bytes,
)
from caltech_core.data.transforms import BatchLoader

BASE = TrainConfig(arch="mobilenet_v3_small", image_size=64, batch_size=8)


@pytest.fixture(scope="module")
def samples(splits) -> tuple[list, list]:
    return [s.path for s in splits.train], [s.label for s in splits.train]


def pair(cache: ImageCache, samples: tuple[list, list], cfg: TrainConfig, train: bool, device: str = "cpu"):
    paths, labels = samples
    indices = [cache.index_of(p) for p in paths]
    host = BatchLoader(cache, indices, labels, batch_size=cfg.batch_size, train=train, cfg=cfg,
                       generator=torch.Generator().manual_seed(3))
    resident = ResidentLoader(ResidentImages(cache, device), indices, labels, batch_size=cfg.batch_size,
                              train=train, cfg=cfg, generator=torch.Generator().manual_seed(3))
    return host, resident


@pytest.mark.parametrize(("augment", "train", "resize"), [
    ((), False, 73),  # evaluation: centre crops in order
    (("crop", "hflip", "vflip"), True, 73),
    (("crop", "hflip"), True, 48),  # crops larger than the images: zero padding around the centre
])
def test_same_batches_as_the_host_path_bit_for_bit(cache_dir: Path, samples, augment, train, resize) -> None:
    cache = ImageCache.build(samples[0], cache_dir, resize_size=resize)
    host, resident = pair(cache, samples, BASE.replace(augment=augment), train)
    assert len(host) == len(resident) and resident_bytes(cache) == ResidentImages(cache, "cpu").nbytes
    for epoch in range(2):  # the generator moves on alike: the second epoch's draws match too
        batches = 0
        for (x, y), (rx, ry) in zip(host, resident, strict=True):
            assert torch.equal(y, ry) and rx.shape == x.shape and rx.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(x, rx), f"epoch {epoch}: {(x != rx).float().mean():.4f} of the values differ"
            batches += 1
        assert batches == len(host)


def test_rotation_within_the_stated_tolerance(cache_dir: Path, samples) -> None:
    cache = ImageCache.build(samples[0], cache_dir, resize_size=73)
    host, resident = pair(cache, samples, BASE.replace(augment=("crop", "hflip", "rotate"), rotate_degrees=45.0), True)
    worst = 0.0
    for (x, y), (rx, ry) in zip(host, resident, strict=True):
        assert torch.equal(y, ry)
        differs = (x != rx).any(dim=1).float().mean(dim=(1, 2))  # per image: share of pixels differing
        worst = max(worst, float(differs.max()))
    assert worst <= ROTATION_TOLERANCE, worst  # measured: 0.07% of a 64 px crop here (edge rounding)


def test_only_cuda_with_room_takes_the_resident_path(cache_dir: Path, samples) -> None:
    cache = ImageCache.build(samples[0], cache_dir, resize_size=73)
    assert not fits(cache, torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run bench/gpu_check.py there)")
def test_on_cuda_the_same_batches_as_the_host_path(cache_dir: Path, samples) -> None:
    cache = ImageCache.build(samples[0], cache_dir, resize_size=73)
    assert fits(cache, torch.device("cuda"))
    host, resident = pair(cache, samples, BASE.replace(augment=("crop", "hflip", "vflip")), True, "cuda")
    for (x, y), (rx, ry) in zip(host, resident, strict=True):
        assert rx.device.type == "cuda" and torch.equal(y, ry.cpu())
        torch.testing.assert_close(rx.cpu(), x, rtol=0, atol=1e-6)  # the GPU's multiply-add may round differently
