"""caltech_core.runs.editing: the changes a person makes to stored runs, on a tiny store (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from caltech_core import layout
from caltech_core.config import ConfigError, TrainConfig
from caltech_core.runs import editing
from caltech_core.runs.store import RunNotFoundError, RunStore


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "studio")


def _run(store: RunStore, status: str = "finished", **cfg) -> int:
    run_id = store.create_run(TrainConfig(arch="mobilenet_v3_small", epochs=1, **cfg))
    store.set_status(run_id, status)
    layout.best(store.run_dir(run_id)).write_bytes(b"w")
    return run_id


def test_edit_run_saves_name_tags_and_note(store: RunStore) -> None:
    run_id = _run(store, name="old")
    record = editing.edit_run(store, run_id, name="  new name ", tags=[" b", "a", "b"], note="the reference")
    assert (record.name, record.config.name, record.tags, record.note) == ("new name", "new name", ("a", "b"),
                                                                          "the reference")
    assert store.get_run(run_id) == record
    cleared = editing.edit_run(store, run_id, name="new name", tags=[], note="")
    assert (cleared.tags, cleared.note) == ((), "")


def test_edit_run_refuses_bad_values(store: RunStore) -> None:
    run_id = _run(store, name="kept")
    with pytest.raises(ConfigError):
        editing.edit_run(store, run_id, name="x" * 201, tags=["t"], note="n")
    with pytest.raises(ValueError, match="without commas"):
        editing.edit_run(store, run_id, name="other", tags=["a,b"], note="n")
    record = store.get_run(run_id)
    assert (record.name, record.tags, record.note) == ("kept", (), "")  # neither call changed anything
    with pytest.raises(RunNotFoundError):
        editing.edit_run(store, run_id + 1, name="", tags=[], note="")


def test_delete_runs_removes_runs_and_their_folders(store: RunStore) -> None:
    keep, first, second = (_run(store) for _ in range(3))
    deleted = editing.delete_runs(store, [first, second, first])
    assert [r.id for r in deleted] == [first, second]
    assert [r.id for r in store.list_runs()] == [keep]
    assert not any(layout.run_dir(store.home, i).exists() for i in (first, second))  # store.run_dir would make it


def test_delete_runs_deletes_nothing_when_one_is_active_or_missing(store: RunStore) -> None:
    done, busy = _run(store), _run(store, "running")
    with pytest.raises(ValueError, match=f"run {busy} is running; cancel it"):
        editing.delete_runs(store, [done, busy])
    with pytest.raises(RunNotFoundError):
        editing.delete_runs(store, [done, busy + 1])
    assert {r.id for r in store.list_runs()} == {done, busy}


def test_prune_caches_deletes_unused_caches_only_when_idle(store: RunStore) -> None:
    run_id = _run(store, image_size=64)
    used = layout.images_dir(store.cache_dir, store.get_run(run_id).config.resize_size)
    unused = layout.images_dir(store.cache_dir, 999)
    for folder in (used, unused):
        folder.mkdir(parents=True)
        (folder / "pixels-0.u8").write_bytes(b"p" * 4096)
    busy = _run(store, "queued")
    with pytest.raises(ValueError, match="nothing is training"):
        editing.prune_caches(store)
    assert unused.exists()
    store.set_status(busy, "cancelled")
    removed, freed = editing.prune_caches(store)
    assert (removed, freed) == ([unused], 4096)
    assert used.exists() and not unused.exists()
