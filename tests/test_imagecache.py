"""The decoded-image cache: odd formats, unreadable files, reuse, re-reading changed files, crash safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import v2

from caltech_core.data import dataset
from caltech_core.data.imagecache import ImageCache, load_resized, resized_size

READABLE = ("rgb_jpeg", "gray", "cmyk", "rgba_png", "png16", "gif")
BROKEN = ("truncated", "text", "empty")


def test_every_readable_format_becomes_rgb_with_shorter_side_resized(odd_images, tmp_path):
    paths = [odd_images[k] for k in (*READABLE, *BROKEN)]
    cache = ImageCache.build(paths, tmp_path / "cache", resize_size=32)
    assert len(cache) == len(READABLE)
    for kind in READABLE:
        i = cache.index_of(odd_images[kind])
        assert i is not None, kind
        img = cache[i]
        assert img.dtype == np.uint8 and img.shape == (32, 48, 3), kind  # 40x60 source, shorter side 32
    # 16-bit full scale is white.
    assert cache[cache.index_of(odd_images["png16"])].min() == 255
    # 50% alpha over white lightens the image.
    rgba = cache[cache.index_of(odd_images["rgba_png"])].astype(int)
    assert rgba.min() >= 126
    # Grayscale becomes three equal channels.
    gray = cache[cache.index_of(odd_images["gray"])]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_sixteen_bit_mid_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "mid.png"
    Image.fromarray(np.full((10, 10), 32768, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    arr = load_resized(path, 10)
    assert arr.shape == (10, 10, 3)
    assert np.all(arr == 128)


def test_unreadable_files_are_listed_never_raised(odd_images, tmp_path):
    missing = tmp_path / "gone.jpg"
    cache = ImageCache.build([*(odd_images[k] for k in BROKEN), missing], tmp_path / "cache", resize_size=32)
    assert len(cache) == 0
    reported = {s.path: s.reason for s in cache.unreadable}
    assert set(reported) == {odd_images[k] for k in BROKEN} | {missing}
    assert all(reason for reason in reported.values())
    assert "cannot read file" in reported[missing]
    for kind in BROKEN:
        assert cache.index_of(odd_images[kind]) is None


def test_matches_torchvision_resize_of_the_pil_image(odd_images):
    path = odd_images["rgb_jpeg"]
    ours = load_resized(path, 32)
    with Image.open(path) as im:
        ref = np.asarray(v2.Resize(32)(im.convert("RGB")))
    assert ours.shape == ref.shape
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize(("w", "h", "expected"), [(300, 200, (384, 256)), (200, 300, (256, 384)), (333, 257, (331, 256))])
def test_resized_size_follows_torchvision(w, h, expected):
    assert resized_size(w, h, 256) == expected


def test_reuses_entries_and_rereads_a_changed_file(odd_images, tmp_path):
    cache_dir = tmp_path / "cache"
    paths = [odd_images["rgb_jpeg"], odd_images["gray"]]
    first = ImageCache.build(paths, cache_dir, resize_size=32)
    before = first[first.index_of(odd_images["gray"])].copy()

    calls: list[tuple[int, int]] = []
    again = ImageCache.build(paths, cache_dir, resize_size=32, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 2)]  # nothing decoded: everything came from the index
    assert np.array_equal(again[again.index_of(odd_images["gray"])], before)

    # Replace one image with a different picture; size or mtime changes, so it must be decoded again.
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(odd_images["gray"])
    st = odd_images["gray"].stat()
    os.utime(odd_images["gray"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls.clear()
    changed = ImageCache.build(paths, cache_dir, resize_size=32, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (1, 2) and calls[-1] == (2, 2)
    assert changed[changed.index_of(odd_images["gray"])].max() == 0
    # The untouched image still reads the same pixels.
    assert np.array_equal(changed[changed.index_of(odd_images["rgb_jpeg"])], first[first.index_of(odd_images["rgb_jpeg"])])


def test_appends_new_images_and_keeps_order_of_request(odd_images, tmp_path):
    cache_dir = tmp_path / "cache"
    ImageCache.build([odd_images["gif"]], cache_dir, resize_size=32)
    cache = ImageCache.build([odd_images["cmyk"], odd_images["gif"]], cache_dir, resize_size=32)
    assert cache.paths == [odd_images["cmyk"].absolute(), odd_images["gif"].absolute()]
    assert cache.index_of(odd_images["cmyk"]) == 0


def test_damaged_index_is_rebuilt_not_fatal(odd_images, tmp_path):
    cache_dir = tmp_path / "cache"
    paths = [odd_images["rgb_jpeg"]]
    good = ImageCache.build(paths, cache_dir, resize_size=32)[0].copy()
    (cache_dir / "images-32" / "index.json").write_text("{not json")
    rebuilt = ImageCache.build(paths, cache_dir, resize_size=32)
    assert np.array_equal(rebuilt[0], good)
    index = json.loads((cache_dir / "images-32" / "index.json").read_text())
    assert index["pixels"] != "pixels-0.u8"  # a fresh pixel file, the old one removed
    assert sorted(p.name for p in (cache_dir / "images-32").glob("pixels-*.u8")) == [index["pixels"]]


def test_index_never_points_past_the_pixel_file(odd_images, tmp_path):
    cache_dir = tmp_path / "cache"
    paths = [odd_images["rgb_jpeg"], odd_images["gray"]]
    ImageCache.build(paths, cache_dir, resize_size=32)
    index = json.loads((cache_dir / "images-32" / "index.json").read_text())
    pixels = cache_dir / "images-32" / index["pixels"]
    with open(pixels, "r+b") as f:  # simulate a lost tail: the second image's bytes are gone
        f.truncate(32 * 48 * 3)
    calls: list[tuple[int, int]] = []
    cache = ImageCache.build(paths, cache_dir, resize_size=32, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (1, 2)  # only the lost image is decoded again
    assert len(cache) == 2 and cache[1].shape == (32, 48, 3)


def test_compaction_drops_stale_bytes(odd_images, tmp_path):
    cache_dir = tmp_path / "cache"
    path = odd_images["rgb_jpeg"]
    ImageCache.build([path], cache_dir, resize_size=32)
    for k in range(2):  # the second change makes stale bytes 2/3 of the file: compacted to one copy
        Image.fromarray(np.full((40, 60, 3), 40 * k, np.uint8)).save(path)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + (k + 1) * 10**9))
        cache = ImageCache.build([path], cache_dir, resize_size=32)
    files = list((cache_dir / "images-32").glob("pixels-*.u8"))
    assert len(files) == 1 and files[0].stat().st_size == 32 * 48 * 3
    assert int(np.median(cache[0])) == 40


def test_decompression_bomb_limit_stays_on(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 300*300 > 2 * 100: Pillow refuses to decode
    cache = ImageCache.build([path], tmp_path / "cache", resize_size=32)
    assert len(cache) == 0
    assert "DecompressionBomb" in cache.unreadable[0].reason


def test_mini_root_images_cache_at_256(mini_root, tmp_path):
    splits = dataset.load_splits(mini_root)
    paths = splits.all_paths()
    cache = ImageCache.build(paths, tmp_path / "cache")
    assert len(cache) == len(paths) == 36 and cache.unreadable == []
    for i in range(len(cache)):
        assert min(cache[i].shape[:2]) == 256 and cache[i].shape[2] == 3
    # A view into the memmap, not a private copy.
    assert not cache[0].flags.owndata


def test_build_reports_progress_up_to_total(mini_root, tmp_path):
    paths = dataset.load_splits(mini_root).all_paths()[:5]
    seen: list[tuple[int, int]] = []
    ImageCache.build(paths, tmp_path / "cache", resize_size=64, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_paths_are_keys_whatever_their_spelling(odd_images, tmp_path, monkeypatch):
    monkeypatch.chdir(odd_images["gif"].parent)
    cache = ImageCache.build([Path("palette.gif")], tmp_path / "cache", resize_size=32)
    assert cache.index_of(odd_images["gif"]) == 0
    assert cache.index_of("palette.gif") == 0


def test_the_index_is_checkpointed_by_decoding_time_and_an_interrupted_build_keeps_it(mini_root, tmp_path,
                                                                                        monkeypatch):
    from caltech_core.data import imagecache

    paths = dataset.load_splits(mini_root).all_paths()[:5]
    saves: list[int] = []
    real_save = imagecache._save
    monkeypatch.setattr(imagecache, "_save", lambda d, r, index: (saves.append(len(index.entries)),
                                                                  real_save(d, r, index)))
    monkeypatch.setattr(imagecache, "CHUNK", 2)
    ImageCache.build(paths, tmp_path / "quick", resize_size=32)
    assert saves == [5]  # a build shorter than CHECKPOINT_SECONDS writes its index once, at the end

    saves.clear()
    monkeypatch.setattr(imagecache, "CHECKPOINT_SECONDS", 0.0)  # every round of the pool is a checkpoint

    def crash(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt  # killed in the middle of the second round

    with pytest.raises(KeyboardInterrupt):
        ImageCache.build(paths, tmp_path / "cache", resize_size=32, progress=crash)
    assert saves == [2]  # the first round's checkpoint
    calls: list[tuple[int, int]] = []
    cache = ImageCache.build(paths, tmp_path / "cache", resize_size=32, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (2, 5) and saves == [2, 4, 5]  # only the three images after the checkpoint decoded again
    assert len(cache) == 5
