"""CPU training with glibc's default heap against `speed.reuse_freed_memory`, side by side in one run.

The setting is process-wide, so every measurement is its own process: the same from-scratch network, SGD with
momentum and weight decay as the study's, on one random batch; `--rounds` ABAB rounds (default, then reused
heap) so that a busy machine slows both alike; the median of the rounds reported, with the kernel (system) CPU
seconds and the page faults of the timed steps, and the peak memory.

    .venv/bin/python bench/cpu_heap.py                      # alexnet 10x64 (the reduced protocol), 64x224, resnet18 32x224
    .venv/bin/python bench/cpu_heap.py --cases alexnet:10x64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = ("alexnet:10x64", "alexnet:64x224", "resnet18:32x224")


def measure(case: str, reuse: bool, steps: int) -> dict[str, float]:
    """Train `steps` steps of `case` (arch:BATCHxSIZE) in this process; images/s, system seconds, faults."""
    import torch

    from caltech_core.nets.models import build_model
    from caltech_core.training import speed

    if reuse:
        assert speed.reuse_freed_memory(), "no glibc mallopt here"
    arch, shape = case.split(":")
    batch, size = map(int, shape.split("x"))
    torch.manual_seed(0)
    net = build_model(arch, 101, pretrained=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 101, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    for _ in range(3):  # warm-up: oneDNN primitives, the optimizer's momentum buffers
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_s": steps * batch / seconds, "system_s": after.ru_stime - before.ru_stime,
            "user_s": after.ru_utime - before.ru_utime, "faults": after.ru_minflt - before.ru_minflt,
            "peak_mb": after.ru_maxrss / 1024}


def in_process(case: str, reuse: bool, steps: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--one", case, "--steps", str(steps)] + (["--reuse"] if reuse else []),
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--reuse", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.reuse, args.steps)))
        return

    from machine import cpu_flags, describe

    print(describe("cpu"), "|", cpu_flags())
    print(f"{'case':<18} {'heap':<8} {'img/s':>7} {'sys s':>6} {'user s':>6} {'faults':>9} {'peak MB':>8}")
    for case in args.cases.split(","):
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for reuse in (False, True):
                runs[reuse].append(in_process(case, reuse, args.steps))
        for reuse in (False, True):
            med = {k: statistics.median(r[k] for r in runs[reuse]) for k in runs[reuse][0]}
            print(f"{case:<18} {'reused' if reuse else 'default':<8} {med['images_per_s']:7.1f} {med['system_s']:6.1f} "
                  f"{med['user_s']:6.1f} {med['faults']:9.0f} {med['peak_mb']:8.0f}")
        ratios = [b["images_per_s"] / a["images_per_s"] for a, b in zip(runs[False], runs[True], strict=True)]
        print(f"{case:<18} reused / default: {statistics.median(ratios):.2f}x (rounds: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
