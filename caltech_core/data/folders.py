"""Any folder of labelled images as a list of (file, class, split): the layouts other tools use.

- "folder": ``ROOT/<class>/**/*.<image extension>`` (any depth inside a class, extensions in any case), as
  torchvision's ImageFolder, DIGITS, Create ML or Ultralytics' classify datasets;
- "imagenet": ``ROOT/{train,val,test}/<class>/**`` (``valid``/``validation`` name the validation folder too);
- "csv": a CSV file of ``path,label[,split]`` lines (a header line is optional; paths relative to the CSV's
  folder).

Nothing here writes to the user's folder. What cannot be used is listed as `Skipped` with the reason (images at
the top level, non-image files, broken links, names that are not UTF-8, empty class folders); what makes the
folder unusable as a whole (empty, no class folders, one class) raises `FolderError` with what to do.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Extensions treated as images; anything else in a class folder (e.g. BACKGROUND_Google/tmp) is ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
KINDS = ("folder", "imagenet", "csv")


class FolderError(ValueError):
    """The folder (or CSV) cannot be used as a dataset; the message says why and what to do."""


@dataclass(frozen=True)
class Skipped:
    """A file (or class folder) left out, and why."""

    path: Path
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


@dataclass(frozen=True)
class Item:
    """One labelled image; `split` is "train"/"val"/"test" when the layout gives it, else None."""

    path: Path
    label: str
    split: str | None = None


@dataclass
class Listing:
    """What a folder holds: its kind, sorted class names, labelled images and what was left out."""

    root: Path
    kind: str
    classes: list[str]
    items: list[Item]
    skipped: list[Skipped] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        n = Counter(i.label for i in self.items)
        return {c: n[c] for c in self.classes}

    @property
    def given_splits(self) -> set[str]:
        return {i.split for i in self.items if i.split is not None}


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _utf8(name: str) -> bool:
    """False for a file name that was not valid UTF-8 on disk (Python keeps such bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _class_images(folder: Path, label: str, split: str | None, skipped: list[Skipped]) -> list[Item]:
    """Every image under one class folder (any depth; links to folders are not followed: they can loop)."""
    items: list[Item] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for d in list(dirnames):
            if (here / d).is_symlink():
                skipped.append(Skipped(here / d, "link to a folder (not followed)"))
                dirnames.remove(d)
        for name in sorted(filenames):
            path = here / name
            if _hidden(name):
                continue
            if not _utf8(name):
                skipped.append(Skipped(path, "file name is not valid UTF-8 (rename the file)"))
            elif not is_image_name(name):
                skipped.append(Skipped(path, "not an image file (by its extension)"))
            elif not path.is_file():
                skipped.append(Skipped(path, "broken link" if path.is_symlink() else "not a regular file"))
            else:
                items.append(Item(path, label, split))
    return items


def _class_folders(root: Path, split: str | None, skipped: list[Skipped]) -> list[Item]:
    """Items of `root/<class>/**`; files beside the class folders are skipped."""
    items: list[Item] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if _hidden(entry.name):
            continue
        if not _utf8(entry.name):
            skipped.append(Skipped(entry, "name is not valid UTF-8 (rename it)"))
        elif entry.is_dir() and not entry.is_symlink():
            found = _class_images(entry, entry.name, split, skipped)
            if not found:
                skipped.append(Skipped(entry, "class folder has no images"))
            items += found
        elif entry.is_dir():
            skipped.append(Skipped(entry, "link to a folder (not followed)"))
        elif is_image_name(entry.name):
            skipped.append(Skipped(entry, "image beside the class folders (put it in a class folder)"))
        else:
            skipped.append(Skipped(entry, "not a class folder"))
    return items


def _split_folders(root: Path) -> dict[str, Path]:
    """{"train": path, "val": ..., "test": ...} when `root` holds a train folder and a val or test folder."""
    found = {SPLIT_NAMES[p.name.lower()]: p for p in root.iterdir()
             if p.is_dir() and p.name.lower() in SPLIT_NAMES}
    return found if "train" in found and len(found) >= 2 else {}


def _read_csv(path: Path, skipped: list[Skipped]) -> list[Item]:
    """`path,label[,split]` rows; paths relative to the CSV's folder; bad rows are skipped with the reason."""
    base = path.parent
    items: list[Item] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FolderError(f"{path} is not a UTF-8 text file: {exc}") from exc
    rows = list(csv.reader(text.splitlines()))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    for n, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        where = Skipped(path, f"line {n}: {','.join(row)[:80]}")
        if len(row) not in (2, 3) or not row[0].strip() or not row[1].strip():
            skipped.append(Skipped(where.path, f"{where.reason}: expected path,label[,split]"))
            continue
        file = Path(row[0].strip())
        file = file if file.is_absolute() else base / file
        split = row[2].strip().lower() if len(row) == 3 and row[2].strip() else None
        if split is not None and split not in SPLIT_NAMES:
            skipped.append(Skipped(file, f"line {n}: split {split!r} is not train, val or test"))
        elif not is_image_name(file.name):
            skipped.append(Skipped(file, f"line {n}: not an image file (by its extension)"))
        elif not file.is_file():
            skipped.append(Skipped(file, f"line {n}: file not found"))
        else:
            items.append(Item(file, row[1].strip(), SPLIT_NAMES[split] if split else None))
    return items


def scan(path: str | Path) -> Listing:
    """The labelled images of a folder or CSV file (reads names only, never decodes or writes)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FolderError(f"{root} does not exist")
    root = root.resolve()
    skipped: list[Skipped] = []
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise FolderError(f"{root} is a file; give a folder of class sub-folders or a CSV of path,label[,split]")
        kind, items = "csv", _read_csv(root, skipped)
    elif splits := _split_folders(root):
        kind, items = "imagenet", []
        for split, folder in sorted(splits.items()):
            items += _class_folders(folder, split, skipped)
    else:
        if not any(not _hidden(p.name) for p in root.iterdir()):
            raise FolderError(f"{root} is empty: put each class's images in a sub-folder named after the class")
        kind, items = "folder", _class_folders(root, None, skipped)
    # Duplicate CSV rows (the same file listed twice) would train on it twice.
    seen: set[Path] = set()
    unique: list[Item] = []
    for item in items:
        if item.path in seen:
            skipped.append(Skipped(item.path, "listed twice (the first is kept)"))
        else:
            seen.add(item.path)
            unique.append(item)
    classes = sorted({i.label for i in unique})
    if not classes:
        top = sum(1 for s in skipped if s.reason.startswith("image beside"))
        hint = f" ({top} image(s) lie at the top level)" if top else ""
        raise FolderError(f"{root} has no class sub-folders with images{hint}: put each class's images in a "
                          f"sub-folder named after the class, e.g. {root}/cat/1.jpg and {root}/dog/2.jpg")
    if len(classes) == 1:
        raise FolderError(f"{root} has one class only ({classes[0]}); a classifier needs at least two classes")
    return Listing(root, kind, classes, unique, skipped)


def fingerprint(paths: list[Path]) -> str:
    """A hash of the file list with each file's size and modification time: changes when a file is added,
    removed, replaced or edited (stats only; no file is read)."""
    h = hashlib.sha1()
    for p in sorted(paths):
        try:
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{p}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]
