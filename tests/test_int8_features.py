"""Int8 frozen features (training/int8.py): calibrated on training images only, as accurate as fp32's on real
images (the preset-scale check is bench/frozen_features.py --accuracy)."""

from __future__ import annotations

from pathlib import Path

import torch

from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.data.imagecache import ImageCache
from caltech_core.data.transforms import BatchLoader
from caltech_core.nets import models
from caltech_core.training import features
from caltech_core.training.int8 import quantize

ARCH = "efficientnet_lite0"


def _nearest_mean_correct(train: torch.Tensor, train_y: torch.Tensor, other: torch.Tensor, other_y: torch.Tensor,
                          classes: int) -> int:
    """Images of `other` whose nearest class mean (cosine) of the training features is their class."""
    means = torch.nn.functional.normalize(torch.stack([train[train_y == c].mean(0) for c in range(classes)]), dim=1)
    guess = (torch.nn.functional.normalize(other, dim=1) @ means.T).argmax(1)
    return int((guess == other_y).sum())


def test_int8_features_classify_real_images_as_well_as_fp32(splits: Splits, cache_dir: Path) -> None:
    cfg = TrainConfig(arch=ARCH, pretrained=True, train="fc", image_size=128, device="cpu")
    samples = splits.train + splits.val + splits.test
    cache = ImageCache.build([s.path for s in samples], cache_dir, resize_size=cfg.resize_size)
    indices = [cache.index_of(s.path) for s in samples]
    [(x, _)] = list(BatchLoader(cache, indices, [0] * len(indices), batch_size=len(indices), train=False, cfg=cfg))
    n = len(splits.train)
    calibration = [x[:8].numpy(), x[8:n].numpy()]  # training images only, never a val/test image

    backbone = models.split_for_features(models.build_model(ARCH, 3, pretrained=True), ARCH)[0].eval()
    with torch.no_grad():
        model = features.onnx_export(backbone, cfg.image_size, ["features"])
        eager = backbone(x)
    run = {name: features.cpu_session(m, 1) for name, m in (("fp32", model), ("int8", quantize(model, calibration)))}
    got = {name: torch.from_numpy(session.run(None, {"x": x.numpy()})[0]) for name, session in run.items()}
    fp32, int8 = got["fp32"], got["int8"]
    torch.testing.assert_close(fp32, eager, rtol=1e-4, atol=1e-4)  # the fp32 path is torch's
    assert int8.shape == fp32.shape and not torch.equal(int8, fp32)  # really another (quantised) network
    cosine = torch.nn.functional.cosine_similarity(int8, fp32, dim=1)
    # 0.83 in a run with 8 calibration images (Lite0 at 128 px); 0.99 for the preset's ensemble at 260 px.
    assert float(cosine.mean()) > 0.75, cosine

    y = torch.tensor([s.label for s in samples])
    right = {name: _nearest_mean_correct(f[:n], y[:n], f[n:], y[n:], splits.num_classes) for name, f in got.items()}
    assert right["fp32"] >= 0.8 * (len(samples) - n)  # ImageNet features tell these classes apart
    assert abs(right["int8"] - right["fp32"]) <= 1, right  # int8: at most one of the 24 images differs
