"""Frozen features through OpenVINO (training/openvino_features.py): its fp32 run of the backbone's ONNX export
gives onnxruntime's features and is taken where OpenVINO is installed (x86-64) unless the feature runtime setting
says onnxruntime; its bf16 run, taken by the speed mode on CPUs with native bf16 under `amp`, is as accurate as
fp32's on real images, recorded by the run and cached apart from fp32's (the preset-scale checks are
bench/best_offline.py --compare-bf16 and --compare-openvino).

On a CPU without native bf16 OpenVINO runs the bf16-compiled model in fp32, so every test here runs on any CPU;
where the speed mode's choice depends on the CPU, `bf16_native` is set both ways."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
import torch
from feature_kit import crops, nearest_mean_correct

from caltech_core import layout, settings
from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.nets import models
from caltech_core.runs.store import RunStore
from caltech_core.study.experiments import PRESETS
from caltech_core.training import engine, features, openvino_features, speed
from caltech_core.training.estimate import estimate_epoch_seconds
from caltech_core.use import suspects

ARCH = "efficientnet_lite0"
SIZE = 96  # Lite0 at 96 px: features still tell the mini split's classes apart, and the runs are quick
CPU = torch.device("cpu")


def test_openvino_s_features_of_real_images_are_onnxruntime_s(splits: Splits, cache_dir: Path) -> None:
    """fp32: the same numbers to float rounding; bf16: the same classification to one image."""
    cfg = TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=128, device="cpu")
    x, y = crops(splits, cache_dir, cfg)
    backbone = models.split_for_features(models.build_model(ARCH, 3, pretrained=True), ARCH)[0].eval()
    with torch.no_grad():
        model = features.onnx_export(backbone, cfg.image_size, ["features"])
    fp32 = torch.from_numpy(features.cpu_session(model, 1).run(None, {"x": x.numpy()})[0])
    same = torch.from_numpy(openvino_features.runner(model, 1, "f32")(x.numpy()))
    torch.testing.assert_close(same, fp32, rtol=1e-4, atol=1e-4)  # 7e-6 apart for the preset's ensemble at 260 px
    run = openvino_features.runner(model, 1, "bf16")
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


def test_the_speed_mode_takes_openvino_s_features_only_where_they_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    preset = PRESETS["best-offline"].configs[0]
    assert preset.amp and preset.fast_path and not preset.int8_features
    monkeypatch.delenv(settings.FEATURE_RUNTIME.name, raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(openvino_features, "bf16_native", lambda: True)
    assert speed.choose(preset, CPU).label == "bf16 features"
    assert speed.choose(preset, CPU).openvino_precision == "bf16"
    lite = TrainConfig(arch=ARCH, pretrained=True, train="fc")
    assert speed.choose(lite.replace(amp=False), CPU).label == "OpenVINO fp32 features"
    assert speed.choose(lite.replace(amp=False), CPU).openvino_precision == "f32"
    for changes in ({"int8_features": True}, {"augment": ("hflip",)}, {"fast_path": False}, {"arch": "resnet18"},
                    {"train": "all"}):
        assert speed.choose(lite.replace(**changes), CPU).openvino_precision is None, changes
    assert speed.choose(lite.replace(int8_features=True), CPU).label == "int8 features"  # onnxruntime runs int8
    assert speed.choose(lite, torch.device("cuda")).openvino_precision is None  # OpenVINO runs on the CPU only
    monkeypatch.setattr(openvino_features, "bf16_native", lambda: False)  # bf16 would be emulated: fp32
    assert speed.choose(preset, CPU).label == "OpenVINO fp32 features"
    monkeypatch.setattr(platform, "machine", lambda: "arm64")  # not measured there: onnxruntime fp32
    assert speed.choose(preset, CPU).label == "eager fp32"
    monkeypatch.setenv(settings.FEATURE_RUNTIME.name, " OpenVINO ")  # asked for by name: taken anywhere
    assert speed.choose(preset, CPU).label == "OpenVINO fp32 features"
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(openvino_features, "bf16_native", lambda: True)
    monkeypatch.setenv(settings.FEATURE_RUNTIME.name, "onnxruntime")  # never OpenVINO, not even for bf16
    assert speed.choose(preset, CPU).label == "eager fp32"
    monkeypatch.setenv(settings.FEATURE_RUNTIME.name, "tensorrt")
    with pytest.raises(ValueError, match="CALTECH_STUDIO_FEATURE_RUNTIME must be one of auto, openvino, onnxruntime"):
        speed.choose(preset, CPU)


def test_bf16_native_is_what_openvino_says_of_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    capabilities = openvino_features._core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert openvino_features.bf16_native() == ("BF16" in capabilities)
    if openvino_features.bf16_native():  # the same CPUs as PyTorch's native bf16 (AVX-512 BF16 / AMX)
        assert speed.cpu_bf16_supported()
    # Without OpenVINO installed: the preset's fast path stays on onnxruntime fp32, unless OpenVINO is asked for.
    monkeypatch.delenv(settings.FEATURE_RUNTIME.name, raising=False)
    monkeypatch.setitem(sys.modules, "openvino", None)
    cached = (openvino_features._core, openvino_features.installed, openvino_features.bf16_native)
    for function in cached:
        function.cache_clear()
    try:
        assert not openvino_features.installed() and not openvino_features.bf16_native()
        assert speed.choose(PRESETS["best-offline"].configs[0], CPU).label == "eager fp32"
        monkeypatch.setenv(settings.FEATURE_RUNTIME.name, "openvino")
        with pytest.raises(ValueError, match="=openvino, but OpenVINO is not installed here"):
            speed.choose(PRESETS["best-offline"].configs[0], CPU)
    finally:
        monkeypatch.undo()
        for function in cached:
            function.cache_clear()


@pytest.fixture(scope="module")
def openvino_runs(splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same tiny fast-path run with onnxruntime's fp32 features (its own cache), OpenVINO's fp32 features (amp
    off) and OpenVINO's bf16 features (amp on, the speed mode told the CPU has bf16; twice, the second with
    another seed) in one store's cache, and the precision of every OpenVINO feature pass."""
    cfg = TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=SIZE, device="cpu", epochs=4, batch_size=8,
                      lr=0.01, retrain_on_train_val=True)
    compiled: list[str] = []
    real = openvino_features.runner
    store = RunStore(tmp_path_factory.mktemp("openvino-home"))
    work = tmp_path_factory.mktemp("openvino-runs")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openvino_features, "bf16_native", lambda: True)
        patch.setattr(openvino_features, "runner", lambda m, t, precision: compiled.append(precision)
                      or real(m, t, precision))
        patch.setenv(settings.FEATURE_RUNTIME.name, "onnxruntime")
        runs["onnxruntime"] = engine.train(cfg.replace(amp=False), splits, workdir=work / "onnxruntime",
                                           cache_dir=tmp_path_factory.mktemp("onnxruntime-cache"))
        patch.setenv(settings.FEATURE_RUNTIME.name, "openvino")
        for name, c in (("fp32", cfg.replace(amp=False)), ("bf16", cfg), ("bf16 seed 7", cfg.replace(seed=7))):
            runs[name] = engine.train(c, splits, workdir=work / name, cache_dir=store.cache_dir)
    return {"runs": runs, "compiled": compiled, "cfg": cfg, "store": store}


