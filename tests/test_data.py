"""The dataset layer: roots, split files, subsets, protocols, summaries, unreadable scan and download."""

from __future__ import annotations

import functools
import http.server
import io
import socket
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from caltech_core.config import ConfigError, TrainConfig
from caltech_core.data import dataset, download, scan


def _tiny_root(tmp_path: Path, per_class: dict[str, int], *, test_per_class: int = 2) -> Path:
    """A synthetic dataset: class folders with tiny JPEGs and split files listing them."""
    root = tmp_path / "root"
    images = root / dataset.IMAGES_DIR
    train, test = [], []
    for cls, n in per_class.items():
        (images / cls).mkdir(parents=True)
        for i in range(n):
            name = f"image_{i:04d}.jpg"
            Image.new("RGB", (12, 10), (i * 20 % 256, 0, 0)).save(images / cls / name)
            (test if i < test_per_class else train).append(f"{cls}/{name}")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    return root


# -- real data ------------------------------------------------------------------------------------------------


def test_full_real_split_sizes(caltech_root):
    splits = dataset.load_splits(caltech_root)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2892, 2892, 2893)
    assert len(splits.classes) == 101 and "BACKGROUND_Google" not in splits.classes
    assert splits.classes == sorted(splits.classes)
    assert {s.label for s in splits.train} == set(range(101))
    assert splits.skipped == [] and splits.protocol == "split"
    # Train and validation partition train.txt; stratified: every class is in both halves.
    assert not {s.path for s in splits.train} & {s.path for s in splits.val}
    assert {s.label for s in splits.val} == set(range(101))
    # The same seed gives the same split; another seed another one.
    again = dataset.load_splits(caltech_root)
    assert [s.path for s in again.train] == [s.path for s in splits.train]
    other = dataset.load_splits(caltech_root, seed=7)
    assert [s.path for s in other.train] != [s.path for s in splits.train]


def test_mini_root_labels_and_paths(mini_root):
    splits = dataset.load_splits(mini_root)
    assert splits.classes == ["accordion", "dalmatian", "pizza"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 12, 12)
    assert Counter(s.label for s in splits.train) == {0: 4, 1: 4, 2: 4}
    for s in splits.train + splits.val + splits.test:
        assert s.path.is_file() and s.path.parent.name == splits.classes[s.label]


def test_from_config_passes_the_split_settings(mini_root):
    cfg = TrainConfig(classes=2, max_per_class=3, train_fraction=0.5, split_seed=3)
    splits = dataset.Splits.from_config(cfg, root=mini_root)
    assert splits.classes == ["accordion", "dalmatian"]
    assert max(Counter(s.label for s in splits.test).values()) == 3


def test_subsets_apply_to_every_split(mini_root):
    splits = dataset.load_splits(mini_root, classes=2, max_per_class=2)
    assert splits.classes == ["accordion", "dalmatian"]
    for part in (splits.train, splits.val, splits.test):
        assert Counter(s.label for s in part) == {0: 2, 1: 2}
    assert splits.skipped == []  # lines of the cut class are not problems


