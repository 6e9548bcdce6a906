"""Presets, sweeps and the best member of a sweep, with tiny real runs through the job manager."""

from __future__ import annotations

from pathlib import Path

import pytest

from caltech_core.config import ConfigError, TrainConfig
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.study.experiments import (
    PRESETS,
    best_member,
    repeat_configs,
    resolve_configs,
    submit_preset,
    sweep,
)
from caltech_core.study.matching import differing_fields

TINY = TrainConfig(image_size=64, epochs=1, step_size=1, batch_size=4, device="cpu")


def test_sweep_builds_every_combination_with_group_and_readable_names() -> None:
    members = sweep(TINY, {"lr": [0.1, 0.01], "step_size": [1, 2, 3]}, "grid")
    assert len(members) == 6
    assert [(c.lr, c.step_size) for c in members[:3]] == [(0.1, 1), (0.1, 2), (0.1, 3)]
    assert {c.group for c in members} == {"grid"}
    assert members[0].name == "grid: lr=0.1 step_size=1"
    assert len({c.name for c in members}) == 6
    # Everything not swept is the base's.
    assert all(c.image_size == 64 and c.batch_size == 4 for c in members)


def test_sweep_rejects_bad_grids_with_the_field_named() -> None:
    with pytest.raises(ConfigError) as unknown:
        sweep(TINY, {"learning_rate": [0.1]}, "g")
    assert unknown.value.field == "learning_rate"
    with pytest.raises(ConfigError) as empty:
        sweep(TINY, {"lr": []}, "g")
    assert empty.value.field == "lr"
    with pytest.raises(ConfigError) as invalid:
        sweep(TINY, {"lr": [0.1, -1.0]}, "g")
    assert invalid.value.field == "lr"
    with pytest.raises(ConfigError):
        sweep(TINY, {"lr": [0.1]}, "  ")


