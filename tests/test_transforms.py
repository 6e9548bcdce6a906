"""Batched transforms: crops, per-image augmentation, reproducibility, normalisation, prefetching."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from caltech_core import settings
from caltech_core.config import TrainConfig
from caltech_core.data import dataset, threads
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import (
    NORMALIZATION,
    PREFETCH,
    BatchLoader,
    crop_offset,
    denormalize,
    is_deterministic,
    normalize_batch,
    preview_images,
)

SIZE = 32


@pytest.fixture
def cache(tmp_path) -> ImageCache:
    """Eight random-noise images (distinct content, varied aspect ratios), cached at the config's resize size."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(8):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 60 - 2 * i, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return ImageCache.build(paths, tmp_path / "cache", resize_size=TrainConfig(image_size=SIZE).resize_size)


def _cfg(*augment: str, pretrained: bool = False) -> TrainConfig:
    return TrainConfig(image_size=SIZE, augment=augment, pretrained=pretrained, batch_size=4)


def _loader(cache, cfg, *, train=True, seed=0, indices=None, batch_size=4, reuse_buffers=False):
    indices = list(range(len(cache))) if indices is None else indices
    return BatchLoader(
        cache, indices, [i % 3 for i in range(len(indices))], batch_size=batch_size, train=train, cfg=cfg,
        device="cpu", generator=torch.Generator().manual_seed(seed), reuse_buffers=reuse_buffers,
    )


