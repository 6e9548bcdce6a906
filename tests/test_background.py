"""Background work: the registry (once per key, progress, failure and retry, results kept, lower priority) and
the dashboard's `background(...)` helper through AppTest (running, failed with Retry, done)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from apptest_pages import open_page, until_background_done
from streamlit.testing.v1 import AppTest

from caltech_core.background import TaskRegistry, tasks
from caltech_core.data import dataset, scan
from caltech_core.files import file_lock
from caltech_core.runs.store import RunStore

GATE_SECONDS = 30  # a gated work function gives up after this, so a failing test never leaves a thread behind


def _gated(gate: threading.Event, calls: list[str], result: Any = "ok", steps: int = 10) -> Callable[..., Any]:
    def work(progress) -> Any:
        calls.append(threading.current_thread().name)
        progress(3, steps)
        if not gate.wait(GATE_SECONDS):
            raise TimeoutError("the test never opened the gate")
        progress(steps, steps)
        return result
    return work


def test_two_submitters_start_the_work_once_and_see_its_progress(wait_until) -> None:
    registry, gate, calls = TaskRegistry(), threading.Event(), []
    states = []
    submitters = [threading.Thread(target=lambda: states.append(
        registry.submit("scan", _gated(gate, calls), label="Checking images"))) for _ in range(2)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    assert [s.status for s in states] == ["running", "running"]
    wait_until(lambda: registry.state("scan").done == 3, timeout=10)
    now = registry.state("scan")
    assert (now.status, now.done, now.total, now.label, now.fraction) == ("running", 3, 10, "Checking images", 0.3)
    assert now.seconds_left() is not None and now.seconds_left() >= 0
    gate.set()
    wait_until(lambda: registry.state("scan").status == "done", timeout=10)
    assert calls == ["background:scan"]
    done = registry.state("scan")
    assert (done.result, done.done, done.total, done.error) == ("ok", 10, 10, "")
    assert done.ended >= done.started > 0
    # Kept: asking again returns the result without running the work again.
    again = registry.submit("scan", _gated(gate, calls, result="second"), label="Checking images")
    assert (again.status, again.result, len(calls)) == ("done", "ok", 1)


def test_a_failure_is_kept_with_its_message_and_a_resubmit_retries(wait_until) -> None:
    registry = TaskRegistry()

    def broken(progress) -> None:
        progress(1, 4)
        raise OSError("disk full")

    registry.submit("cache", broken, label="Caching images")
    wait_until(lambda: registry.state("cache").status == "failed", timeout=10)
    failed = registry.state("cache")
    assert (failed.error, failed.result, failed.done, failed.total) == ("OSError: disk full", None, 1, 4)
    assert registry.state("other").status == "missing"
    retry = registry.submit("cache", lambda progress: 42, label="Caching images")
    assert retry.status == "running" and retry.error == ""
    wait_until(lambda: registry.state("cache").status == "done", timeout=10)
    assert registry.state("cache").result == 42


def test_work_threads_run_at_a_lower_priority_and_old_results_are_dropped(wait_until) -> None:
    registry = TaskRegistry(keep_done=2)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def nice_of_this_thread_and_a_child(progress) -> tuple[int, int]:
        child: list[int] = []
        t = threading.Thread(target=lambda: child.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        t.start()
        t.join()
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), child[0]

    registry.submit("nice", nice_of_this_thread_and_a_child, label="nice")
    wait_until(lambda: registry.state("nice").status == "done", timeout=10)
    assert registry.state("nice").result == (min(19, own + 10),) * 2
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the caller's thread is untouched
    for key in ("a", "b", "c"):
        registry.submit(key, lambda progress, key=key: key, label=key)
        wait_until(lambda key=key: registry.state(key).status == "done", timeout=10)
    assert [registry.state(k).status for k in ("nice", "a", "b", "c")] == ["missing", "missing", "done", "done"]


# ---- the dashboard helper, through AppTest ---------------------------------------------------------------------

PAGE = """
import streamlit as st
from dashboard._shared import background
result = background(st.query_params["key"], lambda progress: "fresh result", "Checking images")
st.write(f"result: {result}")
"""


def _page(key: str) -> AppTest:
    at = AppTest.from_string(PAGE, default_timeout=30)
    at.query_params["key"] = key
    return at.run()


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    # The dashboard uses the process-wide registry: a key per test keeps the tests apart.
    return f"apptest-{request.node.name}"


def test_page_shows_a_progress_bar_then_the_result(key: str, wait_until) -> None:
    gate, calls = threading.Event(), []
    tasks().submit(key, _gated(gate, calls, result="from the work"), label="Checking images")
    wait_until(lambda: tasks().state(key).done == 3, timeout=10)
    at = _page(key)
    assert not at.exception
    bars = at.get("progress")
    assert len(bars) == 1
    assert bars[0].proto.value == 30 and bars[0].proto.text.startswith("Checking images: 3 of 10")
    assert "result: None" in [m.value for m in at.markdown]
    gate.set()
    wait_until(lambda: tasks().state(key).status == "done", timeout=10)
    at.run()
    assert not at.get("progress")
    assert "result: from the work" in [m.value for m in at.markdown]
    assert calls == [f"background:{key}"]  # the page's own function never ran: the work was already under way


def test_page_shows_the_error_and_retry_runs_the_work_again(key: str, wait_until) -> None:
    def broken(progress) -> None:
        raise ValueError("train.txt names no images")

    tasks().submit(key, broken, label="Checking images")
    wait_until(lambda: tasks().state(key).status == "failed", timeout=10)
    at = _page(key)
    assert [e.value for e in at.error] == ["Checking images failed: ValueError: train.txt names no images"]
    assert "result: None" in [m.value for m in at.markdown]
    at.run()  # a rerun does not retry by itself
    assert tasks().state(key).status == "failed"
    at.button(key=f"background-retry-{key}").click().run()
    wait_until(lambda: tasks().state(key).status == "done", timeout=10)
    at.run()
    assert not at.error
    assert "result: fresh result" in [m.value for m in at.markdown]


def test_page_with_nothing_submitted_starts_the_work(key: str, wait_until) -> None:
    at = _page(key)
    assert tasks().state(key).status in ("running", "done")
    wait_until(lambda: tasks().state(key).status == "done", timeout=10)
    at.run()
    assert "result: fresh result" in [m.value for m in at.markdown]


# ---- the unreadable-image scan: checkpoints, a kill, the Data page -------------------------------------------

KILLED_SCAN = """
import sys
from pathlib import Path
from caltech_core.data import dataset, scan
scan.CHECKPOINT_FILES = 20  # small chunks: several whole checkpoints before the kill
paths = dataset.load_splits(sys.argv[1]).all_paths()[:200]
def progress(done, total):
    print(done, flush=True)
    if done == 70:  # mid-chunk, after three whole checkpoints: wait here for the kill
        sys.stdin.readline()
