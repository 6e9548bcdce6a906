"""One prepared check of the CUDA path on a GPU machine, in one command, within a time budget.

    python bench/gpu_check.py pack --root ../shared/caltech101 --out .gpu_data      # here: dataset in 2 parts
    python bench/gpu_check.py unpack .gpu_data/part1 .gpu_data/part2 --dest /tmp/caltech101   # there
    python bench/gpu_check.py run --root /tmp/caltech101 --out $OUT --budget 480          # there

`run` does, in order, each part with its own time cap, writing `gpu_check.json` and `gpu_check.md` into
--out after every part (so a run stopped at any point leaves what it had):
1. machine: the card, versions, and the decoded-image cache build (timed on its own);
2. throughput: bench/gpu_throughput.py for every architecture, the real loader with one crop thread (the
   2-core tuning) and one per core, against a synthetic batch that never leaves the GPU; then the GPU
   settings one at a time on a synthetic batch (fp32, autocast, channels_last, fused SGD);
3. the study's from-scratch experiments on the full split at 224 px through the studio's own store and
   `job.run_job` (baseline, LR grid, the best setting LR 1e-2 / 60 epochs / step 30 retrained on train+val,
   the same with crop + flip augmentation, then the step and epoch grids), several runs side by side on the
   one GPU (one process each), and an EfficientNet-Lite fine-tune of all layers with augmentation;
   alongside them the CUDA tests (pytest -m cuda tests/test_cuda.py) in their own process.

`run --plan second` does what the first pass (--plan first, the default) left: instead of part 2, the loader
with flips on the GPU vs forced onto the host and torch.compile (compile time apart from steady img/s), for
AlexNet and ResNet-18; instead of part 3's runs, candidate recipes aimed at the targets (from-scratch AlexNet
>= 70%, EfficientNet-Lite2 >= 96.5% test), each retrained on train+val, and per group the candidate with the
best validation accuracy ("chosen" in the summary) with its test accuracy after the retrain.
Runs still going at the budget's end are cancelled cleanly (status "cancelled", curves kept). The store's
runs.sqlite is copied to --out, so `python -m caltech_core report --store DIR` renders it on any machine.
Needs no Streamlit or Plotly.

This file runs the parts; beside it: gpu_pack.py (the dataset in parts), gpu_plans.py (what each plan runs),
gpu_report.py (the Markdown summary, the CUDA tests' counts, the candidate chosen per group), gpu_throughput.py
(the throughput measurements). A little over 400 lines: `Check` is one run's parts in the order they spend the
budget, and reads best in one place.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gpu_pack import pack, unpack
from gpu_plans import PLANS, Plan
from gpu_report import chosen_on_val, junit_summary, markdown

from caltech_core import settings
from caltech_core.config import TrainConfig
from caltech_core.data import dataset as caltech_data
from caltech_core.data.imagecache import ImageCache
from caltech_core.runs.store import RunStore

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Job:
    """One stored run of the check and where it stands."""

    cfg: TrainConfig
    run_id: int | None = None
    process: subprocess.Popen | None = None


# -- running -----------------------------------------------------------------------------------------------


class Check:
    """Runs a plan and keeps the summary (JSON + Markdown) on disk up to date."""

    def __init__(self, plan: Plan, root: Path, out: Path, work: Path) -> None:
        self.plan, self.root, self.out, self.work = plan, root, out, work
        self.t0 = time.monotonic()
        self.deadline = self.t0 + plan.budget_s
        self.summary: dict[str, Any] = {"budget_s": plan.budget_s, "parts": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.store = RunStore(work / "store")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)

    def part(self, name: str, result: dict[str, Any]) -> None:
        self.summary["parts"][name] = result
        self.summary["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        self.write()

    def write(self) -> None:
        tmp = self.out / "gpu_check.json.partial"
        tmp.write_text(json.dumps(self.summary, indent=1, default=str))
        tmp.replace(self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(markdown(self.summary))

    # -- parts ---------------------------------------------------------------------------------------
    def machine(self) -> tuple[caltech_data.Splits, ImageCache]:
        from machine import describe

        device = torch.device(self.plan.device)
        info: dict[str, Any] = {
            "device": describe(device), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cores": os.cpu_count(), "work": str(self.work),
        }
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "bf16": torch.cuda.is_bf16_supported()}
        splits = caltech_data.load_splits(self.root, **self.plan.data)
        info["splits"] = {k: len(getattr(splits, k)) for k in ("train", "val", "test")}
        info["cache_build_s"] = {}
        cache = None
        for size in sorted({cfg.resize_size for cfg in self.plan.jobs} | {self._throughput_cfg().resize_size}):
            started = time.perf_counter()
            built = ImageCache.build(splits.all_paths(), self.store.cache_dir, resize_size=size)
            info["cache_build_s"][str(size)] = round(time.perf_counter() - started, 2)
            self.log(f"image cache at {size} px: {len(built)} images in {info['cache_build_s'][str(size)]} s")
            if size == self._throughput_cfg().resize_size:
                cache = built
        self.part("machine", info)
        assert cache is not None
        return splits, cache

    def _throughput_cfg(self) -> TrainConfig:
        return TrainConfig(image_size=self.plan.throughput["image_size"])

    def _bench_batches(self, splits: caltech_data.Splits) -> tuple[dict, torch.device, list]:
        """The throughput settings, the device (cuDNN autotuning on) and enough training samples for them."""
        t = self.plan.throughput
        device = torch.device(self.plan.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        needed = (t["warmup"] + t["iters"]) * t["batch_size"]
        return t, device, list(itertools.islice(itertools.cycle(splits.train), needed))

    def throughput(self, splits: caltech_data.Splits, cache: ImageCache) -> None:
        from gpu_throughput import throughput_rows

        t, device, samples = self._bench_batches(splits)
        cap = time.monotonic() + min(self.plan.caps["throughput"], self.left())
        rows: list[dict] = []
        for arch in self.plan.throughput_archs:
            if time.monotonic() > cap:
                rows.append({"arch": arch, "skipped": "time cap"})
                continue
            try:
                rows += throughput_rows(cache, samples, splits.num_classes, [arch], device,
                                        batch_size=t["batch_size"], image_size=t["image_size"],
                                        augment="crop,hflip", warmup=t["warmup"], iters=t["iters"],
                                        crop_workers=[1, None], log=self.log)
            except Exception as exc:  # one architecture failing must not hide the others' figures
                rows.append({"arch": arch, "error": f"{type(exc).__name__}: {exc}"})
                self.log(f"throughput {arch} failed: {exc}")
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the next architecture's cuDNN autotuning gets the whole card
        self.part("throughput", {"rows": rows, **t, "augment": "crop,hflip"})

    def settings(self, num_classes: int) -> None:
        """Synthetic-batch speed of each GPU setting (fp32, autocast, channels_last, fused SGD), one at a time."""
        from gpu_throughput import settings_rows

        t = self.plan.throughput
        cap = time.monotonic() + min(self.plan.caps["settings"], self.left())
        rows: list[dict] = []
        for arch in self.plan.settings_archs:
            if time.monotonic() > cap:
                break
            try:
                rows += settings_rows([arch], num_classes, torch.device(self.plan.device), batch_size=t["batch_size"],
                                      image_size=t["image_size"], warmup=t["warmup"], iters=t["iters"], log=self.log)
            except Exception as exc:  # keep the other architectures' figures
                self.log(f"settings {arch} failed: {exc}")
        self.part("settings", {"rows": rows, "batch_size": t["batch_size"], "image_size": t["image_size"]})

    def loader(self, splits: caltech_data.Splits, cache: ImageCache, *, compiled: bool = False) -> None:
        """The loader with flips on the GPU vs on the host (part "loader"), or, with `compiled`, torch.compile's
        compile time and steady img/s (part "compile", after the runs: its time is the least predictable)."""
        from gpu_throughput import compile_rows, loader_rows

        t, device, samples = self._bench_batches(splits)
        name = "compile" if compiled else "loader"
        cap = time.monotonic() + min(self.plan.caps[name], self.left())
        rows: list[dict] = []
        for arch in self.plan.loader_archs:
            if time.monotonic() > cap:
                rows.append({"arch": arch, "skipped": "time cap"})
                continue
            kwargs = dict(batch_size=t["batch_size"], image_size=t["image_size"], augment="crop,hflip",
                          warmup=t["warmup"], iters=t["iters"], log=self.log)
            try:
                if compiled:
                    rows += compile_rows(cache, samples, splits.num_classes, [arch], device,
                                         backend=self.plan.compile_backend, **kwargs)
                else:
                    rows += loader_rows(cache, samples, splits.num_classes, [arch], device, **kwargs)
            except Exception as exc:  # one architecture failing must not hide the others' figures
                rows.append({"arch": arch, "error": f"{type(exc).__name__}: {exc}"})
                self.log(f"{name} {arch} failed: {exc}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            self.part(name, {"rows": rows, **t, "augment": "crop,hflip", "backend": self.plan.compile_backend})

    def cuda_tests(self) -> subprocess.Popen | None:
        if not self.plan.cuda_tests:
            return None
        junit = self.out / "cuda_tests.xml"
        log = open(self.out / "cuda_tests.log", "w")  # noqa: SIM115 - closed when the process is reaped
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", str(REPO / "tests" / "test_cuda.py"), "-q",
               "-o", "addopts=", "-p", "no:cacheprovider", f"--junitxml={junit}",
               f"--basetemp={self.work / 'pytest'}"]
        env = {**os.environ, "CALTECH101_ROOT": str(self.root)}
        self.log("CUDA tests started: " + " ".join(cmd))
        return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)

    def experiments(self, tests: subprocess.Popen | None, reserve: float = 0.0) -> None:
        """The plan's runs side by side; they stop `reserve` seconds before the check's deadline."""
        jobs = [Job(cfg) for cfg in self.plan.jobs]
        for job in jobs:
            job.run_id = self.store.create_run(job.cfg)
        pending, running = list(jobs), []
        deadline = self.deadline - reserve
        stop_at = deadline - self.plan.caps["wrap_up"]
        stop_wall = time.time() + (stop_at - time.monotonic())  # the workers' clock
        threads = max(4, (os.cpu_count() or 1) // self.plan.processes + 2)  # 2 crop threads each on 16 cores
        env = {**os.environ, settings.THREADS.name: str(threads)}
        last_report = 0.0
        while pending or running:
            for job in [j for j in running if j.process.poll() is not None]:
                running.remove(job)
                self.log(f"run #{job.run_id} {job.cfg.name}: {self.store.get_run(job.run_id).status}")
                self.part("experiments", self.experiment_rows(jobs))
            can_start = time.monotonic() < stop_at - self.plan.caps["min_start"]
            while pending and len(running) < self.plan.processes and can_start:
                job = pending.pop(0)
                needed = self.estimate(job.cfg, jobs)
                if needed is not None and needed > stop_at - time.monotonic():
                    self.store.set_status(job.run_id, "cancelled",
                                          f"not started: needs about {needed:.0f} s, the check's budget has less")
                    continue
                with open(self.work / f"run-{job.run_id}.log", "w") as log:
                    job.process = subprocess.Popen(
                        [sys.executable, __file__, "worker", "--store", str(self.store.home), "--run",
                         str(job.run_id), "--root", str(self.root), "--stop-at", str(stop_wall)],
                        env=env, stdout=log, stderr=subprocess.STDOUT,
                    )
                running.append(job)
            if pending and not can_start:
                for job in pending:
                    self.store.set_status(job.run_id, "cancelled", "not started: the check's time budget ran out")
                pending.clear()
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                states = ", ".join(f"#{j.run_id}:{len(self.store.epochs(j.run_id))}ep" for j in running)
                self.log(f"{len(running)} running ({states}), {len(pending)} waiting, {self.left():.0f} s left")
            if time.monotonic() > deadline - self.plan.caps["wrap_up"] / 4:  # one ignored its stop time
                for job in running:
                    job.process.kill()
                    job.process.wait()
                self.store.mark_interrupted()  # their runs say "interrupted", resumable from last.pt
            time.sleep(0.5)
        self.part("experiments", self.experiment_rows(jobs))
        if tests is not None:
            try:
                tests.wait(timeout=max(5.0, deadline - time.monotonic() - 5))
            except subprocess.TimeoutExpired:
                tests.kill()
                tests.wait()
            self.part("cuda_tests", junit_summary(self.out / "cuda_tests.xml", tests.returncode))

    def estimate(self, cfg: TrainConfig, jobs: list[Job]) -> float | None:
        """Seconds `cfg` would take, from the epochs the same architecture ran so far (None: no data yet).

        A retrain on train+val repeats up to `epochs` epochs of about the same cost (twice the images, no
        validation pass); 20% margin for the start-up."""
        times = [e["seconds"] for j in jobs if j.cfg.arch == cfg.arch and j.cfg.image_size == cfg.image_size
                 for e in self.store.epochs(j.run_id) if e.get("seconds")]
        if len(times) < 3:
            return None
        per_epoch = sorted(times)[len(times) // 2]
        return 1.2 * per_epoch * cfg.epochs * (2 if cfg.retrain_on_train_val else 1)

    def experiment_rows(self, jobs: list[Job]) -> dict[str, Any]:
        rows = []
        for job in jobs:
            run = self.store.get_run(job.run_id)
            epochs = self.store.epochs(job.run_id)
            res = run.results
            rows.append({
                "run_id": run.id, "name": run.name, "group": run.group, "arch": run.arch, "status": run.status,
                "epochs_done": len(epochs), "epochs": run.config.epochs, "lr": run.config.lr,
                "step_size": run.config.step_size, "augment": list(run.config.augment),
                "best_val_acc": run.best_val_acc, "best_epoch": res.get("best_epoch"), "test_acc": run.test_acc,
                "retrain_test_acc": res.get("retrain_test_acc"), "final_train_loss":
                epochs[-1]["train_loss"] if epochs else None, "seconds": run.duration, "device": run.device,
                "error": run.error,
            })
        copy_database(self.store.db_path, self.out / "runs.sqlite")
        return {"rows": rows, "processes": self.plan.processes, "chosen": chosen_on_val(rows, self.plan.choose)}

def copy_database(src: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite store (the backup API; a plain copy could miss the WAL's pages)."""
    import sqlite3

    tmp = dest.with_suffix(".partial")
    source, target = sqlite3.connect(src), sqlite3.connect(tmp)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    tmp.replace(dest)



