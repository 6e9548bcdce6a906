"""Run statuses: the one definition the store, engine, jobs, pages and report share.

`RunStatus` is a `StrEnum`, so a member equals its plain string ("finished" == RunStatus.FINISHED) and is
stored as that string in SQLite.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


ALL: tuple[RunStatus, ...] = tuple(RunStatus)
ACTIVE: frozenset[RunStatus] = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})  # owned by a live job
DONE: frozenset[RunStatus] = frozenset(RunStatus) - ACTIVE  # ended, one way or another
RESUMABLE: frozenset[RunStatus] = frozenset({RunStatus.CANCELLED, RunStatus.INTERRUPTED})  # continue from last.pt
RETRYABLE: frozenset[RunStatus] = frozenset(  # worth a new run with edited settings
    {RunStatus.FAILED, RunStatus.DIVERGED, RunStatus.CANCELLED}
)


def check(status: str) -> RunStatus:
    """The member named `status`; ValueError listing the statuses for anything else."""
    try:
        return RunStatus(status)
    except ValueError:
        raise ValueError(f"unknown status {status!r}; one of {', '.join(ALL)}") from None


def names(statuses: frozenset[RunStatus] | tuple[RunStatus, ...]) -> list[str]:
    """Plain strings in definition order (for SQL parameters, widgets, messages)."""
    return [s.value for s in ALL if s in statuses]
