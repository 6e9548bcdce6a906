"""CPU training with glibc's default heap against `speed.reuse_freed_memory`, side by side in one run.

The setting is process-wide, so every measurement is its own process: the same from-scratch network, SGD with
momentum and weight decay as the study's, on one random batch; `--rounds` rounds taking turns (default, then
reused heap) so that a busy machine slows both alike; the median of the rounds reported, with the kernel
(system) CPU seconds and the page faults of the timed steps, and the peak memory. `--setups` chooses among:

- default: eager fp32 on glibc's default heap (the engine before the speed modes and the heap setting);
- reused:  eager fp32 on the reused heap;
- today:   what the engine does now on the main thread (the CLI's foreground runs, Ray workers): the speed
           mode `speed.choose` picks for the architecture (channels_last + bf16 autocast where it pays) on the
           reused heap;
- thread:  what the engine does now on a worker thread of a process with glibc's default arenas (`reproduce`'s
           thread backend, a dashboard not started by `make run`): the same speed mode, where the heap setting
           does not apply;
- arena:   what the engine does now on the dashboard's worker thread (`make run` starts it with one malloc
           arena, settings.ONE_MALLOC_ARENA): the same speed mode, steps on a worker thread of such a process.

    .venv/bin/python bench/cpu_heap.py                      # alexnet 10x64 (the reduced protocol), 64x224, resnet18 32x224
    .venv/bin/python bench/cpu_heap.py --cases alexnet:10x64 --rounds 3
    .venv/bin/python bench/cpu_heap.py --cases alexnet:256x224,resnet18:64x224 --setups default,today,thread --steps 4
    .venv/bin/python bench/cpu_heap.py --cases alexnet:256x224,resnet18:64x224 --setups thread,arena,today --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from caltech_core import settings

CASES = ("alexnet:10x64", "alexnet:64x224", "resnet18:32x224")


SETUPS = ("default", "reused", "today", "thread", "arena")
ON_A_THREAD = ("thread", "arena")


def measure(case: str, setup: str, steps: int) -> dict[str, float]:
    """Train `steps` steps of `case` (arch:BATCHxSIZE) in this process; images/s, system seconds, faults."""
    if setup in ON_A_THREAD:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(_measure, case, setup, steps).result()
    return _measure(case, setup, steps)


def _measure(case: str, setup: str, steps: int) -> dict[str, float]:
    import torch

    from caltech_core.config import TrainConfig
    from caltech_core.nets.models import build_model
    from caltech_core.training import speed

    arch, shape = case.split(":")
    batch, size = map(int, shape.split("x"))
    cpu = torch.device("cpu")
    chosen = setup in ("today", *ON_A_THREAD)  # the engine's own mode; the other setups are eager fp32
    mode = speed.choose(TrainConfig(arch=arch, image_size=size), cpu) if chosen else speed.EAGER
    torch.manual_seed(0)
    net = build_model(arch, 101, pretrained=False)
    if setup == "default":
        net.train()
    else:
        speed.prepare(net, mode, cpu)  # the engine's set-up: memory format, and the reused heap (main thread)
        assert speed.reuse_freed_memory() is (setup != "thread"), "no glibc mallopt here"
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 101, (batch,))
    if mode.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with speed.cpu_autocast(cpu, mode):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: oneDNN primitives, the optimizer's momentum buffers
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode.label, "images_per_s": steps * batch / seconds, "system_s": after.ru_stime - before.ru_stime,
            "user_s": after.ru_utime - before.ru_utime, "faults": after.ru_minflt - before.ru_minflt,
            "peak_mb": after.ru_maxrss / 1024}


def in_process(case: str, setup: str, steps: int) -> dict[str, float]:
    env = settings.with_one_malloc_arena() if setup == "arena" else None
    out = subprocess.run([sys.executable, __file__, "--one", case, "--setup", setup, "--steps", str(steps)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--setups", default="default,reused", help=f"comma-separated, the first is the baseline: {', '.join(SETUPS)}")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--setup", choices=SETUPS, default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.setup, args.steps)))
        return
    setups = args.setups.split(",")
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown setups {sorted(unknown)}; choose from {', '.join(SETUPS)}")

    from machine import cpu_flags, describe

    print(describe("cpu"), "|", cpu_flags())
    print(f"{'case':<18} {'heap':<8} {'mode':<28} {'img/s':>7} {'sys s':>6} {'user s':>6} {'faults':>9} {'peak MB':>8}")
    for case in args.cases.split(","):
        runs: dict[str, list[dict]] = {setup: [] for setup in setups}
        for _ in range(args.rounds):
            for setup in setups:
                runs[setup].append(in_process(case, setup, args.steps))
        for setup in setups:
            med = {k: statistics.median(r[k] for r in runs[setup]) for k in runs[setup][0] if k != "mode"}
            heap = {"reused": "reused", "today": "reused", "arena": "reused", "thread": "thread's"}.get(
                setup, "default")
            print(f"{case:<18} {heap:<8} {runs[setup][0]['mode']:<28} {med['images_per_s']:7.1f} "
                  f"{med['system_s']:6.1f} {med['user_s']:6.1f} {med['faults']:9.0f} {med['peak_mb']:8.0f}")
        for setup in setups[1:]:
            ratios = [b["images_per_s"] / a["images_per_s"] for a, b in zip(runs[setups[0]], runs[setup], strict=True)]
            print(f"{case:<18} {setup} / {setups[0]}: {statistics.median(ratios):.2f}x (rounds: "
                  f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
