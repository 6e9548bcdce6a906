"""The process-wide job manager of a store, on the chosen backend."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from caltech_core import settings
from caltech_core.runs.backend import LOCAL, backend_from_env, check_address
from caltech_core.runs.jobs import JobManager
from caltech_core.runs.store import RunStore

_MANAGERS: dict[tuple[Path, str], Any] = {}
_MANAGERS_LOCK = threading.Lock()


def get_manager(home: str | Path | None = None, data_root: str | Path | None = None,
                backend: str | None = None) -> Any:
    """The process-wide manager of store `home` (default: `settings.studio_home()`) on `backend`: "local" (a `JobManager`,
    one run at a time in a thread of this process) or a Ray address (a `raybackend.RayJobManager`: local-cluster,
    auto, ray://host:port, host:port); None = `$CALTECH_STUDIO_RAY`, unset = local. Runs left by a dead process
    are marked "interrupted" when it starts."""
    backend = backend_from_env() if backend is None else check_address(backend)
    path = Path(home if home is not None else settings.studio_home()).expanduser().resolve()
    with _MANAGERS_LOCK:
        manager = _MANAGERS.get((path, backend))
        if manager is None or not manager.alive:
            if backend == LOCAL:
                manager = JobManager(RunStore(path), data_root=data_root)
            else:
                from caltech_core.runs.raybackend import RayJobManager

                manager = RayJobManager(RunStore(path), backend, data_root=data_root)
            _MANAGERS[(path, backend)] = manager
        return manager
