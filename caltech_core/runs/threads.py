"""The thread backend of the job queue: runs execute one at a time, in submission order, in a daemon worker
thread of this process, each through `job.run_job`; cancel is cooperative (the run stops at its next batch).

`BaseJobManager` is what this and the Ray backend (`raybackend.RayJobManager`) share; both implement
`manager.JobManager`.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import Any

from caltech_core.config import TrainConfig
from caltech_core.runs.job import Runner, checked_config, default_runner, resumable_run, run_job
from caltech_core.runs.store import RunStore
from caltech_core.runs.tracker import Tracker
from caltech_core.status import Phase, Progress, RunStatus

log = logging.getLogger(__name__)


class BaseJobManager(ABC):
    """What both job managers share: submit and resume through the store, wait, a queued run's progress.

    A subclass sets `store`, `_cond` (guarding its queue), `_closing` and `_thread` (its worker), and defines
    `_enqueue` (start or queue a run; called with the lock held) and `_pending` (is a run, or any run when None,
    not ended yet?).
    """

    store: RunStore
    _cond: threading.Condition
    _closing: bool
    _thread: threading.Thread

    @property
    def alive(self) -> bool:
        """Takes new runs: not shut down, and the worker thread (the thread backend's runner, the Ray backend's
        drain loop) runs."""
        return self._thread.is_alive() and not self._closing

    @abstractmethod
    def _enqueue(self, run_id: int, *, resume: bool) -> None: ...

    @abstractmethod
    def _pending(self, run_id: int | None) -> bool: ...

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("the job manager is shut down")

    def submit(self, cfg: TrainConfig | dict[str, Any]) -> int:
        """Validate and queue a run; returns its id (ConfigError on an invalid value)."""
        cfg = checked_config(cfg)
        with self._cond:
            self._check_open()
            # Created under the lock, so the queue order is the id order even with concurrent submitters.
            run_id = self.store.create_run(cfg, status=RunStatus.QUEUED)
            self._enqueue(run_id, resume=False)
        return run_id

    def resume(self, run_id: int) -> None:
        """Queue an interrupted or cancelled run again; it continues from its last checkpoint."""
        with self._cond:
            record = resumable_run(self.store, run_id)
            self._check_open()
            self.store.set_status(run_id, RunStatus.QUEUED, record.error)
            self._enqueue(run_id, resume=True)

    def wait(self, run_id: int | None = None, timeout: float | None = None) -> bool:
        """Block until `run_id` (or every run) has ended and its rows are in the store; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending(run_id):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _queued_progress(self, run_id: int) -> Progress:
        record = self.store.get_run(run_id)
        epochs = record.config.epochs if record else 0
        return Progress(run_id, Phase.QUEUED, 0, epochs, 0, 0, 0.0, None, 0.0)


class ThreadJobManager(BaseJobManager):
    """A FIFO queue of training runs executed one at a time by a daemon worker thread."""

    def __init__(self, store: RunStore, data_root: str | Path | None = None, runner: Runner | None = None,
                 *, recover: bool = True) -> None:
        self.store = store
        self.data_root = data_root
        self._runner = runner
        if runner is None:
            # The training stack (torch, torchvision) is imported here, by the thread that makes the manager, not
            # first by the worker: two threads importing a package for the first time at once can break it (one
            # gets a submodule of the package the other is still initialising).
            default_runner()
        self._cond = threading.Condition()
        self._queue: deque[int] = deque()
        self._resume: set[int] = set()
        self._current: int | None = None
        self._stops: dict[int, threading.Event] = {}
        self._trackers: dict[int, Tracker] = {}
        self._closing = False
        self.interrupted: list[int] = store.mark_interrupted() if recover else []
        self._thread = threading.Thread(target=self._work, name="caltech-jobs", daemon=True)
        self._thread.start()

    # -- queue -------------------------------------------------------------------------------------
    def _enqueue(self, run_id: int, *, resume: bool) -> None:
        if resume:
            self._resume.add(run_id)
        self._queue.append(run_id)
        self._cond.notify_all()

    def _pending(self, run_id: int | None) -> bool:
        if run_id is None:
            return bool(self._queue) or self._current is not None
        return run_id in self._queue or run_id == self._current

    def cancel(self, run_id: int) -> bool:
        """Cancel a queued run (removed, "cancelled") or ask the running one to stop, whichever process owns it
        (another one, e.g. a CLI training, reads the store's flag and stops within one batch); False when the
        run is neither queued nor running."""
        with self._cond:
            if run_id in self._queue:
                self._queue.remove(run_id)
                self._resume.discard(run_id)
                self.store.set_status(run_id, RunStatus.CANCELLED)
                return True
            if run_id == self._current:
                self._stops[run_id].set()
                return True
        return self.store.request_cancel(run_id)

    def queued(self) -> list[int]:
        """Ids waiting to run, in order."""
        with self._cond:
            return list(self._queue)

    def current(self) -> int | None:
        """The id of the running job, if any."""
        with self._cond:
            return self._current

    def running(self) -> list[int]:
        """The running job as a list (the Ray backend runs several at once)."""
        with self._cond:
            return [] if self._current is None else [self._current]

    def progress(self, run_id: int) -> Progress | None:
        """Progress of a queued or running job; None for any other run."""
        with self._cond:
            tracker = self._trackers.get(run_id) if run_id == self._current else None
            if tracker is None and run_id in self._queue:
                return self._queued_progress(run_id)
        return tracker.snapshot() if tracker is not None else None

    def shutdown(self, wait: bool = False) -> None:
        """Stop the worker: the running job stops at its next batch; it and the queued ones become "interrupted"."""
        with self._cond:
            self._closing = True
            for run_id in self._queue:
                self.store.set_status(run_id, RunStatus.INTERRUPTED, "the studio was shut down before this run started")
            self._queue.clear()
            if self._current is not None:
                self._stops[self._current].set()
            self._cond.notify_all()
        if wait:
            self._thread.join()

    # -- worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                run_id = self._queue.popleft()
                resume = run_id in self._resume
                self._resume.discard(run_id)
                record = self.store.get_run(run_id)
                if record is None:  # deleted while queued
                    continue
                stop = threading.Event()
                self._current = run_id
                self._stops[run_id] = stop
                self._trackers[run_id] = Tracker(self.store, run_id, record.config, stop)
            try:
                status = run_job(self.store, run_id, data_root=self.data_root, runner=self._runner,
                                 resume=resume, stop=stop, tracker=self._trackers[run_id])
                if self._closing and status == RunStatus.CANCELLED:
                    self.store.set_status(run_id, RunStatus.INTERRUPTED, "the studio was shut down during this run")
            except Exception as exc:  # the store itself failed; keep the worker alive for the next job
                log.exception("job %s could not be run", run_id)
                try:
                    self.store.set_status(run_id, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
                except Exception:
                    log.exception("could not record the failure of run %s", run_id)
            finally:
                with self._cond:
                    self._current = None
                    self._stops.pop(run_id, None)
                    self._trackers.pop(run_id, None)
                    self._cond.notify_all()
