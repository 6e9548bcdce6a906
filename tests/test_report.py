"""The study report rebuilt from a store of tiny real runs, its export, and export-path sanitising."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest

from caltech_core.config import SETTINGS, TrainConfig
from caltech_core.data.dataset import load_splits
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.study.experiments import PRESETS
from caltech_core.study.export import export_markdown, export_zip, safe_filename, safe_path
from caltech_core.study.matching import NON_DEFINING_FIELDS
from caltech_core.study.report import SECTIONS, Report, build_report, format_pct, report_summary

# MobileNetV3-Small instead of the presets' AlexNet: the report matches runs by group and varied fields, and
# its checkpoints are 6 MB instead of 228 MB each.
TINY = {"arch": "mobilenet_v3_small", "image_size": 64, "epochs": 1, "step_size": 1, "batch_size": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def filled_store(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """Tiny real runs: the baseline with two seeds and one augmentation member; the rest left missing."""
    store = RunStore(tmp_path_factory.mktemp("report-store"))
    manager = ThreadJobManager(store, data_root=mini_root)
    try:
        for seed in (1, 2):
            manager.submit(PRESETS["baseline"].configs[0].replace(seed=seed, **TINY))
        manager.submit(PRESETS["more-epochs"].configs[1].replace(**TINY))  # "lr=0.05", 1 epoch here
        assert manager.wait(timeout=300)
    finally:
        manager.shutdown(wait=True)
    assert [r.status for r in store.list_runs()] == ["finished"] * 3, [r.error for r in store.list_runs()]
    return store


@pytest.fixture(scope="module")
def report(filled_store: RunStore, mini_root: Path) -> Report:
    return build_report(filled_store, mini_root)


def test_tables_come_from_the_runs_and_missing_experiments_say_so(
    report: Report, filled_store: RunStore, mini_root: Path
) -> None:
    splits = load_splits(mini_root)
    table1 = {r["split"]: r["images"] for r in report.section("table1").rows}
    assert table1 == {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test), "classes": 3}
    assert "histogram" in report.section("figure2").figures

    runs = filled_store.list_runs(newest_first=False)
    baseline = report.section("baseline")
    assert not baseline.missing
    (row,) = baseline.rows
    assert row["runs"] == 2 and row["seeds"] == "1, 2"
    vals = [r.best_val_acc for r in runs[:2]]
    assert row["val_acc_mean"] == pytest.approx(sum(vals) / 2)
    assert "(n=2)" in row["val (ours)"] and "±" in row["val (ours)"]
    # The study's numbers beside ours, the difference and a verdict per number.
    # The study's 9.2% is the plateau the baseline stays at, so it is compared with the last epoch's value.
    assert row["val (study)"] == "—" and row["final val (study)"] == "9.2%"
    assert row["final train loss (study)"] == "4.49"
    assert row["study_numbers"] == {"final_val_acc": 9.2, "final_train_loss": 4.49}
    finals = [filled_store.epochs(r.id)[-1]["val_acc"] for r in runs[:2]]
    assert row["differences"]["final_val_acc"] == pytest.approx(100 * sum(finals) / 2 - 9.2)
    assert set(row["verdicts"]) == {"final_val_acc", "final_train_loss"}
    # Runs at other settings than the study's (64 px, 1 epoch) are shown beside its numbers, not compared.
    assert set(row["verdicts"].values()) == {"other setting"}
    assert row["test (study)"] == "—" and row["test verdict"] == "—"  # the study gives no baseline test number
    assert row["setting"].startswith("differs from the study: ") and "image_size 64 (study 224)" in row["setting"]
    assert "epochs 1 (study 30)" in row["setting"]
    # Two runs: overlaid curves, with the study's final values as reference lines.
    assert set(baseline.figures) == {"val_acc", "val_loss", "train_loss"}
    val_lines = [s for s in baseline.figures["val_acc"].layout.shapes]
    assert [line.y0 for line in val_lines] == [pytest.approx(0.092)]
    assert [line.y0 for line in baseline.figures["train_loss"].layout.shapes] == [pytest.approx(4.49)]

    # Reduced-scale runs count only in their own preset: the LR grid's 1e-3 member is the baseline's config,
    # but these runs differ from it (64 px, 1 epoch), so the LR grid is still missing.
    assert report.section("lr-grid").missing

    more = report.section("more-epochs")
    more_rows = {r["experiment"]: r for r in more.rows}
    assert more_rows["lr=0.05"]["runs"] == 1 and more_rows["lr=0.01"]["runs"] == 0
    assert more_rows["lr=0.05"]["test_acc_mean"] == pytest.approx(runs[2].test_acc)
    assert more_rows["lr=0.01"]["setting"] == "missing — run preset more-epochs"
    assert set(more.figures) == {"loss", "accuracy"} and not more.figures["accuracy"].layout.shapes  # no study number

    for key in ("lr-grid", "step-grid", "retrain", "transfer", "freezing", "augmentation", "architectures",
                "best-offline"):
        section = report.section(key)
        assert section.missing and not section.figures, key
    assert report.section("retrain").message.startswith("missing — run preset retrain")
    # Without torchvision's ImageNet files on this machine, rows that need them say which file.
    from caltech_core.nets import models
    from caltech_core.nets.architectures import get_spec

    for key, arch in (("transfer", "alexnet"), ("architectures", "resnet50")):
        if not models.weights_status(arch).available:
            file = get_spec(arch).weights.filename
            message = report.section(key).message
            assert message.startswith("not run: needs ") and f"{file} (download)" in message
            assert any(r["setting"] == f"not run: needs {file} (download)" for r in report.section(key).rows)
    arch_rows = {r["experiment"]: r for r in report.section("architectures").rows}
    assert arch_rows["resnet50"]["test (study)"] == "95.89%" and arch_rows["resnet50"]["test verdict"] == "not run"
    assert arch_rows["efficientnet_lite0"]["test (study)"] == "—"
    freezing = {r["experiment"]: r for r in report.section("freezing").rows}
    assert (freezing["conv only"]["val (study)"], freezing["conv only"]["test (study)"]) == ("34.62%", "33.98%")
    assert set(report.missing_presets) == {
        "lr-grid", "step-grid", "retrain", "transfer", "freezing", "augmentation", "architectures", "best-offline"}

    # Table 1 beside the study's split; the summary counts the experiments' numbers apart from these dataset facts.
    table1 = {r["split"]: r for r in report.section("table1").rows}
    assert table1["train"]["study"] == 2892 and table1["train"]["verdict"] == "lower"  # 3 classes here
    summary = report.summary
    assert summary["numbers_total"] == 24 == sum(summary["numbers"].values())
    assert summary["numbers"]["not run"] == 24 - 2  # the baseline's two numbers have runs, at other settings
    assert summary["numbers"]["other setting"] == 2
    assert summary["dataset_total"] == 4 and summary["dataset"]["lower"] == 4  # 3 classes, 3 small splits
    assert summary["findings_total"] == 7 and summary["runs"] == 3
    ended = sum(r.finished - r.started for r in runs)
    assert summary["compute_seconds"] == pytest.approx(ended) and ended > 0


def test_summary_is_plain_json(report: Report) -> None:
    summary = report_summary(report)
    again = json.loads(json.dumps(summary, allow_nan=False))
    assert [s["key"] for s in again["sections"]][:3] == ["table1", "figure2", "baseline"]
    assert again["sections"][-1]["key"] == "findings"
    assert "architectures" in again["missing_presets"]
    assert again["summary"]["numbers"] == report.summary["numbers"] and "compute_seconds" in again["summary"]


def test_export_writes_markdown_and_linked_figures(report: Report, tmp_path: Path) -> None:
    md = export_markdown(report, tmp_path / "out", png=False)
    assert md == (tmp_path / "out" / "report.md").resolve()
    text = md.read_text()
    assert "## Table 1: Dataset split sizes" in text and "## Table 4: Architectures" in text
    assert "## Summary" in text and f"Of the study's {report.summary['numbers_total']} experiment numbers" in text
    assert "| experiment | runs | ours | study | verdict |" in text  # compact, then the details folded
    assert "<details><summary>Details</summary>" in text
    assert "| experiment | runs | val (ours) | val (study) | Δ val | val verdict |" in text
    assert "## Findings: " in text and "LR 0.1 diverges" in text
    assert "missing — run preset lr-grid" in text
    links = re.findall(r"\]\((figures/[^)]+)\)", text)
    assert links and all((md.parent / link).is_file() for link in links)
    html = (md.parent / "figures" / "Figure-2-figure2-histogram.html").read_text()
    assert 'src="plotly.min.js"' in html  # one shared, offline copy of plotly.js
    assert (md.parent / "figures" / "plotly.min.js").stat().st_size > 1_000_000


def test_export_png_or_says_why(report: Report, tmp_path: Path) -> None:
    md = export_markdown(report, tmp_path, png=None)
    text = md.read_text()
    htmls = sorted((tmp_path / "figures").glob("*.html"))
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    if pngs:
        assert len(pngs) == len(htmls)
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    else:
        assert "PNG figures unavailable here" in text


def test_export_zip_holds_the_bundle(report: Report) -> None:
    with zipfile.ZipFile(io.BytesIO(export_zip(report, png=False))) as zf:
        names = zf.namelist()
    assert "report.md" in names and "figures/plotly.min.js" in names
    assert all(not n.startswith(("/", "..")) for n in names)


def test_report_without_dataset_marks_table1_missing(tmp_path: Path) -> None:
    report = build_report(RunStore(tmp_path / "home"), tmp_path / "no-dataset-here")
    assert report.section("table1").missing and "dataset" in report.section("table1").message
    assert report.section("baseline").missing
    export_markdown(report, tmp_path / "out", png=False)  # an empty report still exports


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path", "..", ".hidden", "a/b\\c", "", "ü ñ *?"])
def test_export_names_cannot_escape_their_folder(name: str, tmp_path: Path) -> None:
    cleaned = safe_filename(name)
    assert cleaned and "/" not in cleaned and "\\" not in cleaned and not cleaned.startswith(".")
    path = safe_path(tmp_path, name, ".html")
    assert path.parent == tmp_path.resolve()


def test_format_pct() -> None:
    assert format_pct(None) == "—"
    assert format_pct(0.5) == "50.0%"
    assert format_pct(0.5, 0.012, 3) == "50.0 ± 1.2% (n=3)"


def _finished_run(store: RunStore, cfg: TrainConfig) -> int:
    """A finished run of `cfg` with one epoch: validation 20%, test 19%, final training loss 4.0."""
    run_id = store.create_run(cfg)
    store.add_epoch(run_id, {"epoch": 1, "train_loss": 4.0, "train_acc": 0.1, "val_loss": 3.9, "val_acc": 0.2,
                             "lr": 1e-3, "seconds": 1.0})
    store.set_results(run_id, {"best_val_acc": 0.2, "test_acc": 0.19})
    store.set_status(run_id, "finished")
    return run_id


def test_a_run_at_the_study_setting_counts_wherever_its_config_appears(tmp_path: Path) -> None:
    """Matching by configuration: an ungrouped baseline run also fills the LR grid's 1e-3 row."""
    store = RunStore(tmp_path / "home")
    _finished_run(store, PRESETS["baseline"].configs[0].replace(name="my own run", group="", seed=7))
    diverged = store.create_run(PRESETS["lr-grid"].configs[4])  # lr=0.1
    store.set_status(diverged, "diverged", "loss became nan")
    report = build_report(store, tmp_path / "no-dataset-here")
    (base_row,) = report.section("baseline").rows
    assert base_row["runs"] == 1 and base_row["setting"] == "study setting" and base_row["seeds"] == "7"
    assert base_row["test (ours)"] == "19.0%"
    # One run: its last epoch's 20.0% against the study's 9.2% is 10.8 points higher; its final loss 4.0 is
    # lower than 4.49.
    assert (base_row["Δ final val"], base_row["final val verdict"]) == ("+10.8 pts", "higher")
    assert (base_row["Δ final train loss"], base_row["final train loss verdict"]) == ("-0.49", "lower")
    figures = report.section("baseline").figures
    assert set(figures) == {"loss", "accuracy"}  # one run: its own curves, with the study's final values
    assert [s.y0 for s in figures["accuracy"].layout.shapes] == [pytest.approx(0.092)]
    assert [s.y0 for s in figures["loss"].layout.shapes] == [pytest.approx(4.49)]
    lr_rows = {r["experiment"]: r for r in report.section("lr-grid").rows}
    assert lr_rows["lr=0.001"]["runs"] == 1
    assert lr_rows["lr=0.1"]["runs"] == 0 and lr_rows["lr=0.1"]["statuses"] == "diverged 1"
    assert lr_rows["lr=0.1"]["setting"] == "no finished run"
    findings = {r["finding"]: r for r in report.section("findings").rows}
    assert findings["LR 0.1 diverges after a few epochs"]["verdict"] == "reproduced"
    assert "1 of 1 runs diverged" in findings["LR 0.1 diverges after a few epochs"]["evidence"]
    assert report.section("transfer").missing


