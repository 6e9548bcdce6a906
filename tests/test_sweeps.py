"""Sweeps: the spec is checked before anything is stored; a 6-trial random sweep of a tiny network prunes its
absurd-learning-rate trials, survives kill -9 and, resumed, runs every trial exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from caltech_core import layout, settings
from caltech_core.cli.app import main
from caltech_core.config import ConfigError
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.sweeps import driver
from caltech_core.sweeps import sweep as sweeps
from caltech_core.sweeps.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent
# Four epochs: a trial pruned on its first epoch's report is cancelled while its later epochs train.
TINY_BASE = {"arch": "mobilenet_v3_small", "image_size": 64, "epochs": 4, "batch_size": 8, "device": "cpu",
             "optimizer": "adamw"}
ABSURD_LR = 0.5  # AdamW at 0.5: a finite but enormous validation loss (about 1e22) from epoch 1 on
SPEC = {"method": "random", "run_cap": 6, "seed": 3, "metric": {"name": "val_loss", "goal": "minimize"},
        "parameters": {"lr": {"values": [0.001, 0.003, ABSURD_LR]}},
        "early_terminate": {"type": "median", "startup": 2}, "base": TINY_BASE}


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"parameters": {"lrr": {"values": [0.1]}}}, "parameters.lrr", "unknown setting"),
    ({"parameters": {"lr": {"values": []}}}, "parameters.lr", "non-empty list"),
    ({"parameters": {"lr": {"min": 0.1, "max": 0.1}}}, "parameters.lr", "is empty"),
    ({"parameters": {"lr": {"min": 0.1, "max": 0.01}}}, "parameters.lr", "greater than max"),
    ({"parameters": {"momentum": {"min": 0.0, "max": 0.9, "distribution": "log_uniform_values"}}},
     "parameters.momentum", "above 0"),
    ({"run_cap": 0}, "run_cap", "more than 0"),
    ({"run_cap": None, "budget_minutes": 0}, "budget_minutes", "more than 0"),
    ({"parameters": {"arch": {"values": ["alexnet", "resnet9"]}}}, "parameters.arch", "'resnet9' is refused"),
    ({"parameters": {"epochs": {"min": 1.5, "max": 3.0}}}, "parameters.epochs", "whole-number"),
    ({"method": "hyperopt"}, "method", "grid, random, bayes"),
    ({"early_terminate": {"type": "median", "min_iter": 0}}, "early_terminate.min_iter", "from 1"),
])
def test_bad_specs_name_the_parameter_and_store_nothing(tmp_path, change, field, words):
    data = {k: v for k, v in {**SPEC, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=words) as caught:
        sweeps.create_sweep(tmp_path, data)
    assert caught.value.field == field
    assert not layout.sweeps_dir(tmp_path).exists()


def test_spec_reads_wandb_ranges():
    spec = parse_spec({"method": "bayes", "run_cap": 3, "parameters": {
        "lr": {"min": -9.2, "max": -2.3, "distribution": "log_uniform"},
        "epochs": {"min": 2, "max": 4}, "optimizer": {"value": "sgd"}}})
    lr, epochs, optimizer = spec.params
    assert lr.log and lr.low == pytest.approx(1e-4, rel=0.05) and lr.high == pytest.approx(0.1, rel=0.05)
    assert epochs.distribution == "int_uniform" and epochs.grid_values() == [2, 3, 4]
    assert optimizer.values == ("sgd",) and spec.metric == "val_acc" and spec.goal == "maximize"


@pytest.mark.slow
def test_sweep_prunes_and_survives_kill_9(mini_root, tmp_path, wait_until, capsys):
    home = tmp_path / "studio"
    spec_file = tmp_path / "sweep.json"
    spec_file.write_text(json.dumps(SPEC))
    # One torch thread in the child: the test process polls beside it on two cores.
    env = {**{k: v for k, v in os.environ.items() if k != settings.MALLOC.name}, "PYTHONPATH": str(REPO),
           "CALTECH_STUDIO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "caltech_core", "sweep", str(spec_file), "--store", str(home),
                              "--root", str(mini_root)], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=(tmp_path / "sweep.log").open("w"))
    try:
        store: RunStore | None = None

        def third_trial_training() -> bool:
            nonlocal store
            if store is None and layout.database(home).is_file():
                store = RunStore(home)
            return store is not None and any(r.name.endswith("trial 2") and r.status == "running"
                                             for r in store.list_runs())
        wait_until(third_trial_training, timeout=240)
    except AssertionError:
        raise AssertionError((tmp_path / "sweep.log").read_text()[-2000:]) from None
    else:  # its trials train on a worker thread: the command started over with one malloc arena (cli/restart.py)
        environ = Path(f"/proc/{child.pid}/environ").read_bytes().split(b"\0")
        assert f"{settings.MALLOC.name}={settings.ONE_MALLOC_ARENA}".encode() in environ
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed = {r.id: r.status for r in store.list_runs()}
    assert "running" in killed.values()  # the kill hit a run mid-training

    # Resumed in this process, polling the store every 50 ms: a tiny epoch takes a fraction of a second, and the
    # pruner must see the first one before the run has finished the others.
    manager = ThreadJobManager(RunStore(home), data_root=mini_root)
    try:
        assert driver.SweepDriver(sweeps.open_sweep(home, 1), manager, poll=0.05).run() == "finished"
    finally:
        manager.shutdown(wait=True)
    summary = sweeps.summary(sweeps.open_sweep(home, 1), store)
    trials = summary["trials"]
    assert summary["status"] == "finished" and [t["trial"] for t in trials] == list(range(6))
    assert all(len(t["runs"]) == 1 for t in trials)  # every trial once: no run lost, none run twice
    runs = store.list_runs()
    assert len(runs) == 6 and sorted(r.id for r in runs) == sorted(t["runs"][0]["run_id"] for t in trials)
    interrupted = next(i for i, s in killed.items() if s == "running")
    assert store.get_run(interrupted).status in ("finished", "pruned")  # resumed, not started again
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and all(t["params"]["lr"] == ABSURD_LR and t["runs"][0]["status"] == "pruned" for t in pruned)
    for t in pruned:  # a pruned run keeps its curves, and no last.pt (it is not resumable)
        run_id = t["runs"][0]["run_id"]
        assert store.epochs(run_id) and not layout.last(store.run_dir(run_id)).exists()
    assert all(t["state"] == "complete" for t in trials if t["params"]["lr"] != ABSURD_LR)
    assert summary["best"]["params"]["lr"] != ABSURD_LR
    assert main(["sweep", "list", "--store", str(home), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["sweep_id"] == 1 and listed[0]["trials"] == 6 and listed[0]["status"] == "finished"