def test_per_class_protocol(mini_root):
    splits = dataset.load_splits(mini_root, per_class_train=5, seed=1)
    assert splits.protocol == "per_class"
    assert Counter(s.label for s in splits.train) == {0: 5, 1: 5, 2: 5}
    # 12 images per class: 5 train, 10% of the 7 left (at least one) validate, the rest test.
    assert Counter(s.label for s in splits.val) == {0: 1, 1: 1, 2: 1}
    assert Counter(s.label for s in splits.test) == {0: 6, 1: 6, 2: 6}
    parts = [{s.path for s in p} for p in (splits.train, splits.val, splits.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    same = dataset.load_splits(mini_root, per_class_train=5, seed=1)
    assert [s.path for s in same.train] == [s.path for s in splits.train]
    assert [s.path for s in dataset.load_splits(mini_root, per_class_train=5, seed=2).train] != [
        s.path for s in splits.train
    ]


def test_per_class_protocol_always_leaves_a_test_image(mini_root):
    splits = dataset.load_splits(mini_root, per_class_train=100)
    assert Counter(s.label for s in splits.train) == {0: 11, 1: 11, 2: 11}
    assert Counter(s.label for s in splits.test) == {0: 1, 1: 1, 2: 1}
    assert splits.val == []


def test_sample_paths(mini_root):
    splits = dataset.load_splits(mini_root)
    paths = dataset.sample_paths(splits, "pizza", 3)
    assert len(paths) == 3 and all(p.parent.name == "pizza" for p in paths)
    assert len(dataset.sample_paths(splits, "pizza", 3, split="test")) == 3
    with pytest.raises(KeyError, match="unknown class"):
        dataset.sample_paths(splits, "BACKGROUND_Google", 3)


def test_dataset_summary_on_mini_root(mini_root, tmp_path):
    summary = scan.dataset_summary(mini_root, cache_dir=tmp_path)
    assert summary["root"] == str(mini_root.resolve())
    assert summary["num_classes"] == 3 and summary["classes"] == ["accordion", "dalmatian", "pizza"]
    assert summary["splits"] == {"train": 12, "val": 12, "test": 12}
    assert summary["images_per_class"] == {"accordion": 12, "dalmatian": 12, "pizza": 12}
    assert summary["unreadable"] == [] and summary["skipped"] == []


# -- root resolution and clear messages ----------------------------------------------------------------------


def test_root_resolution_order(mini_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    assert dataset.resolve_root() == mini_root.resolve()
    assert dataset.resolve_root(mini_root) == mini_root.resolve()
    monkeypatch.delenv("CALTECH101_ROOT")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(dataset.DatasetNotFoundError) as err:
        dataset.resolve_root()
    assert "data/caltech101" in str(err.value) and "101_ObjectCategories" in str(err.value)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "caltech101").symlink_to(mini_root)
    assert dataset.resolve_root() == mini_root.resolve()


def test_missing_root_message_says_what_and_where(tmp_path):
    with pytest.raises(dataset.DatasetNotFoundError) as err:
        dataset.load_splits(tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    assert dataset.DATASET_URL in message and "train.txt" in message and "unpack" in message
    assert isinstance(err.value, FileNotFoundError)


def test_missing_split_file_message(tmp_path):
    root = _tiny_root(tmp_path, {"a": 6, "b": 6})
    (root / "test.txt").unlink()
    with pytest.raises(dataset.DatasetNotFoundError, match=r"Split file test\.txt not found"):
        dataset.load_splits(root)


def test_missing_listed_file_and_bad_lines_are_skipped(tmp_path):
    root = _tiny_root(tmp_path, {"a": 6, "b": 6})
    with open(root / "train.txt", "a") as f:
        f.write("a/image_0099.jpg\nzebra/image_0001.jpg\nBACKGROUND_Google/image_0001.jpg\na/notes.txt\n")
        f.write("a/image_0003.jpg\n../../etc/passwd\n")
    splits = dataset.load_splits(root)
    reasons = {s.path.relative_to(root / dataset.IMAGES_DIR).as_posix(): s.reason for s in splits.skipped}
    assert reasons["a/image_0099.jpg"] == "train.txt: listed but missing"
    assert "class folder zebra does not exist" in reasons["zebra/image_0001.jpg"]
    assert reasons["a/notes.txt"] == "train.txt: not an image file"
    assert reasons["a/image_0003.jpg"] == "train.txt: listed twice"
    assert any("not a <class>/<file> line" in r for r in reasons.values())
    assert not any("BACKGROUND" in k for k in reasons)  # excluded on purpose, not an error
    assert len(splits.train) + len(splits.val) == 8


def test_empty_class_folder_is_reported(tmp_path):
    root = _tiny_root(tmp_path, {"a": 6, "b": 6})
    (root / dataset.IMAGES_DIR / "c").mkdir()
    (root / dataset.IMAGES_DIR / "c" / "tmp").write_text("not an image")
    splits = dataset.load_splits(root)
    assert splits.classes == ["a", "b", "c"]
    assert dataset.Skipped(root.resolve() / dataset.IMAGES_DIR / "c", "class folder has no images") in splits.skipped
    assert scan.dataset_summary(root, scan=False)["images_per_class"]["c"] == 0


def test_too_few_images_to_stratify_is_a_clear_error(tmp_path):
    root = _tiny_root(tmp_path, {"a": 3, "b": 6})  # class a has one training image
    with pytest.raises(dataset.SplitError, match="cannot split"):
        dataset.load_splits(root)


def test_non_image_files_in_class_folders_are_ignored(mini_root):
    # mini_root's BACKGROUND_Google mirrors the real one; add nothing, just check the count ignores non-images.
    counts = dataset.images_per_class(mini_root, ["accordion"])
    assert counts == {"accordion": 12}


# -- unreadable images ----------------------------------------------------------------------------------------


def test_find_unreadable_reports_each_broken_file(odd_images):
    bad = scan.find_unreadable(odd_images.values())
    assert {s.path for s in bad} == {odd_images["truncated"], odd_images["text"], odd_images["empty"]}


def test_summary_reports_unreadable_images_and_caches_the_scan(tmp_path):
    root = _tiny_root(tmp_path, {"a": 6, "b": 6})
    broken = root / dataset.IMAGES_DIR / "a" / "image_0004.jpg"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 3])
    cache_dir = tmp_path / "cache"
    summary = scan.dataset_summary(root, cache_dir=cache_dir)
    assert summary["unreadable"] == [str(broken.resolve())]
    assert summary["unreadable_count"] == 1

    decoded: list[tuple[int, int]] = []
    scan.dataset_summary(root, cache_dir=cache_dir, progress=lambda d, t: decoded.append((d, t)))
    assert decoded == []  # second call: nothing decoded, results came from the scan cache

    broken.write_bytes(good)  # repaired: size changes, so it is checked again
    fixed = scan.dataset_summary(root, cache_dir=cache_dir, progress=lambda d, t: decoded.append((d, t)))
    assert fixed["unreadable"] == [] and decoded == [(1, 1)]


def test_splits_without_unreadable(mini_root):
    splits = dataset.load_splits(mini_root)
    victim = splits.train[0]
    cleaned = splits.without([dataset.Skipped(victim.path, "unreadable image")])
    assert victim not in cleaned.train and len(cleaned.train) == len(splits.train) - 1
    assert cleaned.skipped[-1].path == victim.path


# -- download -------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_download_offline_fails_fast_with_instructions(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/caltech.zip"
    start = time.monotonic()
    with pytest.raises(dataset.DatasetNotFoundError) as err:
        download.download_dataset(tmp_path / "dest", url=url, timeout=2)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "Download of" in message and dataset.DATASET_URL in message
    assert str(tmp_path / "dest") in message
    assert list((tmp_path / "dest").iterdir()) == []  # no partial download left behind


def test_download_uses_the_real_url_by_default(tmp_path, monkeypatch):
    requested: list[str] = []

    def refuse(url, timeout):
        requested.append(url)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    with pytest.raises(dataset.DatasetNotFoundError, match="Network is unreachable"):
        download.download_dataset(tmp_path)
    assert requested == [dataset.DATASET_URL] and requested[0].startswith("https://github.com/")


def _zip_of(root: Path, top: str = "Homework2-Caltech101-master") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, f"{top}/{p.relative_to(root).as_posix()}")
    return buf.getvalue()


