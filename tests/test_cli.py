"""`python -m caltech_core ...` with real tiny runs: JSON outputs, exit codes and messages."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from caltech_core import settings
from caltech_core.cli import main
from caltech_core.config import SETTINGS, Setting, TrainConfig
from caltech_core.nets import architectures
from caltech_core.nets.architectures import HubWeights, get_spec
from caltech_core.runs.store import RunStore

REPO = Path(__file__).resolve().parent.parent
TINY = ["--arch", "mobilenet_v3_small", "--image-size", "64", "--batch-size", "4", "--classes", "2", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny batches gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """main() in this process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def run_module(*argv: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "caltech_core", *argv], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mini_root: Path) -> tuple[Path, dict[str, Any]]:
    """A store holding one real finished two-epoch run, trained through the CLI; and its JSON summary."""
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("cli_store")
    code, out, err = run_cli("train", *TINY, "--epochs", "2", "--name", "cli run", "--root", str(mini_root),
                             "--store", str(home), "--json")
    assert code == 0, err
    return home, json.loads(out.strip().splitlines()[-1])


def test_train_json_last_line(trained: tuple[Path, dict[str, Any]]) -> None:
    home, summary = trained
    assert summary["status"] == "finished"
    assert summary["name"] == "cli run" and summary["arch"] == "mobilenet_v3_small"
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]
    assert 0.0 <= summary["best_val_acc"] <= 1.0 and 0.0 <= summary["test_acc"] <= 1.0
    assert summary["config"]["image_size"] == 64 and summary["config"]["batch_size"] == 4
    run = RunStore(home).get_run(summary["run_id"])
    assert run.status == "finished" and run.test_acc == summary["test_acc"]


def test_runs_lists_the_store(trained: tuple[Path, dict[str, Any]]) -> None:
    home, summary = trained
    code, out, _ = run_cli("runs", "--store", str(home), "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["run_id"], r["status"], r["epochs"]) for r in rows] == [(summary["run_id"], "finished", 2)]
    code, out, _ = run_cli("runs", "--store", str(home))
    assert code == 0 and "cli run" in out and "finished" in out
    code, out, _ = run_cli("runs", "--store", str(home), "--group", "nothing", "--json")
    assert json.loads(out) == []


def test_classify_good_bad_and_missing_files(trained: tuple[Path, dict[str, Any]], mini_root: Path,
                                             tmp_path: Path) -> None:
    home, summary = trained
    good = next((mini_root / "101_ObjectCategories" / "accordion").iterdir())
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image")
    missing = tmp_path / "missing.png"
    code, out, err = run_cli("classify", str(bad), str(good), str(missing), "--run", str(summary["run_id"]),
                             "--top", "2", "--store", str(home), "--json")
    assert code == 0, err
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(bad), str(good), str(missing)]
    assert "error" in results[0] and "top" not in results[0]
    top = results[1]["top"]
    assert len(top) == 2 and {t["class"] for t in top} == {"accordion", "dalmatian"}
    assert top[0]["prob"] >= top[1]["prob"] and sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-4)
    assert "error" in results[2]

    code, _, err = run_cli("classify", str(good), "--run", "999", "--store", str(home), "--json")
    assert code == 1 and "run 999 does not exist" in err