def run(plan: Plan, root: Path, out: Path, work: Path) -> dict[str, Any]:
    """Every part of the check within `plan.budget_s`; returns the summary (also on disk in `out`)."""
    check = Check(plan, root, out, work)
    check.log(f"GPU check: budget {plan.budget_s:.0f} s, work folder {work}")
    splits, cache = check.machine()
    if check.left() > 60:
        if plan.throughput_archs:
            check.throughput(splits, cache)
        if plan.settings_archs:
            check.settings(splits.num_classes)
        if plan.loader_archs:
            check.loader(splits, cache)
    else:
        check.part("throughput", {"rows": [], "skipped": "time budget"})
    tests = check.cuda_tests()
    compiling = bool(plan.loader_archs and plan.compile_backend)
    check.experiments(tests, reserve=plan.caps["compile"] if compiling else 0.0)
    if compiling:
        check.loader(splits, cache, compiled=True)
    check.log(f"done in {time.monotonic() - check.t0:.0f} s: {out / 'gpu_check.md'}")
    return check.summary


def worker(store_home: Path, run_id: int, root: Path, stop_at: float) -> str:
    """Train one stored run through `job.run_job`, cancelling it cleanly at wall-clock time `stop_at`."""
    from caltech_core.runs import job

    torch.set_num_threads(2)
    stop = threading.Event()
    timer = threading.Timer(max(0.0, stop_at - time.time()), stop.set)
    timer.daemon = True
    timer.start()
    return job.run_job(RunStore(store_home), run_id, data_root=root, stop=stop)


