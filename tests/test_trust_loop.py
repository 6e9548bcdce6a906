"""Issue 25's loop: marks from the suspects/Errors galleries through data/overrides.py, "retrain with these fixes",
before/after; and the fast path's feature key, which must not depend on a randomly initialised head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from caltech_core.cli import main
from caltech_core.config import TrainConfig
from caltech_core.data import overrides
from caltech_core.data.dataset import Splits
from caltech_core.nets import models
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.training import predictions
from caltech_core.training.features import feature_key
from caltech_core.use import fixes


def test_feature_key_ignores_the_random_head_but_not_the_backbone(mini_root: Path) -> None:
    """Two fresh builds of EfficientNet-Lite0 (its backbone module holds the new classifier) under different seeds
    give the same key; a changed backbone weight gives another."""
    cfg = TrainConfig(arch="efficientnet_lite0", pretrained=True, train="fc", image_size=96)
    paths = sorted((mini_root / "101_ObjectCategories").rglob("*.jpg"))[:3]
    keys, backbones = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        backbone, head = models.split_for_features(models.build_model(cfg.arch, 3, pretrained=True), cfg.arch)
        keys.append(feature_key(cfg, backbone, head, paths))
        backbones.append((backbone, head))
    heads = [next(h.parameters()) for _, h in backbones]
    assert not torch.equal(heads[0], heads[1])  # the heads do differ
    assert keys[0] == keys[1]
    backbone, head = backbones[0]
    with torch.no_grad():
        backbone.model.conv_stem.weight[0, 0, 0, 0] += 1e-3
    assert feature_key(cfg, backbone, head, paths) != keys[0]


@pytest.fixture(scope="module")
def retrained(finished_home: Path, mini_root: Path) -> tuple[RunStore, int, int, dict[str, str]]:
    """Run 1 of `finished_home`, three marks (a training image relabelled and a test image excluded on the command
    line, a file that is gone since), then `retrain-fixes 1`: (store, source id, new id, marked paths)."""
    store = RunStore(finished_home)
    source = store.get_run(1)
    splits = Splits.from_config(source.config, mini_root, home=finished_home)
    train, test = splits.train[0], splits.test[0]
    new_label = next(c for c in splits.classes if c != splits.classes[train.label])
    gone = str(mini_root / "101_ObjectCategories" / "pizza" / "deleted_since.jpg")
    cli = ["--store", str(finished_home)]
    assert main(["data", "relabel", "caltech101", str(train.path), "--to", new_label, *cli]) == 0
    assert main(["data", "exclude", "caltech101", str(test.path), *cli]) == 0
    assert main(["data", "exclude", "caltech101", gone, *cli]) == 2  # refused: no such file
    fixes.mark(finished_home, source, [gone], overrides.EXCLUDE)  # as if the file was deleted after its mark
    with pytest.raises(fixes.FixError, match="not a class"):
        fixes.mark(finished_home, source, [str(train.path)], overrides.RELABEL, label="unicorn")
    assert main(["retrain-fixes", "1", "--root", str(mini_root), *cli]) == 0
    (new_id,) = [r.id for r in store.list_runs() if r.id != 1]
    return store, 1, new_id, {"train": str(train.path), "label": new_label, "test": str(test.path), "gone": gone}


def test_marks_change_the_next_runs_training_labels_and_nothing_else(retrained, mini_root: Path) -> None:
    store, source_id, new_id, marked = retrained
    source, new = store.get_run(source_id), store.get_run(new_id)
    assert new.status == "finished", new.error
    assert new.tags == (f"fixes of #{source_id}",) and fixes.source_of(new) == source_id
    assert new.name == "tiny + fixes" and new.group == "" and not new.config.marks_on_test
    assert new.config.replace(name="tiny", group="demo") == source.config  # the same experiment otherwise
    # The run records what the marks did: one label changed, the test file left alone, the gone file reported.
    recorded = new.results["dataset"]
    assert (recorded["relabelled"], recorded["excluded"], recorded["test_untouched"], recorded["missing_marks"]) \
        == (1, 0, 1, 1)
    # Its training split carries the new label ...
    splits = Splits.from_config(new.config, mini_root, home=store.home)
    relabelled = next(s for s in splits.train if str(s.path) == marked["train"])
    assert splits.classes[relabelled.label] == marked["label"]
    # ... and its test split is the source's, image for image and label for label.
    before, after = (predictions.load_run(store, i, "test") for i in (source_id, new_id))
    assert list(after.paths) == list(before.paths) and marked["test"] in list(map(str, after.paths))
    assert list(after.labels) == list(before.labels)
    rows = fixes.before_after(store, new)
    assert [r[""] for r in rows] == ["before", "after"]
    assert (rows[0]["labels changed"], rows[1]["labels changed"]) == (0, 1)
    assert rows[1]["test labels"] == "untouched" and rows[1]["test ECE"] is not None


def test_marks_on_test_apply_to_the_test_split_when_asked(retrained, mini_root: Path) -> None:
    store, source_id, _, marked = retrained
    cfg = fixes.fixes_config(store.get_run(source_id), marks_on_test=True)
    splits = Splits.from_config(cfg, mini_root, home=store.home)
    assert marked["test"] not in {str(s.path) for s in splits.test}
    assert (splits.source["excluded"], splits.source["test_untouched"], splits.source["marks_on_test"]) == \
        (1, 0, True)
    assert overrides.missing(store.home, fixes.dataset_id(cfg)) == [marked["gone"]]


def test_retrain_without_marks_is_refused(tmp_path: Path, tiny_config) -> None:
    store = RunStore(tmp_path / "home")
    run_id = store.create_run(tiny_config())
    manager = ThreadJobManager(store, data_root=tmp_path)
    try:
        with pytest.raises(fixes.FixError, match="no marks"):
            fixes.retrain_with_fixes(manager, run_id)
        with pytest.raises(fixes.FixError, match="does not exist"):
            fixes.retrain_with_fixes(manager, 99)
    finally:
        manager.shutdown()
    assert [r.id for r in store.list_runs()] == [run_id]
