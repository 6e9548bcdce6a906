"""Classify uploaded images with a trained run or an ImageNet model, and explain with Grad-CAM.

`open_upload` turns untrusted bytes into a safe RGB image or raises `ImageError` with a message a user
can act on. `Classifier` wraps a model, its class names and its eval preprocessing; checkpoints are read
with `torch.load(weights_only=True)`, so a crafted pickle is refused instead of executed.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torchvision.transforms import v2

from caltech_core import layout
from caltech_core.config import TrainConfig
from caltech_core.data.imagecache import to_rgb
from caltech_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATION
from caltech_core.nets.architectures import SPECS, get_spec
from caltech_core.nets.checkpoints import CheckpointError, read_weights
from caltech_core.nets.device import resolve_device
from caltech_core.use.onnx_forward import OnnxForward

IMAGENET_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
# A run's weight files Classify can use -> how the model is described.
RUN_WEIGHTS = {layout.BEST: "", layout.RETRAINED: " · retrained on train+val"}


class ImageError(ValueError):
    """An upload that cannot be classified; the message is meant for the user."""


# -- uploads ------------------------------------------------------------------------------------------
def open_upload(data: bytes, name: str, *, max_bytes: int | None = None) -> Image.Image:
    """Decode an uploaded file into an RGB image (first frame); raise ImageError saying what is wrong.

    A file larger than `max_bytes` (the dashboard passes its upload limit) is refused before decoding.
    Pillow's pixel limit (`Image.MAX_IMAGE_PIXELS`) is enforced from the header, before any pixel
    is decoded, so a tiny file declaring a gigantic image costs nothing.
    """
    if not data:
        raise ImageError(f"{name}: the file is empty.")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(
            f"{name}: the file is {_megabytes(len(data))}, more than the {_megabytes(max_bytes)} upload limit; "
            "scale the image down or save it with more compression, then upload it again."
        )
    limit = Image.MAX_IMAGE_PIXELS
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: the image is too large to open safely ({exc}).") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image file Pillow can read (JPEG, PNG, WebP, BMP, GIF).") from exc
    except OSError as exc:
        raise ImageError(f"{name}: the image file is damaged or truncated ({exc}).") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: the image has no pixels ({width}x{height}).")
    if limit and width * height > limit:
        raise ImageError(
            f"{name}: {width}x{height} pixels is more than the {limit:,} pixels allowed; "
            "scale the image down and upload it again."
        )
    try:
        image.seek(0)  # animated GIF/WebP: the first frame
        image.load()
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: the image data is damaged or truncated ({exc}).") from exc


def _megabytes(size: int) -> str:
    """'20 MB', '20.5 MB', '0.001 MB' in the units Streamlit's server.maxUploadSize uses (MiB)."""
    return f"{size / 2**20:.3g} MB"


