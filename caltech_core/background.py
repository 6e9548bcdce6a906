"""Background work: one process-wide registry that runs long page work (a scan of every image, a cache build,
figures over all runs) on daemon threads, once per key, with progress a page can poll.

A Streamlit server is one process and every browser tab is a session in it, so one registry per process is
what keeps two tabs from starting the same work twice: `submit` starts a key's work only when nothing of that
key is running or done. A failed key may be submitted again (a retry). The work itself is a plain library
function `fn(progress)`; whatever it writes to disk it writes atomically (caltech_core.files), so a kill leaves
the old file or the whole new one.

Training keeps its priority: on Linux each work thread lowers its own scheduling priority (nice +10, per
thread, so the process's training threads are untouched) and the threads it starts inherit it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from caltech_core.status import ProgressFn

log = logging.getLogger(__name__)

Status = Literal["missing", "running", "done", "failed"]
NICE = 10  # added to a work thread's nice value: the CPU goes to training first (see docs/benchmarks.md)
KEEP_DONE = 16  # finished results kept in memory; the oldest beyond this are dropped (their work reruns if asked)


@dataclass(frozen=True)
class TaskState:
    """Where one key's work stands: `done` of `total` (0 while unknown) while running, `result` once done,
    `error` (the exception's type and message) once failed. `started`/`ended` are `time.time()` stamps."""

    status: Status
    label: str = ""
    done: int = 0
    total: int = 0
    result: Any = None
    error: str = ""
    started: float = 0.0
    ended: float = 0.0

    @property
    def fraction(self) -> float:
        """How far the work is, in [0, 1] (0 while the total is unknown)."""
        return min(self.done / self.total, 1.0) if self.total else 0.0

    def seconds_left(self, now: float | None = None) -> float | None:
        """The time left at the rate so far; None until something is done."""
        if self.status != "running" or not self.total or not self.done:
            return None
        elapsed = (time.time() if now is None else now) - self.started
        return elapsed * (self.total - self.done) / self.done


MISSING = TaskState("missing")


class TaskRegistry:
    """Keys to the state of their work; thread-safe. Use the process-wide one, `tasks()`."""

    def __init__(self, *, nice: int = NICE, keep_done: int = KEEP_DONE) -> None:
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)  # notified whenever some work ends
        self._states: dict[str, TaskState] = {}
        self._nice = nice
        self._keep_done = keep_done

    def state(self, key: str) -> TaskState:
        """The state of `key`'s work (status "missing" when never submitted, or dropped)."""
        with self._lock:
            return self._states.get(key, MISSING)

    def submit(self, key: str, fn: Callable[[ProgressFn], Any], *, label: str) -> TaskState:
        """Start `fn(progress)` on a daemon thread unless `key` is running or done; returns the key's state.

        A failed key starts again (a retry). `label` says what the work does ("Checking images").
        """
        with self._lock:
            current = self._states.get(key, MISSING)
            if current.status in ("running", "done"):
                return current
            started = TaskState("running", label=label, started=time.time())
            self._states[key] = started
        thread = threading.Thread(target=self._run, args=(key, fn, started), name=f"background:{key}", daemon=True)
        thread.start()
        return started

    def wait(self, key: str, timeout: float) -> TaskState:
        """`key`'s state once its work has ended, or after `timeout` seconds, whichever comes first."""
        with self._ended:
            self._ended.wait_for(lambda: self._states.get(key, MISSING).status != "running", timeout)
            return self._states.get(key, MISSING)

    def _run(self, key: str, fn: Callable[[ProgressFn], Any], started: TaskState) -> None:
        lower_priority(self._nice)

        def progress(done: int, total: int) -> None:
            with self._lock:
                now = self._states.get(key)
                if now is not None and now.status == "running":
                    self._states[key] = replace(now, done=done, total=total)

        try:
            result = fn(progress)
        except Exception as exc:  # any failure of the work is shown on the page that asked, with a retry
            log.exception("background work %r failed", key)
            self._finish(key, status="failed", error=f"{type(exc).__name__}: {exc}")
        else:
            self._finish(key, status="done", result=result)

    def _finish(self, key: str, **changes: Any) -> None:
        with self._lock:
            self._states[key] = replace(self._states[key], ended=time.time(), **changes)
            done = [k for k, s in self._states.items() if s.status == "done"]
            for old in sorted(done, key=lambda k: self._states[k].ended)[:max(0, len(done) - self._keep_done)]:
                del self._states[old]
            self._ended.notify_all()


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice` (Linux: per thread; elsewhere setpriority would lower the
    whole process, so nothing is done). Threads this thread starts inherit it."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:  # not permitted in some sandboxes: the work still runs, only at normal priority
        log.warning("background work runs at normal priority: %s", exc)


_REGISTRY = TaskRegistry()


def tasks() -> TaskRegistry:
    """The registry of this process (every Streamlit session of a server shares it)."""
    return _REGISTRY
