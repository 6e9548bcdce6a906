"""`python -m caltech_core ...`: dataset summary, foreground training, runs, classification, resume, evaluation,
export, report.

Results go to stdout (with `--json`: machine-readable), progress bars and errors to stderr.
Exit codes: 0 success; 1 a failure the message explains (missing dataset, unknown run, a failed run);
2 invalid usage or configuration (the ConfigError message names the field and its allowed range);
130 training stopped with Ctrl-C (the run is "cancelled" and can be resumed).

`train --json` prints one JSON object per run; the LAST line is always one JSON object with `run_id`,
`status`, `best_val_acc`, `test_acc`, `epochs` (list of per-epoch dicts) — for a preset with several
configs (a sweep) it describes the best run (highest validation accuracy) and adds `runs`, the summary of
every run, and `preset`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caltech_core import layout, settings
from caltech_core import status as run_status
from caltech_core.config import SETTINGS, ConfigError, Setting, TrainConfig
from caltech_core.runs import backend
from caltech_core.runs.store import RunStore
from caltech_core.status import RunStatus

log = logging.getLogger("caltech_core.cli.commands")

class CliError(Exception):
    """A user-facing failure: printed on stderr without a traceback, exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- helpers ---------------------------------------------------------------------------------------

def _store(args: argparse.Namespace) -> RunStore:
    return RunStore(Path(args.store) if args.store else settings.studio_home())


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, allow_nan=False, default=str), flush=True)


def _num(value: float | None, pct: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.4g}"


def _run_summary(store: RunStore, run_id: int) -> dict[str, Any]:
    run = store.get_run(run_id)
    assert run is not None  # the caller created it
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
        "epochs": store.epochs(run_id),
        "config": run.config.to_dict(),
    }


# -- commands ------------------------------------------------------------------------------------

def cmd_data(args: argparse.Namespace) -> int:
    """Dataset summary (split sizes, classes, unreadable images)."""
    from tqdm import tqdm

    from caltech_core.data import dataset, scan

    root = dataset.resolve_root(args.root)  # a missing dataset is reported before any progress bar is drawn
    with tqdm(desc="checking images", unit="img", file=sys.stderr, leave=False, mininterval=0.5) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)  # update() honours mininterval; refresh() would redraw per image

        summary = scan.dataset_summary(root, progress=progress)
    if args.json:
        _print_json(summary)
        return 0
    splits = summary["splits"]
    print(f"root:        {summary['root']}")
    print(f"classes:     {summary['num_classes']}")
    print(f"train/val/test: {splits['train']} / {splits['val']} / {splits['test']}")
    print(f"unreadable:  {len(summary['unreadable'])}")
    for path in summary["unreadable"]:
        print(f"  {path}")
    if summary.get("skipped"):
        print(f"skipped split lines: {len(summary['skipped'])}")
    return 0