# -- the classifier -----------------------------------------------------------------------------------
@dataclass
class Classifier:
    """A model in eval mode with its class names and the preprocessing it was evaluated with."""

    model: nn.Module
    classes: list[str]
    arch: str
    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    title: str = ""
    temperature: float = 1.0  # logits are divided by it before the softmax (calibration.temperature_of)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # On the CPU, predictions (and Grad-CAM where exact) through onnxruntime for the architectures whose table
    # entry says `onnx_features` (use/onnx_forward.py; bench/classify_speed.py); False: torch only.
    onnx: bool = True
    # One Classifier is shared by all dashboard sessions; Grad-CAM hooks must not interleave.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _onnx: OnnxForward | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.model.to(self.device).eval()
        self._crop = v2.Compose([
            v2.ToImage(),
            v2.Resize(self.resize_size, interpolation=v2.InterpolationMode(self.interpolation), antialias=True),
            v2.CenterCrop(self.image_size),
        ])
        self._normalize = v2.Compose([
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(self.mean), list(self.std)),
        ])

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_store: Any, run_id: int, *, weights: str = layout.BEST,
                 device: torch.device | str | None = None, calibrated: bool = True) -> Classifier:
        """A finished run's best-validation weights (or `weights="retrain.pt"`: the model it retrained on
        train+val), with its class names and eval transform; best.pt's probabilities are temperature-scaled
        when `calibrated` and the run can be (retrain.pt has no held-out split to fit a temperature on)."""
        from caltech_core.nets import models
        from caltech_core.use.calibration import temperature_of

        record = run_store.get_run(run_id)
        if record is None:
            raise CheckpointError(f"Run {run_id} does not exist.")
        cfg = record.config
        if weights not in RUN_WEIGHTS:
            raise CheckpointError(f"{weights!r} is not one of a run's weight files ({', '.join(RUN_WEIGHTS)}).")
        path = Path(run_store.run_dir(run_id)) / weights
        if not path.is_file():
            raise CheckpointError(f"Run {run_id} has no saved weights ({path} is missing); train it first.")
        state, extras = read_weights(path)
        classes = _class_names(extras.get("classes") or record.results.get("classes"), cfg)
        model = models.build_model(cfg.arch, len(classes), pretrained=False)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit a {cfg.arch} with {len(classes)} classes: {exc}") from exc
        mean, std = NORMALIZATION[cfg.normalization]
        label = (cfg.name or cfg.arch) + RUN_WEIGHTS[weights]
        temperature = temperature_of(run_store, run_id) if calibrated and weights == layout.BEST else None
        return cls(model=model, classes=classes, arch=cfg.arch, image_size=cfg.image_size,
                   resize_size=cfg.resize_size, mean=mean, std=std, title=f"Run #{run_id}: {label}",
                   temperature=temperature or 1.0, device=resolve_device(device))

    @classmethod
    def imagenet(cls, arch: str | None = None, *, device: torch.device | str | None = None) -> Classifier:
        """An ImageNet-pretrained `arch` with its 1000 ImageNet classes and the preprocessing its weights
        were evaluated with; by default the strongest one whose weights are on this machine."""
        from caltech_core.nets import models

        if arch is None:
            arch = models.strongest_installed_imagenet()
            if arch is None:
                raise models.WeightsUnavailableError("no ImageNet weights are installed on this machine")
        spec = get_spec(arch)
        mean, std = NORMALIZATION[spec.normalization]
        return cls(model=models.imagenet_model(arch), classes=IMAGENET_CLASSES_FILE.read_text().splitlines(),
                   arch=arch, image_size=spec.image_size, resize_size=spec.resize_size(spec.image_size),
                   mean=mean, std=std, interpolation=spec.interpolation,
                   title=f"{spec.label} (ImageNet, 1000 classes)", device=resolve_device(device))

    # -- preprocessing --------------------------------------------------------------------------------
    def model_view(self, image: Image.Image) -> Image.Image:
        """The image as the network sees it (resized and centre-cropped), for overlays."""
        return v2.functional.to_pil_image(self._crop(image))

    def _batch(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self._normalize(self._crop(img)) for img in images]).to(self.device)

    # -- predictions ----------------------------------------------------------------------------------
    def warm(self) -> Classifier:
        """Build the onnxruntime session now (an export of a second or two) rather than at the first upload."""
        self._fast()
        return self

    def _fast(self) -> OnnxForward | None:
        """The onnxruntime forward pass where it applies, built once (a network outside the architecture table,
        e.g. one a caller built itself, keeps the torch forward)."""
        spec = SPECS.get(self.arch)
        if not (self.onnx and self.device.type == "cpu" and spec is not None and spec.onnx_features):
            return None
        with self._lock:
            if self._onnx is None:
                self._onnx = OnnxForward(self.model, self.arch, self.image_size, torch.get_num_threads())
        return self._onnx

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        fast = self._fast()
        if fast is not None:
            return fast.run(batch)[0]
        with self._lock, torch.inference_mode():
            return self.model(batch).float()

    def predict(self, images: list[Image.Image], top: int = 5) -> list[list[tuple[str, float]]]:
        """The `top` most likely classes of every image as (class name, probability), best first
        (probabilities temperature-scaled when the classifier has a temperature)."""
        if not images:
            return []
        top = max(1, min(top, len(self.classes)))
        probs = torch.softmax(self._logits(self._batch(images)) / self.temperature, dim=1)
        values, indices = probs.topk(top, dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(vals.tolist(), idx.tolist(), strict=True)]
            for vals, idx in zip(values, indices, strict=True)
        ]

    def class_index(self, name: str) -> int:
        """Index of a class name (for Grad-CAM of a predicted class)."""
        return self.classes.index(name)

    def gradcam(self, image: Image.Image, class_index: int) -> np.ndarray:
        """Grad-CAM of `class_index` at the last conv layer: HxW float array in [0, 1], H = W = image_size.

        The map is aligned with `model_view(image)` (the centre crop the network sees). Where the map reaches
        the logits through pooling and one linear layer, it comes from onnxruntime's forward pass alone (the
        same map: use/onnx_forward.py); otherwise from torch's backward pass.
        """
        fast = self._fast()
        if fast is not None and fast.exact_cam:
            return self._resized(fast.cam(fast.run(self._batch([image]))[1][0], class_index))
        layer = target_layer(self.model, self.arch)
        captured: dict[str, torch.Tensor] = {}

        def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            captured["activation"] = output
            output.register_hook(lambda grad: captured.__setitem__("gradient", grad))

        with self._lock:
            handle = layer.register_forward_hook(keep)
            try:
                with torch.enable_grad():
                    x = self._batch([image]).requires_grad_(True)
                    logits = self.model(x)
                    self.model.zero_grad(set_to_none=True)
                    logits[0, class_index].backward()
            finally:
                handle.remove()
        activation = captured["activation"].detach()[0]
        gradient = captured["gradient"].detach()[0]
        weights = gradient.mean(dim=(1, 2), keepdim=True)
        return self._resized(torch.relu((weights * activation).sum(dim=0)))

    def _resized(self, cam: torch.Tensor) -> np.ndarray:
        """An (h, w) class activation map at the crop's size, scaled to [0, 1]."""
        cam = torch.nn.functional.interpolate(cam[None, None].float(), size=(self.image_size, self.image_size),
                                              mode="bilinear", align_corners=False)[0, 0]
        peak = float(cam.max())
        cam = cam / peak if peak > 0 else torch.zeros_like(cam)
        return cam.clamp(0, 1).cpu().numpy().astype(np.float32)


