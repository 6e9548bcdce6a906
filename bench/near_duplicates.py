"""Choosing the health check's near-duplicate rule on a labelled sample: real Caltech-101 images and edited
copies of them (re-encoded as JPEG quality 40, halved in size, cropped to 90%, 20% brighter, all four at once).
A pair (original, its copy) should be found; a pair of two different originals should not (pairs of the same
class are the hard ones: same object, same framing).

Two rules side by side on the same images, both from the decode the check makes anyway (the image cache at the
check's 256 px): pHash within N bits (what the check uses), and the cosine similarity of frozen ImageNet features
(the fast path's `cached_features` of EfficientNet-Lite0's backbone, onnxruntime on the CPU) above a threshold.
Prints recall and false pairs per threshold for each, the two at equal false pairs, and the time of each (A and
B alternate; the features' time includes loading the network and its ONNX export, as a check would pay).

    python bench/near_duplicates.py [--root DATA] [--per-class 10] [--classes 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import itertools
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from machine import cpu_flags, describe
from PIL import Image, ImageEnhance

from caltech_core import layout
from caltech_core.config import TrainConfig
from caltech_core.data import health
from caltech_core.data.dataset import load_splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.threads import worker_threads
from caltech_core.nets.models import build_model, split_for_features
from caltech_core.training.features import cached_features

FEATURES = TrainConfig(arch="efficientnet_lite0", train="fc", pretrained=True, device="cpu")  # 224 px crop of 256
COSINES = (0.80, 0.85, 0.90, 0.92, 0.94, 0.96, 0.98)


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


def write_sample(root: str | None, per_class: int, classes: int, folder: Path) -> tuple[list[int], list[Path],
                                                                                      dict[str, list[Path]]]:
    """The originals (copied as they are) and their edited copies (lossless PNG) under `folder`."""
    splits = load_splits(root)
    labels, originals, copies = [], [], {}
    for label in range(0, splits.num_classes, max(1, splits.num_classes // classes)):
        for s in [s for s in splits.train if s.label == label][:per_class]:
            n = len(originals)
            originals.append(folder / f"original {n}{s.path.suffix}")
            shutil.copyfile(s.path, originals[-1])
            labels.append(label)
            with Image.open(s.path) as im:
                for kind, edited in edits(im.convert("RGB")).items():
                    copies.setdefault(kind, []).append(folder / kind / f"{n}.png")
                    copies[kind][-1].parent.mkdir(exist_ok=True)
                    edited.save(copies[kind][-1])
    return labels, originals, copies


def hashes(cache: ImageCache) -> np.ndarray:
    """pHash of every cached image, as the check computes it."""
    with ThreadPoolExecutor(max_workers=worker_threads()) as pool:
        return np.array(list(pool.map(lambda i: health._phash(cache[i]), range(len(cache)))), dtype=np.uint64)


def features(cache: ImageCache, cache_dir: Path) -> np.ndarray:
    """Unit-length frozen Lite0 features of every cached image (a fresh feature file: what a first check pays)."""
    shutil.rmtree(layout.features_dir(cache_dir), ignore_errors=True)
    backbone, head = split_for_features(build_model(FEATURES.arch, 1000, pretrained=True), FEATURES.arch)
    found = cached_features(FEATURES, backbone, head, cache, cache_dir, torch.device("cpu"))
    assert found is not None
    rows = found[0].numpy()
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def table(name: str, steps: tuple, pos: dict[str, np.ndarray], same: np.ndarray, other: np.ndarray,
          found: Callable[[np.ndarray, float], np.ndarray]) -> None:
    print(f"\n{name:>6}  " + "  ".join(f"{k:>7}" for k in pos) + "  false pairs (same class / other)")
    for t in steps:
        recall = "  ".join(f"{np.mean(found(v, t)):7.0%}" for v in pos.values())
        print(f"{t:>6}  {recall}  {int(found(same, t).sum()):5d} / {int(found(other, t).sum()):5d}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(describe(), "|", cpu_flags())
    with tempfile.TemporaryDirectory(prefix="near-dups-") as tmp:
        folder = Path(tmp)
        labels, originals, copies = write_sample(args.root, args.per_class, args.classes, folder)
        paths = originals + [p for kind in copies.values() for p in kind]
        started = time.perf_counter()
        cache = ImageCache.build(paths, folder / "cache", resize_size=health.RESIZE)
        decode = time.perf_counter() - started
        times: dict[str, list[float]] = {"pHash": [], "features": []}
        cpu: dict[str, list[float]] = {"pHash": [], "features": []}  # this process's CPU seconds, all threads
        for _ in range(args.repeats):  # ABAB
            t0, c0 = time.perf_counter(), time.process_time()
            bits = hashes(cache)
            t1, c1 = time.perf_counter(), time.process_time()
            unit = features(cache, folder / "cache")
            times["pHash"].append(t1 - t0)
            times["features"].append(time.perf_counter() - t1)
            cpu["pHash"].append(c1 - c0)
            cpu["features"].append(time.process_time() - c1)

    n = len(originals)
    index = {kind: np.arange(n * (k + 1), n * (k + 2)) for k, kind in enumerate(copies)}
    pairs = list(itertools.combinations(range(n), 2))
    same = np.array([labels[a] == labels[b] for a, b in pairs])
    a, b = np.array(pairs).T

    def distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.bitwise_count(bits[x] ^ bits[y])

    def cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", unit[x], unit[y])

    rules = {"pHash": (distance, range(0, 17, 2), lambda d, t: d <= t),
             "cosine": (cosine, COSINES, lambda c, t: c >= t)}
    print(f"{n} originals of {len(set(labels))} classes, {int(same.sum())} same-class and {int((~same).sum())} "
          f"other pairs of different originals; {len(paths)} images decoded into the cache in {decode:.1f} s")
    scores = {}
    for name, (score, steps, found) in rules.items():
        pos = {kind: score(np.arange(n), idx) for kind, idx in index.items()}
        neg = score(a, b)
        scores[name] = (pos, neg[same], neg[~same], found)
        table(name, tuple(steps), *scores[name])

    # Side by side at the check's pHash rule, the feature threshold with no more false pairs than it, and both.
    pos, s, o, found = scores["pHash"]
    allowed = int(found(s, health.NEAR_DISTANCE).sum() + found(o, health.NEAR_DISTANCE).sum())
    cpos, cs, co, cfound = scores["cosine"]
    threshold = float(np.nextafter(np.sort(np.concatenate([cs, co]))[::-1][allowed], 1.0))  # above the next one
    hashed = ({k: found(v, health.NEAR_DISTANCE) for k, v in pos.items()}, found(s, health.NEAR_DISTANCE),
              found(o, health.NEAR_DISTANCE))
    cosined = ({k: cfound(v, threshold) for k, v in cpos.items()}, cfound(cs, threshold), cfound(co, threshold))
    either = ({k: hashed[0][k] | cosined[0][k] for k in pos}, hashed[1] | cosined[1], hashed[2] | cosined[2])
    both = [a + b for a, b in zip(times["pHash"], times["features"], strict=True)]
    print(f"\nat equal false pairs ({allowed}): pHash <= {health.NEAR_DISTANCE} bits vs cosine >= {threshold:.4f}")
    print("rule                " + "  ".join(f"{k:>7}" for k in pos) + "   mean  false pairs  seconds: median (reps)")
    for label, (hits, ss, oo), seconds in (
            (f"pHash <= {health.NEAR_DISTANCE} bits", hashed, times["pHash"]),
            (f"cosine >= {threshold:.3f}", cosined, times["features"]), ("either of the two", either, both)):
        recall = [np.mean(v) for v in hits.values()]
        print(f"{label:<18}  " + "  ".join(f"{r:7.0%}" for r in recall) + f"  {np.mean(recall):5.0%}  "
              f"{int(ss.sum()):4d} / {int(oo.sum()):<4d}  {statistics.median(seconds):7.1f} "
              f"({', '.join(f'{x:.1f}' for x in seconds)})")
    print("CPU seconds (the machine is shared; wall time counts the others' load too): "
          + ", ".join(f"{k} {statistics.median(v):.1f} ({', '.join(f'{x:.1f}' for x in v)})" for k, v in cpu.items()))
    ratio = statistics.median(times["features"]) / statistics.median(times["pHash"])
    print(f"features / pHash time: {ratio:.1f}x over {len(paths)} images "
          f"({1000 * statistics.median(times['features']) / len(paths):.1f} vs "
          f"{1000 * statistics.median(times['pHash']) / len(paths):.2f} ms an image)")

if __name__ == "__main__":
    main()
