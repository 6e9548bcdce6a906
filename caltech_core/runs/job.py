"""`run_job`: the one code path that trains a stored run (a job manager's worker, a Ray worker and the CLI's
foreground `train` all call it). It marks the run running, loads the splits, calls the runner (`engine.train`)
with a tracker's callbacks that write metrics to the store as they happen, and stores the results or the failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from caltech_core import layout
from caltech_core import status as run_status
from caltech_core.config import ConfigError, TrainConfig
from caltech_core.nets.device import resolve_device
from caltech_core.runs.records import RunNotFoundError, RunRecord, StoreWriter
from caltech_core.runs.tracker import Tracker
from caltech_core.status import Phase, Progress, RunStatus
from caltech_core.training.failures import is_out_of_memory, oom_message

log = logging.getLogger(__name__)

Runner = Callable[..., Any]


def default_runner() -> Runner:
    """`engine.train`, looked up when called (so a test's stand-in for it is seen), its module imported then."""
    from caltech_core.training import engine

    return engine.train


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
        return str(resolve_device(cfg.device))
    except Exception as exc:  # e.g. cuda asked for on a machine without it: the runner will report it
        log.info("device %r not resolved: %s", cfg.device, exc)
        return None


def run_job(
    store: StoreWriter,
    run_id: int,
    *,
    data_root: str | Path | None = None,
    runner: Runner | None = None,
    resume: bool = False,
    stop: threading.Event | None = None,
    tracker: Tracker | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> str:
    """Train stored run `run_id` to its end and record the outcome; returns the final status.

    Never raises for a training failure: any exception becomes status "failed" with its message (the
    traceback goes to the log); out-of-memory gets advice to reduce the batch size. The tracker's last phase is
    `Phase.FAILED` for a failed run, else `Phase.DONE`.
    """
    record = store.get_run(run_id)
    if record is None:
        raise RunNotFoundError(run_id)
    cfg = record.config
    stop = stop or threading.Event()
    tracker = tracker or Tracker(store, run_id, cfg, stop, on_progress)
    runner = runner or default_runner()
    if store.cancel_requested(run_id):  # cancelled (e.g. from another process) while it waited in a queue
        store.set_status(run_id, RunStatus.CANCELLED, record.error)
        return RunStatus.CANCELLED
    store.set_status(run_id, RunStatus.RUNNING, device=_device_name(cfg))
    status = RunStatus.RUNNING  # until the runner returns or raises (a KeyboardInterrupt leaves it so)
    try:
        from caltech_core.data import dataset

        tracker.on_phase(Phase.LOADING)
        splits = dataset.Splits.from_config(cfg, root=data_root, home=store.home)
        workdir = store.run_dir(run_id)
        # A resumed run drops the rows past the epoch last.pt holds once the engine has read it (`Tracker.on_resume`):
        # the store's record of that epoch lags the file when a kill lands between the write and the record.
        if resume and not layout.last(workdir).is_file():
            resume = False  # nothing saved yet (or the file is gone): start over, without the lost attempt's rows
            store.truncate_after(run_id, 0)
        elif resume:  # progress from the recorded epoch until the engine has read the file's
            tracker.start_at(record.checkpoint_epoch or 0)
        tracker.on_phase(Phase.PREPARING)
        result = runner(cfg, splits, tracker.callbacks(), workdir=workdir, cache_dir=store.cache_dir, resume=resume)
        tracker.flush()
        status = run_status.check(getattr(result, "status", RunStatus.FINISHED))
        error = getattr(result, "error", None)
        if status == RunStatus.FAILED and error and "out of memory" in error.lower() and "batch size" not in error:
            error = oom_message(cfg, error)
        results = _results_dict(result, splits.classes)
        results["dataset"] = splits.source  # id, name, path, fingerprint, excluded/relabelled counts
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
        tracker.on_phase(Phase.FAILED if status == RunStatus.FAILED else Phase.DONE)
    return status


def _flush_quietly(tracker: Tracker) -> None:
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


def resumable_run(store: StoreWriter, run_id: int) -> RunRecord:
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
