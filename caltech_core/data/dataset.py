"""The Caltech-101 dataset: root resolution and the train/val/test split lists.

Layout read here (the course's published split): ``ROOT/101_ObjectCategories/<class>/image_NNNN.jpg`` plus
``ROOT/train.txt`` and ``ROOT/test.txt`` whose lines are paths relative to ``101_ObjectCategories/``.
``BACKGROUND_Google`` is not a class and is excluded everywhere. The unreadable-image scan and summary live in
`data.scan`, the archive download in `data.download`.

Any other folder of labelled images (`data.folders` reads its layout, `data.registry` files it in the store) is
split here too (`load_folder_splits`), so every split rule lives in this one module (hence its length: over 400 lines).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from caltech_core import settings
from caltech_core.data import overrides, registry
from caltech_core.data.folders import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS  # re-exported: the one list
from caltech_core.data.folders import Skipped as Skipped
from caltech_core.data.folders import fingerprint
from caltech_core.data.folders import is_image_name as is_image_name
from caltech_core.data.folders import scan as scan_folder

if TYPE_CHECKING:
    from caltech_core.config import TrainConfig

IMAGES_DIR = "101_ObjectCategories"
BACKGROUND = "BACKGROUND_Google"
SPLIT_FILES = ("train.txt", "test.txt")

# The public course repository that publishes Caltech-101 together with the train.txt/test.txt split used by
# the study (Politecnico di Torino MLDL 2020, homework 2); `data.download` fetches it, and a missing dataset's
# message names it.
DATASET_URL = "https://github.com/MachineLearning2020/Homework2-Caltech101/archive/refs/heads/master.zip"

# Classic protocol: share of each class's non-training images held out for validation (see load_splits).
PER_CLASS_VAL_FRACTION = 0.1
# A folder without given splits: each class's share for validation and for test (the rest trains: 60/20/20).
FOLDER_HOLDOUT = 0.2


class DatasetNotFoundError(FileNotFoundError):
    """The dataset (or one of its split files) is missing; the message says what to download and where."""


class SplitError(ValueError):
    """The requested split cannot be made from the available images (e.g. a class with one image)."""


@dataclass(frozen=True)
class Sample:
    """One image and its class index."""

    path: Path
    label: int


@dataclass
class Splits:
    """Train/validation/test lists over the same sorted class list."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    protocol: str = "split"  # "split" (given lists) | "per_class" | "random" (a folder split 60/20/20)
    # The dataset as a run records it: id, name, kind, path, fingerprint (+ excluded, relabelled counts).
    source: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: TrainConfig, root: str | Path | None = None, home: str | Path | None = None) -> Splits:
        """The splits a training configuration asks for: Caltech-101 under `root` (`cfg.dataset` empty) or the
        store's registered dataset `cfg.dataset`, with that dataset's overrides (store `home`) applied."""
        home = Path(home) if home is not None else settings.studio_home()
        options = dict(seed=cfg.split_seed, classes=cfg.class_names or cfg.classes,
                       max_per_class=cfg.max_per_class, per_class_train=cfg.per_class_train)
        if cfg.dataset:
            entry = registry.get(home, cfg.dataset)
            splits = load_folder_splits(entry.path, **options)
            # The fingerprint of the folder as trained on (load_folder_splits'), not as registered.
            splits.source = {**entry.source, **splits.source}
        else:
            splits = load_splits(root, train_fraction=cfg.train_fraction, **options)
            splits.source = {"id": registry.CALTECH_ID, "name": registry.CALTECH_NAME, "kind": registry.CALTECH_ID,
                             "path": str(splits.root), "fingerprint": fingerprint(splits.all_paths())}
        return splits.with_overrides(overrides.load(home, str(splits.source["id"])), test=cfg.marks_on_test)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def all_paths(self) -> list[Path]:
        """Every image of the three splits, without duplicates, in split order."""
        return list(dict.fromkeys(s.path for s in (*self.train, *self.val, *self.test)))

    def with_overrides(self, marks: overrides.Overrides, *, test: bool = False) -> Splits:
        """A copy without the excluded files and with relabelled files moved to their new class (in the same
        split), in training and validation only unless `test`: test accuracy is then measured on the untouched
        test labels. A relabel to a class this run does not have excludes the file. `source` records the counts:
        excluded, relabelled (labels that changed), marks_on_test, test_untouched (marked test files left as
        they are) and missing_marks (marked files no longer on disk: reported, nothing to apply)."""
        if not len(marks):
            return self
        index = {c: i for i, c in enumerate(self.classes)}
        relabelled = marks.relabelled or {}
        counts = {"excluded": 0, "relabelled": 0}

        def apply(samples: list[Sample]) -> list[Sample]:
            out = []
            for s in samples:
                key = str(s.path)
                if key in marks.excluded or (key in relabelled and relabelled[key] not in index):
                    counts["excluded"] += 1
                elif key in relabelled:
                    counts["relabelled"] += index[relabelled[key]] != s.label
                    out.append(Sample(s.path, index[relabelled[key]]))
                else:
                    out.append(s)
            return out

        train, val = apply(self.train), apply(self.val)
        test_list = apply(self.test) if test else self.test
        marked = marks.paths
        untouched = 0 if test else sum(str(s.path) in marked for s in self.test)
        source = {**self.source, **counts, "marks_on_test": test, "test_untouched": untouched,
                  "missing_marks": len(marks.missing())}
        return replace(self, train=train, val=val, test=test_list, source=source)

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


