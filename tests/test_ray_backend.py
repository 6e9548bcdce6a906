"""The Ray backend on a local Ray cluster started once for this module (2 CPUs, no GPU, 127.0.0.1; runs holding a
GPU: tests/test_ray_gpu.py, on a cluster of its own with fake GPUs): runs side by side with every row once,
cancel, a writing run keeping its CPUs from a waiting task, a killed worker then resume with identical curves, a
worker without the dataset, a dead driver's rows drained by the next one, the backend choice, and a sweep's trials
side by side on a registered folder dataset."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from caltech_core import settings
from caltech_core.config import TrainConfig
from caltech_core.runs import raybackend
from caltech_core.runs.backend import LOCAL_CLUSTER
from caltech_core.runs.manager import get_manager
from caltech_core.runs.raybackend import RayJobManager
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.status import RunStatus
from caltech_core.training import engine

REPO = Path(__file__).resolve().parent.parent
CURVE_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


RAY_GPUS = 0  # fake GPUs of this module's cluster; with any, every run asks for (and gets) one


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Any:
    """One local Ray cluster per test module: 2 CPUs and the module's `RAY_GPUS` fake GPUs."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        # Workers inherit the environment Ray starts with: no downloads, one thread per run.
        mp.setenv("CALTECH_STUDIO_OFFLINE", "1")
        mp.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, num_gpus=request.module.RAY_GPUS, include_dashboard=False,
                 namespace=raybackend.NAMESPACE, log_to_driver=False, object_store_memory=80 * 2**20,
                 _node_ip_address="127.0.0.1")
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tiny_config: Callable[..., TrainConfig]) -> Callable[..., TrainConfig]:
    """The tiny config on two real classes of the mini dataset (8 training images): two epochs of 4 batches."""
    return functools.partial(tiny_config, epochs=2, batch_size=2, classes=2)


def two_at_once(gate: Path) -> Callable[..., engine.RunResult]:
    """A runner: `engine.train`, once a second run has got this far too. Each run touches a file named after it in
    the new folder `gate` and trains only when two are there, so two runs train side by side however long a cold
    Ray worker takes to start (it imports torch first: seconds, more under load), and the runs can be short.
    The file then holds the run's span in the runner, "start end" in seconds since the epoch (`spans`).
    (Nested, so that Ray pickles it by value: the workers cannot import this test module.)"""

    def runner(cfg: TrainConfig, *args: Any, **kwargs: Any) -> engine.RunResult:
        start = time.time()
        (gate / cfg.name).touch()
        deadline = time.monotonic() + 120
        while len(list(gate.iterdir())) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("no other run trained beside this one")
            time.sleep(0.05)
        try:
            return engine.train(cfg, *args, **kwargs)
        finally:
            (gate / cfg.name).write_text(f"{start} {time.time()}")

    gate.mkdir()
    return runner


def spans(gate: Path) -> list[tuple[float, float]]:
    """The spans `two_at_once` wrote, one per run that ended."""
    return [(float(start), float(end)) for start, end in (p.read_text().split() for p in gate.iterdir())]


def batch_pairs(store: RunStore, run_id: int) -> list[tuple[int, int]]:
    return [(b["epoch"], b["batch"]) for b in store.batches(run_id)]


def curves(store: RunStore, run_id: int) -> list[tuple[Any, ...]]:
    return [tuple(e[k] for k in ("epoch", *CURVE_FIELDS)) for e in store.epochs(run_id)]


def test_a_resent_message_is_applied_once(tmp_path: Path, tiny: Callable[..., TrainConfig]) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(tiny())
    rows = [(1, 1, 0.9), (1, 2, 0.8)]
    epoch = {"epoch": 1, "train_loss": 0.85, "train_acc": 0.5, "val_loss": 0.7, "val_acc": 0.5, "lr": 0.01,
             "seconds": 1.0}
    for message in [(1, run_id, "add_batches", (rows,), {}), (2, run_id, "add_epoch", (epoch,), {})] * 2:
        raybackend.apply_message(store, message)
    assert batch_pairs(store, run_id) == [(1, 1), (1, 2)]
    assert [e["epoch"] for e in store.epochs(run_id)] == [1]
    with pytest.raises(ValueError, match="unknown store write"):
        raybackend.apply_message(store, (3, run_id, "delete_run", (), {}))


