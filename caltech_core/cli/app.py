"""`caltech-studio` (or `python -m caltech_core`): dataset summary, foreground training, runs, classification, resume,
evaluation, export, report.

Results go to stdout (with `--json`: machine-readable), progress bars and errors to stderr.
Exit codes: 0 success; 1 a failure the message explains (missing dataset, unknown run, a failed run);
2 invalid usage or configuration (the ConfigError message names the field and its allowed range);
130 training stopped with Ctrl-C (the run is "cancelled" and can be resumed).

This module is the parser and the entry point; each command lives in the module of its group (train, runs,
use, study, data). Not named main.py: `caltech_core.cli.main` is the entry-point function.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from caltech_core import settings
from caltech_core.cli import trust
from caltech_core.cli.common import CliError
from caltech_core.cli.data import add_data_commands, cmd_cache, cmd_data
from caltech_core.cli.explore import EXPORT_FORMATS, add_commands, cmd_export_any
from caltech_core.cli.reproduce import add_reproduce
from caltech_core.cli.runs import cmd_cancel, cmd_delete, cmd_note, cmd_runs, cmd_tag
from caltech_core.cli.study import cmd_report
from caltech_core.cli.train import cmd_resume, cmd_train
from caltech_core.cli.use import cmd_classify, cmd_evaluate
from caltech_core.config import SETTINGS, ConfigError, Setting, split_list


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m caltech_core` and `caltech-studio`; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
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


CONSOLE_SCRIPT = "caltech-studio"  # pyproject.toml's [project.scripts] name


def _prog() -> str:
    """How the user called us: `caltech-studio` (the console script) or `python -m caltech_core`."""
    called = sys.argv[0] if sys.argv else ""
    return CONSOLE_SCRIPT if called.endswith(CONSOLE_SCRIPT) else "python -m caltech_core"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and `--help` docs)."""
    from caltech_core.study.experiments import PRESETS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="DIR",
                        help=f"run store folder (default: ${settings.HOME.name}, else {settings.HOME.default})")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    rooted = argparse.ArgumentParser(add_help=False)
    rooted.add_argument("--root", metavar="PATH", help=f"Caltech-101 folder (default: ${settings.DATASET_ROOT.name}, "
                                                       f"else {settings.DATASET_ROOT.default})")
    no_download = argparse.ArgumentParser(add_help=False)
    no_download.add_argument("--offline", action="store_true",
                             help=f"never download ImageNet weights (same as {settings.OFFLINE.name}=1)")
    on_ray = argparse.ArgumentParser(add_help=False)
    on_ray.add_argument("--ray", metavar="ADDRESS",
                        help="train on a Ray cluster, the runs side by side: local-cluster (start one here), auto "
                             "(the one `ray start` made), ray://HOST:PORT or HOST:PORT; local = in this process "
                             f"(default: ${settings.RAY.name}, else {settings.RAY.default})")

    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__.split("\n\n")[0].replace("\n", " "))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", parents=[common, rooted], help="datasets: Caltech-101's summary; add, list, check")
    p.set_defaults(func=cmd_data)
    add_data_commands(p, common, rooted)

    p = sub.add_parser("train", parents=[common, rooted, no_download, on_ray],
                       help="train in the foreground (a run or a preset sweep)",
                       description="Train in the foreground. Options left out keep the preset's (or the "
                                   "baseline's) value; a preset with several configs runs them all.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="an experiment of the study")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="train every config N times, each with a new seed and train/validation split (default 1)")
    for setting in SETTINGS.values():
        flags, options = _config_option(setting)
        p.add_argument(*flags, **options)
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

    p = sub.add_parser("resume", parents=[common, rooted, no_download, on_ray],
                       help="continue an interrupted or cancelled run")
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("evaluate", parents=[common, rooted],
                       help="per-image results of a run's best weights on the test or validation split")
    p.add_argument("run", type=int, metavar="RUN")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.set_defaults(func=cmd_evaluate)

    trust.register(sub, [common, rooted])

    p = sub.add_parser("export", parents=[common], help="export a run's best model to ONNX or TorchScript, or runs "
                                                        "to TensorBoard event files or an MLflow store")
    p.add_argument("runs", type=int, nargs="+", metavar="RUN", help="one run (onnx, torchscript) or several")
    p.add_argument("--format", choices=("onnx", "torchscript", *EXPORT_FORMATS), required=True)
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the model file and its JSON, or the "
                                                               "TensorBoard log dir / MLflow store")
    p.set_defaults(func=cmd_export_any)

    p = sub.add_parser("cache", parents=[common], help="disk use of the store; --prune deletes unused caches")
    p.add_argument("--prune", action="store_true",
                   help="delete image/feature caches no stored run uses (refused while a run is active)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("report", parents=[common, rooted], help="rebuild the study's tables and figures")
    p.add_argument("--out", metavar="DIR", help="output folder (default: STORE/report)")
    p.set_defaults(func=cmd_report)
    add_reproduce(sub, [common, rooted, no_download, on_ray])
    add_commands(sub, {"common": common, "rooted": rooted, "no_download": no_download, "on_ray": on_ray}, _config_option)
    return parser


def _config_option(setting: Setting) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The `train` option of one TrainConfig field, from its Setting; it defaults to None ("keep the preset's")."""
    flags = setting.flags or (f"--{setting.name.replace('_', '-')}",)
    help_text = setting.help_text if setting.help else f"{setting.label}. {setting.help_text}".strip()
    options: dict[str, Any] = {"dest": setting.name, "default": None, "metavar": setting.metavar}
    if setting.kind == "bool":
        options = {"dest": setting.name, "default": None, "action": argparse.BooleanOptionalAction}
        help_text += f" (baseline: {'on' if setting.default else 'off'})"
    elif setting.kind == "tuple":
        options.update(type=split_list, metavar=setting.metavar or "LIST")
        help_text += f" Comma-separated{': ' + ', '.join(setting.choices) if setting.choices else ''}, or none."
    else:
        options.update(type={"int": int, "float": float, "str": str}[setting.kind], choices=setting.choices or None)
        help_text += f" (baseline: {setting.default})" if setting.default not in (None, "") else ""
    return flags, {**options, "help": help_text.replace("%", "%%")}
