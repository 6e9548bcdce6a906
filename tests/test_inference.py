"""Uploads are decoded safely, classifiers predict real classes, Grad-CAM is sane, unsafe checkpoints refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops.misc import Conv2dNormActivation

from caltech_core.config import TrainConfig
from caltech_core.nets import models
from caltech_core.nets.architectures import get_spec
from caltech_core.runs.store import RunStore
from caltech_core.use.inference import (
    CheckpointError,
    Classifier,
    ImageError,
    open_upload,
    overlay,
    target_layer,
)


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header (with a correct CRC) claims width x height pixels."""
    data = bytearray(_encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    body = bytes(data[ihdr:ihdr + 4 + 13])
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return bytes(data)


def _noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def photo(caltech_root: Path) -> Image.Image:
    return Image.open(caltech_root / "101_ObjectCategories" / "dalmatian" / "image_0001.jpg").convert("RGB")


@pytest.fixture(scope="module")
def lite0() -> Classifier:
    return Classifier.imagenet("efficientnet_lite0", device="cpu")


# -- open_upload --------------------------------------------------------------------------------------
def test_open_upload_reads_every_supported_format(photo: Image.Image) -> None:
    small = photo.resize((80, 60))
    frames = [Image.new("P", (40, 30), color=i) for i in (3, 200)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    uploads = {
        "a.jpg": _encode(small, "JPEG"),
        "b.png": _encode(small, "PNG"),
        "c.webp": _encode(small, "WEBP"),
        "d.bmp": _encode(small, "BMP"),
        "e.gif": gif.getvalue(),
        "cmyk.jpg": _encode(small.convert("CMYK"), "JPEG"),
        "palette.png": _encode(small.convert("P"), "PNG"),
    }
    for name, data in uploads.items():
        image = open_upload(data, name)
        assert image.mode == "RGB", name
        assert image.size == ((40, 30) if name == "e.gif" else (80, 60)), name
    # The animated GIF gives its first frame, not the last one.
    first = open_upload(uploads["e.gif"], "e.gif")
    assert np.asarray(first).tolist() == np.asarray(frames[0].convert("RGB")).tolist()


def test_sixteen_bit_png_keeps_its_contrast() -> None:
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    data = _encode(Image.fromarray(ramp), "PNG")
    pixels = np.asarray(open_upload(data, "depth.png"))
    # Clipping 16-bit values to 8 bits would make almost everything white; scaling keeps the ramp.
    assert pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels.mean() < 155


def test_transparent_png_is_put_on_white() -> None:
    data = _encode(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), "PNG")
    assert np.asarray(open_upload(data, "logo.png")).min() == 255


@pytest.mark.parametrize(
    ("name", "make", "fragment"),
    [
        ("empty.jpg", lambda: b"", "empty"),
        ("notes.jpg", lambda: b"this is a text file, not a photo\n" * 20, "not an image"),
        ("header.jpg", lambda: _encode(_noise(), "JPEG")[:300], "truncated"),
        ("half.jpg", lambda: _encode(_noise(), "JPEG")[:20_000], "truncated"),
        ("bomb.png", lambda: _png_declaring(50_000, 50_000), "too large"),
        pytest.param("big.png", lambda: _png_declaring(10_000, 10_000), "pixels allowed",
                     marks=pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")),
    ],
)
def test_open_upload_refuses_bad_files_with_a_message(name: str, make, fragment: str) -> None:
    with pytest.raises(ImageError) as info:
        open_upload(make(), name)
    assert name in str(info.value)
    assert fragment in str(info.value)


# -- ImageNet EfficientNet-Lite0 ----------------------------------------------------------------------
def test_imagenet_lite0_recognises_real_photos(lite0: Classifier, caltech_root: Path) -> None:
    images = [open_upload((caltech_root / "101_ObjectCategories" / cls / "image_0001.jpg").read_bytes(), cls)
              for cls in ("dalmatian", "pizza")]
    predictions = lite0.predict(images, top=5)
    assert [p[0][0] for p in predictions] == ["dalmatian", "pizza"]
    for top5 in predictions:
        probs = [p for _, p in top5]
        assert len(top5) == 5 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1.0 + 1e-5


def test_default_imagenet_model_is_the_strongest_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caltech_root: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torchvision weights cached
    assert models.strongest_installed_imagenet() == "efficientnet_lite2"
    clf = Classifier.imagenet(device="cpu")
    # The preprocessing of Lite2's weights (timm's pretrained_cfg): 260 px crop of a bicubic 292 px resize.
    assert (clf.arch, clf.image_size, clf.resize_size, clf.interpolation) == ("efficientnet_lite2", 260, 292,
                                                                              "bicubic")
    assert clf.mean == clf.std == (0.5, 0.5, 0.5) and "EfficientNet-Lite2" in clf.title
    photo = open_upload((caltech_root / "101_ObjectCategories" / "dalmatian" / "image_0001.jpg").read_bytes(), "d")
    assert clf.predict([photo], top=1)[0][0][0] == "dalmatian"
    heat = clf.gradcam(photo, clf.class_index("dalmatian"))
    assert heat.shape == (260, 260) and heat.max() == pytest.approx(1.0)
    # A cached torchvision file with a better published top-1 (ResNet-50's V2 weights, 80.9%) wins.
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / get_spec("resnet50").weights.filename).write_bytes(b"stand-in")
    assert models.strongest_installed_imagenet() == "resnet50"


def test_gradcam_is_a_unit_range_map_that_depends_on_the_class(lite0: Classifier, photo: Image.Image) -> None:
    dog = lite0.gradcam(photo, lite0.class_index("dalmatian"))
    other = lite0.gradcam(photo, lite0.class_index("pizza"))
    assert dog.shape == (224, 224) and dog.dtype == np.float32
    assert dog.min() >= 0 and dog.max() == pytest.approx(1.0)
    assert np.abs(dog - other).mean() > 0.05
    blended = overlay(lite0.model_view(photo), dog)
    assert blended.size == (224, 224) and blended.mode == "RGB"


@pytest.mark.parametrize(("arch", "kind"), [("alexnet", torch.nn.ReLU), ("resnet18", torch.nn.Sequential),
                                           ("mobilenet_v3_small", Conv2dNormActivation)])
def test_gradcam_target_is_the_last_feature_map(arch: str, kind: type) -> None:
    model = models.build_model(arch, 3)
    layer = target_layer(model, arch)
    assert isinstance(layer, kind)
    if arch == "alexnet":
        assert layer is [m for m in model.features if isinstance(m, torch.nn.ReLU)][-1]


# -- trained runs ---------------------------------------------------------------------------------------
def _stored_run(home: Path, arch: str = "mobilenet_v3_small") -> tuple[RunStore, int, torch.nn.Module]:
    store = RunStore(home)
    cfg = TrainConfig(arch=arch, image_size=64, epochs=1, classes=3, name="tiny")
    run_id = store.create_run(cfg)
    model = models.build_model(arch, 3)
    torch.save(model.state_dict(), store.run_dir(run_id) / "best.pt")
    store.set_results(run_id, {"classes": ["accordion", "dalmatian", "pizza"], "test_acc": 0.5})
    store.set_status(run_id, "finished")
    return store, run_id, model


def test_from_run_uses_the_runs_weights_classes_and_crop(tmp_path: Path, photo: Image.Image) -> None:
    store, run_id, model = _stored_run(tmp_path)
    clf = Classifier.from_run(store, run_id, device="cpu")
    assert clf.classes == ["accordion", "dalmatian", "pizza"]
    assert clf.image_size == 64 and clf.mean == (0.5, 0.5, 0.5)  # from scratch: the study's "half" norm
    for name, tensor in model.state_dict().items():
        assert torch.equal(clf.model.state_dict()[name].cpu(), tensor), name
    [top] = clf.predict([photo], top=5)
    assert len(top) == 3 and {c for c, _ in top} == set(clf.classes)
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-4)
    heat = clf.gradcam(photo, 1)
    assert heat.shape == (64, 64) and heat.min() >= 0 and heat.max() <= 1


