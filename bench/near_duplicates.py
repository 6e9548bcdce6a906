"""Choosing the health check's near-duplicate rule on a labelled sample: real Caltech-101 images and edited
copies of them (re-encoded as JPEG quality 40, halved in size, cropped to 90%, 20% brighter, all four at once).
A pair (original, its copy) should be found; a pair of two different originals should not (pairs of the same
class are the hard ones: same object, same framing). Prints recall and false pairs per pHash distance, the
same pipeline the check uses (decode + resize to the cache's 256 px, then pHash).

    python bench/near_duplicates.py [--root DATA] [--per-class 10] [--classes 20]
"""

from __future__ import annotations

import argparse
import io
import itertools
import platform
import time

import numpy as np
from PIL import Image, ImageEnhance

from caltech_core.data import health
from caltech_core.data.dataset import load_splits
from caltech_core.data.imagecache import resized_size, to_rgb


def edits(img: Image.Image) -> dict[str, Image.Image]:
    def jpeg(im: Image.Image, q: int) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    w, h = img.size
    crop = img.crop((w // 20, h // 20, w - w // 20, h - h // 20))
    small = img.resize((max(w // 2, 1), max(h // 2, 1)))
    bright = ImageEnhance.Brightness(img).enhance(1.2)
    return {"jpeg40": jpeg(img, 40), "half": small, "crop90": crop, "bright": bright,
            "all": jpeg(ImageEnhance.Brightness(small.crop((w // 40, h // 40, w // 2 - w // 40,
                                                             h // 2 - h // 40))).enhance(1.2), 40)}


def phash_of(img: Image.Image) -> int:
    rgb = to_rgb(img)
    rgb = rgb.resize(resized_size(rgb.width, rgb.height, health.RESIZE), Image.Resampling.BILINEAR)
    return health._phash(np.asarray(rgb))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--classes", type=int, default=20)
    args = ap.parse_args()
    splits = load_splits(args.root)
    picked: list[tuple[int, str]] = []
    for label in range(0, splits.num_classes, max(1, splits.num_classes // args.classes)):
        picked += [(label, str(s.path)) for s in splits.train if s.label == label][: args.per_class]
    started = time.perf_counter()
    originals, copies = [], []
    for label, path in picked:
        with Image.open(path) as im:
            im.load()
            originals.append((label, phash_of(im)))
            copies.append({k: phash_of(v) for k, v in edits(im.convert("RGB")).items()})
    seconds = time.perf_counter() - started

    def bits(a: int, b: int) -> int:
        return int(a ^ b).bit_count()

    pos = {k: [bits(o[1], c[k]) for o, c in zip(originals, copies, strict=True)] for k in copies[0]}
    same, other = [], []
    for (la, ha), (lb, hb) in itertools.combinations(originals, 2):
        (same if la == lb else other).append(bits(ha, hb))
    print(f"{len(originals)} originals of {len({label for label, _ in originals})} classes, {len(same)} same-class "
          f"and {len(other)} other pairs of different originals; {seconds:.1f} s; {platform.processor() or ''}")
    print("bits  " + "  ".join(f"{k:>7}" for k in pos) + "  false pairs (same class / other)")
    for t in range(0, 17, 2):
        recall = "  ".join(f"{np.mean(np.array(v) <= t):7.0%}" for v in pos.values())
        print(f"<= {t:2d} {recall}  {sum(d <= t for d in same):5d} / {sum(d <= t for d in other):5d}")


if __name__ == "__main__":
    main()
