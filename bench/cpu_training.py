"""CPU training images/second per architecture and speed mode, side by side in one run.

Each mode trains its own copy of the same from-scratch network (forward, cross-entropy, backward, SGD with
momentum) on the same random batch at the study's 224 px; modes take turns (ABAB... rounds, the median of the
rounds reported) so that a shared, busy machine slows them alike. Modes: eager fp32 (what the engine ran on the
CPU before), channels_last, bf16 autocast (where oneDNN reports bf16 support), channels_last + bf16,
torch.compile (inductor; its compile time printed apart), and eager fp32 on 1 thread instead of the default.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/cpu_training.py --archs alexnet,resnet18
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from machine import cpu_flags, describe
from torch import nn

from caltech_core.nets.models import build_model
from caltech_core.training import speed
from caltech_core.training.speed import SpeedMode


def make_step(model: nn.Module, mode: SpeedMode, x: torch.Tensor, y: torch.Tensor,
              threads: int | None) -> Callable[[], None]:
    """One training step of `model` in `mode` (weights prepared once, here, as the engine does: every mode then
    trains on the reused heap)."""
    device = torch.device("cpu")
    speed.prepare(model, mode, device)
    net = speed.step_module(model, mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = x.contiguous(memory_format=torch.channels_last) if mode.channels_last else x.contiguous()

    def step() -> None:
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            with speed.cpu_autocast(device, mode):
                loss = nn.functional.cross_entropy(net(batch).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        finally:
            torch.set_num_threads(before)

    return step


def modes(with_compile: bool) -> dict[str, tuple[SpeedMode, int | None]]:
    found: dict[str, tuple[SpeedMode, int | None]] = {"eager fp32": (speed.EAGER, None),
                                                       "channels_last": (SpeedMode(channels_last=True), None)}
    if speed.cpu_bf16_supported():
        found["bf16 autocast"] = (SpeedMode(bf16=True), None)
        found["channels_last + bf16"] = (SpeedMode(channels_last=True, bf16=True), None)
    if with_compile:
        found["torch.compile"] = (SpeedMode(compile=True), None)
    found["eager fp32, 1 thread"] = (speed.EAGER, 1)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="alexnet,resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(describe("cpu"))
    print(f"lscpu flags: {cpu_flags()}; oneDNN bf16: {speed.cpu_bf16_supported()}; "
          f"torch.backends.cpu capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"batch {args.batch_size}, {args.image_size} px, {args.rounds} rounds x {args.steps} steps, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 101, (args.batch_size,))
    print("| architecture | mode | img/s (median) | rounds img/s | vs eager fp32 | first step s |")
    print("|---|---|---:|---:|---:|---:|")
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        base = build_model(arch, 101)
        steps, first = {}, {}
        for name, (mode, threads) in modes(not args.no_compile).items():
            steps[name] = make_step(copy.deepcopy(base), mode, x, y, threads)
            started = time.perf_counter()
            steps[name]()  # warm-up; for torch.compile, the compilation
            first[name] = time.perf_counter() - started
        rates: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                started = time.perf_counter()
                for _ in range(args.steps):
                    step()
                rates[name].append(args.steps * args.batch_size / (time.perf_counter() - started))
        base_rate = statistics.median(rates["eager fp32"])
        for name, values in rates.items():
            rate = statistics.median(values)
            print(f"| {arch} | {name} | {rate:.1f} | {' / '.join(f'{v:.1f}' for v in values)} | "
                  f"{rate / base_rate:.2f}x | {first[name]:.1f} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
