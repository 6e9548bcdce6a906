"""Does training keep its speed while background work runs in the same process? (caltech_core.background)

A training thread (MobileNetV3-Small, batches of 16 at 64 px, torch's threads as set) runs for `--seconds` while a
background task checks real Caltech-101 images without pause (the Data page's scan, `scan.check_image`), in
three modes, interleaved A B C A B C ...:

- alone:   training only (the ceiling);
- nice 0:  the scan through a registry whose work threads keep normal priority;
- nice 10: the scan through the registry as shipped (each work thread at nice +10, per thread).

Prints training steps/s and images checked/s per mode and the ratios to training alone.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/background_priority.py --reps 3 --seconds 8 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch
from machine import describe
from torchvision.models import mobilenet_v3_small

from caltech_core.background import NICE, TaskRegistry
from caltech_core.data import dataset, scan


def train_for(seconds: float) -> float:
    """Training steps per second over `seconds` on this (normal-priority) thread."""
    torch.manual_seed(0)
    model = mobilenet_v3_small(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # first-call allocations outside the clock
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps / (time.perf_counter() - start)


def measure(mode: str, paths: list, seconds: float) -> tuple[float, float]:
    """(training steps/s, images checked/s) with the background scan in `mode`."""
    if mode == "alone":
        return train_for(seconds), 0.0
    stop, checked = threading.Event(), [0]

    def scan_until_stopped(progress) -> None:
        while not stop.is_set():
            for path in paths:
                if stop.is_set():
                    return
                scan.check_image(path)
                checked[0] += 1

    registry = TaskRegistry(nice=NICE if mode == "nice 10" else 0)
    registry.submit(mode, scan_until_stopped, label=mode)
    time.sleep(0.5)  # the scan under way before the clock starts
    before, start = checked[0], time.perf_counter()
    steps = train_for(seconds)
    rate = (checked[0] - before) / (time.perf_counter() - start)
    stop.set()
    registry.wait(mode, 30)
    return steps, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = dataset.load_splits().all_paths()[:args.images]
    modes = ("alone", "nice 0", "nice 10")
    got: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    print(describe())
    for rep in range(args.reps):
        for mode in modes:  # interleaved: load from other processes falls on every mode alike
            got[mode].append(measure(mode, paths, args.seconds))
            print(f"rep {rep + 1} {mode:8s} train {got[mode][-1][0]:6.2f} steps/s  scan {got[mode][-1][1]:6.1f} img/s",
                  flush=True)
    ceiling = statistics.median(s for s, _ in got["alone"])
    print("\nmode      train steps/s (median)  vs alone  scan img/s (median)")
    for mode in modes:
        train = statistics.median(s for s, _ in got[mode])
        images = statistics.median(r for _, r in got[mode])
        print(f"{mode:8s}  {train:21.2f}  {train / ceiling:8.2f}  {images:19.1f}")


if __name__ == "__main__":
    main()
