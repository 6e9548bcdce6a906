"""The one training configuration. Its defaults are the study's baseline (AlexNet from scratch)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from caltech_core.nets.architectures import (
    ARCH_LABELS as ARCH_LABELS,  # re-exported: friendly names for the UI
)
from caltech_core.nets.architectures import ARCHITECTURES as ARCHITECTURES
from caltech_core.nets.architectures import MemberWeights, get_spec

TRAIN_MODES: tuple[str, ...] = ("all", "fc", "conv", "conv+head")
AUGMENTATIONS: tuple[str, ...] = ("crop", "hflip", "rotate", "vflip")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
LR_SCHEDULES: tuple[str, ...] = ("step", "cosine")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

TRAIN_MODE_LABELS = {
    "all": "All layers",
    "fc": "FC only (classifier; conv frozen)",
    "conv": "Conv only (classifier frozen at random init)",
    "conv+head": "Conv layers + new output layer",
}
LR_SCHEDULE_LABELS = {
    "step": "Step (StepLR: times gamma every step size)",
    "cosine": "Cosine, after a linear warm-up",
}
AUGMENTATION_LABELS = {
    "crop": "Random crop",
    "hflip": "Horizontal flip",
    "rotate": "Rotation",
    "vflip": "Vertical flip",
}


def split_list(text: str) -> tuple[str, ...]:
    """A comma-separated list ("crop, hflip") as a tuple of its non-empty items; "" or "none" is empty."""
    if text.strip().lower() == "none":
        return ()
    return tuple(item.strip() for item in text.split(",") if item.strip())


class ConfigError(ValueError):
    """An invalid configuration value; `field` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


# The Train page's sections, in order: each field's `group` names one.
GROUPS = {"model": "Model", "optimisation": "Optimisation", "data": "Data and run", "advanced": "Advanced"}


@dataclass(frozen=True)
class Setting:
    """Everything about one TrainConfig field besides its default: the Train form widget, the CLI flag and the
    valid range. `name`, `kind` ("bool", "int", "float", "str" or "tuple"), `optional` and `default` are filled
    in from the field itself (see SETTINGS)."""

    label: str  # the form widget's label
    group: str  # a key of GROUPS
    help: str = ""  # the widget's help and the flag's --help text
    choices: tuple[str, ...] = ()  # allowed values (of each item, for a tuple)
    labels: Mapping[str, str] | None = None  # friendly names of the choices
    low: float | None = None  # numbers: the allowed range
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    wording: str = ""  # how a float's range is said when "in (low, high]" is not how the study says it
    max_length: int | None = None  # text: at most this many characters
    step: float | None = None  # the number widget's +/- step (an int for int fields)
    fmt: str | None = None  # the number widget's display format
    unset: Any = None  # the widget value meaning None (number widgets cannot be empty)
    flags: tuple[str, ...] = ()  # CLI flags; default --field-name (the first is the one --help shows)
    metavar: str | None = None
    name: str = ""
    kind: str = ""
    optional: bool = False
    default: Any = None

    @property
    def rule(self) -> str:
        """The valid range as the ConfigError message says it (after "must be "); "" when none."""
        if self.kind == "int":
            return f"a whole number from {int(self.low)} to {int(self.high)}"
        if self.kind == "float":
            return self.wording or (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                                    f"{')' if self.high_open else ']'}")
        return ""

    @property
    def help_text(self) -> str:
        """The help with the valid range: what the form and `--help` show."""
        return " ".join(t for t in (self.help, f"Must be {self.rule}." if self.rule else "") if t)


