"""Background training jobs: a FIFO queue, one job at a time, a worker thread, cooperative cancel.

`run_job` is the one code path that trains a stored run (the manager's worker and the CLI's foreground
`train` both call it): it marks the run running, loads the splits, calls the runner (`engine.train`) with
callbacks that write metrics to the store as they happen, and stores the results or the failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from caltech_core import layout
from caltech_core import status as run_status
from caltech_core.config import ConfigError, TrainConfig
from caltech_core.runs.store import RunNotFoundError, RunRecord, RunStore
from caltech_core.status import RunStatus

log = logging.getLogger(__name__)

BATCH_FLUSH_EVERY = 20  # batch rows buffered before a write ...
BATCH_FLUSH_SECONDS = 1.0  # ... or after this long, whichever comes first; always at epoch end
CANCEL_POLL_SECONDS = 0.5  # how often a run reads the store's cancel flag (set by another process)

Runner = Callable[..., Any]


@dataclass(frozen=True)
class Progress:
    """Where a queued or running job stands. `epoch` counts finished epochs; `batch` is within the current one."""

    run_id: int
    phase: str  # queued | loading data | downloading weights | building model | caching images | computing features | training
    #             | validating | testing | retraining | done
    epoch: int
    epochs: int
    batch: int
    batches: int
    fraction: float  # 0..1 of the whole run
    eta_seconds: float | None
    elapsed_seconds: float
    phase_done: int = 0  # items done / total in the current phase (bytes downloaded, images cached, ...)
    phase_total: int = 0


# Engine phase names -> the words shown to the user.
PHASE_NAMES = {
    "downloading": "downloading weights", "model": "building model", "caching": "caching images", "features": "computing features",
    "training": "training", "testing": "testing", "retraining": "retraining on train+val",
}


def _default_runner() -> Runner:
    from caltech_core.training import engine

    return engine.train


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or CPU allocator) out-of-memory, whatever the exception class torch used."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # torch is a hard dependency; this only keeps the check itself from failing
        return False
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def oom_message(cfg: TrainConfig) -> str:
    """What to tell the user after an out-of-memory failure."""
    smaller = max(1, cfg.batch_size // 2)
    return (
        f"Out of memory with batch size {cfg.batch_size} at image size {cfg.image_size}: reduce the batch size "
        f"(e.g. to {smaller}) and train again."
    )


def checkpoint_epoch(workdir: Path) -> int | None:
    """The last completed epoch saved in the run's last.pt, or None when there is no readable checkpoint."""
    path = layout.last(workdir)
    if not path.is_file():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a torn or foreign file: treat it as no checkpoint, resume from scratch
        log.warning("unreadable checkpoint %s: %s", path, exc)
        return None
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return int(epoch) if epoch is not None else None


