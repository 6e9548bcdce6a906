"""bench/gpu_check.py on the CPU: the dataset in parts, and a tiny plan run end to end within its budget."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from caltech_core.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gpu_check


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_packed_parts_unpack_to_the_same_files(mini_root, tmp_path):
    tars = gpu_check.pack(mini_root, tmp_path / "packed", parts=2)
    assert [t.parent.name for t in tars] == ["part1", "part2"]
    sizes = [t.stat().st_size for t in tars]
    assert min(sizes) > 0.3 * max(sizes)  # balanced, so each part travels within the same limit
    dest = tmp_path / "dest"
    count = gpu_check.unpack([t.parent for t in tars], dest)
    expected = {k: v for k, v in _tree(mini_root).items() if "BACKGROUND_Google" not in k}
    assert count == len(expected)
    assert _tree(dest) == expected  # split files and every listed image, byte for byte


def test_a_damaged_part_is_refused(mini_root, tmp_path):
    tar = gpu_check.pack(mini_root, tmp_path / "packed", parts=1)[0]
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="SHA-256"):
        gpu_check.unpack([tar.parent], tmp_path / "dest")


def _plan(budget: float, epochs: int) -> gpu_check.Plan:
    job = TrainConfig(arch="resnet18", image_size=64, batch_size=8, epochs=epochs, step_size=2, lr=0.01,
                      device="cpu", name="tiny", group="tiny")
    return gpu_check.Plan(
        budget_s=budget, device="cpu", throughput_archs=["alexnet"], settings_archs=["alexnet"],
        throughput={"batch_size": 4, "image_size": 64, "warmup": 1, "iters": 2},
        jobs=[job, job.replace(lr=0.02, name="tiny lr=0.02")], processes=2,
        caps={"throughput": 60.0, "settings": 60.0, "wrap_up": 8.0, "min_start": 2.0},
    )


def test_a_tiny_plan_runs_every_part_and_writes_its_summary(mini_root, tmp_path):
    out = tmp_path / "out"
    summary = gpu_check.run(_plan(budget=900, epochs=2), mini_root, out, tmp_path / "work")  # ends when done
    on_disk = json.loads((out / "gpu_check.json").read_text())
    assert set(on_disk["parts"]) == {"machine", "throughput", "settings", "experiments", "cuda_tests"}
    assert len(on_disk["parts"]["settings"]["rows"][0]) == 1 + 5  # every setting measured
    assert on_disk["parts"]["machine"]["splits"] == {"train": 12, "val": 12, "test": 12}
    row = on_disk["parts"]["throughput"]["rows"][0]
    assert row["arch"] == "alexnet" and row["synthetic"] > 0 and row["real_1"] > 0
    runs = on_disk["parts"]["experiments"]["rows"]
    assert [r["status"] for r in runs] == ["finished", "finished"], [r["error"] for r in runs]
    assert all(r["epochs_done"] == 2 and r["test_acc"] is not None for r in runs)
    tests = on_disk["parts"]["cuda_tests"]
    assert tests["skipped"] >= 6 and tests["failed"] == tests["error"] == 0  # no CUDA here: all skip, none break
    with sqlite3.connect(out / "runs.sqlite") as db:  # the store travels back for the Report
        assert db.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 4
    report = (out / "gpu_check.md").read_text()
    assert "## Training throughput" in report and "| #1 | tiny | finished | 2/2 |" in report
    assert summary["parts"]["experiments"] == on_disk["parts"]["experiments"]


def test_the_budget_cancels_long_runs_cleanly(mini_root, tmp_path):
    plan = _plan(budget=60, epochs=1000)
    plan.throughput_archs, plan.settings_archs, plan.cuda_tests = [], [], False
    plan.caps["wrap_up"] = 30.0  # runs are told to stop 30 s in; a worker still alive 22 s later is killed
    started = time.monotonic()
    gpu_check.run(plan, mini_root, tmp_path / "out", tmp_path / "work")
    assert time.monotonic() - started < 60 + 5
    runs = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]["experiments"]["rows"]
    assert [r["status"] for r in runs] == ["cancelled", "cancelled"], [r["error"] for r in runs]
    assert all(r["device"] == "cpu" and r["epochs_done"] < 1000 for r in runs)  # started, then stopped
