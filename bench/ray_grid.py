"""The study's 5-run learning-rate grid at tiny scale: the thread backend (one run at a time in this process, torch
on every core) against a local Ray cluster (the runs side by side, one CPU and one torch thread each), measured in
one invocation on one machine. Prints both wall times (submit to last row in the store) and their ratio.

Both backends share one store and a warm image cache, so neither pays the decoding; the Ray time includes starting
its worker processes (each imports torch), not starting the cluster itself (printed apart).

    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/ray_grid.py
    .venv/bin/python bench/ray_grid.py --threads 1      # the thread backend with one torch thread, as each Ray run
    .venv/bin/python bench/ray_grid.py --epochs 2 --max-per-class 10      # smaller
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from machine import describe

from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.runs import raybackend
from caltech_core.runs.backend import LOCAL_CLUSTER
from caltech_core.runs.manager import JobManager
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.study.experiments import get_preset


def _grid(manager: JobManager, store: RunStore, configs: list, label: str) -> float:
    """Queue every config, wait for all; returns the wall time and checks every run finished."""
    start = time.perf_counter()
    ids = [manager.submit(cfg.replace(group=label)) for cfg in configs]
    assert manager.wait(timeout=3600), f"{label}: the grid did not finish within an hour"
    seconds = time.perf_counter() - start
    for run_id in ids:
        run = store.get_run(run_id)
        assert run.status == "finished", f"{label} run #{run_id}: {run.status} {run.error}"
        print(f"  {label} #{run_id} lr={run.config.lr:g}: best val {run.best_val_acc:.1%}, "
              f"{run.duration:.1f} s, {run.node or run.device}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="Caltech-101 root (default: $CALTECH101_ROOT)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--max-per-class", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the thread backend (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [cfg.replace(arch="resnet18", image_size=args.image_size, epochs=args.epochs, step_size=args.epochs,
                           classes=args.classes, max_per_class=args.max_per_class, batch_size=args.batch_size,
                           device="cpu") for cfg in get_preset("lr-grid").configs]
    print(describe("cpu"))
    print(f"grid: {len(configs)} runs, lr {[c.lr for c in configs]}, ResNet-18 from scratch, {args.image_size} px, "
          f"{args.classes} classes, <= {args.max_per_class} images per class and split, {args.epochs} epochs, "
          f"batch {args.batch_size}")
    print(f"load average before: {os.getloadavg()}")

    with tempfile.TemporaryDirectory(prefix="ray-grid-") as home:
        store = RunStore(home)
        splits = Splits.from_config(configs[0], root=args.root)
        ImageCache.build(splits.all_paths(), store.cache_dir, resize_size=configs[0].resize_size)  # warm, untimed

        local = ThreadJobManager(store, data_root=args.root)
        thread_seconds = _grid(local, store, configs, "thread")
        local.shutdown(wait=True)

        import ray

        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, namespace=raybackend.NAMESPACE, log_to_driver=False)
        cluster_seconds = time.perf_counter() - started
        try:
            remote = raybackend.RayJobManager(store, LOCAL_CLUSTER, data_root=args.root, cpus_per_run=1)
            ray_seconds = _grid(remote, store, configs, "ray")
            remote.shutdown(wait=True)
        finally:
            ray.shutdown()

    print(f"load average after: {os.getloadavg()}")
    print(f"thread backend (1 run at a time, {torch.get_num_threads()} torch threads): {thread_seconds:.1f} s")
    print(f"Ray local cluster ({args.cpus} CPUs, 1 per run, up to {args.cpus} runs at once): {ray_seconds:.1f} s "
          f"(+ {cluster_seconds:.1f} s to start the cluster)")
    print(f"ratio thread / Ray: {thread_seconds / ray_seconds:.2f}x")


if __name__ == "__main__":
    main()
