"""Frozen-backbone forward pass on the CPU, images/second: torch as the fast path ran it before vs onnxruntime.

The features of the frozen-backbone fast path are one forward pass of every image; on a 2-core CPU that pass is
nearly all of the `best-offline` preset's time. Side by side in one run, on the same batches (interleaved, so a
busy machine slows every variant alike), per architecture:

- torch (before):   the fast path's old loop, `torch.no_grad()` eager forward of the loader's channels_last batch;
- torch tuned:      `torch.inference_mode()`, weights in channels_last too (what torch alone can do);
- onnxruntime:      the backbone exported in memory and run by onnxruntime (what the fast path does now for the
                    architectures whose table entry says `onnx_features`); its export time is printed apart.

Prints images/second, the ratio to "torch (before)" and the largest feature difference from it.

    .venv/bin/python bench/feature_speed.py --threads 2 --arch efficientnet_lite0 efficientnet_lite2
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time

import torch

from caltech_core.nets.architectures import ARCHITECTURES, get_spec
from caltech_core.nets.models import build_model, split_for_features
from caltech_core.training.features import onnx_runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["efficientnet_lite0", "efficientnet_lite1",
                                                       "efficientnet_lite2", "lite_ensemble"], choices=ARCHITECTURES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="timed batches per variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch}, load average {os.getloadavg()[0]:.1f}")
    print("| architecture | input | torch (before) img/s | torch tuned img/s | onnxruntime img/s | onnxruntime / "
          "before | export s | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for arch in args.arch:
        spec = get_spec(arch)
        size = spec.image_size
        backbone, _ = split_for_features(build_model(arch, 10, pretrained=True), arch)
        backbone.eval()
        x = torch.randn(args.batch, 3, size, size).contiguous(memory_format=torch.channels_last)

        def before(batch: torch.Tensor, backbone: torch.nn.Module = backbone) -> torch.Tensor:
            with torch.no_grad():
                return backbone(batch)

        tuned_model = copy.deepcopy(backbone).to(memory_format=torch.channels_last)

        def tuned(batch: torch.Tensor, tuned_model: torch.nn.Module = tuned_model) -> torch.Tensor:
            with torch.inference_mode():
                return tuned_model(batch)

        started = time.perf_counter()
        with torch.no_grad():
            onnx = onnx_runner(backbone, size, args.threads)
        export_s = time.perf_counter() - started
        variants = {"before": before, "tuned": tuned, "onnx": onnx}
        reference = before(x)
        seconds = dict.fromkeys(variants, 0.0)
        for fn in variants.values():  # warm-up
            fn(x)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                started = time.perf_counter()
                fn(x)
                seconds[name] += time.perf_counter() - started
        rate = {name: args.rounds * args.batch / s for name, s in seconds.items()}
        diff = float((onnx(x) - reference).abs().max())
        print(f"| {spec.label} | {size} px | {rate['before']:.1f} | {rate['tuned']:.1f} | {rate['onnx']:.1f} | "
              f"{rate['onnx'] / rate['before']:.2f}x | {export_s:.1f} | {diff:.1e} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
