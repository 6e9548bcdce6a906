"""A dataset's health check: what a person should know before training on it. Never writes to their folder.

Per file: unreadable, truncated or non-image files; images under `MIN_SIDE` px; grayscale, CMYK, 16-bit and alpha
shares; EXIF-rotated images. Across files: exact duplicates (SHA-1 of the bytes) and near duplicates (64-bit
perceptual hash, pHash, within `NEAR_DISTANCE` bits), each pair sorted into within a class, across classes (a
label conflict) and across splits (leakage; train/val against test counted apart). Per class: the imbalance.

Each image is decoded once: the headers (size, mode, EXIF) are read without decoding, the pixels come from the
training image cache (`ImageCache.build`, which a later run at the same resize reuses), and pHash is computed
from those cached pixels. Why pHash and not the cosine of frozen ImageNet features (the fast path's EfficientNet-Lite0
features of the same cached pixels): on a labelled sample of Caltech-101 images and edited copies of them
(bench/near_duplicates.py, docs/benchmarks.md), at the same false pairs, features find crops that pHash misses but
lose resized copies, the mean recall is about the same, and they cost a network pass (9x pHash's time there).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from caltech_core import layout
from caltech_core.data import registry
from caltech_core.data.dataset import Splits, load_folder_splits, load_splits
from caltech_core.data.folders import fingerprint
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.threads import worker_threads
from caltech_core.files import write_json_atomic
from caltech_core.status import ProgressFn

MIN_SIDE = 32  # images with a shorter side below this are listed (too small to say much at 224 px)
NEAR_DISTANCE = 4  # pHash bits that may differ for a near duplicate (chosen in bench/near_duplicates.py)
FEW_IMAGES = 10  # classes with fewer images are listed
RESIZE = 256  # the decode the checks share: the image cache of a 224-px crop (the default), reused by training
EXIF_ORIENTATION = 0x0112
GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class FileFacts:
    """What the header and the bytes of one file say (no decode)."""

    sha1: str
    width: int = 0
    height: int = 0
    mode: str = ""
    rotated: bool = False
    alpha: bool = False
    error: str | None = None


def file_facts(path: Path) -> FileFacts:
    """SHA-1 of the bytes and the header's size, mode, transparency and EXIF orientation (read once)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return FileFacts("", error=f"cannot read file: {exc.strerror or exc}")
    sha = hashlib.sha1(data).hexdigest()
    if not data:
        return FileFacts(sha, error="empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(EXIF_ORIENTATION)
            alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
            return FileFacts(sha, im.width, im.height, im.mode, orientation not in (None, 1), alpha)
    except UnidentifiedImageError:
        return FileFacts(sha, error="not an image (Pillow cannot identify it)")
    except Exception as exc:  # a broken header of any kind: reported per file, the check goes on
        return FileFacts(sha, error=f"unreadable header: {type(exc).__name__}: {exc}")


def _phash(pixels: np.ndarray) -> int:
    bits = imagehash.phash(Image.fromarray(np.asarray(pixels))).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def near_pairs(hashes: np.ndarray, max_distance: int, block: int = 1024) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j whose 64-bit hashes differ in at most `max_distance` bits."""
    out: list[tuple[int, int, int]] = []
    h = hashes.astype(np.uint64)
    for start in range(0, len(h), block):
        part = h[start:start + block]
        dist = np.bitwise_count(part[:, None] ^ h[None, :])
        rows, cols = np.nonzero(dist <= max_distance)
        keep = cols > rows + start
        out += [(int(r + start), int(c), int(dist[r, c])) for r, c in zip(rows[keep], cols[keep], strict=True)]
    return out


def _pair_kinds(a: tuple[str, str], b: tuple[str, str]) -> list[str]:
    """The kinds of a duplicate pair of (label, split): within_class, label_conflict, leakage, train_test."""
    kinds = ["within_class" if a[0] == b[0] else "label_conflict"]
    if a[1] != b[1]:
        kinds.append("leakage")
        if "test" in (a[1], b[1]):
            kinds.append("train_test")
    return kinds


def check(
    splits: Splits, cache_dir: Path, *, progress: ProgressFn | None = None, near_distance: int = NEAR_DISTANCE,
    few_images: int = FEW_IMAGES, resize_size: int = RESIZE,
) -> dict[str, Any]:
    """The health report of every image of `splits` (JSON-ready; see the module's docstring for what it holds).

    `progress(done, total)` runs over three passes of the files: headers and hashes, the shared decode, pHash.
    `resize_size`: the image cache the pixels come from (training at that resize reuses it).
    """
    started = time.perf_counter()
    names = splits.classes
    rows = [(s.path, names[s.label], split) for split in ("train", "val", "test") for s in getattr(splits, split)]
    paths = [r[0] for r in rows]
    total, done = 3 * len(paths), 0

    def step(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    with ThreadPoolExecutor(max_workers=worker_threads()) as pool:
        facts: list[FileFacts] = []
        for f in pool.map(file_facts, paths):
            facts.append(f)
            step()
        readable = [p for p, f in zip(paths, facts, strict=True) if f.error is None]
        cache = ImageCache.build(readable, cache_dir, resize_size=resize_size, progress=None if progress is None
                                 else lambda d, _t: progress(len(paths) + d, total))
        done = 2 * len(paths)
        decoded = [cache.index_of(p) for p in paths]
        hashes = np.zeros(len(paths), dtype=np.uint64)
        ok = [i for i, k in enumerate(decoded) if k is not None]
        for i, value in zip(ok, pool.map(lambda i: _phash(cache[decoded[i]]), ok), strict=True):
            hashes[i] = value
            step()
    step(total - done)

    unreadable = [{"path": str(p), "reason": f.error} for p, f in zip(paths, facts, strict=True) if f.error]
    unreadable += [s.to_dict() for s in cache.unreadable]
    good = [(i, facts[i]) for i in ok]
    shares = {
        "grayscale": sum(f.mode in GRAY_MODES for _, f in good),
        "cmyk": sum(f.mode == "CMYK" for _, f in good),
        "sixteen_bit": sum(f.mode in SIXTEEN_BIT_MODES for _, f in good),
        "alpha": sum(f.alpha for _, f in good),
        "exif_rotated": sum(f.rotated for _, f in good),
    }
    small = [{"path": str(paths[i]), "width": f.width, "height": f.height}
             for i, f in good if min(f.width, f.height) < MIN_SIDE]
    rotated = [str(paths[i]) for i, f in good if f.rotated]

    def describe(i: int) -> dict[str, str]:
        return {"path": str(paths[i]), "label": rows[i][1], "split": rows[i][2]}

    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(facts):
        if f.sha1 and f.error is None:
            by_sha[f.sha1].append(i)
    exact = [(i, j, 0) for group in by_sha.values() if len(group) > 1 for i, j in combinations(group, 2)]
    same_bytes = {(i, j) for i, j, _ in exact}
    near = [(i, j, d) for i, j, d in near_pairs(hashes[ok], near_distance)
            if (ok[i], ok[j]) not in same_bytes]
    near = [(ok[i], ok[j], d) for i, j, d in near]
    counts = Counter(names[s.label] for s in (*splits.train, *splits.val, *splits.test))
    per_class = {c: counts[c] for c in names}
    low = max(min(per_class.values(), default=0), 1)

    def pairs(found: list[tuple[int, int, int]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        listed, tally = [], Counter()
        for i, j, d in found:
            kinds = _pair_kinds(rows[i][1:], rows[j][1:])
            tally.update(kinds)
            listed.append({"a": describe(i), "b": describe(j), "distance": d, "kinds": kinds})
        return listed, {k: tally[k] for k in ("within_class", "label_conflict", "leakage", "train_test")}

    exact_list, exact_tally = pairs(exact)
    near_list, near_tally = pairs(near)
    return {
        "dataset": dict(splits.source),
        "files": len(paths),
        "classes": len(names),
        "splits": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "unreadable": unreadable,
        "small": small,
        "shares": shares,
        "exif_rotated": rotated,
        "exact": {"pairs": len(exact), **exact_tally, "list": exact_list},
        "near": {"pairs": len(near), "max_distance": near_distance, **near_tally, "list": near_list},
        "imbalance": {"per_class": per_class, "max_min_ratio": round(max(per_class.values(), default=0) / low, 2),
                      "few_images": few_images,
                      "small_classes": [c for c, n in per_class.items() if n < few_images]},
        "skipped": [s.to_dict() for s in splits.skipped],
        "seconds": round(time.perf_counter() - started, 2),
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report in a few lines (the CLI's text output and the docs)."""
    ex, near, imb = report["exact"], report["near"], report["imbalance"]
    shares = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["shares"].items())
    return [
        f"{report['files']} images in {report['classes']} classes "
        f"(train/val/test {report['splits']['train']}/{report['splits']['val']}/{report['splits']['test']})",
        f"unreadable or not images: {len(report['unreadable'])}; under {MIN_SIDE} px: {len(report['small'])}",
        f"modes: {shares}",
        f"exact duplicate pairs: {ex['pairs']} (within a class {ex['within_class']}, label conflicts "
        f"{ex['label_conflict']}, across splits {ex['leakage']}, of which train/val-test {ex['train_test']})",
        f"near duplicate pairs (pHash <= {near['max_distance']} bits): {near['pairs']} (within a class "
        f"{near['within_class']}, label conflicts {near['label_conflict']}, across splits {near['leakage']}, of "
        f"which train/val-test {near['train_test']})",
        f"imbalance: largest/smallest class {imb['max_min_ratio']}; classes under {imb['few_images']} images: "
        f"{len(imb['small_classes'])}",
        f"skipped while listing: {len(report['skipped'])}; checked in {report['seconds']} s",
    ]


def paths_of(report: dict[str, Any], kind: str) -> Sequence[str]:
    """Paths a person may want to exclude: one file of each exact or near pair of `kind`, never a test image when
    the other is not (marks apply to train/val only unless a run asks for them on test; the test set stays as it
    is and the leaked training copy goes), else the second file."""
    def victim(pair: dict[str, Any]) -> str:
        a, b = pair["a"], pair["b"]
        return a["path"] if b["split"] == "test" and a["split"] != "test" else b["path"]

    return sorted({victim(p) for sec in ("exact", "near") for p in report[sec]["list"] if kind in p["kinds"]})


def dataset_splits(home: Path, text: str, root: str | Path | None = None) -> Splits:
    """The splits a health check reads: a registered dataset (name, id or path; a new folder is added) with its
    default split (seed 42), or Caltech-101's official split under `root` ("" or "caltech101"). Overrides are
    not applied: the check describes the files as they are."""
    dataset_id = registry.resolve(home, text)
    if not dataset_id:
        splits = load_splits(root)
        splits.source = {"id": registry.CALTECH_ID, "name": registry.CALTECH_NAME, "path": str(splits.root)}
        return splits
    entry = registry.get(home, dataset_id)
    splits = load_folder_splits(entry.path)
    splits.source = {**entry.source, **splits.source}
    return splits


def check_dataset(
    home: Path, text: str, cache_dir: Path, *, root: str | Path | None = None, refresh: bool = False,
    progress: ProgressFn | None = None, resize_size: int = RESIZE,
) -> dict[str, Any]:
    """`check` of a dataset by name or path, kept in the store (`layout.dataset_health`) and reused while its
    file list (paths, sizes, mtimes) is unchanged, unless `refresh`."""
    splits = dataset_splits(home, text, root)
    stamp = {"fingerprint": fingerprint(splits.all_paths()), "near_distance": NEAR_DISTANCE, "resize": resize_size}
    file = layout.dataset_health(home, str(splits.source["id"]))
    kept = None if refresh else _kept(file, stamp)
    if kept is not None:
        return kept
    report = check(splits, cache_dir, progress=progress, resize_size=resize_size)
    write_json_atomic(file, {"stamp": stamp, "report": report})
    return report


def _kept(file: Path, stamp: dict[str, Any]) -> dict[str, Any] | None:
    """The stored report when it was made of the same files; None when missing, damaged or outdated."""
    try:
        kept = json.loads(file.read_text())
        return kept["report"] if kept.get("stamp") == stamp else None
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def last_report(home: Path, dataset_id: str) -> dict[str, Any] | None:
    """The latest stored report of a dataset, whatever its files are now (None before the first check)."""
    try:
        return json.loads(layout.dataset_health(home, dataset_id).read_text())["report"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
