"""The quick-demo preset end to end: does it learn, how long does it take, what share is checkpoint I/O?

Runs the preset's config (optionally with overrides) through `engine.train` on a cold image cache and times
every checkpoint write (`save_atomic`). Prints the wall time (image caching included and shown apart), the
test / mean per-class accuracy and the checkpoint share of the training time.

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/quick_demo.py
    .venv/bin/python bench/quick_demo.py --set epochs=8 --set lr=0.02   # try another setting
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from machine import describe

from caltech_core.data.dataset import Splits
from caltech_core.study.experiments import get_preset
from caltech_core.training import checkpointing, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="Caltech-101 root (default: $CALTECH101_ROOT)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="override a TrainConfig field, e.g. epochs=8 or class_names='[\"a\",\"b\"]'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_preset("quick-demo").configs[0]
    changes = {}
    for item in args.set:
        key, value = item.split("=", 1)
        changes[key] = json.loads(value) if value[:1] in "[{0123456789.-tfn" else value
    cfg = cfg.replace(**changes)
    print(describe("cpu"))
    print("config:", json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("name", "group")}))

    io_seconds: list[float] = []
    real_save = checkpointing.save_atomic

    def timed_save(obj: dict, path: Path) -> None:
        start = time.perf_counter()
        real_save(obj, path)
        io_seconds.append(time.perf_counter() - start)

    checkpointing.save_atomic = timed_save
    phases: dict[str, float] = {}

    def on_phase(name: str, done: int, total: int) -> None:
        phases.setdefault(name, time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        splits = Splits.from_config(cfg, root=args.root)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = engine.train(cfg, splits, engine.Callbacks(on_phase=on_phase), workdir=Path(tmp) / "run",
                              cache_dir=Path(tmp) / "cache")
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        kept = sorted(f"{p.name} {p.stat().st_size / 2**20:.0f} MB" for p in (Path(tmp) / "run").iterdir())
    caching = phases.get("training", start) - phases.get("caching", start)
    print(f"classes: {', '.join(splits.classes)} ({len(splits.train)}/{len(splits.val)}/{len(splits.test)} images)")
    print(f"status {result.status}; test accuracy {result.test_acc:.1%}; mean per-class accuracy "
          f"{result.mean_class_acc:.1%}; best epoch {result.best_epoch} of {cfg.epochs}")
    print(f"per class: {', '.join(f'{k} {v:.0%}' for k, v in (result.per_class_acc or {}).items())}")
    print(f"wall time {total:.1f} s (image caching {caching:.1f} s), CPU time {cpu:.1f} s (all threads; on an "
          f"otherwise idle machine the wall time is about CPU time / cores in use); load average "
          f"{os.getloadavg()[0]:.1f}; epochs "
          f"{', '.join(f'{m.seconds:.1f}' for m in result.epochs)} s")
    print(f"checkpoint writes: {len(io_seconds)}, {sum(io_seconds):.2f} s = {sum(io_seconds) / total:.1%} of the "
          f"run; kept: {', '.join(kept)}")


if __name__ == "__main__":
    main()
