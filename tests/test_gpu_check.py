"""bench/gpu_check.py on the CPU: the dataset in parts, and a tiny plan run end to end within its budget.

The bench scripts are imported the way `python bench/gpu_check.py` finds its siblings: bench/ is on sys.path
(pyproject's pytest `pythonpath`)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import gpu_check
import gpu_pack
import gpu_plans
import gpu_report
import pytest

from caltech_core.config import TrainConfig


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_packed_parts_unpack_to_the_same_files(mini_root, tmp_path):
    tars = gpu_pack.pack(mini_root, tmp_path / "packed", parts=2)
    assert [t.parent.name for t in tars] == ["part1", "part2"]
    sizes = [t.stat().st_size for t in tars]
    assert min(sizes) > 0.3 * max(sizes)  # balanced, so each part travels within the same limit
    dest = tmp_path / "dest"
    count = gpu_pack.unpack([t.parent for t in tars], dest)
    expected = {k: v for k, v in _tree(mini_root).items() if "BACKGROUND_Google" not in k}
    assert count == len(expected)
    assert _tree(dest) == expected  # split files and every listed image, byte for byte


def test_a_damaged_part_is_refused(mini_root, tmp_path):
    tar = gpu_pack.pack(mini_root, tmp_path / "packed", parts=1)[0]
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="SHA-256"):
        gpu_pack.unpack([tar.parent], tmp_path / "dest")


def _plan(tiny_config: Callable[..., TrainConfig], budget: float, epochs: int) -> gpu_plans.Plan:
    job = tiny_config(epochs=epochs, step_size=2, lr=0.01, name="tiny", group="tiny")
    # MobileNetV3-Small's throughput and settings: every part measured, in a second where AlexNet took ~9.
    return gpu_plans.Plan(
        budget_s=budget, device="cpu", throughput_archs=["mobilenet_v3_small"], settings_archs=["mobilenet_v3_small"],
        throughput={"batch_size": 4, "image_size": 64, "warmup": 1, "iters": 2},
        jobs=[job, job.replace(lr=0.02, name="tiny lr=0.02")], processes=2,
        caps={"throughput": 60.0, "settings": 60.0, "wrap_up": 8.0, "min_start": 2.0},
    )


@pytest.mark.slow
def test_a_tiny_plan_runs_every_part_and_writes_its_summary(mini_root, tmp_path, tiny_config):
    out = tmp_path / "out"
    summary = gpu_check.run(_plan(tiny_config, budget=900, epochs=2), mini_root, out, tmp_path / "work")  # ends when done
    on_disk = json.loads((out / "gpu_check.json").read_text())
    assert set(on_disk["parts"]) == {"machine", "throughput", "settings", "experiments", "cuda_tests"}
    assert len(on_disk["parts"]["settings"]["rows"][0]) == 1 + 5  # every setting measured
    assert on_disk["parts"]["machine"]["splits"] == {"train": 12, "val": 12, "test": 12}
    row = on_disk["parts"]["throughput"]["rows"][0]
    assert row["arch"] == "mobilenet_v3_small" and row["synthetic"] > 0 and row["real_1"] > 0
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


@pytest.mark.slow
def test_the_budget_cancels_long_runs_cleanly(mini_root, tmp_path, tiny_config):
    plan = _plan(tiny_config, budget=50, epochs=1000)
    plan.throughput_archs, plan.settings_archs, plan.cuda_tests = [], [], False
    # Runs are told to stop 12 s in (both workers have started by then, even on a busy machine: `device` below);
    # a worker still alive 28 s later is killed. 12 s, not more: two training workers burn both cores meanwhile.
    plan.caps["wrap_up"] = 38.0
    started = time.monotonic()
    gpu_check.run(plan, mini_root, tmp_path / "out", tmp_path / "work")
    assert time.monotonic() - started < 50 + 5
    runs = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]["experiments"]["rows"]
    assert [r["status"] for r in runs] == ["cancelled", "cancelled"], [r["error"] for r in runs]
    assert all(r["device"] == "cpu" and r["epochs_done"] < 1000 for r in runs)  # started, then stopped


def test_the_second_plan_is_candidates_chosen_on_validation():
    plan = gpu_plans.PLANS["second"](540)
    assert plan.loader_archs == ["alexnet", "resnet18"] and plan.compile_backend == "inductor"
    assert plan.throughput_archs == plan.settings_archs == []  # the first pass measured those
    assert {cfg.group for cfg in plan.jobs} <= set(plan.choose)
    assert all(cfg.retrain_on_train_val and "crop" in cfg.augment and cfg.lr_schedule == "cosine"
               for cfg in plan.jobs)
    assert len({cfg.name for cfg in plan.jobs}) == len(plan.jobs) and len(plan.jobs) <= plan.processes
    scratch = [cfg for cfg in plan.jobs if cfg.group == gpu_plans.SCRATCH_GROUP]
    assert len(scratch) == 3 and all(cfg.arch == "alexnet" and not cfg.pretrained for cfg in scratch)


@pytest.mark.slow
def test_a_tiny_second_plan_measures_the_loader_and_chooses_on_validation(mini_root, tmp_path, tiny_config):
    job = tiny_config(image_size=32, batch_size=12, epochs=2, lr=0.01, augment=("crop", "hflip"),
                      lr_schedule="cosine", warmup_epochs=1, label_smoothing=0.1, retrain_on_train_val=True,
                      group="cands", name="cand a")
    plan = gpu_plans.Plan(
        budget_s=900, device="cpu", throughput_archs=[], settings_archs=[],
        throughput={"batch_size": 4, "image_size": 32, "warmup": 1, "iters": 1},
        jobs=[job, job.replace(lr=0.03, name="cand b")], processes=2, cuda_tests=False,
        caps={"loader": 120.0, "compile": 120.0, "wrap_up": 8.0, "min_start": 2.0}, loader_archs=["mobilenet_v3_small"],
        compile_backend="eager",  # dynamo without code generation: the compiled path, fast on the CPU
        choose={"cands": 70.0},
    )
    out = tmp_path / "out"
    gpu_check.run(plan, mini_root, out, tmp_path / "work")
    summary = json.loads((out / "gpu_check.json").read_text())
    assert list(summary["parts"]) == ["machine", "loader", "experiments", "compile"]  # compile after the runs
    row = summary["parts"]["loader"]["rows"][0]
    assert row["synthetic"] > 0
    for key in ("real_gpu_flips", "real_gpu_flips_1", "real_host_flips"):
        assert row[key] > 0 and row[f"ratio_{key[5:]}"] == row[key] / row["synthetic"], key
    compiled = summary["parts"]["compile"]["rows"][0]
    assert compiled["arch"] == "mobilenet_v3_small" and compiled["real_compiled"] > 0 and compiled["compile_s"] >= 0
    assert compiled["ratio_compiled"] == compiled["real_compiled"] / compiled["synthetic_compiled"]
    runs = summary["parts"]["experiments"]["rows"]
    assert [r["status"] for r in runs] == ["finished", "finished"], [r["error"] for r in runs]
    assert all(r["retrain_test_acc"] is not None for r in runs)
    chosen = summary["parts"]["experiments"]["chosen"]["cands"]
    best = max(runs, key=lambda r: r["best_val_acc"])
    assert chosen["run_id"] == best["run_id"] and chosen["complete"] and chosen["candidates"] == 2
    assert chosen["retrain_test_acc"] == best["retrain_test_acc"]
    assert chosen["met"] == (100 * best["retrain_test_acc"] >= 70.0)
    report = (out / "gpu_check.md").read_text()
    assert "## Loader: flips on the GPU vs on the host" in report and "## torch.compile" in report
    assert report.count("| mobilenet_v3_small | ") == 2
    assert f"| cands | 2 | #{best['run_id']} {best['name']} |" in report


def test_choosing_prefers_runs_that_trained_all_their_epochs():
    rows = [
        {"run_id": 1, "group": "g", "name": "cut", "status": "cancelled", "epochs_done": 3, "epochs": 9,
         "best_val_acc": 0.9, "best_epoch": 3, "test_acc": None, "retrain_test_acc": None, "seconds": 5},
        {"run_id": 2, "group": "g", "name": "whole", "status": "finished", "epochs_done": 9, "epochs": 9,
         "best_val_acc": 0.6, "best_epoch": 8, "test_acc": 0.58, "retrain_test_acc": 0.71, "seconds": 9},
        {"run_id": 3, "group": "other", "name": "x", "status": "finished", "epochs_done": 9, "epochs": 9,
         "best_val_acc": 0.99, "best_epoch": 9, "test_acc": 0.9, "retrain_test_acc": 0.9, "seconds": 9},
    ]
    chosen = gpu_report.chosen_on_val(rows, {"g": 70.0, "empty": 50.0})
    assert chosen["g"]["run_id"] == 2 and chosen["g"]["met"] is True and chosen["g"]["complete"]
    cut_only = gpu_report.chosen_on_val(rows[:1], {"g": 70.0})["g"]
    assert cut_only["run_id"] == 1 and not cut_only["complete"] and cut_only["met"] is None
    assert "run_id" not in chosen["empty"] and chosen["empty"]["candidates"] == 0
