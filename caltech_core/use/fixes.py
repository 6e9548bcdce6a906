"""The fix-and-retrain loop of a run: marks made from its suspects or Errors galleries ("exclude", "relabel as X"),
filed with `data/overrides.py` under the run's dataset (Caltech-101's id when `cfg.dataset` is empty), a clone of
the run queued to train with them, and the retrained run beside its source.

The images are never touched: marks live in the store and apply when a run's splits are built
(`Splits.from_config`), to the training and validation splits only unless the run's `marks_on_test` says so.
A retrained run is tagged `fixes of #N` (N its source), which is how Compare finds its "before".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caltech_core.config import TrainConfig
from caltech_core.data import overrides, registry
from caltech_core.use import calibration

FIXES_TAG = "fixes of #"  # + the source run's id: the tag of a run retrained with fixes


class FixError(ValueError):
    """A mark or a retrain that cannot be done; the message says why."""


def dataset_id(cfg: TrainConfig) -> str:
    """The id a run's marks are filed under."""
    return cfg.dataset or registry.CALTECH_ID


def run_marks(home: Path, record: Any) -> dict[str, dict[str, Any]]:
    """{path: its latest mark} of the run's dataset."""
    return {m["path"]: m for m in overrides.marks(home, dataset_id(record.config))}


def mark(home: Path, record: Any, paths: Sequence[str], action: str, *, label: str | None = None,
         reason: str = "") -> int:
    """Exclude `paths` or relabel them as `label`, which must be one of the run's classes; returns how many."""
    if action == overrides.RELABEL and label not in (record.results.get("classes") or [label]):
        raise FixError(f"{label!r} is not a class of run #{record.id}")
    return overrides.mark(home, dataset_id(record.config), list(paths), action, label=label, reason=reason)


def undo(home: Path, record: Any, paths: Sequence[str]) -> int:
    return overrides.undo(home, dataset_id(record.config), list(paths))


def fixes_config(record: Any, *, marks_on_test: bool = False) -> TrainConfig:
    """The run's configuration again, as a new experiment: named "<name> + fixes", out of its sweep group (its
    training data differ), with the marks applied to the test split only when asked."""
    name = f"{record.name or record.arch} + fixes"[:200]
    return record.config.replace(name=name, group="", marks_on_test=marks_on_test)


def prepare(store: Any, run_id: int, *, marks_on_test: bool = False) -> TrainConfig:
    """The configuration of run `run_id` retrained with its dataset's marks; FixError when the run is unknown or
    the dataset has no marks."""
    record = store.get_run(run_id)
    if record is None:
        raise FixError(f"run {run_id} does not exist")
    if not len(overrides.load(store.home, dataset_id(record.config))):
        raise FixError(f"the dataset of run #{run_id} has no marks: mark images to exclude or relabel first")
    return fixes_config(record, marks_on_test=marks_on_test)


def tag_as_fix(store: Any, new_id: int, source_id: int) -> None:
    store.set_tags(new_id, [f"{FIXES_TAG}{source_id}"])


def retrain_with_fixes(manager: Any, run_id: int, *, marks_on_test: bool = False) -> int:
    """Queue a clone of run `run_id` that trains with its dataset's marks in force; returns the new run's id."""
    new_id = int(manager.submit(prepare(manager.store, run_id, marks_on_test=marks_on_test)))
    tag_as_fix(manager.store, new_id, run_id)
    return new_id


def source_of(record: Any) -> int | None:
    """The run a retrained run fixed, from its tag; None for any other run."""
    for tag in record.tags:
        if tag.startswith(FIXES_TAG) and tag[len(FIXES_TAG):].isdigit():
            return int(tag[len(FIXES_TAG):])
    return None


def _test_ece(store: Any, record: Any) -> float | None:
    found = calibration.recorded(record)
    if found is None and record.status == "finished" and calibration.temperature_of(store, record.id) is not None:
        found = calibration.recorded(store.get_run(record.id))
    test = (found or {}).get("splits", {}).get("test")
    return test["before"]["ece"] if test else None


def summary(store: Any, record: Any) -> dict[str, Any]:
    """One run as the before/after table shows it."""
    source = record.results.get("dataset") or {}
    return {"run": record.label, "status": record.status, "best val acc": record.best_val_acc,
            "test acc": record.test_acc, "test ECE": _test_ece(store, record),
            "labels changed": source.get("relabelled", 0), "files excluded": source.get("excluded", 0),
            "test labels": "marked" if record.config.marks_on_test else "untouched"}


def before_after(store: Any, record: Any) -> list[dict[str, Any]] | None:
    """[its source, the run] for a run retrained with fixes (None for another run or a deleted source)."""
    source_id = source_of(record)
    source = store.get_run(source_id) if source_id is not None else None
    if source is None:
        return None
    return [{"": "before", **summary(store, source)}, {"": "after", **summary(store, record)}]
