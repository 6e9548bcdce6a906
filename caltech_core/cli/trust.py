"""`suspects`: the images of a run's split whose labels look wrong (cleanlab on out-of-sample probabilities);
`retrain-fixes`: a run trained again with its dataset's marks (`data exclude|relabel`)."""

from __future__ import annotations

import argparse
from typing import Any

from caltech_core.cli.common import CliError, Parents, existing_run, open_store, percent, print_json
from caltech_core.cli.progress import count_bar


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser("suspects", parents=[parents.common, parents.rooted],
                       help="suspected label errors of a run's split (cleanlab)",
                       description="Images whose given label a run's out-of-sample probabilities disagree with: "
                                   "validation/test from the run's own predictions, train from K-fold logistic "
                                   "regression on frozen features. Most suspect first.")
    p.add_argument("run", type=int, metavar="RUN")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="suspects printed (default 20; --json: all)")
    p.add_argument("--refresh", action="store_true", help="compute again instead of reading the cached report")
    p.set_defaults(func=cmd_suspects)
    p = sub.add_parser("retrain-fixes", parents=[parents.common, parents.rooted, parents.no_download], help="train a run again with its dataset's marks",
                       description="A new run with RUN's settings, trained in the foreground with the marks of "
                                   "its dataset (`data exclude|relabel`) applied to the training and validation "
                                   "splits; tagged 'fixes of #RUN'.")
    p.add_argument("run", type=int, metavar="RUN")
    p.add_argument("--marks-on-test", action="store_true",
                   help="apply the marks to the test split too (default: test labels untouched)")
    p.set_defaults(func=cmd_retrain_fixes)


def cmd_suspects(args: argparse.Namespace) -> int:
    from caltech_core.use import suspects

    store = open_store(args)
    existing_run(store, args.run)
    try:
        if args.split == "train":  # the only slow one: features, then K folds
            with count_bar("cross-validating", "fold") as progress:
                report = suspects.find_suspects(store, args.run, "train", data_root=args.root,
                                                refresh=args.refresh, progress=progress)
        else:
            report = suspects.find_suspects(store, args.run, args.split, refresh=args.refresh)
    except suspects.SuspectsError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print_json(report.to_dict())
        return 0
    print(f"run #{args.run}: {len(report.suspects)} suspected label errors among {report.images} {args.split} "
          f"images ({report.method})")
    for rank, s in enumerate(report.suspects[: args.limit], 1):
        print(f"{rank:4d}. {s.path}: labelled {s.given} ({percent(s.given_prob)}), looks like {s.suggested} "
              f"({percent(s.confidence)})")
    return 0


def cmd_retrain_fixes(args: argparse.Namespace) -> int:
    from caltech_core.cli.train import train_one
    from caltech_core.use import fixes

    store = open_store(args)
    existing_run(store, args.run)
    try:
        cfg = fixes.prepare(store, args.run, marks_on_test=args.marks_on_test)
    except fixes.FixError as exc:
        raise CliError(str(exc)) from exc
    if not cfg.dataset:
        from caltech_core.data import dataset

        dataset.resolve_root(args.root)  # a missing Caltech-101 is reported before the run is created
    run = store.get_run(store.create_run(cfg))
    fixes.tag_as_fix(store, run.id, args.run)
    return train_one(store, run, args.root, resume=False, as_json=args.json)