def test_openvino_s_fp32_run_is_onnxruntime_s_run(openvino_runs: dict) -> None:
    ort, fp32 = openvino_runs["runs"]["onnxruntime"], openvino_runs["runs"]["fp32"]
    for result in (ort, fp32):
        assert result.status == "finished" and result.fast_path and result.retrain_test_acc is not None, result.error
    assert (ort.speed, fp32.speed) == ("eager fp32", "OpenVINO fp32 features")
    # Features equal to float rounding: one cache key, and the curves SGD draws from them agree to 1e-3.
    assert ort.feature_cache == fp32.feature_cache
    for a, b in zip(ort.epochs, fp32.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-3)
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-3)
        assert (b.train_acc, b.val_acc) == (a.train_acc, a.val_acc)
    assert (fp32.test_acc, fp32.retrain_test_acc) == (ort.test_acc, ort.retrain_test_acc)


def test_a_bf16_run_records_it_and_validates_within_one_image_of_fp32(openvino_runs: dict, splits: Splits) -> None:
    fp32, low = openvino_runs["runs"]["fp32"], openvino_runs["runs"]["bf16"]
    for result in (fp32, low):
        assert result.status == "finished" and result.fast_path and result.retrain_test_acc is not None, result.error
    assert low.speed == "bf16 features"
    assert fp32.best_val_acc >= 0.8  # ImageNet features tell the three classes apart
    assert abs(low.best_val_acc - fp32.best_val_acc) * len(splits.val) <= 1 + 1e-9, (low, fp32)
    # One OpenVINO feature pass of each precision: the retrains on train+val and the run with another seed find
    # the cached features.
    assert openvino_runs["compiled"] == ["f32", "bf16"]


def test_the_feature_cache_keeps_bf16_and_fp32_apart(openvino_runs: dict) -> None:
    runs, cache_dir = openvino_runs["runs"], openvino_runs["store"].cache_dir
    assert runs["bf16"].feature_cache != runs["fp32"].feature_cache
    assert runs["bf16 seed 7"].feature_cache == runs["bf16"].feature_cache
    files = {name: torch.load(layout.features_dir(cache_dir) / r.feature_cache, weights_only=True)["features"]
             for name, r in runs.items() if name in ("fp32", "bf16")}
    assert files["bf16"].shape == files["fp32"].shape


def test_the_estimate_and_the_suspects_use_the_run_s_bf16_features(
    openvino_runs: dict, splits: Splits, mini_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cfg = openvino_runs["store"], openvino_runs["cfg"]
    compiled: list[str] = []
    real = openvino_features.runner
    monkeypatch.setattr(openvino_features, "bf16_native", lambda: True)
    monkeypatch.setattr(openvino_features, "runner", lambda m, t, precision: compiled.append(precision)
                        or real(m, t, precision))
    found = estimate_epoch_seconds(cfg, None, cache_dir=store.cache_dir, splits=splits)
    assert found.fast_path and found.speed == "bf16 features" and compiled == ["bf16"]  # timed as the run runs it
    passes: list[int] = []
    monkeypatch.setattr(features, "feature_runner", lambda *a, **k: passes.append(1))
    report = suspects.find_suspects(store, store.create_run(cfg), "train", data_root=mini_root, folds=2)
    assert not passes and report.images == len(splits.train)  # the run's cached bf16 features, no new pass


def test_the_feature_pass_runs_in_batches_of_16_on_the_cpu_for_the_onnx_runtimes() -> None:
    lite = TrainConfig(arch=ARCH, pretrained=True, train="fc", batch_size=64)
    assert features.feature_batch_size(lite, CPU) == features.CPU_FEATURE_BATCH == 16  # faster than 64 (benchmarks)
    assert features.feature_batch_size(lite, torch.device("cuda")) == 64  # a GPU's throughput
    torch_backbone = lite.replace(arch="resnet18", batch_size=8)  # torch runs it, as it always did
    assert features.feature_batch_size(torch_backbone, CPU) == 32