def test_a_reduced_scale_run_fills_every_row_of_its_config_and_is_not_compared(tmp_path: Path) -> None:
    """The reduced protocol's baseline run is also the LR grid's LR 1e-3 (any group); its numbers are "other
    setting"; a run at the study's settings, once there, is the row's only run (never averaged with it)."""
    from caltech_core.study.experiments import REDUCED_CHANGES

    store = RunStore(tmp_path / "home")
    reduced = _finished_run(store, PRESETS["baseline"].configs[0].replace(**REDUCED_CHANGES))
    report = build_report(store, tmp_path / "no-dataset-here")
    (base_row,) = report.section("baseline").rows
    assert base_row["runs"] == 1 and base_row["setting"].startswith("differs from the study: batch_size 10")
    assert set(base_row["verdicts"].values()) == {"other setting"}
    assert base_row["final val (ours)"] == "20.0%" and base_row["final val (study)"] == "9.2%"
    lr_rows = {r["experiment"]: r for r in report.section("lr-grid").rows}
    assert lr_rows["lr=0.001"]["runs"] == 1 and lr_rows["lr=0.01"]["runs"] == 0
    assert report.summary["numbers"]["other setting"] == 2 and report.summary["numbers"]["higher"] == 0

    study_run = _finished_run(store, PRESETS["baseline"].configs[0].replace(seed=5))
    (base_row,) = build_report(store, tmp_path / "no-dataset-here").section("baseline").rows
    assert (base_row["runs"], base_row["seeds"], base_row["setting"]) == (1, "5", "study setting")
    assert base_row["final val verdict"] == "higher" and reduced != study_run


