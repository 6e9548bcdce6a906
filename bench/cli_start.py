"""How long the CLI takes to start: `--help`, an empty run listing and `lr-find --help` as fresh processes, against
the imports every command paid before the architecture table and the range test's defaults stopped importing
torch (`import torch, torchvision, sklearn`), side by side, rounds interleaved.

`--tree PATH` also times the same commands from another checkout (e.g. `git worktree add /tmp/before <commit>`),
put first on PYTHONPATH, so a before/after comparison runs in one process on one machine:

    .venv/bin/python bench/cli_start.py --rounds 5 --tree /tmp/before
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_flags, cpu_model

REPO = Path(__file__).resolve().parent.parent


def commands(store: Path) -> dict[str, list[str]]:
    return {
        "caltech-studio --help": ["-m", "caltech_core", "--help"],
        "caltech-studio runs (empty store)": ["-m", "caltech_core", "runs", "--store", str(store)],
        "caltech-studio lr-find --help": ["-m", "caltech_core", "lr-find", "--help"],
        "import torch, torchvision, sklearn": ["-c", "import torch, torchvision, sklearn.model_selection"],
        "python (nothing imported)": ["-c", "pass"],
    }


def timed(args: list[str], tree: Path) -> tuple[float, float]:
    """(wall s, CPU s) of `python *args` run with `tree` first on its import path."""
    env = os.environ | {"PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", type=Path, help="another checkout to time the same commands from")
    args = parser.parse_args()
    trees = {"this checkout": REPO} | ({f"tree {args.tree}": args.tree.resolve()} if args.tree else {})
    print(f"CPU: {cpu_model()}; flags: {cpu_flags()}; {os.cpu_count()} cores; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {(t, name): cmd for t in trees for name, cmd in commands(Path(tmp) / "store").items()
                if t == "this checkout" or name.startswith("caltech-studio")}
        for (t, _), cmd in runs.items():  # warm the OS's file cache and the .pyc files once
            timed(cmd, trees[t])
        seen: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in runs}
        for _ in range(args.rounds):
            for key, cmd in runs.items():
                seen[key].append(timed(cmd, trees[key[0]]))
    baseline = statistics.median(c for _, c in seen[("this checkout", "import torch, torchvision, sklearn")])
    print(f"median of {args.rounds} rounds; ratio = the imports' CPU ({baseline:.2f} s) / the command's CPU")
    print(f"{'tree':<28} {'command':<36} {'wall s':>7} {'CPU s':>7} {'ratio':>6}")
    for (t, name), times in seen.items():
        wall, cpu = statistics.median(w for w, _ in times), statistics.median(c for _, c in times)
        print(f"{t:<28} {name:<36} {wall:7.2f} {cpu:7.2f} {baseline / cpu:6.1f}")
    if args.tree:
        print(f"CPU of {args.tree}'s command / this checkout's (median of the rounds):")
        for t, name in seen:
            if t != "this checkout":
                ours, theirs = (statistics.median(c for _, c in seen[(k, name)]) for k in ("this checkout", t))
                print(f"  {name:<36} {theirs / ours:5.1f}x")


if __name__ == "__main__":
    main()
