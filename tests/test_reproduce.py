"""The study in one command: planning (estimate, budget cut, dedupe), running and resuming without repeats."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from caltech_core.cli.app import main
from caltech_core.config import ConfigError, TrainConfig
from caltech_core.runs.store import RunStore
from caltech_core.runs.threads import ThreadJobManager
from caltech_core.status import RunStatus
from caltech_core.study.matching import distinct_runs
from caltech_core.study.plan import (
    DONE,
    OVER_BUDGET,
    REDUCED,
    TO_RESUME,
    TO_RUN,
    Scale,
    plan_study,
    probe_estimator,
    queue_plan,
    run_plan,
)
from caltech_core.training import engine

# One preset at a tiny scale: more-epochs (LR 1e-2, 5e-2), two runs of a second.
TINY = Scale("tiny", ("more-epochs",), {"arch": "mobilenet_v3_small", "image_size": 64, "epochs": 1,
                                                  "step_size": 1, "batch_size": 8, "device": "cpu"}, repeats=1)


def counting(seconds_per_epoch: float) -> tuple[Callable[[TrainConfig], float], list[TrainConfig]]:
    calls: list[TrainConfig] = []

    def estimate(cfg: TrainConfig) -> float:
        calls.append(cfg)
        return seconds_per_epoch

    return estimate, calls


def test_the_plan_covers_every_preset_once_per_repeat_and_cuts_at_the_budget(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "store")
    estimate, calls = counting(30.0)
    plan = plan_study(store, estimate, scale=REDUCED, repeats=2)
    # baseline == lr-grid's LR 1e-3, more-epochs' LR 1e-2 == step-grid's step 40: each planned once, noted as both.
    assert len(plan.runs) == 2 * 11 and all(r.state == TO_RUN for r in plan.runs)
    assert plan.runs[0].preset == "baseline" and plan.runs[0].also == ["lr-grid"]
    assert [r.repeat for r in plan.runs] == [1] * 11 + [2] * 11  # repeat by repeat
    second = {(r.config.seed, r.config.split_seed) for r in plan.runs if r.repeat == 2}
    assert second == {(43, 43)}  # a new seed and a new split seed
    assert len(calls) == 1  # one model and data shape: timed once
    assert plan.runs[0].seconds == 30 * 30.0 and plan.total_seconds == 2 * (5 * 30 + 6 * 60) * 30.0
    assert all(r.config.image_size == 64 and r.config.max_per_class == 10 for r in plan.runs)

    cut = plan_study(store, estimate, scale=REDUCED, repeats=1, budget_minutes=70)
    # In order: 15 + 15 + 15 + 15 = 60 min fit, the fifth 15-min run does not, nor any 30-min one.
    assert [r.state for r in cut.runs[:5]] == [TO_RUN] * 4 + [OVER_BUDGET]
    assert cut.count(OVER_BUDGET) == 7 and cut.total_seconds == 60 * 60
    assert "7 over the 70-minute budget" in cut.summary()
    with pytest.raises(ConfigError, match="repeats"):
        plan_study(store, estimate, repeats=0)
    with pytest.raises(ConfigError, match="budget"):
        plan_study(store, estimate, budget_minutes=-1)


def test_stored_runs_decide_each_planned_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "store")
    first = plan_study(store, counting(1.0)[0], scale=REDUCED)
    ids = [store.create_run(r.config) for r in first.runs[:5]]
    for run_id, status in zip(ids, ("diverged", "failed", "cancelled", "running", "finished"), strict=True):
        store.set_status(run_id, status)
    store.set_status(store.create_run(first.runs[4].config), "failed")  # a later failure of a finished run
    plan = plan_study(store, counting(1.0)[0], scale=REDUCED)
    assert [(r.state, r.run_id) for r in plan.runs[:5]] == [
        (DONE, ids[0]), (TO_RUN, None), (TO_RESUME, ids[2]), ("queued", ids[3]), (DONE, ids[4])]


def test_full_scale_lists_rows_needing_weights_instead_of_running_them(tmp_path: Path) -> None:
    from caltech_core.nets import models

    plan = plan_study(RunStore(tmp_path / "store"), counting(1.0)[0], scale="full", repeats=1)
    assert {r.preset for r in plan.runs} >= {"baseline", "lr-grid", "retrain", "transfer", "architectures"}
    transfer = next(r for r in plan.runs if r.preset == "transfer")
    if not models.weights_status("alexnet").available:
        assert transfer.state == "needs weights" and "alexnet" in transfer.needs and transfer.seconds == 0
    retrain = next(r for r in plan.runs if r.preset == "retrain")
    assert retrain.seconds == (60 + 120) * 1.0  # the train+val retrain is counted


def later_runs_wait_for_the_shutdown() -> Callable[..., Any]:
    """`engine.train` for the first run; a later one starts only once it is asked to stop (the shutdown), so the
    shutdown finds it unfinished however fast a tiny run trains and however late the test's thread looks."""
    started: list[str] = []

    def runner(cfg: TrainConfig, data: Any, callbacks: Any, **kwargs: Any) -> Any:
        started.append(cfg.name)
        while len(started) > 1 and not callbacks.should_stop():
            time.sleep(0.01)
        return engine.train(cfg, data, callbacks, **kwargs)

    return runner


