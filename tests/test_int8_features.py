"""Int8 frozen features (training/int8.py; the `int8_features` setting): calibrated on training images only, as
accurate as fp32's on real images (the preset-scale check is bench/frozen_features.py --accuracy)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from feature_kit import crops, nearest_mean_correct

from caltech_core import layout, settings
from caltech_core.config import ConfigError, TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.nets import models
from caltech_core.runs.store import RunStore
from caltech_core.training import engine, features, int8
from caltech_core.training.estimate import estimate_epoch_seconds
from caltech_core.use import suspects

ARCH = "efficientnet_lite0"


def test_int8_features_classify_real_images_as_well_as_fp32(splits: Splits, cache_dir: Path) -> None:
    cfg = TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=260, device="cpu")
    x, y = crops(splits, cache_dir, cfg)
    n = len(splits.train)
    calibration = [x[:8].numpy(), x[8:n].numpy()]  # training images only, never a val/test image

    backbone = models.split_for_features(models.build_model(ARCH, 3, pretrained=True), ARCH)[0].eval()
    with torch.no_grad():
        model = features.onnx_export(backbone, cfg.image_size, ["features"])
        eager = backbone(x)
    quantised = int8.quantize(model, calibration)
    run = {name: features.cpu_session(m, 1) for name, m in (("fp32", model), ("int8", quantised))}
    got = {name: torch.from_numpy(session.run(None, {"x": x.numpy()})[0]) for name, session in run.items()}
    fp32, low = got["fp32"], got["int8"]
    torch.testing.assert_close(fp32, eager, rtol=1e-4, atol=1e-4)  # the fp32 path is torch's
    assert low.shape == fp32.shape and not torch.equal(low, fp32)  # really another (quantised) network
    cosine = torch.nn.functional.cosine_similarity(low, fp32, dim=1)
    # Lite0 at the preset's 260 px, 8 calibration images: 0.995 on a CPU with VNNI, 0.88 on one without, whose int8
    # sums saturate at 16 bits (an AVX2-only view of the CPU, docs/benchmarks.md "int8 on CPUs without VNNI"); at
    # 128 px these were 0.83 and 0.74, too close to tell a broken quantisation from the CPU's kernels.
    assert float(cosine.mean()) > 0.85, cosine

    right = {name: nearest_mean_correct(f, y, n, splits.num_classes) for name, f in got.items()}
    assert right["fp32"] >= 0.8 * (len(y) - n)  # ImageNet features tell these classes apart
    assert abs(right["int8"] - right["fp32"]) <= 1, right  # int8: at most one of the 24 images differs


# -- the setting: int8_features on the engine's fast path ------------------------------------------------------------

SIZE = 96  # Lite0 at 96 px: features still tell the mini split's classes apart, and export + quantisation are quick


@pytest.fixture(scope="module")
def int8_runs(splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same tiny fast-path run (retrained on train+val) with fp32 and with int8 features in one store's cache,
    an int8 run with another seed after them, and the image paths every calibration was given."""
    # amp off: the reference run's features are fp32 on every CPU (not bf16 where the CPU has it).
    cfg = TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=SIZE, device="cpu", epochs=4, batch_size=8,
                      lr=0.01, retrain_on_train_val=True, amp=False)
    given: list[list[Path]] = []
    real = int8.calibration_batches
    patch = pytest.MonkeyPatch()
    patch.setattr(int8, "calibration_batches",
                  lambda cache, paths, c: given.append(list(paths)) or real(cache, paths, c))
    patch.setenv(settings.FEATURE_RUNTIME.name, "onnxruntime")  # int8 against onnxruntime's fp32, the same export
    store = RunStore(tmp_path_factory.mktemp("int8-home"))
    work = tmp_path_factory.mktemp("int8-runs")
    try:
        configs = {"fp32": cfg, "int8": cfg.replace(int8_features=True),
                   "int8 seed 7": cfg.replace(int8_features=True, seed=7)}
        runs = {name: engine.train(c, splits, workdir=work / name, cache_dir=store.cache_dir)
                for name, c in configs.items()}
    finally:
        patch.undo()
    return {"runs": runs, "given": given, "cfg": cfg, "store": store}


