"""The offline EfficientNet-Lite0 ImageNet weights, loaded into timm, behave like the reference network."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from caltech_core import models

# TF EfficientNet-Lite0 blocks (efficientnet_lite_builder.py): repeats, kernel, stride, expand, in, out.
LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3  # TF default used by EfficientNet-Lite
DALMATIAN = 251  # ImageNet class index


def _raw_state() -> dict[str, torch.Tensor]:
    status = models.weights_status("efficientnet_lite0")
    assert status.available, status.message
    return torch.load(status.path, map_location="cpu", weights_only=True)


def _same_conv(
    x: torch.Tensor, w: torch.Tensor, stride: int, groups: int = 1, symmetric: bool = False
) -> torch.Tensor:
    """TensorFlow padding='SAME': pad so out = ceil(in / stride), the extra pixel on the bottom/right."""
    k = w.shape[-1]
    if symmetric:  # PyTorch-style padding, only to show the difference matters
        return F.conv2d(x, w, stride=stride, padding=k // 2, groups=groups)
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, stride=stride, groups=groups)


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"], training=False, eps=BN_EPS,
    )


def reference_lite0(sd: dict[str, torch.Tensor], x: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """EfficientNet-Lite0 written out with torch.nn.functional on the package's raw tensors."""
    x = F.relu6(_bn(_same_conv(x, sd["_conv_stem.weight"], 2, symmetric=symmetric), sd, "_bn0"))
    index = 0
    for repeats, _k, first_stride, expand, _cin, _cout in LITE0_BLOCKS:
        for r in range(repeats):
            p = f"_blocks.{index}"
            stride = first_stride if r == 0 else 1
            inputs = x
            if expand != 1:
                x = F.relu6(_bn(F.conv2d(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
            x = _same_conv(x, sd[f"{p}._depthwise_conv.weight"], stride, x.shape[1], symmetric)
            x = F.relu6(_bn(x, sd, f"{p}._bn1"))
            x = _bn(F.conv2d(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")  # linear bottleneck
            if stride == 1 and inputs.shape[1] == x.shape[1]:
                x = x + inputs
            index += 1
    assert f"_blocks.{index}._depthwise_conv.weight" not in sd, "reference block table is incomplete"
    x = F.relu6(_bn(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def test_timm_model_with_package_weights_equals_reference_forward() -> None:
    sd = _raw_state()
    model = models.imagenet_lite0()
    gen = torch.Generator().manual_seed(0)
    # At 224 TF 'same' padding is asymmetric (0 before, 1 after) in stride-2 layers: symmetric padding
    # would give other logits, so this also checks timm's tf_ padding matches the weights' origin.
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        ours = model(x)
        ref = reference_lite0(sd, x)
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert (reference_lite0(sd, x, symmetric=True) - ref).abs().max() > 0.1
    # Guard against a vacuous pass: a model with other weights gives other logits.
    other = models.build_model("efficientnet_lite0", 1000)
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x), ref, atol=1e-2)


def test_position_mapping_rejects_mismatched_state() -> None:
    sd = _raw_state()
    model = models.build_model("efficientnet_lite0", 1000)
    broken = dict(sd)
    broken["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(models.WeightsUnavailableError, match=r"_conv_stem.weight.*\(16, 3, 3, 3\)"):
        models.load_by_position(model, broken, "test file")
    shorter = dict(list(sd.items())[:-2])
    with pytest.raises(models.WeightsUnavailableError, match="294 tensors but the model has 296"):
        models.load_by_position(model, shorter, "test file")


def lite0_preprocess() -> v2.Compose:
    """timm pretrained_cfg of tf_efficientnet_lite0: bicubic, crop_pct 0.875, mean = std = 0.5."""
    import timm

    cfg = timm.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
    assert (cfg["mean"], cfg["std"]) == (models.LITE0_MEAN, models.LITE0_STD)
    assert (cfg["interpolation"], cfg["crop_pct"]) == (models.LITE0_INTERPOLATION, models.LITE0_CROP_PCT)
    crop = cfg["input_size"][-1]
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(round(crop / cfg["crop_pct"]), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(crop),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(cfg["mean"], cfg["std"]),
    ])


def test_real_dalmatian_photos_are_dalmatians(caltech_root: Path) -> None:
    folder = caltech_root / "101_ObjectCategories" / "dalmatian"
    files = sorted(folder.glob("*.jpg"))[:4]
    assert len(files) == 4
    transform = lite0_preprocess()
    batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    model = models.imagenet_lite0()
    with torch.no_grad():
        probs = model(batch).softmax(dim=1)
    assert probs.argmax(dim=1).tolist() == [DALMATIAN] * 4
    names = (Path(models.__file__).parent / "imagenet_classes.txt").read_text().splitlines()
    assert names[DALMATIAN] == "dalmatian"
    # A picture of something else is not called a dalmatian.
    piano = sorted((caltech_root / "101_ObjectCategories" / "grand_piano").glob("*.jpg"))[0]
    with torch.no_grad():
        other = model(transform(Image.open(piano).convert("RGB"))[None]).softmax(dim=1)
    assert other.argmax().item() != DALMATIAN