def test_run_resume_after_a_kill_and_never_repeat(mini_root: Path, tmp_path: Path,
                                                  wait_until: Callable[..., None]) -> None:
    store = RunStore(tmp_path / "store")
    estimate = probe_estimator(mini_root, "cpu")  # the real (brief) measurement of this machine
    plan = plan_study(store, estimate, scale=TINY)
    assert [r.state for r in plan.runs] == [TO_RUN] * 2 and all(r.epoch_seconds > 0 for r in plan.runs)

    manager = ThreadJobManager(store, data_root=mini_root, runner=later_runs_wait_for_the_shutdown())
    first, *_ = queue_plan(plan, manager)
    wait_until(lambda: store.get_run(first).status == RunStatus.FINISHED)
    manager.shutdown(wait=True)  # as a killed `reproduce` leaves them: the others interrupted (resumable)
    states = {r.id: r.status for r in store.list_runs()}
    assert states[first] == RunStatus.FINISHED and RunStatus.INTERRUPTED in states.values()

    again = plan_study(store, estimate, scale=TINY)
    assert [(r.state, r.run_id) for r in again.runs] == [(DONE, first), (TO_RESUME, first + 1)]
    manager = ThreadJobManager(store, data_root=mini_root)
    try:
        report = run_plan(again, manager, data_root=mini_root, out=tmp_path / "report", png=False)
    finally:
        manager.shutdown(wait=True)
    assert report.exists() and "Caltech-101 CNN study" in report.read_text()
    runs = store.list_runs()
    assert len(runs) == 2 and all(r.status == RunStatus.FINISHED for r in runs)  # resumed, none repeated
    assert all(r.state == DONE for r in plan_study(store, estimate, scale=TINY).runs)


def test_a_run_repeating_another_s_seed_and_split_counts_once() -> None:
    cfg = TrainConfig(epochs=2)

    def run(i: int, status: str, **changes: Any) -> Any:
        return SimpleNamespace(id=i, status=RunStatus(status), config=cfg.replace(**changes))

    runs = [run(1, "finished"), run(2, "finished"), run(3, "failed", seed=7), run(4, "finished", seed=7),
            run(5, "finished", seed=8), run(6, "running")]
    assert [r.id for r in distinct_runs(runs)] == [2, 4, 5, 6]  # latest finished of a key; active ones all stay


def test_cli_dry_run_prints_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from caltech_core.study import plan

    monkeypatch.setattr(plan, "probe_estimator", lambda root, device, log: counting(2.0)[0])
    assert main(["reproduce", "--store", str(tmp_path), "--scale", "reduced", "--budget", "20", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "baseline (+lr-grid)" in out and "step_size=45" in out
    assert "reduced scale, 1 repeat(s): 11 runs — 0 done, 11 to run" in out
    assert not list(tmp_path.glob("runs/*"))  # a dry run queues nothing


def test_report_page_plans_and_queues_the_study_once(mini_root: Path, studio_home: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from apptest_pages import open_page, page_texts

    from dashboard import _reproduce

    store = RunStore(studio_home)
    # Queued in the store but never started (AlexNet on the mini tree's classes: only planning and queueing are
    # tested here; test_run_resume_after_a_kill_and_never_repeat trains).
    monkeypatch.setattr(_reproduce, "get_manager", lambda: SimpleNamespace(submit=store.create_run))
    monkeypatch.setenv("CALTECH101_ROOT", str(mini_root))
    monkeypatch.setattr(_reproduce, "_estimator", lambda root: counting(6.0)[0])  # 3 min a 30-epoch run
    at = open_page("report")
    at.selectbox(key="reproduce_scale").set_value("reduced").run()
    at.number_input(key="reproduce_budget").set_value(40.0).run()
    at.button(key="reproduce_plan").click().run()
    assert not at.exception, at.exception
    plan = next(d.value for d in at.dataframe if "minutes" in d.value.columns)
    assert len(plan) == 11 and list(plan["state"]).count("over budget") == 2  # 5 x 3 + 4 x 6 min fit in 40
    assert "11 runs — 0 done, 9 to run (39 min estimated), 2 over the 40-minute budget" in page_texts(at)

    at.button(key="reproduce_go").click().run()
    assert not at.exception, at.exception
    assert any("Queued 9 run(s)" in s.value for s in at.success)
    assert len(store.list_runs()) == 9
    at.run()  # the plan again: queued runs are waited for, not queued twice
    plan = next(d.value for d in at.dataframe if "minutes" in d.value.columns)
    assert list(plan["state"]).count("queued") == 9
    assert "All 9 run(s) left are queued or running" in page_texts(at)
    assert "reproduce_go" not in [b.key for b in at.button]  # nothing to queue twice
    assert len(store.list_runs()) == 9