def test_the_sink_actor_s_module_imports_no_torch() -> None:
    """Ray starts each driver's detached sink in a process that imports the sink's module and unpickles what is sent
    to it (progress, placements): with torch that process took 771 MB, without it 126 MB."""
    probe = "import sys, caltech_core.runs.sink; print(sorted({'torch', 'numpy', 'ray'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_two_runs_train_side_by_side_each_row_once(
    cluster: Any, tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],
    wait_until: Callable[..., None],
) -> None:
    store = RunStore(tmp_path / "home")
    manager = RayJobManager(store, LOCAL_CLUSTER, data_root=mini_root, runner=two_at_once(tmp_path / "gate"))
    epochs = 3
    first = manager.submit(tiny(name="first", epochs=epochs))
    second = manager.submit(tiny(name="second", seed=7, epochs=epochs))
    wait_until(lambda: len(manager.running()) == 2 or not manager.queued() and not manager.running())
    assert manager.wait(timeout=300)
    for run_id in (first, second):
        run = store.get_run(run_id)
        assert run.status == "finished", run.error
        assert [e["epoch"] for e in store.epochs(run_id)] == list(range(1, epochs + 1))
        assert batch_pairs(store, run_id) == [(e, b) for e in range(1, epochs + 1) for b in (1, 2, 3, 4)]
        assert (store.run_dir(run_id) / "best.pt").is_file() and run.test_acc is not None
        assert run.node.startswith("Ray node ") and "GPU" not in run.node
        assert manager.placement(run_id).pid != os.getpid()
    a, b = store.get_run(first), store.get_run(second)
    assert a.started < b.finished and b.started < a.finished  # they trained at the same time
    assert manager.progress(first) is None and manager.running() == []
    manager.shutdown(wait=True)


def test_cancel_a_waiting_and_a_running_remote_run(
    cluster: Any, tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],
    wait_until: Callable[..., None],
) -> None:
    store = RunStore(tmp_path / "home")
    # Two CPUs a run on a two-CPU cluster: one run at a time, so the second one waits for a slot.
    manager = RayJobManager(store, LOCAL_CLUSTER, data_root=mini_root, cpus_per_run=2)
    long = manager.submit(tiny(name="long", epochs=20))  # far more than a cancel takes
    waiting = manager.submit(tiny(name="waiting"))
    wait_until(lambda: (p := manager.progress(long)) is not None and p.phase == "training" and p.epoch >= 1)
    assert manager.queued() == [waiting] and manager.progress(waiting).phase == "queued"
    assert manager.cancel(waiting)
    assert store.get_run(waiting).status == "cancelled" and store.get_run(waiting).started is None
    asked = time.monotonic()
    assert manager.cancel(long)
    assert manager.wait(long, timeout=300)
    assert time.monotonic() - asked < 120  # about a batch and a poll on an idle machine; loaded CI needs slack
    run = store.get_run(long)
    assert run.status == "cancelled" and 1 <= run.epochs_done < 20
    assert manager.wait(timeout=300)
    assert store.get_run(waiting).status == "cancelled" and store.get_run(waiting).started is None
    assert store.epochs(waiting) == [] and manager.cancel(long) is False
    manager.shutdown(wait=True)


def test_a_run_whose_last_status_is_stored_no_longer_counts_as_running(
    cluster: Any, tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],
    wait_until: Callable[..., None],
) -> None:
    """A worker's last status reaches the store a moment before its task returns; the queue (a sweep driver too)
    may start the next run in that moment, so the ended run must leave `running()` then, not when its task returns
    (a sweep with `parallel: 2` was once seen with three runs "running")."""
    store = RunStore(tmp_path / "home")
    gate = tmp_path / "gate"
    manager = RayJobManager(store, LOCAL_CLUSTER, data_root=mini_root, runner=two_at_once(gate))
    run_id = manager.submit(tiny(name="held", epochs=1))
    wait_until(lambda: manager.running() == [run_id])
    # What the worker's store sends last (run_job's final status), here while its task is held on the cluster.
    cluster.get(manager._sink.put.remote(run_id, "set_status", (str(RunStatus.FINISHED), None), {}))
    wait_until(lambda: store.get_run(run_id).status == "finished")
    assert manager.running() == [] and manager.queued() == [] and manager.progress(run_id) is None
    assert not manager.wait(run_id, timeout=0.5)  # its task is still on the cluster: its rows may still come
    (gate / "release").touch()  # the gate's second file: the held run trains now
    assert manager.wait(timeout=300)
    run = store.get_run(run_id)
    assert run.status == "finished" and [e["epoch"] for e in store.epochs(run_id)] == [1]
    manager.shutdown(wait=True)


