"""Adding and checking a 10,000-image folder: scan (registry.add) + health check (headers and hashes, the shared
decode into the image cache, pHash, duplicate search), against the obvious baseline that decodes every image
once per check (scan.find_unreadable's full decode, pHash from a second decode, the image cache from a third).
Each repetition starts with an empty image cache; A and B alternate (ABAB...).

    python bench/dataset_health.py [--images 10000] [--classes 20] [--repeats 2] [--size 200x150] [--dir /tmp/health-bench]
"""

from __future__ import annotations

import argparse
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
from machine import cpu_flags, describe
from PIL import Image

from caltech_core.data import health, registry
from caltech_core.data.dataset import load_folder_splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.scan import find_unreadable
from caltech_core.data.threads import worker_threads


def make_folder(root: Path, images: int, classes: int, size: tuple[int, int]) -> None:
    """Smooth random JPEGs of `size` px (Caltech-101's are about 300x200), `images` over `classes` folders."""
    stamp = root / ".made"
    if stamp.is_file() and stamp.read_text() == f"{images} {classes} {size}":
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class {i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(folder / f"{i}.jpg", quality=85)
    stamp.write_text(f"{images} {classes} {size}")


def ours(root: Path, home: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    registry.add(home, root, "bench")
    t1 = time.perf_counter()
    report = health.check_dataset(home, "bench", home / "cache", refresh=True)
    t2 = time.perf_counter()
    return {"scan": t1 - t0, "check": t2 - t1, "total": t2 - t0, "near_pairs": report["near"]["pairs"]}


def _phash_file(path: Path) -> int:
    with Image.open(path) as im:
        return int(str(imagehash.phash(im.convert("RGB"))), 16)


def baseline(root: Path, home: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    registry.add(home, root, "bench")
    paths = load_folder_splits(root).all_paths()
    t1 = time.perf_counter()
    find_unreadable(paths)  # decode 1: is every file readable?
    with ThreadPoolExecutor(worker_threads()) as pool:
        hashes = np.array(list(pool.map(_phash_file, paths)), dtype=np.uint64)  # decode 2
    ImageCache.build(paths, home / "cache", resize_size=health.RESIZE)  # decode 3, for training
    health.near_pairs(hashes, health.NEAR_DISTANCE)
    t2 = time.perf_counter()
    return {"scan": t1 - t0, "check": t2 - t1, "total": t2 - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", default="200x150", help="image width x height")
    ap.add_argument("--dir", default="/tmp/health-bench")
    args = ap.parse_args()
    base = Path(args.dir)
    t = time.perf_counter()
    size = tuple(int(v) for v in args.size.split("x"))
    make_folder(base / "images", args.images, args.classes, size)
    print(f"folder of {args.images} images of {args.size} px ready in {time.perf_counter() - t:.0f} s")
    print(f"{describe()}; flags: {cpu_flags()}")
    print(f"threads: {worker_threads()}")
    results: dict[str, list[dict[str, float]]] = {"shared decode (ours)": [], "one decode per check": []}
    for rep in range(args.repeats):
        for name, fn in (("shared decode (ours)", ours), ("one decode per check", baseline)):
            home = base / "home"
            shutil.rmtree(home, ignore_errors=True)  # an empty image cache every time
            r = fn(base / "images", home)
            results[name].append(r)
            print(f"rep {rep + 1} {name:<22} " + "  ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
    a = np.median([r["total"] for r in results["shared decode (ours)"]])
    b = np.median([r["total"] for r in results["one decode per check"]])
    print(f"median total: ours {a:.1f} s, baseline {b:.1f} s, ratio baseline/ours {b / a:.2f}")


if __name__ == "__main__":
    main()
