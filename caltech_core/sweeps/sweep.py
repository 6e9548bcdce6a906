"""A stored sweep: its folder under the store (`layout.sweep_dir`: spec.json, state.json and Optuna's journal),
its Optuna study (sampler and pruner from the spec), and what the pages and the CLI read of it: the trials with
their runs, the best run, parameter importances.

A trial's runs are found by name (`spec.trial_name`, set in the config before the run is created, so the link
is written in the same transaction as the run): nothing else maps trials to runs.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from caltech_core import layout
from caltech_core.files import write_json_atomic
from caltech_core.runs.records import RunRecord
from caltech_core.runs.store import RunStore
from caltech_core.status import RunStatus
from caltech_core.sweeps.spec import SweepSpec, group_name, parse_spec, trial_name

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is the CLI's job, not Optuna's
log = logging.getLogger(__name__)

STUDY = "sweep"  # the one Optuna study in each sweep's journal


class SweepNotFoundError(KeyError):
    def __init__(self, sweep_id: int, home: Path) -> None:
        super().__init__(f"sweep {sweep_id} does not exist in {home}")


@dataclass(frozen=True)
class Sweep:
    id: int
    home: Path
    spec: SweepSpec

    @property
    def folder(self) -> Path:
        return layout.sweep_dir(self.home, self.id)

    @property
    def group(self) -> str:
        return group_name(self.id)

    def state(self) -> dict[str, Any]:
        """{"status": new|running|stopped|finished, "elapsed": sweep seconds so far, "created", "message"}."""
        return json.loads(layout.sweep_state(self.folder).read_text())

    def status(self) -> str:
        """new | running | stopped | finished, derived from the trials' states on every call: a sweep whose trial
        cap is reached and whose trials have all ended is finished, even before its driver has written so (the
        state file says "running" until the driver's loop exits, and a page drawn in between showed that)."""
        trials = self.study().trials
        cap = self.spec.trial_cap()
        if cap is not None and len(trials) >= cap and all(t.state.is_finished() for t in trials):
            return "finished"
        return self.state()["status"]

    def set_state(self, **changes: Any) -> None:
        write_json_atomic(layout.sweep_state(self.folder), {**self.state(), **changes})

    def study(self, *, sampler_offset: int = 0) -> optuna.Study:
        """The sweep's Optuna study, with its sampler seeded `seed + sampler_offset` (a resumed sweep passes its
        trial count, so a random sampler does not draw the first trials' values again)."""
        return optuna.load_study(study_name=STUDY, storage=_storage(self.folder),
                                 sampler=_sampler(self.spec, self.spec.seed + sampler_offset), pruner=_pruner(self.spec))

    def runs_of(self, store: RunStore, number: int) -> list[RunRecord]:
        """Trial `number`'s runs, oldest first."""
        return store.list_runs(group=self.group, name=trial_name(self.id, number), newest_first=False)


def create_sweep(home: Path, data: dict[str, Any]) -> Sweep:
    """Check the spec (ConfigError before anything is written) and store a new sweep; nothing is queued yet."""
    spec = parse_spec(data)
    root = layout.sweeps_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    sweep_id = max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0) + 1
    while True:  # mkdir is the atomic claim of an id, even against another process
        try:
            layout.sweep_dir(home, sweep_id).mkdir()
            break
        except FileExistsError:
            sweep_id += 1
    folder = layout.sweep_dir(home, sweep_id)
    write_json_atomic(layout.sweep_spec(folder), dict(data))
    direction = "maximize" if spec.goal == "maximize" else "minimize"
    optuna.create_study(study_name=STUDY, storage=_storage(folder), direction=direction)
    write_json_atomic(layout.sweep_state(folder), {"status": "new", "elapsed": 0.0, "created": time.time(),
                                                   "message": ""})
    return Sweep(sweep_id, Path(home), spec)


def open_sweep(home: Path, sweep_id: int) -> Sweep:
    folder = layout.sweep_dir(home, sweep_id)
    try:
        data = json.loads(layout.sweep_spec(folder).read_text())
    except FileNotFoundError:
        raise SweepNotFoundError(sweep_id, Path(home)) from None
    return Sweep(sweep_id, Path(home), parse_spec(data))


def list_sweeps(home: Path) -> list[Sweep]:
    """Every stored sweep, newest first."""
    root = layout.sweeps_dir(home)
    ids = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True) if root.is_dir() else []
    return [open_sweep(home, i) for i in ids if layout.sweep_spec(layout.sweep_dir(home, i)).is_file()]


