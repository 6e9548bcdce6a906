"""The Caltech-101 split in a few large files that can travel on their own (`gpu_check.py pack` / `unpack`)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from caltech_core.data import dataset as caltech_data


def _listed_images(root: Path) -> list[str]:
    """Every image the split files list, BACKGROUND_Google excluded (what training can read)."""
    lines: list[str] = []
    for name in caltech_data.SPLIT_FILES:
        for line in (root / name).read_text().split():
            if line.split("/")[0] != caltech_data.BACKGROUND:
                lines.append(f"{caltech_data.IMAGES_DIR}/{line}")
    return sorted(set(lines))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(root: Path, out: Path, parts: int = 2) -> list[Path]:
    """Write the split files and listed images as `parts` tar files of similar size, each in its own folder
    (out/partN/caltech101-N.tar.gz + MANIFEST.json), so each part can travel on its own."""
    files = _listed_images(root)
    sizes = {f: (root / f).stat().st_size for f in files}
    bins: list[list[str]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for f in sorted(files, key=lambda f: -sizes[f]):  # largest first into the lightest part
        i = totals.index(min(totals))
        bins[i].append(f)
        totals[i] += sizes[f]
    bins[0] = [*caltech_data.SPLIT_FILES, *bins[0]]
    written = []
    for i, members in enumerate(bins, 1):
        folder = out / f"part{i}"
        folder.mkdir(parents=True, exist_ok=True)
        tar_path = folder / f"caltech101-{i}.tar.gz"
        tmp = folder / f"caltech101-{i}.partial"
        # gzip: the JPEGs do not shrink, but tar's 512-byte headers and padding (~8 MiB here) do.
        with tarfile.open(tmp, "w:gz", compresslevel=1, dereference=True) as tar:  # a linked tree packs its files
            for member in sorted(members):
                tar.add(root / member, arcname=member)
        tmp.replace(tar_path)
        manifest = {"part": i, "parts": parts, "files": len(members), "tar": tar_path.name,
                    "sha256": _sha256(tar_path), "bytes": tar_path.stat().st_size}
        (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
        written.append(tar_path)
    return written


def unpack(part_dirs: list[Path], dest: Path) -> int:
    """Check each part's SHA-256 against its manifest and extract it into `dest`; returns files extracted."""
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    for folder in part_dirs:
        manifest = json.loads((folder / "MANIFEST.json").read_text())
        tar_path = folder / manifest["tar"]
        if _sha256(tar_path) != manifest["sha256"]:
            raise SystemExit(f"{tar_path}: SHA-256 differs from its manifest (damaged in transfer)")
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
        count += manifest["files"]
    return count
