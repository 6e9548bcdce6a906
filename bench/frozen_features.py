"""The best-offline preset's frozen features on the CPU: today's onnxruntime fp32 pass vs the candidates.

The preset's feature pass (EfficientNet-Lite0+1+2 on the 260 px centre crop of every image) is nearly all of
its cold time on a 2-core CPU. Side by side in one run, on the same real training images already decoded into
the image cache (so decoding is not timed), interleaved (every round runs every variant once, in turn):

- fp32, batch 64 (today):  the backbone exported in memory, onnxruntime's default session (all graph
                           optimisations), 2 intra-op threads; the engine's feature batch for this preset;
- fp32, batch 16:          the same session on smaller batches (cache locality);
- fp32, no spin-wait:      onnxruntime's worker threads sleep instead of spinning between ops (a shared CPU);
- int8 static, batch 64 / 16:  `caltech_core/training/int8.py`: QDQ int8, per-channel weights, activation
                           ranges calibrated on other training images;
- int8 dynamic (`--dynamic`):  `quantize_dynamic` (weights int8, activations quantised at run time);
- fp32, graph optimisation off / basic / extended / up to layout (`--graph-levels`): onnxruntime's
                           lower graph optimisation levels against today's default (all of them);
- OpenVINO fp32 / bf16 / int8 (`--openvino`): the same fp32 export at f32 and (on a CPU with native bf16) bf16
                           precision, batch 64 and 16, and the same int8 QDQ model at f32 precision (its int8
                           kernels for the quantised convolutions): the fast path's runtime on x86-64.

Prints images/second (median of the rounds), the ratio to today's and how far each variant's features are from
today's (largest absolute difference, mean cosine similarity). `--accuracy` then computes the features of the
whole train and validation splits with today's path and with int8 static (batch by batch in turn, so the two
see the same load), trains the preset's head recipe on each train set and prints both validation accuracies
(the test split is not read) and both passes' times.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/frozen_features.py --images 256 --rounds 3
    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/frozen_features.py --images 0 --accuracy
    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/frozen_features.py --images 128 --graph-levels
    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/frozen_features.py --images 128 --openvino
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from ensemble_choices import head_val_acc
from machine import cpu_flags, describe

from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets.models import build_model, split_for_features
from caltech_core.study.experiments import PRESETS
from caltech_core.training import openvino_features
from caltech_core.training.features import cpu_session, onnx_export
from caltech_core.training.int8 import quantize

Runner = Callable[[np.ndarray], np.ndarray]


def session_runner(session) -> Runner:
    return lambda x: session.run(None, {"x": x})[0]


def batches(cache: ImageCache, indices: list[int], cfg, size: int) -> list[np.ndarray]:
    """The preset's centre-crop batches of `indices`, as the feature pass feeds them to the backbone."""
    loader = BatchLoader(cache, indices, [0] * len(indices), batch_size=size, train=False, cfg=cfg)
    return [x.contiguous().numpy() for x, _ in loader]