scan.scan_unreadable(Path(sys.argv[1]), paths, Path(sys.argv[2]), progress)
"""


def test_a_scan_killed_midway_leaves_a_whole_cache_and_the_next_goes_on_from_it(caltech_root, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "CALTECH_STUDIO_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", KILLED_SCAN, str(caltech_root), str(cache_dir)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    for line in child.stdout:
        if int(line) == 70:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    file = scan.scan_file(caltech_root, cache_dir)
    kept = json.loads(file.read_text())["files"]  # whole JSON, never half a file
    assert len(kept) == 60  # the three chunks it had finished

    paths = dataset.load_splits(caltech_root).all_paths()[:200]
    decoded: list[int] = []
    assert scan.scan_unreadable(caltech_root, paths, cache_dir, lambda d, t: decoded.append(t)) == []
    assert set(decoded) == {200 - len(kept)}  # only the files the killed scan had not checked
    assert len(json.loads(file.read_text())["files"]) == 200
    assert sorted(p.name for p in cache_dir.iterdir()) == [file.name]  # no temporary file, no lock file left


def test_data_page_draws_the_dataset_first_and_the_scan_result_later(
    mini_root, studio_home, tmp_path, monkeypatch: pytest.MonkeyPatch, wait_until,
) -> None:
    broken = tmp_path / "broken_copy"  # the mini dataset, copied, with one truncated image
    shutil.copytree(mini_root, broken, symlinks=False)
    victim = sorted((broken / "101_ObjectCategories" / "pizza").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:2000])
    monkeypatch.setenv("CALTECH101_ROOT", str(broken))
    file = scan.scan_file(broken, RunStore(studio_home).cache_dir)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(file.with_name(file.name + ".lock")):  # another process scanning: ours waits behind it
        at = open_page("data")
        assert not at.exception
        split_table = at.dataframe[0].value
        assert dict(zip(split_table["split"], split_table["images"], strict=True)) == {"train": 12, "val": 12,
                                                                                          "test": 12}
        assert len(at.image) == 4 and at.get("plotly_chart")  # the samples and the histogram are there already
        bars = at.get("progress")
        assert len(bars) == 1 and bars[0].proto.text.startswith("Checking every image decodes… (")
        at.run()
        assert len(at.get("progress")) == 1  # still waiting: a rerun neither blocks nor starts a second scan
    wait_until(lambda: not at.run().get("progress"), timeout=60)
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert "1 image(s) cannot be decoded and are left out of training." in warnings
    assert str(victim.resolve()) in list(at.dataframe[1].value["file"])


def test_errors_gallery_decodes_a_missing_image_cache_in_the_background(
    finished_home, mini_root, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from caltech_core import layout
    from caltech_core.training import predictions

    monkeypatch.setenv("CALTECH_STUDIO_HOME", str(finished_home))
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    store = RunStore(finished_home)
    run = store.list_runs()[0]
    images = layout.images_dir(store.cache_dir, run.config.resize_size)
    shutil.rmtree(images)  # pruned (or trained elsewhere): the gallery must decode the split's images first
    images.mkdir()
    results = predictions.load_run(store, run.id, "test")
    with file_lock(images / ".lock"):  # another build under way: ours waits behind it
        at = open_page("errors", run=str(run.id))
        assert not at.exception, at.exception
        assert {m.label: m.value for m in at.metric}["Images"] == "12"  # the summary does not wait
        assert at.get("plotly_chart")  # nor the confusion matrix
        bars = at.get("progress")
        assert len(bars) == 1 and bars[0].proto.text.startswith("Decoding the split's images… (")
        assert not at.image
    at.radio(key="err_view").set_value("Most confident mistakes")
    until_background_done(at.run())
    assert not at.exception, at.exception
    assert len(at.image) == min(12, int((~results.correct).sum()))
    assert (images / "index.json").is_file()
