"""The worker side of the Ray backend: a run's Ray task (`train_remote`) trains through the one `job.run_job`
path with a `RemoteStore`, whose writes (status, batch and epoch rows, checkpoints, results) become numbered
messages to the driver's `Sink` actor (sink.py). The driver (`raybackend.py`) applies them to SQLite; cancel
flags and each run's latest progress go through the sink too.

A run never waits for the sink with `ray.get` or `ray.wait`: Ray lends the CPUs of a task blocked in either to
the scheduler (so that nested tasks cannot deadlock; it keeps GPUs and custom resources), which would start a
queued run beside this one on CPUs it still uses. Receipts are `concurrent.futures` futures
(`ObjectRef.future()`), collected as they arrive and waited for only where the run must know: an epoch's rows
(before a last.pt can hold that epoch), the cancel flag and the task's end.

Folders are the store's layout (`caltech_core.layout`) under the store path as this worker sees it.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from caltech_core import layout
from caltech_core.runs.job import Runner, run_job
from caltech_core.runs.records import RunRecord
from caltech_core.runs.sink import Placement
from caltech_core.status import Phase, Progress

PROGRESS_SECONDS = 0.5  # a worker sends its progress at most this often (and on every phase change)
UNCONFIRMED_WRITES = 64  # a worker waits for its oldest receipt beyond this many writes in flight
RAY_VERSION = "2.60.0"  # the pin in requirements.txt, for the message when Ray is missing


class RayBackendError(RuntimeError):
    """Ray is missing, the address is not understood, or the cluster cannot be reached."""


def ray_module() -> Any:
    """The ray package (imported on first use: the thread backend needs nothing of it)."""
    try:
        import ray
    except ImportError as exc:
        raise RayBackendError(f"the Ray backend needs the ray package: pip install ray=={RAY_VERSION}") from exc
    return ray


class RemoteStore:
    """The `StoreWriter` of a run on a Ray worker: the run's record as submitted, folders under the store path as
    this worker sees it, and every write sent to the driver's sink without waiting for it.

    Ray runs one caller's calls on an actor in the order they were made (the sink is a synchronous actor without
    task retries), so the sink numbers the writes in their order; at most `UNCONFIRMED_WRITES` await a receipt.
    An epoch's rows are confirmed before training goes on, so before any last.pt can hold that epoch: a killed
    worker loses only rows of epochs that a resume trains again.
    """

    def __init__(self, sink: Any, record: RunRecord, home: str | Path) -> None:
        self._sink = sink
        self._record = record
        self.home = Path(home)
        self._unconfirmed: deque[Future[int]] = deque()  # receipts of writes in flight, oldest first

    @property
    def cache_dir(self) -> Path:
        path = layout.cache_dir(self.home)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run_dir(self, run_id: int) -> Path:
        path = layout.run_dir(self.home, run_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def get_run(self, run_id: int) -> RunRecord | None:
        return self._record if run_id == self._record.id else None

    def cancel_requested(self, run_id: int) -> bool:
        # A future, not ray.get: the task keeps its CPUs during the round trip (once per tracker poll).
        return bool(self._sink.cancel_requested.remote(int(run_id)).future().result())

    def _put(self, method: str, run_id: int, *args: Any, **kwargs: Any) -> None:
        self._unconfirmed.append(self._sink.put.remote(int(run_id), method, args, kwargs).future())
        while self._unconfirmed and (self._unconfirmed[0].done() or len(self._unconfirmed) > UNCONFIRMED_WRITES):
            self._unconfirmed.popleft().result()  # raises when the sink or the cluster is gone

    def confirm(self) -> None:
        """Wait until the sink holds every write sent so far."""
        while self._unconfirmed:
            self._unconfirmed.popleft().result()

    def set_status(self, run_id: int, status: str, error: str | None = None, *, device: str | None = None) -> None:
        self._put("set_status", run_id, str(status), error, device=device)

    def add_batches(self, run_id: int, rows: Any) -> None:
        rows = list(rows)
        if rows:
            self._put("add_batches", run_id, rows)

    def add_epoch(self, run_id: int, metrics: Any) -> None:
        self._put("add_epoch", run_id, metrics.to_dict() if hasattr(metrics, "to_dict") else dict(metrics))
        # The engine writes last.pt after this: a resume from it must find this epoch's rows (one round trip).
        self.confirm()

    def set_checkpoint(self, run_id: int, epoch: int, path: str | os.PathLike[str], kind: str = "last") -> None:
        # Relative to the store: the driver may see the shared folder at another path.
        self._put("set_checkpoint", run_id, int(epoch), str(Path(path).relative_to(self.home)), kind=kind)

    def set_results(self, run_id: int, results: dict[str, Any]) -> None:
        self._put("set_results", run_id, results)

    def truncate_after(self, run_id: int, epoch: int) -> None:
        self._put("truncate_after", run_id, int(epoch))

    def placed(self, run_id: int) -> Placement:
        ray = ray_module()
        place = Placement(node_ip=ray.util.get_node_ip_address(), node_id=ray.get_runtime_context().get_node_id(),
                          gpu_ids=tuple(str(g) for g in ray.get_gpu_ids()), pid=os.getpid(),
                          hostname=socket.gethostname())
        self._put("placed", run_id, place)
        return place


class _ProgressSender:
    """on_progress of a remote run: the latest snapshot to the sink, on a phase change or every PROGRESS_SECONDS."""

    def __init__(self, sink: Any, run_id: int) -> None:
        self._sink, self._run_id = sink, run_id
        self._phase: Phase | None = None
        self._sent = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.phase != self._phase or now - self._sent >= PROGRESS_SECONDS:
            self._phase, self._sent = progress.phase, now
            self._sink.set_progress.remote(self._run_id, progress)  # no receipt needed: only the latest matters


def train_remote(sink: Any, record: RunRecord, home: str, data_root: str | None, resume: bool,
                 runner: Runner | None) -> str:
    """The body of a run's Ray task: the one `job.run_job` path, through a `RemoteStore`."""
    import torch

    # Ray reuses a worker process across CPU-only runs: size torch's thread pool to this task's CPUs, not an earlier
    # one's (a different count also changes the float sums, so a resume on another worker would not repeat the curves).
    torch.set_num_threads(max(1, int(ray_module().get_runtime_context().get_assigned_resources().get("CPU", 1))))
    store = RemoteStore(sink, record, home)
    try:
        store.placed(record.id)
        return run_job(store, record.id, data_root=data_root, runner=runner, resume=resume,
                       on_progress=_ProgressSender(sink, record.id))
    finally:
        store.confirm()  # the driver drains a run's writes once its task has ended: they must all be there
