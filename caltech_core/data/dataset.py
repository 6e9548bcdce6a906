"""The Caltech-101 dataset: root resolution, split lists, summaries, unreadable-image scan and download.

Layout read here (the course's published split): ``ROOT/101_ObjectCategories/<class>/image_NNNN.jpg`` plus
``ROOT/train.txt`` and ``ROOT/test.txt`` whose lines are paths relative to ``101_ObjectCategories/``.
``BACKGROUND_Google`` is not a class and is excluded everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from sklearn.model_selection import StratifiedShuffleSplit

from caltech_core import layout
from caltech_core import settings
from caltech_core.files import write_json_atomic

if TYPE_CHECKING:
    from caltech_core.config import TrainConfig

IMAGES_DIR = "101_ObjectCategories"
BACKGROUND = "BACKGROUND_Google"
SPLIT_FILES = ("train.txt", "test.txt")
DEFAULT_ROOT = Path("data") / "caltech101"
# Extensions treated as images; anything else in a class folder (e.g. BACKGROUND_Google/tmp) is ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

# The public course repository that publishes Caltech-101 together with the train.txt/test.txt split used by
# the study (Politecnico di Torino MLDL 2020, homework 2). GitHub serves the branch as a zip whose single top
# folder holds 101_ObjectCategories/, train.txt and test.txt. Not verifiable offline: GitHub does not publish a
# size or checksum for branch archives, so DATASET_SHA256/DATASET_BYTES stay None and the unpacked tree is
# verified instead (folder present, split files present, every listed image present).
DATASET_URL = "https://github.com/MachineLearning2020/Homework2-Caltech101/archive/refs/heads/master.zip"
DATASET_SHA256: str | None = None
DATASET_BYTES: int | None = None
DOWNLOAD_TIMEOUT_S = 10.0

MAX_WORKERS = 16  # image decode/crop threads on big machines; past this the GIL-held Python per image dominates


def worker_threads(reserved: int = 0) -> int:
    """Threads for image work: one per core (or $CALTECH_STUDIO_THREADS), less `reserved`, in [1, MAX_WORKERS].

    Pillow's decode and numpy/torch copies release the GIL, so image work scales with cores (16 on a GPU
    machine); on a 2-core machine this is the pipeline tuned there.
    """
    cores = os.cpu_count() or 1
    limit = settings.thread_limit()
    if limit is not None:
        cores = limit
    return max(1, min(MAX_WORKERS, cores - reserved))

# Classic protocol: share of each class's non-training images held out for validation (see load_splits).
PER_CLASS_VAL_FRACTION = 0.1

Progress = Callable[[int, int], None]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset (or one of its split files) is missing; the message says what to download and where."""


class SplitError(ValueError):
    """The requested split cannot be made from the available images (e.g. a class with one image)."""


@dataclass(frozen=True)
class Sample:
    """One image and its class index."""

    path: Path
    label: int


@dataclass(frozen=True)
class Skipped:
    """A file (or class folder) left out, and why."""

    path: Path
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


