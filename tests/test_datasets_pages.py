"""The pages with a second dataset (AppTest): the Data page's picker, add-by-path, ZIP upload (hostile ZIPs refused),
splits, samples and health check with exclude marks; the Train form's dataset field; Compare's dataset column and warning."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from apptest_pages import open_page, page_texts, until_background_done
from test_datasets import _folder

from caltech_core.config import TrainConfig
from caltech_core.data import overrides, registry
from caltech_core.runs.manager import get_manager
from caltech_core.runs.store import RunStore


@pytest.fixture
def home(mini_root: Path, studio_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    yield studio_home
    get_manager(studio_home).shutdown(wait=True)


def test_data_page_adds_shows_and_checks_a_second_dataset(home: Path, tmp_path: Path) -> None:
    root = _folder(tmp_path / "shapes", {"circle": 5, "square": 5})
    (root / "square" / "copy.png").write_bytes((root / "circle" / "img 0.png").read_bytes())  # a label conflict
    at = open_page("data")
    at.text_input(key="add_path").set_value(str(tmp_path / "nowhere")).run()
    at.button(key="add_dataset").click().run()
    assert "does not exist" in page_texts(at) and registry.load_all(home) == {}
    at.text_input(key="add_path").set_value(str(root)).run()
    at.button(key="add_dataset").click().run()
    assert not at.exception, at.exception
    assert "Added shapes: 11 images" in page_texts(at)
    assert at.selectbox(key="dataset_picker").value == "shapes"
    splits = at.dataframe[0].value
    assert dict(zip(splits["split"], splits["images"], strict=True)) == {"train": 7, "val": 2, "test": 2}
    assert len(at.image) == 3  # circle's training images (5 -> 3/1/1)
    until_background_done(at.button(key="health_run").click().run())
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Exact duplicate pairs"] == "1" and metrics["Unreadable"] == "0"
    at.radio(key="dup_kind").set_value("label_conflict").run()
    assert len(at.image) >= 5  # the samples plus the pair's two thumbnails
    at.button(key="exclude_dups").click().run()
    assert [m["path"] for m in overrides.marks(home, "shapes")] == [str(root / "square" / "copy.png")]
    assert "Marks in force: 1" in page_texts(at)
    at.selectbox(key="dataset_picker").set_value("").run()
    assert not at.exception and "Dataset found at" in page_texts(at)  # Caltech-101's page, unchanged


def test_train_form_and_compare_know_the_dataset(home: Path, tmp_path: Path) -> None:
    entry, _ = registry.add(home, _folder(tmp_path / "shapes", {"circle": 5, "square": 5}), "shapes")
    at = open_page("train")
    field = at.selectbox(key="f_dataset")
    assert field.options == ["Caltech-101 (the study's dataset)", "shapes (10 images, 2 classes)"]
    field.set_value(entry.id).run()
    assert not at.exception, at.exception
    assert at.multiselect(key="f_class_names").options == ["circle", "square"]
    assert "6 training, 2 validation, 2 test images in 2 classes" in page_texts(at)
    store = RunStore(home)
    for cfg in (TrainConfig(), TrainConfig(dataset=entry.id)):
        run_id = store.create_run(cfg)
        store.set_status(run_id, "finished")
    store.set_results(run_id, {"dataset": {**entry.source, "excluded": 2}, "classes": entry.classes})
    at = open_page("monitor", run=str(run_id))
    assert not at.exception, at.exception
    assert "Dataset: shapes (2 excluded by the dataset's marks)" in page_texts(at)
    at = until_background_done(open_page("report"))
    assert not at.exception, at.exception
    assert "Other datasets: best runs" in [h.value for h in at.header]
    at = open_page("compare")
    assert not at.exception, at.exception
    assert "trained on different datasets (Caltech-101, shapes)" in page_texts(at)
    assert set(at.dataframe[0].value["dataset"]) == {"Caltech-101", "shapes"}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_data_page_zip_upload_refuses_hostile_input_and_adds_a_good_zip(home: Path, tmp_path: Path) -> None:
    src = _folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    images = {f"pets/{p.relative_to(src).as_posix()}": p.read_bytes() for p in sorted(src.rglob("*.png"))}
    at = open_page("data")
    uploads = [
        ("evil.zip", _zip({**images, "pets/../../escaped.png": images["pets/cat/img 0.png"]}), "unsafe path"),
        ("photo.zip", images["pets/cat/img 0.png"], "not a ZIP file"),  # a PNG renamed: refused, not unpacked
    ]
    for filename, data, words in uploads:
        at.file_uploader(key="add_zip").set_value((filename, data, "application/zip")).run()
        at.text_input(key="zip_name").set_value("Pets").run()
        at.button(key="add_zip_button").click().run()
        assert not at.exception, at.exception
        assert words in "\n".join(e.value for e in at.error)
        assert registry.load_all(home) == {} and not (tmp_path / "escaped.png").exists()
    good = _zip({**images, "pets/dog/notes.txt": b"not a picture", "pets/dog/fake.png": b"\x89PNG but not one"})
    at.file_uploader(key="add_zip").set_value(("pets.zip", good, "application/zip")).run()
    at.button(key="add_zip_button").click().run()
    assert not at.exception, at.exception
    assert "Added Pets: 7 images; 1 file(s) skipped (listed below)" in page_texts(at)
    assert at.selectbox(key="dataset_picker").value == "pets"
    [entry] = registry.load_all(home).values()
    assert entry.classes == ["cat", "dog"] and Path(entry.path).is_relative_to(home)
    skipped = next(d.value for d in at.dataframe if "reason" in d.value)
    [(path, reason)] = zip(skipped["path"], skipped["reason"], strict=True)
    assert path.endswith("notes.txt") and reason.startswith("not an image")
    until_background_done(at.button(key="health_run").click().run())
    assert not at.exception, at.exception
    assert {m.label: m.value for m in at.metric}["Unreadable"] == "1"  # fake.png: named like an image, is not one
