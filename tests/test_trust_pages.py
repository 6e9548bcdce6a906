"""The trust views on the dashboard (AppTest): calibration, suspects and embedding map on the Errors page, ECE on
Compare, webcam and ZIP classification on Classify; over the shared finished tiny run."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from apptest_pages import open_page, page_texts

from caltech_core.background import tasks
from caltech_core.data import overrides
from caltech_core.runs.store import RunStore
from caltech_core.training import predictions
from caltech_core.use import calibration, embedding, suspects


@pytest.fixture
def home(finished_home: Path, mini_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CALTECH_STUDIO_HOME", str(finished_home))
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    return finished_home


def test_calibration_view_recomputes_old_results_then_shows_the_diagrams(home: Path) -> None:
    store = RunStore(home)
    for split in predictions.SPLITS:  # results saved before logits were recorded
        r = predictions.load_run(store, 1, split)
        predictions.save(predictions.ImageResults(r.split, r.classes, r.paths, r.labels, r.top_classes, r.top_probs,
                                                  r.losses), predictions.results_path(store.run_dir(1), split))
    at = open_page("errors", run="1")
    at.radio(key="err_view").set_value("Calibration").run()
    assert not at.exception, at.exception
    assert "saved before logits were recorded" in page_texts(at)
    at.button(key="cal_recompute").click().run()
    assert not at.exception, at.exception
    recorded = calibration.recorded(store.get_run(1))
    assert recorded is not None and predictions.load_run(store, 1, "test").logits is not None
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Temperature"] == f"{recorded['temperature']:.3f}"
    assert metrics["ECE (15 bins)"] == f"{recorded['splits']['test']['after']['ece']:.2%}"
    specs = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "Reliability diagram" in specs and "coverage" in specs

    compare = open_page("compare")
    assert not compare.exception, compare.exception
    row = compare.dataframe[0].value.set_index("run").loc[1]
    assert row["test ECE"] == pytest.approx(recorded["splits"]["test"]["before"]["ece"])
    assert row["test ECE calibrated"] == pytest.approx(recorded["splits"]["test"]["after"]["ece"])


def test_suspects_and_embedding_views(home: Path, wait_until: Callable[..., None]) -> None:
    store = RunStore(home)
    at = open_page("errors", run="1")
    at.radio(key="err_view").set_value("Suspected label errors").run()
    assert not at.exception, at.exception
    report = suspects.find_suspects(store, 1, "test")
    label = "Suspected label errors in the test split"
    assert {m.label: m.value for m in at.metric}[label] == str(len(report.suspects))
    if report.suspects:
        assert len(at.dataframe[0].value) == len(report.suspects)
    at.radio(key="sus_split").set_value("train").run()
    assert not at.exception, at.exception
    at.button(key="sus_go").click().run()  # offline, and the tiny run's architecture has no installed weights
    wait_until(lambda: tasks().state(f"suspects:{home}:1:train").status == "failed", timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert any("ImageNet weights" in e.value for e in at.error)
    assert at.button(key=f"background-retry-suspects:{home}:1:train")  # the work failed: it can be retried

    at.radio(key="err_view").set_value("Embedding map").run()
    assert not at.exception, at.exception
    at.button(key="emb_go").click().run()
    wait_until(lambda: embedding.cached_map(store, 1, "test", "pca") is not None, timeout=120)
    at.run()
    assert not at.exception, at.exception
    chart = next(c for c in at.get("plotly_chart") if "Penultimate features" in c.proto.spec)
    assert "mistakes (crosses)" in page_texts(at) and chart is not None


def _zip(mini_root: Path) -> bytes:
    photo = sorted((mini_root / "101_ObjectCategories" / "dalmatian").glob("*.jpg"))[0].read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("photos/dogs/spot.jpg", photo)
        zf.writestr("photos/readme.txt", "not an image")
        zf.writestr("../escape.jpg", photo)
        zf.writestr("photos/broken.png", b"not a png")
    return buffer.getvalue()


def test_classify_webcam_and_zip(home: Path, mini_root: Path) -> None:
    at = open_page("classify")
    at.selectbox[0].set_value((1, "best.pt")).run()
    assert not at.exception, at.exception
    assert "calibrated" in page_texts(at)
    at.toggle(key="cls_camera_on").set_value(True).run()
    photo = sorted((mini_root / "101_ObjectCategories" / "pizza").glob("*.jpg"))[0].read_bytes()
    at.camera_input(key="cls_camera").set_value(("shot.jpg", photo, "image/jpeg")).run()
    assert not at.exception, at.exception
    assert "**webcam snapshot** →" in page_texts(at)

    at.toggle(key="cls_batch_on").set_value(True).run()
    at.radio(key="cls_batch_kind").set_value("ZIP archive").run()
    at.file_uploader(key="cls_zip").set_value(("batch.zip", _zip(mini_root), "application/zip")).run()
    at.button(key="cls_batch_go").click().run()
    assert not at.exception, at.exception
    assert "1 image(s) classified, 1 could not be read; skipped: 1 not images, 1 unsafe path (zip-slip)" in \
        page_texts(at)
    table = at.dataframe[-1].value
    assert list(table["file"]) == ["photos/dogs/spot.jpg", "photos/broken.png"]
    assert table["class_1"][0] in ("accordion", "dalmatian", "pizza") and 0 < table["prob_1"][0] <= 1
    assert "not an image" in table["error"][1]
    assert at.get("download_button")[-1].proto.label == "Download CSV"

    at.file_uploader(key="cls_zip").set_value(("fake.zip", b"no zip here", "application/zip")).run()
    at.button(key="cls_batch_go").click().run()
    assert any("not a ZIP archive" in e.value for e in at.error)


def test_fix_labels_in_the_galleries_then_retrain_and_compare(home: Path, wait_until: Callable[..., None]) -> None:
    """Mark from the suspects gallery and from a confusion cell's images, undo one, retrain with the fixes, see
    the before/after table on Compare and the marks on the Data page."""
    store = RunStore(home)
    at = open_page("errors", run="1")
    at.radio(key="err_split").set_value("val").run()  # marks of test images leave the test split alone
    at.radio(key="err_view").set_value("Suspected label errors").run()
    report = suspects.find_suspects(store, 1, "val")
    print(f"tiny run: {len(report.suspects)} validation suspects")
    assert report.suspects, "the tiny run's validation split has no suspects to mark"
    first = report.suspects[0]
    assert at.selectbox(key="sus_val_0_label").value == first.suggested  # the suggestion is preselected
    at.button(key="sus_val_0_exclude").click().run()
    assert not at.exception, at.exception
    assert [(m["path"], m["action"]) for m in overrides.marks(home, "caltech101")] == [(first.path, "exclude")]
    assert at.button(key="sus_val_0_undo")  # the card now says "excluded", with Undo

    at.radio(key="err_view").set_value("Confusion matrix").run()
    relabel = next(b for b in at.button if b.key and b.key.startswith("cell_") and b.key.endswith("_relabel"))
    card = relabel.key.removesuffix("_relabel")
    new_label = at.selectbox(key=f"{card}_label").value
    relabel.click().run()
    assert not at.exception, at.exception
    assert overrides.load(home, "caltech101").relabelled and len(overrides.load(home, "caltech101")) == 2
    at.button(key=f"{card}_undo").click().run()  # changed our mind about this one ...
    relabel = at.button(key=f"{card}_relabel")
    at.selectbox(key=f"{card}_label").set_value(new_label)
    relabel.click().run()  # ... and back
    assert "untouched test labels" in page_texts(at) and not at.checkbox(key="fix_on_test").value
    at.button(key="fix_retrain").click().run()
    assert not at.exception, at.exception
    assert "Queued run #2, run #1 with these fixes" in page_texts(at)
    wait_until(lambda: store.get_run(2).status in ("finished", "failed"), timeout=240)
    new = store.get_run(2)
    assert new.status == "finished", new.error
    assert not new.config.marks_on_test
    assert (new.results["dataset"]["relabelled"], new.results["dataset"]["excluded"]) == (1, 1)

    compare = open_page("compare")
    assert not compare.exception, compare.exception
    table = next(d.value for d in compare.dataframe if "labels changed" in d.value.columns)
    assert list(table[""]) == ["before", "after"] and list(table["labels changed"]) == [0, 1]
    assert list(table["test labels"]) == ["untouched", "untouched"]

    data = open_page("data")
    assert not data.exception, data.exception
    assert "Marks in force: 2" in page_texts(data)
    marks = data.dataframe  # the marks editor is a data editor: found among the tables
    assert any("file gone" in d.value.columns for d in marks)