def test_study_values_beside_ours_in_bars_and_reference_lines() -> None:
    from caltech_core.study import charts

    fig = charts.accuracy_bar_figure(["all", "fc", "conv"], [0.81, None, 0.31], study=[0.8363, 0.8355, None])
    ours, study = fig.data
    assert (list(ours.x), list(study.x)) == (["all", "conv"], ["all", "fc"])
    assert list(study.y) == [0.8363, 0.8355] and study.name == "study"
    assert list(fig.layout.xaxis.categoryarray) == ["all", "fc", "conv"]  # member order, even where ours is missing
    lines = charts.with_reference_lines(charts.val_curves_figure({}), {"study a": 0.8254, "study b": 0.8234})
    assert [s.y0 for s in lines.layout.shapes] == [0.8254, 0.8234]
    assert [a.text for a in lines.layout.annotations] == ["study a", "study b"]


def test_speed_switches_do_not_make_a_run_differ_from_the_study(tmp_path: Path) -> None:
    """Regression: a compiled run (torch.compile) was reported as "differs from the study: compile True"."""
    store = RunStore(tmp_path / "home")
    base = PRESETS["baseline"].configs[0]
    _finished_run(store, base.replace(compile=True, amp=False, fast_path=False, device="cpu", seed=3))
    (row,) = build_report(store, tmp_path / "no-dataset-here").section("baseline").rows
    assert (row["runs"], row["setting"]) == (1, "study setting")


