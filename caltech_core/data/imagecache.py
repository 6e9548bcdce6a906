"""Decoded-image cache: every image is decoded and resized once, then read as a uint8 view of one memmap.

On disk, per resize size: ``<cache_dir>/images-<size>/pixels-<generation>.u8`` (raw HWC uint8 images,
appended) and ``index.json`` (the pixel file's name; path -> size, mtime_ns, offset, height, width; unreadable
files with their reason). The index is replaced atomically (write + fsync + rename) only after the pixels it
points at are fsynced, so a crash leaves at worst unreferenced bytes at the end of the pixel file, never a
corrupt index. A changed file (size or mtime differs) is decoded again and appended; when stale bytes exceed
half the file, the live images are copied to the next generation's file and the index is switched to it
(the old file is deleted only after that). The index is checkpointed at most every `CHECKPOINT_SECONDS` of
decoding (and at the end): a crash loses at most that much work. Builds from several processes are serialised
with a file lock.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

from caltech_core import layout
from caltech_core.data.dataset import Skipped
from caltech_core.data.threads import worker_threads
from caltech_core.files import file_lock, write_json_atomic
from caltech_core.status import ProgressFn

INDEX_VERSION = 1
CHUNK = 128  # images decoded per round of the thread pool; the index may be checkpointed after each round
# Least decoding time between two index checkpoints. Each rewrites the whole index (8677 entries for Caltech-101)
# and fsyncs: one every 128 images cost 2 s of the 12-s cold cache build (docs/benchmarks.md).
CHECKPOINT_SECONDS = 5.0


# -- decoding ---------------------------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded image as upright 8-bit RGB — the one conversion training (this cache) and Classify share.

    EXIF orientation is applied; 16/32-bit and float grayscale are scaled by their type's full range (so a
    dark 16-bit image stays dark); CMYK and palette go through Pillow; transparency is composited on white.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's convert("L") clips 16-bit values at 255 (an all-white image); scale the range instead.
        arr = np.asarray(img).astype(np.float64)
        top = arr.max(initial=0)
        if img.mode == "F":
            peak = 1.0 if top <= 1.0 else 255.0 if top <= 255 else 65535.0
        else:
            peak = 65535.0 if img.mode.startswith("I;16") or top > 255 else 255.0
        gray = np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side = `shorter`, computed like torchvision's Resize(int)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def load_resized(path: str | Path, resize_size: int) -> np.ndarray:
    """Decode one image as RGB uint8 HWC with the shorter side `resize_size` (bilinear, antialiased).

    Same result as torchvision's PIL loader + Resize(resize_size). Pillow's decompression-bomb limit applies.
    """
    with Image.open(path) as im:
        im.load()
        rgb = to_rgb(im)
        size = resized_size(rgb.width, rgb.height, resize_size)
        if size != rgb.size:
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8).copy()


def _decode(job: tuple[str, int]) -> np.ndarray | str:
    """Worker: the pixels, or the reason the file cannot be read (never raises)."""
    path, resize_size = job
    try:
        arr = load_resized(path, resize_size)
    except Exception as exc:  # any decoder failure (truncated, not an image, bomb) is reported per file
        return f"unreadable image: {type(exc).__name__}: {exc}"
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        return f"unreadable image: unexpected decoded shape {arr.shape}"
    return arr


# -- index files ------------------------------------------------------------------------------------------


class _Index:
    """The parsed index.json: the current pixel file and the per-path records."""

    def __init__(self, pixels: str, entries: dict[str, list[int]], unreadable: dict[str, list[Any]]) -> None:
        self.pixels = pixels
        self.entries = entries
        self.unreadable = unreadable


def _generation(name: str) -> int:
    stem = name.removeprefix("pixels-").removesuffix(".u8")
    return int(stem) if stem.isdigit() else 0


def _load_index(directory: Path, resize_size: int) -> _Index:
    """The index; a missing or damaged index means an empty cache written to a fresh pixel file."""
    try:
        data = json.loads((directory / "index.json").read_text())
        if data.get("version") != INDEX_VERSION or data.get("resize_size") != resize_size:
            raise ValueError("index from another version")
        name = str(data["pixels"])
        if Path(name).name != name or not name.startswith("pixels-"):
            raise ValueError("bad pixel file name")
        entries: dict[str, list[int]] = data["entries"]
        unreadable: dict[str, list[Any]] = data["unreadable"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        # Start a new generation so stale bytes of an unknown layout are never read as images.
        used = [_generation(p.name) for p in directory.glob("pixels-*.u8")]
        return _Index(f"pixels-{max(used, default=-1) + 1}.u8", {}, {})
    pixels = directory / name
    end = pixels.stat().st_size if pixels.exists() else 0
    # Drop entries pointing past the end of the pixel file (e.g. pixels.u8 replaced or truncated by hand).
    entries = {
        p: e for p, e in entries.items()
        if isinstance(e, list) and len(e) == 5 and e[2] >= 0 and e[2] + e[3] * e[4] * 3 <= end
    }
    return _Index(name, entries, unreadable)


def _remove_stale_pixel_files(directory: Path, current: str) -> None:
    """Delete pixel files of older generations (left by a compaction or a damaged index)."""
    for p in directory.glob("pixels-*.u8"):
        if p.name != current:
            p.unlink(missing_ok=True)


class ImageCache:
    """Decoded, resized uint8 images for a list of paths; `cache[i]` is a (H, W, 3) view into a memmap.

    Indices run over the readable paths in the order given to `build` (duplicates once); `index_of(path)` maps
    a path to its index (None when unreadable). `unreadable` lists the files that could not be decoded.
    """

    def __init__(
        self, directory: Path, resize_size: int, paths: list[Path], records: list[tuple[int, int, int]],
        unreadable: list[Skipped], pixels_name: str = "pixels-0.u8",
    ) -> None:
        self.directory = directory
        self.resize_size = resize_size
        self.paths = paths
        self.unreadable = unreadable
        self._records = np.asarray(records, dtype=np.int64).reshape(-1, 3)  # offset, height, width
        self._pos = {p: i for i, p in enumerate(paths)}
        pixels = directory / pixels_name
        self._pixels: np.ndarray = (
            np.memmap(pixels, dtype=np.uint8, mode="r") if records else np.zeros(0, dtype=np.uint8)
        )

    @classmethod
    def build(
        cls, paths: Iterable[str | Path], cache_dir: str | Path, resize_size: int = 256,
        progress: ProgressFn | None = None,
    ) -> ImageCache:
        """Cache `paths` (decoding only new or changed files) and return the cache over them, in order."""
        directory = layout.images_dir(cache_dir, resize_size)
        directory.mkdir(parents=True, exist_ok=True)
        wanted = list(dict.fromkeys(Path(p).absolute() for p in paths))
        with file_lock(directory / ".lock"):
            index = _load_index(directory, resize_size)
            entries, unreadable = index.entries, index.unreadable
            stats: dict[str, tuple[int, int] | str] = {}
            todo: list[str] = []
            for p in wanted:
                key = str(p)
                try:
                    st = p.stat()
                except OSError as exc:
                    stats[key] = f"cannot read file: {exc.strerror or exc}"
                    continue
                stats[key] = (st.st_size, st.st_mtime_ns)
                entry, bad = entries.get(key), unreadable.get(key)
                if entry is not None and (entry[0], entry[1]) == stats[key]:
                    continue
                if bad is not None and (bad[0], bad[1]) == stats[key]:
                    continue
                todo.append(key)
            total, done = len(wanted), len(wanted) - len(todo)
            if progress is not None:
                progress(done, total)
            if todo:
                _decode_into(directory, index, todo, stats, resize_size, progress, done, total)
            if _garbage_fraction(directory / index.pixels, entries) > 0.5:
                _compact(directory, index, resize_size)
                entries = index.entries
            _remove_stale_pixel_files(directory, index.pixels)

        kept: list[Path] = []
        records: list[tuple[int, int, int]] = []
        skipped: list[Skipped] = []
        for p in wanted:
            key, stat = str(p), stats[str(p)]
            if isinstance(stat, str):
                skipped.append(Skipped(p, stat))
            elif key in entries:
                kept.append(p)
                records.append(tuple(entries[key][2:5]))  # type: ignore[arg-type]
            else:
                skipped.append(Skipped(p, str(unreadable[key][2])))
        return cls(directory, resize_size, kept, records, skipped, index.pixels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        offset, h, w = (int(v) for v in self._records[i])
        return self._pixels[offset: offset + h * w * 3].reshape(h, w, 3)

    def shape(self, i: int) -> tuple[int, int]:
        """(height, width) of image i without touching its pixels."""
        return int(self._records[i, 1]), int(self._records[i, 2])

    @property
    def shapes(self) -> np.ndarray:
        """(N, 2) int64 array of (height, width)."""
        return self._records[:, 1:3]

    def index_of(self, path: str | Path) -> int | None:
        """Index of `path` in this cache, None when it is not cached (unreadable or not requested)."""
        return self._pos.get(Path(path).absolute())


def _save(directory: Path, resize_size: int, index: _Index) -> None:
    write_json_atomic(
        directory / "index.json",
        {
            "version": INDEX_VERSION, "resize_size": resize_size, "pixels": index.pixels,
            "entries": index.entries, "unreadable": index.unreadable,
        },
        fsync=True,
    )


def _decode_into(
    directory: Path, index: _Index, todo: list[str], stats: dict[str, Any], resize_size: int,
    progress: ProgressFn | None, done: int, total: int,
) -> None:
    """Decode `todo` on a small thread pool (Pillow releases the GIL), append pixels, checkpoint the index every
    `CHECKPOINT_SECONDS` and at the end."""
    entries, unreadable = index.entries, index.unreadable
    workers = worker_threads()
    saved_at = time.monotonic()
    with open(directory / index.pixels, "ab") as out, ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start: start + CHUNK]
            for key, result in zip(chunk, pool.map(_decode, [(k, resize_size) for k in chunk]), strict=True):
                size, mtime = stats[key]
                entries.pop(key, None)
                unreadable.pop(key, None)
                if isinstance(result, str):
                    unreadable[key] = [size, mtime, result]
                else:
                    offset = out.tell()
                    out.write(result.tobytes())
                    entries[key] = [size, mtime, offset, int(result.shape[0]), int(result.shape[1])]
                done += 1
                if progress is not None:
                    progress(done, total)
            if start + CHUNK >= len(todo) or time.monotonic() - saved_at >= CHECKPOINT_SECONDS:
                _sync(out)
                _save(directory, resize_size, index)
                saved_at = time.monotonic()


def _sync(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def _garbage_fraction(pixels: Path, entries: dict[str, list[int]]) -> float:
    end = pixels.stat().st_size if pixels.exists() else 0
    live = sum(e[3] * e[4] * 3 for e in entries.values())
    return 0.0 if end == 0 else 1.0 - live / end


def _compact(directory: Path, index: _Index, resize_size: int) -> None:
    """Copy live images into the next generation's pixel file, then switch the index to it."""
    src = np.memmap(directory / index.pixels, dtype=np.uint8, mode="r")
    name = f"pixels-{_generation(index.pixels) + 1}.u8"
    new: dict[str, list[int]] = {}
    with open(directory / name, "wb") as out:
        for key, (size, mtime, offset, h, w) in sorted(index.entries.items(), key=lambda kv: kv[1][2]):
            new[key] = [size, mtime, out.tell(), h, w]
            out.write(src[offset: offset + h * w * 3].tobytes())
        _sync(out)
    del src
    # Until this index replace lands, the old index still names the old, intact pixel file.
    index.pixels, index.entries = name, new
    _save(directory, resize_size, index)
