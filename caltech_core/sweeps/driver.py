"""Running a sweep: Optuna's ask-and-tell around our job queue. Each trial is asked, becomes ordinary runs of the
queue (`manager.submit`, one per repeat), reports its validation metric per epoch as the store receives it,
is pruned through the queue's own cancel (the runs then end "pruned", curves kept) and is told its value.

Restart-safe (kill -9 included): Optuna's journal holds every trial, a trial's runs carry its name, and a trial
being pruned carries the user attribute `pruning` before its runs are cancelled. `SweepDriver.run` first takes
back the trials the journal says are running: runs a dead process left "interrupted" are resumed (from their
last.pt), runs never created are submitted, runs already ended are told. So no trial is lost or run twice.
One driver per sweep at a time (an fcntl lock on the sweep's folder).
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from caltech_core import layout
from caltech_core import status as run_status
from caltech_core.runs.manager import JobManager
from caltech_core.runs.records import RunRecord
from caltech_core.status import RunStatus
from caltech_core.study.experiments import repeat_configs
from caltech_core.sweeps.spec import trial_config
from caltech_core.sweeps.sweep import Sweep, distributions, run_value, trial_value

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class SweepBusyError(RuntimeError):
    pass


class SweepDriver:
    """Drives one sweep on `manager` until its trial cap or budget is reached, or `stop` is set."""

    def __init__(self, sweep: Sweep, manager: JobManager, *, poll: float = POLL_SECONDS,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.sweep, self.manager, self.store = sweep, manager, manager.store
        self.poll = poll
        self.on_change = on_change  # one line per event (trial started, pruned, done): the CLI prints them
        self.active: dict[int, optuna.trial.Trial] = {}  # trial number -> trial, its runs in the queue
        self.reported: dict[int, set[int]] = {}  # trial number -> epochs already reported to Optuna

    def run(self, stop: threading.Event | None = None) -> str:
        """Drive until done ("finished") or stopped ("stopped"); returns the sweep's state then."""
        stop = stop or threading.Event()
        lock = open(self.sweep.folder / "driver.lock", "a")  # noqa: SIM115 (held for the whole run)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SweepBusyError(f"sweep {self.sweep.id} is being run by another process") from None
        session = time.monotonic()
        elapsed = float(self.sweep.state().get("elapsed", 0.0))
        try:
            study = self.sweep.study(sampler_offset=len(self.sweep.study().trials))
            self.sweep.set_state(status="running", message="")
            self._recover(study)
            while True:
                self._poll(study)
                spent = elapsed + time.monotonic() - session
                while not stop.is_set() and len(self.active) < self.sweep.spec.parallel and self._more(study, spent):
                    self._start(study)
                    self.sweep.set_state(elapsed=elapsed + time.monotonic() - session)
                if not self.active and (stop.is_set() or not self._more(study, spent)):
                    break
                time.sleep(self.poll)
            state = "stopped" if stop.is_set() and self._more(study, elapsed + time.monotonic() - session) \
                else "finished"
            self.sweep.set_state(status=state, elapsed=elapsed + time.monotonic() - session)
            return state
        except Exception as exc:  # recorded for the pages; the journal keeps every trial for a resume
            self.sweep.set_state(status="stopped", message=f"{type(exc).__name__}: {exc}",
                                 elapsed=elapsed + time.monotonic() - session)
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    # -- trials ----------------------------------------------------------------------------------------------

    def _more(self, study: optuna.Study, spent: float) -> bool:
        """Room for another trial: under the trial cap (counting running ones) and the time budget."""
        spec = self.sweep.spec
        if spec.budget_minutes is not None and spent >= spec.budget_minutes * 60:
            return False
        cap = spec.trial_cap()
        return cap is None or len(study.trials) < cap

    def _start(self, study: optuna.Study) -> None:
        trial = study.ask(distributions(self.sweep.spec))
        self.active[trial.number] = trial
        self._submit_missing(trial)
        self._say(f"trial {trial.number} started: {_params(trial.params)}")

    def _configs(self, trial: optuna.trial.Trial) -> list[Any]:
        cfg = trial_config(self.sweep.spec, trial.params, sweep_id=self.sweep.id, number=trial.number)
        return repeat_configs([cfg], self.sweep.spec.repeats)

    def _submit_missing(self, trial: optuna.trial.Trial) -> None:
        """Queue the trial's runs that do not exist yet (all of them for a new trial)."""
        seeds = {r.config.seed for r in self.sweep.runs_of(self.store, trial.number)}
        for cfg in self._configs(trial):
            if cfg.seed not in seeds:
                self.manager.submit(cfg)

    def _recover(self, study: optuna.Study) -> None:
        """Take back the trials a stopped or killed driver left running."""
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = optuna.trial.Trial(study, frozen._trial_id)  # Optuna's own way back to a running trial
            self.active[frozen.number] = trial
            self.reported[frozen.number] = set(frozen.intermediate_values)
            pruning = frozen.user_attrs.get("pruning", False)
            for run in self.sweep.runs_of(self.store, frozen.number):
                if run.status == RunStatus.INTERRUPTED and not pruning:
                    self.manager.resume(run.id)
            if not pruning:
                self._submit_missing(trial)
            self._say(f"trial {frozen.number} taken back")

    def _poll(self, study: optuna.Study) -> None:
        for number, trial in list(self.active.items()):
            runs = self.sweep.runs_of(self.store, number)
            pruning = trial.user_attrs.get("pruning", False)
            if not pruning:
                pruning = self._report(trial, runs)
            if len(runs) < self.sweep.spec.repeats and not pruning:
                continue  # its other repeats are still being submitted
            if all(r.status in run_status.DONE for r in runs):
                self._finish(study, trial, runs, pruning)
                del self.active[number]
                self.reported.pop(number, None)

    def _report(self, trial: optuna.trial.Trial, runs: list[RunRecord]) -> bool:
        """Report each epoch every run of the trial has reached; True once the pruner says stop (its runs are
        then cancelled, after the journal says why)."""
        spec = self.sweep.spec
        curves = [{e["epoch"]: e.get(spec.metric) for e in self.store.epochs(r.id)} for r in runs]
        if len(curves) < spec.repeats:
            return False
        reported = self.reported.setdefault(trial.number, set())
        for step in sorted(set.intersection(*(set(c) for c in curves)) - reported):
            reported.add(step)
            value = trial_value([c[step] for c in curves])
            if value is None:
                continue
            trial.report(value, step)
            if trial.should_prune():
                trial.set_user_attr("pruning", True)
                for run in runs:
                    if run.status in run_status.ACTIVE:
                        self.manager.cancel(run.id)
                self._say(f"trial {trial.number} pruned at epoch {step} ({spec.metric} {value:.4g})")
                return True
        return False

    def _finish(self, study: optuna.Study, trial: optuna.trial.Trial, runs: list[RunRecord], pruning: bool) -> None:
        spec = self.sweep.spec
        statuses = {r.status for r in runs}
        if pruning and statuses != {RunStatus.FINISHED}:  # all finished: the cancel came too late, it completes
            for run in runs:
                if run.status in (RunStatus.CANCELLED, RunStatus.INTERRUPTED):
                    self.store.set_status(run.id, RunStatus.PRUNED, "stopped early by the sweep's pruner")
                    layout.last(self.store.run_dir(run.id)).unlink(missing_ok=True)  # a pruned run is not resumed
            study.tell(trial, state=TrialState.PRUNED)
            return
        if statuses == {RunStatus.FINISHED}:
            value = trial_value([run_value(self.store, r, spec.metric, spec.goal) for r in runs])
            if value is not None:
                study.tell(trial, value)
                self._say(f"trial {trial.number} done: {spec.metric} {value:.4g}")
                return
        # Diverged: told as pruned (Optuna then counts its last report against its parameters); else failed.
        state = TrialState.PRUNED if RunStatus.DIVERGED in statuses else TrialState.FAIL
        study.tell(trial, state=state)
        self._say(f"trial {trial.number} {', '.join(sorted(statuses))}")

    def _say(self, line: str) -> None:
        log.info("sweep %s: %s", self.sweep.id, line)
        if self.on_change is not None:
            self.on_change(line)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# -- the dashboard's drivers ---------------------------------------------------------------------------------

