"""Shared fixtures: the real Caltech-101 (read-only) and a small real subset of it built per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MINI_CLASSES = ("accordion", "dalmatian", "pizza")
MINI_TRAIN_PER_CLASS = 8
MINI_TEST_PER_CLASS = 4


def _real_root() -> Path:
    # Absolute: the mini tree symlinks into it, and a relative link target would dangle.
    root = Path(os.environ.get("CALTECH101_ROOT", REPO.parent / "shared" / "caltech101")).absolute()
    if not (root / "101_ObjectCategories").is_dir():
        pytest.fail(f"Caltech-101 not found at {root}; set CALTECH101_ROOT (see README)")
    return root


@pytest.fixture(scope="session")
def caltech_root() -> Path:
    """The full real dataset with its official split files."""
    return _real_root()


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real three-class Caltech-101 tree (symlinked images, filtered split files)."""
    real = _real_root()
    root = tmp_path_factory.mktemp("mini_caltech")
    images = root / "101_ObjectCategories"
    for cls in (*MINI_CLASSES, "BACKGROUND_Google"):
        (images / cls).mkdir(parents=True)
    for split, per_class in (("train", MINI_TRAIN_PER_CLASS), ("test", MINI_TEST_PER_CLASS)):
        kept: list[str] = []
        counts = dict.fromkeys((*MINI_CLASSES, "BACKGROUND_Google"), 0)
        for line in (real / f"{split}.txt").read_text().split():
            cls = line.split("/")[0]
            if cls in counts and counts[cls] < per_class:
                counts[cls] += 1
                kept.append(line)
                (images / line).symlink_to(real / "101_ObjectCategories" / line)
        (root / f"{split}.txt").write_text("\n".join(kept) + "\n")
    return root


@pytest.fixture(scope="module")
def splits(mini_root: Path):
    """The mini tree's splits: 3 classes, 12 train / 12 val / 12 test real images."""
    from caltech_core.data.dataset import load_splits

    return load_splits(mini_root)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image/feature cache folder shared by the tests of one module."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def studio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store folder, also exported as CALTECH_STUDIO_HOME."""
    home = tmp_path / "studio"
    home.mkdir()
    monkeypatch.setenv("CALTECH_STUDIO_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never download from the internet: weights downloads are off unless a test serves them itself
    # from a loopback server (tests/test_weights.py).
    monkeypatch.setenv("CALTECH_STUDIO_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Two cores on CI: keep torch from oversubscribing when helpers run beside the tests.
    import torch

    torch.set_num_threads(2)


# ---- data layer fixtures (caltech_core.data.dataset / imagecache / transforms) -------------------------------------


@pytest.fixture
def odd_images(tmp_path: Path) -> dict[str, Path]:
    """Tiny images in awkward formats plus broken files, keyed by kind (readable kinds first)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "odd"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    files = {
        "rgb_jpeg": ("rgb.jpg", Image.fromarray(rgb)),
        "gray": ("gray.jpg", Image.fromarray(rgb[..., 0])),
        "cmyk": ("cmyk.jpg", Image.fromarray(rgb).convert("CMYK")),
        "rgba_png": ("alpha.png", Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)]))),
        "png16": ("deep.png", Image.fromarray(np.full((40, 60), 65535, np.uint16))),
        "gif": ("palette.gif", Image.fromarray(rgb).convert("P")),
    }
    out: dict[str, Path] = {}
    for kind, (name, img) in files.items():
        img.save(folder / name)
        out[kind] = folder / name
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(folder / "big.jpg", quality=95)
    data = (folder / "big.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    out["truncated"] = folder / "truncated.jpg"
    (folder / "text.jpg").write_text("this is not an image\n")
    out["text"] = folder / "text.jpg"
    (folder / "empty.jpg").write_bytes(b"")
    out["empty"] = folder / "empty.jpg"
    return out