def test_evaluate_recomputes_per_image_results(trained: tuple[Path, dict[str, Any]], mini_root: Path) -> None:
    from caltech_core.training import predictions

    home, summary = trained
    run_dir = RunStore(home).run_dir(summary["run_id"])
    written = predictions.load(run_dir / "predictions-test.npz")  # by the engine during training
    (run_dir / "predictions-test.npz").unlink()
    code, out, err = run_cli("evaluate", str(summary["run_id"]), "--root", str(mini_root), "--store", str(home),
                             "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["split"] == "test" and result["images"] == 8  # 2 classes x 4 test images
    assert result["acc"] == pytest.approx(summary["test_acc"])
    assert result["mean_class_acc"] == pytest.approx(summary["mean_class_acc"])
    again = predictions.load(result["path"])
    assert Path(result["path"]) == run_dir / "predictions-test.npz"
    assert again.labels.tolist() == written.labels.tolist() and list(again.paths) == list(written.paths)
    assert again.top_classes.tolist() == written.top_classes.tolist()
    assert np.allclose(again.top_probs, written.top_probs, atol=1e-5)
    assert np.allclose(again.losses, written.losses, atol=1e-4)

    code, out, err = run_cli("evaluate", str(summary["run_id"]), "--split", "val", "--root", str(mini_root),
                             "--store", str(home))
    assert code == 0, err
    assert f"accuracy {100 * summary['best_val_acc']:.1f}%" in out
    assert str(run_dir / "predictions-val.npz") in out

    code, _, err = run_cli("evaluate", "999", "--store", str(home))
    assert code == 1 and "run 999 does not exist" in err
    store = RunStore(home)
    untrained = store.create_run(TrainConfig(arch="mobilenet_v3_small", image_size=64, classes=2), status="cancelled")
    code, _, err = run_cli("evaluate", str(untrained), "--root", str(mini_root), "--store", str(home))
    assert code == 1 and "has no saved weights" in err
    store.delete_run(untrained)


def test_a_copied_store_folder_opens_elsewhere(trained: tuple[Path, dict[str, Any]], mini_root: Path,
                                              tmp_path: Path) -> None:
    """A store trained headless (say on a GPU machine) is a folder: copied elsewhere it lists and classifies."""
    home, summary = trained
    moved = tmp_path / "elsewhere"
    shutil.copytree(home, moved)
    original = home.rename(home.with_name(home.name + "-away"))  # nothing may still point at the old folder
    try:
        code, out, err = run_cli("runs", "--store", str(moved), "--json")
        assert code == 0, err
        assert [r["run_id"] for r in json.loads(out)] == [summary["run_id"]]
        image = next((mini_root / "101_ObjectCategories" / "dalmatian").iterdir())
        code, out, err = run_cli("classify", str(image), "--run", str(summary["run_id"]), "--store", str(moved),
                                 "--json")
        assert code == 0, err
        assert len(json.loads(out)[0]["top"]) == 2
    finally:
        original.rename(home)


def test_invalid_config_exits_2_naming_the_field(tmp_path: Path, mini_root: Path) -> None:
    code, out, err = run_cli("train", "--lr", "-1", "--root", str(mini_root), "--store", str(tmp_path))
    assert code == 2 and out == ""
    assert "lr: must be > 0 and <= 10 (got -1.0)" in err
    code, _, err = run_cli("train", "--epochs", "0", "--root", str(mini_root), "--store", str(tmp_path))
    assert code == 2 and "epochs: must be a whole number from 1 to 1000" in err
    code, _, err = run_cli("train", "--aug", "crop,zoom", "--root", str(mini_root), "--store", str(tmp_path))
    assert code == 2 and "augment" in err and "zoom" in err
    code, _, err = run_cli("train", "--arch", "lenet", "--store", str(tmp_path))
    assert code == 2 and "--arch" in err
    assert RunStore(tmp_path).list_runs() == []  # nothing was stored for a rejected configuration


def test_missing_dataset_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    proc = run_module("data", "--root", str(tmp_path / "nowhere"), "--json")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "101_ObjectCategories" in proc.stderr and "Traceback" not in proc.stderr
    code, _, err = run_cli("train", "--root", str(tmp_path / "nowhere"), "--store", str(tmp_path / "s"))
    assert code == 1 and "Caltech-101 not found" in err
    assert RunStore(tmp_path / "s").list_runs() == []


def test_data_json_is_one_object(mini_root: Path) -> None:
    proc = run_module("data", "--root", str(mini_root), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # the whole of stdout is exactly one JSON object
    assert summary["num_classes"] == 3 and summary["root"] == str(mini_root.resolve())
    assert summary["splits"] == {"train": 12, "val": 12, "test": 12}
    assert summary["unreadable"] == []



@pytest.mark.parametrize("why", ["offline", "unreachable"])
def test_a_run_failing_before_training_looks_failed(why: str, tmp_path: Path, mini_root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretrained weights that cannot be had fail the run before its first epoch: the bar ends in "failed" (not
    "100% ... done"), the error is on stderr, the exit code is 1, and the weights download leaves no lock file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch hub cache
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    flags = ["--offline"]
    if why == "unreachable":  # downloads allowed, but nothing listens at the URL: the download itself fails
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        enum = SimpleNamespace(url=f"http://127.0.0.1:{port}/tiny-0123abcd.pth", meta={})
        spec = dataclasses.replace(get_spec("mobilenet_v3_small"), weights=HubWeights(enum))
        monkeypatch.setitem(architectures.SPECS, "mobilenet_v3_small", spec)
        monkeypatch.delenv(settings.OFFLINE.name)
        flags = []
    code, out, err = run_cli("train", *TINY, "--pretrained", "--epochs", "1", *flags, "--root", str(mini_root),
                             "--store", str(tmp_path / "store"))
    [run] = RunStore(tmp_path / "store").list_runs()
    assert code == 1 and run.status == "failed" and run.epochs_done == 0
    assert "--weights PATH" in run.error and f"error: run {run.label} failed: {run.error}" in err
    bars = [line.strip() for line in err.replace("\r", "\n").splitlines() if " epochs [" in line]
    assert bars and bars[-1].endswith("failed]"), bars
    assert "100%" not in err and "done]" not in err
    assert f"run {run.label}: failed" in out  # stdout still has the run's one-line result
    if why == "unreachable":
        assert hub.is_dir()  # the download was tried under its lock ...
    assert list(hub.glob("*.lock")) == []  # ... which it removed


def test_lists_are_split_in_one_place(tmp_path: Path) -> None:
    """`--aug`/`--class-names` and a config given text split commas the same way; "none" is the empty list."""
    from caltech_core.cli.app import build_parser
    from caltech_core.cli.train import train_configs

    assert TrainConfig(augment=" crop, ,hflip").augment == ("crop", "hflip")
    assert TrainConfig(augment="none").augment == () == TrainConfig(augment="").augment
    args = build_parser().parse_args(["train", "--aug", "none", "--class-names", "pizza, accordion",
                                      "--store", str(tmp_path)])
    [cfg], _ = train_configs(args, RunStore(tmp_path))
    assert cfg.augment == () and cfg.class_names == ("pizza", "accordion")

def test_preset_sweep_prints_each_run_then_a_summary(tmp_path: Path, mini_root: Path) -> None:
    code, out, err = run_cli("train", "--preset", "more-epochs", *TINY, "--epochs", "1", "--root", str(mini_root),
                             "--store", str(tmp_path), "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert len(lines) == 3
    runs, summary = lines[:2], lines[2]
    assert [r["group"] for r in runs] == ["more-epochs"] * 2 and runs[0]["run_id"] < runs[1]["run_id"]
    assert [r["run_id"] for r in summary["runs"]] == [r["run_id"] for r in runs]
    best = max(runs, key=lambda r: r["best_val_acc"])
    assert summary["run_id"] == summary["best_run_id"] == best["run_id"]
    assert summary["status"] == "finished" and summary["preset"] == "more-epochs" and len(summary["epochs"]) == 1


def test_repeats_train_new_seeds_and_splits(tmp_path: Path, mini_root: Path) -> None:
    code, _, err = run_cli("train", *TINY, "--epochs", "1", "--repeats", "0", "--store", str(tmp_path))
    assert code == 2 and "repeats" in err
    args = ("train", *TINY, "--epochs", "1", "--batch-size", "8", "--repeats", "2", "--root", str(mini_root),
            "--store", str(tmp_path), "--json")
    code, out, err = run_cli(*args)
    assert code == 0, err
    *runs, summary = [json.loads(line) for line in out.strip().splitlines()]
    assert [(r["config"]["seed"], r["config"]["split_seed"]) for r in runs] == [(42, 42), (43, 43)]
    assert [r["status"] for r in runs] == ["finished"] * 2 and len(summary["runs"]) == 2
    code, out, err = run_cli(*args[:-1], "--repeats", "1", "--json")  # again: the next unused seed
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["config"]["seed"] == 44


def test_resume_command(tmp_path: Path, mini_root: Path, tiny_config: Callable[..., TrainConfig]) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(tiny_config(classes=2))
    store.set_status(run_id, "cancelled")  # cancelled before any checkpoint: resume starts it over
    code, out, err = run_cli("resume", str(run_id), "--root", str(mini_root), "--store", str(tmp_path), "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["run_id"] == run_id and result["status"] == "finished" and len(result["epochs"]) == 1
    code, _, err = run_cli("resume", str(run_id), "--store", str(tmp_path))
    assert code == 1 and "is finished" in err
    code, _, err = run_cli("resume", "42", "--store", str(tmp_path))
    assert code == 1 and "run 42 does not exist" in err


def test_report_writes_markdown(trained: tuple[Path, dict[str, Any]], tmp_path: Path, mini_root: Path) -> None:
    home, _ = trained
    code, out, err = run_cli("report", "--store", str(home), "--root", str(mini_root), "--out", str(tmp_path),
                             "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert Path(summary["markdown"]).is_file() and Path(summary["markdown"]).parent == tmp_path
    assert summary["sections"]
    counts = summary["summary"]
    assert sum(counts["numbers"].values()) == counts["numbers_total"] == 24 and counts["runs"] == 1
    assert counts["dataset_total"] == 4  # Table 1's facts, counted apart from the experiments' numbers
    assert counts["compute_seconds"] > 0
    # A copy of the store in another folder exports the same verdicts (nothing depends on its old path).
    copy = tmp_path / "copied-store"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("runs", "cache"))
    code, out, err = run_cli("report", "--store", str(copy), "--root", str(mini_root), "--out", str(tmp_path / "c"))
    assert code == 0, err
    assert out.startswith(f"Of the study's 24 experiment numbers: {counts['numbers']['reproduced']} reproduced")
    assert (tmp_path / "c" / "report.md").is_file()


def _train_in_a_process(
    tmp_path: Path, mini_root: Path, epochs: int, until: Any
) -> tuple[subprocess.Popen, RunStore]:
    """Start `train` in a child process on the mini data; return once `until(store, run)` holds (4 min at most)."""
    import time

    cmd = [sys.executable, "-m", "caltech_core", "train", *TINY, "--epochs", str(epochs), "--root", str(mini_root),
           "--store", str(tmp_path), "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    store = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (tmp_path / "runs.sqlite").exists():
            store = store or RunStore(tmp_path)
            runs = store.list_runs()
            if runs and until(store, runs[0]):
                break
        time.sleep(0.05)
    return proc, store


def test_ctrl_c_cancels_cleanly_and_resume_finishes(tmp_path: Path, mini_root: Path) -> None:
    import signal

    proc, store = _train_in_a_process(tmp_path, mini_root, 20, lambda store, run: run.epochs_done >= 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "cancelled" and 1 <= len(result["epochs"]) < 20
    run_id = result["run_id"]
    assert store.get_run(run_id).status == "cancelled"

    code, out, err = run_cli("resume", str(run_id), "--json", "--root", str(mini_root),
                             "--store", str(tmp_path))
    assert code == 0, err
    assert [e["epoch"] for e in json.loads(out.strip().splitlines()[-1])["epochs"]] == list(range(1, 21))


def test_arch_brings_its_native_image_size_unless_given(tmp_path: Path, mini_root: Path) -> None:
    lite1 = ["train", "--arch", "efficientnet_lite1", "--pretrained", "--train", "fc", "--classes", "2",
             "--max-per-class", "2", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
             "--root", str(mini_root), "--store", str(tmp_path), "--json"]
    code, out, err = run_cli(*lite1)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "finished"
    code, _, err = run_cli(*lite1, "--image-size", "96")
    assert code == 0, err
    sizes = [(r.config.image_size, r.config.resize_size) for r in RunStore(tmp_path).list_runs()]
    assert sorted(sizes) == [(96, 109), (240, 272)]  # crop_pct 0.882 of timm's tf_efficientnet_lite1


def test_cache_reports_disk_use_and_prunes(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    (store.cache_dir / "images-99").mkdir()
    (store.cache_dir / "images-99" / "pixels-0.u8").write_bytes(b"p" * 2048)
    code, out, _ = run_cli("cache", "--store", str(tmp_path))
    assert code == 0 and "image cache" in out and "1 cache(s) no run uses" in out
    code, out, _ = run_cli("cache", "--prune", "--store", str(tmp_path), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["freed_bytes"] == 2048 and summary["bytes"]["image cache"] == 0
    assert not (store.cache_dir / "images-99").exists()


def test_delete_tag_note_and_filter(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    done = [store.create_run(TrainConfig(epochs=1, name=f"r{i}")) for i in range(3)]
    for run_id in done:
        store.set_status(run_id, "finished")
        (store.run_dir(run_id) / "best.pt").write_bytes(b"w")
    busy = store.create_run(TrainConfig(epochs=1, name="busy"))  # queued

    assert run_cli("tag", str(done[0]), "keep", "baseline", "--store", str(tmp_path))[0] == 0
    assert run_cli("tag", str(done[0]), "baseline", "--remove", "--store", str(tmp_path))[0] == 0
    assert run_cli("note", str(done[0]), "the good one", "--store", str(tmp_path))[0] == 0
    code, out, _ = run_cli("runs", "--tag", "keep", "--store", str(tmp_path), "--json")
    assert [(r["run_id"], r["tags"], r["note"]) for r in json.loads(out)] == [(done[0], ["keep"], "the good one")]

    code, _, err = run_cli("delete", str(done[1]), str(busy), "--yes", "--store", str(tmp_path))
    assert code == 1 and f"run {busy} is queued" in err and store.get_run(done[1]) is not None
    code, _, err = run_cli("delete", str(done[1]), "--store", str(tmp_path))  # not a terminal: must confirm
    assert code == 2 and "--yes" in err and store.get_run(done[1]) is not None
    code, out, _ = run_cli("delete", str(done[1]), str(done[2]), "--yes", "--store", str(tmp_path), "--json")
    assert code == 0 and json.loads(out) == {"deleted": [done[1], done[2]]}
    assert store.get_run(done[1]) is None and not (tmp_path / "runs" / str(done[1])).exists()
    assert run_cli("delete", "999", "--yes", "--store", str(tmp_path))[0] == 1
    code, _, err = run_cli("cancel", str(done[0]), "--store", str(tmp_path))
    assert code == 1 and "only queued or running" in err


def test_cancel_stops_a_run_of_another_process_within_a_batch(tmp_path: Path, mini_root: Path) -> None:
    from caltech_core.runs.threads import ThreadJobManager

    # 1000 epochs: minutes even for MobileNetV3-Small, far longer than starting the `cancel` process takes.
    proc, store = _train_in_a_process(tmp_path, mini_root, 1000, lambda store, run: bool(store.batches(run.id)))
    run_id = store.list_runs()[0].id
    # A dashboard's job manager does not own the run either: its cancel also goes through the store.
    manager = ThreadJobManager(store, data_root=mini_root, recover=False)
    try:
        other = store.create_run(TrainConfig(epochs=1))  # queued by "another process"
        assert manager.cancel(other) and store.cancel_requested(other)
        code, _, err = run_cli("cancel", str(run_id), "--store", str(tmp_path))
        assert code == 0 and "stops within one batch" in err
        out, _ = proc.communicate(timeout=120)
    finally:
        manager.shutdown(wait=True)
        proc.kill()
    run = store.get_run(run_id)
    assert run.status == "cancelled" and json.loads(out.strip().splitlines()[-1])["status"] == "cancelled"
    assert run.epochs_done < 1000


def _other_value(setting: Setting) -> Any:
    """A valid value of a setting that differs from its default, from its metadata alone."""
    if setting.kind == "bool":
        return not setting.default
    if setting.kind == "tuple":
        return tuple(setting.choices[:2]) if setting.choices else ("pizza", "accordion")
    if setting.choices:
        return next(c for c in reversed(setting.choices) if c != setting.default)
    if setting.kind == "int":
        return next(v for v in (int(setting.low) + 1, int(setting.low) + 2) if v != setting.default)
    if setting.kind == "float":
        return (setting.low + 2 * setting.high) / 3
    return {"weights_path": "/tmp/w.pt", "dataset": "shapes"}.get(setting.name, "some text")


def _argv(flag: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, tuple):
        return [flag, ",".join(value)]
    return [flag, repr(value) if isinstance(value, float) else str(value)]


def test_every_config_field_and_alias_parses_into_the_config(tmp_path: Path) -> None:
    """Every TrainConfig field has a `train` option (generated from its Setting), and each of its flags carries
    a non-default value through to the config the run would get, changing nothing else."""
    import dataclasses

    from PIL import Image

    from caltech_core.cli.app import build_parser
    from caltech_core.cli.train import train_configs
    from caltech_core.data import registry

    parser = build_parser()
    store = RunStore(tmp_path)
    for cls in ("a", "b"):  # --data takes a registered dataset (or a folder, which it registers)
        (tmp_path / "shapes" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "shapes" / cls / "1.png")
    registry.add(store.home, tmp_path / "shapes")
    baseline = TrainConfig().to_dict()
    needs = {"warmup_epochs": ["--lr-schedule", "cosine"],  # a warm-up goes with the cosine schedule
             "int8_features": ["--arch", "efficientnet_lite0", "--train", "fc"]}  # the fast path, on onnxruntime
    for f in dataclasses.fields(TrainConfig):
        setting = SETTINGS[f.name]
        value = _other_value(setting)
        for flag in setting.flags or (f"--{f.name.replace('_', '-')}",):
            args = parser.parse_args(["train", *needs.get(f.name, []), *_argv(flag, value), "--store",
                                      str(tmp_path)])
            [cfg], _ = train_configs(args, store)
            assert getattr(cfg, f.name) == value, flag
            changed = {k for k, v in cfg.to_dict().items() if v != baseline[k]}
            implied = {"weights_path": {"pretrained"}, "arch": {"image_size"}, "warmup_epochs": {"lr_schedule"},
                       "int8_features": {"arch", "train"}}.get(f.name, set())
            assert changed == {f.name} | implied, flag


def test_old_flag_spellings_still_work(tmp_path: Path) -> None:
    from caltech_core.cli.app import build_parser
    from caltech_core.cli.train import train_configs

    args = build_parser().parse_args([
        "train", "--class-names", "pizza,accordion", "--per-class-train", "5", "--train-fraction", "0.6",
        "--split-seed", "7", "--rotate-degrees", "15", "--no-fast-path", "--no-amp", "--aug", "crop,hflip",
        "--retrain", "--patience", "3", "--weights", "w.pt", "--step-size", "5", "--store", str(tmp_path)])
    [cfg], _ = train_configs(args, RunStore(tmp_path))
    assert (cfg.class_names, cfg.per_class_train, cfg.train_fraction, cfg.split_seed, cfg.rotate_degrees,
            cfg.fast_path, cfg.amp) == (("pizza", "accordion"), 5, 0.6, 7, 15.0, False, False)
    assert (cfg.augment, cfg.retrain_on_train_val, cfg.early_stopping_patience, cfg.weights_path, cfg.pretrained,
            cfg.step_size) == (("crop", "hflip"), True, 3, "w.pt", True, 5)


def test_the_installed_console_script_is_the_cli() -> None:
    """`pip install -e .` (make does it) puts `caltech-studio` beside the interpreter; it is `python -m caltech_core`."""
    script = Path(sys.executable).parent / "caltech-studio"
    assert script.is_file(), "the package is not installed: run `pip install -e .`"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: caltech-studio") and "train" in done.stdout and "report" in done.stdout
    module = subprocess.run([sys.executable, "-m", "caltech_core", "--help"], capture_output=True, text=True,
                            timeout=120)
    after = done.stdout.index("positional arguments:")
    assert module.stdout[module.stdout.index("positional arguments:"):] == done.stdout[after:]


def test_the_parser_and_the_run_store_import_no_torch(tmp_path: Path) -> None:
    """`--help`, the options of every command, the architecture table and the run store need neither torch,
    torchvision nor scikit-learn (about 4 s of CPU to import on a 2-core machine): each comes with the work that
    uses it."""
    probe = ("import sys\n"
             "from caltech_core.cli.app import build_parser\n"
             "from caltech_core.nets.architectures import SPECS\n"
             "from caltech_core.runs.store import RunStore\n"
             "build_parser()\n"
             "print([s.label for s in SPECS.values()][0], RunStore(sys.argv[1]).list_runs())\n"
             "print(sorted(m for m in ('torch', 'torchvision', 'sklearn') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["AlexNet []", "[]"]
    lr_find = run_module("lr-find", "--help")
    assert lr_find.returncode == 0 and "(default 100;" in lr_find.stdout  # the range test's defaults, torch-free


def test_commands_training_on_a_thread_start_over_with_one_malloc_arena(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`reproduce` and `sweep` replace their process (exec) with the same command line and one malloc arena, once
    (cli/restart.py); a command that trains on the main thread, or `main(argv)` called by code, does not."""
    from caltech_core.cli import restart

    monkeypatch.delenv(settings.MALLOC.name, raising=False)
    monkeypatch.setattr(restart, "_glibc", lambda: True)  # the real check and exec: test_sweeps.py's kill-9 test
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    def execve(path: str, args: list[str], env: dict[str, str]) -> None:
        calls.append((path, args, env))
        raise SystemExit(0)  # exec does not return

    monkeypatch.setattr(restart.os, "execve", execve)
    for command in (["reproduce", "--dry-run"], ["sweep", "list"]):
        monkeypatch.setattr(sys, "argv", ["caltech-studio", *command, "--store", str(tmp_path)])
        with pytest.raises(SystemExit):
            main()
    assert [(path, args) for path, args, _ in calls] == [(sys.executable, [sys.executable, *sys.orig_argv[1:]])] * 2
    assert all(env[settings.MALLOC.name] == settings.ONE_MALLOC_ARENA for _, _, env in calls)

    calls.clear()
    monkeypatch.setattr(sys, "argv", ["caltech-studio", "runs", "--store", str(tmp_path), "--json"])
    assert main() == 0
    assert main(["sweep", "list", "--store", str(tmp_path), "--json"]) == 0
    monkeypatch.setenv(settings.MALLOC.name, settings.ONE_MALLOC_ARENA)  # the process after the exec
    monkeypatch.setattr(sys, "argv", ["caltech-studio", "sweep", "list", "--store", str(tmp_path), "--json"])
    assert main() == 0
    assert calls == []