def missing_message(root: Path, what: str) -> str:
    """`what` went wrong, followed by what to download and where to unpack it."""
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
        candidate, source = settings.DEFAULT_DATASET_ROOT, "the default root"
    if not (candidate / IMAGES_DIR).is_dir():
        raise DatasetNotFoundError(
            missing_message(candidate, f"Caltech-101 not found: {source} {candidate} has no {IMAGES_DIR}/ folder")
        )
    return candidate.resolve()


def list_classes(root: Path) -> list[str]:
    """Class folder names sorted like torchvision's ImageFolder (case-sensitive), BACKGROUND_Google excluded."""
    images = root / IMAGES_DIR
    return sorted(p.name for p in images.iterdir() if p.is_dir() and p.name != BACKGROUND)


def images_per_class(root: Path, classes: Sequence[str]) -> dict[str, int]:
    """Number of image files in each class folder."""
    images = root / IMAGES_DIR
    return {c: sum(1 for p in (images / c).iterdir() if p.is_file() and is_image_name(p.name)) for c in classes}


# -- split files ------------------------------------------------------------------------------------------


def read_split(
    root: Path, name: str, class_index: dict[str, int], existing: set[str] | None = None
) -> tuple[list[Sample], list[Skipped]]:
    """Parse one split file into samples of the classes in `class_index`; bad lines become Skipped entries.

    Lines of classes in `existing` but not in `class_index` (cut by `classes=K`) are dropped silently.
    """
    existing = set(class_index) if existing is None else existing
    path = root / name
    if not path.is_file():
        raise DatasetNotFoundError(missing_message(root, f"Split file {name} not found in {root}"))
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
    # Imported here: scikit-learn costs about a second of CPU to import, which every process reading this module
    # (the CLI's parser and run listings) would pay without ever splitting.
    from sklearn.model_selection import StratifiedShuffleSplit

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


def _pick_classes(all_names: list[str], classes: int | Sequence[str] | None) -> list[str]:
    """`classes=K`: the first K names; `classes=[names]`: those (in folder order); None: all."""
    if classes is not None and not isinstance(classes, int):
        unknown = sorted(set(classes) - set(all_names))
        if unknown:
            raise SplitError(f"unknown class {unknown[0]!r}; classes are folder names such as {', '.join(all_names[:4])}")
        return sorted(set(classes), key=all_names.index)
    if classes is not None:
        if classes < 1:
            raise SplitError(f"classes must be at least 1 (got {classes})")
        return all_names[:classes]
    return all_names


