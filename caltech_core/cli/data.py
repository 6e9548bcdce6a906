"""`data` and `cache`: the dataset's summary and the store's disk use."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltech_core.cli.common import CliError, open_store, print_json
from caltech_core.cli.progress import count_bar
from caltech_core.runs import editing


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
