"""The Sweeps page: the builder refuses a bad spec naming the parameter, stores a good one and starts it; the view
shows a finished sweep's trials, curves, parallel coordinates and the retrain button. The Train page's range test."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from apptest_pages import open_page, page_texts, until_background_done

from caltech_core import layout
from caltech_core.runs.manager import get_manager
from caltech_core.sweeps import driver
from caltech_core.sweeps import sweep as sweeps

SPEC = {"method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
        "parameters": {"lr": {"values": [0.001, 0.003]}},
        "base": {"arch": "mobilenet_v3_small", "image_size": 64, "epochs": 1, "batch_size": 8, "device": "cpu"}}


@pytest.fixture
def with_data(mini_root: Path, studio_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    yield studio_home
    get_manager(studio_home).shutdown(wait=True)


def test_builder_refuses_a_bad_spec_and_stores_nothing(with_data: Path) -> None:
    at = open_page("sweeps")
    at.text_area(key="sweep_spec").set_value("method: random\nrun_cap: 2\nparameters:\n  lrr: {values: [0.1]}\n")
    at.button(key="sweep_start").click().run()
    assert not at.exception, at.exception
    assert "parameters.lrr: unknown setting" in page_texts(at)
    assert not layout.sweeps_dir(with_data).exists()
    at.text_area(key="sweep_spec").set_value("method: grid\nparameters:\n  lr: {min: 0.1, max: 0.01}\n")
    at.button(key="sweep_start").click().run()
    assert "parameters.lr: min 0.1 is greater than max 0.01" in page_texts(at)


def test_view_shows_a_finished_sweep(with_data: Path) -> None:
    sweep = sweeps.create_sweep(with_data, SPEC)
    assert driver.SweepDriver(sweep, get_manager(with_data), poll=0.1).run() == "finished"
    # The moment the browser journey caught: every trial told, the state file not yet "finished" and the
    # driver's thread still alive. The page reads the status from the trials: finished, no Stop button.
    sweep.set_state(status="running")
    alive, release = _driver_thread(sweep)
    try:
        at = open_page("sweeps")
        assert not at.exception, at.exception
        assert _picker(at).options == [f"#{sweep.id} {sweep.spec.title} (finished)"]
        assert "· finished" in page_texts(at)
        assert not [b for b in at.button if b.key in ("sweep_stop", "sweep_resume")]
    finally:
        release.set()
        alive.join()
    table = at.dataframe[0].value
    assert sorted(table["lr"]) == [0.001, 0.003] and set(table["state"]) == {"complete"}
    charts = {c.proto.id for c in at.get("plotly_chart")}
    assert any("sweep_parcoords" in c for c in charts) and any("sweep_curves" in c for c in charts)
    assert "Best: trial" in page_texts(at)
    assert at.button(key="sweep_retrain")


def _tiny_train_form(at) -> None:
    """The Train form set to a tiny run (the sweep builder's base)."""
    at.session_state["f_arch"] = "mobilenet_v3_small"
    at.run()
    for key, value in {"f_image_size": 64, "f_classes": 2, "f_batch_size": 4, "f_epochs": 1, "f_device": "cpu",
                       "f_max_per_class": 4}.items():
        at.session_state[key] = value
    at.run()


def test_train_page_sweep_builder(with_data: Path, wait_until) -> None:
    """Bad input names the parameter and queues nothing; a 2-point grid shows its count, its YAML, and starts on
    the Sweeps page with both trials run."""
    at = open_page("train")
    _tiny_train_form(at)
    at.multiselect(key="sw_vary").set_value(["lr"]).run()
    at.text_input(key="sw_p_lr_values").set_value(" , ").run()
    assert "**parameters.lr**: values must be a non-empty list" in page_texts(at)
    assert at.button(key="sw_start").disabled
    at.radio(key="sw_p_lr_how").set_value("range").run()
    at.number_input(key="sw_p_lr_min").set_value(0.5).run()
    assert "**parameters.lr**: min 0.5 is greater than max 0.01" in page_texts(at)
    at.number_input(key="sw_p_lr_min").set_value(0.0).run()
    assert "**parameters.lr**: a log range must stay above 0 (min is 0)" in page_texts(at)
    assert at.button(key="sw_start").disabled and not layout.sweeps_dir(with_data).exists()

    at.radio(key="sw_p_lr_how").set_value("values").run()
    at.text_input(key="sw_p_lr_values").set_value("0.001, 0.003").run()
    assert not at.exception, at.exception
    assert "Will queue **2 trials**." in page_texts(at)
    assert "lr:\n    values:\n    - 0.001\n    - 0.003" in at.code[-1].value
    at.button(key="sw_start").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Sweeps"
    (sweep,) = sweeps.list_sweeps(with_data)
    assert _picker(at).value == sweep.id
    assert sweep.spec.base.arch == "mobilenet_v3_small" and sweep.spec.trial_cap() == 2
    wait_until(lambda: sweep.status() == "finished" and not driver.driving(sweep))
    runs = get_manager(with_data).store.list_runs(group=sweep.group)
    assert sorted(r.config.lr for r in runs) == [0.001, 0.003] and {str(r.status) for r in runs} == {"finished"}


def _picker(at):
    return next(s for s in at.selectbox if s.label == "Sweep")


def _driver_thread(sweep: sweeps.Sweep) -> tuple[threading.Thread, threading.Event]:
    """A live thread registered as this process's driver of `sweep` (what `driver.driving` looks at)."""
    release = threading.Event()
    alive = threading.Thread(target=release.wait, daemon=True)
    alive.start()
    driver._DRIVERS[(str(sweep.home), sweep.id)] = (alive, release)
    return alive, release


def test_train_page_finds_an_lr(with_data: Path) -> None:
    at = open_page("train")
    _tiny_train_form(at)
    at.number_input(key="lrfind_steps").set_value(30)  # the mini tree's 8 images make a pass of 2 batches
    at.button(key="lrfind_run").click().run()
    assert not at.exception, at.exception
    # The test runs on the background mechanism: the page comes back at once with a progress bar, not the result.
    assert at.get("progress") and "Suggested:" not in page_texts(at)
    until_background_done(at, timeout=300)
    assert "Suggested:" in page_texts(at)
    at.button(key="lrfind_use").click().run()
    assert 1e-7 <= at.session_state["f_lr"] <= 10