def _random_thirds(pool: list[Sample], classes: list[str], seed: int) -> tuple[list[Sample], ...]:
    """A folder without given splits: per class, FOLDER_HOLDOUT of the images (at least one) validate, as many
    test, the rest (at least one) train, drawn with `seed`. A class with fewer than 3 images is a SplitError
    naming it."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in pool:
        by_class[s.label].append(s)
    small = [f"{classes[k]} ({len(v)})" for k, v in sorted(by_class.items()) if len(v) < 3]
    if small:
        raise SplitError(
            f"class{'es' if len(small) > 1 else ''} {', '.join(small[:5])}{' ...' if len(small) > 5 else ''} "
            "too small: a train/validation/test split needs at least 3 images per class. Add images, or leave "
            "the class out (list the others in class_names / --class-names, or exclude its files)")
    rng = np.random.default_rng(seed)
    parts: tuple[list[Sample], ...] = ([], [], [])
    for label in sorted(by_class):
        items = by_class[label]
        order = rng.permutation(len(items))
        n_hold = max(1, round(FOLDER_HOLDOUT * len(items)))
        n_val = min(n_hold, len(items) - 2)
        n_test = min(n_hold, len(items) - 1 - n_val)
        parts[1].extend(items[i] for i in order[:n_val])
        parts[2].extend(items[i] for i in order[n_val:n_val + n_test])
        parts[0].extend(items[i] for i in order[n_val + n_test:])
    return tuple(sorted(p, key=lambda s: str(s.path)) for p in parts)


def load_folder_splits(
    path: str | Path,
    *,
    seed: int = 42,
    classes: int | Sequence[str] | None = None,
    max_per_class: int | None = None,
    per_class_train: int | None = None,
) -> Splits:
    """The splits of a folder (or CSV) of labelled images (`data.folders` reads the layout).

    Given train/val/test: used as they are. Train and test without val: a stratified 75% of train trains and
    the rest validates (60/20/20 of the whole when test is a fifth). Train and val without test: that val is
    the test set and validation is drawn from train the same way. Nothing given: per class, 60/20/20 drawn with
    `seed` (protocol "random"). `per_class_train`, `classes` and `max_per_class` act as for Caltech-101.
    """
    listing = scan_folder(path)
    names = _pick_classes(listing.classes, classes)
    class_index = {c: i for i, c in enumerate(names)}
    by_split: dict[str | None, list[Sample]] = defaultdict(list)
    for item in listing.items:
        if item.label in class_index:
            by_split[item.split].append(Sample(item.path, class_index[item.label]))
    pool = [s for samples in by_split.values() for s in samples]
    if per_class_train is not None:
        if per_class_train < 1:
            raise SplitError(f"per_class_train must be at least 1 (got {per_class_train})")
        train, val, test = _per_class_protocol(pool, per_class_train, seed)
        protocol = "per_class"
    elif not listing.given_splits:
        train, val, test = _random_thirds(pool, names, seed)
        protocol = "random"
    else:
        train, val, test = by_split["train"] + by_split[None], by_split["val"], by_split["test"]
        if not test:
            test, val = val, []
        if not val and train:
            train, val = _stratified_halves(train, 1 - FOLDER_HOLDOUT / (1 - FOLDER_HOLDOUT), seed)
        protocol = "split"
    return Splits(
        root=listing.root, classes=names, train=_cap_per_class(train, max_per_class),
        val=_cap_per_class(val, max_per_class), test=_cap_per_class(test, max_per_class),
        skipped=listing.skipped, protocol=protocol,
        source={"kind": listing.kind, "path": str(listing.root),
                "fingerprint": fingerprint([i.path for i in listing.items])},
    )


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
    all_names = list_classes(base)
    names = _pick_classes(all_names, classes)
    class_index = {c: i for i, c in enumerate(names)}
    train_list, skipped = read_split(base, "train.txt", class_index, set(all_names))
    test_list, skipped_test = read_split(base, "test.txt", class_index, set(all_names))
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
