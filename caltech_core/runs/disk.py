"""What a store holds on disk, by kind, and which cache folders no stored run needs (`RunStore.disk_usage`,
`unused_caches` and `prune_caches` ask this module; the folder names come from `caltech_core.layout`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from caltech_core import layout
from caltech_core.runs.records import RunRecord

DISK_KINDS = ("checkpoints", "image cache", "feature cache", "database", "other")


def usage(home: Path) -> dict[str, int]:
    """Bytes under `home` by kind: checkpoints (run folders), image cache, feature cache, database, other."""
    totals = dict.fromkeys(DISK_KINDS, 0)
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            totals[_kind_of(path.relative_to(home).parts)] += path.stat().st_size
    return totals


def _kind_of(parts: tuple[str, ...]) -> str:
    if parts[0] == layout.RUNS:
        return "checkpoints"
    if parts[0] == layout.CACHE and len(parts) > 2:
        return "feature cache" if parts[1] == layout.FEATURES else "image cache"
    return "database" if parts[0].startswith(layout.DATABASE) else "other"


def unused_caches(cache_dir: Path, runs: Iterable[RunRecord]) -> dict[Path, int]:
    """Cache folders/files none of `runs` needs, with their bytes: image caches at a size no run uses, feature
    files no run trained on."""
    runs = list(runs)
    sizes = {layout.images_dir(cache_dir, r.config.resize_size) for r in runs}
    features = {r.results.get("feature_cache") for r in runs}
    unused = [p for p in sorted(cache_dir.glob(f"{layout.IMAGES_PREFIX}*")) if p.is_dir() and p not in sizes]
    unused += [p for p in sorted(layout.features_dir(cache_dir).glob("*.pt")) if p.name not in features]
    return {p: _bytes(p) for p in unused}


def remove(paths: Iterable[Path]) -> None:
    """Delete these files and folders."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _bytes(path: Path) -> int:
    """Size of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
