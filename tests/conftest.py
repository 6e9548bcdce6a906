"""Shared fixtures: the real Caltech-101 (read-only), a small real subset of it built per session, the tiny
training config, a wait helper, and a store with one finished tiny run (trained once per session)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Beside the other workers (and the Ray workers and servers they start, which inherit this) the cores are
    # oversubscribed, and OpenMP threads that spin while they wait starved the rest: 2-CPU Ray runs took 3-5x
    # longer with three workers. Set before torch is imported here; the timing tests run without workers.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from browser_kit import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server

from caltech_core import layout
from caltech_core.config import TrainConfig
from caltech_core.runs import job
from caltech_core.runs.store import RunStore

REPO = Path(__file__).resolve().parent.parent
MINI_CLASSES = ("accordion", "dalmatian", "pizza")
MINI_TRAIN_PER_CLASS = 8
MINI_TEST_PER_CLASS = 4


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`pytest -m timing` (make test's second step) imports only the test files that mark timing tests: importing
    all of them costs ~4 s of CPU before the measured tests run. None: pytest's own rules decide."""
    if config.getoption("markexpr") == "timing" and collection_path.name.startswith("test_") \
            and collection_path.suffix == ".py":
        return "pytest.mark.timing" not in collection_path.read_text()
    return None


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


# ---- tiny real runs -------------------------------------------------------------------------------------------------

# The smallest real training: MobileNetV3-Small at 64 px on the CPU, one epoch of batches of 8 (about a second a run).
TINY = {"arch": "mobilenet_v3_small", "image_size": 64, "epochs": 1, "batch_size": 8, "device": "cpu"}


def _tiny(**changes: Any) -> TrainConfig:
    return TrainConfig(**(TINY | changes))


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., TrainConfig]:
    """`tiny_config(**changes)`: the tiny MobileNetV3-Small config (TINY) with `changes`."""
    return _tiny


def _wait_until(condition: Callable[[], Any], timeout: float = 300.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout:g} s")
        time.sleep(every)


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., None]:
    """`wait_until(condition, timeout=300, every=0.05)`: poll `condition()` until true; AssertionError after
    `timeout` seconds (generous: the 2-core CI machine may be shared with other suites)."""
    return _wait_until


@pytest.fixture(scope="session")
def _trained_once(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("trained_once")
    store = RunStore(home)
    run_id = store.create_run(_tiny(lr=0.01, name="tiny", group="demo"))
    assert job.run_job(store, run_id, data_root=mini_root) == "finished", store.get_run(run_id).error
    return home


@pytest.fixture(scope="module")
def finished_home(_trained_once: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding one finished tiny run (run 1: `tiny_config(lr=0.01, name="tiny", group="demo")` on the
    three mini classes, with its checkpoints, per-image results and image cache). Trained once per session;
    each module gets its own copy, so its tests may add runs or change files."""
    home = tmp_path_factory.mktemp("finished")
    shutil.copytree(_trained_once, home, dirs_exist_ok=True)
    with sqlite3.connect(layout.database(home)) as db:  # recorded checkpoint paths: the copy's own
        db.execute("UPDATE artifacts SET path = replace(path, ?, ?)", (str(_trained_once), str(home)))
    db.close()
    return home


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never download from the internet: weights downloads are off unless a test serves them itself
    # from a loopback server (tests/test_weights.py).
    monkeypatch.setenv("CALTECH_STUDIO_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # The cores shared out between pytest-xdist's workers: two workers with two torch threads each on CI's two
    # cores spent their time spin-waiting on each other.
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 2) // workers)))


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


# ---- browser fixtures (tests/browser_kit.py has the helpers) --------------------------------------------------------


@pytest.fixture(scope="module")
def server(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`streamlit run streamlit_app.py` on a free port with the mini dataset and an empty store."""
    home = tmp_path_factory.mktemp("browser_home")
    proc, url = start_server(mini_root, home, tmp_path_factory.mktemp("logs") / "streamlit.log")
    yield url, home
    stop_server(proc)


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator:
    """One Playwright driver per pytest process: a second one in the same thread is refused while this one runs,
    so a test that needs a differently launched Chromium launches it from here."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_driver) -> Iterator:
    """One Chromium per pytest process (a launch costs ~0.7 CPU-s); every test opens its own browser context, so
    no cookies, storage or cache pass between tests."""
    chromium = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    yield tab
    context.close()
