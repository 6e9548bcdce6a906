"""How many threads image work (decode, crop, the unreadable scan) may use on this machine."""

from __future__ import annotations

import os

from caltech_core import settings

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
