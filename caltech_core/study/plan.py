"""The whole study as one plan: every run of every preset (with repeats), what each costs here, what fits.

`plan_study` lists the runs of the study's presets at a scale (the study's own settings, or the reduced
protocol of `REDUCED`), `repeats` times each with new seeds and split seeds (repeat k: seed + k, split seed
+ k; by repeat, so a cut plan still covers every member). A run the store already holds (same defining
config, seed and split seed: `matching.run_key`) is not planned again: finished or diverged ones are done,
cancelled or interrupted ones are resumed from their checkpoint, queued or running ones are waited for.
The same run needed by two presets (the baseline is the LR grid's LR 1e-3) is planned once. The minutes of
each run come from an estimator `(cfg) -> seconds per epoch` (`probe_estimator`: training/estimate.py's short
run of the real loader and model); runs beyond `budget_minutes` and runs needing ImageNet weights that cannot be
had here are listed, not run. `queue_plan` hands the rest to a job manager; `run_plan` also waits and writes
the report. Planning again after a kill continues where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caltech_core import layout, settings
from caltech_core.config import ConfigError, TrainConfig
from caltech_core.data.dataset import load_splits
from caltech_core.runs.store import RunRecord
from caltech_core.status import ACTIVE, RESUMABLE, ProgressFn, RunStatus
from caltech_core.study.experiments import PRESETS, REDUCED_CHANGES
from caltech_core.study.matching import run_key, weights_needed
from caltech_core.study.numbers import STUDY_REPEATS, STUDY_SPLIT
from caltech_core.study.report import SECTIONS

if TYPE_CHECKING:
    from caltech_core.training.estimate import EpochEstimate

Estimator = Callable[[TrainConfig], float]  # seconds per epoch of cfg on this machine

# What a planned run is waiting for, or why it will not run.
DONE, TO_RUN, TO_RESUME, WAITING = "done", "to run", "to resume", "queued"
OVER_BUDGET, NEEDS_WEIGHTS = "over budget", "needs weights"
TODO = (TO_RUN, TO_RESUME, WAITING)


@dataclass(frozen=True)
class Scale:
    """Which presets a scale runs and what it changes in every one of their configs."""

    name: str
    presets: tuple[str, ...]
    changes: dict[str, Any] = field(default_factory=dict)
    repeats: int = STUDY_REPEATS
    why: str = ""


# The reduced protocol (docs/experiments.md, "Reduced scale", says why each choice and what it can show):
# AlexNet from scratch as in the study, the study's learning rates, epochs and step sizes unchanged (the
# findings name them), with experiments.REDUCED_CHANGES: 5 SGD steps an epoch against the full split's 11.
REDUCED = Scale(
    "reduced", ("baseline", "lr-grid", "more-epochs", "step-grid"), REDUCED_CHANGES,
    repeats=1,
    why="the findings that need no ImageNet weights (LR and step-size curves) in about 30 minutes on 2 CPU cores",
)
FULL = Scale("full", tuple(name for name, _ in SECTIONS), why="every experiment of the study, at its settings")
SCALES: dict[str, Scale] = {s.name: s for s in (FULL, REDUCED)}


@dataclass
class PlannedRun:
    """One run of the plan and where it stands."""

    preset: str
    label: str  # the preset member's label, e.g. "lr=0.01"
    repeat: int  # 1, 2, ...
    config: TrainConfig
    state: str  # DONE, TO_RUN, TO_RESUME, WAITING, OVER_BUDGET or NEEDS_WEIGHTS
    run_id: int | None = None  # the stored run it is (done, resumed, waited for)
    epoch_seconds: float | None = None
    seconds: float = 0.0  # estimated time still to spend on it (0 when done or not run)
    needs: str = ""  # ImageNet weights missing here
    also: list[str] = field(default_factory=list)  # other presets this very run feeds
    epochs_done: int = 0  # a run to resume: the epoch of its last checkpoint
    no_estimate: str = ""  # why the estimator could not time this run's model here ("" when it could)

    def row(self) -> dict[str, Any]:
        """One line of the plan as shown (CLI table, Report page)."""
        return {"preset": self.preset + "".join(f" (+{p})" for p in self.also), "run": self.label,
                "repeat": self.repeat, "state": self.state, "stored run": self.run_id,
                "minutes": None if self.state in (DONE, NEEDS_WEIGHTS) or self.no_estimate
                else round(self.seconds / 60, 1),
                "note": self.needs if self.state == NEEDS_WEIGHTS else self.no_estimate}


@dataclass
class Plan:
    """Every planned run, in the order they will be queued."""

    scale: str
    repeats: int
    budget_minutes: float | None
    runs: list[PlannedRun]

    def count(self, *states: str) -> int:
        return sum(1 for r in self.runs if r.state in states)

    @property
    def todo(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.state in TODO]

    @property
    def to_queue(self) -> list[PlannedRun]:
        """The runs queueing the plan would submit or resume (not those already queued)."""
        return [r for r in self.runs if r.state in (TO_RUN, TO_RESUME)]

    @property
    def total_seconds(self) -> float:
        """Estimated time of the runs that will run (one after the other on this machine)."""
        return sum(r.seconds for r in self.todo)

    def summary(self) -> str:
        """The plan in one line."""
        over = "" if self.budget_minutes is None else (
            f", {self.count(OVER_BUDGET)} over the {self.budget_minutes:g}-minute budget")
        return (f"{self.scale} scale, {self.repeats} repeat(s): {len(self.runs)} runs — {self.count(DONE)} done, "
                f"{len(self.todo)} to run ({self.total_seconds / 60:.0f} min estimated){over}, "
                f"{self.count(NEEDS_WEIGHTS)} need ImageNet weights")

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "repeats": self.repeats, "budget_minutes": self.budget_minutes,
                "total_minutes": round(self.total_seconds / 60, 1), "summary": self.summary(),
                "runs": [r.row() for r in self.runs]}


def scale_config(cfg: TrainConfig, scale: Scale) -> TrainConfig:
    """A preset member at `scale` (its group and name kept, so the report files it under the same row)."""
    return cfg.replace(**scale.changes) if scale.changes else cfg


def plan_study(
    store: Any, estimator: Estimator, *, scale: str | Scale = "full", repeats: int | None = None,
    budget_minutes: float | None = None,
) -> Plan:
    """Plan every run of the study at `scale` against what `store` already holds (see the module docstring)."""
    sc = SCALES[scale] if isinstance(scale, str) else scale
    repeats = sc.repeats if repeats is None else repeats
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 100:
        raise ConfigError("repeats", f"must be a whole number from 1 to 100 (got {repeats!r})")
    if budget_minutes is not None and not (isinstance(budget_minutes, (int, float)) and budget_minutes > 0):
        raise ConfigError("budget", f"must be a positive number of minutes (got {budget_minutes!r})")
    stored: dict[str, RunRecord] = {}
    for run in store.list_runs(newest_first=False):  # the best stored run of each key: finished beats the rest
        kept = stored.get(key := run_key(run.config))
        if kept is None or _rank(run) >= _rank(kept):
            stored[key] = run
    planned: dict[str, PlannedRun] = {}
    for k in range(repeats):
        for name in sc.presets:
            preset = PRESETS[name]
            for member in preset.configs:
                cfg = scale_config(member, sc).replace(seed=member.seed + k, split_seed=member.split_seed + k)
                key = run_key(cfg)
                if key in planned:
                    if name != planned[key].preset and name not in planned[key].also:
                        planned[key].also.append(name)
                    continue
                planned[key] = _place(name, preset.member_label(member), k + 1, cfg, stored.get(key))
    runs = list(planned.values())
    _estimate(runs, estimator)
    left = math.inf if budget_minutes is None else 60 * budget_minutes
    for r in runs:  # in queue order; a run that does not fit is skipped, a later smaller one may still fit
        if r.state == WAITING:  # queued earlier: it spends the budget too
            left -= r.seconds
        elif r.state in (TO_RUN, TO_RESUME):
            if r.seconds > left or (r.no_estimate and budget_minutes is not None):
                r.state = OVER_BUDGET
            else:
                left -= r.seconds
    return Plan(sc.name, repeats, budget_minutes, runs)


def _rank(run: RunRecord) -> int:
    """Which stored run of a key stands for it: finished, then any other result, then active, resumable, failed."""
    if run.status == RunStatus.FINISHED:
        return 4
    if run.status in ACTIVE:
        return 2
    return 1 if run.status in RESUMABLE else 0 if run.status == RunStatus.FAILED else 3


def _place(preset: str, label: str, repeat: int, cfg: TrainConfig, run: RunRecord | None) -> PlannedRun:
    """A planned run from what the store holds of it: done, to resume, queued, to run, or needing weights."""
    item = PlannedRun(preset, label, repeat, cfg, TO_RUN)
    if run is not None and run.status != RunStatus.FAILED:  # a failed run is tried again, as a new run
        item.run_id, item.epochs_done = run.id, run.checkpoint_epoch or 0
        # Ended otherwise (finished, diverged: a result too) it is done; never run again.
        item.state = TO_RESUME if run.status in RESUMABLE else WAITING if run.status in ACTIVE else DONE
        return item
    if needs := weights_needed(cfg):
        item.state, item.needs = NEEDS_WEIGHTS, needs
    return item


def _estimate(runs: list[PlannedRun], estimator: Estimator) -> None:
    """Seconds per epoch (one estimator call per distinct model, input and data shape) and the seconds still
    to spend; a model the estimator cannot time here is marked, not guessed."""
    measured: dict[str, float | str] = {}
    for r in runs:
        if r.state not in TODO:
            continue
        # Only what changes the cost of an epoch: the same network on the same images costs the same at any LR
        # and for any number of epochs (but a frozen backbone's, whose features are computed once a run).
        shape = r.config.replace(seed=0, split_seed=0, name="", group="", lr=1e-3, step_size=1, warmup_epochs=0,
                                 retrain_on_train_val=False, epochs=r.config.epochs if r.config.train == "fc" else 1)
        key = run_key(shape)
        if key not in measured:
            try:
                measured[key] = float(estimator(shape))
            except (RuntimeError, ValueError, OSError, ImportError) as exc:  # e.g. weights or a package missing
                measured[key] = f"no estimate: {type(exc).__name__}: {exc}"[:200]
        found = measured[key]
        if isinstance(found, str):
            r.no_estimate = found
            continue
        r.epoch_seconds = found
        # A train+val retrain trains about as many epochs again on twice the images, without validation.
        retrain = 2 * r.config.epochs if r.config.retrain_on_train_val else 0
        r.seconds = (max(r.config.epochs - r.epochs_done, 0) + retrain) * found


# -- running it ------------------------------------------------------------------------------------------------

def queue_plan(plan: Plan, manager: Any) -> list[int]:
    """Queue the plan's runs on `manager` (new ones submitted, interrupted ones resumed); returns every run id
    the plan waits for, queued ones of an earlier call included."""
    ids = []
    for r in plan.todo:
        if r.state == TO_RUN:
            r.run_id = manager.submit(r.config)
        elif r.state == TO_RESUME and r.run_id is not None:
            manager.resume(r.run_id)
        if r.run_id is not None:
            ids.append(r.run_id)
    return ids


def run_plan(
    plan: Plan, manager: Any, *, data_root: str | Path | None = None, out: str | Path | None = None,
    progress: ProgressFn | None = None, poll_seconds: float = 2.0, png: bool | None = None,
) -> Path:
    """Queue the plan, wait for every run of it, then write the study's report (report.md + figures) to `out`
    (default `layout.report_dir`; `png` as `export.export_markdown`); returns the report's path. Stopping this
    (Ctrl-C, a kill) leaves the runs interrupted: `plan_study` + `run_plan` again resumes them."""
    from caltech_core.study import export, report

    ids = queue_plan(plan, manager)
    ended: set[int] = set()
    if progress is not None:
        progress(0, len(ids))
    while len(ended) < len(ids):
        for run_id in ids:
            if run_id not in ended and manager.wait(run_id, timeout=poll_seconds / max(len(ids), 1)):
                ended.add(run_id)
                if progress is not None:
                    progress(len(ended), len(ids))
    store = manager.store
    return export.export_markdown(report.build_report(store, data_root),
                                  Path(out) if out else layout.report_dir(store.home), png=png)


# -- a brief measurement of this machine ----------------------------------------------------------------------

def probe_estimator(
    data_root: str | Path | None = None, device: str = "auto", log: Callable[[str], None] | None = None,
    cache_dir: str | Path | None = None,
) -> Estimator:
    """Seconds per epoch of a planned run from training/estimate.py's short run of the real loader and model on
    this machine, measured once per (model, layers trained, size, batch, fast path, augmentation) and scaled to
    each run's split; the once-per-run image caching and frozen features are spread over its epochs.

    `log` hears which model is being timed (a CPU takes seconds to minutes for the full study's models).
    """
    # Imported here: the estimate brings torch and torchvision, which planning and the CLI's options do not need.
    from caltech_core.training.estimate import estimate_epoch_seconds

    cache = Path(cache_dir) if cache_dir else layout.cache_dir(settings.studio_home())
    measured: dict[tuple[Any, ...], EpochEstimate] = {}
    sizes: dict[tuple[Any, ...], tuple[int, int]] = {}

    def split_size(cfg: TrainConfig) -> tuple[int, int]:
        key = (cfg.classes, cfg.class_names, cfg.max_per_class, cfg.train_fraction, cfg.per_class_train)
        if key not in sizes:
            try:
                splits = load_splits(data_root, train_fraction=cfg.train_fraction, seed=cfg.split_seed,
                                     classes=cfg.class_names or cfg.classes, max_per_class=cfg.max_per_class,
                                     per_class_train=cfg.per_class_train)
                sizes[key] = (len(splits.train), len(splits.val))
            except (FileNotFoundError, ValueError):  # no dataset here: the study's split
                sizes[key] = (STUDY_SPLIT["train"], STUDY_SPLIT["val"])
        return sizes[key]

    def estimate(cfg: TrainConfig) -> float:
        key = (cfg.arch, cfg.train, cfg.image_size, cfg.batch_size, cfg.fast_path, cfg.int8_features, cfg.augment)
        if key not in measured:
            if log is not None:
                log(f"timing {cfg.arch} ({cfg.train} layers) at {cfg.image_size or 'its native'} px, "
                    f"batch {cfg.batch_size}…")
            # On a worker thread, where the thread backend trains: unless the process has one malloc arena (the
            # dashboard started by `make run`, `reproduce`), the main thread's CPU heap is faster
            # (training/speed.reuse_freed_memory), so a probe there would promise the thread backend too much.
            with ThreadPoolExecutor(1) as worker:
                measured[key] = worker.submit(estimate_epoch_seconds, replace(cfg, device=device), data_root,
                                              cache_dir=cache).result()
        probe = measured[key]
        train, val = split_size(cfg)
        epoch = probe.seconds_per_train_image * train + probe.seconds_per_eval_image * val
        return epoch + probe.setup_seconds / max(cfg.epochs, 1)

    return estimate

