"""Classify's onnxruntime path (use/onnx_forward.py): the same top-5 and the same Grad-CAM as torch's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caltech_core.nets.models import build_model
from caltech_core.use.inference import Classifier
from caltech_core.use.onnx_forward import OnnxForward


def _images(root: Path, count: int) -> list[Image.Image]:
    paths = sorted((root / "101_ObjectCategories").glob("*/*.jpg"))[:count]
    return [Image.open(p).convert("RGB") for p in paths]


def test_imagenet_default_model_gives_the_same_top5_and_grad_cam(mini_root: Path) -> None:
    fast = Classifier.imagenet("efficientnet_lite2").warm()
    plain = dataclasses.replace(fast, onnx=False, _onnx=None)  # the same network, torch only
    assert fast._onnx is not None and fast._onnx.exact_cam and plain._fast() is None
    images = _images(mini_root, 4)
    ours, before = fast.predict(images), plain.predict(images)
    for a, b in zip(ours, before, strict=True):
        assert [name for name, _ in a] == [name for name, _ in b]
        assert [p for _, p in a] == pytest.approx([p for _, p in b], abs=1e-4)
    top = fast.class_index(ours[0][0][0])
    np.testing.assert_allclose(fast.gradcam(images[0], top), plain.gradcam(images[0], top), atol=1e-4)


def test_grad_cam_is_taken_from_the_forward_pass_only_where_it_is_exact() -> None:
    torch.manual_seed(0)
    resnet = build_model("resnet18", 5).eval()  # layer4 -> average pool -> fc: CAM is Grad-CAM
    forward = OnnxForward(resnet, "resnet18", 64, threads=1)
    assert forward.exact_cam
    plain = Classifier(model=resnet, classes=list("abcde"), arch="resnet18", image_size=64, resize_size=73,
                       onnx=False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    logits, maps = forward.run(plain._batch([image]))
    np.testing.assert_allclose(logits.numpy(), plain.model(plain._batch([image])).detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(plain._resized(forward.cam(maps[0], 3)), plain.gradcam(image, 3), atol=1e-4)
    mobile = build_model("mobilenet_v3_small", 5).eval()  # a two-layer classifier after the pooled map
    assert not OnnxForward(mobile, "mobilenet_v3_small", 64, threads=1).exact_cam
