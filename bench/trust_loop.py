"""The fix-and-retrain loop measured end to end on real Caltech-101 images with labels flipped on purpose.

A copy of some classes' official training lists (symlinks) files FLIP_SHARE of each class's training images under
the next class; the test list is left as it is (clean labels). Then, as a user would: train a frozen ImageNet
EfficientNet-Lite0 head (fast path), find the training split's suspects (cleanlab on K-fold cross-validated
probabilities), relabel every suspect as suggested, retrain with these fixes (test labels untouched), and compare.
The baseline is the source run, trained on the flipped labels, measured in the same process on the same test set.

    python bench/trust_loop.py [--classes 10] [--per-class 30] [--epochs 8] [--image-size 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_flags, describe

from caltech_core.config import TrainConfig
from caltech_core.data import overrides
from caltech_core.data.dataset import Splits, resolve_root
from caltech_core.runs import job
from caltech_core.runs.store import RunStore
from caltech_core.use import fixes, suspects

FLIP_SHARE = 0.1


def flipped_tree(real: Path, out: Path, classes: int, per_class: int) -> tuple[list[str], set[str]]:
    """(classes, paths of the flipped files) of a tree under `out` whose train list has FLIP_SHARE flipped."""
    train_lines = (real / "train.txt").read_text().split()
    by_class: dict[str, list[str]] = {}
    for line in train_lines:
        by_class.setdefault(line.split("/")[0], []).append(line)
    names = [c for c in sorted(by_class) if c != "BACKGROUND_Google" and len(by_class[c]) >= per_class][:classes]
    images = out / "101_ObjectCategories"
    for cls in (*names, "BACKGROUND_Google"):
        (images / cls).mkdir(parents=True)
    listed, flipped = [], set()
    for k, cls in enumerate(names):
        own = by_class[cls][:per_class]
        for i, line in enumerate(own):
            target = names[(k + 1) % len(names)] if i < round(FLIP_SHARE * per_class) else cls
            name = ("flipped_" if target != cls else "") + Path(line).name
            (images / target / name).symlink_to(real / "101_ObjectCategories" / line)
            listed.append(f"{target}/{name}")
            if target != cls:
                flipped.add(str(images / target / name))
    test = [line for line in (real / "test.txt").read_text().split() if line.split("/")[0] in names]
    for line in test:
        (images / line).symlink_to(real / "101_ObjectCategories" / line)
    (out / "train.txt").write_text("\n".join(listed) + "\n")
    (out / "test.txt").write_text("\n".join(test) + "\n")
    return names, flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    print(describe(), "| flags:", cpu_flags())
    work = Path(tempfile.mkdtemp(prefix="trust-loop-"))
    root = work / "data"
    names, flipped = flipped_tree(resolve_root(), root, args.classes, args.per_class)
    store = RunStore(work / "home")
    cfg = TrainConfig(arch="efficientnet_lite0", pretrained=True, train="fc", image_size=args.image_size,
                      epochs=args.epochs, step_size=max(1, args.epochs * 2 // 3), lr=0.05, batch_size=32,
                      class_names=tuple(names), train_fraction=0.8, device="cpu", name="flipped")
    timings = {}
    start = time.perf_counter()
    source = store.create_run(cfg)
    assert job.run_job(store, source, data_root=root) == "finished", store.get_run(source).error
    timings["train (source)"] = time.perf_counter() - start

    start = time.perf_counter()
    report = suspects.find_suspects(store, source, "train", data_root=root)
    timings["suspects (train split)"] = time.perf_counter() - start
    train = Splits.from_config(cfg, root, home=store.home).train
    in_train = {str(s.path) for s in train} & flipped
    found = {s.path for s in report.suspects}
    true_class = {p: names[(names.index(Path(p).parent.name) - 1) % len(names)] for p in in_train}
    restored = sum(s.suggested == true_class.get(s.path) for s in report.suspects)
    record = store.get_run(source)
    for s in report.suspects:  # as a user accepting every suggestion would
        fixes.mark(store.home, record, [s.path], overrides.RELABEL, label=s.suggested, reason="bench")

    start = time.perf_counter()
    fixed = store.create_run(fixes.prepare(store, source))
    fixes.tag_as_fix(store, fixed, source)
    assert job.run_job(store, fixed, data_root=root) == "finished", store.get_run(fixed).error
    timings["retrain with fixes"] = time.perf_counter() - start

    test_images = len(Splits.from_config(cfg, root, home=store.home).test)
    print(f"{len(names)} classes, {len(train)} training images ({len(in_train)} of them flipped), {test_images} "
          f"test images (labels as published); "
          f"{len(report.suspects)} suspects: precision {len(found & in_train) / max(len(found), 1):.2f}, "
          f"recall {len(found & in_train) / max(len(in_train), 1):.2f}; {restored} suggestions give back the "
          "true class")
    for row in fixes.before_after(store, store.get_run(fixed)):
        print(f"{row['']:>6}: {row['run']:<28} val {row['best val acc']:.1%}  test {row['test acc']:.1%}  "
              f"test ECE {row['test ECE']:.2%}  labels changed {row['labels changed']}  test labels "
              f"{row['test labels']}")
    print("seconds:", ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "(shared machine)")


if __name__ == "__main__":
    main()