def test_presets_match_the_study() -> None:
    assert {"baseline", "lr-grid", "more-epochs", "step-grid", "retrain", "transfer", "freezing",
            "augmentation", "architectures", "quick-demo", "best-offline"} <= set(PRESETS)
    for name, preset in PRESETS.items():
        assert preset.configs, name
        assert {c.group for c in preset.configs} == {name}
        assert len({c.name for c in preset.configs}) == len(preset.configs), name
        # Every study number belongs to a real member (their values: tests/test_study_numbers.py).
        labels = {preset.member_label(c) for c in preset.configs}
        assert set(preset.study_ref.numbers) <= labels, name
    base = PRESETS["baseline"].configs[0]
    assert (base.arch, base.pretrained, base.lr, base.epochs, base.step_size) == ("alexnet", False, 1e-3, 30, 20)
    assert sorted(c.lr for c in PRESETS["lr-grid"].configs) == [1e-3, 5e-3, 1e-2, 5e-2, 1e-1]
    assert [c.step_size for c in PRESETS["step-grid"].configs] == [25, 30, 35, 40, 45]
    assert all(c.lr == 1e-2 and c.epochs == 60 for c in PRESETS["step-grid"].configs)
    assert all(c.epochs == 60 and c.step_size == 40 for c in PRESETS["more-epochs"].configs)
    assert PRESETS["retrain"].configs[0].retrain_on_train_val
    transfer = PRESETS["transfer"].configs[0]
    assert transfer.pretrained and transfer.normalization == "imagenet"
    assert [c.train for c in PRESETS["freezing"].configs] == ["all", "fc", "conv"]
    assert {(c.pretrained, c.train) for c in PRESETS["augmentation"].configs} == {(True, "fc")}
    assert [c.augment for c in PRESETS["augmentation"].configs] == [
        (), ("crop",), ("crop", "hflip"), ("crop", "hflip", "rotate"), ("vflip",)]
    arch = {c.arch: c for c in PRESETS["architectures"].configs}
    assert (arch["vgg16"].batch_size, arch["vgg16"].epochs) == (16, 10)
    assert (arch["resnet50"].batch_size, arch["resnet50"].epochs) == (64, 30)
    # Each EfficientNet-Lite runs at its native size (the spec's), not the preset base's 224.
    assert {a: arch[a].image_size for a in arch if a.startswith("efficientnet")} == {
        "efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
    assert arch["efficientnet_lite2"].resize_size == 292 and arch["efficientnet_lite2"].normalization == "half"
    assert all(PRESETS["architectures"].study_ref.numbers_for(a) == {} for a in arch if a.startswith("efficientnet"))
    assert PRESETS["freezing"].study_ref.numbers_for("conv only") == {"val_acc": 34.62, "test_acc": 33.98}
    demo = PRESETS["quick-demo"].configs[0]
    assert (demo.class_names, demo.image_size, demo.arch) == (("Faces_easy", "Motorbikes", "airplanes"), 64, "resnet18")
    best = PRESETS["best-offline"].configs[0]
    assert (best.arch, best.pretrained, best.train, best.fast_path, best.augment, best.int8_features) == (
        "lite_ensemble", True, "fc", True, (), False)  # int8 features: faster, but under the 95.9% test floor
    # The baseline is also the LR-grid's 1e-3 member: their runs are interchangeable.
    assert differing_fields(PRESETS["lr-grid"].configs[1], base) == []


def _wait_all(manager: ThreadJobManager, timeout: float = 300) -> None:
    assert manager.wait(timeout=timeout), "the queued tiny runs did not finish in time"


def test_sweep_of_tiny_real_runs_survives_divergence_and_picks_best(
    mini_root: Path, studio_home: Path
) -> None:
    store = RunStore(studio_home)
    manager = ThreadJobManager(store, data_root=mini_root)
    try:
        # LR 10 diverges (NaN loss within the first epoch's six batches of two images, seeded, so every time);
        # the members queued after it must still run.
        members = sweep(TINY.replace(batch_size=2), {"lr": [10.0, 0.01, 0.001]}, "tiny-lr")
        # Only the diverging member needs AlexNet (no BatchNorm; a diverged run keeps no checkpoint); the others
        # train MobileNetV3-Small, whose finished runs keep 6 MB checkpoints instead of AlexNet's 228 MB.
        members[1:] = [cfg.replace(arch="mobilenet_v3_small") for cfg in members[1:]]
        ids = [manager.submit(cfg) for cfg in members]
        _wait_all(manager)
    finally:
        manager.shutdown(wait=True)
    runs = {r.id: r for r in store.list_runs(group="tiny-lr")}
    assert sorted(runs) == sorted(ids)
    assert {r.name for r in runs.values()} == {c.name for c in members}
    assert runs[ids[0]].status == "diverged", runs[ids[0]].error
    assert [runs[i].status for i in ids[1:]] == ["finished", "finished"]
    best = best_member(store, "tiny-lr")
    assert best is not None and best.id in ids[1:]
    finished = [runs[i] for i in ids[1:]]
    assert best.best_val_acc == max(r.best_val_acc for r in finished)
    assert best_member(store, "no-such-group") is None


@pytest.fixture
def demo_root(caltech_root: Path, tmp_path: Path) -> Path:
    """A small real tree of the quick demo's classes (4 train and 2 test images each, symlinked)."""
    root = tmp_path / "demo_caltech"
    demo = PRESETS["quick-demo"].configs[0].class_names
    for split, per_class in (("train", 4), ("test", 2)):
        kept = []
        for cls in demo:
            lines = [x for x in (caltech_root / f"{split}.txt").read_text().split() if x.split("/")[0] == cls]
            kept += lines[:per_class]
        for line in kept:
            (root / "101_ObjectCategories" / line).parent.mkdir(parents=True, exist_ok=True)
            (root / "101_ObjectCategories" / line).symlink_to(caltech_root / "101_ObjectCategories" / line)
        (root / f"{split}.txt").write_text("\n".join(kept) + "\n")
    return root


def test_submit_preset_queues_its_runs(demo_root: Path, studio_home: Path) -> None:
    store = RunStore(studio_home)
    manager = ThreadJobManager(store, data_root=demo_root)
    try:
        with pytest.raises(KeyError, match="quick-demo"):
            submit_preset(manager, "no-such-preset")
        ids = submit_preset(manager, "quick-demo", repeats=2)
        _wait_all(manager)
    finally:
        manager.shutdown(wait=True)
    assert len(ids) == 2 * len(PRESETS["quick-demo"].configs) == 2
    runs = [store.get_run(i) for i in ids]
    for run in runs:
        assert run is not None and run.status == "finished", run.error if run else None
        assert run.group == "quick-demo" and run.epochs_done == run.config.epochs
        assert run.results["classes"] == ["Faces_easy", "Motorbikes", "airplanes"]
    # Two repeats: new seed and new train/validation split for the second.
    assert [(r.config.seed, r.config.split_seed) for r in runs] == [(42, 42), (43, 43)]


def test_retrain_takes_the_best_step_size_from_the_store(studio_home: Path) -> None:
    store = RunStore(studio_home)
    assert resolve_configs("retrain", store)[0].step_size == 30  # nothing finished yet: the study's best
    for cfg, acc in zip(PRESETS["step-grid"].configs[:3], (0.5, 0.6, 0.7), strict=True):
        run_id = store.create_run(cfg)
        store.set_results(run_id, {"best_val_acc": acc, "test_acc": acc})
        store.set_status(run_id, "finished")
    chosen = resolve_configs("retrain", store)[0]
    assert chosen.step_size == 35 and chosen.retrain_on_train_val and chosen.group == "retrain"


def test_repeats_get_new_seeds_and_new_splits(studio_home: Path) -> None:
    store = RunStore(studio_home)
    members = PRESETS["more-epochs"].configs
    first = repeat_configs(members, 3, store)
    assert [(c.lr, c.seed, c.split_seed) for c in first] == [
        (0.01, 42, 42), (0.05, 42, 42), (0.01, 43, 43), (0.05, 43, 43), (0.01, 44, 44), (0.05, 44, 44)]
    assert {c.name for c in first} == {c.name for c in members}  # repeats of one member share its name
    assert all(not differing_fields(c, members[i % 2]) for i, c in enumerate(first))  # same experiment
    for cfg in first[:3]:
        store.create_run(cfg)
    # Queued again: seeds already in the store are skipped, per member.
    again = repeat_configs(members, 2, store)
    assert [(c.lr, c.seed, c.split_seed) for c in again] == [(0.01, 44, 44), (0.05, 43, 43), (0.01, 45, 45),
                                                              (0.05, 44, 44)]
    assert repeat_configs(members, 1) == list(members)  # without a store: the preset as it is
    with pytest.raises(ConfigError) as bad:
        repeat_configs(members, 0)
    assert bad.value.field == "repeats"
