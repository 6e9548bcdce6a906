"""Bytes a command and every process it starts write to storage (e.g. the test suite).

Samples /proc/PID/io of the command's whole process tree every `--every` seconds and keeps each process's last
`write_bytes` (bytes it caused to be sent to the storage layer) and `cancelled_write_bytes` (of those, dropped
again because the file was truncated or deleted before write-back), so processes that exit or are killed between
samples still count up to their last sample. Also prints the machine-wide sectors written (/proc/diskstats) over
the same time, an upper bound that includes other users' writes on a shared machine.

    CALTECH101_ROOT=/work/shared/caltech101 .venv/bin/python bench/disk_writes.py -- .venv/bin/python -m pytest -q
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name in field 2 may hold spaces or parentheses: split after its closing ")".
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(root: int) -> list[int]:
    tree, todo, found = _children(), [root], []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def _io(pid: int) -> tuple[int, int] | None:
    try:
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except OSError:
        return None
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=float, default=0.5, help="sampling interval in seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    sectors = _disk_sectors_written()
    started = time.monotonic()
    proc = subprocess.Popen(command)
    last: dict[tuple[int, int], tuple[int, int]] = {}  # (pid, start time) -> (write_bytes, cancelled)
    while True:
        # Ended? Look without reaping it, so its /proc entry (and final counts) can still be read below.
        done = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        for pid in _descendants(proc.pid):
            try:
                start = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
            except (OSError, IndexError, ValueError):
                continue
            io = _io(pid)
            if io is not None:
                last[(pid, start)] = io
        if done:
            break
        time.sleep(args.every)
    proc.wait()
    written = sum(w for w, _ in last.values())
    cancelled = sum(c for _, c in last.values())
    disk = (_disk_sectors_written() - sectors) * 512
    print(f"disk_writes: exit {proc.returncode} after {time.monotonic() - started:.0f} s; {len(last)} processes; "
          f"write_bytes {written / 1e9:.2f} GB, of which cancelled before write-back {cancelled / 1e9:.2f} GB "
          f"(net {(written - cancelled) / 1e9:.2f} GB); whole machine's disks meanwhile {disk / 1e9:.2f} GB",
          file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