@dataclass
class Splits:
    """Train/validation/test lists over the same sorted class list."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    protocol: str = "split"  # "split" (official lists, train halved into train/val) | "per_class"

    @classmethod
    def from_config(cls, cfg: TrainConfig, root: str | Path | None = None) -> Splits:
        """The splits a training configuration asks for."""
        return load_splits(
            root,
            train_fraction=cfg.train_fraction,
            seed=cfg.split_seed,
            classes=cfg.class_names or cfg.classes,
            max_per_class=cfg.max_per_class,
            per_class_train=cfg.per_class_train,
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def all_paths(self) -> list[Path]:
        """Every image of the three splits, without duplicates, in split order."""
        return list(dict.fromkeys(s.path for s in (*self.train, *self.val, *self.test)))

    def without(self, unreadable: Iterable[Skipped]) -> Splits:
        """A copy without the given (unreadable) files; they are added to `skipped`."""
        bad = {Path(s.path): s for s in unreadable}
        if not bad:
            return self

        def keep(samples: list[Sample]) -> list[Sample]:
            return [s for s in samples if s.path not in bad]

        dropped = [bad[p] for p in self.all_paths() if p in bad]
        return replace(
            self, train=keep(self.train), val=keep(self.val), test=keep(self.test),
            skipped=[*self.skipped, *dropped],
        )


# -- root -------------------------------------------------------------------------------------------------


def _missing_message(root: Path, what: str) -> str:
    return (
        f"{what}. Download the Caltech-101 archive with the train.txt/test.txt split ({DATASET_URL}) "
        f"and unpack it so that {root / IMAGES_DIR}/<class>/*.jpg, {root / 'train.txt'} and "
        f"{root / 'test.txt'} exist; or point {settings.DATASET_ROOT.name} (or --root) at an existing copy."
    )


def resolve_root(root: str | Path | None = None) -> Path:
    """The dataset root: `root`, else $CALTECH101_ROOT, else ./data/caltech101; must hold 101_ObjectCategories."""
    if root is not None and str(root).strip():
        candidate, source = Path(root).expanduser(), "the given root"
    elif settings.dataset_root() is not None:
        candidate, source = settings.dataset_root(), f"${settings.DATASET_ROOT.name}"
    else:
        candidate, source = DEFAULT_ROOT, "the default root"
    if not (candidate / IMAGES_DIR).is_dir():
        raise DatasetNotFoundError(
            _missing_message(candidate, f"Caltech-101 not found: {source} {candidate} has no {IMAGES_DIR}/ folder")
        )
    return candidate.resolve()


def list_classes(root: Path) -> list[str]:
    """Class folder names sorted like torchvision's ImageFolder (case-sensitive), BACKGROUND_Google excluded."""
    images = root / IMAGES_DIR
    return sorted(p.name for p in images.iterdir() if p.is_dir() and p.name != BACKGROUND)


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def images_per_class(root: Path, classes: Sequence[str]) -> dict[str, int]:
    """Number of image files in each class folder."""
    images = root / IMAGES_DIR
    return {c: sum(1 for p in (images / c).iterdir() if p.is_file() and is_image_name(p.name)) for c in classes}


# -- split files ------------------------------------------------------------------------------------------


def _read_split(
    root: Path, name: str, class_index: dict[str, int], existing: set[str] | None = None
) -> tuple[list[Sample], list[Skipped]]:
    """Parse one split file into samples of the classes in `class_index`; bad lines become Skipped entries.

    Lines of classes in `existing` but not in `class_index` (cut by `classes=K`) are dropped silently.
    """
    existing = set(class_index) if existing is None else existing
    path = root / name
    if not path.is_file():
        raise DatasetNotFoundError(_missing_message(root, f"Split file {name} not found in {root}"))
    images = root / IMAGES_DIR
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip().replace("\\", "/")
        if not line:
            continue
        parts = line.split("/")
        file_path = images / line
        if len(parts) != 2 or ".." in parts or not all(parts):
            skipped.append(Skipped(file_path, f"{name}: not a <class>/<file> line"))
            continue
        cls = parts[0]
        if cls == BACKGROUND:
            continue  # not a class: dropped on purpose, not an error
        if line in seen:
            skipped.append(Skipped(file_path, f"{name}: listed twice"))
            continue
        seen.add(line)
        if cls not in class_index:
            if cls in existing:
                continue
            skipped.append(Skipped(file_path, f"{name}: class folder {cls} does not exist"))
        elif not is_image_name(parts[1]):
            skipped.append(Skipped(file_path, f"{name}: not an image file"))
        elif not file_path.is_file():
            skipped.append(Skipped(file_path, f"{name}: listed but missing"))
        else:
            samples.append(Sample(file_path, class_index[cls]))
    return samples, skipped


def _cap_per_class(samples: list[Sample], limit: int | None) -> list[Sample]:
    if limit is None:
        return samples
    counts: Counter[int] = Counter()
    out = []
    for s in samples:
        if counts[s.label] < limit:
            counts[s.label] += 1
            out.append(s)
    return out


