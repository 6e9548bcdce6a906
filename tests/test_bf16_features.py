"""Bf16 frozen features (training/bf16_features.py): OpenVINO's bf16 run of the backbone's ONNX export, taken by
the speed mode on CPUs with native bf16 under `amp`, as accurate as fp32's on real images, recorded by the run
and cached apart from fp32's (the preset-scale check is bench/best_offline.py --compare-bf16).

On a CPU without native bf16 OpenVINO runs the same compiled model in fp32, so every test here runs on any CPU;
where the speed mode's choice depends on the CPU, `supported` is set both ways."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from feature_kit import crops, nearest_mean_correct

from caltech_core import layout
from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.nets import models
from caltech_core.runs.store import RunStore
from caltech_core.study.experiments import PRESETS
from caltech_core.training import bf16_features, engine, features, speed
from caltech_core.training.estimate import estimate_epoch_seconds
from caltech_core.use import suspects

ARCH = "efficientnet_lite0"
SIZE = 96  # Lite0 at 96 px: features still tell the mini split's classes apart, and the runs are quick
CPU = torch.device("cpu")


def test_bf16_features_of_real_images_are_fp32_s_to_rounding(splits: Splits, cache_dir: Path) -> None:
    cfg = TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=128, device="cpu")
    x, y = crops(splits, cache_dir, cfg)
    backbone = models.split_for_features(models.build_model(ARCH, 3, pretrained=True), ARCH)[0].eval()
    with torch.no_grad():
        model = features.onnx_export(backbone, cfg.image_size, ["features"])
    fp32 = torch.from_numpy(features.cpu_session(model, 1).run(None, {"x": x.numpy()})[0])
    run = bf16_features.runner(model, 1)
    low = torch.from_numpy(run(x.numpy()))
    assert low.shape == fp32.shape and low.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(low, fp32, dim=1)
    assert float(cosine.min()) > 0.99, cosine  # 0.9996 for the preset's ensemble at 260 px (docs/benchmarks.md)
    # Each row is its own image's, whatever the batch it came in.
    for i in (0, 9, len(x) - 1):
        alone = torch.from_numpy(run(x[i:i + 1].numpy()))[0]
        assert float(torch.nn.functional.cosine_similarity(alone, low[i], dim=0)) > 0.999, i
    n = len(splits.train)
    right = {name: nearest_mean_correct(f, y, n, splits.num_classes) for name, f in (("fp32", fp32), ("bf16", low))}
    assert right["fp32"] >= 0.8 * (len(y) - n)  # ImageNet features tell these classes apart
    assert abs(right["bf16"] - right["fp32"]) <= 1, right


def test_the_speed_mode_takes_bf16_features_only_where_they_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    preset = PRESETS["best-offline"].configs[0]
    assert preset.amp and preset.fast_path and not preset.int8_features
    monkeypatch.setattr(bf16_features, "supported", lambda: True)
    assert speed.choose(preset, CPU).label == "bf16 features"
    lite = TrainConfig(arch=ARCH, pretrained=True, train="fc")
    assert speed.choose(lite, CPU).bf16_features
    for changes in ({"amp": False}, {"int8_features": True}, {"augment": ("hflip",)}, {"fast_path": False},
                    {"arch": "resnet18"}, {"train": "all"}):
        assert not speed.choose(lite.replace(**changes), CPU).bf16_features, changes
    assert speed.choose(lite.replace(int8_features=True), CPU).label == "int8 features"
    assert not speed.choose(lite, torch.device("cuda")).bf16_features  # OpenVINO runs on the CPU only
    monkeypatch.setattr(bf16_features, "supported", lambda: False)  # bf16 would be emulated: fp32 as before
    assert speed.choose(preset, CPU).label == "eager fp32"


def test_supported_is_what_openvino_says_of_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    capabilities = bf16_features._core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert bf16_features.supported() == ("BF16" in capabilities)
    if bf16_features.supported():  # the same CPUs as PyTorch's native bf16 (AVX-512 BF16 / AMX)
        assert speed.cpu_bf16_supported()
    # Without OpenVINO installed: not supported, and the preset's fast path stays on onnxruntime fp32.
    monkeypatch.setitem(sys.modules, "openvino", None)
    for cached in (bf16_features._core, bf16_features.supported):
        cached.cache_clear()
    try:
        assert not bf16_features.supported()
        assert speed.choose(PRESETS["best-offline"].configs[0], CPU).label == "eager fp32"
    finally:
        monkeypatch.undo()
        for cached in (bf16_features._core, bf16_features.supported):
            cached.cache_clear()


@pytest.fixture(scope="module")
def bf16_runs(splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same tiny fast-path run with fp32 features (amp off) and with bf16 features (amp on, the speed mode
    told the CPU has bf16), one store's cache, and how many feature passes ran on OpenVINO."""
    cfg = TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=SIZE, device="cpu", epochs=4, batch_size=8,
                      lr=0.01, retrain_on_train_val=True)
    compiled: list[int] = []
    real = bf16_features.runner
    store = RunStore(tmp_path_factory.mktemp("bf16-home"))
    work = tmp_path_factory.mktemp("bf16-runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bf16_features, "supported", lambda: True)
        patch.setattr(bf16_features, "runner", lambda *a, **k: compiled.append(1) or real(*a, **k))
        runs = {name: engine.train(c, splits, workdir=work / name, cache_dir=store.cache_dir)
                for name, c in (("fp32", cfg.replace(amp=False)), ("bf16", cfg), ("bf16 seed 7", cfg.replace(seed=7)))}
    return {"runs": runs, "compiled": compiled, "cfg": cfg, "store": store}


def test_a_bf16_run_records_it_and_validates_within_one_image_of_fp32(bf16_runs: dict, splits: Splits) -> None:
    fp32, low = bf16_runs["runs"]["fp32"], bf16_runs["runs"]["bf16"]
    for result in (fp32, low):
        assert result.status == "finished" and result.fast_path and result.retrain_test_acc is not None, result.error
    assert (fp32.speed, low.speed) == ("eager fp32", "bf16 features")
    assert fp32.best_val_acc >= 0.8  # ImageNet features tell the three classes apart
    assert abs(low.best_val_acc - fp32.best_val_acc) * len(splits.val) <= 1 + 1e-9, (low, fp32)
    # One OpenVINO feature pass: the retrain on train+val and the run with another seed find the cached features.
    assert bf16_runs["compiled"] == [1]


def test_the_feature_cache_keeps_bf16_and_fp32_apart(bf16_runs: dict) -> None:
    runs, cache_dir = bf16_runs["runs"], bf16_runs["store"].cache_dir
    assert runs["bf16"].feature_cache != runs["fp32"].feature_cache
    assert runs["bf16 seed 7"].feature_cache == runs["bf16"].feature_cache
    files = {name: torch.load(layout.features_dir(cache_dir) / r.feature_cache, weights_only=True)["features"]
             for name, r in runs.items() if name != "bf16 seed 7"}
    assert files["bf16"].shape == files["fp32"].shape


def test_the_estimate_and_the_suspects_use_the_run_s_bf16_features(
    bf16_runs: dict, splits: Splits, mini_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cfg = bf16_runs["store"], bf16_runs["cfg"]
    compiled: list[int] = []
    real = bf16_features.runner
    monkeypatch.setattr(bf16_features, "supported", lambda: True)
    monkeypatch.setattr(bf16_features, "runner", lambda *a, **k: compiled.append(1) or real(*a, **k))
    found = estimate_epoch_seconds(cfg, None, cache_dir=store.cache_dir, splits=splits)
    assert found.fast_path and found.speed == "bf16 features" and compiled == [1]  # timed as the run runs it
    passes: list[int] = []
    monkeypatch.setattr(features, "feature_runner", lambda *a, **k: passes.append(1))
    report = suspects.find_suspects(store, store.create_run(cfg), "train", data_root=mini_root, folds=2)
    assert not passes and report.images == len(splits.train)  # the run's cached bf16 features, no new pass
