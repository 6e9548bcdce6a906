"""Download the Caltech-101 archive with its split files, verify it and unpack it into a dataset root.

GitHub serves the course repository's branch (`dataset.DATASET_URL`) as a zip whose single top folder holds
101_ObjectCategories/, train.txt and test.txt. Not verifiable offline: GitHub does not publish a size or
checksum for branch archives, so DATASET_SHA256/DATASET_BYTES stay None and the unpacked tree is verified
instead (folder present, split files present, every listed image present).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from caltech_core.data.dataset import (
    DATASET_URL,
    IMAGES_DIR,
    SPLIT_FILES,
    DatasetNotFoundError,
    list_classes,
    missing_message,
    read_split,
    resolve_root,
)
from caltech_core.status import ProgressFn

DATASET_SHA256: str | None = None
DATASET_BYTES: int | None = None
DOWNLOAD_TIMEOUT_S = 10.0


def download_dataset(
    dest: str | Path,
    progress: ProgressFn | None = None,
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
                missing_message(dest, f"Download of {url} failed ({reason})")
            ) from exc
        if expected_bytes is not None and done != expected_bytes:
            raise DatasetNotFoundError(
                missing_message(dest, f"Download incomplete: got {done} bytes, expected {expected_bytes}")
            )
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DatasetNotFoundError(missing_message(dest, f"Downloaded archive has the wrong SHA-256 ({url})"))
        _unpack(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    root = resolve_root(dest)
    for name in SPLIT_FILES:
        _, skipped = read_split(root, name, {c: i for i, c in enumerate(list_classes(root))})
        missing = [s for s in skipped if s.reason.endswith("listed but missing")]
        if missing:
            raise DatasetNotFoundError(
                missing_message(dest, f"Unpacked archive is incomplete: {len(missing)} images of {name} missing")
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
        raise DatasetNotFoundError(missing_message(dest, f"Downloaded file is not a zip archive ({exc})")) from exc
