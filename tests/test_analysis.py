"""Error analysis, export and run comparison on the dashboard (AppTest) over two tiny real runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_pages import open_page

from caltech_core import charts, jobs
from caltech_core.config import TrainConfig
from caltech_core.store import RunStore


@pytest.fixture(scope="module")
def two_runs(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A store with two finished one-epoch ResNet-18 runs (64 px) on the three-class mini dataset."""
    home = tmp_path_factory.mktemp("analysis")
    store = RunStore(home)
    ids = []
    for lr, name in ((0.01, "first"), (0.001, "second")):
        run_id = store.create_run(TrainConfig(arch="resnet18", image_size=64, epochs=1, batch_size=8, lr=lr,
                                              device="cpu", name=name))
        assert jobs.run_job(store, run_id, data_root=mini_root) == "finished"
        ids.append(run_id)
    return home, ids


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