def test_an_int8_run_trains_records_it_and_validates_within_one_image_of_fp32(int8_runs: dict, splits: Splits) -> None:
    fp32, quantised = int8_runs["runs"]["fp32"], int8_runs["runs"]["int8"]
    for result in (fp32, quantised):
        assert result.status == "finished" and result.fast_path, result.error
        assert result.retrain_test_acc is not None
    assert (fp32.speed, quantised.speed) == ("eager fp32", "int8 features")
    assert fp32.best_val_acc >= 0.8  # ImageNet features tell the three classes apart
    assert abs(quantised.best_val_acc - fp32.best_val_acc) * len(splits.val) <= 1 + 1e-9, (quantised, fp32)


def test_int8_features_are_calibrated_on_training_images_only(int8_runs: dict, splits: Splits) -> None:
    # Once: the retrain on train+val and the run with another seed reuse the cached int8 features.
    (paths,) = int8_runs["given"]
    train = {s.path for s in splits.train}
    assert set(paths) <= train and len(paths) == min(int8.CALIBRATION_IMAGES, len(train))
    assert not set(paths) & {s.path for s in splits.val + splits.test}
    assert paths == int8.calibration_images(splits.train)  # the same images whatever the run's seed


def test_the_feature_cache_keeps_int8_and_fp32_apart(int8_runs: dict) -> None:
    runs, cache_dir = int8_runs["runs"], int8_runs["store"].cache_dir
    assert runs["int8"].feature_cache != runs["fp32"].feature_cache
    assert runs["int8 seed 7"].feature_cache == runs["int8"].feature_cache  # found again, not recomputed
    files = {name: torch.load(layout.features_dir(cache_dir) / r.feature_cache, weights_only=True)["features"]
             for name, r in runs.items()}
    assert files["int8"].shape == files["fp32"].shape and not torch.equal(files["int8"], files["fp32"])


def test_int8_features_need_the_fast_path_on_an_onnx_backbone() -> None:
    ok = TrainConfig(arch=ARCH, pretrained=True, train="fc", int8_features=True)
    assert ok.int8_features
    for changes in ({"train": "all"}, {"augment": ("hflip",)}, {"fast_path": False}, {"arch": "resnet18"}):
        with pytest.raises(ConfigError, match="int8") as caught:
            ok.replace(**changes)
        assert caught.value.field == "int8_features"
    assert not TrainConfig(arch="resnet18", train="all").int8_features  # off by default


def test_the_estimate_counts_the_quantisation(int8_runs: dict, splits: Splits) -> None:
    timed: list[float] = []
    real = int8.quantize

    def quantize(model: bytes, calibration) -> bytes:
        started = time.perf_counter()
        out = real(model, calibration)
        timed.append(time.perf_counter() - started)
        return out

    cfg = int8_runs["cfg"].replace(int8_features=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8, "quantize", quantize)
        found = estimate_epoch_seconds(cfg, None, cache_dir=int8_runs["store"].cache_dir, splits=splits)
    assert found.fast_path and found.speed == "int8 features" and len(timed) == 1
    assert found.feature_seconds > timed[0]
    assert found.run_seconds >= found.feature_seconds + cfg.epochs * found.epoch_seconds


def test_suspects_of_an_int8_run_read_its_own_features(int8_runs: dict, splits: Splits, mini_root: Path) -> None:
    """The Errors page's training-split suspects find the run's cached int8 features: no new feature pass."""
    store, cfg = int8_runs["store"], int8_runs["cfg"].replace(int8_features=True)
    passes: list[int] = []
    real = features.feature_runner
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features, "feature_runner", lambda *a, **k: passes.append(1) or real(*a, **k))
        report = suspects.find_suspects(store, store.create_run(cfg), "train", data_root=mini_root, folds=2)
    assert not passes and report.images == len(splits.train)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run bench/gpu_check.py there)")
def test_on_cuda_int8_features_change_nothing(splits: Splits, tmp_path: Path) -> None:
    cfg = TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=SIZE, device="cuda", epochs=2, batch_size=8,
                      lr=0.01)
    runs = {low: engine.train(cfg.replace(int8_features=low), splits, workdir=tmp_path / str(low),
                              cache_dir=tmp_path / "cache") for low in (False, True)}
    for result in runs.values():
        assert result.status == "finished" and result.fast_path, result.error
    assert "int8" not in runs[True].speed and runs[True].speed == runs[False].speed
    assert runs[True].feature_cache == runs[False].feature_cache  # the same fp32 features, found again
