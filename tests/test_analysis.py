"""Error analysis, export and run comparison on the dashboard (AppTest) over two tiny real runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from apptest_pages import open_page, page_texts

from caltech_core.config import TrainConfig
from caltech_core.runs import job
from caltech_core.runs.store import RunStore
from caltech_core.study import charts
from caltech_core.training import predictions


@pytest.fixture(scope="module")
def two_runs(finished_home: Path, mini_root: Path,
             tiny_config: Callable[..., TrainConfig]) -> tuple[Path, list[int]]:
    """A store with two finished one-epoch MobileNetV3-Small runs (64 px) on the three-class mini dataset: the
    shared tiny run (lr 0.01) and one at lr 0.001."""
    store = RunStore(finished_home)
    [first] = [r.id for r in store.list_runs()]
    second = store.create_run(tiny_config(lr=0.001, name="second"))
    assert job.run_job(store, second, data_root=mini_root) == "finished"
    return finished_home, [first, second]


@pytest.fixture
def analysis_home(two_runs: tuple[Path, list[int]], mini_root: Path,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[int]]:
    monkeypatch.setenv("CALTECH_STUDIO_HOME", str(two_runs[0]))
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    return two_runs


def test_compare_tables_every_hyperparameter_and_mean_class_accuracy(analysis_home: tuple[Path, list[int]]) -> None:
    home, ids = analysis_home
    at = open_page("compare")
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    store = RunStore(home)
    for run_id in ids:
        row = table[table["run"] == run_id].iloc[0]
        rec = store.get_run(run_id)
        assert row["mean class acc"] == pytest.approx(rec.results["mean_class_acc"])
        for key in ("lr", "momentum", "weight_decay", "step_size", "gamma", "batch_size", "seed", "image_size",
                    "optimizer", "train", "pretrained", "epochs"):
            assert row[key] == getattr(rec.config, key), key
        assert row["augment"] == "none"
    csv = at.get("download_button")[0]
    assert csv.proto.label == "Download CSV"

    # Two runs: their confusion matrices side by side, then as a difference.
    assert at.selectbox(key="cm_a").value == ids[0] and at.selectbox(key="cm_b").value == ids[1]
    charts_shown = [c for c in at.get("plotly_chart") if "Confusion" in c.proto.spec or "#" in c.proto.spec]
    assert charts_shown
    at.radio(key="cm_view").set_value("Difference (B − A)").run()
    assert not at.exception, at.exception
    assert any("Confusion difference" in c.proto.spec for c in at.get("plotly_chart"))


def test_confusion_difference_is_row_normalised_b_minus_a() -> None:
    fig = charts.confusion_difference_figure([[3, 1], [0, 2]], [[2, 2], [1, 1]], ["a", "b"], ("#1", "#2"))
    assert [list(r) for r in fig.data[0].z] == [[-0.25, 0.25], [0.5, -0.5]]
    assert "#2 − #1" in fig.layout.title.text


def test_errors_page_shows_a_confusion_cells_images(analysis_home: tuple[Path, list[int]]) -> None:
    home, ids = analysis_home
    store = RunStore(home)
    results = predictions.load_run(store, ids[0], "test")
    at = open_page("errors", run=str(ids[0]))
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "12" and metrics["Accuracy"] == f"{results.summary()['acc']:.1%}"
    assert metrics["Mistakes"] == str(int((~results.correct).sum()))

    # The fullest cell of the matrix (what a click on it selects): its images, most confident first, with top-5.
    confusion = results.confusion()
    t, p = np.unravel_index(confusion.argmax(), confusion.shape)
    at.selectbox(key="err_true").set_value(results.classes[t])
    at.selectbox(key="err_pred").set_value(results.classes[p]).run()
    assert not at.exception, at.exception
    assert len(at.image) == confusion[t, p]
    texts = page_texts(at)
    assert f"{confusion[t, p]} image(s) of {results.classes[t]} predicted as {results.classes[p]}" in texts
    first = results.cell(t, p)[0]
    name, prob = results.top_of(int(first))[0]
    assert f"{prob:.1%} {name}" in texts and f"true **{results.classes[t]}**" in texts

    at.radio(key="err_view").set_value("Most confident mistakes").run()
    assert not at.exception, at.exception
    assert len(at.image) == min(12, int((~results.correct).sum()))

    at.radio(key="err_view").set_value("Per-class accuracy").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert sorted(table["class"]) == results.classes and list(table["accuracy"]) == sorted(table["accuracy"])
    worst = table["class"].iloc[0]
    assert at.selectbox(key="err_class").value == worst
    assert len(at.image) == len(results.mistakes_of(results.classes.index(worst)))

    at.radio(key="err_view").set_value("Confused pairs").run()
    assert not at.exception, at.exception
    pairs = results.confused_pairs(30)
    if pairs:
        table = at.dataframe[0].value
        assert list(table["images"]) == [pair["images"] for pair in pairs]
        assert len(at.image) == pairs[0]["images"]


def test_errors_page_computes_missing_results(analysis_home: tuple[Path, list[int]]) -> None:
    home, ids = analysis_home
    store = RunStore(home)
    expected = predictions.load_run(store, ids[1], "val")
    predictions.results_path(store.run_dir(ids[1]), "val").unlink()
    at = open_page("errors", run=str(ids[1]))
    at.radio(key="err_split").set_value("val").run()
    assert "no stored per-image results" in page_texts(at)
    at.button(key="err_compute").click().run()
    assert not at.exception, at.exception
    again = predictions.load_run(store, ids[1], "val")
    assert again.labels.tolist() == expected.labels.tolist()
    assert again.top_classes[:, 0].tolist() == expected.top_classes[:, 0].tolist()
    assert {m.label: m.value for m in at.metric}["Images"] == "12"


def test_monitor_exports_the_model_for_download(analysis_home: tuple[Path, list[int]]) -> None:
    _, ids = analysis_home
    at = open_page("monitor", run=str(ids[0]))
    assert not at.exception, at.exception
    at.radio(key="export_format").set_value("torchscript")
    at.button(key="export_prepare").click().run()
    assert not at.exception, at.exception
    [download] = [d for d in at.get("download_button") if "export" in d.proto.id or ".zip" in d.proto.label]
    assert download.proto.label == f"Download run-{ids[0]}-mobilenet_v3_small-torchscript.zip"
