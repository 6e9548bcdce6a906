"""Runs that hold a GPU on the Ray backend, on a local cluster of this module's own with 2 fake GPUs (the rest of
the Ray backend: tests/test_ray_backend.py, on a cluster without GPUs, whose workers train run after run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_ray_backend import cluster, tiny, two_at_once  # noqa: F401 (the fixtures, for this module's own cluster)

from caltech_core.config import TrainConfig
from caltech_core.runs.backend import LOCAL_CLUSTER
from caltech_core.runs.raybackend import RayJobManager
from caltech_core.runs.store import RunStore

RAY_GPUS = 2  # read by the `cluster` fixture


def test_runs_on_gpus_get_a_card_each_and_a_worker_process_each(
    cluster: Any, tmp_path: Path, mini_root: Path, tiny: Callable[..., TrainConfig],  # noqa: F811
) -> None:
    """Every run asks for one GPU: two side by side get a card each, and a third, after them, trains in a new
    worker process: CUDA reads which card it may use once per process, so a reused worker would train on its
    first run's card, whichever card Ray assigned."""
    store = RunStore(tmp_path / "home")
    manager = RayJobManager(store, LOCAL_CLUSTER, data_root=mini_root, runner=two_at_once(tmp_path / "gate"))
    first = manager.submit(tiny(name="first"))
    second = manager.submit(tiny(name="second", seed=7))
    assert manager.wait(timeout=300)
    third = manager.submit(tiny(name="third", seed=8))  # the gate is open: it trains alone
    assert manager.wait(timeout=300)
    for run_id in (first, second, third):
        run = store.get_run(run_id)
        assert run.status == "finished", run.error
        assert run.node.startswith("Ray node ") and "GPU" in run.node
    placements = [manager.placement(run_id) for run_id in (first, second, third)]
    assert {placements[0].gpu_ids, placements[1].gpu_ids} == {("0",), ("1",)}
    assert len({placement.pid for placement in placements}) == 3, placements
    manager.shutdown(wait=True)