class _Tracker:
    """The callbacks of one run: metrics to the store (batch rows buffered), progress, cancel flag."""

    def __init__(self, store: RunStore, run_id: int, cfg: TrainConfig, stop: threading.Event,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.cfg = cfg
        self.stop = stop
        self.on_progress = on_progress
        self.phase = "queued"
        self.epochs = cfg.epochs
        self.epoch_done = 0
        self.batch = 0
        self.batches = 0
        self.started = time.monotonic()
        self.phase_done = 0
        self.phase_total = 0
        self._t0: float | None = None  # first batch of this session (ETA baseline)
        self._f0 = 0.0
        self._buffer: list[tuple[int, int, float]] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._polled = 0.0  # last read of the store's cancel flag

    # -- engine callbacks -------------------------------------------------------------------------
    def on_batch(self, epoch: int, batch: int, num_batches: int, loss: float) -> None:
        with self._lock:
            self.phase = "training"
            self.epoch_done = epoch - 1
            self.batch, self.batches = batch, num_batches
            if self._t0 is None:
                self._t0, self._f0 = time.monotonic(), self._fraction()
            if batch >= num_batches:
                self.phase = "validating"
            self._buffer.append((epoch, batch, float(loss)))
            due = len(self._buffer) >= BATCH_FLUSH_EVERY or time.monotonic() - self._last_flush >= BATCH_FLUSH_SECONDS
        if due:
            self.flush()
        self._notify()

    def on_epoch(self, metrics: Any) -> None:
        self.flush()  # batch rows of the epoch land before its epoch row
        self.store.add_epoch(self.run_id, metrics)
        with self._lock:
            self.epoch_done = int(metrics.epoch)
            self.batch = 0
            self.phase = "testing" if self.epoch_done >= self.epochs else "training"
        self._notify()

    def on_checkpoint(self, epoch: int, path: Any) -> None:
        kind = Path(path).stem  # "last" or "best"
        self.store.set_checkpoint(self.run_id, int(epoch), path, kind=kind)

    def on_phase(self, phase: str, done: int = 0, total: int = 0) -> None:
        with self._lock:
            self.phase = PHASE_NAMES.get(phase, phase)
            self.phase_done, self.phase_total = done, total
        self._notify()

    def should_stop(self) -> bool:
        """Cancelled in this process, or (read at most every CANCEL_POLL_SECONDS) through the store by another."""
        now = time.monotonic()
        if not self.stop.is_set() and now - self._polled >= CANCEL_POLL_SECONDS:
            self._polled = now
            if self.store.cancel_requested(self.run_id):
                self.stop.set()
        return self.stop.is_set()

    # -- helpers -----------------------------------------------------------------------------------
    def flush(self) -> None:
        with self._lock:
            rows, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
        self.store.add_batches(self.run_id, rows)

    def start_at(self, epochs_done: int) -> None:
        """A resumed run: progress counts from the checkpoint's epoch."""
        with self._lock:
            self.epoch_done = epochs_done

    def _fraction(self) -> float:
        per_epoch = self.batch / self.batches if self.batches else 0.0
        return min(1.0, (self.epoch_done + per_epoch) / max(1, self.epochs))

    def snapshot(self) -> Progress:
        with self._lock:
            fraction = 1.0 if self.phase == "done" else self._fraction()
            eta = None
            if self._t0 is not None and fraction > self._f0:
                spent = time.monotonic() - self._t0
                eta = spent / (fraction - self._f0) * (1.0 - fraction)
            return Progress(
                run_id=self.run_id, phase=self.phase, epoch=self.epoch_done, epochs=self.epochs,
                batch=self.batch, batches=self.batches, fraction=fraction, eta_seconds=eta,
                elapsed_seconds=time.monotonic() - self.started, phase_done=self.phase_done,
                phase_total=self.phase_total,
            )

    def _notify(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.snapshot())

    def callbacks(self) -> Any:
        from caltech_core.training import engine

        return engine.Callbacks(on_batch=self.on_batch, on_epoch=self.on_epoch, on_checkpoint=self.on_checkpoint,
                                should_stop=self.should_stop, on_phase=self.on_phase)


def _results_dict(result: Any, classes: list[str]) -> dict[str, Any]:
    if hasattr(result, "to_dict"):
        out = result.to_dict()
    elif is_dataclass(result) and not isinstance(result, type):
        out = asdict(result)
    elif isinstance(result, dict):
        out = dict(result)
    else:
        out = dict(vars(result))
    out.setdefault("classes", list(classes))
    return out


def skipped_files(splits: Any, cfg: TrainConfig, cache_dir: Path) -> list[dict[str, str]]:
    """Files a run left out, as {"path", "reason"} rows: split-file lines naming missing or non-image files,
    empty class folders, and listed images that cannot be decoded (read from the image cache's index)."""
    from caltech_core.data.imagecache import ImageCache

    unreadable = ImageCache.build(splits.all_paths(), cache_dir, resize_size=cfg.resize_size).unreadable
    return [s.to_dict() for s in (*splits.skipped, *unreadable)]


def _device_name(cfg: TrainConfig) -> str | None:
    try:
        from caltech_core.training import engine

        return str(engine.resolve_device(cfg.device))
    except Exception as exc:  # e.g. cuda asked for on a machine without it: the runner will report it
        log.info("device %r not resolved: %s", cfg.device, exc)
        return None


def run_job(
    store: RunStore,
    run_id: int,
    *,
    data_root: str | Path | None = None,
    runner: Runner | None = None,
    resume: bool = False,
    stop: threading.Event | None = None,
    tracker: _Tracker | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> str:
    """Train stored run `run_id` to its end and record the outcome; returns the final status.

    Never raises for a training failure: any exception becomes status "failed" with its message (the
    traceback goes to the log); out-of-memory gets advice to reduce the batch size.
    """
    record = store.get_run(run_id)
    if record is None:
        raise RunNotFoundError(run_id)
    cfg = record.config
    stop = stop or threading.Event()
    tracker = tracker or _Tracker(store, run_id, cfg, stop, on_progress)
    runner = runner or _default_runner()
    if store.cancel_requested(run_id):  # cancelled (e.g. from another process) while it waited in a queue
        store.set_status(run_id, RunStatus.CANCELLED, record.error)
        return RunStatus.CANCELLED
    store.set_status(run_id, RunStatus.RUNNING, device=_device_name(cfg))
    status = RunStatus.FAILED
    try:
        from caltech_core.data import dataset

        tracker.on_phase("loading data")
        splits = dataset.Splits.from_config(cfg, root=data_root)
        workdir = store.run_dir(run_id)
        if resume:
            done = checkpoint_epoch(workdir)
            if done is None:
                resume = False  # nothing saved yet: start over, dropping any rows of the lost attempt
                done = 0
            # Rows past the checkpoint belong to epochs that will be trained again.
            store.truncate_after(run_id, done)
            tracker.start_at(done)
        tracker.on_phase("preparing")
        result = runner(cfg, splits, tracker.callbacks(), workdir=workdir, cache_dir=store.cache_dir, resume=resume)
        tracker.flush()
        status = run_status.check(getattr(result, "status", RunStatus.FINISHED))
        error = getattr(result, "error", None)
        if status == RunStatus.FAILED and error and "out of memory" in error.lower() and "batch size" not in error:
            error = f"{oom_message(cfg)} ({error})"
        results = _results_dict(result, splits.classes)
        if status == RunStatus.FINISHED or getattr(result, "epochs", None):
            # The engine trained on what was readable; say what it left out (the image cache remembers
            # unreadable files, so this only stats them).
            try:
                results["skipped"] = skipped_files(splits, cfg, store.cache_dir)
            except OSError as exc:  # a finished run must not turn "failed" over this list
                log.warning("run %s: could not list skipped files: %s", run_id, exc)
        store.set_results(run_id, results)
        store.set_status(run_id, status, error)
    except Exception as exc:
        log.exception("run %s failed", run_id)
        _flush_quietly(tracker)
        if is_out_of_memory(exc):
            _free_cuda()
            message = oom_message(cfg)
        elif isinstance(exc, (ConfigError, FileNotFoundError)):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        status = RunStatus.FAILED
        store.set_status(run_id, status, message)
    finally:
        tracker.on_phase("done")
    return status


def _flush_quietly(tracker: _Tracker) -> None:
    try:
        tracker.flush()
    except Exception:  # the store itself may be what failed; the run's status write below matters more
        log.exception("could not write buffered batch losses of run %s", tracker.run_id)


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def checked_config(cfg: TrainConfig | dict[str, Any]) -> TrainConfig:
    """`cfg` as a validated TrainConfig (a dict from a form or JSON is converted); ConfigError otherwise."""
    if not isinstance(cfg, TrainConfig):
        cfg = TrainConfig.from_dict(dict(cfg))
    cfg.validate()
    return cfg


def resumable_run(store: RunStore, run_id: int) -> RunRecord:
    """The record of `run_id` if it can be resumed; RunNotFoundError or ValueError saying why not."""
    record = store.get_run(run_id)
    if record is None:
        raise RunNotFoundError(run_id)
    if record.status not in run_status.RESUMABLE:
        raise ValueError(
            f"run {run_id} is {record.status}; only {' or '.join(run_status.names(run_status.RESUMABLE))}"
            " runs can be resumed"
        )
    return record


class BaseJobManager:
    """What both job managers share: submit and resume through the store, wait, a queued run's progress.

    A subclass sets `store`, `_cond` (guarding its queue) and `_closing`, and defines `_enqueue` (start or queue a
    run; called with the lock held) and `_pending` (is a run, or any run when None, not ended yet?).
    """

    store: RunStore
    _cond: threading.Condition
    _closing: bool

    def _enqueue(self, run_id: int, *, resume: bool) -> None:
        raise NotImplementedError

    def _pending(self, run_id: int | None) -> bool:
        raise NotImplementedError

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
        return Progress(run_id, RunStatus.QUEUED.value, 0, epochs, 0, 0, 0.0, None, 0.0)


class JobManager(BaseJobManager):
    """A FIFO queue of training runs executed one at a time by a daemon worker thread."""

    def __init__(self, store: RunStore, data_root: str | Path | None = None, runner: Runner | None = None,
                 *, recover: bool = True) -> None:
        self.store = store
        self.data_root = data_root
        self._runner = runner
        self._cond = threading.Condition()
        self._queue: deque[int] = deque()
        self._resume: set[int] = set()
        self._current: int | None = None
        self._stops: dict[int, threading.Event] = {}
        self._trackers: dict[int, _Tracker] = {}
        self._closing = False
        if recover:
            self.interrupted = store.mark_interrupted()
        else:
            self.interrupted = []
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

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

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
                self._trackers[run_id] = _Tracker(self.store, run_id, record.config, stop)
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
