"""One run's engine callbacks: metrics written to the store as they happen (batch rows buffered), the cancel flag,
and where the run stands (`status.Progress`) for whoever shows it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caltech_core.config import TrainConfig
from caltech_core.runs.records import StoreWriter
from caltech_core.status import Phase, Progress

BATCH_FLUSH_EVERY = 20  # batch rows buffered before a write ...
BATCH_FLUSH_SECONDS = 1.0  # ... or after this long, whichever comes first; always at epoch end
CANCEL_POLL_SECONDS = 0.5  # how often a run reads the store's cancel flag (set by another process)


class Tracker:
    """The callbacks of one run: metrics to the store (batch rows buffered), progress, cancel flag."""

    def __init__(self, store: StoreWriter, run_id: int, cfg: TrainConfig, stop: threading.Event,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.cfg = cfg
        self.stop = stop
        self.on_progress = on_progress
        self.phase = Phase.QUEUED
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
            self.phase = Phase.TRAINING
            self.epoch_done = epoch - 1
            self.batch, self.batches = batch, num_batches
            if self._t0 is None:
                self._t0, self._f0 = time.monotonic(), self._fraction()
            if batch >= num_batches:
                self.phase = Phase.VALIDATING
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
            self.phase = Phase.TESTING if self.epoch_done >= self.epochs else Phase.TRAINING
        self._notify()

    def on_checkpoint(self, epoch: int, path: Any) -> None:
        kind = Path(path).stem  # "last" or "best"
        self.store.set_checkpoint(self.run_id, int(epoch), path, kind=kind)

    def on_resume(self, epoch: int) -> None:
        """Training goes on after `epoch`, the one last.pt holds: rows past it belong to epochs trained again."""
        self.store.truncate_after(self.run_id, epoch)
        self.start_at(epoch)

    def on_phase(self, phase: str, done: int = 0, total: int = 0) -> None:
        """A new phase (a `Phase`, or its value as a string), with its items done / total."""
        with self._lock:
            self.phase = Phase(phase)
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
            fraction = 1.0 if self.phase is Phase.DONE else self._fraction()
            eta = None
            if self._t0 is not None and fraction > self._f0 and self.phase is not Phase.FAILED:
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
                                on_resume=self.on_resume, should_stop=self.should_stop, on_phase=self.on_phase)
