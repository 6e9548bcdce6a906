"""`caltech-studio` (or `python -m caltech_core`): dataset summary, foreground training, runs, classification, resume,
evaluation, export, report.

Results go to stdout (with `--json`: machine-readable), progress bars and errors to stderr.
Exit codes: 0 success; 1 a failure the message explains (missing dataset, unknown run, a failed run);
2 invalid usage or configuration (the ConfigError message names the field and its allowed range);
130 training stopped with Ctrl-C (the run is "cancelled" and can be resumed).

This module is the parser and the entry point; each command lives in the module of its group, which adds it with
`register(sub, parents)`. Not named main.py: `caltech_core.cli.main` is the entry-point function.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from caltech_core import settings
from caltech_core.cli import data, lrfind, reproduce, restart, runs, study, sweep, train, trust, use
from caltech_core.cli.common import CliError, shared_options
from caltech_core.config import ConfigError

# In the order `--help` lists them.
GROUPS = (data, train, runs, use, trust, lrfind, sweep, study, reproduce)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m caltech_core` and `caltech-studio`; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    if argv is None and getattr(args, "trains_on_a_thread", False):  # the program itself, not a test's call
        restart.restart_with_one_malloc_arena()
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
    """The argument parser (exposed for tests and `--help` docs): every group module registers its commands."""
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__.split("\n\n")[0].replace("\n", " "))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = shared_options()
    for group in GROUPS:
        group.register(sub, parents)
    return parser