class _Payload:
    """Pickles as a call that creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_pickle_checkpoint_is_refused_without_running(tmp_path: Path) -> None:
    store, run_id, _ = _stored_run(tmp_path / "home")
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, store.run_dir(run_id) / "best.pt")
    with pytest.raises(CheckpointError, match="Refused"):
        Classifier.from_run(store, run_id)
    assert not marker.exists()


def test_from_run_can_use_the_retrained_model(tmp_path: Path, photo: Image.Image) -> None:
    store, run_id, best = _stored_run(tmp_path)
    with pytest.raises(CheckpointError, match="no saved weights"):
        Classifier.from_run(store, run_id, weights="retrain.pt")
    retrained = models.build_model(store.get_run(run_id).arch, 3)
    torch.save({"model": retrained.state_dict(), "classes": ["accordion", "dalmatian", "pizza"]},
               store.run_dir(run_id) / "retrain.pt")
    clf = Classifier.from_run(store, run_id, weights="retrain.pt", device="cpu")
    assert "retrained on train+val" in clf.title
    name, tensor = next(iter(retrained.state_dict().items()))
    assert torch.equal(clf.model.state_dict()[name], tensor) and not torch.equal(best.state_dict()[name], tensor)
    with pytest.raises(CheckpointError, match="not one of"):
        Classifier.from_run(store, run_id, weights="../../etc/passwd")


def test_missing_weights_and_unknown_run_are_clear_errors(tmp_path: Path) -> None:
    store, run_id, _ = _stored_run(tmp_path)
    (store.run_dir(run_id) / "best.pt").unlink()
    with pytest.raises(CheckpointError, match="no saved weights"):
        Classifier.from_run(store, run_id)
    with pytest.raises(CheckpointError, match="does not exist"):
        Classifier.from_run(store, 999)


def test_training_and_classify_see_the_same_pixels(tmp_path: Path) -> None:
    """The same awkward files decoded by the training cache and by Classify's upload reader are identical."""
    from caltech_core.data.imagecache import ImageCache

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P")
    palette.info["transparency"] = 0
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    files = {
        # A dark 16-bit image: a full-range stretch would brighten it, scaling by 65535 keeps it dark.
        "deep.png": (Image.fromarray(rng.integers(1000, 9000, (30, 40)).astype(np.uint16)), {}),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), {}),
        "palette.png": (palette, {"transparency": 0}),
        "alpha.png": (Image.fromarray(np.dstack([rgb, alpha])), {}),
        "rotated.jpg": (rotated, {"exif": exif}),
    }
    paths = []
    for name, (image, options) in files.items():
        image.save(tmp_path / name, **options)
        paths.append(tmp_path / name)
    cache = ImageCache.build(paths, tmp_path / "cache", resize_size=30)  # 30 = the shorter side: no resize
    assert not cache.unreadable
    for path in paths:
        trained = cache[cache.index_of(path)]
        classified = np.asarray(open_upload(path.read_bytes(), path.name))
        assert trained.shape == classified.shape, path.name
        assert np.array_equal(trained, classified), path.name
    deep = np.asarray(open_upload((tmp_path / "deep.png").read_bytes(), "deep.png"))
    assert deep.max() <= round(9000 * 255 / 65535)
    assert cache[cache.index_of(tmp_path / "rotated.jpg")].shape == (40, 30, 3)  # shown upright
