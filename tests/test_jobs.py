"""The job manager with real (tiny) training runs: FIFO, concurrent readers, cancel, faults, kill -9 + resume; how
`run_job` ends a failed run's progress and where a resume starts."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from caltech_core import layout
from caltech_core.config import ConfigError, TrainConfig
from caltech_core.runs.job import run_job
from caltech_core.runs.manager import JobManager, get_manager
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.status import Phase, Progress
from caltech_core.training import engine

REPO = Path(__file__).resolve().parent.parent
EPOCH_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # Tiny batches gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_config: Callable[..., TrainConfig]) -> Callable[..., TrainConfig]:
    """The tiny config on two real classes of the mini dataset."""
    return functools.partial(tiny_config, classes=2)


def test_two_submitters_run_in_fifo_order_while_readers_poll(
    tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],
) -> None:
    store = RunStore(tmp_path)
    manager = ThreadJobManager(store, data_root=mini_root)
    barrier = threading.Barrier(2)
    submitted: dict[str, int] = {}

    def submit(name: str) -> None:
        barrier.wait()  # both submit at the same moment
        submitted[name] = manager.submit(tiny(name=name, epochs=1, batch_size=4))

    submitters = [threading.Thread(target=submit, args=(name,)) for name in ("a", "b")]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    first, second = sorted(submitted.values())

    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        own = RunStore(tmp_path)  # a reader with its own connection, like the dashboard
        try:
            while not stop.is_set():
                for run in own.list_runs():
                    epochs = own.epochs(run.id)  # read after the run row: a "finished" run must be complete
                    batches = own.batches(run.id)
                    if [e["epoch"] for e in epochs] != list(range(1, len(epochs) + 1)):
                        problems.append(f"epochs of run {run.id} not consecutive: {epochs}")
                    if any(e[k] is None for e in epochs for k in EPOCH_FIELDS):
                        problems.append(f"half-written epoch row in run {run.id}: {epochs}")
                    for e in epochs:  # batch rows of an epoch land before its epoch row
                        if len([b for b in batches if b["epoch"] == e["epoch"]]) != 2:
                            problems.append(f"run {run.id} epoch {e['epoch']} has an epoch row but not its batches")
                    if run.status == "finished" and (len(epochs) != 1 or run.test_acc is None):
                        problems.append(f"run {run.id} finished without its epochs or results")
                    reads[0] += 1
                time.sleep(0.005)  # poll like a dashboard, not a busy loop stealing the CPU
        except Exception as exc:
            problems.append(f"reader raised {exc!r}")

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    phases: set[str] = set()
    fractions: list[float] = []
    while manager.current() is not None or manager.queued():
        p = manager.progress(first)
        if p is not None:
            phases.add(p.phase)
            fractions.append(p.fraction)
            assert 0.0 <= p.fraction <= 1.0 and p.epochs == 1
        time.sleep(0.02)
    assert manager.wait(timeout=300)
    stop.set()
    for t in readers:
        t.join()

    assert problems == []
    assert reads[0] > 10
    a, b = store.get_run(first), store.get_run(second)
    assert a.status == b.status == "finished"
    assert a.started <= a.finished <= b.started  # one at a time, in submission order
    assert [e["epoch"] for e in store.epochs(first)] == [1]
    assert a.results["classes"] == ["accordion", "dalmatian"] and a.best_val_acc is not None
    assert "training" in phases and max(fractions) > 0
    assert manager.progress(first) is None
    manager.shutdown(wait=True)


def test_cancel_queued_and_running_then_resume(
    tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig], wait_until: Callable[..., None],
) -> None:
    store = RunStore(tmp_path)
    manager = ThreadJobManager(store, data_root=mini_root)
    epochs = 20  # far more than a cancel takes: a MobileNetV3-Small epoch here is a fraction of a second
    first = manager.submit(tiny(name="long", epochs=epochs, batch_size=2))
    second = manager.submit(tiny(name="waiting"))
    wait_until(lambda: manager.current() == first)
    assert manager.queued() == [second]
    assert manager.progress(second).phase == "queued"

    assert manager.cancel(second)
    assert manager.queued() == []
    assert store.get_run(second).status == "cancelled" and store.get_run(second).started is None

    # Cancel in the middle of a later epoch than the first.
    wait_until(lambda: (p := manager.progress(first)) is not None and p.epoch >= 1 and 1 <= p.batch < p.batches)
    assert manager.cancel(first)
    assert manager.wait(first, timeout=120)
    run = store.get_run(first)
    assert run.status == "cancelled"
    kept = store.epochs(first)
    assert 1 <= len(kept) < epochs
    assert all(e[k] is not None for e in kept for k in EPOCH_FIELDS)
    assert manager.cancel(first) is False  # nothing to cancel any more

    with pytest.raises(ValueError, match="only cancelled or interrupted"):
        manager.resume(store.create_run(tiny()))  # a queued-in-store run is not resumable
    manager.resume(first)
    assert manager.wait(first, timeout=300)
    run = store.get_run(first)
    assert run.status == "finished", run.error
    assert [e["epoch"] for e in store.epochs(first)] == list(range(1, epochs + 1))
    per_epoch = [(b["epoch"], b["batch"]) for b in store.batches(first)]
    assert per_epoch == [(e, b) for e in range(1, epochs + 1) for b in (1, 2, 3, 4)]  # 8 train images / batch 2
    manager.shutdown(wait=True)


def test_failures_are_recorded_and_the_queue_goes_on(
    tmp_path: Path, mini_root: Path, caplog: pytest.LogCaptureFixture, tiny: Callable[..., TrainConfig],
) -> None:
    def runner(cfg: TrainConfig, data: Any, callbacks: Any, **kwargs: Any) -> engine.RunResult:
        if cfg.name == "boom":
            raise ValueError("boom in the training loop")
        if cfg.name == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return engine.train(cfg, data, callbacks, **kwargs)

    store = RunStore(tmp_path)
    manager = ThreadJobManager(store, data_root=mini_root, runner=runner)
    with pytest.raises(ConfigError, match="lr"):
        manager.submit({"lr": -1.0})
    with caplog.at_level(logging.ERROR, logger="caltech_core.runs.job"):
        boom = manager.submit(tiny(name="boom"))
        oom = manager.submit(tiny(name="oom", batch_size=8))
        ok = manager.submit(tiny(name="ok"))
        assert manager.wait(timeout=300)

    assert store.get_run(boom).status == "failed"
    assert store.get_run(boom).error == "ValueError: boom in the training loop"
    oom_run = store.get_run(oom)
    assert oom_run.status == "failed" and "reduce the batch size" in oom_run.error and "8" in oom_run.error
    assert store.get_run(ok).status == "finished"
    # The full traceback goes to the log.
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)
    assert manager.alive
    manager.shutdown(wait=True)
    assert not manager.alive
    with pytest.raises(RuntimeError, match="shut down"):
        manager.submit(tiny())


def test_get_manager_is_one_per_home(tmp_path: Path) -> None:
    got: list[JobManager] = []
    threads = [threading.Thread(target=lambda: got.append(get_manager(tmp_path / "x"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in got}) == 1
    other = get_manager(tmp_path / "y")
    assert other is not got[0] and other.store.home == (tmp_path / "y").resolve()
    for manager in (got[0], other):
        manager.shutdown(wait=True)
    assert get_manager(tmp_path / "x") is not got[0]  # a shut-down manager is replaced
    get_manager(tmp_path / "x").shutdown(wait=True)


def test_get_manager_is_one_per_dataset_root_and_closing_means_not_alive(tmp_path: Path, mini_root: Path) -> None:
    default = get_manager(tmp_path / "x")
    with_root = get_manager(tmp_path / "x", data_root=mini_root)
    assert with_root is not default and with_root.data_root == mini_root.resolve()
    assert get_manager(tmp_path / "x", data_root=str(mini_root)) is with_root
    with_root.shutdown()  # not waiting: it takes no new run from now on, whatever its thread still does
    assert not with_root.alive and get_manager(tmp_path / "x", data_root=mini_root) is not with_root
    for manager in (default, with_root, get_manager(tmp_path / "x", data_root=mini_root)):
        manager.shutdown(wait=True)


def test_a_failed_run_ends_in_the_failed_phase_where_it_stopped(
    tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],
) -> None:
    def runner(cfg: TrainConfig, data: Any, callbacks: Any, **kwargs: Any) -> None:
        callbacks.on_phase(Phase.TRAINING, 0, cfg.epochs)
        callbacks.on_batch(1, 1, 4, 0.5)
        raise ValueError("boom after the first batch")

    store = RunStore(tmp_path)
    run_id = store.create_run(tiny(epochs=2))
    seen: list[Progress] = []
    assert run_job(store, run_id, data_root=mini_root, runner=runner, on_progress=seen.append) == "failed"
    assert [p.phase for p in seen[:2]] == [Phase.LOADING, Phase.PREPARING]
    last = seen[-1]
    assert last.phase is Phase.FAILED and last.phase.label == "failed"
    assert last.fraction == pytest.approx(1 / 8) and last.eta_seconds is None  # 1 of 4 batches of 2 epochs
    assert store.get_run(run_id).error == "ValueError: boom after the first batch"


def test_resume_drops_the_rows_past_the_epoch_last_pt_holds(
    tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],
) -> None:
    resumed: list[bool] = []

    def runner(cfg: TrainConfig, data: Any, callbacks: Any, *, resume: bool, **kwargs: Any) -> SimpleNamespace:
        resumed.append(resume)
        if resume:
            callbacks.on_resume(2)  # what the engine read from last.pt
        return SimpleNamespace(status="cancelled", error=None, epochs=[])

    store = RunStore(tmp_path)
    run_id = store.create_run(tiny(epochs=5))
    for epoch in (1, 2, 3):
        store.add_epoch(run_id, {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
                                 "val_acc": 0.5, "lr": 0.01, "seconds": 1.0})
    last = layout.last(store.run_dir(run_id))
    last.write_bytes(b"read by the engine, not by run_job")
    store.set_checkpoint(run_id, 1, last)  # the store's record lags the file: the file decides
    store.set_status(run_id, "cancelled")
    seen: list[Progress] = []
    assert run_job(store, run_id, data_root=mini_root, runner=runner, resume=True, on_progress=seen.append) == "cancelled"
    assert resumed == [True] and [e["epoch"] for e in store.epochs(run_id)] == [1, 2]  # epoch 3 is trained again
    # Progress counts from the recorded epoch until the engine has read the file's, then from that one.
    assert [p.epoch for p in seen if p.phase is Phase.PREPARING] == [1] and seen[-1].epoch == 2

    last.unlink()  # the checkpoint is gone: the run starts over, without the rows of the lost attempt
    assert run_job(store, run_id, data_root=mini_root, runner=runner, resume=True) == "cancelled"
    assert resumed == [True, False] and store.epochs(run_id) == []


class _Killed(BaseException):
    """The process dying at this point: not an exception the engine or `run_job` turns into a status."""


def test_a_kill_between_last_pt_and_its_record_resumes_without_a_gap(
    tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],
) -> None:
    # Seen once in a Ray test: the worker died after last.pt held epoch 2 and before the store recorded it, and the
    # resume (then trusting the record, epoch 1) dropped epoch 2's rows while the engine went on at epoch 3.
    runner = functools.partial(engine.train, checkpoint_seconds=0)  # last.pt after every epoch

    def dies_before_recording_epoch_2(cfg: TrainConfig, data: Any, callbacks: engine.Callbacks,
                                      **kwargs: Any) -> Any:
        record = callbacks.on_checkpoint

        def on_checkpoint(epoch: int, path: Path) -> None:
            if epoch == 2:
                raise _Killed
            record(epoch, path)

        return runner(cfg, data, dataclasses.replace(callbacks, on_checkpoint=on_checkpoint), **kwargs)

    store = RunStore(tmp_path)
    reference = store.create_run(tiny(name="reference", epochs=4, batch_size=4))
    assert run_job(store, reference, data_root=mini_root, runner=runner) == "finished"
    killed = store.create_run(tiny(name="killed", epochs=4, batch_size=4))
    with pytest.raises(_Killed):
        run_job(store, killed, data_root=mini_root, runner=dies_before_recording_epoch_2)
    assert store.mark_interrupted(only_dead=False) == [killed]
    assert store.get_run(killed).checkpoint_epoch == 1  # the record lags: last.pt holds epoch 2

    assert run_job(store, killed, data_root=mini_root, runner=runner, resume=True) == "finished"
    pairs = [(b["epoch"], b["batch"]) for b in store.batches(killed)]
    assert pairs == [(b["epoch"], b["batch"]) for b in store.batches(reference)]
    assert [e["epoch"] for e in store.epochs(killed)] == [1, 2, 3, 4]
    curves = [[e[k] for k in EPOCH_FIELDS if k != "seconds"] for e in store.epochs(killed)]
    assert curves == [[e[k] for k in EPOCH_FIELDS if k != "seconds"] for e in store.epochs(reference)]
    assert store.get_run(killed).test_acc == store.get_run(reference).test_acc


def test_kill_9_then_resume_loses_and_duplicates_nothing(
    tmp_path: Path, mini_root: Path, wait_until: Callable[..., None],
) -> None:
    home = tmp_path / "home"
    cmd = [
        sys.executable, "-m", "caltech_core", "train", "--root", str(mini_root), "--store", str(home),
        "--arch", "mobilenet_v3_small", "--image-size", "64", "--epochs", "12", "--batch-size", "4", "--classes", "2",
        "--device", "cpu", "--name", "killed",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with (tmp_path / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            wait_until(lambda: home.joinpath("runs.sqlite").exists(), timeout=120)
            store = RunStore(home)
            wait_until(lambda: store.list_runs() and store.get_run(store.list_runs()[0].id).epochs_done >= 1,
                       timeout=240)
            assert proc.poll() is None, "the run finished before it could be killed"
        finally:
            proc.kill()  # SIGKILL: no clean-up of any kind
            proc.wait()
    run_id = store.list_runs()[0].id
    assert store.get_run(run_id).status == "running"  # what a dead process leaves behind

    manager = ThreadJobManager(store, data_root=mini_root)
    assert manager.interrupted == [run_id]
    assert store.get_run(run_id).status == "interrupted"
    manager.resume(run_id)
    assert manager.wait(run_id, timeout=300)
    run = store.get_run(run_id)
    assert run.status == "finished", run.error
    assert [e["epoch"] for e in store.epochs(run_id)] == list(range(1, 13))
    pairs = [(b["epoch"], b["batch"]) for b in store.batches(run_id)]
    assert pairs == [(e, b) for e in range(1, 13) for b in (1, 2)]
    assert run.test_acc is not None
    manager.shutdown(wait=True)
