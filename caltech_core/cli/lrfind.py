"""`lr-find`: the learning-rate range test of a config (the `train` options), nothing stored."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from caltech_core.cli.common import CliError, Parents, add_config_options, open_store, print_json


def register(sub: Any, parents: Parents) -> None:
    from caltech_core.training import lrcurve

    p = sub.add_parser("lr-find", parents=[parents.common, parents.rooted, parents.no_download],
                       help="learning-rate range test: the rate where the loss falls fastest",
                       description="Train a few batches while the learning rate grows exponentially; suggest "
                                   "the rate where the smoothed loss falls fastest. Nothing is stored.")
    p.add_argument("--start-lr", type=float, default=lrcurve.START_LR, metavar="LR")
    p.add_argument("--end-lr", type=float, default=lrcurve.END_LR, metavar="LR")
    p.add_argument("--steps", type=int, default=lrcurve.NUM_STEPS, metavar="N",
                   help=f"batches at most (default {lrcurve.NUM_STEPS}; the loss diverging stops it earlier)")
    add_config_options(p)
    p.set_defaults(func=cmd_lr_find, preset=None, repeats=1)


def cmd_lr_find(args: argparse.Namespace) -> int:
    """Run the range test on the config the options describe; print the suggestion (or the curve as JSON)."""
    from caltech_core.cli.train import train_configs
    from caltech_core.data.dataset import Splits
    from caltech_core.training import lrfinder

    store = open_store(args)
    cfg = train_configs(args, store)[0][0]
    data = Splits.from_config(cfg, args.root)
    last = [0]

    def progress(done: int, total: int) -> None:
        if not args.json and done - last[0] >= 10:
            last[0] = done
            print(f"\r{done}/{total} batches", end="", file=sys.stderr, flush=True)

    try:
        finding = lrfinder.find_lr(cfg, data, cache_dir=store.cache_dir, start_lr=args.start_lr,
                                   end_lr=args.end_lr, num_steps=args.steps, progress=progress)
    except ValueError as exc:
        raise CliError(str(exc), 2) from exc
    if args.json:
        print_json(finding.to_dict())
        return 0
    print(file=sys.stderr)
    steps = f"{len(finding.lrs)} batches in {finding.seconds:.0f} s"
    if finding.suggestion is None:
        raise CliError(f"too few batches to suggest a rate ({steps}); raise --steps or lower --start-lr")
    print(f"suggested learning rate: {finding.suggestion:.2g} (steepest descent of the smoothed loss; {steps}"
          f"{', stopped when the loss diverged' if finding.stopped_early else ''})")
    print(f"lowest smoothed loss / 10: {finding.lr_min:.2g}")
    return 0
