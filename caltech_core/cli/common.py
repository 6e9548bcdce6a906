"""What every command shares: the option groups (`Parents`), `train`'s options from `config.SETTINGS`, the
user-facing error, opening the store and a run, JSON and percentages."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caltech_core import settings
from caltech_core.config import SETTINGS, Setting, split_list
from caltech_core.runs.store import RunRecord, RunStore


@dataclass(frozen=True)
class Parents:
    """The option groups commands share, as argparse parent parsers; every group module's
    `register(sub, parents)` picks the ones its commands take."""

    common: argparse.ArgumentParser  # --store, --json
    rooted: argparse.ArgumentParser  # --root (the Caltech-101 folder)
    no_download: argparse.ArgumentParser  # --offline
    on_ray: argparse.ArgumentParser  # --ray ADDRESS


def shared_options() -> Parents:
    """Build the shared option groups once (app.py passes them to every group's `register`)."""
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
    return Parents(common, rooted, no_download, on_ray)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (`train`, `lr-find`), each defaulting to None ("keep the preset's")."""
    for setting in SETTINGS.values():
        flags, options = _config_option(setting)
        parser.add_argument(*flags, **options)


def _config_option(setting: Setting) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The option of one TrainConfig field, from its Setting."""
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
