"""The dataset's health: which listed images Pillow cannot decode (with a per-file result cache) and the
summary the Data page and `python -m caltech_core data` show."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from caltech_core import layout, settings
from caltech_core.data.dataset import Skipped, images_per_class, load_splits
from caltech_core.data.threads import worker_threads
from caltech_core.files import file_lock, write_json_atomic
from caltech_core.status import ProgressFn

CHECKPOINT_FILES = 500  # decoded images between atomic rewrites of the scan cache (a kill loses at most these)


def check_image(path: Path) -> str | None:
    """None when `path` decodes fully, else the reason (Pillow verify + a full, reduced-scale decode)."""
    try:
        with Image.open(path) as im:
            im.verify()  # structure / checksums (PNG CRCs)
        with Image.open(path) as im:
            # draft() lets JPEG decode at 1/8 scale: every entropy-coded byte is still read (so truncation is
            # caught) at a fraction of the cost of a full decode.
            im.draft("RGB", (64, 64))
            im.load()
    except Exception as exc:  # any decoder failure means "unreadable"; the reason is kept
        return f"unreadable image: {type(exc).__name__}: {exc}"
    return None


def find_unreadable(paths: Iterable[Path], progress: ProgressFn | None = None) -> list[Skipped]:
    """The files among `paths` that Pillow cannot fully decode (checked on `worker_threads()` threads)."""
    paths = list(paths)
    bad: list[Skipped] = []
    with ThreadPoolExecutor(max_workers=worker_threads()) as pool:
        for i, (path, reason) in enumerate(zip(paths, pool.map(check_image, paths), strict=True), 1):
            if reason is not None:
                bad.append(Skipped(Path(path), reason))
            if progress is not None:
                progress(i, len(paths))
    return bad


def default_cache_dir() -> Path:
    """`<studio home>/cache`: the cache folder of the run store's home."""
    return layout.cache_dir(settings.studio_home())


def scan_file(root: Path, cache_dir: Path | None = None) -> Path:
    """The scan's per-file result cache of the dataset at `root`: `<cache_dir>/scan-<hash of root>.json`."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache_dir / f"scan-{hashlib.sha1(str(root).encode()).hexdigest()[:12]}.json"


def scan_unreadable(
    root: Path, paths: Sequence[Path], cache_dir: Path | None = None, progress: ProgressFn | None = None
) -> list[Skipped]:
    """find_unreadable with a per-file result cache, so only new or changed files are decoded again.

    Results live in `scan_file(root, cache_dir)`, keyed by (path, size, mtime_ns): the first scan of the full
    dataset decodes every image once (tens of seconds on 2 cores); later calls only stat the files
    (milliseconds). The file is rewritten atomically every CHECKPOINT_FILES decoded images, so a killed scan
    leaves the whole file of what it had checked (the next one goes on from there) and never half a file. One
    scan of a root at a time across processes (a file lock): a second waits, then finds the results cached.
    """
    file = scan_file(root, cache_dir)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(file.with_name(file.name + ".lock"), remove=True):
        for stale in file.parent.glob(f"{file.name}*.tmp"):  # a killed writer's temporary file (we hold the lock)
            stale.unlink(missing_ok=True)
        try:
            known: dict[str, list[Any]] = json.loads(file.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            known = {}  # missing or damaged cache: rescan, never fail
        results: dict[str, list[Any]] = {}
        todo: list[tuple[Path, int, int]] = []
        for p in paths:
            try:
                st = p.stat()
            except OSError as exc:
                results[str(p)] = [-1, -1, f"cannot read file: {exc.strerror}"]
                continue
            entry = known.get(str(p))
            if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]:
                results[str(p)] = entry
            else:
                todo.append((p, st.st_size, st.st_mtime_ns))
        for start in range(0, len(todo), CHECKPOINT_FILES):
            chunk = todo[start:start + CHECKPOINT_FILES]
            shifted = None if progress is None else partial(_shifted, progress, start, len(todo))
            bad = {str(s.path): s.reason for s in find_unreadable([t[0] for t in chunk], shifted)}
            for p, size, mtime in chunk:
                results[str(p)] = [size, mtime, bad.get(str(p))]
            write_json_atomic(file, {"root": str(root), "files": results})
    return [Skipped(Path(p), e[2]) for p, e in results.items() if e[2] is not None]


def _shifted(progress: ProgressFn, offset: int, total: int, done: int, _chunk_total: int) -> None:
    progress(offset + done, total)


def unreadable_images(
    root: str | Path | None = None, cache_dir: Path | None = None, progress: ProgressFn | None = None
) -> list[Skipped]:
    """The listed images of the dataset at `root` that do not decode (scan_unreadable over every split): the
    work the Data page runs in the background."""
    splits = load_splits(root)
    return scan_unreadable(splits.root, splits.all_paths(), cache_dir, progress)


def dataset_summary(
    root: str | Path | None = None, *, scan: bool = True, cache_dir: Path | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Counts for the dashboard and `python -m caltech_core data --json` (default split settings).

    Keys: root, num_classes, classes, splits {train,val,test}, images_per_class, unreadable (paths),
    unreadable_count, skipped [{path, reason}], protocol. `scan=False` skips the unreadable-image scan;
    otherwise it is cached per file (see scan_unreadable).
    """
    splits = load_splits(root)
    unreadable = scan_unreadable(splits.root, splits.all_paths(), cache_dir, progress) if scan else []
    return {
        "root": str(splits.root),
        "num_classes": splits.num_classes,
        "classes": list(splits.classes),
        "splits": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "images_per_class": images_per_class(splits.root, splits.classes),
        "unreadable": [str(s.path) for s in unreadable],
        "unreadable_count": len(unreadable),
        "unreadable_reasons": {str(s.path): s.reason for s in unreadable},
        "skipped": [s.to_dict() for s in splits.skipped],
        "protocol": splits.protocol,
    }