def _train_configs(args: argparse.Namespace, store: RunStore) -> tuple[list[TrainConfig], str | None]:
    """The configs to train: the preset's (or the default) with every option given on the command line."""
    overrides = {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    if args.weights_path is not None:
        overrides["pretrained"] = True  # a weights file only makes sense for a pretrained model
    if args.preset:
        from caltech_core.study import experiments

        try:
            bases = experiments.resolve_configs(args.preset, store)
        except KeyError as exc:
            raise CliError(str(exc.args[0]) if exc.args else str(exc), 2) from exc
    else:
        bases = [TrainConfig()]
    if "arch" in overrides:  # through replace(), so a new architecture brings its native image size
        bases = [base.replace(arch=overrides["arch"]) for base in bases]
    configs = [TrainConfig.from_dict({**base.to_dict(), **overrides}) for base in bases]
    from caltech_core.study.experiments import repeat_configs

    # An explicit --seed is kept as given (repeats count up from it); otherwise seeds already used by runs of
    # the same name skip ahead, so every repeat is new.
    return repeat_configs(configs, args.repeats, None if args.seed is not None else store), args.preset


def _progress_bar(cfg: TrainConfig, label: str) -> tuple[Any, Any]:
    """A tqdm bar on stderr counting epochs (fractional), and the on_progress callback feeding it."""
    from tqdm import tqdm

    bar = tqdm(total=cfg.epochs, desc=label, unit="epoch", file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.2f}/{total} epochs [{elapsed}<{remaining}{postfix}]")

    last = {"phase": None, "at": 0.0}

    def update(p: Any) -> None:
        now = time.monotonic()
        if p.phase == last["phase"] and now - last["at"] < 0.25:
            return  # the engine reports every image while caching; redraw a few times a second
        last.update(phase=p.phase, at=now)
        bar.n = round(p.fraction * p.epochs, 2)
        if p.phase in ("training", "validating"):
            detail = f"batch {p.batch}/{p.batches}"
        elif p.phase == "downloading weights":
            detail = f"{p.phase_done / 2**20:.1f}/{p.phase_total / 2**20:.1f} MB"
        elif p.phase_total:
            detail = f"{p.phase_done}/{p.phase_total}"
        else:
            detail = ""
        bar.set_postfix_str(f"{p.phase} {detail}".strip(), refresh=False)
        bar.refresh()

    return bar, update


def _run_foreground(store: RunStore, run_id: int, root: str | None, *, resume: bool, label: str) -> str:
    """Train one stored run in this process (same path as the job manager); Ctrl-C cancels it cleanly."""
    from caltech_core.runs import jobs

    record = store.get_run(run_id)
    assert record is not None
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum: int, frame: Any) -> None:
            if stop.is_set():  # a second Ctrl-C: give up at once
                raise KeyboardInterrupt
            print("\nstopping after this batch (Ctrl-C again to abort)...", file=sys.stderr)
            stop.set()

        previous = signal.signal(signal.SIGINT, on_sigint)
    bar, update = _progress_bar(record.config, label)
    try:
        status = jobs.run_job(store, run_id, data_root=root, resume=resume, stop=stop, on_progress=update)
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if stop.is_set() and status == RunStatus.CANCELLED:
        raise KeyboardInterrupt
    return status


