"""Classify with the default ImageNet model (EfficientNet-Lite2) and Grad-CAM: torch (before) vs onnxruntime.

What the Classify page does for a set of uploads, timed from the uploaded bytes: decode and predict every
image (`classify_uploads`), then the Grad-CAM of each image's top class. "before": torch's forward for the
predictions and a forward + backward per Grad-CAM; "after": one onnxruntime forward gives the predictions and,
for this pooled-linear head, the exact Grad-CAM map (use/onnx_forward.py); "after, first upload first": the same
model through `iter_classify_uploads`, as the page draws results now, the first upload predicted (and its Grad-CAM
computed) before the others are predicted in one batch. Both models are loaded (and the
"after" one warmed) before the clock starts, as the page keeps them cached; their load times are printed apart.
Rounds alternate (ABAB...), the median is reported.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/classify_speed.py --images 16 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import describe

from caltech_core.data.dataset import resolve_root
from caltech_core.use import inference


def uploads(count: int) -> list[tuple[str, bytes]]:
    """The first image of `count` classes, as uploaded bytes."""
    folders = sorted(p for p in (resolve_root() / "101_ObjectCategories").iterdir() if p.is_dir())
    picked = [sorted(f.glob("*.jpg"))[0] for f in folders[:: max(1, len(folders) // count)][:count]]
    return [(p.name, Path(p).read_bytes()) for p in picked]


def classify_all(classifier: inference.Classifier, files: list[tuple[str, bytes]], stream: bool = False
                 ) -> tuple[float, float]:
    """(seconds to the first image's predictions + Grad-CAM, seconds for all of them); `stream`: one by one as
    the page does now (`iter_classify_uploads`), else all predicted before the first Grad-CAM."""
    started = time.perf_counter()
    outcomes = (inference.iter_classify_uploads if stream else inference.classify_uploads)(classifier, files)
    first = None
    for outcome in outcomes:
        classifier.gradcam(outcome.image, classifier.class_index(outcome.predictions[0][0]))
        first = first or time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="efficientnet_lite2")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(describe("cpu"), f"| load average {os.getloadavg()[0]:.1f} at the start")
    files = uploads(args.images)
    models = {}
    for name, onnx in (("before (torch)", False), ("after (onnxruntime)", True)):
        started = time.perf_counter()
        classifier = inference.Classifier.imagenet(args.arch)
        classifier.onnx = onnx
        models[name] = classifier.warm()
        print(f"{name}: model loaded in {time.perf_counter() - started:.1f} s")
    same = [[n for n, _ in p] for p in models["before (torch)"].predict([inference.open_upload(d, n)
                                                                        for n, d in files])]
    again = [[n for n, _ in p] for p in models["after (onnxruntime)"].predict([inference.open_upload(d, n)
                                                                             for n, d in files])]
    print(f"same top-5 on {sum(a == b for a, b in zip(same, again, strict=True))} of {len(files)} images")
    variants = {name: (classifier, False) for name, classifier in models.items()}
    variants["after, first upload first"] = (models["after (onnxruntime)"], True)
    for classifier, stream in variants.values():  # warm-up round, untimed
        classify_all(classifier, files[:2], stream)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (classifier, stream) in variants.items():
            times[name].append(classify_all(classifier, files, stream))
    print(f"| {args.arch}, {len(files)} uploads, Grad-CAM on | first result s (median) | all s (median) | "
          "s per image | rounds (all s) |")
    print("|---|---:|---:|---:|---:|")
    base = statistics.median(t for _, t in times["before (torch)"])
    for name, values in times.items():
        first, total = statistics.median(f for f, _ in values), statistics.median(t for _, t in values)
        print(f"| {name} | {first:.2f} | {total:.2f} ({base / total:.1f}x) | {total / len(files):.3f} | "
              f"{' / '.join(f'{t:.1f}' for _, t in values)} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
