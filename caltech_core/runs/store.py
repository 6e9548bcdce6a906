"""The run store: one folder with a SQLite database (WAL mode) and a sub-folder per run.

Layout under `home` (see `caltech_core.layout`): `runs.sqlite`, `runs/<id>/` (checkpoints, written by the
engine), `cache/` (image and feature caches). Every write is a single transaction, so a reader in another thread
or process sees a run either before or after a write, never half of it. Each thread gets its own connection.

Timestamps are Unix seconds (float). Metrics are written as they happen, so a second reader (the
dashboard, the CLI) sees the same curves while a run trains. The tables and the record a row becomes are in
`records.py`; what is on disk, by kind, in `disk.py`.

Slightly over 400 lines on purpose: `RunStore` is one class whose every method is one transaction on the same
per-thread connection; splitting it would only scatter that connection handling.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from caltech_core import layout, settings
from caltech_core import status as run_status
from caltech_core.config import TrainConfig
from caltech_core.runs import disk, records
from caltech_core.runs.owners import process_alive, process_start
from caltech_core.runs.records import RunNotFoundError, RunRecord
from caltech_core.status import RunStatus

MAX_TAG = 40
MAX_NOTE = 10_000


class RunStore:
    """SQLite-backed store of runs, per-epoch metrics, per-batch losses and artifacts (thread-safe)."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else settings.studio_home()
        self.home.mkdir(parents=True, exist_ok=True)
        layout.runs_dir(self.home).mkdir(exist_ok=True)
        self.cache_dir.mkdir(exist_ok=True)
        self.db_path = layout.database(self.home)
        self._local = threading.local()
        conn = self._conn()
        with conn:
            conn.executescript(records.SCHEMA)
            have = {r["name"] for r in conn.execute("PRAGMA table_info(runs)")}
            for column, definition in records.ADDED_COLUMNS.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {definition}")

    # -- connections ----------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we open transactions explicitly (BEGIN IMMEDIATE) so every write is one.
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _write(self, sql: str, params: Iterable[Any] = (), *, many: bool = False) -> sqlite3.Cursor:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.executemany(sql, params) if many else conn.execute(sql, tuple(params))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return cur

    def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def journal_mode(self) -> str:
        """The database's journal mode ('wal')."""
        return self._conn().execute("PRAGMA journal_mode").fetchone()[0]

    # -- folders --------------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        return layout.cache_dir(self.home)

    def run_dir(self, run_id: int) -> Path:
        """The run's folder (checkpoints); created on demand."""
        path = layout.run_dir(self.home, run_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- runs -----------------------------------------------------------------------------------
    def create_run(self, cfg: TrainConfig, *, status: str = RunStatus.QUEUED) -> int:
        """Store a new run with its configuration; returns its id."""
        status = run_status.check(status)
        pid = os.getpid()
        cur = self._write(
            "INSERT INTO runs (name, group_name, arch, config, status, created, owner_pid, owner_start)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (cfg.name, cfg.group, cfg.arch, json.dumps(cfg.to_dict()), status, time.time(), pid,
             process_start(pid)),
        )
        run_id = int(cur.lastrowid)
        self.run_dir(run_id)
        return run_id

    def set_status(self, run_id: int, status: str, error: str | None = None, *, device: str | None = None) -> None:
        """Change a run's status; 'running' stamps the start (and this process as owner), an end status the finish."""
        status = run_status.check(status)
        now = time.time()
        sets = ["status = ?", "error = ?"]
        params: list[Any] = [status, error]
        if status == RunStatus.RUNNING:
            pid = os.getpid()
            sets += ["started = COALESCE(started, ?)", "finished = NULL", "owner_pid = ?", "owner_start = ?"]
            params += [now, pid, process_start(pid)]
        elif status == RunStatus.QUEUED:
            pid = os.getpid()
            sets += ["finished = NULL", "owner_pid = ?", "owner_start = ?", "cancel_requested = 0"]
            params += [pid, process_start(pid)]
        else:
            sets.append("finished = ?")
            params.append(now)
        if device is not None:
            sets.append("device = ?")
            params.append(device)
        cur = self._write(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*params, int(run_id)))
        if cur.rowcount == 0:
            raise RunNotFoundError(run_id)

    def set_node(self, run_id: int, node: str) -> None:
        """Where the run trains (a Ray backend run: node, GPU, worker pid)."""
        cur = self._write("UPDATE runs SET node = ? WHERE id = ?", (node, int(run_id)))
        if cur.rowcount == 0:
            raise RunNotFoundError(run_id)

    def set_checkpoint(self, run_id: int, epoch: int, path: str | os.PathLike[str], kind: str = "last") -> None:
        """Record that `path` holds the checkpoint after `epoch` (one transaction with the artifact row)."""
        statements: list[tuple[str, tuple[Any, ...]]] = [(
            "INSERT INTO artifacts (run_id, kind, path) VALUES (?, ?, ?)"
            " ON CONFLICT(run_id, kind) DO UPDATE SET path = excluded.path",
            (int(run_id), kind, str(path)),
        )]
        if kind == "last":
            statements.append(("UPDATE runs SET checkpoint_epoch = ? WHERE id = ?", (int(epoch), int(run_id))))
        self._transaction(statements)

    def add_artifact(self, run_id: int, kind: str, path: str | os.PathLike[str]) -> None:
        """Record a file belonging to a run (one per kind; a new path replaces the old)."""
        self._write(
            "INSERT INTO artifacts (run_id, kind, path) VALUES (?, ?, ?)"
            " ON CONFLICT(run_id, kind) DO UPDATE SET path = excluded.path",
            (int(run_id), kind, str(path)),
        )

    def artifacts(self, run_id: int) -> dict[str, Path]:
        """kind -> path of the run's recorded files."""
        rows = self._conn().execute("SELECT kind, path FROM artifacts WHERE run_id = ?", (int(run_id),))
        return {r["kind"]: Path(r["path"]) for r in rows}

    def set_results(self, run_id: int, results: Mapping[str, Any]) -> None:
        """Store the final results (JSON); `best_val_acc` / `test_acc` also go to their own columns."""
        clean = records.sanitize(dict(results))
        cur = self._write(
            "UPDATE runs SET results = ?, best_val_acc = ?, test_acc = ? WHERE id = ?",
            (records.dumps(clean), records.clean_float(clean.get("best_val_acc")),
             records.clean_float(clean.get("test_acc")), int(run_id)),
        )
        if cur.rowcount == 0:
            raise RunNotFoundError(run_id)

    def get_run(self, run_id: int) -> RunRecord | None:
        """The run, or None when there is no such id."""
        row = self._conn().execute(records.SELECT_RUN + " WHERE r.id = ?", (int(run_id),)).fetchone()
        return records.from_row(row) if row is not None else None

    def list_runs(
        self,
        arch: str | None = None,
        status: str | Iterable[str] | None = None,
        group: str | None = None,
        *,
        name: str | None = None,
        tags: Iterable[str] = (),
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[RunRecord]:
        """Runs matching every given filter (status may be one or several; a run has every tag in `tags`), newest
        first by default."""
        where: list[str] = []
        params: list[Any] = []
        if arch is not None:
            where.append("r.arch = ?")
            params.append(arch)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"r.status IN ({', '.join('?' * len(statuses))})")
            params += statuses
        if group is not None:
            where.append("r.group_name = ?")
            params.append(group)
        if name is not None:
            where.append("r.name = ?")
            params.append(name)
        for tag in tags:
            where.append("EXISTS (SELECT 1 FROM json_each(r.tags) WHERE value = ?)")
            params.append(tag)
        sql = records.SELECT_RUN
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.id " + ("DESC" if newest_first else "ASC")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [records.from_row(row) for row in self._conn().execute(sql, params)]

    # -- run management ---------------------------------------------------------------------------
    def rename(self, run_id: int, name: str) -> None:
        """A new name for a run (also in its stored config); ConfigError when it is not valid text."""
        run = self.require_run(run_id)
        cfg = run.config.replace(name=name.strip())
        self._write("UPDATE runs SET name = ?, config = ? WHERE id = ?",
                    (cfg.name, json.dumps(cfg.to_dict()), int(run_id)))

    def set_tags(self, run_id: int, tags: Iterable[str]) -> tuple[str, ...]:
        """Replace a run's tags (trimmed, unique, sorted); ValueError for an empty or over-long tag."""
        self.require_run(run_id)
        clean = tuple(sorted({t.strip() for t in tags}))
        bad = next((t for t in clean if not t or len(t) > MAX_TAG or "," in t), None)
        if bad is not None:
            raise ValueError(f"tag {bad!r}: a tag is 1 to {MAX_TAG} characters without commas")
        self._write("UPDATE runs SET tags = ? WHERE id = ?", (json.dumps(clean), int(run_id)))
        return clean

    def set_note(self, run_id: int, note: str) -> None:
        """A free-text note on a run ('' clears it)."""
        self.require_run(run_id)
        if len(note) > MAX_NOTE:
            raise ValueError(f"a note is at most {MAX_NOTE} characters (got {len(note)})")
        self._write("UPDATE runs SET note = ? WHERE id = ?", (note, int(run_id)))

    def tags(self) -> list[str]:
        """Every tag used by some run, sorted."""
        rows = self._conn().execute("SELECT DISTINCT j.value FROM runs, json_each(runs.tags) j ORDER BY 1")
        return [r[0] for r in rows]

    def request_cancel(self, run_id: int) -> bool:
        """Ask whichever process trains (or queued) this run to stop it: it stops within one batch (a queued run
        before it starts). False when the run is not queued or running."""
        active = run_status.names(run_status.ACTIVE)
        cur = self._write(
            f"UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status IN ({', '.join('?' * len(active))})",
            (int(run_id), *active),
        )
        return cur.rowcount == 1

    def cancel_requested(self, run_id: int) -> bool:
        row = self._conn().execute("SELECT cancel_requested FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        return bool(row and row[0])

    def require_run(self, run_id: int) -> RunRecord:
        """The record of `run_id`; RunNotFoundError when there is none."""
        run = self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    def groups(self) -> list[str]:
        """Sweep groups that have at least one run, sorted."""
        rows = self._conn().execute(
            "SELECT DISTINCT group_name FROM runs WHERE group_name != '' ORDER BY group_name"
        )
        return [r[0] for r in rows]

    def delete_run(self, run_id: int) -> None:
        """Delete a finished run, its metrics and its folder; an active run is refused."""
        run = self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        if run.status in run_status.ACTIVE:
            raise ValueError(f"run {run_id} is {run.status}; cancel it before deleting it")
        self._transaction([
            ("DELETE FROM batches WHERE run_id = ?", (int(run_id),)),
            ("DELETE FROM epochs WHERE run_id = ?", (int(run_id),)),
            ("DELETE FROM artifacts WHERE run_id = ?", (int(run_id),)),
            ("DELETE FROM runs WHERE id = ?", (int(run_id),)),
        ])
        shutil.rmtree(layout.run_dir(self.home, run_id), ignore_errors=True)

    # -- disk -----------------------------------------------------------------------------------
    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk by kind: checkpoints (run folders), image cache, feature cache, database, other."""
        return disk.usage(self.home)

    def unused_caches(self) -> dict[Path, int]:
        """Cache folders/files no run needs, with their bytes: image caches at a size no stored run uses, feature
        files no stored run trained on. Deleting them is safe (a later run rebuilds what it needs)."""
        return disk.unused_caches(self.cache_dir, self.list_runs())

    def prune_caches(self) -> tuple[list[Path], int]:
        """Delete `unused_caches()`; returns what was removed and the bytes freed. Refused while a run is queued or
        running (it may be filling a cache right now)."""
        active = self.list_runs(status=run_status.ACTIVE)
        if active:
            raise ValueError(f"run {active[0].id} is {active[0].status}; prune the caches when nothing is training")
        unused = self.unused_caches()
        disk.remove(unused)
        return list(unused), sum(unused.values())

    # -- metrics --------------------------------------------------------------------------------
    def add_epoch(self, run_id: int, metrics: Any) -> None:
        """Store one epoch's metrics (an EpochMetrics or a dict); a repeated epoch replaces the old row."""
        get = metrics.get if isinstance(metrics, Mapping) else lambda k: getattr(metrics, k, None)
        values = [records.clean_float(get(k)) for k in records.EPOCH_FIELDS]
        self._write(
            "INSERT INTO epochs (run_id, epoch, " + ", ".join(records.EPOCH_FIELDS) + ")"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(run_id, epoch) DO UPDATE SET "
            + ", ".join(f"{k} = excluded.{k}" for k in records.EPOCH_FIELDS),
            (int(run_id), int(get("epoch")), *values),
        )

    def add_batches(self, run_id: int, rows: Iterable[Any]) -> None:
        """Store batch losses in one transaction; rows are (epoch, batch, loss) tuples or dicts."""
        params = []
        for row in rows:
            if isinstance(row, Mapping):
                epoch, batch, loss = row["epoch"], row["batch"], row["loss"]
            else:
                epoch, batch, loss = row
            params.append((int(run_id), int(epoch), int(batch), records.clean_float(loss)))
        if params:
            self._write(
                "INSERT INTO batches (run_id, epoch, batch, loss) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(run_id, epoch, batch) DO UPDATE SET loss = excluded.loss",
                params, many=True,
            )

    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """Per-epoch metrics in epoch order."""
        rows = self._conn().execute(
            "SELECT epoch, " + ", ".join(records.EPOCH_FIELDS) + " FROM epochs WHERE run_id = ? ORDER BY epoch",
            (int(run_id),),
        )
        return [dict(r) for r in rows]

    def batches(self, run_id: int) -> list[dict[str, Any]]:
        """Per-batch training losses in order."""
        rows = self._conn().execute(
            "SELECT epoch, batch, loss FROM batches WHERE run_id = ? ORDER BY epoch, batch", (int(run_id),)
        )
        return [dict(r) for r in rows]

    def truncate_after(self, run_id: int, epoch: int) -> None:
        """Drop epoch and batch rows after `epoch` (resume restarts there; nothing lost, nothing doubled)."""
        self._transaction([
            ("DELETE FROM epochs WHERE run_id = ? AND epoch > ?", (int(run_id), int(epoch))),
            ("DELETE FROM batches WHERE run_id = ? AND epoch > ?", (int(run_id), int(epoch))),
        ])

    # -- crash recovery -------------------------------------------------------------------------
    def mark_interrupted(self, *, only_dead: bool = True, ids: Collection[int] | None = None) -> list[int]:
        """Turn runs left queued/running by a process that no longer exists into 'interrupted'.

        With `only_dead=False` every queued/running run is marked (a caller that knows none is alive).
        Runs owned by a live process (e.g. a CLI training beside the dashboard) are left alone.
        `ids`: only these runs (default: all).
        """
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            active = run_status.names(run_status.ACTIVE)
            rows = conn.execute(
                f"SELECT id, owner_pid, owner_start FROM runs WHERE status IN ({', '.join('?' * len(active))})",
                active,
            ).fetchall()
            dead = [
                r["id"] for r in rows
                if (ids is None or r["id"] in ids)
                and (not only_dead or not process_alive(r["owner_pid"], r["owner_start"]))
            ]
            now = time.time()
            for run_id in dead:
                conn.execute(
                    "UPDATE runs SET status = ?, finished = ?,"
                    " error = 'the process running it stopped unexpectedly; resume it to continue' WHERE id = ?",
                    (RunStatus.INTERRUPTED.value, now, run_id),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return dead