def _default_work() -> Path:
    """tmpfs when it has room (per-epoch checkpoints cost nothing there), else a temporary folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 32 * 2**30:
        return Path(tempfile.mkdtemp(prefix="gpu-check-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="gpu-check-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="the dataset as a few tar files that can travel separately")
    p.add_argument("--root", default=None, help="Caltech-101 root (default: $CALTECH101_ROOT)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--parts", type=int, default=2)
    p = sub.add_parser("unpack", help="check and extract packed parts")
    p.add_argument("parts", nargs="+", type=Path)
    p.add_argument("--dest", required=True, type=Path)
    p = sub.add_parser("run", help="the check")
    p.add_argument("--root", default=None, help="Caltech-101 root (default: $CALTECH101_ROOT)")
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json / .md and runs.sqlite")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check")
    p.add_argument("--work", type=Path, default=None, help="store and caches (default: tmpfs when roomy)")
    p.add_argument("--processes", type=int, default=None, help="training runs side by side")
    p.add_argument("--plan", choices=sorted(PLANS), default="first",
                   help="first: the study on the GPU (2026-11-26); second: what the first left (loader flips, "
                        "torch.compile, recipes aimed at the targets)")
    p = sub.add_parser("worker")  # internal: one run of `run`, in its own process
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--run", required=True, type=int)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--stop-at", required=True, type=float)
    args = parser.parse_args()

    if args.command == "pack":
        for path in pack(caltech_data.resolve_root(args.root), args.out, args.parts):
            print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
    elif args.command == "unpack":
        print(f"{unpack(args.parts, args.dest)} files into {args.dest}")
    elif args.command == "worker":
        print(worker(args.store, args.run, args.root, args.stop_at))
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU here: the check is for a GPU machine (tests/test_gpu_check.py runs "
                             "a tiny plan on the CPU)")
        plan = PLANS[args.plan](args.budget)
        if args.processes:
            plan.processes = args.processes
        run(plan, caltech_data.resolve_root(args.root), args.out, args.work or _default_work())


if __name__ == "__main__":
    main()
