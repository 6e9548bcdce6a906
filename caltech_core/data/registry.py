"""The store's datasets: Caltech-101 (always there, the default, the only one the study's report reads) and the
folders a person added (`data add PATH`, the Data page), in `<home>/datasets/registry.json`.

An entry keeps the folder's path, kind, class names and counts, and a fingerprint of its file list (paths,
sizes, mtimes): `changes(entry)` says when the folder moved or changed since, and a run records the fingerprint
it trained on (`Splits.source`), so a later change is said next to the run. A run's `TrainConfig.dataset` is the
entry's id ("" = Caltech-101).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from caltech_core import layout
from caltech_core.data import folders
from caltech_core.files import file_lock, write_json_atomic

CALTECH_ID = "caltech101"  # the id Caltech-101's overrides and health report are filed under
CALTECH_NAME = "Caltech-101"
CALTECH_NAMES = {"", CALTECH_ID, "caltech-101", "caltech"}  # what `--data` accepts for the default


class UnknownDatasetError(FileNotFoundError):
    """No registered dataset has that name and no folder is at that path (a FileNotFoundError, as a missing
    Caltech-101 is: callers already say those plainly)."""


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset (a folder or CSV of labelled images)."""

    id: str
    name: str
    path: str
    kind: str
    fingerprint: str
    files: int
    classes: list[str]
    counts: dict[str, int]
    skipped: int
    added: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def source(self) -> dict[str, Any]:
        """What a run records of its dataset."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "path": self.path,
                "fingerprint": self.fingerprint}


def _read(home: Path) -> dict[str, dict[str, Any]]:
    import json

    file = layout.dataset_registry(home)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ValueError(f"the dataset registry {file} is damaged ({exc}); fix or delete it") from exc
    return data.get("datasets", {}) if isinstance(data, dict) else {}


def load_all(home: Path) -> dict[str, DatasetEntry]:
    """Every registered dataset by id, in the order they were added."""
    return {k: _seen_from(home, DatasetEntry(**v)) for k, v in _read(home).items()}


def _seen_from(home: Path, entry: DatasetEntry) -> DatasetEntry:
    """An uploaded ZIP's entry with its path under `home`. The registry keeps the path the unpacking process saw;
    a Ray worker that mounts the store at another path (`CALTECH_STUDIO_RAY_STORE`) finds the upload there."""
    path, uploads = Path(entry.path), layout.dataset_uploads(home)
    marker = uploads.relative_to(home).parts
    for i in range(len(path.parts) - len(marker)):
        if path.parts[i:i + len(marker)] == marker:
            here = uploads.joinpath(*path.parts[i + len(marker):])
            if here != path and not path.exists() and here.exists():
                return replace(entry, path=str(here))
    return entry


def slug(name: str) -> str:
    """An id from a name: lower case letters, digits, '-' and '_' ("My Photos" -> "my-photos")."""
    text = re.sub(r"[^a-z0-9_-]+", "-", name.strip().lower()).strip("-_")
    return text[:60] or "dataset"


def entry_of(listing: folders.Listing, name: str, dataset_id: str) -> DatasetEntry:
    return DatasetEntry(
        id=dataset_id, name=name, path=str(listing.root), kind=listing.kind,
        fingerprint=folders.fingerprint([i.path for i in listing.items]), files=len(listing.items),
        classes=list(listing.classes), counts=listing.counts(), skipped=len(listing.skipped), added=time.time(),
    )


def add(home: Path, path: str | Path, name: str | None = None) -> tuple[DatasetEntry, folders.Listing]:
    """Register the folder (or CSV) at `path` under `name` (default: the folder's name); adding a registered
    path again refreshes its entry. FolderError when the folder cannot be a dataset, ValueError on a name
    that is taken by another folder."""
    listing = folders.scan(path)
    name = (name or "").strip() or (listing.root.stem if listing.kind == "csv" else listing.root.name)
    dataset_id = slug(name)
    if dataset_id in {slug(n) for n in CALTECH_NAMES if n}:
        raise ValueError(f"the name {name!r} is Caltech-101's; choose another with --name")
    layout.datasets_dir(home).mkdir(parents=True, exist_ok=True)
    with file_lock(layout.dataset_registry(home).with_suffix(".lock"), remove=True):
        data = _read(home)
        same_path = [k for k, v in data.items() if v["path"] == str(listing.root)]
        if same_path and dataset_id not in data:
            dataset_id = same_path[0]  # a known folder under a new name: refresh it, keep its id
        elif dataset_id in data and data[dataset_id]["path"] != str(listing.root):
            raise ValueError(f"a dataset named {data[dataset_id]['name']!r} already points at "
                             f"{data[dataset_id]['path']}; choose another name")
        entry = entry_of(listing, data.get(dataset_id, {}).get("name", name), dataset_id)
        data[dataset_id] = entry.to_dict()
        write_json_atomic(layout.dataset_registry(home), {"datasets": data})
    return entry, listing


def get(home: Path, text: str) -> DatasetEntry:
    """The registered dataset with this id, name (any case) or path; UnknownDatasetError listing the names."""
    entries = load_all(home)
    key = text.strip()
    if key in entries:
        return entries[key]
    for entry in entries.values():
        if entry.name.lower() == key.lower() or slug(key) == entry.id:
            return entry
    resolved = str(Path(key).expanduser().resolve()) if key else ""
    for entry in entries.values():
        if entry.path == resolved:
            return entry
    known = ", ".join([CALTECH_ID, *(e.name for e in entries.values())])
    raise UnknownDatasetError(f"no dataset named {text!r} (registered: {known}); add a folder with "
                              "`data add PATH` or give its path")


def resolve(home: Path, text: str) -> str:
    """The `TrainConfig.dataset` value for a name or a path ("" for Caltech-101); a folder that is not yet
    registered is added."""
    if text.strip().lower() in CALTECH_NAMES:
        return ""
    try:
        return get(home, text).id
    except UnknownDatasetError:
        if not Path(text).expanduser().exists():
            raise
    return add(home, text)[0].id


def changes(entry: DatasetEntry | dict[str, Any]) -> str | None:
    """What happened to a dataset's folder since `entry` (a registry entry or a run's recorded source) was
    made: None when its file list, sizes and mtimes are the same."""
    source = entry.source if isinstance(entry, DatasetEntry) else entry
    path = Path(source["path"])
    if not path.exists():
        return f"{path} is gone (moved or deleted)"
    try:
        listing = folders.scan(path)
    except folders.FolderError as exc:
        return f"the folder can no longer be read as a dataset: {exc}"
    now = folders.fingerprint([i.path for i in listing.items])
    if now != source.get("fingerprint"):
        return f"{path} changed (files added, removed or edited; {len(listing.items)} images now)"
    return None


MAX_ZIP_BYTES = 500 * 2**20  # unpacked size a ZIP upload may have (the Data page's "small ones")


def add_zip(home: Path, data: bytes, name: str) -> tuple[DatasetEntry, folders.Listing]:
    """Unpack an uploaded ZIP into the store (`layout.dataset_uploads`) and register it as `name`.

    Safe against hostile archives: members with absolute paths, `..`, links or a total unpacked size over
    MAX_ZIP_BYTES are refused before anything is written; an existing upload of that name is never replaced."""
    import io
    import stat
    import zipfile

    dest = layout.dataset_uploads(home) / slug(name)
    if dest.exists():
        raise ValueError(f"an upload named {name!r} exists already ({dest}); choose another name")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise folders.FolderError(f"not a ZIP file: {exc}") from exc
    with archive:
        members = archive.infolist()
        for m in members:
            parts = Path(m.filename.replace("\\", "/")).parts
            if m.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise folders.FolderError(f"the ZIP holds an unsafe path {m.filename!r}; nothing was unpacked")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise folders.FolderError(f"the ZIP holds a link {m.filename!r}; nothing was unpacked")
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise folders.FolderError(f"the ZIP unpacks to more than {MAX_ZIP_BYTES // 2**20} MB; add the folder "
                                      "by its path instead")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # ours: left by an upload that failed half-way
        archive.extractall(partial)
    partial.rename(dest)
    # A ZIP of one folder (the usual "compress folder") holds the classes one level down.
    inner = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    one = inner[0] if len(inner) == 1 and inner[0].is_dir() else None
    root = one if one is not None and any(p.is_dir() for p in one.iterdir()) else dest
    try:
        return add(home, root, name)
    except ValueError:
        shutil.rmtree(dest)  # the upload is not a dataset: keep nothing of it (the message says why)
        raise