@dataclass
class Outcome:
    """One uploaded file: its image and top classes, or the message saying why it was not classified."""

    name: str
    image: Image.Image | None = None
    predictions: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def classify_uploads(classifier: Classifier, uploads: list[tuple[str, bytes]], top: int = 5, *,
                     max_bytes: int | None = None) -> list[Outcome]:
    """Decode and classify every (name, bytes) upload; a bad or oversized file gets its message, the others
    still classify."""
    outcomes = []
    for name, data in uploads:
        try:
            outcomes.append(Outcome(name, image=open_upload(data, name, max_bytes=max_bytes)))
        except ImageError as exc:
            outcomes.append(Outcome(name, error=str(exc)))
    good = [o for o in outcomes if o.image is not None]
    for outcome, preds in zip(good, classifier.predict([o.image for o in good], top=top), strict=True):
        outcome.predictions = preds
    return outcomes


def iter_classify_uploads(classifier: Classifier, uploads: list[tuple[str, bytes]], top: int = 5, *,
                          max_bytes: int | None = None) -> Iterator[Outcome]:
    """`classify_uploads` as a stream, in upload order: the first readable upload is predicted alone and given
    at once (a page draws it while the others are predicted), the others then in one batch (faster per image)."""
    rest = iter(uploads)
    for name, data in rest:
        outcome = classify_uploads(classifier, [(name, data)], top, max_bytes=max_bytes)[0]
        yield outcome
        if outcome.image is not None:
            break
    yield from classify_uploads(classifier, list(rest), top, max_bytes=max_bytes)


# -- Grad-CAM helpers ---------------------------------------------------------------------------------
def target_layer(model: nn.Module, arch: str) -> nn.Module:
    """The layer Grad-CAM reads: the last convolutional feature map (the architecture table's choice).

    AlexNet/VGG: the ReLU after the last conv; ResNets: the whole last stage; EfficientNet: the head's
    conv+BN+act.
    """
    return get_spec(arch).gradcam(model)


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a [0, 1] heatmap (resized to the image) over it with a blue-to-red colour map."""
    heat = Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8)).resize(image.size,
                                                                                        Image.BILINEAR)
    h = np.asarray(heat, dtype=np.float32) / 255.0
    # A small jet-like map: blue -> cyan -> yellow -> red.
    stops = np.array([0.0, 0.35, 0.65, 1.0])
    colors = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float32)
    rgb = np.stack([np.interp(h, stops, colors[:, c]) for c in range(3)], axis=-1)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * base + alpha * rgb
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


# -- checkpoints ---------------------------------------------------------------------------------------
def _class_names(names: list[str] | None, cfg: TrainConfig) -> list[str]:
    """The stored class names, else those of the dataset split of the run's config."""
    if names:
        return [str(n) for n in names]
    from caltech_core.data import dataset

    try:
        return list(dataset.Splits.from_config(cfg).classes)
    except FileNotFoundError as exc:
        raise CheckpointError(
            "The run's class names are not stored with it and the dataset is not available to look them up."
        ) from exc

