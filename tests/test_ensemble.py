"""The EfficientNet-Lite0+1+2 ensemble: its members, the fast path (onnxruntime, OpenVINO), Classify and Grad-CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caltech_core import settings
from caltech_core.config import ConfigError, TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.nets import models
from caltech_core.runs.store import RunStore
from caltech_core.training import engine, features, openvino_features
from caltech_core.use.inference import Classifier

ARCH = "lite_ensemble"
MEMBERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return models.build_model(ARCH, 3, pretrained=True).eval()


def test_members_are_the_imagenet_backbones(model: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    backbone, head = models.split_for_features(model, ARCH)
    with torch.no_grad():
        feats = backbone(x)
        assert feats.shape == (2, 3 * 1280)
        torch.testing.assert_close(head(feats), model(x))
        for k, name in enumerate(MEMBERS):  # each slice: that architecture's own ImageNet network
            reference = models.imagenet_model(name)
            pooled = reference.global_pool(reference.forward_features(x))
            torch.testing.assert_close(feats[:, k * 1280:(k + 1) * 1280], pooled)


def test_onnxruntime_gives_torchs_features(model: torch.nn.Module) -> None:
    backbone, _ = models.split_for_features(model, ARCH)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = backbone(x)
        got = features.onnx_runner(backbone, 64, threads=1)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_fast_path_on_either_runtime_matches_the_plain_loop(
    splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[str] = []
    real_onnx, real_openvino = features.onnx_runner, openvino_features.runner
    monkeypatch.setattr(features, "onnx_runner", lambda *a, **k: passes.append("onnxruntime") or real_onnx(*a, **k))
    monkeypatch.setattr(openvino_features, "runner", lambda *a: passes.append(a[2]) or real_openvino(*a))
    # amp off: fp32 features on every CPU (with native bf16 they would be OpenVINO's bf16:
    # tests/test_openvino_features.py)
    cfg = TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=64, epochs=2, batch_size=8, lr=0.05,
                      device="cpu", amp=False)
    assert (cfg.resize_size, cfg.normalization) == (72, "half")
    plain = engine.train(cfg.replace(fast_path=False), splits, workdir=tmp_path / "plain", cache_dir=tmp_path)
    assert (plain.status, plain.fast_path) == ("finished", False), plain.error
    for runtime, label in (("onnxruntime", "eager fp32"), ("openvino", "OpenVINO fp32 features")):
        monkeypatch.setenv(settings.FEATURE_RUNTIME.name, runtime)
        passes.clear()
        fast = engine.train(cfg, splits, workdir=tmp_path / runtime, cache_dir=tmp_path / f"{runtime}-cache")
        assert fast.status == "finished", fast.error
        compiled = "onnxruntime" if runtime == "onnxruntime" else "f32"  # OpenVINO's passes are named by precision
        assert (fast.fast_path, fast.speed, passes) == (True, label, [compiled])
        # Either runtime's features differ from torch's by float rounding (~1e-5), which SGD carries on: same
        # numbers to 1e-3, same accuracies.
        for p, f in zip(plain.epochs, fast.epochs, strict=True):
            assert f.train_loss == pytest.approx(p.train_loss, rel=1e-3), runtime
            assert f.val_loss == pytest.approx(p.val_loss, rel=1e-3), runtime
            assert (f.train_acc, f.val_acc) == (p.train_acc, p.val_acc), runtime
        assert fast.test_acc is not None and fast.test_acc >= 2 / 3  # ImageNet features tell these classes apart


def test_classify_and_gradcam_of_an_ensemble_run(tmp_path: Path, model: torch.nn.Module) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=64, classes=3))
    torch.save(model.state_dict(), store.run_dir(run_id) / "best.pt")
    store.set_results(run_id, {"classes": ["accordion", "dalmatian", "pizza"]})
    store.set_status(run_id, "finished")
    clf = Classifier.from_run(store, run_id, device="cpu")
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    [top] = clf.predict([photo], top=3)
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-4)
    heat = clf.gradcam(photo, 0)
    assert heat.shape == (64, 64) and heat.min() >= 0 and heat.max() <= 1


def test_the_ensemble_takes_its_members_weights_and_has_no_imagenet_classifier() -> None:
    with pytest.raises(ConfigError, match="members' ImageNet weights") as err:
        TrainConfig(arch=ARCH, pretrained=True, weights_path="/tmp/some.pth")
    assert err.value.field == "weights_path"
    with pytest.raises(ValueError, match="no ImageNet classifier"):
        models.imagenet_model(ARCH)
    assert models.strongest_installed_imagenet() == "efficientnet_lite2"
    status = models.weights_status(ARCH)
    assert status.available and all(name in status.message for name in MEMBERS)
