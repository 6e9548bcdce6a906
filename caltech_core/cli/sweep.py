"""`sweep SPEC.yaml|json` (a new sweep, driven in the foreground), `sweep --resume ID` and `sweep list`.

The trials train on this process's thread backend one at a time, or side by side on Ray with `--ray` (set
`parallel` in the spec). Ctrl-C stops the sweep: running trials become "interrupted" and `sweep --resume ID`
continues them. `--json` prints one document: the sweep id, its state, every trial with its runs, the best run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from caltech_core.cli.common import CliError, Parents, open_store, percent, print_json
from caltech_core.runs import backend


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser("sweep", parents=[parents.common, parents.rooted, parents.no_download, parents.on_ray],
                       help="hyperparameter sweep (W&B's sweep format): grid, random or Bayesian, with pruning",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("spec", nargs="?", metavar="SPEC", help="a .yaml/.yml or .json sweep spec, or `list`")
    p.add_argument("--resume", type=int, metavar="ID", help="continue sweep ID where it stopped")
    p.set_defaults(func=cmd_sweep, trains_on_a_thread=True)  # cli/restart.py


def cmd_sweep(args: argparse.Namespace) -> int:
    from caltech_core.sweeps import spec as sweep_spec
    from caltech_core.sweeps import sweep as sweeps

    store = open_store(args)
    if args.spec == "list":
        return _list(store, args.json)
    if (args.spec is None) == (args.resume is None):
        raise CliError("give a spec file, `list`, or --resume ID", 2)
    address = backend.check_address(args.ray) if args.ray else backend.backend_from_env()
    if address == backend.LOCAL:
        from caltech_core.data import dataset

        dataset.resolve_root(args.root)  # a missing dataset is reported before anything is stored or queued
    if args.resume is not None:
        try:
            sweep = sweeps.open_sweep(store.home, args.resume)
        except sweeps.SweepNotFoundError as exc:
            raise CliError(str(exc.args[0])) from exc
    else:
        sweep = sweeps.create_sweep(store.home, sweep_spec.load_spec(args.spec))  # ConfigError: exit 2
        if not args.json:
            print(f"sweep {sweep.id}: {sweep.spec.title}", file=sys.stderr)
    state = _drive(args, store, sweep, address)
    summary = sweeps.summary(sweep, store)
    if args.json:
        print_json(summary)
    else:
        best = summary["best"]
        print(f"sweep {sweep.id} {state}: {len(summary['trials'])} trials")
        if best:
            print(f"best: trial {best['trial']}, run #{best['run_id']}, {sweep.spec.metric} "
                  f"{_value(sweep.spec.metric, best['value'])}, {best['params']}")
    return 130 if state == "stopped" else 0


def _drive(args: argparse.Namespace, store: Any, sweep: Any, address: str) -> str:
    from caltech_core.runs.manager import get_manager
    from caltech_core.sweeps.driver import SweepBusyError, SweepDriver

    manager = get_manager(store.home, data_root=args.root and Path(args.root), backend=address)
    driver = SweepDriver(sweep, manager, on_change=None if args.json else lambda line: print(line, file=sys.stderr))
    try:
        return driver.run()
    except SweepBusyError as exc:
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        print(f"stopped; continue with: sweep --resume {sweep.id}", file=sys.stderr)
        sweep.set_state(status="stopped")
        return "stopped"
    finally:
        manager.shutdown(wait=True)  # running trials become "interrupted": a resume continues them


def _list(store: Any, as_json: bool) -> int:
    from caltech_core.sweeps import sweep as sweeps

    rows = []
    for sweep in sweeps.list_sweeps(store.home):
        best = sweeps.best_run(sweep, store)
        rows.append({"sweep_id": sweep.id, "title": sweep.spec.title, "method": sweep.spec.method,
                     "status": sweep.status(), "trials": len(sweep.study().trials),
                     "cap": sweep.spec.trial_cap(), "best": best})
    if as_json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no sweeps in {store.home} (start one with `sweep SPEC.yaml` or the Train page's sweep builder)")
    for row in rows:
        best = row["best"]
        best_text = f"best run #{best['run_id']} ({best['value']:.3g})" if best else "no completed trial"
        print(f"{row['sweep_id']:>4}  {row['status']:<8}  {row['trials']}/{row['cap'] or '-'} trials  "
              f"{row['title']}  {best_text}")
    return 0


def _value(metric: str, value: float | None) -> str:
    return percent(value) if metric.endswith("acc") else f"{value:.4f}" if value is not None else "-"