def _epoch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _reference_eval(image: np.ndarray, normalization: str) -> torch.Tensor:
    """torchvision v2: CenterCrop + ToDtype(scale) + Normalize on one cached HWC image."""
    mean, std = NORMALIZATION[normalization]
    pipeline = v2.Compose([v2.CenterCrop(SIZE), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    return pipeline(torch.from_numpy(np.array(image)).permute(2, 0, 1))


@pytest.mark.parametrize("normalization", ["half", "imagenet"])
def test_eval_batches_equal_torchvision_center_crop_and_normalize(cache, normalization):
    cfg = _cfg(pretrained=normalization == "imagenet")
    assert cfg.normalization == normalization
    x, y = _epoch(_loader(cache, cfg, train=False))
    assert x.shape == (8, 3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [i % 3 for i in range(8)]  # eval keeps the given order
    assert x.is_contiguous(memory_format=torch.channels_last)
    for i in range(8):
        torch.testing.assert_close(x[i], _reference_eval(cache[i], normalization), atol=1e-5, rtol=0)


def test_normalization_constants():
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    black = torch.zeros((1, 3, 2, 2), dtype=torch.uint8)
    assert torch.allclose(normalize_batch(white, "half"), torch.ones(1, 3, 2, 2))
    assert torch.allclose(normalize_batch(black, "half"), -torch.ones(1, 3, 2, 2))
    expected = torch.tensor([(0 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    assert torch.allclose(normalize_batch(black, "imagenet")[0, :, 0, 0], expected, atol=1e-6)
    assert NORMALIZATION["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_train_without_augmentation_is_centre_crop_shuffled(cache):
    cfg = _cfg()
    assert is_deterministic(cfg)
    loader = _loader(cache, cfg)
    x, y = _epoch(loader)
    eval_x, _ = _epoch(_loader(cache, cfg, train=False))
    # Same crops as eval, in a shuffled order: match each training image to an eval image.
    matched = sorted(int(torch.argmin(((eval_x - xi) ** 2).flatten(1).sum(1))) for xi in x)
    assert matched == list(range(8))
    assert not torch.equal(x, eval_x)


def test_same_seed_same_batches_other_seed_different(cache):
    cfg = _cfg("crop", "hflip", "rotate", "vflip")
    assert not is_deterministic(cfg)
    a, ya = _epoch(_loader(cache, cfg, seed=5))
    b, yb = _epoch(_loader(cache, cfg, seed=5))
    c, _ = _epoch(_loader(cache, cfg, seed=6))
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, c)


def test_each_epoch_draws_new_augmentations(cache):
    loader = _loader(cache, _cfg("crop"))
    first, _ = _epoch(loader)
    second, _ = _epoch(loader)
    assert not torch.equal(first, second)


def test_flips_are_sampled_per_image(cache):
    # The same image 16 times in one batch: with hflip only, some copies are mirrored and some are not.
    cfg = _cfg("hflip")
    x, _ = _epoch(_loader(cache, cfg, indices=[0] * 16, batch_size=16))
    plain = _reference_eval(cache[0], "half")
    flipped = F.horizontal_flip(plain)
    is_plain = [torch.allclose(xi, plain) for xi in x]
    is_flipped = [torch.allclose(xi, flipped) for xi in x]
    assert all(p or f for p, f in zip(is_plain, is_flipped, strict=True))
    assert 0 < sum(is_flipped) < 16


def test_vertical_flip_per_image(cache):
    x, _ = _epoch(_loader(cache, _cfg("vflip"), indices=[1] * 16, batch_size=16))
    flipped = F.vertical_flip(_reference_eval(cache[1], "half"))
    assert 0 < sum(torch.allclose(xi, flipped) for xi in x) < 16


def test_random_crops_differ_per_image_and_stay_inside(cache):
    x, _ = _epoch(_loader(cache, _cfg("crop"), indices=[7] * 16, batch_size=16))
    distinct = {tuple(xi.flatten()[:50].tolist()) for xi in x}
    assert len(distinct) > 4
    # Every crop is a real window of the image: no padding (noise images have no constant -1 border rows).
    assert (x == -1).flatten(1).float().mean(1).max() < 0.05


def test_random_crop_offsets_cover_the_range():
    assert crop_offset(256, 224, None) == 16
    assert crop_offset(37, 32, None) == round(5 / 2)
    assert {crop_offset(37, 32, u) for u in np.linspace(0, 0.9999, 200)} == set(range(6))
    assert crop_offset(20, 32, 0.7) == 0


def test_rotation_is_per_image_and_within_degrees(cache):
    cfg = _cfg("rotate").replace(rotate_degrees=30.0)
    x, _ = _epoch(_loader(cache, cfg, indices=[2] * 8, batch_size=8))
    images = denormalize(x, "half")
    corners = images[:, 0, 0].astype(int).sum(1)
    # Rotated copies get black corners; copies differ from each other.
    assert (corners == 0).sum() >= 4
    assert len({img.tobytes() for img in images}) == 8


def test_len_counts_batches_and_drops_a_single_last_training_image(cache):
    cfg = _cfg()
    assert len(_loader(cache, cfg, indices=list(range(8)), batch_size=3)) == 3
    train = _loader(cache, cfg, indices=list(range(7)), batch_size=3)  # 3 + 3 + 1: the 1 is dropped
    assert len(train) == 2 and train.num_samples == 6
    assert sum(len(y) for _, y in train) == 6
    evaluation = _loader(cache, cfg, indices=list(range(7)), batch_size=3, train=False)
    assert len(evaluation) == 3 and sum(len(y) for _, y in evaluation) == 7


def test_breaking_out_early_stops_the_prefetch_thread(cache):
    before = threading.active_count()
    loader = _loader(cache, _cfg("crop"), batch_size=1, indices=list(range(8)) * 4)
    iterator = iter(loader)
    next(iterator)
    iterator.close()
    assert threading.active_count() == before


def test_reused_buffers_give_the_same_batches_and_recycle_memory(cache):
    cfg = _cfg("crop", "hflip")
    indices = list(range(8)) * 4  # 32 images: 16 batches of 2, more than the ring holds
    fresh = [x.clone() for x, _ in _loader(cache, cfg, indices=indices, batch_size=2)]
    reused, pointers = [], []
    for x, _ in _loader(cache, cfg, indices=indices, batch_size=2, reuse_buffers=True):
        reused.append(x.clone())  # copied before the next draw: the loader will overwrite x later
        pointers.append(x.data_ptr())
        assert x.is_contiguous(memory_format=torch.channels_last)
    assert len(reused) == len(fresh) == 16
    for a, b in zip(fresh, reused, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    ring = PREFETCH + 2
    assert len(set(pointers)) == ring and pointers[ring:] == pointers[:-ring]


def test_errors_in_the_prefetch_thread_reach_the_caller(cache):
    loader = _loader(cache, _cfg(), indices=[0, 1, 99], batch_size=2, train=False)
    with pytest.raises(IndexError):
        list(loader)


def test_rejects_mismatched_inputs(cache):
    with pytest.raises(ValueError, match="differ in length"):
        BatchLoader(cache, [0, 1], [0], batch_size=2, train=True, cfg=_cfg(), device="cpu", generator=None)


def test_preview_shows_what_the_model_sees(cache):
    cfg = _cfg()
    shown = preview_images(cache, [3, 4], cfg, n=5, train=False)
    assert len(shown) == 2 and shown[0].shape == (SIZE, SIZE, 3) and shown[0].dtype == np.uint8
    assert np.array_equal(shown[0], np.asarray(F.center_crop(torch.from_numpy(np.array(cache[3])).permute(2, 0, 1), SIZE).permute(1, 2, 0)))
    augmented = preview_images(cache, [3] * 6, _cfg("crop", "hflip"), n=6, seed=1)
    assert len({a.tobytes() for a in augmented}) > 1
    assert [a.tobytes() for a in augmented] == [a.tobytes() for a in preview_images(cache, [3] * 6, _cfg("crop", "hflip"), n=6, seed=1)]


def test_loader_on_mini_root_real_images(mini_root, tmp_path):
    splits = dataset.load_splits(mini_root, max_per_class=3)
    cfg = TrainConfig(image_size=64, augment=("crop", "hflip"), batch_size=3)
    real = ImageCache.build([s.path for s in splits.train], tmp_path / "cache", resize_size=cfg.resize_size)
    loader = BatchLoader(
        real, [real.index_of(s.path) for s in splits.train], [s.label for s in splits.train], batch_size=3,
        train=True, cfg=cfg, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
    )
    x, y = _epoch(loader)
    assert x.shape == (9, 3, 64, 64) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6  # float32 rounding of the fused op


@pytest.mark.parametrize("reuse_buffers", [False, True])
def test_crop_workers_give_the_same_batches_as_one_thread(cache, reuse_buffers):
    """Every random draw is made up front, so splitting a batch's crops over threads changes nothing."""
    cfg = _cfg("crop", "hflip", "vflip", "rotate")
    batches = {}
    for workers in (1, 3):
        loader = BatchLoader(
            cache, list(range(len(cache))), [i % 3 for i in range(len(cache))], batch_size=5, train=True,
            cfg=cfg, generator=torch.Generator().manual_seed(7), reuse_buffers=reuse_buffers,
            crop_workers=workers,
        )
        batches[workers] = [(x.clone(), y.clone()) for x, y in loader]
    assert len(batches[1]) == len(batches[3]) == 2
    for (x1, y1), (x3, y3) in zip(batches[1], batches[3], strict=True):
        assert torch.equal(x1, x3) and torch.equal(y1, y3)


def test_worker_threads_follow_the_cores(monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 16)
    assert threads.worker_threads() == 16 and threads.worker_threads(reserved=2) == 14
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    assert threads.worker_threads() == 2 and threads.worker_threads(reserved=2) == 1
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)
    assert threads.worker_threads() == threads.MAX_WORKERS
    monkeypatch.setenv(settings.THREADS.name, "4")
    assert threads.worker_threads() == 4 and threads.worker_threads(reserved=2) == 2
    monkeypatch.setenv(settings.THREADS.name, "many")
    with pytest.raises(ValueError, match="CALTECH_STUDIO_THREADS"):
        threads.worker_threads()


@pytest.mark.parametrize("augment", [("crop", "hflip", "vflip"), ("hflip", "rotate")])
def test_flips_left_to_the_device_give_the_same_batches(cache, augment):
    """On CUDA the flips of a batch without rotations run on the GPU, a batch at once: same pixels."""
    cfg = _cfg(*augment)
    loader = _loader(cache, cfg)
    plan = loader._plan()
    on_host = [loader._finish(h, y)[0] for h, y, _ in loader._host_iter(plan)]
    deferred = list(loader._host_iter(plan, device_flips=True))
    later = [loader._finish(h, y, flips=f)[0] for h, y, f in deferred]
    assert all(torch.equal(a, b) for a, b in zip(on_host, later, strict=True))
    left = sum(len(f.horizontal) + len(f.vertical) for _, _, f in deferred)
    assert (left > 0) == ("rotate" not in augment)  # with rotations the host flips first, as before
