"""A dataset's overrides: marks a person makes without touching the image files (exclude a file from every
split; relabel a file as another class), kept in `<home>/datasets/<id>/overrides.json` and applied when a run's
splits are built (`Splits.with_overrides`). Each mark can be undone; the file records who wants what, never
the images themselves. The Data page's health check and the Errors page's suspects call this module.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caltech_core import layout
from caltech_core.files import file_lock, write_json_atomic

EXCLUDE = "exclude"
RELABEL = "relabel"


@dataclass(frozen=True)
class Overrides:
    """The marks in force: excluded file paths and {path: new class name}."""

    excluded: frozenset[str] = frozenset()
    relabelled: dict[str, str] | None = None

    def __len__(self) -> int:
        return len(self.excluded) + len(self.relabelled or {})

    @property
    def paths(self) -> frozenset[str]:
        """Every marked file."""
        return self.excluded | frozenset(self.relabelled or {})

    def missing(self) -> list[str]:
        """Marked files that are no longer on disk: reported (Data page, a run's `results["dataset"]`), never
        applied, since there is nothing left to exclude or relabel."""
        return sorted(p for p in self.paths if not Path(p).exists())


def _read(home: Path, dataset_id: str) -> list[dict[str, Any]]:
    file = layout.dataset_overrides(home, dataset_id)
    try:
        marks = json.loads(file.read_text()).get("marks", [])
    except FileNotFoundError:
        return []
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"the overrides file {file} is damaged ({exc}); fix or delete it") from exc
    return [m for m in marks if isinstance(m, dict) and m.get("action") in (EXCLUDE, RELABEL)]


def marks(home: Path, dataset_id: str) -> list[dict[str, Any]]:
    """Every mark, oldest first: {"path", "action", "label" (relabel only), "reason", "time"}."""
    return _read(home, dataset_id)


def load(home: Path, dataset_id: str) -> Overrides:
    """The marks in force (the latest mark of a file wins)."""
    latest = {m["path"]: m for m in _read(home, dataset_id)}
    return Overrides(
        excluded=frozenset(p for p, m in latest.items() if m["action"] == EXCLUDE),
        relabelled={p: str(m["label"]) for p, m in latest.items() if m["action"] == RELABEL},
    )


def missing(home: Path, dataset_id: str) -> list[str]:
    """The dataset's marked files that are no longer on disk (`Overrides.missing`)."""
    return load(home, dataset_id).missing()


def _change(home: Path, dataset_id: str, edit: Any) -> None:
    file = layout.dataset_overrides(home, dataset_id)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(file.with_suffix(".lock"), remove=True):
        kept = edit(_read(home, dataset_id))
        write_json_atomic(file, {"marks": kept})


def mark(home: Path, dataset_id: str, paths: list[str | Path], action: str, *, label: str | None = None,
         reason: str = "") -> int:
    """Exclude or relabel `paths` (a file's earlier mark is replaced); returns how many were marked."""
    if action not in (EXCLUDE, RELABEL):
        raise ValueError(f"action must be {EXCLUDE} or {RELABEL}, not {action!r}")
    if action == RELABEL and not label:
        raise ValueError("a relabel mark needs the new class name")
    new = {str(p) for p in paths}
    now = time.time()

    def edit(old: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = [m for m in old if m["path"] not in new]
        return rows + [{"path": p, "action": action, "label": label, "reason": reason, "time": now}
                       for p in sorted(new)]

    _change(home, dataset_id, edit)
    return len(new)


def undo(home: Path, dataset_id: str, paths: list[str | Path]) -> int:
    """Remove the marks of `paths` (they are used as the folder says again); returns how many were removed."""
    gone = {str(p) for p in paths}
    removed = 0

    def edit(old: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal removed
        rows = [m for m in old if m["path"] not in gone]
        removed = len(old) - len(rows)
        return rows

    _change(home, dataset_id, edit)
    return removed
