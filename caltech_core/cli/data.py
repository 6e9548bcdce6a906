"""`data` and `cache`: the datasets (Caltech-101's summary; `data add|list|check|exclude|relabel|undo` for any
folder of labelled images) and the store's disk use."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from caltech_core.cli.common import CliError, Parents, open_store, print_json
from caltech_core.cli.progress import count_bar
from caltech_core.runs import editing


def register(commands: Any, parents: Parents) -> None:
    """`data` with its sub-commands (without one, `data` is Caltech-101's summary) and `cache`."""
    common, rooted = parents.common, parents.rooted
    data = commands.add_parser("data", parents=[common, rooted], help="datasets: Caltech-101's summary; add, list, "
                                                                      "check")
    data.set_defaults(func=cmd_data)
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = sub.add_parser("add", parents=[common], help="register a folder of class sub-folders (or a CSV)")
    p.add_argument("path", metavar="PATH", help="ROOT/<class>/**/*.jpg, ROOT/{train,val,test}/<class>/**, or a "
                                                "CSV of path,label[,split]")
    p.add_argument("--name", metavar="N", help="the dataset's name (default: the folder's name)")
    p.set_defaults(func=cmd_data_add)
    p = sub.add_parser("list", parents=[common], help="the registered datasets (and whether they changed)")
    p.set_defaults(func=cmd_data_list)
    p = sub.add_parser("check", parents=[common, rooted], help="health check: unreadable, tiny, duplicate and "
                                                               "leaking images, imbalance (never edits files)")
    p.add_argument("dataset", metavar="NAME|PATH", help="a registered name, a folder, or caltech101")
    p.add_argument("--refresh", action="store_true", help="check again even if the files did not change")
    p.set_defaults(func=cmd_data_check)
    for action, text in (("exclude", "leave files out of every run's splits"),
                         ("relabel", "train files as another class"), ("undo", "remove the marks of files")):
        p = sub.add_parser(action, parents=[common], help=text)
        p.add_argument("dataset", metavar="NAME", help="a registered name or caltech101")
        p.add_argument("files", nargs="+", metavar="FILE")
        if action == "relabel":
            p.add_argument("--to", required=True, metavar="CLASS", help="the class the files belong to")
        p.set_defaults(func=cmd_data_mark, action=action)

    p = commands.add_parser("cache", parents=[common], help="disk use of the store; --prune deletes unused caches")
    p.add_argument("--prune", action="store_true",
                   help="delete image/feature caches no stored run uses (refused while a run is active)")
    p.set_defaults(func=cmd_cache)


def _dataset_id(store_home: Path, text: str) -> str:
    from caltech_core.data import registry

    try:
        return registry.resolve(store_home, text) or registry.CALTECH_ID
    except (registry.UnknownDatasetError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def cmd_data_add(args: argparse.Namespace) -> int:
    """Register a folder; print its classes, counts and what was skipped."""
    from caltech_core.data import registry

    store = open_store(args)
    try:
        entry, listing = registry.add(store.home, args.path, args.name)
    except ValueError as exc:  # FolderError included: the message says what is wrong with the folder
        raise CliError(str(exc)) from exc
    if args.json:
        print_json({**entry.to_dict(), "skipped_files": [s.to_dict() for s in listing.skipped]})
        return 0
    print(f"added {entry.name!r} ({entry.kind}): {entry.files} images in {len(entry.classes)} classes "
          f"from {entry.path}")
    reasons = Counter(s.reason for s in listing.skipped)
    for reason, n in reasons.most_common():
        print(f"  skipped {n}: {reason}")
    print(f"train on it with: python -m caltech_core train --data {entry.id}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    """Caltech-101 and every registered dataset, with a note when a folder changed since it was added."""
    from caltech_core.data import registry

    store = open_store(args)
    entries = registry.load_all(store.home)
    rows = [{**e.to_dict(), "changed": registry.changes(e)} for e in entries.values()]
    if args.json:
        print_json(rows)
        return 0
    print(f"{registry.CALTECH_ID:<20} Caltech-101 (the default; the study's dataset)")
    for row in rows:
        print(f"{row['id']:<20} {row['files']:>7} images {len(row['classes']):>4} classes  {row['kind']:<8} "
              f"{row['path']}" + (f"\n{'':<20} changed: {row['changed']}" if row["changed"] else ""))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """The health check of a dataset (kept in the store; `--refresh` runs it again)."""
    from caltech_core.data import health

    store = open_store(args)
    _dataset_id(store.home, args.dataset)  # an unknown name fails before the progress bar
    with count_bar("checking images", "step") as progress:
        try:
            report = health.check_dataset(store.home, args.dataset, store.cache_dir, root=args.root,
                                          refresh=args.refresh, progress=progress)
        except ValueError as exc:  # SplitError, FolderError
            raise CliError(str(exc)) from exc
    if args.json:
        print_json(report)
    else:
        print("\n".join(health.summary_lines(report)))
    return 0


def cmd_data_mark(args: argparse.Namespace) -> int:
    """Exclude, relabel or un-mark files of a dataset (the images themselves are never touched)."""
    from caltech_core.data import overrides, registry

    store = open_store(args)
    dataset_id = _dataset_id(store.home, args.dataset)
    files = [str(Path(f).expanduser().absolute()) for f in args.files]
    if args.action != "undo" and (gone := [f for f in files if not Path(f).is_file()]):
        raise CliError(f"no such file(s), nothing marked: {', '.join(gone[:5])}" + (" …" if len(gone) > 5 else ""), 2)
    if args.action == "relabel" and dataset_id != registry.CALTECH_ID:
        classes = registry.get(store.home, dataset_id).classes
        if args.to not in classes:
            raise CliError(f"{args.to!r} is not a class of {dataset_id} (classes: {', '.join(classes[:10])})", 2)
    if args.action == "undo":
        n = overrides.undo(store.home, dataset_id, files)
    else:
        n = overrides.mark(store.home, dataset_id, files, args.action, label=getattr(args, "to", None))
    if args.json:
        print_json({"dataset": dataset_id, "action": args.action, "files": n,
                    "marks": overrides.marks(store.home, dataset_id)})
    else:
        print(f"{args.action}: {n} file(s) of {dataset_id}; {len(overrides.load(store.home, dataset_id))} mark(s) "
              "in force (runs queued from now on use them)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Dataset summary (split sizes, classes, unreadable images)."""
    from caltech_core.data import dataset, scan

    root = dataset.resolve_root(args.root)  # a missing dataset is reported before any progress bar is drawn
    with count_bar("checking images", "img") as progress:
        summary = scan.dataset_summary(root, progress=progress)
    if args.json:
        print_json(summary)
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


def cmd_cache(args: argparse.Namespace) -> int:
    """The store's disk use by kind; with --prune, delete caches no stored run uses."""
    store = open_store(args)
    removed: list[Path] = []
    freed = 0
    if args.prune:
        try:
            removed, freed = editing.prune_caches(store)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    usage = store.disk_usage()
    if args.json:
        print_json({"home": str(store.home), "bytes": usage, "removed": [str(p) for p in removed],
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


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"
