"""The SQLite run store: round trip, WAL, filters, truncation, crash recovery."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caltech_core.config import ConfigError, TrainConfig
from caltech_core.runs.store import RunNotFoundError, RunStore
from caltech_core.settings import studio_home as default_home
from caltech_core.training.engine import EpochMetrics

REPO = Path(__file__).resolve().parent.parent


def _metrics(epoch: int, val_acc: float = 0.5) -> EpochMetrics:
    return EpochMetrics(epoch=epoch, train_loss=1.0 / epoch, train_acc=0.1 * epoch, val_loss=2.0 / epoch,
                        val_acc=val_acc, lr=0.01, seconds=1.5)


def test_default_home_follows_environment(studio_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_home() == studio_home
    monkeypatch.delenv("CALTECH_STUDIO_HOME")
    assert default_home() == Path.home() / ".caltech_studio"


def test_round_trip_wal_and_layout(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "home")
    assert (tmp_path / "home" / "runs.sqlite").is_file()
    assert (tmp_path / "home" / "cache").is_dir()
    assert store.journal_mode() == "wal"

    cfg = TrainConfig(arch="resnet18", augment=("crop", "hflip"), lr=0.01, epochs=3, name="r18", group="g1")
    run_id = store.create_run(cfg)
    assert store.run_dir(run_id) == tmp_path / "home" / "runs" / str(run_id)
    assert store.run_dir(run_id).is_dir()
    run = store.get_run(run_id)
    assert run is not None
    assert run.config == cfg  # parsed back to an equal TrainConfig (tuple augment included)
    assert (run.status, run.name, run.group, run.arch, run.started) == ("queued", "r18", "g1", "resnet18", None)

    store.set_status(run_id, "running", device="cpu")
    for epoch in (1, 2):
        store.add_epoch(run_id, _metrics(epoch))
    store.add_batches(run_id, [(1, 1, 2.3), (1, 2, 2.1), {"epoch": 2, "batch": 1, "loss": float("nan")}])
    store.set_results(run_id, {
        "best_val_acc": np.float64(0.75), "test_acc": 0.5, "confusion": np.array([[1, 0], [2, 3]]),
        "per_class_acc": {"a": float("nan"), "b": 1.0}, "checkpoint_path": store.run_dir(run_id) / "best.pt",
    })
    store.set_status(run_id, "finished")

    # A second store object (another connection, like another process) sees the same data.
    other = RunStore(tmp_path / "home")
    run = other.get_run(run_id)
    assert run is not None
    assert run.status == "finished" and run.device == "cpu"
    assert run.started is not None and run.finished is not None and run.finished >= run.started
    assert run.best_val_acc == 0.75 and run.test_acc == 0.5
    assert run.results["confusion"] == [[1, 0], [2, 3]]
    assert run.results["per_class_acc"] == {"a": None, "b": 1.0}  # NaN stored as null: valid JSON
    assert run.epochs_done == 2
    epochs = other.epochs(run_id)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["train_loss"] == pytest.approx(0.5) and epochs[1]["val_acc"] == 0.5
    assert other.batches(run_id) == [
        {"epoch": 1, "batch": 1, "loss": 2.3}, {"epoch": 1, "batch": 2, "loss": 2.1},
        {"epoch": 2, "batch": 1, "loss": None},
    ]
    # The raw column holds standard JSON (no NaN tokens) for any other reader.
    raw = sqlite3.connect(tmp_path / "home" / "runs.sqlite").execute(
        "SELECT results FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    assert "NaN" not in raw and json.loads(raw)["best_val_acc"] == 0.75


def test_epoch_rows_are_unique_and_truncate_after(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(TrainConfig(epochs=5))
    for epoch in (1, 2, 3):
        store.add_epoch(run_id, _metrics(epoch))
        store.add_batches(run_id, [(epoch, b, 1.0) for b in (1, 2)])
    store.add_epoch(run_id, _metrics(3, val_acc=0.9))  # the same epoch again replaces, never duplicates
    assert [e["val_acc"] for e in store.epochs(run_id)] == [0.5, 0.5, 0.9]

    store.truncate_after(run_id, 1)
    assert [e["epoch"] for e in store.epochs(run_id)] == [1]
    assert {b["epoch"] for b in store.batches(run_id)} == {1}
    assert len(store.batches(run_id)) == 2


def test_list_runs_filters_groups_and_delete(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    a = store.create_run(TrainConfig(arch="alexnet", group="lr-grid", name="a"))
    b = store.create_run(TrainConfig(arch="resnet18", group="lr-grid", name="b"))
    c = store.create_run(TrainConfig(arch="resnet18", name="c"))
    store.set_status(b, "running")
    store.set_status(b, "finished")
    store.set_status(c, "failed", "boom")

    assert [r.id for r in store.list_runs()] == [c, b, a]
    assert [r.id for r in store.list_runs(newest_first=False)] == [a, b, c]
    assert [r.id for r in store.list_runs(arch="resnet18")] == [c, b]
    assert [r.id for r in store.list_runs(status="finished")] == [b]
    assert [r.id for r in store.list_runs(status=("failed", "queued"))] == [c, a]
    assert [r.id for r in store.list_runs(group="lr-grid", arch="resnet18")] == [b]
    assert store.list_runs(limit=1)[0].id == c
    assert store.get_run(c).error == "boom"
    assert store.groups() == ["lr-grid"]
    assert store.get_run(999) is None
    with pytest.raises(RunNotFoundError):
        store.set_status(999, "finished")
    with pytest.raises(ValueError, match="unknown status"):
        store.set_status(a, "done")

    with pytest.raises(ValueError, match="cancel it"):
        store.delete_run(a)  # still queued
    store.add_epoch(b, _metrics(1))
    store.delete_run(b)
    assert store.get_run(b) is None and store.epochs(b) == []
    assert not (tmp_path / "runs" / str(b)).exists()


def test_mark_interrupted_only_touches_runs_of_dead_processes(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    mine = store.create_run(TrainConfig(name="mine"))
    store.set_status(mine, "running")
    # Another process creates a run, marks it running and exits without finishing it.
    code = (
        "import sys; from caltech_core.runs.store import RunStore; from caltech_core.config import TrainConfig;"
        "s = RunStore(sys.argv[1]); i = s.create_run(TrainConfig(name='orphan')); s.set_status(i, 'running');"
        "j = s.create_run(TrainConfig(name='orphan-queued')); print(i, j)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         cwd=REPO)
    orphan, orphan_queued = map(int, out.stdout.split())

    assert sorted(store.mark_interrupted()) == [orphan, orphan_queued]
    assert store.get_run(mine).status == "running"  # this process is alive: its run is left alone
    orphan_run = store.get_run(orphan)
    assert orphan_run.status == "interrupted" and "resume" in orphan_run.error
    assert store.mark_interrupted() == []
    other = store.create_run(TrainConfig(name="other"))
    store.set_status(other, "running")
    # Named runs only (a dead Ray driver's, which this process just stamped as its own), whoever owns them.
    assert store.mark_interrupted(only_dead=False, ids={other}) == [other]
    assert store.get_run(mine).status == "running"
    assert store.mark_interrupted(only_dead=False) == [mine]


def test_checkpoint_and_artifacts(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(TrainConfig())
    last = store.run_dir(run_id) / "last.pt"
    store.set_checkpoint(run_id, 2, last)
    store.add_artifact(run_id, "best", store.run_dir(run_id) / "best.pt")
    store.set_checkpoint(run_id, 3, last)
    assert store.get_run(run_id).checkpoint_epoch == 3
    assert store.artifacts(run_id) == {"last": last, "best": store.run_dir(run_id) / "best.pt"}


def test_nonfinite_epoch_values_are_stored_as_null(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(TrainConfig())
    store.add_epoch(run_id, {"epoch": 1, "train_loss": math.inf, "train_acc": 0.1, "val_loss": None,
                             "val_acc": None, "lr": 0.1, "seconds": 1.0})
    row = store.epochs(run_id)[0]
    assert row["train_loss"] is None and row["val_loss"] is None and row["train_acc"] == 0.1


def test_status_sets_are_one_definition(tmp_path: Path) -> None:
    from caltech_core import status

    assert set(status.RunStatus) == status.ACTIVE | status.DONE and not status.ACTIVE & status.DONE
    assert status.RESUMABLE <= status.DONE
    assert status.names(status.ACTIVE) == ["queued", "running"]
    store = RunStore(tmp_path / "s")
    run_id = store.create_run(TrainConfig(epochs=1))
    store.set_status(run_id, "diverged")
    run = store.get_run(run_id)
    assert run.status is status.RunStatus.DIVERGED and run.status == "diverged"
    assert [r.id for r in store.list_runs(status=status.DONE)] == [run_id]
    assert store.list_runs(status=status.ACTIVE) == []


def test_disk_usage_by_kind_and_prune_of_unused_caches(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s")
    small = store.create_run(TrainConfig(image_size=64, epochs=1))  # caches at resize 73
    store.set_results(small, {"feature_cache": "used.pt"})
    store.set_status(small, "finished")
    (store.run_dir(small) / "best.pt").write_bytes(b"w" * 500)
    for folder, size in (("images-73", 1000), ("images-256", 3000)):
        (store.cache_dir / folder).mkdir()
        (store.cache_dir / folder / "pixels-0.u8").write_bytes(b"p" * size)
    (store.cache_dir / "features").mkdir()
    (store.cache_dir / "features" / "used.pt").write_bytes(b"f" * 100)
    (store.cache_dir / "features" / "old.pt").write_bytes(b"f" * 200)

    usage = store.disk_usage()
    assert (usage["checkpoints"], usage["image cache"], usage["feature cache"]) == (500, 4000, 300)
    assert usage["database"] > 0
    assert store.unused_caches() == {store.cache_dir / "images-256": 3000, store.cache_dir / "features" / "old.pt": 200}

    full = store.create_run(TrainConfig(epochs=1))  # queued, 224 px: uses images-256
    with pytest.raises(ValueError, match="when nothing is training"):
        store.prune_caches()
    store.set_status(full, "cancelled")
    removed, freed = store.prune_caches()
    assert removed == [store.cache_dir / "features" / "old.pt"] and freed == 200
    assert (store.cache_dir / "images-256").is_dir() and (store.cache_dir / "features" / "used.pt").is_file()
    assert store.unused_caches() == {}


def test_rename_tags_note_and_cancel_flag(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s")
    run_id = store.create_run(TrainConfig(name="old", epochs=1))
    store.rename(run_id, "  new name ")
    assert store.get_run(run_id).name == "new name" and store.get_run(run_id).config.name == "new name"
    with pytest.raises(ConfigError, match="name"):
        store.rename(run_id, "x" * 201)
    assert store.set_tags(run_id, ["b", " a", "b"]) == ("a", "b")
    other = store.create_run(TrainConfig(epochs=1))
    store.set_tags(other, ["a"])
    assert store.tags() == ["a", "b"]
    assert [r.id for r in store.list_runs(tags=["a"])] == [other, run_id]
    assert [r.id for r in store.list_runs(tags=["a", "b"])] == [run_id]
    with pytest.raises(ValueError, match="1 to 40 characters"):
        store.set_tags(run_id, [""])
    store.set_note(run_id, "lr too high?")
    assert store.get_run(run_id).note == "lr too high?"
    with pytest.raises(RunNotFoundError):
        store.set_note(999, "x")

    assert store.request_cancel(run_id) and store.cancel_requested(run_id)  # queued: flagged
    store.set_status(run_id, "cancelled")
    assert not store.request_cancel(run_id)  # not active any more
    store.set_status(run_id, "queued")  # resumed: a fresh start, the old request is gone
    assert not store.cancel_requested(run_id)


def test_an_older_store_gains_the_new_columns(tmp_path: Path) -> None:
    home = tmp_path / "old"
    home.mkdir()
    conn = sqlite3.connect(home / "runs.sqlite")
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL DEFAULT '',"
                 " group_name TEXT NOT NULL DEFAULT '', arch TEXT NOT NULL, config TEXT NOT NULL, status TEXT NOT NULL,"
                 " created REAL NOT NULL, started REAL, finished REAL, device TEXT, error TEXT, results TEXT,"
                 " best_val_acc REAL, test_acc REAL, checkpoint_epoch INTEGER, owner_pid INTEGER, owner_start TEXT)")
    conn.execute("INSERT INTO runs (arch, config, status, created) VALUES ('alexnet', ?, 'finished', 0)",
                 (json.dumps(TrainConfig(epochs=1).to_dict()),))
    conn.commit()
    conn.close()
    store = RunStore(home)
    [run] = store.list_runs()
    assert (run.tags, run.note) == ((), "")
    store.set_tags(run.id, ["kept"])
    assert store.get_run(run.id).tags == ("kept",)
