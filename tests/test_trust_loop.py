"""Issue 25's loop: marks from the suspects/Errors galleries through data/overrides.py, "retrain with these fixes",
before/after; and the fast path's feature key, which must not depend on a randomly initialised head."""

from __future__ import annotations

from pathlib import Path

import torch

from caltech_core.config import TrainConfig
from caltech_core.nets import models
from caltech_core.training.features import feature_key


def test_feature_key_ignores_the_random_head_but_not_the_backbone(mini_root: Path) -> None:
    """Two fresh builds of EfficientNet-Lite0 (its backbone module holds the new classifier) under different seeds
    give the same key; a changed backbone weight gives another."""
    cfg = TrainConfig(arch="efficientnet_lite0", pretrained=True, train="fc", image_size=96)
    paths = sorted((mini_root / "101_ObjectCategories").rglob("*.jpg"))[:3]
    keys, backbones = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        backbone, head = models.split_for_features(models.build_model(cfg.arch, 3, pretrained=True), cfg.arch)
        keys.append(feature_key(cfg, backbone, head, paths))
        backbones.append((backbone, head))
    heads = [next(h.parameters()) for _, h in backbones]
    assert not torch.equal(heads[0], heads[1])  # the heads do differ
    assert keys[0] == keys[1]
    backbone, head = backbones[0]
    with torch.no_grad():
        backbone.model.conv_stem.weight[0, 0, 0, 0] += 1e-3
    assert feature_key(cfg, backbone, head, paths) != keys[0]