def _report_run(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(summary)
        return
    line = (f"run #{summary['run_id']} {summary['name'] or summary['arch']}: {summary['status']}, "
            f"best val {_num(summary['best_val_acc'])}, test {_num(summary['test_acc'])}")
    if summary["error"]:
        line += f" ({summary['error']})"
    print(line, flush=True)


def _exit_code(statuses: list[str]) -> int:
    return 1 if any(s == "failed" for s in statuses) else 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train in the foreground through the store; one run, or every config of a preset in order."""
    from caltech_core.data import dataset

    store = _store(args)
    configs, preset = _train_configs(args, store)
    if _backend(args) != "local":
        return _train_on_ray(args, store, configs, preset)
    dataset.resolve_root(args.root)  # a missing dataset is reported before any run is created
    summaries: list[dict[str, Any]] = []
    for i, cfg in enumerate(configs, 1):
        run_id = store.create_run(cfg)
        label = f"[{i}/{len(configs)}] #{run_id}" if len(configs) > 1 else f"#{run_id}"
        try:
            _run_foreground(store, run_id, args.root, resume=False, label=label)
        except KeyboardInterrupt:
            _report_run(_run_summary(store, run_id), args.json)
            print(f"run #{run_id} cancelled; continue it with: python -m caltech_core resume {run_id}",
                  file=sys.stderr)
            return 130
        summary = _run_summary(store, run_id)
        summaries.append(summary)
        _report_run(summary, args.json)
    _report_sweep(summaries, preset, args.json)
    return _exit_code([s["status"] for s in summaries])


def _report_sweep(summaries: list[dict[str, Any]], preset: str | None, as_json: bool) -> None:
    """After several runs: the best one (highest validation accuracy) and every run's summary."""
    if len(summaries) < 2:
        return
    scored = [s for s in summaries if s["best_val_acc"] is not None]
    best = max(scored, key=lambda s: s["best_val_acc"]) if scored else summaries[-1]
    brief = [{k: s[k] for k in ("run_id", "name", "status", "best_val_acc", "test_acc")} for s in summaries]
    final = {**best, "preset": preset, "best_run_id": best["run_id"], "runs": brief}
    if as_json:
        _print_json(final)
    else:
        print(f"best: run #{best['run_id']} {best['name']} (val {_num(best['best_val_acc'])})")


def _backend(args: argparse.Namespace) -> str:
    """`--ray ADDRESS`, else $CALTECH_STUDIO_RAY, else "local" (train in this process)."""
    try:
        return backend.check_address(args.ray) if args.ray else backend.backend_from_env()
    except ValueError as exc:
        raise CliError(str(exc), 2) from exc


def _ray_manager(args: argparse.Namespace, store: RunStore) -> Any:
    from caltech_core.runs import raybackend

    env = {settings.OFFLINE.name: "1"} if args.offline else {}  # workers do not see this process's environment
    try:
        return raybackend.RayJobManager(store, _backend(args), data_root=args.root,
                                        runtime_env={"env_vars": env} if env else None)
    except raybackend.RayBackendError as exc:
        raise CliError(str(exc)) from exc


def _wait_on_ray(manager: Any, store: RunStore, run_ids: list[int], as_json: bool) -> list[dict[str, Any]]:
    """Report each run as it ends; Ctrl-C stops them all (interrupted, resumable) and exits 130."""
    summaries: dict[int, dict[str, Any]] = {}
    try:
        while len(summaries) < len(run_ids):
            manager.wait(timeout=1.0)
            for run_id in run_ids:
                if run_id not in summaries and store.get_run(run_id).status in run_status.DONE:
                    manager.wait(run_id)  # its last rows are in the store
                    summaries[run_id] = _run_summary(store, run_id)
                    _report_run(summaries[run_id], as_json)
    except KeyboardInterrupt:
        print("\nstopping the runs after their current batch...", file=sys.stderr)
        manager.shutdown(wait=True)
        raise
    manager.shutdown(wait=True)
    return [summaries[r] for r in run_ids]


def _train_on_ray(args: argparse.Namespace, store: RunStore, configs: list[TrainConfig],
                  preset: str | None) -> int:
    """Queue every config on the Ray cluster at once (they train side by side up to its capacity) and wait."""
    manager = _ray_manager(args, store)
    run_ids = [manager.submit(cfg) for cfg in configs]
    print(f"queued run(s) {', '.join(f'#{i}' for i in run_ids)} on Ray ({manager.address})", file=sys.stderr)
    summaries = _wait_on_ray(manager, store, run_ids, args.json)
    _report_sweep(summaries, preset, args.json)
    return _exit_code([s["status"] for s in summaries])


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted or cancelled run from its last checkpoint, in the foreground."""

    store = _store(args)
    # A run whose process died still says "running" (the Ray manager marks it after draining what that left).
    manager = _ray_manager(args, store) if _backend(args) != "local" else None
    if manager is None:
        store.mark_interrupted()
    run = store.get_run(args.id)
    problem = None
    if run is None:
        problem = f"run {args.id} does not exist in {store.home}"
    elif run.status not in run_status.RESUMABLE:
        problem = (f"run {args.id} is {run.status}; only "
                   f"{' or '.join(run_status.names(run_status.RESUMABLE))} runs can be resumed")
    if problem is not None:
        if manager is not None:
            manager.shutdown(wait=True)
        raise CliError(problem)
    if manager is not None:
        manager.resume(run.id)
        summary = _wait_on_ray(manager, store, [run.id], args.json)[0]
        return _exit_code([summary["status"]])
    try:
        _run_foreground(store, run.id, args.root, resume=True, label=f"#{run.id}")
    except KeyboardInterrupt:
        _report_run(_run_summary(store, run.id), args.json)
        return 130
    summary = _run_summary(store, run.id)
    _report_run(summary, args.json)
    return _exit_code([summary["status"]])


def cmd_runs(args: argparse.Namespace) -> int:
    """List stored runs."""
    store = _store(args)
    runs = store.list_runs(group=args.group, status=args.status, arch=args.arch, tags=args.tag or (),
                           newest_first=False)
    rows = [{"run_id": r.id, "name": r.name, "group": r.group, "arch": r.arch, "status": r.status,
             "epochs": r.epochs_done, "best_val_acc": r.best_val_acc, "test_acc": r.test_acc,
             "error": r.error, "tags": list(r.tags), "note": r.note} for r in runs]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no runs in {store.home}")
        return 0
    print(f"{'id':>4}  {'status':<11} {'arch':<18} {'epochs':>6} {'val':>7} {'test':>7}  name")
    for r in rows:
        tags = f"  [{', '.join(r['tags'])}]" if r["tags"] else ""
        print(f"{r['run_id']:>4}  {r['status']:<11} {r['arch']:<18} {r['epochs']:>6} "
              f"{_num(r['best_val_acc']):>7} {_num(r['test_acc']):>7}  {r['name']}{tags}")
    return 0


def _existing_run(store: RunStore, run_id: int) -> Any:
    run = store.get_run(run_id)
    if run is None:
        raise CliError(f"run {run_id} does not exist in {store.home}")
    return run


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete runs with their metrics and files; refused for a queued or running run (cancel it first)."""
    store = _store(args)
    runs = [_existing_run(store, i) for i in dict.fromkeys(args.ids)]
    active = [r for r in runs if r.status in run_status.ACTIVE]
    if active:
        raise CliError(f"run {active[0].id} is {active[0].status}; cancel it first (nothing was deleted)")
    listing = ", ".join(r.label for r in runs)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"deleting {listing} needs confirmation: add --yes", code=2)
        if input(f"Delete {listing} and their files? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    for r in runs:
        store.delete_run(r.id)
    if args.json:
        _print_json({"deleted": [r.id for r in runs]})
    else:
        print(f"deleted {listing}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Stop a queued or running run, whichever process (CLI or dashboard) owns it: within one batch."""
    store = _store(args)
    run = _existing_run(store, args.id)
    if not store.request_cancel(run.id):
        raise CliError(f"run {run.id} is {run.status}; only queued or running runs can be cancelled")
    print(f"cancel requested: run {run.id} stops within one batch", file=sys.stderr)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """Add (or with --remove, take away) tags of a run."""
    store = _store(args)
    run = _existing_run(store, args.id)
    tags = set(run.tags) - set(args.tags) if args.remove else set(run.tags) | set(args.tags)
    try:
        tags = store.set_tags(run.id, tags)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from exc
    if args.json:
        _print_json({"run_id": run.id, "tags": list(tags)})
    else:
        print(f"run {run.id}: {', '.join(tags) or 'no tags'}")
    return 0


def cmd_note(args: argparse.Namespace) -> int:
    """Set a run's free-text note ('' clears it)."""
    store = _store(args)
    run = _existing_run(store, args.id)
    try:
        store.set_note(run.id, args.text)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from exc
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """Top-K classes of each image with a trained run's best weights; a bad file never stops the others."""
    from caltech_core.use import inference

    store = _store(args)
    if store.get_run(args.run) is None:
        raise CliError(f"run {args.run} does not exist in {store.home}")
    try:
        classifier = inference.Classifier.from_run(store, args.run,
                                                   weights=layout.RETRAINED if args.retrained else layout.BEST)
    except inference.CheckpointError as exc:
        raise CliError(str(exc)) from exc
    results: list[dict[str, Any]] = []
    for name in args.images:
        try:
            image = inference.open_upload(Path(name).read_bytes(), Path(name).name)
            top = classifier.predict([image], top=args.top)[0]
        except (OSError, inference.ImageError) as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            results.append({"file": name, "error": message})
            continue
        results.append({"file": name, "top": [{"class": c, "prob": p} for c, p in top]})
    if args.json:
        _print_json(results)
        return 0
    for item in results:
        if "error" in item:
            print(f"{item['file']}: error: {item['error']}")
        else:
            best = ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in item["top"])
            print(f"{item['file']}: {best}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Recompute a run's per-image results of one split from best.pt; print accuracy and the file's path."""
    from caltech_core.training import predictions
    from caltech_core.use import recompute

    store = _store(args)
    if store.get_run(args.run) is None:
        raise CliError(f"run {args.run} does not exist in {store.home}")
    try:
        results, path = recompute.recompute(store, args.run, args.split, data_root=args.root)
    except predictions.ResultsError as exc:
        raise CliError(str(exc)) from exc
    summary = {"run_id": args.run, **results.summary(), "path": str(path)}
    if args.json:
        _print_json(summary)
        return 0
    print(f"run #{args.run} on {summary['images']} {args.split} images: accuracy {_num(summary['acc'])}, "
          f"mean per-class accuracy {_num(summary['mean_class_acc'])}")
    print(f"per-image results: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's best weights to ONNX or TorchScript with a JSON of classes and preprocessing."""
    from caltech_core.use import export

    store = _store(args)
    try:
        exported = export.export_run(store, args.run, args.format, args.out)
    except export.ExportError as exc:
        raise CliError(str(exc)) from exc
    summary = {"run_id": args.run, "format": args.format, "model": str(exported.model_path),
               "metadata": str(exported.meta_path), "max_difference": exported.max_difference}
    if args.json:
        _print_json(summary)
    else:
        print(f"{args.format} model: {exported.model_path}")
        print(f"classes and preprocessing: {exported.meta_path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild the study's tables and figures from the store; write report.md (+ figures) to --out."""
    from caltech_core.study import report

    store = _store(args)
    rep = report.build_report(store, args.root)
    out = Path(args.out) if args.out else store.home / "report"
    path = report.export_markdown(rep, out)
    if args.json:
        _print_json({**report.report_summary(rep), "markdown": str(path)})
    else:
        print("\n".join(report.summary_lines(rep)))
        print(f"report written to {path}")
    return 0


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def cmd_cache(args: argparse.Namespace) -> int:
    """The store's disk use by kind; with --prune, delete caches no stored run uses."""
    store = _store(args)
    removed: list[Path] = []
    freed = 0
    if args.prune:
        try:
            removed, freed = store.prune_caches()
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    usage = store.disk_usage()
    if args.json:
        _print_json({"home": str(store.home), "bytes": usage, "removed": [str(p) for p in removed],
                     "freed_bytes": freed, "unused": [str(p) for p in store.unused_caches()]})
        return 0
    print(f"store: {store.home}")
    for kind, n in usage.items():
        print(f"  {kind:<14} {_size(n):>10}")
    if args.prune:
        print(f"pruned {len(removed)} unused cache(s), freed {_size(freed)}")
    elif unused := store.unused_caches():
        print(f"{len(unused)} cache(s) no run uses; delete them with --prune")
    return 0


# -- parser --------------------------------------------------------------------------------------------

def _aug_list(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(a.strip() for a in text.split(",") if a.strip())


def _config_option(setting: Setting) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The `train` option of one TrainConfig field, from its Setting; it defaults to None ("keep the preset's")."""
    flags = setting.flags or (f"--{setting.name.replace('_', '-')}",)
    help_text = setting.help_text if setting.help else f"{setting.label}. {setting.help_text}".strip()
    options: dict[str, Any] = {"dest": setting.name, "default": None, "metavar": setting.metavar}
    if setting.kind == "bool":
        options = {"dest": setting.name, "default": None, "action": argparse.BooleanOptionalAction}
        help_text += f" (baseline: {'on' if setting.default else 'off'})"
    elif setting.kind == "tuple":
        options.update(type=_aug_list, metavar=setting.metavar or "LIST")
        help_text += f" Comma-separated{': ' + ', '.join(setting.choices) if setting.choices else ''}, or none."
    else:
        options.update(type={"int": int, "float": float, "str": str}[setting.kind], choices=setting.choices or None)
        help_text += f" (baseline: {setting.default})" if setting.default not in (None, "") else ""
    return flags, {**options, "help": help_text.replace("%", "%%")}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, generated from the fields' Settings."""
    for setting in SETTINGS.values():
        flags, options = _config_option(setting)
        parser.add_argument(*flags, **options)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and `--help` docs)."""
    from caltech_core.study.experiments import PRESETS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="DIR",
                        help="run store folder (default: $CALTECH_STUDIO_HOME, else ~/.caltech_studio)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    rooted = argparse.ArgumentParser(add_help=False)
    rooted.add_argument("--root", metavar="PATH",
                        help="Caltech-101 folder (default: $CALTECH101_ROOT, else ./data/caltech101)")
    no_download = argparse.ArgumentParser(add_help=False)
    no_download.add_argument("--offline", action="store_true",
                             help=f"never download ImageNet weights (same as {settings.OFFLINE.name}=1)")
    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument("--ray", metavar="ADDRESS",
                         help="train on a Ray cluster, the runs side by side: local-cluster (start one here), auto "
                              "(the one `ray start` made), ray://HOST:PORT or HOST:PORT; local = in this process "
                              "(default: $CALTECH_STUDIO_RAY, else local)")

    parser = argparse.ArgumentParser(prog="python -m caltech_core", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", parents=[common, rooted], help="dataset summary")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", parents=[common, rooted, no_download, backend], help="train in the foreground (a run or a preset sweep)",
                       description="Train in the foreground. Options left out keep the preset's (or the "
                                   "baseline's) value; a preset with several configs runs them all.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="an experiment of the study")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="train every config N times, each with a new seed and train/validation split (default 1)")
    _add_config_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", parents=[common], help="list stored runs")
    p.add_argument("--group")
    p.add_argument("--status")
    p.add_argument("--arch")
    p.add_argument("--tag", action="append", help="only runs with this tag (repeat for several)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("delete", parents=[common], help="delete runs and their files (not while they run)")
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("cancel", parents=[common], help="stop a queued or running run (any process)")
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("tag", parents=[common], help="add or remove tags of a run")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("tags", nargs="+", metavar="TAG")
    p.add_argument("--remove", action="store_true", help="remove the tags instead")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("note", parents=[common], help="set a run's note ('' clears it)")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("text", metavar="TEXT")
    p.set_defaults(func=cmd_note)

    p = sub.add_parser("classify", parents=[common], help="classify images with a trained run")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--run", type=int, required=True, metavar="ID")
    p.add_argument("--top", type=int, default=5, metavar="K")
    p.add_argument("--retrained", action="store_true",
                   help="use the model the run retrained on train+val (retrain.pt) instead of best.pt")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("resume", parents=[common, rooted, no_download, backend],
                       help="continue an interrupted or cancelled run")
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("evaluate", parents=[common, rooted],
                       help="per-image results of a run's best weights on the test or validation split")
    p.add_argument("run", type=int, metavar="RUN")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", parents=[common], help="export a run's best model to ONNX or TorchScript")
    p.add_argument("run", type=int, metavar="RUN")
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the model file and its JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("cache", parents=[common], help="disk use of the store; --prune deletes unused caches")
    p.add_argument("--prune", action="store_true",
                   help="delete image/feature caches no stored run uses (refused while a run is active)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("report", parents=[common, rooted], help="rebuild the study's tables and figures")
    p.add_argument("--out", metavar="DIR", help="output folder (default: STORE/report)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m caltech_core`; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "offline", False):
        settings.set_offline()  # read by weights.fetch in this process's runs
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except FileNotFoundError as exc:  # DatasetNotFoundError included: its message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