def agreement(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(largest absolute difference, mean cosine similarity of the rows)."""
    cosine = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    return float(np.abs(got - ref).max()), float(cosine.mean())


def spread(samples: list, count: int, skip: int = 0) -> list:
    """`count` samples spread over the list (every k-th from `skip`), so that every class is likely in."""
    if count <= 0 or count >= len(samples):
        return samples
    step = max(1, len(samples) // count)
    return samples[skip::step][:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="Caltech-101 folder (default: $CALTECH101_ROOT)")
    parser.add_argument("--images", type=int, default=256, help="timed training images (0: skip the timing)")
    parser.add_argument("--calibration", type=int, default=128, help="training images calibrating int8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dynamic", action="store_true", help="also time int8 dynamic quantisation")
    parser.add_argument("--graph-levels", action="store_true", help="also time lower graph optimisation levels")
    parser.add_argument("--openvino", action="store_true", help="also time OpenVINO fp32 and int8 (f32 precision)")
    parser.add_argument("--accuracy", action="store_true", help="validation accuracy, fp32 vs int8 static")
    parser.add_argument("--work", type=Path, default=None, help="image cache folder (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(describe("cpu"), f"| flags: {cpu_flags()} | load average {os.getloadavg()[0]:.1f}", flush=True)

    cfg = PRESETS["best-offline"].configs[0].replace(device="cpu")
    splits = Splits.from_config(cfg, root=args.root)
    calibration = spread(splits.train, args.calibration, skip=1)  # not the timed images (skip 0)
    timed = spread(splits.train, args.images) if args.images else []
    measured = splits.train + splits.val if args.accuracy else []
    work = args.work or Path(tempfile.mkdtemp(prefix="frozen-features-"))
    paths = list(dict.fromkeys(s.path for s in calibration + timed + measured))
    started = time.perf_counter()
    cache = ImageCache.build(paths, work, resize_size=cfg.resize_size)
    print(f"image cache: {len(paths)} images in {time.perf_counter() - started:.1f} s ({work})", flush=True)

    backbone = split_for_features(build_model(cfg.arch, splits.num_classes, pretrained=True), cfg.arch)[0].eval()
    started = time.perf_counter()
    with torch.no_grad():
        fp32_model = onnx_export(backbone, cfg.image_size, ["features"])
    fp32 = cpu_session(fp32_model, args.threads)
    print(f"export: {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    calib_batches = batches(cache, [cache.index_of(s.path) for s in calibration], cfg, 16)
    int8_model = quantize(fp32_model, calib_batches)
    int8 = cpu_session(int8_model, args.threads)
    print(f"int8 static quantisation ({len(calibration)} calibration images): "
          f"{time.perf_counter() - started:.1f} s", flush=True)

    if timed:
        time_variants(args, cfg, cache, [cache.index_of(s.path) for s in timed], fp32_model, int8_model, fp32, int8)
    if measured:
        measure_accuracy(args, cfg, cache, splits, fp32, int8)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


def time_variants(args, cfg, cache: ImageCache, indices: list[int], fp32_model: bytes, int8_model: bytes, fp32,
                  int8) -> None:
    import onnxruntime as ort

    def session(spin: bool = True, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.graph_optimization_level = level
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(fp32_model, options, providers=["CPUExecutionProvider"])

    no_spin = session(spin=False)
    data = {64: batches(cache, indices, cfg, 64), 16: batches(cache, indices, cfg, 16)}
    variants: dict[str, tuple[Runner, int]] = {
        "fp32, batch 64 (today)": (session_runner(fp32), 64),
        "fp32, batch 16": (session_runner(fp32), 16),
        "fp32, no spin-wait, batch 64": (session_runner(no_spin), 64),
        "int8 static, batch 64": (session_runner(int8), 64),
        "int8 static, batch 16": (session_runner(int8), 16),
    }
    if args.graph_levels:
        level = ort.GraphOptimizationLevel
        for name, value in {"off": level.ORT_DISABLE_ALL, "basic": level.ORT_ENABLE_BASIC,
                            "extended": level.ORT_ENABLE_EXTENDED, "up to layout": level.ORT_ENABLE_LAYOUT}.items():
            variants[f"fp32, graph optimisation {name}, batch 64"] = (session_runner(session(level=value)), 64)
    if args.openvino:
        # int8 layers stay int8 at f32 precision; the rest runs in f32.
        ov_fp32 = openvino_features.runner(fp32_model, args.threads, "f32")
        variants["OpenVINO fp32, batch 64"] = (ov_fp32, 64)
        variants["OpenVINO fp32, batch 16"] = (ov_fp32, 16)
        # Held to AVX2 by ONEDNN_MAX_CPU_ISA (a stand-in for an AVX2 CPU), OpenVINO still reports bf16 but cannot
        # run it ("Convolution node ... is not initialized").
        if openvino_features.bf16_native() and not os.environ.get("ONEDNN_MAX_CPU_ISA"):
            ov_bf16 = openvino_features.runner(fp32_model, args.threads, "bf16")
            variants["OpenVINO bf16, batch 64"] = (ov_bf16, 64)
            variants["OpenVINO bf16, batch 16"] = (ov_bf16, 16)
        variants["OpenVINO int8 (same QDQ model), batch 64"] = (
            openvino_features.runner(int8_model, args.threads, "f32"), 64)
    if args.dynamic:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "fp32.onnx").write_bytes(fp32_model)
            quantize_dynamic(f"{folder}/fp32.onnx", f"{folder}/dyn.onnx", weight_type=QuantType.QInt8)
            variants["int8 dynamic, batch 64"] = (session_runner(cpu_session(f"{folder}/dyn.onnx", args.threads)), 64)
    outputs, seconds = {}, {name: [] for name in variants}
    for name, (run, size) in variants.items():  # warm-up, and the features compared below
        outputs[name] = np.concatenate([run(x) for x in data[size]])
    for _ in range(args.rounds):
        for name, (run, size) in variants.items():
            started = time.perf_counter()
            for x in data[size]:
                run(x)
            seconds[name].append(time.perf_counter() - started)
    reference = outputs["fp32, batch 64 (today)"]
    today = statistics.median(len(indices) / s for s in seconds["fp32, batch 64 (today)"])
    print(f"\n{len(indices)} training images, {args.rounds} interleaved rounds, {args.threads} threads\n")
    print("| variant | img/s (median) | rounds img/s | vs today | max abs diff | mean cosine |")
    print("|---|---:|---|---:|---:|---:|")
    for name in variants:
        rates = [len(indices) / s for s in seconds[name]]
        diff, cosine = agreement(outputs[name], reference)
        print(f"| {name} | {statistics.median(rates):.1f} | {' / '.join(f'{r:.1f}' for r in rates)} | "
              f"{statistics.median(rates) / today:.2f}x | {diff:.1e} | {cosine:.5f} |", flush=True)


def measure_accuracy(args, cfg, cache: ImageCache, splits: Splits, fp32, int8) -> None:
    """Train + val features by both paths, batch by batch in turn; the preset's head on each; val accuracy."""
    samples = splits.train + splits.val
    indices = [cache.index_of(s.path) for s in samples]
    loader = BatchLoader(cache, indices, [0] * len(indices), batch_size=64, train=False, cfg=cfg)
    rows: dict[str, list[np.ndarray]] = {"fp32": [], "int8": []}
    seconds = {"fp32": 0.0, "int8": 0.0}
    for i, (batch, _) in enumerate(loader):  # one batch in memory at a time
        x = batch.contiguous().numpy()
        for name, session in (("fp32", fp32), ("int8", int8)):
            started = time.perf_counter()
            rows[name].append(session.run(None, {"x": x})[0])
            seconds[name] += time.perf_counter() - started
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{len(loader)} batches", flush=True)
    if args.work is not None:  # kept, so that the head can be retrained on them without the passes
        for name in rows:
            np.save(args.work / f"features-{name}.npy", np.concatenate(rows[name]))
    y = torch.tensor([s.label for s in samples])
    n = len(splits.train)
    print(f"\ntrain {n} + val {len(splits.val)} images, batch 64, {args.threads} threads\n")
    print("| features | pass s | img/s | vs fp32 | val accuracy (preset's head) |")
    print("|---|---:|---:|---:|---:|")
    head = cfg
    for name in ("fp32", "int8"):
        x = torch.from_numpy(np.concatenate(rows[name]))
        acc = head_val_acc(x[:n], y[:n], x[n:], y[n:], lr=head.lr, weight_decay=head.weight_decay,
                           dropout=0.0, smoothing=head.label_smoothing, epochs=head.epochs,
                           step=head.step_size, batch=head.batch_size, seed=head.seed)
        print(f"| {name} | {seconds[name]:.1f} | {len(samples) / seconds[name]:.1f} | "
              f"{seconds['fp32'] / seconds[name]:.2f}x | {100 * acc:.2f}% |", flush=True)
    diff, cosine = agreement(np.concatenate(rows["int8"]), np.concatenate(rows["fp32"]))
    print(f"\nint8 vs fp32 features: max abs diff {diff:.2e}, mean cosine {cosine:.5f}")


if __name__ == "__main__":
    sys.exit(main())