_DRIVERS: dict[tuple[str, int], tuple[threading.Thread, threading.Event]] = {}
_DRIVERS_LOCK = threading.Lock()


def start_in_background(sweep: Sweep, manager: JobManager) -> bool:
    """Drive `sweep` in a daemon thread of this process (the dashboard's way); False if one already does."""
    key = (str(sweep.home), sweep.id)
    with _DRIVERS_LOCK:
        running = _DRIVERS.get(key)
        if running is not None and running[0].is_alive():
            return False
        stop = threading.Event()
        driver = SweepDriver(sweep, manager)

        def work() -> None:
            try:
                driver.run(stop)
            except Exception:  # recorded in the sweep's state by run(); the page shows it
                log.exception("sweep %s stopped", sweep.id)

        thread = threading.Thread(target=work, name=f"sweep-{sweep.id}", daemon=True)
        _DRIVERS[key] = (thread, stop)
        thread.start()
        return True


def driving(sweep: Sweep) -> bool:
    """Whether this process drives `sweep` now."""
    running = _DRIVERS.get((str(sweep.home), sweep.id))
    return running is not None and running[0].is_alive()


def stop_in_background(sweep: Sweep) -> None:
    """Ask this process's driver of `sweep` to start no new trial (running ones finish)."""
    running = _DRIVERS.get((str(sweep.home), sweep.id))
    if running is not None:
        running[1].set()
