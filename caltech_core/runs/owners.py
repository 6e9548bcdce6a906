"""Which process owns a run: its pid and the kernel's start time of that pid, so that a later process can tell a
dead owner (its run is "interrupted") from a live one, even when the pid was recycled."""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (guards against a recycled pid); None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name in field 2 may contain spaces, so split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int | None, start: str | None) -> bool:
    """Whether `pid` still runs and is the process that started at `start` (None: any process with that pid)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return start is None or process_start(pid) in (None, start)