def _setting(default: Any, label: str, group: str, **details: Any) -> Any:
    """A TrainConfig field with its default and its Setting as metadata."""
    return dataclasses.field(default=default, metadata={"setting": Setting(label, group, **details)})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults reproduce the study's baseline. Each field's Setting
    (label, help, range, form section, CLI flags) generates the Train form, the `train` command's options and
    most of the validation; fields are declared in the form's order."""

    # -- model --------------------------------------------------------------------------------------
    arch: str = _setting("alexnet", "Architecture", "model", choices=ARCHITECTURES, labels=ARCH_LABELS,
                         help="The network to train.")
    pretrained: bool = _setting(False, "ImageNet-pretrained weights", "model",
                                help="Start from ImageNet weights instead of a random initialisation.")
    train: str = _setting("all", "Layers trained", "model", choices=TRAIN_MODES, labels=TRAIN_MODE_LABELS,
                          help="Which layers are trained; the others stay frozen.")
    augment: tuple[str, ...] = _setting((), "Augmentations", "model", choices=AUGMENTATIONS,
                                        labels=AUGMENTATION_LABELS, flags=("--aug", "--augment"),
                                        help="Random changes to the training images.")
    rotate_degrees: float = _setting(45.0, "Rotation degrees (±)", "model", low=0.0, high=180.0, step=5.0,
                                     fmt="%.2f", help="Used when Rotation is selected.")
    image_size: int | None = _setting(None, "Image size (crop, px)", "model", low=32, high=512, step=16,
                                      help="The crop fed to the network; by default the architecture's native "
                                           "size.")
    # -- optimisation -------------------------------------------------------------------------------
    optimizer: str = _setting("sgd", "Optimizer", "optimisation", choices=OPTIMIZERS)
    lr: float = _setting(1e-3, "Learning rate", "optimisation", low=0.0, high=10.0, low_open=True,
                         wording="> 0 and <= 10", step=1e-4, fmt="%.5f")
    momentum: float = _setting(0.9, "Momentum", "optimisation", low=0.0, high=1.0, high_open=True, step=0.05,
                               fmt="%.3f")
    weight_decay: float = _setting(5e-4, "Weight decay", "optimisation", low=0.0, high=1.0, step=1e-4,
                                   fmt="%.5f")
    epochs: int = _setting(30, "Epochs", "optimisation", low=1, high=1000, step=1)
    step_size: int = _setting(20, "StepLR step size (epochs)", "optimisation", low=1, high=1000, step=1,
                              help="The learning rate is multiplied by gamma every this many epochs.")
    gamma: float = _setting(0.1, "StepLR gamma", "optimisation", low=0.0, high=1.0, low_open=True, step=0.05,
                            fmt="%.3f", help="StepLR's factor.")
    lr_schedule: str = _setting("step", "Learning-rate schedule", "optimisation", choices=LR_SCHEDULES,
                                labels=LR_SCHEDULE_LABELS,
                                help="step: StepLR (step size, gamma); cosine: a linear warm-up, then half a "
                                     "cosine from the learning rate down towards 0.")
    warmup_epochs: int = _setting(0, "Warm-up epochs (cosine)", "optimisation", low=0, high=1000, step=1,
                                  metavar="EPOCHS", help="Cosine schedule only: epochs of linear warm-up "
                                                         "(lr/(W+1), 2 lr/(W+1), ...) before the decay.")
    label_smoothing: float = _setting(0.0, "Label smoothing", "optimisation", low=0.0, high=1.0, high_open=True,
                                      step=0.05, fmt="%.2f", help="Of the training loss (torch's "
                                      "CrossEntropyLoss label_smoothing); validation and test losses stay plain "
                                      "cross-entropy. 0 = off.")
    batch_size: int = _setting(256, "Batch size", "optimisation", low=1, high=4096, step=16)
    early_stopping_patience: int = _setting(
        0, "Early stopping patience (epochs, 0 = off)", "optimisation", low=0, high=1000, step=1,
        flags=("--patience", "--early-stopping-patience"), metavar="EPOCHS",
        help="Epochs without validation improvement before stopping; 0 = off.")
    # -- data and run -------------------------------------------------------------------------------
    dataset: str = _setting("", "Dataset (empty = Caltech-101)", "data", max_length=200,
                            flags=("--data", "--dataset"), metavar="NAME|PATH",
                            help="A dataset added on the Data page or with `data add` (its name), or a folder of "
                                 "class sub-folders (added on first use); empty = Caltech-101.")
    classes: int | None = _setting(None, "Classes (first K, 0 = all 101)", "data", low=1, high=100_000, step=1,
                                   unset=0, metavar="K", help="The first K classes only (quick runs).")
    class_names: tuple[str, ...] = _setting((), "Or these classes (by name)", "data", metavar="LIST",
                                            help="These classes only, by folder name, e.g. Faces_easy,Motorbikes "
                                                 "(instead of the first K classes).")
    max_per_class: int | None = _setting(None, "Max images per class (0 = all)", "data", low=1, high=100_000,
                                         step=1, unset=0, metavar="M",
                                         help="At most M images per class in every split (quick runs).")
    retrain_on_train_val: bool = _setting(
        False, "Retrain on train+val, then test", "data", flags=("--retrain", "--retrain-on-train-val"),
        help="The study's final step: after choosing the epochs on validation, retrain on both and report test.")
    marks_on_test: bool = _setting(
        False, "Apply the dataset's marks to the test split too", "data",
        help="Off (the default): files excluded or relabelled on the Data/Errors pages change only the training "
             "and validation splits, and test accuracy is measured on the untouched test labels.")
    seed: int = _setting(42, "Seed", "data", low=0, high=2**31 - 1, step=1)
    device: str = _setting("auto", "Device", "data", choices=DEVICES, help="auto = CUDA when available, else CPU.")
    name: str = _setting("", "Run name", "data", max_length=200)
    group: str = _setting("", "Group (sweep)", "data", max_length=200, help="The sweep this run belongs to.")
    # -- advanced -----------------------------------------------------------------------------------
    train_fraction: float = _setting(0.5, "Train fraction of the official train list", "advanced", low=0.0,
                                     high=1.0, low_open=True, high_open=True, step=0.05, fmt="%.2f",
                                     help="The share of the official train list used for training; the rest "
                                          "validates.")
    split_seed: int = _setting(42, "Split seed", "advanced", low=0, high=2**31 - 1, step=1,
                               help="Seed of the train/validation split.")
    per_class_train: int | None = _setting(
        None, "Training images per class (classic protocol, 0 = off)", "advanced", low=1, high=100_000, step=1,
        unset=0, metavar="N", help="Classic protocol: N training images per class, the rest validation/test.")
    weights_path: str | None = _setting(
        None, "Local ImageNet weights file (optional)", "advanced", unset="", flags=("--weights", "--weights-path"),
        metavar="PATH", help="A local ImageNet weights file instead of the downloaded one (needs pretrained "
                             "weights; the CLI's --weights implies --pretrained).")
    fast_path: bool = _setting(True, "Frozen-backbone fast path (cache features)", "advanced",
                               help="With a frozen backbone and no random augmentation, train the head on cached "
                                    "features.")
    int8_features: bool = _setting(
        False, "Int8 frozen features (CPU)", "advanced",
        help="Fast path on the CPU: the frozen backbone's features come from an int8 copy of it (onnxruntime "
             "static quantisation, calibrated on 64 training images), numbers that differ slightly from fp32's. "
             "1.5x faster than onnxruntime's fp32 features, but no faster than the default ones on an x86-64 CPU "
             "(OpenVINO's bf16 or fp32): the best-offline preset's cold run took 1.7x as long with int8 on a CPU "
             "with AVX-512 BF16 and about as long on AVX2 kernels, its test accuracy 0.3 points lower "
             "(docs/benchmarks.md). Quantising costs up to a minute once per cold run. Needs the fast path (FC only, "
             "no augmentation) and an EfficientNet-Lite backbone; on CUDA the features stay fp32 (the run records "
             "which it used).")
    amp: bool = _setting(True, "Mixed precision", "advanced",
                         help="CUDA: bf16 (else fp16) autocast. CPU: bf16 autocast only for the architectures "
                              "measured to gain from it, on CPUs with native bf16 (training/speed.py); there an "
                              "EfficientNet-Lite fast path also computes its frozen features in bf16 (OpenVINO), "
                              "about twice as fast, the numbers differing from fp32's by rounding (otherwise they "
                              "are fp32, through OpenVINO on x86-64).")
    compile: bool = _setting(False, "torch.compile on CUDA", "advanced",
                             help="Compile the model for the training steps on CUDA: the first batches pay the "
                                  "compilation (tens of seconds), later ones may run faster. Ignored on the CPU.")

    def __post_init__(self) -> None:
        # Accept lists/strings for augment (from JSON, CLI, widgets) but store a canonical tuple.
        for name in ("augment", "class_names"):
            value = getattr(self, name)
            object.__setattr__(self, name, split_list(value) if isinstance(value, str) else tuple(value))
        if self.image_size is None and self.arch in ARCHITECTURES:
            object.__setattr__(self, "image_size", get_spec(self.arch).image_size)
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and its allowed range."""
        for setting in SETTINGS.values():
            _check(setting, getattr(self, setting.name))
        if len(set(self.augment)) != len(self.augment):
            raise ConfigError("augment", "each augmentation may appear once")
        if self.warmup_epochs and self.lr_schedule != "cosine":
            raise ConfigError("warmup_epochs", "a warm-up goes with lr_schedule=cosine (or set it to 0)")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError("warmup_epochs", f"must be fewer than the epochs ({self.epochs})")
        if any(not isinstance(c, str) or not c.strip() for c in self.class_names):
            raise ConfigError("class_names", "must be class folder names")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("class_names", "each class may appear once")
        if self.class_names and self.classes is not None:
            raise ConfigError("class_names", "give either classes (the first K) or class_names, not both")
        if self.int8_features and not get_spec(self.arch).onnx_features:
            raise ConfigError("int8_features", f"{self.arch}'s frozen features do not run on onnxruntime, so they "
                                               "have no int8 copy (EfficientNet-Lite's do); turn it off")
        if self.int8_features and not (self.fast_path and self.train == "fc" and not self.augment):
            raise ConfigError("int8_features", "quantises the frozen backbone of the fast path: it needs "
                                               "train=fc, no augmentation and fast_path on (or turn it off)")
        if self.weights_path is not None and not isinstance(self.weights_path, str):
            raise ConfigError("weights_path", "must be a file path")
        if self.weights_path and not self.pretrained:
            raise ConfigError("weights_path", "only makes sense with pretrained=true")
        if self.weights_path and isinstance(get_spec(self.arch).weights, MemberWeights):
            raise ConfigError("weights_path", f"{self.arch} loads its members' ImageNet weights, not one file")

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
        """Learning rate of `epoch` (0-based): what StepLR gives, or the cosine schedule (`lr_factor`)."""
        if self.lr_schedule == "step":
            return self.lr * self.gamma ** (epoch // self.step_size)
        return self.lr * self.lr_factor(epoch)

    def lr_factor(self, epoch: int) -> float:
        """The cosine schedule's multiple of lr in `epoch` (0-based): linear warm-up over `warmup_epochs`
        (lr / (W + 1), 2 lr / (W + 1), ...), then half a cosine from lr down towards 0 over the other epochs
        (its last epoch still trains, at a small rate)."""
        warm = self.warmup_epochs
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warm) / (self.epochs - warm)))

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


# Every field's Setting, completed from the field itself; a field without one fails here, at import.
SETTINGS: dict[str, Setting] = {
    f.name: dataclasses.replace(
        f.metadata["setting"], name=f.name, kind=str(f.type).split(" | ")[0].split("[")[0],
        optional=str(f.type).endswith(" | None"), default=f.default)
    for f in dataclasses.fields(TrainConfig)
}


def _coerce(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn ints given for float fields into floats (JSON and widgets write 1 for 1.0)."""
    out = {}
    for key, value in kwargs.items():
        if SETTINGS[key].kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


def _check(setting: Setting, value: Any) -> None:
    """The checks a field's Setting implies: its type, choices, range and length."""
    name = setting.name
    if value is None and setting.optional:
        return
    if setting.kind == "bool" and not isinstance(value, bool):
        raise ConfigError(name, "must be true or false")
    if setting.choices:
        for item in value if setting.kind == "tuple" else (value,):
            _choice(name, item, setting.choices)
    if setting.kind == "int":
        _integer(name, value, int(setting.low), int(setting.high))
    if setting.kind == "float":
        _number(name, value, low=setting.low, high=setting.high, low_open=setting.low_open,
                high_open=setting.high_open, text=f"must be {setting.rule}")
    if setting.max_length is not None and (not isinstance(value, str) or len(value) > setting.max_length):
        raise ConfigError(name, f"must be text of at most {setting.max_length} characters")


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

