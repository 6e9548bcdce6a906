"""`lr-find` (the learning-rate range test of a config) and `export` (`cmd_export_any`: a model format goes to
`use.cmd_export`; `--format tensorboard|mlflow` writes runs where people keep their experiments).
`add_commands` registers `lr-find` and `sweep` with the parser of `app.py`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from caltech_core.cli.common import CliError, open_store, print_json
from caltech_core.config import SETTINGS
from caltech_core.runs.exporters import FORMATS as EXPORT_FORMATS


def add_commands(sub: Any, parents: dict[str, argparse.ArgumentParser],
                 config_option: Callable[[Any], tuple[tuple[str, ...], dict[str, Any]]]) -> None:
    """`lr-find` (with every `train` option) and `sweep`; `parents` are app.py's shared option groups."""
    from caltech_core.cli.sweep import add_sweep_command
    from caltech_core.training import lrfinder

    p = sub.add_parser("lr-find", parents=[parents["common"], parents["rooted"], parents["no_download"]],
                       help="learning-rate range test: the rate where the loss falls fastest",
                       description="Train a few batches while the learning rate grows exponentially; suggest "
                                   "the rate where the smoothed loss falls fastest. Nothing is stored.")
    p.add_argument("--start-lr", type=float, default=lrfinder.START_LR, metavar="LR")
    p.add_argument("--end-lr", type=float, default=lrfinder.END_LR, metavar="LR")
    p.add_argument("--steps", type=int, default=lrfinder.NUM_STEPS, metavar="N",
                   help=f"batches at most (default {lrfinder.NUM_STEPS}; the loss diverging stops it earlier)")
    for setting in SETTINGS.values():
        flags, options = config_option(setting)
        p.add_argument(*flags, **options)
    p.set_defaults(func=cmd_lr_find, preset=None, repeats=1)
    add_sweep_command(sub, parents)


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


def cmd_export_any(args: argparse.Namespace) -> int:
    """`export`: a model format goes to `use.cmd_export` (one run); tensorboard/mlflow write every run given."""
    from caltech_core.cli.use import cmd_export
    from caltech_core.runs import exporters
    from caltech_core.runs.records import RunNotFoundError

    if args.format not in EXPORT_FORMATS:
        if len(args.runs) != 1:
            raise CliError(f"--format {args.format} exports one run's model; give one RUN", 2)
        args.run = args.runs[0]
        return cmd_export(args)
    store = open_store(args)
    try:
        written = exporters.export_runs(store, args.runs, args.format, args.out)
    except RunNotFoundError as exc:
        raise CliError(f"run {exc.run_id} does not exist in {store.home}") from exc
    if args.json:
        print_json({"format": args.format, "out": str(args.out),
                    "runs": [{"run_id": i, "written": w} for i, w in zip(args.runs, written, strict=True)]})
        return 0
    for run_id, where in zip(args.runs, written, strict=True):
        print(f"run #{run_id}: {where}")
    view = f"tensorboard --logdir {args.out}" if args.format == "tensorboard" else \
        f"mlflow ui --backend-store-uri {exporters.mlflow_uri(args.out)}"
    print(f"view them with: {view}")
    return 0
