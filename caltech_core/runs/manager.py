"""The job manager's interface (`JobManager`) and the process-wide manager of a store on the chosen backend.

Two backends implement `JobManager`: `threads.ThreadJobManager` (one run at a time in a thread of this process)
and `raybackend.RayJobManager` (each run a Ray task, several side by side). `get_manager` is the one cache of
managers in a process: the dashboard's sessions and pages, and the tests, all share what it returns.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from caltech_core import settings
from caltech_core.config import TrainConfig
from caltech_core.runs.backend import LOCAL, backend_from_env, check_address
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.status import Progress


class JobManager(Protocol):
    """A queue of training runs of one store."""

    store: RunStore
    interrupted: list[int]  # runs a dead process had left queued or running, marked "interrupted" at start

    @property
    def alive(self) -> bool:
        """Takes new runs: not shut down, and its worker (the thread, or the Ray drain loop) runs.
        `get_manager` replaces a manager that is not alive."""

    def submit(self, cfg: TrainConfig | dict[str, Any]) -> int:
        """Validate and queue a run; returns its id (ConfigError on an invalid value)."""

    def resume(self, run_id: int) -> None:
        """Queue a cancelled or interrupted run again; it continues from its last checkpoint."""

    def cancel(self, run_id: int) -> bool:
        """Stop a queued or running run (another process's through the store's flag); False when there is none."""

    def wait(self, run_id: int | None = None, timeout: float | None = None) -> bool:
        """Block until `run_id` (or every run) has ended and its rows are in the store; False on timeout."""

    def queued(self) -> list[int]:
        """Runs waiting to start, in order."""

    def running(self) -> list[int]:
        """Runs training now (at most one on the thread backend), in submission order."""

    def current(self) -> int | None:
        """The first running run, if any."""

    def progress(self, run_id: int) -> Progress | None:
        """Where a queued or running run stands; None for any other run."""

    def shutdown(self, wait: bool = False) -> None:
        """Stop: running and queued runs become "interrupted" (resumable); `wait` until the worker has ended."""


_MANAGERS: dict[tuple[Path, str, Path | None], JobManager] = {}
_MANAGERS_LOCK = threading.Lock()


def get_manager(home: str | Path | None = None, data_root: str | Path | None = None,
                backend: str | None = None) -> JobManager:
    """The process-wide manager of store `home` (default: `settings.studio_home()`) on `backend`: "local" (a
    `ThreadJobManager`, one run at a time in a thread of this process) or a Ray address (a `RayJobManager`:
    local-cluster, auto, ray://host:port, host:port); None = `$CALTECH_STUDIO_RAY`, unset = local. One per
    (store, backend, dataset root); a shut-down one is replaced. Runs left by a dead process are marked
    "interrupted" when a manager starts."""
    backend = backend_from_env() if backend is None else check_address(backend)
    path = Path(home if home is not None else settings.studio_home()).expanduser().resolve()
    root = None if data_root is None else Path(data_root).expanduser().resolve()
    key = (path, backend, root)
    with _MANAGERS_LOCK:
        manager = _MANAGERS.get(key)
        if manager is None or not manager.alive:
            if backend == LOCAL:
                manager = ThreadJobManager(RunStore(path), data_root=root)
            else:
                from caltech_core.runs.raybackend import RayJobManager

                manager = RayJobManager(RunStore(path), backend, data_root=root)
            _MANAGERS[key] = manager
        return manager
