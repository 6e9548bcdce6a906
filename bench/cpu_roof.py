"""How close the CPU's fp32 work already runs to this CPU's fp32 roof (issue 26, items 1 and 3).

Issue 26 asks for 2x images/s in CPU training and half the best-offline preset's cold time. Where the CPU has no
native bf16 (an AVX2 CPU) both stay in fp32, and no schedule can beat the CPU's fp32 multiply-add rate. In one
process, on the same threads:

- the roof: the best sustained fp32 rate of two large dense kernels, a square matrix multiply (`torch.mm`:
  MKL, which takes its AVX2 path on AMD CPUs) and a 3x3 convolution, 256 channels at 56 px, channels_last
  (oneDNN, which trains the convolutions); the median of `--rounds` timed calls each, the faster one counts;
- the work: FLOPs of one image through a training step (forward, loss, backward; SGD's few per parameter left
  out) or through the preset's frozen features (Lite0+1+2 forward at 260 px), counted by
  `torch.utils.flop_counter` (convolutions and matrix multiplies, the multiply-adds counted as 2);
- the rates: eager fp32 training on glibc's default heap (the engine before issue 26), then on the reused heap
  (`speed.reuse_freed_memory`: what the engine does on the main thread of a CPU without native bf16), and the
  features through OpenVINO fp32 (the fast path on x86-64) and onnxruntime fp32 (the issue's reference).

Prints each rate as GFLOP/s and as a fraction of the roof, and the fraction a 2x goal would need. A rate that is
already over half the roof cannot be doubled in fp32 on this CPU.

    .venv/bin/python bench/cpu_roof.py
    bench/avx2only.sh .venv/bin/python bench/cpu_roof.py      # the kernels of an AVX2-only CPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from machine import cpu_flags, describe
from torch.utils.flop_counter import FlopCounterMode

from caltech_core.nets.models import build_model, split_for_features
from caltech_core.study.experiments import PRESETS
from caltech_core.training import openvino_features, speed
from caltech_core.training.features import cpu_session, onnx_export

TRAINING = ("alexnet:256x224", "resnet18:64x224")  # the study's batch sizes


def timed(work: Callable[[], object], rounds: int) -> float:
    """Median seconds of `rounds` calls of `work` after one warm-up call."""
    work()
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def roofs(square: int, rounds: int) -> dict[str, float]:
    """GFLOP/s of two large dense fp32 kernels: a square matrix multiply, a 3x3 convolution (channels_last)."""
    a, b = torch.randn(square, square), torch.randn(square, square)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(16, 256, 56, 56).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return {f"matrix multiply {square}^3": 2 * square**3 / timed(lambda: torch.mm(a, b), rounds) / 1e9,
                "3x3 convolution, 256 channels, 56 px, batch 16":
                    flops(lambda: conv(x)) / timed(lambda: conv(x), rounds) / 1e9}


def flops(work: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def training_step(case: str) -> tuple[Callable[[], None], int]:
    """One eager fp32 SGD step of `case` (arch:BATCHxSIZE) on a random batch, and its batch size."""
    arch, shape = case.split(":")
    batch, size = map(int, shape.split("x"))
    torch.manual_seed(0)
    net = build_model(arch, 101, pretrained=False).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 101, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    return step, batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--square", type=int, default=2048, help="size of the roof's square matrices")
    parser.add_argument("--features-batch", type=int, default=16, help="the fast path's feature batch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(describe("cpu"), f"| flags: {cpu_flags()} | load average {os.getloadavg()[0]:.1f}", flush=True)

    rows: list[tuple[str, float, float]] = []  # (what, images/s, GFLOP per image)
    kernels = roofs(args.square, args.rounds)
    roof_name, roof = max(kernels.items(), key=lambda item: item[1])
    print("roof candidates (fp32 GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in kernels.items()), flush=True)

    steps = {case: training_step(case) for case in TRAINING}
    for heap in ("default heap", "reused heap"):
        if heap == "reused heap":
            assert speed.reuse_freed_memory(), "no glibc mallopt here"
        for case, (step, batch) in steps.items():
            per_image = flops(step) / batch / 1e9
            rows.append((f"{case.split(':')[0]} training, batch {batch}, eager fp32, {heap}",
                         batch / timed(step, args.rounds), per_image))
            print(rows[-1], flush=True)

    cfg = PRESETS["best-offline"].configs[0]
    backbone = split_for_features(build_model(cfg.arch, 101, pretrained=True), cfg.arch)[0].eval()
    x = np.random.default_rng(0).standard_normal(
        (args.features_batch, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
    with torch.no_grad():
        per_image = flops(lambda: backbone(torch.from_numpy(x[:1]))) / 1e9
        model = onnx_export(backbone, cfg.image_size, ["features"])
    session = cpu_session(model, args.threads)
    runners = {"onnxruntime fp32": lambda batch: session.run(None, {"x": batch})}
    if openvino_features.installed():
        runners["OpenVINO fp32"] = openvino_features.runner(model, args.threads, "f32")
    for name, run in runners.items():
        rows.append((f"best-offline features ({cfg.arch}, {cfg.image_size} px), {name}, batch {args.features_batch}",
                     args.features_batch / timed(lambda r=run: r(x), args.rounds * 3), per_image))
        print(rows[-1], flush=True)

    print(f"\n{args.threads} threads, fp32 roof {roof:.0f} GFLOP/s ({roof_name})\n")
    print("| work | GFLOP an image | img/s | GFLOP/s | of the roof | 2x would need |")
    print("|---|---:|---:|---:|---:|---:|")
    for what, rate, per_image in rows:
        achieved = rate * per_image
        print(f"| {what} | {per_image:.2f} | {rate:.1f} | {achieved:.0f} | {achieved / roof:.0%} | "
              f"{2 * achieved / roof:.0%} |")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