def test_a_writing_run_keeps_its_cpus_from_a_waiting_task(
    cluster: Any, tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],
    wait_until: Callable[..., None],
) -> None:
    """Ray lends a task's CPUs to the scheduler while the task is blocked in `ray.get` or `ray.wait`: a run that
    waited so for its writes' receipts let a task queued for the cluster's 2 CPUs start beside it."""
    seconds = 6.0  # far longer than a Ray worker takes to start a task it was granted

    def chatty(cfg: TrainConfig, splits: Any, callbacks: engine.Callbacks, **_: Any) -> engine.RunResult:
        """Batch rows as fast as it can (the tracker writes every 20) for `seconds`, polling the cancel flag."""
        start, batch = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            batch += 1
            callbacks.on_batch(1, batch, 10**9, 0.5)
            callbacks.should_stop()
        (tmp_path / "writer.txt").write_text(f"{batch} {time.time()}")  # rows written, when the runner ended
        return engine.RunResult(status=RunStatus.FINISHED)

    def probe() -> float:
        return time.time()

    store = RunStore(tmp_path / "home")
    manager = RayJobManager(store, LOCAL_CLUSTER, data_root=mini_root, runner=chatty, cpus_per_run=2)
    run_id = manager.submit(tiny(name="writer"))
    wait_until(lambda: manager.running() == [run_id] or not manager.queued())
    waiting = cluster.remote(probe).options(num_cpus=2).remote()  # e.g. another driver's run
    assert manager.wait(timeout=300)
    run, started = store.get_run(run_id), cluster.get(waiting, timeout=300)
    assert run.status == "finished", run.error
    rows, ended = (float(x) for x in (tmp_path / "writer.txt").read_text().split())
    assert started >= ended, f"the waiting task started {ended - started:.1f} s before the run ended"
    assert rows > 20 * 100  # it wrote all the while: over 100 writes
    assert batch_pairs(store, run_id) == [(1, n) for n in range(1, int(rows) + 1)]  # in order, each once
    manager.shutdown(wait=True)


@pytest.mark.slow
def test_killed_worker_is_interrupted_and_resumes_to_identical_curves(
    cluster: Any, tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],
    wait_until: Callable[..., None],
) -> None:
    store = RunStore(tmp_path / "home")
    shared = tmp_path / "mounted-elsewhere"  # the store's folder as the workers see it (another path to it)
    shared.symlink_to(store.home)
    runner = functools.partial(engine.train, checkpoint_seconds=0)  # last.pt after every epoch
    manager = RayJobManager(store, LOCAL_CLUSTER, data_root=mini_root, runner=runner, worker_home=shared)
    reference = manager.submit(tiny(name="reference", epochs=12))
    killed = manager.submit(tiny(name="killed", epochs=12))
    wait_until(lambda: (store.get_run(killed).checkpoint_epoch or 0) >= 1)
    assert store.get_run(killed).status == "running", "the run finished before it could be killed"
    os.kill(manager.placement(killed).pid, signal.SIGKILL)
    assert manager.wait(killed, timeout=300)
    run = store.get_run(killed)
    assert run.status == "interrupted" and "Ray worker" in run.error
    last = store.artifacts(killed)["last"]  # recorded at the driver's path of the store, not the workers'
    assert last == store.run_dir(killed) / "last.pt" and last.is_file()
    manager.resume(killed)
    assert manager.wait(timeout=600)
    assert store.get_run(reference).status == "finished"
    run = store.get_run(killed)
    assert run.status == "finished", run.error
    assert batch_pairs(store, killed) == [(e, b) for e in range(1, 13) for b in (1, 2, 3, 4)]
    assert curves(store, killed) == curves(store, reference)
    assert run.test_acc == store.get_run(reference).test_acc
    manager.shutdown(wait=True)


def test_a_worker_without_the_dataset_fails_the_run_saying_so(
    cluster: Any, tmp_path: Path, tiny: Callable[..., TrainConfig],
) -> None:
    store = RunStore(tmp_path / "home")
    nowhere = tmp_path / "no-caltech"
    manager = RayJobManager(store, LOCAL_CLUSTER,
                            runtime_env={"env_vars": {"CALTECH101_ROOT": str(nowhere)}})
    run_id = manager.submit(tiny())
    assert manager.wait(run_id, timeout=180)
    run = store.get_run(run_id)
    assert run.status == "failed" and str(nowhere) in run.error and "Caltech-101" in run.error
    manager.shutdown(wait=True)


