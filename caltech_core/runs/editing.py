"""What a person may change about stored runs: their name, tags and note, deleting them, pruning unused caches.

The dashboard's pages call these (and the CLI may), so the rules live here and in the store's checks, not in a
page: an active (queued or running) run is never deleted, and caches are not pruned while a run is active.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from caltech_core import status as run_status
from caltech_core.runs.store import RunRecord, RunStore


def edit_run(store: RunStore, run_id: int, *, name: str, tags: Iterable[str], note: str) -> RunRecord:
    """Give a run a new name, tags and note; returns the record as stored now.

    The name is checked before anything is written (ConfigError); the store checks the tags, then the note, as
    it writes each (ValueError naming the rule), so an invalid note leaves the new tags saved.
    """
    record = store.require_run(run_id)
    name = name.strip()
    record.config.replace(name=name)  # ConfigError now, before tags or note change
    store.set_tags(run_id, tags)
    store.set_note(run_id, note)
    if name != record.name:  # a rename also rewrites the stored config
        store.rename(run_id, name)
    return store.require_run(run_id)


def deletable(store: RunStore, ids: Iterable[int]) -> list[RunRecord]:
    """The records of `ids` (each once) when every one may be deleted: an unknown id raises RunNotFoundError, a
    queued or running run ValueError (cancel it first). Lets a caller ask for confirmation before deleting."""
    records = [store.require_run(run_id) for run_id in dict.fromkeys(ids)]
    active = next((r for r in records if r.status in run_status.ACTIVE), None)
    if active is not None:
        raise ValueError(f"run {active.id} is {active.status}; cancel it before deleting it (nothing was deleted)")
    return records


def delete_runs(store: RunStore, ids: Iterable[int]) -> list[RunRecord]:
    """Delete runs with their metrics and files; returns the deleted records.

    All or nothing up front (`deletable`): an unknown or active run deletes none of them. A run that starts
    between this check and its turn is still refused by the store.
    """
    records = deletable(store, ids)
    for record in records:
        store.delete_run(record.id)
    return records


def prune_caches(store: RunStore) -> tuple[list[Path], int]:
    """Delete the caches no stored run uses (`store.unused_caches()`); returns them and the bytes freed.
    ValueError while a run is queued or running (it may be filling a cache right now)."""
    return store.prune_caches()
