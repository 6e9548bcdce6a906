"""Commands whose runs train on a worker thread (`reproduce`, `sweep`: their default thread backend) start over,
once, in a process with glibc's malloc held to one arena, as `make run` starts the dashboard: that thread then
reuses freed memory as a main thread does (training/speed.reuse_freed_memory; 1.17-1.29x, docs/benchmarks.md
"The CPU heap").
glibc reads the setting only as a process starts, so the command is run again in its place (`exec`: same process
id, same arguments), before it has done anything."""

from __future__ import annotations

import os
import sys

from caltech_core import settings


def restart_with_one_malloc_arena() -> None:
    """Replace this process with the same command line, started with one malloc arena; returns where it already
    has one, or its C library is not glibc (which alone reads the setting)."""
    if settings.one_malloc_arena() or not _glibc():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], settings.with_one_malloc_arena())


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # another C library (macOS, musl) or no confstr (Windows)
        return False
