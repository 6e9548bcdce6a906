"""The "Hardening" issue: oversized uploads, one config message everywhere, training past bad files, two sessions
queueing at once, UI paths confined, safe server defaults and a broken store explained (library + AppTest)."""

from __future__ import annotations

import contextlib
import io
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from apptest_pages import open_page, page_texts
from PIL import Image
from streamlit.testing.v1 import AppTest
from torch import nn

from caltech_core.cli import main as cli_main
from caltech_core.config import ConfigError, TrainConfig
from caltech_core.runs.manager import get_manager
from caltech_core.runs.store import RunStore
from caltech_core.use.inference import Classifier, ImageError, classify_uploads, open_upload

REPO = Path(__file__).resolve().parent.parent
REAL_CLASSES = ("accordion", "dalmatian")


def _jpeg(seed: int = 0, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def _padded(data: bytes, total: int) -> bytes:
    """A valid JPEG grown to `total` bytes (decoders ignore what follows the end-of-image marker)."""
    return data + b"\0" * (total - len(data))


@pytest.fixture
def with_data(mini_root: Path, studio_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    yield studio_home
    get_manager(studio_home).shutdown(wait=True)


# -- uploads over the limit ---------------------------------------------------------------------------------
def test_library_refuses_an_upload_over_the_limit_and_classifies_the_rest() -> None:
    small, limit = _jpeg(1), 2**20
    big = _padded(_jpeg(2), limit + 1)
    assert open_upload(big, "big.jpg").size == (48, 48)  # a valid image: only its size is refused
    with pytest.raises(ImageError) as info:
        open_upload(big, "big.jpg", max_bytes=limit)
    assert "big.jpg" in str(info.value) and "more than the 1 MB upload limit" in str(info.value)

    tiny_net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    classifier = Classifier(model=tiny_net, classes=["a", "b"], arch="tiny", image_size=32, resize_size=36,
                            device=torch.device("cpu"))
    first, second = classify_uploads(classifier, [("big.jpg", big), ("small.jpg", small)], max_bytes=limit)
    assert first.image is None and "upload limit" in first.error
    assert second.error is None and len(second.predictions) == 2
    assert sum(p for _, p in second.predictions) == pytest.approx(1.0, abs=1e-5)


def test_classify_page_refuses_a_file_over_the_configured_limit(with_data: Path, mini_root: Path) -> None:
    limit_mb = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    dog = sorted((mini_root / "101_ObjectCategories" / "dalmatian").glob("*.jpg"))[0].read_bytes()
    huge = _padded(_jpeg(3), limit_mb * 2**20 + 1)
    at = open_page("classify")
    at.file_uploader[0].set_value([("huge.jpg", huge, "image/jpeg"), ("dog.jpg", dog, "image/jpeg")]).run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("huge.jpg" in e and f"more than the {limit_mb} MB upload limit" in e for e in errors), errors
    assert "**dog.jpg** → **dalmatian**" in page_texts(at)  # the other file still classifies


# -- configuration errors: the same words in the CLI and the UI ---------------------------------------------
@pytest.mark.parametrize(("field", "value", "flag"), [("lr", -1.0, "--lr"), ("epochs", 0, "--epochs")])
def test_cli_and_train_page_give_the_same_message_for_a_bad_value(
    field: str, value: float, flag: str, with_data: Path, mini_root: Path, tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    expected = str(info.value)  # "<field>: <range and the value given>"

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["train", flag, str(value), "--root", str(mini_root), "--store", str(tmp_path / "cli")])
    assert code == 2 and expected in err.getvalue()

    at = open_page("train")
    at.number_input(key=f"f_{field}").set_value(value)
    at.button(key="queue").click().run()
    assert not at.exception, at.exception
    shown = [e.value.replace("**", "") for e in at.error]  # the page puts the field name in bold
    assert any(expected in text for text in shown), (expected, shown)
    assert RunStore(with_data).list_runs() == []


# -- training continues past bad files and says which ones it left out --------------------------------------
@pytest.fixture
def flawed_root(caltech_root: Path, tmp_path: Path) -> Path:
    """Two real classes (6 train + 3 test images each) plus a corrupt listed JPEG and a listed missing file."""
    root = tmp_path / "flawed"
    real = caltech_root / "101_ObjectCategories"
    for cls in REAL_CLASSES:
        (root / "101_ObjectCategories" / cls).mkdir(parents=True)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for cls in REAL_CLASSES:
        names = sorted(p.name for p in (real / cls).glob("*.jpg"))[:9]
        for i, name in enumerate(names):
            (root / "101_ObjectCategories" / cls / name).symlink_to(real / cls / name)
            lines["train" if i < 6 else "test"].append(f"{cls}/{name}")
    (root / "101_ObjectCategories" / "accordion" / "image_9001.jpg").write_bytes(_jpeg(4)[:200])  # truncated
    lines["train"] += ["accordion/image_9001.jpg", "dalmatian/image_9002.jpg"]  # the second does not exist
    for split, rows in lines.items():
        (root / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def test_training_skips_bad_files_and_the_monitor_lists_them(
    flawed_root: Path, studio_home: Path, monkeypatch: pytest.MonkeyPatch,
    tiny_config: Callable[..., TrainConfig],
) -> None:
    monkeypatch.setenv("CALTECH101_ROOT", str(flawed_root))
    manager = get_manager(studio_home)
    try:
        run_id = manager.submit(tiny_config(batch_size=4))
        assert manager.wait(run_id, timeout=300)
    finally:
        manager.shutdown(wait=True)
    run = RunStore(studio_home).get_run(run_id)
    assert run.status == "finished", run.error
    assert run.test_acc is not None
    skipped = {Path(row["path"]).name: row["reason"] for row in run.results["skipped"]}
    assert set(skipped) == {"image_9001.jpg", "image_9002.jpg"}
    assert "unreadable" in skipped["image_9001.jpg"]
    assert skipped["image_9002.jpg"] == "train.txt: listed but missing"

    at = open_page("monitor", run=str(run_id))
    assert not at.exception, at.exception
    assert any("2 file(s) were left out" in w.value for w in at.warning)
    table = at.dataframe[-1].value
    assert {Path(p).name for p in table["path"]} == {"image_9001.jpg", "image_9002.jpg"}


# -- two browser sessions queue at the same moment ----------------------------------------------------------
def test_two_sessions_queue_at_the_same_moment_and_run_in_order(with_data: Path) -> None:
    tiny = {"f_arch": "mobilenet_v3_small", "f_image_size": 64, "f_classes": 2, "f_max_per_class": 4, "f_batch_size": 4,
            "f_epochs": 1, "f_device": "cpu"}
    sessions = [open_page("train"), open_page("train")]
    for i, at in enumerate(sessions):
        for key, value in {**tiny, "f_name": f"session {i}"}.items():
            at.session_state[key] = value
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def click(at: AppTest) -> None:
        try:
            barrier.wait()
            at.button(key="queue").click().run()
        except BaseException as exc:  # re-raised in the main thread below
            failures.append(exc)

    threads = [threading.Thread(target=click, args=(at,)) for at in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures, failures
    queued = [at.session_state["last_queued"] for at in sessions]
    for at, run_id in zip(sessions, queued, strict=True):
        assert not at.exception, at.exception
        assert f"Queued run #{run_id}" in page_texts(at)
    assert len(set(queued)) == 2

    assert get_manager(with_data).wait(timeout=300)
    store = RunStore(with_data)
    first, second = (store.get_run(i) for i in sorted(queued))
    assert first.status == second.status == "finished", (first.error, second.error)
    assert {first.name, second.name} == {"session 0", "session 1"}
    assert first.finished <= second.started  # one at a time, in queue order


# -- paths typed in the UI stay in their folders ------------------------------------------------------------
def test_download_folder_must_stay_inside_the_allowed_folders(
    studio_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dashboard._shared import confined_download_dir

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("CALTECH101_ROOT", raising=False)
    assert confined_download_dir("data/caltech101") == work / "data" / "caltech101"
    assert confined_download_dir(str(studio_home / "ds")) == (studio_home / "ds").resolve()
    outside = tmp_path / "outside"
    outside.mkdir()
    (studio_home / "link").symlink_to(outside)
    for text in ("/etc/caltech", "data/../../outside", str(studio_home / "link" / "x"), "   "):
        with pytest.raises(ValueError) as info:
            confined_download_dir(text)
        assert str(studio_home.resolve()) in str(info.value)  # it says where downloads may go
    monkeypatch.setenv("CALTECH101_ROOT", str(outside))
    assert confined_download_dir(str(outside / "caltech101")) == outside / "caltech101"


def test_data_page_refuses_a_download_folder_outside_and_downloads_nothing(
    studio_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    monkeypatch.setenv("CALTECH101_ROOT", str(empty))
    escape = tmp_path / "escape" / "caltech101"
    at = open_page("data")
    next(box for box in at.text_input if box.label == "Download into").set_value(
        str(empty / ".." / "escape" / "caltech101"))
    next(b for b in at.button if b.label == "Download dataset").click().run()
    assert not at.exception, at.exception
    assert any("Not downloaded" in e.value and "outside the folders" in e.value for e in at.error)
    assert not escape.parent.exists()
    assert not at.get("progress")  # the download never started


# -- server defaults and a broken store ---------------------------------------------------------------------
def test_server_config_has_safe_defaults() -> None:
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableXsrfProtection"] is True
    assert isinstance(config["server"]["maxUploadSize"], int) and 1 <= config["server"]["maxUploadSize"] <= 200
    assert config["client"]["showErrorDetails"] == "none"


@pytest.mark.parametrize("page", ["data", "train", "monitor", "compare", "classify", "report"])
def test_a_corrupt_store_is_explained_and_left_untouched(
    page: str, studio_home: Path, mini_root: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    db = studio_home / "runs.sqlite"
    garbage = b"this is not an SQLite database " * 64
    db.write_bytes(garbage)
    at = open_page(page)
    assert not at.exception, at.exception
    message = " ".join(e.value for e in at.error)
    assert str(db) in message and "cannot be read" in message and "Nothing was changed or deleted" in message
    assert "Traceback" not in page_texts(at)
    assert db.read_bytes() == garbage
