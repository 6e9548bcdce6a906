"""Every number and setting of the study transcribed into the presets equals the study's numbers.json.

The product never reads the study's files; this test does, so a typo in caltech_core/study/numbers.py fails CI.
numbers.json lives in the shared folder beside the checkout (`../shared/study/numbers.json`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from caltech_core.study.experiments import BASELINE, PRESETS
from caltech_core.study.numbers import STUDY_CLASSES, STUDY_METRICS, STUDY_REPEATS, STUDY_SPLIT

REPO = Path(__file__).resolve().parent.parent

# (preset, member label, metric) -> path of the same number in numbers.json
TRANSCRIBED: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("baseline", "alexnet lr=0.001", "final_val_acc"): ("baseline", "val_acc_percent_about"),
    ("baseline", "alexnet lr=0.001", "final_train_loss"): ("baseline", "final_train_loss_about"),
    ("retrain", "alexnet best scratch", "test_acc"): ("scratch_final", "test_acc_percent"),
    ("transfer", "alexnet imagenet", "val_acc"): ("transfer", "val_acc_percent"),
    **{("freezing", row, metric): ("table2_freezing", "rows", row, key)
       for row in ("all layers", "fc only", "conv only") for metric, key in (("val_acc", "val"), ("test_acc", "test"))},
    **{("augmentation", ours, metric): ("table3_augmentation", "rows", theirs, key)
       for ours, theirs in (("none", "none"), ("crop", "random crop"), ("crop+hflip", "random crop + hflip"),
                            ("crop+hflip+rotate45", "random crop + hflip + rot45"))
       for metric, key in (("val_acc", "val"), ("test_acc", "test"))},
    **{("architectures", arch, metric): ("table4_architectures", "rows", arch, key)
       for arch in ("vgg16", "resnet18", "resnet50") for metric, key in (("val_acc", "val"), ("test_acc", "test"))},
}
# Numbers of the study that repeat one above (the same experiment quoted twice).
DUPLICATES = {("transfer", "baseline_val_acc_percent"): ("baseline", "val_acc_percent_about")}


def _numbers_json() -> Path:
    """numbers.json in `shared/study/` beside the checkout (or beside a folder above it)."""
    for folder in REPO.parents:
        candidate = folder / "shared" / "study" / "numbers.json"
        if candidate.is_file():
            return candidate
    pytest.fail(f"the study's numbers.json was not found in shared/study/ beside {REPO} or any folder above it")


@pytest.fixture(scope="module")
def study() -> dict[str, Any]:
    return json.loads(_numbers_json().read_text(encoding="utf-8"))


def _at(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _result_paths(doc: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every reported result in numbers.json (accuracies and losses, not settings)."""
    if isinstance(doc, dict):
        found = []
        for key, value in doc.items():
            sub = (*path, key)
            is_result = key in ("val", "test") or "percent" in key or "loss" in key
            if is_result and isinstance(value, (int, float)):
                found.append(sub)
            else:
                found += _result_paths(value, sub)
        return found
    return []


def test_every_preset_number_equals_the_study(study: dict[str, Any]) -> None:
    for (preset, member, metric), path in TRANSCRIBED.items():
        ours = PRESETS[preset].study_ref.numbers_for(member).get(metric)
        assert ours is not None, f"{preset} / {member} / {metric} is missing (numbers.json: {'.'.join(path)})"
        assert math.isclose(ours, _at(study, path)), f"{preset} / {member} / {metric}: {ours} != {_at(study, path)}"
    # Nothing in the presets that the study does not say.
    listed = {(p.name, member, metric) for p in PRESETS.values()
              for member, values in p.study_ref.numbers.items() for metric in values}
    assert listed == set(TRANSCRIBED)
    for p in PRESETS.values():
        labels = {p.member_label(c) for c in p.configs}
        assert set(p.study_ref.numbers) <= labels, p.name
        assert all(set(v) <= set(STUDY_METRICS) for v in p.study_ref.numbers.values())


def test_every_study_result_is_transcribed(study: dict[str, Any]) -> None:
    covered = set(TRANSCRIBED.values())
    for path in _result_paths({k: v for k, v in study.items() if k != "protocol"}):  # protocol: the next test
        if path in DUPLICATES:
            assert _at(study, path) == _at(study, DUPLICATES[path]), path
            continue
        assert path in covered, f"numbers.json has {'.'.join(path)} = {_at(study, path)} but no preset carries it"


def test_preset_settings_follow_the_study(study: dict[str, Any]) -> None:
    assert study["protocol"]["repeats"] == STUDY_REPEATS
    assert {k: study["protocol"]["split"][k] for k in ("train", "val", "test")} == STUDY_SPLIT
    assert f"{STUDY_CLASSES} classes" in study["protocol"]["dataset"]
    base = study["baseline"]["settings"]
    cfg = PRESETS["baseline"].configs[0]
    assert cfg == BASELINE.replace(group="baseline", name=cfg.name)
    assert (cfg.arch, cfg.pretrained, cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.lr, cfg.epochs,
            cfg.step_size, cfg.gamma, cfg.batch_size) == (
        base["arch"], base["pretrained"], base["optimizer"].lower(), base["momentum"], base["weight_decay"],
        base["lr"], base["epochs"], base["step_size"], base["gamma"], base["batch_size"])

    grid = study["lr_grid"]
    assert sorted(c.lr for c in PRESETS["lr-grid"].configs) == sorted(grid["lr"])
    assert {(c.epochs, c.step_size) for c in PRESETS["lr-grid"].configs} == {(grid["epochs"], grid["step_size"])}
    more = study["more_epochs"]
    assert {(c.epochs, c.step_size) for c in PRESETS["more-epochs"].configs} == {(more["epochs"], more["step_size"])}
    assert {c.lr for c in PRESETS["more-epochs"].configs} == {0.01, 0.05}  # the two rates its findings name
    steps = study["step_grid"]
    assert [c.step_size for c in PRESETS["step-grid"].configs] == steps["step_size"]
    assert {(c.lr, c.epochs) for c in PRESETS["step-grid"].configs} == {(steps["lr"], steps["epochs"])}
    best = PRESETS["retrain"].configs[0]
    assert (best.lr, best.epochs, best.step_size) == (
        steps["best"]["lr"], steps["best"]["epochs"], steps["best"]["step_size"])
    assert best.retrain_on_train_val and not best.pretrained

    transfer = PRESETS["transfer"].configs[0]
    assert transfer.pretrained and transfer.arch == "alexnet" and transfer.normalization == "imagenet"
    assert transfer.replace(pretrained=False, group="baseline", name=cfg.name) == cfg  # baseline hyperparameters
    freezing = {PRESETS["freezing"].member_label(c): c for c in PRESETS["freezing"].configs}
    assert {k: c.train for k, c in freezing.items()} == {"all layers": "all", "fc only": "fc", "conv only": "conv"}
    # Table 3: ImageNet AlexNet, conv frozen (FC only); its "none" row is Table 2's "fc only".
    for c in PRESETS["augmentation"].configs:
        assert (c.arch, c.pretrained, c.train, c.lr, c.epochs) == ("alexnet", True, "fc", 1e-3, 30), c.name
    none = PRESETS["augmentation"].configs[0]
    assert none.augment == () and none.replace(group="", name="") == freezing["fc only"].replace(group="", name="")
    arch = {c.arch: c for c in PRESETS["architectures"].configs}
    for name, settings in study["table4_architectures"]["settings"].items():
        assert (arch[name].batch_size, arch[name].epochs, arch[name].pretrained) == (
            settings["batch_size"], settings["epochs"], True), name