def test_backend_choice_and_the_local_backend_needs_no_ray(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.RAY.name, "local-cluster")
    manager = get_manager(tmp_path / "a")
    assert isinstance(manager, RayJobManager) and get_manager(tmp_path / "a") is manager
    local = get_manager(tmp_path / "a", backend="local")
    assert isinstance(local, ThreadJobManager)
    for m in (manager, local):
        m.shutdown(wait=True)
    monkeypatch.setenv(settings.RAY.name, "somewhere")
    with pytest.raises(ValueError, match="ray://HOST:PORT"):
        get_manager(tmp_path / "a")
    code = ("import sys; from caltech_core.runs.manager import get_manager; m = get_manager(sys.argv[1]); "
            "m.shutdown(wait=True); "
            "print(type(m).__name__, 'ray' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != settings.RAY.name}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split() == ["ThreadJobManager", "False"]


def _sinks_of(ray: Any, pid: int) -> list[str]:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return [n for n in names if n.startswith("caltech-sink-") and f"-{pid}-" in n]


@pytest.mark.slow
def test_a_killed_driver_is_drained_and_the_cli_resumes_on_ray(
    cluster: Any, tmp_path: Path, mini_root: Path, wait_until: Callable[..., None],
) -> None:
    from caltech_core.cli import main

    home = tmp_path / "home"
    epochs = 8  # MobileNetV3-Small trains a 2-class epoch in about a second: 7 s of room to kill the driver mid-run
    cmd = [
        sys.executable, "-m", "caltech_core", "train", "--ray", cluster.get_runtime_context().gcs_address,
        "--root", str(mini_root), "--store", str(home), "--arch", "mobilenet_v3_small", "--image-size", "64",
        "--epochs", str(epochs),
        "--batch-size", "2", "--classes", "2", "--device", "cpu", "--name", "orphan",
    ]
    with (tmp_path / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: home.joinpath("runs.sqlite").exists())
            store = RunStore(home)
            wait_until(lambda: store.list_runs() and store.list_runs()[0].epochs_done >= 1)
            assert proc.poll() is None, "the run finished before its driver could be killed"
            assert _sinks_of(cluster, proc.pid)  # the driver's sink, detached: it outlives the driver
        finally:
            proc.kill()  # SIGKILL: Ray ends the dead driver's tasks; its sink keeps what was not drained yet
            proc.wait()
    run_id = store.list_runs()[0].id
    assert store.get_run(run_id).status == "running"
    assert main(["resume", str(run_id), "--ray", LOCAL_CLUSTER, "--store", str(home),
                 "--root", str(mini_root)]) == 0
    assert _sinks_of(cluster, proc.pid) == []  # drained into the store, then removed
    run = store.get_run(run_id)
    assert run.status == "finished", run.error
    assert [e["epoch"] for e in store.epochs(run_id)] == list(range(1, epochs + 1))
    assert batch_pairs(store, run_id) == [(e, b) for e in range(1, epochs + 1) for b in (1, 2, 3, 4)]


def test_train_sidebar_picks_ray_and_monitor_shows_where_a_run_trains(
    cluster: Any, studio_home: Path, mini_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apptest_pages import open_page, page_texts

    from dashboard import _shared

    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    _shared._backend_setting.clear()
    try:
        at = open_page("train")
        assert "Now: this process" in page_texts(at)
        at.radio(key="backend_choice").set_value("ray").run()
        at.text_input(key="backend_address").set_value("nowhere").run()
        at.button(key="backend_apply").click().run()
        assert "unknown backend 'nowhere'" in page_texts(at)
        at.text_input(key="backend_address").set_value(LOCAL_CLUSTER).run()
        at.button(key="backend_apply").click().run()
        assert not at.exception, at.exception
        assert "Now: Ray (local-cluster)" in page_texts(at)
        for key, value in {"f_arch": "mobilenet_v3_small", "f_image_size": 64, "f_classes": 2, "f_max_per_class": 4,
                           "f_batch_size": 4, "f_epochs": 1}.items():
            at.session_state[key] = value
        at.button(key="queue").click().run()
        assert not at.exception, at.exception
        [run] = RunStore(studio_home).list_runs()
        manager = get_manager(studio_home, backend=LOCAL_CLUSTER)
        assert isinstance(manager, RayJobManager) and manager.wait(run.id, timeout=240)
        monitor = open_page("monitor", run=str(run.id))
        assert not monitor.exception, monitor.exception
        assert "Trained on Ray node" in page_texts(monitor)
        stored = RunStore(studio_home).get_run(run.id)
        assert stored.status == "finished", stored.error
        at.radio(key="backend_choice").set_value("local").run()
        at.button(key="backend_apply").click().run()
        assert "Now: this process" in page_texts(at)
        manager.shutdown(wait=True)
    finally:
        _shared._backend_setting.clear()
        get_manager(studio_home, backend="local").shutdown(wait=True)



def test_a_sweep_on_a_folder_dataset_runs_two_trials_side_by_side_on_ray(
    cluster: Any, tmp_path: Path, wait_until: Callable[..., None],
) -> None:
    """Two things never run before, in one test (each new Ray manager and cold worker costs seconds): a registered
    folder dataset (not Caltech-101) trained on Ray workers, which read the store's registry at the path they see
    it by; and a sweep with `parallel: 2` on Ray: two trials train at once, every grid point once, and the journal
    read afresh agrees with the runs (a second driver finds nothing left to do)."""
    import threading

    from test_datasets import _folder

    from caltech_core.data import registry
    from caltech_core.sweeps import sweep as sweeps
    from caltech_core.sweeps.driver import SweepDriver

    store = RunStore(tmp_path / "home")
    entry, _ = registry.add(store.home, _folder(tmp_path / "my shapes", {"circle": 5, "square": 5, "star": 5}),
                            "shapes")
    shared = tmp_path / "mounted-elsewhere"  # the store as the workers see it: another path to the same folder
    shared.symlink_to(store.home)
    # No Caltech-101 root: the dataset is the registered folder.
    manager = RayJobManager(store, LOCAL_CLUSTER, runner=two_at_once(tmp_path / "gate"),
                            worker_home=shared)
    lrs = [0.001, 0.003, 0.01]
    sweep = sweeps.create_sweep(store.home, {
        "method": "grid", "parallel": 2, "parameters": {"lr": {"values": lrs}},
        "base": {"dataset": entry.id, "arch": "mobilenet_v3_small", "image_size": 32, "epochs": 1,
                 "batch_size": 3, "device": "cpu"}})
    driven = threading.Thread(target=lambda: SweepDriver(sweep, manager, poll=0.1).run())
    driven.start()
    wait_until(lambda: not driven.is_alive(), timeout=300)
    # Two trials in their runners at once, never more than `parallel`: counted on the workers' own clock, not by
    # sampling the manager, which learns of a start and an end only at its drains (0.2 s apart; a tiny run may
    # start and end between two of them).
    trained = spans(tmp_path / "gate")
    assert len(trained) == 3 and max(sum(s <= t < e for s, e in trained) for t, _ in trained) == 2, trained
    runs = sorted(store.list_runs(group=sweep.group), key=lambda r: r.id)
    assert [r.status for r in runs] == ["finished"] * 3, [r.error for r in runs]
    first, second, third = runs
    assert first.started < second.finished and second.started < first.finished  # side by side
    assert third.created >= min(first.finished, second.finished)  # the third waited for a free slot
    for run in runs:  # each trial: the folder's classes and its dataset record, trained on a Ray worker
        assert run.node.startswith("Ray node ") and manager.placement(run.id).pid != os.getpid()
        assert run.results["classes"] == ["circle", "square", "star"] and run.config.dataset == "shapes"
        recorded = run.results["dataset"]
        assert (recorded["id"], recorded["kind"], recorded["fingerprint"]) == ("shapes", "folder", entry.fingerprint)
        assert [e["epoch"] for e in store.epochs(run.id)] == [1] and run.test_acc is not None

    again = sweeps.open_sweep(store.home, sweep.id)  # the journal as a new process reads it
    trials = sweeps.trials(again, store)
    assert sorted(t["params"]["lr"] for t in trials) == lrs and all(t["state"] == "complete" for t in trials)
    for t in trials:
        [run] = t["runs"]
        assert t["value"] == sweeps.run_value(store, store.get_run(run["run_id"]), "val_acc", "maximize")
    assert sorted(t["run_id"] for t in trials) == [r.id for r in runs]
    assert again.state()["status"] == "finished"
    assert SweepDriver(again, manager, poll=0.1).run() == "finished" and len(store.list_runs()) == 3
    manager.shutdown(wait=True)
