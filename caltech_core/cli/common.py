"""What every command shares: the user-facing error, opening the store and a run, JSON and percentages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from caltech_core import settings
from caltech_core.runs.store import RunRecord, RunStore


class CliError(Exception):
    """A user-facing failure: printed on stderr without a traceback, exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def open_store(args: argparse.Namespace) -> RunStore:
    """The store of `--store`, else of the environment (settings.studio_home)."""
    return RunStore(Path(args.store) if args.store else settings.studio_home())


def existing_run(store: RunStore, run_id: int) -> RunRecord:
    """The record of `run_id`; CliError naming the store folder when there is none."""
    run = store.get_run(run_id)
    if run is None:
        raise CliError(f"run {run_id} does not exist in {store.home}")
    return run


def print_json(obj: Any) -> None:
    """One JSON document on stdout (dates and paths as strings; NaN refused: it is not JSON)."""
    print(json.dumps(obj, allow_nan=False, default=str), flush=True)


def percent(value: float | None) -> str:
    """An accuracy as a percentage with one decimal; "-" when there is none."""
    return "-" if value is None else f"{100 * value:.1f}%"
