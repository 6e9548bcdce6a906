"""File writes that never leave half a file, and a lock between threads and processes.

Every file the studio writes for others to read (checkpoints, per-image results, cache indexes, scan caches)
goes through `atomic_write`; every "one at a time across processes" section (an image-cache build, a weights
download) goes through `file_lock`.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", *, fsync: bool = False) -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, then rename it over `path`: a reader sees the old file or the
    whole new one. On an error the temporary file is removed and `path` is untouched. `fsync` makes the
    content durable before the rename (for an index that other bytes must not outlive)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any, *, fsync: bool = False) -> None:
    """`data` as JSON, written with `atomic_write`."""
    with atomic_write(path, "w", fsync=fsync) as f:
        json.dump(data, f)


@contextmanager
def file_lock(path: str | Path, *, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path` (created if missing) for the `with` block.

    `remove=True` deletes the lock file on the way out, so no `*.lock` stays beside the file it guards. The
    file is removed while still locked, and a waiter that then gets the lock on the removed file tries again
    on the new one, so two holders never overlap.
    """
    path = Path(path)
    while True:
        handle = open(path, "a+b")  # noqa: SIM115 (held open across the yield, closed in finally)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            if not remove or _same_file(handle, path):
                break
        except BaseException:
            handle.close()
            raise
        handle.close()  # the holder before us removed this file: lock the one now at `path`
    try:
        yield
    finally:
        if remove:
            path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _same_file(handle: IO[Any], path: Path) -> bool:
    """True when the open `handle` is still the file at `path` (not one a previous holder removed)."""
    try:
        return os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False
