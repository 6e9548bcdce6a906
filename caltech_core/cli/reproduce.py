"""`reproduce`: the whole study in one command — plan (with this machine's minutes), run what is missing, report.

Running it again continues: finished runs are never repeated, interrupted ones resume from their checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from caltech_core.cli.common import Parents, open_store, print_json


def register(sub: Any, parents: Parents) -> None:
    from caltech_core.study.plan import SCALES

    p = sub.add_parser("reproduce", parents=[parents.common, parents.rooted, parents.no_download, parents.on_ray], help="plan, run and report the whole study (resumable)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="full",
                   help="; ".join(f"{s.name}: {s.why}" for s in SCALES.values()))
    p.add_argument("--repeats", type=int, metavar="N",
                   help="runs of every experiment, each with a new seed and split seed "
                        f"(default: {', '.join(f'{s.repeats} at {s.name} scale' for s in SCALES.values())})")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="run only what fits in this many minutes (estimated here); the rest is listed")
    p.add_argument("--dry-run", action="store_true", help="show the plan and stop")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the estimate's timing step runs (default auto)")
    p.set_defaults(func=cmd_reproduce, trains_on_a_thread=True)  # cli/restart.py


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Plan the study against the store, print the plan, then (unless --dry-run) run it and write the report."""
    from caltech_core.data import dataset
    from caltech_core.runs.backend import LOCAL
    from caltech_core.runs.manager import get_manager
    from caltech_core.study.plan import plan_study, probe_estimator, run_plan

    store = open_store(args)
    backend = args.ray or LOCAL
    manager = None
    if not args.dry_run:
        dataset.resolve_root(args.root)  # a missing dataset is reported before anything is queued
        # Started before planning: it marks runs a killed earlier `reproduce` left behind as interrupted.
        manager = get_manager(store.home, args.root, backend)
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log("timing this machine for the estimate (a few batches of the real loader and model per model)…")
    plan = plan_study(store, probe_estimator(args.root, args.device, log), scale=args.scale, repeats=args.repeats,
                      budget_minutes=args.budget)
    if args.json:
        print_json(plan.to_dict())
    else:
        _print_plan(plan)
    if args.dry_run or manager is None:
        return 0
    if not plan.todo:
        print("nothing left to run", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        print(f"runs ended: {done}/{total}", file=sys.stderr, flush=True)

    try:
        path = run_plan(plan, manager, data_root=args.root, progress=progress)
    except KeyboardInterrupt:
        manager.shutdown(wait=True)  # running and queued runs become "interrupted" (resumable)
        print("stopped; run the same command again to continue (finished runs are kept)", file=sys.stderr)
        return 130
    failed = [r.run_id for r in plan.todo if (run := store.get_run(r.run_id)) is not None and run.status == "failed"]
    print(f"report written to {path}", file=sys.stderr if args.json else sys.stdout)
    if failed:
        print(f"failed runs: {', '.join(f'#{i}' for i in failed)} (see `runs --status failed`)", file=sys.stderr)
    return 1 if failed else 0


def _print_plan(plan: Any) -> None:
    rows = [r.row() for r in plan.runs]
    columns = ["preset", "run", "repeat", "state", "stored run", "minutes", "note"]
    cells = [[("" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    print(plan.summary())
