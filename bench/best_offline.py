"""Time-to-accuracy of the "best offline" preset on the full Caltech-101 split, from a cold start.

The clock starts when this script starts (before torch is imported) and includes decoding every image into
the image cache and computing the frozen features of the preset's backbone (`lite_ensemble`: EfficientNet-Lite0,
Lite1 and Lite2); use a fresh `--work` folder (the default is a new temporary one) for a cold start. Stages:

1. head: the `best-offline` preset (frozen backbone, linear head on cached features, no augmentation, then
   retrained on train+val) — prints validation and test accuracy, the wall time of the first result (test
   accuracy of the head trained on train) and of the final one (retrained on train+val).
2. `--tune`: extra head settings trained on the train split and compared on the validation split only
   (the features are cached, so each takes seconds); the test split is not looked at for the choice.
3. `--finetune-epochs N`: optionally fine-tune all layers from ImageNet weights for N epochs (slow on a CPU).

`--compare-int8` instead runs the preset cold twice in this one process, side by side: fp32 features
(`int8_features` and `amp` off) and then int8 features (`int8_features` on), each in its own
fresh folder under the work folder (its own image cache and features), each timed from before its image cache;
it prints both cold times, their ratio and each run's validation and test accuracy. The fp32 run is the issue's
baseline: onnxruntime's fp32 features (`$CALTECH_STUDIO_FEATURE_RUNTIME=onnxruntime`) in batches of 64, as the
fast path ran them before 2026-12-07 (now 16 on the CPU: `features.CPU_FEATURE_BATCH`). `--compare-bf16` does the
same with the preset's own setting (`amp` on: OpenVINO's bf16 on a CPU with native bf16, elsewhere OpenVINO's
fp32 where it is installed), `--compare-openvino` with OpenVINO's fp32 features (`amp` off) on any CPU. Each
run's clock starts after an `os.sync()`, so the first run's pixel file is not written out during the second.
The second run finds the JPEG files in the OS's page cache (`--other-first` swaps the order). `--classes K` /
`--max-per-class M` make a quick check of the script, not the preset's scale. `--reference KIND` compares with
another kind than the fp32 baseline, e.g. `--compare-int8 --reference bf16`: int8 against the preset as it runs
today (amp on).

    CALTECH101_ROOT=../shared/caltech101 nice .venv/bin/python bench/best_offline.py --threads 2 --out result.json
    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/best_offline.py --compare-int8 --out int8.json
    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/best_offline.py --compare-bf16 --out bf16.json
    CALTECH101_ROOT=../shared/caltech101 .venv/bin/python bench/best_offline.py --compare-openvino --out ov.json
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # cold start: before the heavy imports below

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from machine import describe  # noqa: E402

from caltech_core import settings  # noqa: E402
from caltech_core.data.dataset import Splits  # noqa: E402
from caltech_core.study.experiments import PRESETS  # noqa: E402
from caltech_core.training import engine, features  # noqa: E402

# Head settings compared with --tune (validation accuracy only).
TUNE_GRID: list[dict] = [
    {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4, "epochs": 30, "step_size": 20, "batch_size": 256},
    {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "epochs": 30, "step_size": 20, "batch_size": 256},
    {"optimizer": "sgd", "lr": 0.3, "weight_decay": 1e-4, "epochs": 30, "step_size": 20, "batch_size": 256},
    {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-3, "epochs": 30, "step_size": 20, "batch_size": 256},
    {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0, "epochs": 60, "step_size": 40, "batch_size": 64},
    {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "epochs": 30, "step_size": 20, "batch_size": 64},
    {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-2, "epochs": 30, "step_size": 20, "batch_size": 128},
]


def log(message: str) -> None:
    # CPU seconds of this process beside the wall clock: on a shared machine wall time alone overstates it.
    print(f"[{time.perf_counter() - T0:7.1f}s wall, {time.process_time():7.1f}s cpu] {message}", flush=True)


def run(cfg, splits: Splits, work: Path, tag: str, *, show_test: bool = True) -> dict:
    """Train `cfg` with the engine, logging phases; returns the numbers and the wall time at the end."""
    last_phase, first_result_s = [""], [None]

    def on_phase(phase: str, done: int = 0, total: int = 0) -> None:
        if phase != last_phase[0]:
            last_phase[0] = phase
            log(f"{tag}: {phase}")
            if phase == "retraining":  # the test accuracy of the head trained on train is known now
                first_result_s[0] = round(time.perf_counter() - T0, 1)

    def on_epoch(m) -> None:
        if m.epoch == 1 or m.epoch % 10 == 0 or m.epoch == cfg.epochs:
            val = f"{m.val_acc:.4f}" if m.val_acc is not None else "-"
            log(f"{tag}: epoch {m.epoch} train_loss {m.train_loss:.4f} val_acc {val} ({m.seconds:.2f}s)")

    result = engine.train(cfg, splits, engine.Callbacks(on_epoch=on_epoch, on_phase=on_phase),
                          workdir=work / "runs" / tag, cache_dir=work / "cache")
    out = {
        "tag": tag, "status": result.status, "error": result.error, "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch, "fast_path": result.fast_path, "speed": result.speed,
        "first_result_s": first_result_s[0],
        "wall_s": round(time.perf_counter() - T0, 1), "cpu_s": round(time.process_time(), 1),
        "config": cfg.to_dict(),
    }
    if show_test:  # tuning runs keep the test split unseen
        out.update(test_acc=result.test_acc, retrain_test_acc=result.retrain_test_acc)
    log(f"{tag}: {result.status} val {result.best_val_acc} (epoch {result.best_epoch})"
        + (f" test {result.test_acc} retrain(train+val) test {result.retrain_test_acc}" if show_test else ""))
    return out


# The fp32 reference and each other kind of features: changes to the preset's config (amp on is what picks bf16
# features, on a CPU with native bf16; training/speed.py), the feature runtime setting and the CPU feature batch.
FEATURE_KINDS = {"fp32": ({"amp": False, "int8_features": False}, "onnxruntime", 64),
                 "int8": ({"amp": False, "int8_features": True}, "onnxruntime", features.CPU_FEATURE_BATCH),
                 "bf16": ({"amp": True, "int8_features": False}, "auto", features.CPU_FEATURE_BATCH),
                 "openvino": ({"amp": False, "int8_features": False}, "openvino", features.CPU_FEATURE_BATCH)}


def compare(head, root: str | None, work: Path, other: str, *, other_first: bool, reference: str = "fp32") -> dict:
    """The preset cold with `reference` features (default: the issue's fp32 baseline) and with `other` features
    ("int8", "bf16", "openvino"), one after the other, each in a fresh folder."""
    order = [reference, other]
    rows = {}
    for tag in reversed(order) if other_first else order:
        os.sync()  # the previous run's 3-GB pixel file is on disk before this run's clock starts, not written beside it
        started, cpu = time.perf_counter(), time.process_time()
        changes, runtime, batch = FEATURE_KINDS[tag]
        os.environ[settings.FEATURE_RUNTIME.name] = runtime
        features.CPU_FEATURE_BATCH = batch  # the baseline's batch (features.feature_batch_size reads it)
        cfg = head.replace(**changes)
        row = run(cfg, Splits.from_config(cfg, root=root), work / tag, tag)
        rows[tag] = {**row, "cold_s": round(time.perf_counter() - started, 1),
                     "run_cpu_s": round(time.process_time() - cpu, 1)}
    rows["cold_ratio"] = round(rows[reference]["cold_s"] / rows[other]["cold_s"], 2)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    print(f"\n{'features':<8} {'speed':<22} {'cold s':>8} {'cpu s':>8} {'val':>8} {'test':>8} {'test (retrained)':>17}")
    for tag in order:
        r = rows[tag]
        print(f"{tag:<8} {r['speed']:<22} {r['cold_s']:>8.1f} {r['run_cpu_s']:>8.1f} {pct(r['best_val_acc']):>8} "
              f"{pct(r['test_acc']):>8} {pct(r['retrain_test_acc']):>17}")
    print(f"cold time {reference} / {other}: {rows['cold_ratio']:.2f}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="Caltech-101 folder (default: $CALTECH101_ROOT)")
    parser.add_argument("--work", type=Path, default=None, help="cache + checkpoints (default: a new temp folder)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tune", action="store_true", help="compare head settings on the validation split")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--compare-int8", action="store_true",
                        help="the preset cold twice, fp32 then int8 features, each in a fresh folder, side by side")
    parser.add_argument("--compare-bf16", action="store_true",
                        help="the same with the preset's setting (amp on: OpenVINO's bf16 or fp32) instead of int8")
    parser.add_argument("--compare-openvino", action="store_true",
                        help="the same with OpenVINO's fp32 features (amp off) instead of int8")
    parser.add_argument("--other-first", "--int8-first", dest="other_first", action="store_true",
                        help="with --compare-*: the other run first, then the reference")
    parser.add_argument("--reference", choices=sorted(FEATURE_KINDS), default="fp32",
                        help="with --compare-*: what the other features are compared with (default: the issue's "
                             "baseline, onnxruntime fp32 in batches of 64; bf16: the preset as it runs today)")
    parser.add_argument("--classes", type=int, default=None, help="first K classes only (a quick check)")
    parser.add_argument("--max-per-class", type=int, default=None, help="at most M images a class and split")
    parser.add_argument("--out", type=Path, default=None, help="write the measurements as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="best-offline-"))
    log(f"work folder {work}; torch threads {torch.get_num_threads()}; {describe()}")

    head = PRESETS["best-offline"].configs[0].replace(device="cpu", classes=args.classes,
                                                      max_per_class=args.max_per_class)
    for other in ("int8", "bf16", "openvino"):
        if getattr(args, f"compare_{other}"):
            if other == args.reference:
                parser.error(f"--compare-{other} against itself")
            results = {f"compare_{other}": compare(head, args.root, work, other, other_first=args.other_first,
                                                   reference=args.reference)}
            return _finish(results, args.out)
    splits = Splits.from_config(head, root=args.root)
    log(f"splits: train {len(splits.train)} val {len(splits.val)} test {len(splits.test)}, "
        f"{splits.num_classes} classes")
    results: dict = {"head": run(head, splits, work, "head")}

    if args.tune:
        tuned = []
        for i, change in enumerate(TUNE_GRID):
            cfg = head.replace(retrain_on_train_val=False, **change)
            r = run(cfg, splits, work, f"tune{i}", show_test=False)
            # Only the validation accuracy is reported for the choice; test stays unseen.
            tuned.append({"change": change, "best_val_acc": r["best_val_acc"], "best_epoch": r["best_epoch"]})
        results["tune"] = sorted(tuned, key=lambda t: -(t["best_val_acc"] or 0))
        log("tuning (validation accuracy): " + json.dumps(results["tune"][:3]))

    if args.finetune_epochs:
        ft = head.replace(train="all", fast_path=False, int8_features=False, optimizer="sgd", lr=0.01,
                          weight_decay=1e-4, epochs=args.finetune_epochs,
                          step_size=max(1, args.finetune_epochs - 1), batch_size=32, augment=("crop", "hflip"))
        results["finetune"] = run(ft, splits, work, "finetune")
    return _finish(results, args.out)


def _finish(results: dict, out: Path | None) -> int:
    results["total_wall_s"] = round(time.perf_counter() - T0, 1)
    results["total_cpu_s"] = round(time.process_time(), 1)
    text = json.dumps(results, indent=2)
    if out:
        out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
