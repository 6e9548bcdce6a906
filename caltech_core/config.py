"""The one training configuration. Its defaults are the study's baseline (AlexNet from scratch)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from caltech_core.architectures import ARCH_LABELS as ARCH_LABELS  # re-exported: friendly names for the UI
from caltech_core.architectures import ARCHITECTURES as ARCHITECTURES
from caltech_core.architectures import get_spec

TRAIN_MODES: tuple[str, ...] = ("all", "fc", "conv", "conv+head")
AUGMENTATIONS: tuple[str, ...] = ("crop", "hflip", "rotate", "vflip")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

TRAIN_MODE_LABELS = {
    "all": "All layers",
    "fc": "FC only (classifier; conv frozen)",
    "conv": "Conv only (classifier frozen at random init)",
    "conv+head": "Conv layers + new output layer",
}
AUGMENTATION_LABELS = {
    "crop": "Random crop",
    "hflip": "Horizontal flip",
    "rotate": "Rotation",
    "vflip": "Vertical flip",
}


class ConfigError(ValueError):
    """An invalid configuration value; `field` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults reproduce the study's baseline."""

    arch: str = "alexnet"
    pretrained: bool = False
    weights_path: str | None = None  # a local ImageNet weights file instead of torchvision's cache
    train: str = "all"  # which parameters are trained: all | fc | conv | conv+head
    augment: tuple[str, ...] = ()
    rotate_degrees: float = 45.0
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 30
    step_size: int = 20
    gamma: float = 0.1
    batch_size: int = 256
    seed: int = 42
    device: str = "auto"
    retrain_on_train_val: bool = False  # after training, retrain on train+val and report test (the study's final step)
    early_stopping_patience: int = 0  # epochs without validation improvement before stopping; 0 = off
    image_size: int | None = None  # crop fed to the network; None = the architecture's native size
    train_fraction: float = 0.5
    split_seed: int = 42
    classes: int | None = None  # first K classes only (quick runs)
    class_names: tuple[str, ...] = ()  # these classes only, by folder name (instead of the first K)
    max_per_class: int | None = None  # at most M images per class in every split (quick runs)
    per_class_train: int | None = None  # classic protocol: N training images per class, the rest tested
    fast_path: bool = True  # frozen backbone + deterministic transform: train the head on cached features
    amp: bool = True  # mixed precision on CUDA (ignored on the CPU)
    name: str = ""
    group: str = ""  # sweep group this run belongs to

    def __post_init__(self) -> None:
        # Accept lists/strings for augment (from JSON, CLI, widgets) but store a canonical tuple.
        for name in ("augment", "class_names"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(a.strip() for a in value.split(",") if a.strip())
            object.__setattr__(self, name, tuple(value))
        if self.image_size is None and self.arch in ARCHITECTURES:
            object.__setattr__(self, "image_size", get_spec(self.arch).image_size)
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and its allowed range."""
        _choice("arch", self.arch, ARCHITECTURES)
        _choice("train", self.train, TRAIN_MODES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("device", self.device, DEVICES)
        for a in self.augment:
            _choice("augment", a, AUGMENTATIONS)
        if len(set(self.augment)) != len(self.augment):
            raise ConfigError("augment", "each augmentation may appear once")
        _number("lr", self.lr, low=0.0, high=10.0, low_open=True, text="must be > 0 and <= 10")
        _number("momentum", self.momentum, low=0.0, high=1.0, high_open=True, text="must be in [0, 1)")
        _number("weight_decay", self.weight_decay, low=0.0, high=1.0, text="must be in [0, 1]")
        _number("gamma", self.gamma, low=0.0, high=1.0, low_open=True, text="must be in (0, 1]")
        _number("rotate_degrees", self.rotate_degrees, low=0.0, high=180.0, text="must be in [0, 180]")
        _number(
            "train_fraction", self.train_fraction, low=0.0, high=1.0, low_open=True, high_open=True,
            text="must be in (0, 1)",
        )
        _integer("epochs", self.epochs, 1, 1000)
        _integer("step_size", self.step_size, 1, 1000)
        _integer("batch_size", self.batch_size, 1, 4096)
        _integer("seed", self.seed, 0, 2**31 - 1)
        _integer("split_seed", self.split_seed, 0, 2**31 - 1)
        _integer("early_stopping_patience", self.early_stopping_patience, 0, 1000)
        _integer("image_size", self.image_size, 32, 512)
        for name in ("classes", "max_per_class", "per_class_train"):
            value = getattr(self, name)
            if value is not None:
                _integer(name, value, 1, 100_000)
        for name in ("pretrained", "retrain_on_train_val", "fast_path", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, "must be true or false")
        if any(not isinstance(c, str) or not c.strip() for c in self.class_names):
            raise ConfigError("class_names", "must be class folder names")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("class_names", "each class may appear once")
        if self.class_names and self.classes is not None:
            raise ConfigError("class_names", "give either classes (the first K) or class_names, not both")
        if self.weights_path is not None and not isinstance(self.weights_path, str):
            raise ConfigError("weights_path", "must be a file path")
        if self.weights_path and not self.pretrained:
            raise ConfigError("weights_path", "only makes sense with pretrained=true")
        if not isinstance(self.name, str) or len(self.name) > 200:
            raise ConfigError("name", "must be text of at most 200 characters")
        if not isinstance(self.group, str) or len(self.group) > 200:
            raise ConfigError("group", "must be text of at most 200 characters")

    # -- derived values ---------------------------------------------------------------------
    @property
    def normalization(self) -> str:
        """What the pretrained weights expect ('imagenet', or 'half' for the TF EfficientNet-Lite weights
        trained on [-1, 1] inputs); 'half' ((0.5, 0.5, 0.5)) from scratch, as in the study."""
        return get_spec(self.arch).normalization if self.pretrained else "half"

    @property
    def resize_size(self) -> int:
        """Shorter side before cropping: image_size / the architecture's crop_pct (the study's 256 for 224)."""
        return get_spec(self.arch).resize_size(self.image_size)

    def lr_at(self, epoch: int) -> float:
        """Learning rate StepLR gives in `epoch` (0-based)."""
        return self.lr * self.gamma ** (epoch // self.step_size)

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augment"] = list(self.augment)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (JSON, CLI, form); unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting (known: {', '.join(sorted(known))})")
        kwargs = dict(data)
        for name in ("augment", "class_names"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        return cls(**_coerce(kwargs))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes`; a new arch brings its native image size unless the size was set by hand."""
        if "arch" in changes and "image_size" not in changes and self.image_size == get_spec(self.arch).image_size:
            changes["image_size"] = None
        return dataclasses.replace(self, **changes)


_FIELD_TYPES: dict[str, Any] = {}


def _coerce(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn ints given for float fields into floats and reject wrong types with a field name."""
    if not _FIELD_TYPES:
        _FIELD_TYPES.update({f.name: f.type for f in dataclasses.fields(TrainConfig)})
    out = {}
    for key, value in kwargs.items():
        kind = _FIELD_TYPES[key]
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"{value!r} is not one of {', '.join(allowed)}")


def _number(
    name: str, value: Any, *, low: float, high: float, text: str,
    low_open: bool = False, high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"{text} (got {value!r})")
    if not math.isfinite(value):
        raise ConfigError(name, f"{text} (got {value!r})")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        raise ConfigError(name, f"{text} (got {value!r})")


def _integer(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be a whole number from {low} to {high} (got {value!r})")
    if not low <= value <= high:
        raise ConfigError(name, f"must be a whole number from {low} to {high} (got {value!r})")

