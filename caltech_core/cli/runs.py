"""`runs`, `delete`, `cancel`, `tag` and `note`: list the stored runs and manage them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from caltech_core.cli.common import CliError, Parents, existing_run, open_store, percent, print_json
from caltech_core.runs import editing
from caltech_core.runs.store import RunNotFoundError


def register(sub: Any, parents: Parents) -> None:
    """`runs`, `delete`, `cancel`, `tag`, `note`."""
    p = sub.add_parser("runs", parents=[parents.common], help="list stored runs")
    p.add_argument("--group")
    p.add_argument("--status")
    p.add_argument("--arch")
    p.add_argument("--tag", action="append", help="only runs with this tag (repeat for several)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("delete", parents=[parents.common], help="delete runs and their files (not while they run)")
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("cancel", parents=[parents.common], help="stop a queued or running run (any process)")
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("tag", parents=[parents.common], help="add or remove tags of a run")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("tags", nargs="+", metavar="TAG")
    p.add_argument("--remove", action="store_true", help="remove the tags instead")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("note", parents=[parents.common], help="set a run's note ('' clears it)")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("text", metavar="TEXT")
    p.set_defaults(func=cmd_note)


def cmd_runs(args: argparse.Namespace) -> int:
    """List stored runs."""
    store = open_store(args)
    runs = store.list_runs(group=args.group, status=args.status, arch=args.arch, tags=args.tag or (),
                           newest_first=False)
    rows = [{"run_id": r.id, "name": r.name, "group": r.group, "arch": r.arch, "status": r.status,
             "epochs": r.epochs_done, "best_val_acc": r.best_val_acc, "test_acc": r.test_acc,
             "error": r.error, "tags": list(r.tags), "note": r.note} for r in runs]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no runs in {store.home}")
        return 0
    print(f"{'id':>4}  {'status':<11} {'arch':<18} {'epochs':>6} {'val':>7} {'test':>7}  name")
    for r in rows:
        tags = f"  [{', '.join(r['tags'])}]" if r["tags"] else ""
        print(f"{r['run_id']:>4}  {r['status']:<11} {r['arch']:<18} {r['epochs']:>6} "
              f"{percent(r['best_val_acc']):>7} {percent(r['test_acc']):>7}  {r['name']}{tags}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete runs with their metrics and files; refused for a queued or running run (cancel it first)."""
    store = open_store(args)
    try:
        runs = editing.deletable(store, args.ids)
    except RunNotFoundError as exc:
        raise CliError(f"run {exc.run_id} does not exist in {store.home}") from exc
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    listing = ", ".join(r.label for r in runs)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"deleting {listing} needs confirmation: add --yes", code=2)
        if input(f"Delete {listing} and their files? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    editing.delete_runs(store, [r.id for r in runs])
    if args.json:
        print_json({"deleted": [r.id for r in runs]})
    else:
        print(f"deleted {listing}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Stop a queued or running run, whichever process (CLI or dashboard) owns it: within one batch."""
    store = open_store(args)
    run = existing_run(store, args.id)
    if not store.request_cancel(run.id):
        raise CliError(f"run {run.id} is {run.status}; only queued or running runs can be cancelled")
    print(f"cancel requested: run {run.id} stops within one batch", file=sys.stderr)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """Add (or with --remove, take away) tags of a run."""
    store = open_store(args)
    run = existing_run(store, args.id)
    tags = set(run.tags) - set(args.tags) if args.remove else set(run.tags) | set(args.tags)
    try:
        tags = store.set_tags(run.id, tags)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from exc
    if args.json:
        print_json({"run_id": run.id, "tags": list(tags)})
    else:
        print(f"run {run.id}: {', '.join(tags) or 'no tags'}")
    return 0


def cmd_note(args: argparse.Namespace) -> int:
    """Set a run's free-text note ('' clears it)."""
    store = open_store(args)
    run = existing_run(store, args.id)
    try:
        store.set_note(run.id, args.text)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from exc
    return 0