def _stratified_halves(samples: list[Sample], train_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split the training list into train/val with scikit-learn's StratifiedShuffleSplit (order kept)."""
    labels = np.array([s.label for s in samples])
    sss = StratifiedShuffleSplit(n_splits=1, train_size=train_fraction, random_state=seed)
    try:
        train_idx, val_idx = next(sss.split(np.zeros(len(samples)), labels))
    except ValueError as exc:
        raise SplitError(
            f"cannot split {len(samples)} training images of {len(set(labels.tolist()))} classes into "
            f"train/validation with train_fraction={train_fraction}: {exc} "
            "(use more images per class or fewer classes)"
        ) from exc
    return [samples[i] for i in sorted(train_idx)], [samples[i] for i in sorted(val_idx)]


def _per_class_protocol(
    pool: list[Sample], n_train: int, seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Classic protocol: N images per class for training, ~10% of the rest for validation, the rest tested."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in pool:
        by_class[s.label].append(s)
    train, val, test = [], [], []
    for label in sorted(by_class):
        items = by_class[label]
        order = rng.permutation(len(items))
        # Always leave at least one test image per class so mean per-class accuracy is defined.
        k = min(n_train, max(len(items) - 1, 1))
        rest = [items[i] for i in order[k:]]
        n_val = max(1, round(PER_CLASS_VAL_FRACTION * len(rest))) if len(rest) >= 2 else 0
        train += [items[i] for i in order[:k]]
        val += rest[:n_val]
        test += rest[n_val:]
    key = lambda s: str(s.path)  # noqa: E731 - stable, readable order
    return sorted(train, key=key), sorted(val, key=key), sorted(test, key=key)


def load_splits(
    root: str | Path | None = None,
    *,
    train_fraction: float = 0.5,
    seed: int = 42,
    classes: int | Sequence[str] | None = None,
    max_per_class: int | None = None,
    per_class_train: int | None = None,
) -> Splits:
    """Read train.txt/test.txt and build the train/val/test lists.

    protocol "split" (default): train.txt is split into train/val by StratifiedShuffleSplit(train_fraction,
    seed); test.txt is the test set (real data: 2892/2892/2893).
    protocol "per_class" (`per_class_train=N`): train.txt+test.txt are pooled; per class, N seeded images
    train (at most all but one), 10% of the remainder (at least 1 when 2+ remain) validate, the rest test.
    `classes=K` keeps the first K classes by name, `classes=[names]` those classes (sorted); `max_per_class=M`
    caps each class in every split.
    """
    base = resolve_root(root)
    names = all_names = list_classes(base)
    if classes is not None and not isinstance(classes, int):
        unknown = sorted(set(classes) - set(all_names))
        if unknown:
            raise SplitError(f"unknown class {unknown[0]!r}; classes are folder names such as {', '.join(all_names[:4])}")
        names = sorted(set(classes), key=all_names.index)
    elif classes is not None:
        if classes < 1:
            raise SplitError(f"classes must be at least 1 (got {classes})")
        names = names[:classes]
    class_index = {c: i for i, c in enumerate(names)}
    train_list, skipped = _read_split(base, "train.txt", class_index, set(all_names))
    test_list, skipped_test = _read_split(base, "test.txt", class_index, set(all_names))
    skipped += skipped_test
    counts = images_per_class(base, names)
    skipped += [Skipped(base / IMAGES_DIR / c, "class folder has no images") for c, n in counts.items() if n == 0]

    if per_class_train is not None:
        if per_class_train < 1:
            raise SplitError(f"per_class_train must be at least 1 (got {per_class_train})")
        train, val, test = _per_class_protocol(train_list + test_list, per_class_train, seed)
        protocol = "per_class"
    else:
        if not 0.0 < train_fraction < 1.0:
            raise SplitError(f"train_fraction must be in (0, 1) (got {train_fraction})")
        train, val = _stratified_halves(train_list, train_fraction, seed) if train_list else ([], [])
        test = test_list
        protocol = "split"
    return Splits(
        root=base,
        classes=names,
        train=_cap_per_class(train, max_per_class),
        val=_cap_per_class(val, max_per_class),
        test=_cap_per_class(test, max_per_class),
        skipped=skipped,
        protocol=protocol,
    )


def sample_paths(splits: Splits, class_name: str, n: int, split: str = "train") -> list[Path]:
    """Up to `n` image paths of one class from a split (for the Data page's sample grid)."""
    if class_name not in splits.classes:
        raise KeyError(f"unknown class {class_name!r}")
    label = splits.classes.index(class_name)
    samples: list[Sample] = getattr(splits, split)
    return [s.path for s in samples if s.label == label][: max(n, 0)]


# -- unreadable images ------------------------------------------------------------------------------------


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


def find_unreadable(paths: Iterable[Path], progress: Progress | None = None) -> list[Skipped]:
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


def scan_unreadable(
    root: Path, paths: Sequence[Path], cache_dir: Path | None = None, progress: Progress | None = None
) -> list[Skipped]:
    """find_unreadable with a per-file result cache, so only new or changed files are decoded again.

    Results live in `<cache_dir>/scan-<hash of root>.json`, keyed by (path, size, mtime_ns): the first scan of
    the full dataset decodes every image once (tens of seconds on 2 cores); later calls only stat the files
    (milliseconds), which keeps the dashboard's Data page responsive.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = cache_dir / f"scan-{hashlib.sha1(str(root).encode()).hexdigest()[:12]}.json"
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
    if todo:
        bad = {str(s.path): s.reason for s in find_unreadable([t[0] for t in todo], progress)}
        for p, size, mtime in todo:
            results[str(p)] = [size, mtime, bad.get(str(p))]
        write_json_atomic(file, {"root": str(root), "files": results})
    return [Skipped(Path(p), e[2]) for p, e in results.items() if e[2] is not None]


def dataset_summary(
    root: str | Path | None = None, *, scan: bool = True, cache_dir: Path | None = None,
    progress: Progress | None = None,
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


# -- download ---------------------------------------------------------------------------------------------


def download_dataset(
    dest: str | Path,
    progress: Progress | None = None,
    *,
    url: str = DATASET_URL,
    sha256: str | None = DATASET_SHA256,
    expected_bytes: int | None = DATASET_BYTES,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download the archive with images + split files, verify it and unpack so `dest` becomes a dataset root.

    Streams to a temporary file with `progress(bytes_done, bytes_total)` (total 0 when unknown), checks size
    and SHA-256 when known, unpacks (the archive's single top folder is flattened) and verifies the tree.
    Any network failure raises DatasetNotFoundError within about `timeout` seconds, naming what to download.
    """
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=".download-", suffix=".zip")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) if hasattr(response, "headers") else 0
                done = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except (urllib.error.URLError, OSError, ValueError) as exc:  # TimeoutError is an OSError
            reason = getattr(exc, "reason", exc)
            raise DatasetNotFoundError(
                _missing_message(dest, f"Download of {url} failed ({reason})")
            ) from exc
        if expected_bytes is not None and done != expected_bytes:
            raise DatasetNotFoundError(
                _missing_message(dest, f"Download incomplete: got {done} bytes, expected {expected_bytes}")
            )
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DatasetNotFoundError(_missing_message(dest, f"Downloaded archive has the wrong SHA-256 ({url})"))
        _unpack(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    root = resolve_root(dest)
    for name in SPLIT_FILES:
        _, skipped = _read_split(root, name, {c: i for i, c in enumerate(list_classes(root))})
        missing = [s for s in skipped if s.reason.endswith("listed but missing")]
        if missing:
            raise DatasetNotFoundError(
                _missing_message(dest, f"Unpacked archive is incomplete: {len(missing)} images of {name} missing")
            )
    return root


def _unpack(archive: Path, dest: Path) -> None:
    """Extract a zip into dest, safely, moving the contents of a single top-level folder up into dest."""
    try:
        with zipfile.ZipFile(archive) as zf:
            staging = Path(tempfile.mkdtemp(dir=dest, prefix=".unpack-"))
            try:
                for member in zf.namelist():
                    target = (staging / member).resolve()
                    if not target.is_relative_to(staging.resolve()):
                        raise DatasetNotFoundError(f"Archive entry {member!r} escapes the target folder")
                zf.extractall(staging)
                tops = [p for p in staging.iterdir() if not p.name.startswith("__MACOSX")]
                src = tops[0] if len(tops) == 1 and tops[0].is_dir() and not (staging / IMAGES_DIR).exists() else staging
                for item in src.iterdir():
                    target = dest / item.name
                    if target.exists():
                        continue  # never overwrite files already there (nothing saved is lost)
                    shutil.move(str(item), str(target))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        raise DatasetNotFoundError(_missing_message(dest, f"Downloaded file is not a zip archive ({exc})")) from exc
