"""`train` and `resume`: runs trained in this process (a progress bar; Ctrl-C cancels) or on a Ray cluster.

`train --json` prints one JSON object per run; the LAST line is always one JSON object with `run_id`,
`status`, `best_val_acc`, `test_acc`, `epochs` (list of per-epoch dicts) — for a preset with several
configs (a sweep) it describes the best run (highest validation accuracy) and adds `runs`, the summary of
every run, and `preset`. A failed run's error also goes to stderr, and the command exits 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from caltech_core import settings
from caltech_core import status as run_status
from caltech_core.cli.common import (
    CliError,
    Parents,
    add_config_options,
    existing_run,
    open_store,
    percent,
    print_json,
)
from caltech_core.cli.progress import RunBar
from caltech_core.config import SETTINGS, TrainConfig
from caltech_core.runs import backend
from caltech_core.runs.store import RunRecord, RunStore
from caltech_core.status import RunStatus

if TYPE_CHECKING:
    from caltech_core.runs.raybackend import RayJobManager


def register(sub: Any, parents: Parents) -> None:
    """`train` (every TrainConfig field is an option) and `resume`."""
    from caltech_core.study.experiments import PRESETS

    shared = [parents.common, parents.rooted, parents.no_download, parents.on_ray]
    p = sub.add_parser("train", parents=shared, help="train in the foreground (a run or a preset sweep)",
                       description="Train in the foreground. Options left out keep the preset's (or the "
                                   "baseline's) value; a preset with several configs runs them all.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="an experiment of the study")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="train every config N times, each with a new seed and train/validation split (default 1)")
    add_config_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("resume", parents=shared, help="continue an interrupted or cancelled run")
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(func=cmd_resume)


def train_configs(args: argparse.Namespace, store: RunStore) -> tuple[list[TrainConfig], str | None]:
    """The configs to train: the preset's (or the default) with every option given on the command line."""
    overrides = {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    if args.dataset is not None:  # a name or a folder (added on first use) -> the registered id
        from caltech_core.data import registry

        try:
            overrides["dataset"] = registry.resolve(store.home, args.dataset)
        except ValueError as exc:  # FolderError: what is wrong with the folder
            raise CliError(str(exc)) from exc
    if args.weights_path is not None:
        overrides["pretrained"] = True  # a weights file only makes sense for a pretrained model
    from caltech_core.study import experiments

    if args.preset:
        try:
            bases = experiments.resolve_configs(args.preset, store)
        except KeyError as exc:
            raise CliError(str(exc.args[0]) if exc.args else str(exc), 2) from exc
    else:
        bases = [TrainConfig()]
    configs = [base.replace(**overrides) for base in bases]
    # An explicit --seed is kept as given (repeats count up from it); otherwise seeds already used by runs of
    # the same name skip ahead, so every repeat is new.
    return experiments.repeat_configs(configs, args.repeats, None if args.seed is not None else store), args.preset


def cmd_train(args: argparse.Namespace) -> int:
    """Train in the foreground through the store; one run, or every config of a preset in order."""
    from caltech_core.data import dataset

    store = open_store(args)
    configs, preset = train_configs(args, store)
    if _backend(args) != "local":
        return _train_on_ray(args, store, configs, preset)
    if any(not cfg.dataset for cfg in configs):
        dataset.resolve_root(args.root)  # a missing Caltech-101 is reported before any run is created
    summaries: list[dict[str, Any]] = []
    for i, cfg in enumerate(configs, 1):
        run = store.get_run(store.create_run(cfg))
        label = f"[{i}/{len(configs)}] {run.label}" if len(configs) > 1 else run.label
        try:
            _run_foreground(store, run, args.root, resume=False, label=label)
        except KeyboardInterrupt:
            _report_run(store, run.id, args.json)
            print(f"run #{run.id} cancelled; continue it with: python -m caltech_core resume {run.id}",
                  file=sys.stderr)
            return 130
        summaries.append(_report_run(store, run.id, args.json))
    _report_sweep(store, summaries, preset, args.json)
    return _exit_code(summaries)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted or cancelled run from its last checkpoint, in the foreground or on Ray."""
    store = open_store(args)
    # A run whose process died still says "running" (the Ray manager marks it after draining what that left).
    manager = _ray_manager(args, store) if _backend(args) != "local" else None
    if manager is None:
        store.mark_interrupted()
    try:
        run = _resumable(store, args.id)
    except CliError:
        if manager is not None:
            manager.shutdown(wait=True)
        raise
    if manager is not None:
        manager.resume(run.id)
        return _exit_code(_wait_on_ray(manager, store, [run.id], args.json))
    return train_one(store, run, args.root, resume=True, as_json=args.json)


# -- in this process -----------------------------------------------------------------------------------

def train_one(store: RunStore, run: RunRecord, root: str | None, *, resume: bool, as_json: bool) -> int:
    """Train (or resume) one stored run in the foreground and report it; the command's exit code."""
    try:
        _run_foreground(store, run, root, resume=resume, label=run.label)
    except KeyboardInterrupt:
        _report_run(store, run.id, as_json)
        return 130
    return _exit_code([_report_run(store, run.id, as_json)])


def _run_foreground(store: RunStore, run: RunRecord, root: str | None, *, resume: bool, label: str) -> str:
    """Train one stored run in this process (the job manager's path) under a progress bar; Ctrl-C cancels it
    cleanly (KeyboardInterrupt once it has stopped), a second Ctrl-C aborts at once."""
    from caltech_core.runs import job

    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum: int, frame: Any) -> None:
            if stop.is_set():
                raise KeyboardInterrupt
            print("\nstopping after this batch (Ctrl-C again to abort)...", file=sys.stderr)
            stop.set()

        previous = signal.signal(signal.SIGINT, on_sigint)
    bar = RunBar(run.config.epochs, label)
    status: str = RunStatus.INTERRUPTED  # what the bar says if run_job itself is aborted
    try:
        status = job.run_job(store, run.id, data_root=root, resume=resume, stop=stop, on_progress=bar.update)
    finally:
        bar.close(status)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if stop.is_set() and status == RunStatus.CANCELLED:
        raise KeyboardInterrupt
    return status


