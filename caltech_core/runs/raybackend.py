"""The Ray backend of the job queue, the driver's side: every queued run is a Ray task (`remote.train_remote`)
that trains through `job.run_job` on a worker.

The process that owns the store (the dashboard, or the CLI with `--ray`) is the Ray driver and stays the only
writer of SQLite. A worker's `remote.RemoteStore` sends its writes (status, batch and epoch rows, checkpoints,
results) as numbered messages to this driver's `Sink` actor, without waiting in `ray.get` (a task blocked there
lends its CPUs to the scheduler: another run would start beside it); its task ends only once the sink holds them
all. The driver's drain thread applies them to the real `RunStore` in order and acknowledges them, and the sink
drops only acknowledged messages. Rows are upserts keyed
by (run, epoch) and (run, epoch, batch), so a message applied twice leaves one row. Cancel goes the other way: a
flag on the sink that the worker's tracker polls (every `tracker.CANCEL_POLL_SECONDS`), so a remote run stops
within about one batch.

Checkpoints go to the run's folder under the store path as workers see it (`worker_home`, default the store's own
path: one machine or a shared filesystem). Ray is imported lazily: the local backend needs nothing of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from caltech_core import settings
from caltech_core import status as run_status
from caltech_core.runs.backend import LOCAL, LOCAL_CLUSTER, check_address
from caltech_core.runs.job import Runner
from caltech_core.runs.owners import process_alive
from caltech_core.runs.records import RunNotFoundError
from caltech_core.runs.remote import RayBackendError, ray_module, train_remote
from caltech_core.runs.sink import Message, Placement, Sink
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import BaseJobManager
from caltech_core.status import Progress, RunStatus

log = logging.getLogger(__name__)

NAMESPACE = "caltech_studio"
DRAIN_SECONDS = 0.2  # how often the driver empties the sink into SQLite

# Store writes a worker may send; the driver applies nothing else.
_WRITES = frozenset({"set_status", "add_batches", "add_epoch", "set_checkpoint", "set_results", "truncate_after",
                     "placed"})


def connect(address: str) -> Any:
    """Join (or, for `local-cluster`, start) the Ray cluster once per process; returns the ray module."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    try:
        if address == LOCAL_CLUSTER:
            ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayBackendError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
    return ray


def apply_message(store: RunStore, message: Message) -> None:
    """Write one worker message into the store; applying it again changes nothing (upserts by run/epoch/batch)."""
    _seq, run_id, method, args, kwargs = message
    if method not in _WRITES:
        raise ValueError(f"a worker sent an unknown store write {method!r}")
    if method == "placed":
        store.set_node(run_id, args[0].describe())
    elif method == "set_checkpoint":
        epoch, relative = args
        store.set_checkpoint(run_id, epoch, store.home / relative, **kwargs)
    else:
        getattr(store, method)(run_id, *args, **kwargs)


def _store_key(store: RunStore) -> str:
    return hashlib.sha1(str(store.home.resolve()).encode()).hexdigest()[:12]


def _sink_prefix(store: RunStore) -> str:
    return f"caltech-sink-{_store_key(store)}-{socket.gethostname()}-"


def _sink_name(store: RunStore) -> str:
    """Unique per manager; the pid in it tells a later driver whether its owner is still alive."""
    return f"{_sink_prefix(store)}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _crash_message(exc: BaseException) -> tuple[RunStatus, str]:
    """The status and message of a task that did not return: its process or node died (interrupted, resumable),
    or it raised before `run_job` could record anything (failed)."""
    ray = ray_module()
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return RunStatus.FAILED, f"{type(cause).__name__}: {cause}"
    return (RunStatus.INTERRUPTED,
            f"the Ray worker training this run stopped ({type(exc).__name__}); resume it to continue from its "
            "last checkpoint")


