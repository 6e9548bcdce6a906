"""Suspected label errors (cleanlab) and the embedding map, on real Caltech-101 images."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from caltech_core import layout
from caltech_core.config import TrainConfig
from caltech_core.data.dataset import Splits
from caltech_core.runs.store import RunStore
from caltech_core.study import charts
from caltech_core.training import predictions
from caltech_core.use import batch, embedding, suspects

FLIP_CLASSES = ("accordion", "airplanes", "dalmatian", "pizza")
PER_CLASS, FLIPPED_PER_CLASS = 20, 2


@pytest.fixture(scope="module")
def flipped_root(caltech_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 4-class tree of 20 training images a class in which 2 images of each class are filed (and listed in
    train.txt) under the next class: labels flipped on purpose, their names starting with "flipped_"."""
    root = tmp_path_factory.mktemp("flipped")
    for cls in (*FLIP_CLASSES, "BACKGROUND_Google"):
        (root / "101_ObjectCategories" / cls).mkdir(parents=True)
    lines = (caltech_root / "train.txt").read_text().split()
    listed = []
    for k, cls in enumerate(FLIP_CLASSES):
        own = [line for line in lines if line.split("/")[0] == cls][:PER_CLASS]
        for i, line in enumerate(own):
            target = FLIP_CLASSES[(k + 1) % len(FLIP_CLASSES)] if i < FLIPPED_PER_CLASS else cls
            name = ("flipped_" if target != cls else "") + Path(line).name
            (root / "101_ObjectCategories" / target / name).symlink_to(caltech_root / "101_ObjectCategories" / line)
            listed.append(f"{target}/{name}")
    (root / "train.txt").write_text("\n".join(listed) + "\n")
    (root / "test.txt").write_text("\n".join(listed[:: PER_CLASS]) + "\n")
    return root


def test_cleanlab_finds_labels_flipped_on_purpose(flipped_root: Path, tmp_path: Path) -> None:
    store = RunStore(tmp_path / "home")
    cfg = TrainConfig(arch="efficientnet_lite0", pretrained=True, train="fc", image_size=96, train_fraction=0.9,
                      class_names=FLIP_CLASSES, device="cpu")
    run = store.create_run(cfg)  # the training split's suspects need only the run's config, not its weights
    report = suspects.find_suspects(store, run, "train", data_root=flipped_root, folds=4)
    train = Splits.from_config(cfg, flipped_root).train
    train_flipped = {str(s.path) for s in train if s.path.name.startswith("flipped_")}
    found = {s.path for s in report.suspects}
    precision = len(found & train_flipped) / max(len(found), 1)
    recall = len(found & train_flipped) / len(train_flipped)
    print(f"{report.images} training images, {len(train_flipped)} flipped: {len(found)} suspects, "
          f"precision {precision:.2f}, recall {recall:.2f}")
    assert train_flipped and recall >= 0.75 and precision >= 0.6
    top = report.suspects[0]
    assert Path(top.path).name.startswith("flipped_")
    assert top.suggested != top.given and top.confidence > top.given_prob
    # Cached beside the run and read back as the same report.
    cached = layout.suspects(store.run_dir(run), "train")
    assert json.loads(cached.read_text())["split"] == "train"
    assert suspects.find_suspects(store, run, "train", data_root=flipped_root) == report


def test_validation_and_test_suspects_come_from_the_runs_predictions(finished_home: Path) -> None:
    store = RunStore(finished_home)
    report = suspects.find_suspects(store, 1, "test")
    results = predictions.load_run(store, 1, "test")
    assert report.images == len(results) and "own predictions" in report.method
    paths = {str(p) for p in results.paths}
    assert all(s.path in paths for s in report.suspects)
    with pytest.raises(suspects.SuspectsError, match="unknown split"):
        suspects.find_suspects(store, 1, "all")
    old = predictions.ImageResults(results.split, results.classes, results.paths, results.labels,
                                   results.top_classes, results.top_probs, results.losses)  # an older file
    predictions.save(old, predictions.results_path(store.run_dir(1), "val"))
    with pytest.raises(suspects.SuspectsError, match="recompute"):
        suspects.find_suspects(store, 1, "val")


def test_embedding_map_of_a_tiny_run(finished_home: Path, mini_root: Path) -> None:
    store = RunStore(finished_home)
    first = embedding.embedding_map(store, 1, "test", "pca", data_root=mini_root)
    results = predictions.load_run(store, 1, "test")
    assert first.xy.shape == (len(results), 2) and np.isfinite(first.xy).all()
    assert list(first.paths) == [str(p) for p in results.paths]
    assert (first.preds == results.preds).all()  # the same best.pt, the same predictions
    assert first.mistakes.sum() == (~results.correct).sum()
    again = embedding.embedding_map(store, 1, "test", "pca", data_root=mini_root)  # from the cache
    assert np.array_equal(again.xy, first.xy)
    assert layout.embedding(store.run_dir(1), "test", "features").is_file()  # t-SNE starts from these
    tsne = embedding.embedding_map(store, 1, "test", "tsne", data_root=mini_root)
    assert tsne.xy.shape == first.xy.shape
    fig = charts.embedding_figure(first.xy.tolist(), [first.classes[i] for i in first.labels],
                                  first.mistakes.tolist(), first.hover())
    assert {t.name for t in fig.data} == {first.classes[i] for i in first.labels}
    assert sum(len(t.x) for t in fig.data) == len(results)


def test_zip_members_refuse_escaping_names_and_count_what_they_skip() -> None:
    from collections import Counter

    assert batch.safe_member("a/b/c.jpg") and not batch.safe_member("../c.jpg")
    assert not batch.safe_member("/etc/x.jpg") and not batch.safe_member("C:/x.jpg")
    assert not batch.safe_member("a\\..\\..\\x.jpg")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("deep/er/one.JPG", b"1")
        zf.writestr("deep/", b"")
        zf.writestr("notes.md", b"2")
        zf.writestr("__MACOSX/deep/._one.JPG", b"3")
        zf.writestr("a/../../two.png", b"4")
    skipped: Counter = Counter()
    assert [n for n, _ in batch.zip_members(buffer.getvalue(), skipped)] == ["deep/er/one.JPG"]
    assert skipped == {"not images": 1, "hidden or system files": 1, "unsafe path (zip-slip)": 1}
    with pytest.raises(batch.BatchError, match="not a ZIP"):
        list(batch.zip_members(b"nope", Counter()))
    header = batch.to_csv(batch.BatchResult(rows=[{"file": "x.jpg", "class_1": "pizza", "prob_1": 0.5}]))
    assert header.decode().splitlines()[0].startswith("file,class_1,prob_1,class_2,prob_2")
