"""Bytes a command and every process it starts write to storage (e.g. the test suite).

Linux adds a reaped child's I/O counts (its own reaped children's included) to its parent's `/proc/PID/io`, so
this script makes itself the subreaper of the command's tree (orphans, e.g. daemonised Ray processes, are
re-parented to it instead of to init), reaps every process of the tree, and reads its own `write_bytes` (bytes
sent to the storage layer) and `cancelled_write_bytes` (of those, dropped again because the file was truncated or
deleted before write-back): every process of the tree counted once. (Summing each process's last sample, as this
script did before 2026-12-07, counted a child once itself and again in every ancestor that reaped it.) A process
still alive `--linger` seconds after the command ended is listed and not counted. Also prints the machine-wide
sectors written (/proc/diskstats) over the same time, which includes other users' writes on a shared machine
and leaves out what is still in the page cache at the end.

    CALTECH101_ROOT=/work/shared/caltech101 .venv/bin/python bench/disk_writes.py -- make test
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def _own_io() -> tuple[int, int]:
    """(write_bytes, cancelled_write_bytes) of this process and every child it has reaped."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"]), int(fields["cancelled_write_bytes"])


def _disk_sectors_written() -> int:
    """Sectors written by whole disks (not partitions) since boot, from /proc/diskstats."""
    total = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        parts = line.split()
        name = parts[2]
        if Path(f"/sys/block/{name}").exists() and not name.startswith(("loop", "ram", "zram")):
            total += int(parts[9])
    return total


def _reap(root: int, linger: float) -> int | None:
    """Reap every child until none is left (or `linger` s after `root` ended); `root`'s exit code."""
    code, deadline = None, None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG if deadline is not None else 0)
        except ChildProcessError:
            return code
        if pid == root:
            code, deadline = os.waitstatus_to_exitcode(status), time.monotonic() + linger
        elif pid == 0:  # children left, none ended yet
            if time.monotonic() > deadline:
                for child in Path("/proc").glob("[0-9]*"):
                    try:
                        if int((child / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                            cmd = (child / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
                            print(f"disk_writes: still running, not counted: {child.name} {cmd}", file=sys.stderr)
                    except OSError:
                        continue
                return code
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--linger", type=float, default=60.0,
                        help="seconds to wait for the tree's other processes after the command ends")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    written0, cancelled0 = _own_io()
    sectors = _disk_sectors_written()
    started = time.monotonic()
    code = _reap(subprocess.Popen(command).pid, args.linger)
    written, cancelled = (now - before for now, before in zip(_own_io(), (written0, cancelled0), strict=True))
    disk = (_disk_sectors_written() - sectors) * 512
    print(f"disk_writes: exit {code} after {time.monotonic() - started:.0f} s; write_bytes {written / 1e9:.2f} GB, "
          f"of which cancelled before write-back {cancelled / 1e9:.2f} GB (net {(written - cancelled) / 1e9:.2f} GB); "
          f"whole machine's disks meanwhile {disk / 1e9:.2f} GB", file=sys.stderr)
    return 1 if code is None else code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