class RayJobManager(BaseJobManager):
    """The job manager's API on a Ray cluster: each run is a Ray task (1 GPU when the cluster has GPUs, plus
    `cpus_per_run` CPUs), so runs train side by side up to the cluster's capacity.

    `address`: `local-cluster` (start Ray on this machine), `auto` (the cluster `ray start` made here),
    `ray://host:port` or `host:port`. `worker_home`: the store folder as the workers see it (default
    `$CALTECH_STUDIO_RAY_STORE`, else the store's path). `runtime_env`: Ray's per-task environment (e.g. env_vars).
    """

    def __init__(self, store: RunStore, address: str = LOCAL_CLUSTER, data_root: str | Path | None = None,
                 runner: Runner | None = None, *, worker_home: str | Path | None = None,
                 cpus_per_run: float | None = None, runtime_env: dict[str, Any] | None = None,
                 recover: bool = True) -> None:
        self.address = check_address(address)
        if self.address == LOCAL:
            raise ValueError("the local backend is threads.ThreadJobManager")
        self._ray = connect(self.address)
        self.store = store
        self.data_root = None if data_root is None else str(data_root)
        self._runner = runner
        self.worker_home = str(worker_home or settings.ray_worker_home() or store.home)
        cpus = cpus_per_run if cpus_per_run is not None else settings.ray_cpus() or 1
        try:
            self.cpus_per_run = float(cpus)
        except ValueError:
            raise ValueError(f"{settings.RAY_CPUS.name} is the number of CPUs a run reserves, e.g. 4 (got {cpus!r})") from None
        self.runtime_env = runtime_env
        self._task = self._ray.remote(train_remote)
        # A run that holds a GPU trains in a worker process of its own, which then exits: CUDA reads
        # CUDA_VISIBLE_DEVICES once per process, so a reused worker would train its next run on the card of its
        # first, whichever card Ray assigned, and keep that card's memory. (Ray's own default for a function declared
        # with a GPU; a GPU asked for in `.options()` alone leaves workers reusable.)
        self._gpu_task = self._ray.remote(num_gpus=1, max_calls=1)(train_remote)
        self._cond = threading.Condition()
        self._refs: dict[int, Any] = {}  # submitted runs whose task has not ended, in submission order
        self._started: set[int] = set()  # ... of which the worker has said "running"
        # ... and of those, runs whose last status is in the store while their task has not returned yet: no longer
        # running (a sweep or the queue may already have started the next run in their slot).
        self._ending: set[int] = set()
        self._cancelled: set[int] = set()
        self._progress: dict[int, Progress] = {}
        self._placements: dict[int, Placement] = {}
        self._applied = 0
        self._closing = False
        self.interrupted: list[int] = []
        if recover:
            self.interrupted = self._drain_orphans() + store.mark_interrupted()
        # Detached and named after this process: if this driver dies, a later one drains what it left.
        self._sink = self._ray.remote(Sink).options(
            name=_sink_name(store), namespace=NAMESPACE, lifetime="detached", num_cpus=0,
        ).remote()
        self._thread = threading.Thread(target=self._loop, name="caltech-ray-drain", daemon=True)
        self._thread.start()

    # -- queue -------------------------------------------------------------------------------------
    def _enqueue(self, run_id: int, *, resume: bool) -> None:
        # A Ray task per run, queued by Ray until a slot is free; a resumed one continues on any node.
        record = self.store.get_run(run_id)
        assert record is not None
        options: dict[str, Any] = {"num_cpus": self.cpus_per_run, "max_retries": 0, "name": f"caltech-run-{run_id}"}
        task = self._gpu_task if self._ray.cluster_resources().get("GPU", 0) >= 1 else self._task
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        self._ray.get(self._sink.forget.remote(run_id))  # a resumed run starts without an old cancel flag
        self._refs[run_id] = task.options(**options).remote(
            self._sink, record, self.worker_home, self.data_root, resume, self._runner)
        self._started.discard(run_id)
        self._ending.discard(run_id)
        self._cancelled.discard(run_id)
        self._cond.notify_all()

    def cancel(self, run_id: int) -> bool:
        """Stop a run of this manager within about one batch (a waiting one as soon as it would start); a run of
        another process gets the store's cancel flag. False when the run is neither queued nor running."""
        with self._cond:
            if run_id not in self._refs:
                return self.store.request_cancel(run_id)
            self.store.request_cancel(run_id)
            self._ray.get(self._sink.cancel.remote(run_id))
            if run_id not in self._started:  # still waiting for a slot: its task only records the cancel
                self._cancelled.add(run_id)
                self.store.set_status(run_id, RunStatus.CANCELLED)
            return True

    def queued(self) -> list[int]:
        """Runs waiting for a free slot on the cluster, in submission order."""
        with self._cond:
            return [r for r in self._refs if r not in self._started and r not in self._cancelled
                    and r not in self._ending]

    def running(self) -> list[int]:
        """Runs training now (several at once on a cluster), in submission order."""
        with self._cond:
            return [r for r in self._refs if r in self._started and r not in self._ending]

    def current(self) -> int | None:
        """The first running run, if any (the thread backend's one)."""
        running = self.running()
        return running[0] if running else None

    def placement(self, run_id: int) -> Placement | None:
        """Where the run's latest attempt trains (or trained)."""
        with self._cond:
            return self._placements.get(run_id)

    def progress(self, run_id: int) -> Progress | None:
        """Progress of a queued or running run; None for any other run."""
        with self._cond:
            if run_id not in self._refs or run_id in self._ending:
                return None
            progress = self._progress.get(run_id)
            if progress is None or run_id not in self._started:
                return self._queued_progress(run_id)
            return progress

    def _pending(self, run_id: int | None) -> bool:
        # A run stays in _refs until its task has ended and the drain has put its rows in the store.
        return run_id in self._refs if run_id is not None else bool(self._refs)

    def shutdown(self, wait: bool = False) -> None:
        """Stop: every run of this manager stops at its next batch and becomes "interrupted" (resumable)."""
        with self._cond:
            self._closing = True
            for run_id in self._refs:
                self.store.request_cancel(run_id)
                self._sink.cancel.remote(run_id)
            self._cond.notify_all()
        if wait:
            self._thread.join()

    # -- the driver's loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closing and not self._refs:
                    break
            try:
                self._step()
            except self._ray.exceptions.RayError as exc:  # the sink or the cluster is gone
                log.exception("the Ray cluster stopped answering")
                self._lose_all(exc)
            time.sleep(DRAIN_SECONDS)
        try:
            self._drain()
            self._ray.kill(self._sink)
        except self._ray.exceptions.RayError:  # nothing is left to drain from a cluster that is gone
            log.exception("could not empty and remove this driver's sink")

    def _step(self) -> None:
        with self._cond:
            refs = dict(self._refs)
        if not refs:  # workers only write while a task of this manager is on the cluster
            return
        done, _ = self._ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
        ended = [run_id for run_id, ref in refs.items() if ref in done]
        self._drain()  # after the wait: a task ends only after its last message was received
        for run_id in refs:
            if run_id in self._started and run_id not in ended and self.store.cancel_requested(run_id):
                self._sink.cancel.remote(run_id)  # e.g. `python -m caltech_core cancel ID` from a shell
        progress = self._ray.get(self._sink.progress.remote())
        with self._cond:
            self._progress.update({k: v for k, v in progress.items() if k in self._refs})
        for run_id in ended:
            self._end(run_id, refs[run_id])

    def _drain(self) -> None:
        messages = self._ray.get(self._sink.take.remote(self._applied))
        for message in messages:
            self._apply(message)
            self._applied = message[0]

    def _apply(self, message: Message) -> None:
        _seq, run_id, method, args, _kwargs = message
        try:
            apply_message(self.store, message)
        except RunNotFoundError:
            log.warning("run %s is no longer in the store; dropped its %s", run_id, method)
            return
        with self._cond:
            if method == "placed":
                self._placements[run_id] = args[0]
            elif method == "set_status" and run_id in self._refs:
                if args[0] == RunStatus.RUNNING:
                    self._started.add(run_id)
                elif args[0] in run_status.DONE:
                    self._ending.add(run_id)
                self._cond.notify_all()

    def _end(self, run_id: int, ref: Any) -> None:
        """A task returned or died: record what its messages could not (a crash), then let waiters go."""
        try:
            self._ray.get(ref)
            status, message = None, None
        except self._ray.exceptions.RayError as exc:
            status, message = _crash_message(exc)
            log.warning("run %s: %s", run_id, message)
        record = self.store.get_run(run_id)
        if record is not None:
            if status is not None and record.status in run_status.ACTIVE:
                self.store.set_status(run_id, status, message)
            elif self._closing and record.status == RunStatus.CANCELLED:
                self.store.set_status(run_id, RunStatus.INTERRUPTED, "the studio was shut down during this run")
        self._sink.forget.remote(run_id)
        with self._cond:
            self._refs.pop(run_id, None)
            self._started.discard(run_id)
            self._ending.discard(run_id)
            self._cancelled.discard(run_id)
            self._progress.pop(run_id, None)
            self._cond.notify_all()

    def _lose_all(self, exc: BaseException) -> None:
        with self._cond:
            lost, self._refs = list(self._refs), {}
            self._started.clear()
            self._ending.clear()
            self._cond.notify_all()
        for run_id in lost:
            record = self.store.get_run(run_id)
            if record is not None and record.status in run_status.ACTIVE:
                self.store.set_status(run_id, RunStatus.INTERRUPTED,
                                      f"lost contact with the Ray cluster ({type(exc).__name__}); resume it to continue")

    def _drain_orphans(self) -> list[int]:
        """Apply what sinks of dead drivers of this store (on this host) still hold, then remove those sinks;
        returns their runs that this left queued or running, now marked "interrupted"."""
        prefix = _sink_prefix(self.store)
        orphaned: set[int] = set()
        for entry in self._ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"] if isinstance(entry, dict) else entry
            pid = name[len(prefix):].split("-")[0]
            if not name.startswith(prefix) or not pid.isdigit() or int(pid) == os.getpid() or process_alive(int(pid), None):
                continue
            orphan = self._ray.get_actor(name, namespace=NAMESPACE)
            messages = self._ray.get(orphan.take.remote(0))
            for message in messages:
                self._apply(message)
                orphaned.add(message[1])
            log.info("applied %d message(s) left by dead driver %s", len(messages), pid)
            self._ray.kill(orphan)
        # A dead driver's runs are no process's any more, though a "running" among its messages (again, when the
        # driver died before its next drain dropped it) has just stamped this process as their owner.
        return self.store.mark_interrupted(only_dead=False, ids=orphaned)