def _storage(folder: Path) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(layout.sweep_journal(folder))))


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` once the grid is covered: that call is only allowed inside
    `study.optimize`, so `tell` of the last ask-and-tell trial would raise; the driver's cap (the grid size)
    ends the sweep instead."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        return None


def _sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    if spec.method == "grid":
        return _AskTellGridSampler({p.name: p.grid_values() for p in spec.params}, seed=seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    cap = spec.trial_cap() or 30
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, cap // 3)))


def _pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    rule = spec.pruner
    if rule is None:
        return optuna.pruners.NopPruner()
    if rule["type"] == "hyperband":  # W&B's hyperband (min_iter, eta) = Optuna's successive halving
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=rule.get("min_iter", 1),
                                                      reduction_factor=rule.get("eta", 3))
    return optuna.pruners.MedianPruner(n_startup_trials=rule.get("startup", 2),
                                       n_warmup_steps=rule.get("min_iter", 1) - 1)


def distributions(spec: SweepSpec) -> dict[str, optuna.distributions.BaseDistribution]:
    """Each parameter as the Optuna distribution `study.ask` draws it from."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for p in spec.params:
        if p.values:
            out[p.name] = optuna.distributions.CategoricalDistribution(list(p.values))
        elif p.distribution == "int_uniform":
            out[p.name] = optuna.distributions.IntDistribution(int(p.low), int(p.high))
        else:
            out[p.name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
    return out


# -- what the pages and the CLI read ---------------------------------------------------------------------------


def run_value(store: RunStore, run: RunRecord, metric: str, goal: str) -> float | None:
    """A run's score: its best epoch value of `metric` (highest or lowest by `goal`)."""
    values = [e[metric] for e in store.epochs(run.id) if e.get(metric) is not None]
    return (max(values) if goal == "maximize" else min(values)) if values else None


def trials(sweep: Sweep, store: RunStore) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, params, its runs (id, status) and its first run's best epoch,
    validation and test accuracy."""
    rows = []
    for t in sweep.study().trials:
        runs = sweep.runs_of(store, t.number)
        first = runs[0] if runs else None
        results = (first.results or {}) if first else {}
        rows.append({
            "trial": t.number, "state": t.state.name.lower(), "value": t.value, "params": dict(t.params),
            "runs": [{"run_id": r.id, "status": str(r.status)} for r in runs],
            "run_id": first.id if first else None, "status": str(first.status) if first else "",
            "best_epoch": results.get("best_epoch"), "val_acc": results.get("best_val_acc"),
            "test_acc": results.get("test_acc"), "intermediate": dict(t.intermediate_values),
        })
    return rows


def best_run(sweep: Sweep, store: RunStore) -> dict[str, Any] | None:
    """The completed trial with the best value and its best run: {"trial", "value", "params", "run_id"}."""
    try:
        best = sweep.study().best_trial
    except ValueError:  # no completed trial yet
        return None
    runs = [r for r in sweep.runs_of(store, best.number) if r.status == RunStatus.FINISHED]
    scored = [(run_value(store, r, sweep.spec.metric, sweep.spec.goal), r.id) for r in runs]
    scored = [s for s in scored if s[0] is not None]
    if not scored:
        return None
    pick = max(scored) if sweep.spec.goal == "maximize" else min(scored)
    return {"trial": best.number, "value": best.value, "params": dict(best.params), "run_id": pick[1]}


def importances(sweep: Sweep) -> dict[str, float] | None:
    """Optuna's fANOVA importance of each varied parameter; None until two completed trials differ."""
    study = sweep.study()
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(done) < 2 or not any(len({repr(t.params.get(p.name)) for t in done}) > 1 for p in sweep.spec.params):
        return None
    try:
        return dict(optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))
    except (ValueError, RuntimeError) as exc:  # e.g. every completed trial has the same value
        log.info("no importances for sweep %s: %s", sweep.id, exc)
        return None


def trial_value(values: list[float | None]) -> float | None:
    """A trial's value: the mean of its repeats' values (None if any is missing or not finite)."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return statistics.fmean(v for v in values if v is not None)


def summary(sweep: Sweep, store: RunStore) -> dict[str, Any]:
    """The `--json` document: sweep id, state, every trial with its runs, the best run."""
    rows = trials(sweep, store)
    return {"sweep_id": sweep.id, "title": sweep.spec.title, "method": sweep.spec.method,
            "metric": sweep.spec.metric, "goal": sweep.spec.goal, **sweep.state(), "status": sweep.status(),
            "trials": [{k: r[k] for k in ("trial", "state", "value", "params", "runs")} for r in rows],
            "best": best_run(sweep, store)}


def retrain_config(store: RunStore, run_id: int) -> Any:
    """The settings of run `run_id` (a sweep's best), to train again and then retrain on train+val for its best
    number of epochs (`engine.retrain_on_train_val`), in the same group."""
    record = store.require_run(run_id)
    return record.config.replace(retrain_on_train_val=True, name=f"{record.name}, retrained on train+val")
