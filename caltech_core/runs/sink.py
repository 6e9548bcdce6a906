"""The Ray backend's `Sink` actor and what it holds: numbered store writes (`Message`), cancel flags, each run's
latest `Progress`, and a run's `Placement`.

Apart from remote.py (the worker) and raybackend.py (the driver) on purpose: Ray starts the detached sink in a
process of its own, which imports the sink's module and unpickles every argument sent to it. This module imports
nothing heavier than `caltech_core.status`, so that process holds no torch (a sink that imported the worker's
module took 771 MB of memory and 3 s of CPU to start, once per driver, for as long as the cluster lives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from caltech_core.status import Progress

Message = tuple[int, int, str, tuple[Any, ...], dict[str, Any]]  # (sequence number, run id, store method, args, kwargs)


@dataclass(frozen=True)
class Placement:
    """Where a run trains: the Ray node, its GPUs (none for a CPU run) and the worker process."""

    node_ip: str
    node_id: str
    gpu_ids: tuple[str, ...]
    pid: int
    hostname: str

    def describe(self) -> str:
        gpus = f"GPU {', '.join(self.gpu_ids)}" if self.gpu_ids else "CPU"
        return f"Ray node {self.node_ip} ({self.hostname}) · {gpus} · worker pid {self.pid}"


class Sink:
    """The Ray actor between workers and the driver: numbered store writes in arrival order, cancel flags and each
    run's latest progress. One per driver process."""

    def __init__(self) -> None:
        self._messages: list[Message] = []
        self._seq = 0
        self._cancelled: set[int] = set()
        self._progress: dict[int, Progress] = {}

    def put(self, run_id: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        self._seq += 1
        self._messages.append((self._seq, run_id, method, args, kwargs))
        return self._seq

    def take(self, applied: int) -> list[Message]:
        """Drop the messages up to `applied` (the driver has them in SQLite) and return the rest, in order."""
        self._messages = [m for m in self._messages if m[0] > applied]
        return list(self._messages)

    def cancel(self, run_id: int) -> None:
        self._cancelled.add(run_id)

    def cancel_requested(self, run_id: int) -> bool:
        return run_id in self._cancelled

    def forget(self, run_id: int) -> None:
        self._cancelled.discard(run_id)
        self._progress.pop(run_id, None)

    def set_progress(self, run_id: int, progress: Progress) -> None:
        self._progress[run_id] = progress

    def progress(self) -> dict[int, Progress]:
        return dict(self._progress)