def _resumable(store: RunStore, run_id: int) -> RunRecord:
    """The run if it can be resumed; CliError saying why not."""
    from caltech_core.runs import job

    existing_run(store, run_id)  # its message names the store folder
    try:
        return job.resumable_run(store, run_id)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


# -- reporting ---------------------------------------------------------------------------------------

def _summary(store: RunStore, run: RunRecord) -> dict[str, Any]:
    """What `--json` prints about one run."""
    results = run.results
    return {
        "run_id": run.id,
        "name": run.name,
        "group": run.group,
        "arch": run.arch,
        "status": run.status,
        "error": run.error,
        "device": run.device,
        "best_val_acc": run.best_val_acc,
        "best_epoch": results.get("best_epoch"),
        "test_acc": run.test_acc,
        "mean_class_acc": results.get("mean_class_acc"),
        "retrain_test_acc": results.get("retrain_test_acc"),
        "seconds": run.duration,
        "epochs": store.epochs(run.id),
        "config": run.config.to_dict(),
    }


def _report_run(store: RunStore, run_id: int, as_json: bool) -> dict[str, Any]:
    """Print how a run ended (its JSON summary, or one line) and return the summary; a failure also on stderr."""
    run = store.get_run(run_id)
    summary = _summary(store, run)
    if as_json:
        print_json(summary)
    else:
        line = f"run {run.label}: {run.status}, best val {percent(run.best_val_acc)}, test {percent(run.test_acc)}"
        print(line + (f" ({run.error})" if run.error else ""), flush=True)
    if run.status == RunStatus.FAILED:
        print(f"error: run {run.label} failed: {run.error}", file=sys.stderr, flush=True)
    return summary


def _report_sweep(store: RunStore, summaries: list[dict[str, Any]], preset: str | None, as_json: bool) -> None:
    """After several runs: the best one (highest validation accuracy) and every run's summary."""
    if len(summaries) < 2:
        return
    scored = [s for s in summaries if s["best_val_acc"] is not None]
    best = max(scored, key=lambda s: s["best_val_acc"]) if scored else summaries[-1]
    brief = [{k: s[k] for k in ("run_id", "name", "status", "best_val_acc", "test_acc")} for s in summaries]
    if as_json:
        print_json({**best, "preset": preset, "best_run_id": best["run_id"], "runs": brief})
    else:
        print(f"best: run {store.get_run(best['run_id']).label} (val {percent(best['best_val_acc'])})")


def _exit_code(summaries: list[dict[str, Any]]) -> int:
    return 1 if any(s["status"] == RunStatus.FAILED for s in summaries) else 0


# -- on a Ray cluster --------------------------------------------------------------------------------

def _backend(args: argparse.Namespace) -> str:
    """`--ray ADDRESS`, else $CALTECH_STUDIO_RAY, else "local" (train in this process)."""
    try:
        return backend.check_address(args.ray) if args.ray else backend.backend_from_env()
    except ValueError as exc:
        raise CliError(str(exc), 2) from exc


def _ray_manager(args: argparse.Namespace, store: RunStore) -> RayJobManager:
    from caltech_core.runs import raybackend

    env = {settings.OFFLINE.name: "1"} if args.offline else {}  # workers do not see this process's environment
    try:
        return raybackend.RayJobManager(store, _backend(args), data_root=args.root,
                                        runtime_env={"env_vars": env} if env else None)
    except raybackend.RayBackendError as exc:
        raise CliError(str(exc)) from exc


def _train_on_ray(args: argparse.Namespace, store: RunStore, configs: list[TrainConfig],
                  preset: str | None) -> int:
    """Queue every config on the Ray cluster at once (they train side by side up to its capacity) and wait."""
    manager = _ray_manager(args, store)
    run_ids = [manager.submit(cfg) for cfg in configs]
    print(f"queued run(s) {', '.join(f'#{i}' for i in run_ids)} on Ray ({manager.address})", file=sys.stderr)
    summaries = _wait_on_ray(manager, store, run_ids, args.json)
    _report_sweep(store, summaries, preset, args.json)
    return _exit_code(summaries)


def _wait_on_ray(manager: Any, store: RunStore, run_ids: list[int], as_json: bool) -> list[dict[str, Any]]:
    """Report each run as it ends; Ctrl-C stops them all (interrupted, resumable) and exits 130."""
    summaries: dict[int, dict[str, Any]] = {}
    try:
        while len(summaries) < len(run_ids):
            manager.wait(timeout=1.0)
            for run_id in run_ids:
                if run_id not in summaries and store.get_run(run_id).status in run_status.DONE:
                    manager.wait(run_id)  # its last rows are in the store
                    summaries[run_id] = _report_run(store, run_id, as_json)
    except KeyboardInterrupt:
        print("\nstopping the runs after their current batch...", file=sys.stderr)
        manager.shutdown(wait=True)
        raise
    manager.shutdown(wait=True)
    return [summaries[r] for r in run_ids]
