"""What a stored run is: the SQLite tables, the `RunRecord` a row of `runs` becomes, and `StoreWriter`, what
training writes about a run (the `RunStore` in the process that owns the database, a Ray worker's `RemoteStore`
elsewhere).

Values go to SQLite as plain JSON: numpy arrays, Paths and dataclasses are converted, and non-finite floats
(SQLite and standard JSON have no NaN) become NULL.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from caltech_core.config import ARCH_LABELS, TrainConfig
from caltech_core.status import RunStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL DEFAULT '',
    group_name TEXT NOT NULL DEFAULT '',
    arch TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    device TEXT,
    error TEXT,
    results TEXT,
    best_val_acc REAL,
    test_acc REAL,
    checkpoint_epoch INTEGER,
    owner_pid INTEGER,
    owner_start TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    note TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    node TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE INDEX IF NOT EXISTS runs_group ON runs(group_name);
CREATE TABLE IF NOT EXISTS epochs (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL, train_acc REAL, val_loss REAL, val_acc REAL, lr REAL, seconds REAL,
    UNIQUE(run_id, epoch)
);
CREATE TABLE IF NOT EXISTS batches (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    loss REAL,
    UNIQUE(run_id, epoch, batch)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    UNIQUE(run_id, kind)
);
"""

# Columns added after the first release, with their definitions: an older store gains them when opened.
ADDED_COLUMNS = {
    "tags": "TEXT NOT NULL DEFAULT '[]'", "note": "TEXT NOT NULL DEFAULT ''",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0", "node": "TEXT",
}
EPOCH_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


class RunNotFoundError(KeyError):
    """No run with this id in the store."""

    def __init__(self, run_id: int) -> None:
        super().__init__(run_id)
        self.run_id = run_id

    def __str__(self) -> str:
        return f"run {self.run_id} does not exist in this store"


@dataclass(frozen=True)
class RunRecord:
    """One row of the runs table, with `config` parsed back to a TrainConfig and `results` to a dict."""

    id: int
    name: str
    group: str
    arch: str
    config: TrainConfig
    status: RunStatus
    created: float
    started: float | None
    finished: float | None
    device: str | None
    error: str | None
    results: dict[str, Any] = field(default_factory=dict)
    best_val_acc: float | None = None
    test_acc: float | None = None
    checkpoint_epoch: int | None = None  # last epoch whose last.pt is on disk (as reported by the engine)
    epochs_done: int = 0  # rows in the epochs table
    tags: tuple[str, ...] = ()
    note: str = ""
    node: str | None = None  # where a Ray backend run trains (node, GPU, worker pid); None for in-process runs

    @property
    def label(self) -> str:
        """A short human name: `#id name` (or the architecture's label when unnamed), the one run label of the
        CLI and every page."""
        return f"#{self.id} {self.name or ARCH_LABELS.get(self.arch, self.arch)}"

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (or to now while running)."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


def _json_default(value: Any) -> Any:
    # Results carry numpy arrays / scalars, Paths and tensors; store them as plain JSON.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def clean_float(value: Any) -> float | None:
    """SQLite has no NaN: a diverged loss is stored as NULL."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, allow_nan=False) if value is not None else "null"


def sanitize(value: Any) -> Any:
    """Replace non-finite floats (anywhere in a results dict) by None so the JSON stays standard."""
    value = json.loads(json.dumps(value, default=_json_default))
    return _replace_nonfinite(value)


def _replace_nonfinite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_replace_nonfinite(v) for v in value]
    if isinstance(value, dict):
        return {k: _replace_nonfinite(v) for k, v in value.items()}
    return value


SELECT_RUN = (
    "SELECT r.*, (SELECT COUNT(*) FROM epochs e WHERE e.run_id = r.id) AS epochs_done FROM runs r"
)


def from_row(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        name=row["name"],
        group=row["group_name"],
        arch=row["arch"],
        config=TrainConfig.from_dict(json.loads(row["config"])),
        status=RunStatus(row["status"]),
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
        device=row["device"],
        error=row["error"],
        results=(json.loads(row["results"]) if row["results"] else None) or {},
        best_val_acc=row["best_val_acc"],
        test_acc=row["test_acc"],
        checkpoint_epoch=row["checkpoint_epoch"],
        epochs_done=row["epochs_done"],
        tags=tuple(json.loads(row["tags"])),
        note=row["note"],
        node=row["node"],
    )


class StoreWriter(Protocol):
    """What `job.run_job` and the tracker read and write of a run: `RunStore` in the process that owns the
    database, `remote.RemoteStore` on a Ray worker (its writes go to the driver, which applies them to SQLite)."""

    home: Path  # the store folder as this process sees it (the dataset registry and overrides live there)

    @property
    def cache_dir(self) -> Path: ...

    def run_dir(self, run_id: int) -> Path: ...

    def get_run(self, run_id: int) -> RunRecord | None: ...

    def cancel_requested(self, run_id: int) -> bool: ...

    def set_status(self, run_id: int, status: str, error: str | None = None, *, device: str | None = None) -> None: ...

    def add_batches(self, run_id: int, rows: Any) -> None: ...

    def add_epoch(self, run_id: int, metrics: Any) -> None: ...

    def set_checkpoint(self, run_id: int, epoch: int, path: str | os.PathLike[str], kind: str = "last") -> None: ...

    def set_results(self, run_id: int, results: dict[str, Any]) -> None: ...

    def truncate_after(self, run_id: int, epoch: int) -> None: ...