def test_every_config_field_is_declared_defining_or_not() -> None:
    """A new TrainConfig field fails here until matching.NON_DEFINING_FIELDS (or this list) declares it."""
    defining = {
        "arch", "pretrained", "train", "augment", "rotate_degrees", "image_size", "optimizer", "lr", "momentum",
        "weight_decay", "epochs", "step_size", "gamma", "lr_schedule", "warmup_epochs", "label_smoothing",
        "batch_size", "classes", "class_names", "max_per_class", "retrain_on_train_val", "train_fraction",
        "per_class_train", "dataset", "marks_on_test",
        "int8_features",  # other features, other numbers (within 0.1 point for best-offline: docs/benchmarks.md)
    }
    assert set(NON_DEFINING_FIELDS) <= set(SETTINGS)
    assert set(SETTINGS) - set(NON_DEFINING_FIELDS) == defining


def test_section_titles_are_their_presets_titles(tmp_path: Path) -> None:
    report = build_report(RunStore(tmp_path / "home"), tmp_path / "no-dataset-here")
    for preset, _ in SECTIONS:
        section = report.section(preset)
        assert (section.title, section.item) == (PRESETS[preset].title, PRESETS[preset].study_ref.item)


def test_the_loss_tolerance_is_stated_as_0_05(tmp_path: Path) -> None:
    report = build_report(RunStore(tmp_path / "home"), tmp_path / "no-dataset-here")
    (note,) = [n for n in report.section("baseline").notes if n.startswith("Ours:")]
    assert "within 1.5 points (0.05 for the final training loss) of a single run" in note
    assert all("0.05" not in n for n in report.section("freezing").notes)  # no loss number there
    md = export_markdown(report, tmp_path / "out", png=False).read_text(encoding="utf-8")
    assert "(0.05 for the final training loss)" in md