@pytest.fixture
def served(tmp_path):
    """A localhost HTTP server for files under tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_unpacks_verifies_and_reports_progress(tmp_path, served):
    import hashlib

    www, base = served
    payload = _zip_of(_tiny_root(tmp_path, {"a": 6, "b": 6}))
    (www / "c.zip").write_bytes(payload)
    seen: list[tuple[int, int]] = []
    dest = tmp_path / "dest"
    root = download.download_dataset(
        dest, lambda d, t: seen.append((d, t)), url=f"{base}/c.zip",
        sha256=hashlib.sha256(payload).hexdigest(), expected_bytes=len(payload),
    )
    assert root == dest.resolve()
    assert seen[-1] == (len(payload), len(payload))
    splits = dataset.load_splits(dest)
    assert splits.classes == ["a", "b"] and len(splits.test) == 4
    assert sorted(p.name for p in dest.iterdir()) == ["101_ObjectCategories", "test.txt", "train.txt"]


def test_download_rejects_wrong_checksum(tmp_path, served):
    www, base = served
    (www / "c.zip").write_bytes(_zip_of(_tiny_root(tmp_path, {"a": 6, "b": 6})))
    with pytest.raises(dataset.DatasetNotFoundError, match="wrong SHA-256"):
        download.download_dataset(tmp_path / "dest", url=f"{base}/c.zip", sha256="0" * 64)
    assert not (tmp_path / "dest" / dataset.IMAGES_DIR).exists()


def test_download_from_file_url_detects_incomplete_archive(tmp_path):
    root = _tiny_root(tmp_path, {"a": 6, "b": 6})
    (root / dataset.IMAGES_DIR / "a" / "image_0005.jpg").unlink()  # listed in train.txt, absent from the zip
    archive = tmp_path / "c.zip"
    archive.write_bytes(_zip_of(root))
    with pytest.raises(dataset.DatasetNotFoundError, match="incomplete: 1 images of train.txt missing"):
        download.download_dataset(tmp_path / "dest", url=archive.as_uri())


def test_download_rejects_a_non_zip(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_text("<html>rate limited</html>")
    with pytest.raises(dataset.DatasetNotFoundError, match="not a zip archive"):
        download.download_dataset(tmp_path / "dest", url=junk.as_uri())


def test_classes_by_name(mini_root: Path) -> None:
    splits = dataset.load_splits(mini_root, classes=["pizza", "accordion"])
    assert splits.classes == ["accordion", "pizza"] and {s.label for s in splits.test} == {0, 1}
    cfg = TrainConfig(class_names="pizza, accordion")
    assert cfg.class_names == ("pizza", "accordion") and TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert dataset.Splits.from_config(cfg, root=mini_root).classes == ["accordion", "pizza"]
    with pytest.raises(dataset.SplitError, match="unknown class 'pizzza'"):
        dataset.load_splits(mini_root, classes=["pizzza"])
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(classes=2, class_names=("pizza",))
