"""Run statuses, progress phases and a job's `Progress`: the one definition the store, engine, jobs, pages and
report share (no heavy imports: a Ray sink actor unpickles `Progress` with this module alone).

`RunStatus` is a `StrEnum`, so a member equals its plain string ("finished" == RunStatus.FINISHED) and is
stored as that string in SQLite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PRUNED = "pruned"  # stopped early by a sweep's pruner (curves kept; not resumable)


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


class Phase(StrEnum):
    """Where a run stands while it is queued or working: the engine reports these, the job tracker adds its
    own (queued, loading data, validating, done, failed), and every progress display reads `label` and `unit`."""

    QUEUED = "queued"
    LOADING = "loading"  # reading the split lists
    PREPARING = "preparing"  # the runner starting (imports, device)
    DOWNLOADING = "downloading"  # ImageNet weights; done/total are bytes
    MODEL = "model"
    CACHING = "caching"  # decoding images into the cache; done/total are images
    FEATURES = "features"  # the frozen-backbone fast path's features; done/total are images
    TRAINING = "training"
    VALIDATING = "validating"
    TESTING = "testing"
    RETRAINING = "retraining"
    DONE = "done"
    FAILED = "failed"

    @property
    def label(self) -> str:
        """The words a person reads."""
        return _PHASE_LABELS.get(self, self.value)

    @property
    def unit(self) -> str:
        """What `done`/`total` count in this phase: "bytes", "images" or "" (epochs and batches)."""
        return "bytes" if self is Phase.DOWNLOADING else "images" if self in (Phase.CACHING, Phase.FEATURES) else ""


_PHASE_LABELS = {
    Phase.LOADING: "loading data", Phase.DOWNLOADING: "downloading weights", Phase.MODEL: "building model",
    Phase.CACHING: "caching images", Phase.FEATURES: "computing features",
    Phase.RETRAINING: "retraining on train+val",
}

ProgressFn = Callable[[int, int], None]  # (done, total; total 0 when unknown): bytes, images, ...


@dataclass(frozen=True)
class Progress:
    """Where a queued or running job stands. `epoch` counts finished epochs; `batch` is within the current one."""

    run_id: int
    phase: Phase  # `phase.label` is what a person reads
    epoch: int
    epochs: int
    batch: int
    batches: int
    fraction: float  # 0..1 of the whole run (1 once done; a failed run keeps where it stopped)
    eta_seconds: float | None
    elapsed_seconds: float
    phase_done: int = 0  # items done / total in the current phase (`phase.unit`: bytes downloaded, images cached)
    phase_total: int = 0
