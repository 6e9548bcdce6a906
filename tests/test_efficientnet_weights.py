"""The offline EfficientNet-Lite0/1/2 ImageNet weights, loaded into timm, behave like the reference network."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from caltech_core.nets import models
from caltech_core.nets.architectures import get_spec
from caltech_core.use.inference import IMAGENET_CLASSES_FILE

# TF EfficientNet-Lite stages (efficientnet_lite_builder.py): the first stride of each of the 7 stages, and
# their repeats per model (Lite0's, times the depth multiplier 1.0 / 1.1 / 1.2 rounded up; the first and last
# stage are not scaled in the Lite models). Kernel sizes and channel counts are read from the tensors.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
STAGE_REPEATS = {
    "efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1),
    "efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),
    "efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1),
}
LITES = tuple(STAGE_REPEATS)
BN_EPS = 1e-3  # TF default used by EfficientNet-Lite
DALMATIAN = 251  # ImageNet class index


def _raw_state(arch: str) -> dict[str, torch.Tensor]:
    status = models.weights_status(arch)
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


def reference_lite(
    sd: dict[str, torch.Tensor], x: torch.Tensor, repeats: tuple[int, ...], symmetric: bool = False
) -> torch.Tensor:
    """EfficientNet-Lite written out with torch.nn.functional on the package's raw tensors."""
    x = F.relu6(_bn(_same_conv(x, sd["_conv_stem.weight"], 2, symmetric=symmetric), sd, "_bn0"))
    index = 0
    for stage_repeats, first_stride in zip(repeats, STAGE_STRIDES, strict=True):
        for r in range(stage_repeats):
            p = f"_blocks.{index}"
            stride = first_stride if r == 0 else 1
            inputs = x
            if f"{p}._expand_conv.weight" in sd:  # every block but the first expands 6x
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


@pytest.mark.parametrize("arch", LITES)
def test_timm_model_with_package_weights_equals_reference_forward(arch: str) -> None:
    sd = _raw_state(arch)
    model = models.imagenet_model(arch)
    gen = torch.Generator().manual_seed(0)
    # At the native size TF 'same' padding is asymmetric (0 before, 1 after) in some stride-2 layers:
    # symmetric padding would give other logits, so this also checks timm's tf_ padding matches the weights.
    size = get_spec(arch).image_size
    x = torch.randn(2, 3, size, size, generator=gen)
    with torch.no_grad():
        ours = model(x)
        ref = reference_lite(sd, x, STAGE_REPEATS[arch])
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert (reference_lite(sd, x, STAGE_REPEATS[arch], symmetric=True) - ref).abs().max() > 0.1
    # Guard against a vacuous pass: a model with other weights gives other logits.
    other = models.build_model(arch, 1000)
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x), ref, atol=1e-2)


def test_position_mapping_rejects_mismatched_state() -> None:
    sd = _raw_state("efficientnet_lite0")
    model = models.build_model("efficientnet_lite0", 1000)
    broken = dict(sd)
    broken["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(models.WeightsUnavailableError, match=r"_conv_stem.weight.*\(16, 3, 3, 3\)"):
        models.load_by_position(model, broken, "test file")
    shorter = dict(list(sd.items())[:-2])
    with pytest.raises(models.WeightsUnavailableError, match="294 tensors but the model has 296"):
        models.load_by_position(model, shorter, "test file")


def timm_preprocess(arch: str) -> v2.Compose:
    """timm's pretrained_cfg of tf_efficientnet_liteN (bicubic, its crop_pct, mean = std = 0.5), which the
    architecture table must match."""
    import timm

    spec = get_spec(arch)
    cfg = timm.get_pretrained_cfg(f"tf_{arch}").to_dict()
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5) and spec.normalization == "half"
    assert (cfg["interpolation"], cfg["crop_pct"]) == (spec.interpolation, spec.crop_pct)
    crop = cfg["input_size"][-1]
    assert crop == spec.image_size
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(round(crop / cfg["crop_pct"]), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(crop),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(cfg["mean"], cfg["std"]),
    ])


@pytest.mark.parametrize("arch", LITES)
def test_real_dalmatian_photos_are_dalmatians(arch: str, caltech_root: Path) -> None:
    folder = caltech_root / "101_ObjectCategories" / "dalmatian"
    files = sorted(folder.glob("*.jpg"))[:4]
    assert len(files) == 4
    transform = timm_preprocess(arch)
    batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    model = models.imagenet_model(arch)
    with torch.no_grad():
        probs = model(batch).softmax(dim=1)
    assert probs.argmax(dim=1).tolist() == [DALMATIAN] * 4
    names = IMAGENET_CLASSES_FILE.read_text().splitlines()
    assert names[DALMATIAN] == "dalmatian"
    # A picture of something else is not called a dalmatian.
    piano = sorted((caltech_root / "101_ObjectCategories" / "grand_piano").glob("*.jpg"))[0]
    with torch.no_grad():
        other = model(transform(Image.open(piano).convert("RGB"))[None]).softmax(dim=1)
    assert other.argmax().item() != DALMATIAN


def test_the_three_lites_hold_different_weights() -> None:
    """Each package ships its own network: the stems differ (same shape, other values) and Lite2 is wider."""
    stems = {arch: _raw_state(arch)["_conv_stem.weight"] for arch in LITES}
    assert not torch.equal(stems["efficientnet_lite0"], stems["efficientnet_lite1"])
    assert _raw_state("efficientnet_lite2")["_blocks.5._depthwise_conv.weight"].shape[0] == 288  # 48 * 6
