"""Classify many images at once: the files of an uploaded folder or ZIP archive, into rows for a CSV.

A ZIP is read in memory, member by member, and never extracted, so no name in it can write anywhere; names
that would escape the archive's folder (absolute, `..`, drive letters: "zip-slip") are refused all the same
and counted, as are folders, non-images (by extension), files over the size limit and images that do not
decode. Nested folders are fine: a row's `file` is its path inside the archive.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from caltech_core.status import ProgressFn
from caltech_core.use.inference import UPLOAD_TYPES, ImageError, open_upload

BATCH = 16  # images decoded and classified together
TOP = 5
MAX_MEMBERS = 20_000  # members of one archive looked at (a ZIP bomb of tiny entries stops here)


class BatchError(ValueError):
    """The archive as a whole cannot be read; the message is meant for the user."""


@dataclass
class BatchResult:
    """One row per classified image (or image that failed to decode), and what was skipped, by reason."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        """'12 images classified; skipped: 3 not images, 1 unsafe path'."""
        done = sum(1 for r in self.rows if not r.get("error"))
        failed = len(self.rows) - done
        text = f"{done} image(s) classified"
        if failed:
            text += f", {failed} could not be read"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return text


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower().lstrip(".") in UPLOAD_TYPES


def safe_member(name: str) -> bool:
    """False for a name that would leave the archive's folder if extracted (zip-slip)."""
    path = PurePosixPath(name.replace("\\", "/"))
    return not (path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]))


def zip_members(data: bytes, skipped: Counter, *, max_bytes: int | None = None) -> Iterator[tuple[str, bytes]]:
    """(path inside the archive, bytes) of each image member; everything else is counted in `skipped`."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BatchError(f"not a ZIP archive that can be read ({exc})") from exc
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            skipped["beyond the first 20000 entries"] += len(members) - MAX_MEMBERS
        for info in members[:MAX_MEMBERS]:
            name = info.filename
            if info.is_dir():
                continue
            if not safe_member(name):
                skipped["unsafe path (zip-slip)"] += 1
            elif PurePosixPath(name).name.startswith(".") or "__MACOSX" in PurePosixPath(name).parts:
                skipped["hidden or system files"] += 1
            elif not is_image_name(name):
                skipped["not images"] += 1
            elif max_bytes is not None and info.file_size > max_bytes:
                skipped["too large"] += 1
            else:
                try:
                    yield name, archive.read(info)
                except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                    # damaged, encrypted or an unsupported compression method
                    skipped[f"unreadable in the archive ({type(exc).__name__})"] += 1


def classify_files(classifier: Any, files: Iterator[tuple[str, bytes]] | list[tuple[str, bytes]], *,
                   total: int | None = None, top: int = TOP, max_bytes: int | None = None,
                   progress: ProgressFn | None = None, skipped: Counter | None = None) -> BatchResult:
    """Classify every (name, bytes) image, BATCH at a time; a file that does not decode gets a row with its
    error, the others still classify. `total` (when known) feeds `progress(done, total)`."""
    result = BatchResult(skipped=skipped if skipped is not None else Counter())
    pending: list[tuple[dict[str, Any], Any]] = []  # (its row, already in file order; its image)

    def flush() -> None:
        for row, top_k in zip([r for r, _ in pending], classifier.predict([img for _, img in pending], top=top),
                              strict=True):
            for k, (cls, prob) in enumerate(top_k, 1):
                row[f"class_{k}"], row[f"prob_{k}"] = cls, round(prob, 6)
        pending.clear()
        if progress is not None:
            progress(len(result.rows), max(total or 0, len(result.rows)))

    for name, data in files:
        if not is_image_name(name):
            result.skipped["not images"] += 1
            continue
        row: dict[str, Any] = {"file": name}
        result.rows.append(row)
        try:
            pending.append((row, open_upload(data, name, max_bytes=max_bytes)))
        except ImageError as exc:
            row["error"] = str(exc)
        if len(pending) >= BATCH:
            flush()
    if pending:
        flush()
    return result


def classify_zip(classifier: Any, data: bytes, *, top: int = TOP, max_bytes: int | None = None,
                 progress: ProgressFn | None = None) -> BatchResult:
    """Classify every image inside a ZIP archive (BatchError when it is not one)."""
    skipped: Counter = Counter()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            total = sum(1 for i in archive.infolist()[:MAX_MEMBERS] if not i.is_dir() and is_image_name(i.filename))
    except zipfile.BadZipFile as exc:
        raise BatchError(f"not a ZIP archive that can be read ({exc})") from exc
    return classify_files(classifier, zip_members(data, skipped, max_bytes=max_bytes), total=total, top=top,
                          max_bytes=max_bytes, progress=progress, skipped=skipped)


def to_csv(result: BatchResult) -> bytes:
    """The rows as CSV (UTF-8): file, class_1, prob_1, ..., class_5, prob_5, error."""
    import pandas as pd

    columns = ["file"] + [f"{kind}_{k}" for k in range(1, TOP + 1) for kind in ("class", "prob")] + ["error"]
    frame = pd.DataFrame(result.rows, columns=columns)
    return frame.to_csv(index=False).encode()
