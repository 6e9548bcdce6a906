"""`suspects`: the images of a run's split whose labels look wrong (cleanlab on out-of-sample probabilities)."""

from __future__ import annotations

import argparse
from typing import Any

from caltech_core.cli.common import CliError, Parents, existing_run, open_store, percent, print_json
from caltech_core.cli.progress import count_bar


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser("suspects", parents=[parents.common, parents.rooted], help="suspected label errors of a run's split (cleanlab)",
                       description="Images whose given label a run's out-of-sample probabilities disagree with: "
                                   "validation/test from the run's own predictions, train from K-fold logistic "
                                   "regression on frozen features. Most suspect first.")
    p.add_argument("run", type=int, metavar="RUN")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="suspects printed (default 20; --json: all)")
    p.add_argument("--refresh", action="store_true", help="compute again instead of reading the cached report")
    p.set_defaults(func=cmd_suspects)


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
