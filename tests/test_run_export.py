"""Runs exported to TensorBoard event files and an MLflow file store, read back with their own readers."""

from __future__ import annotations

import io
import zipfile

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from caltech_core import layout
from caltech_core.cli.app import main
from caltech_core.runs import exporters
from caltech_core.runs.store import RunStore


@pytest.fixture(scope="module")
def store(finished_home):
    return RunStore(finished_home)


def test_tensorboard_scalars_and_hparams(store, tmp_path, capsys):
    assert main(["export", "1", "--format", "tensorboard", "--out", str(tmp_path), "--store", str(store.home)]) == 0
    assert f"tensorboard --logdir {tmp_path}" in capsys.readouterr().out
    events = EventAccumulator(str(tmp_path / "run-1"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    epochs, batches = store.epochs(1), store.batches(1)
    val = events.Scalars("epoch/val_acc")
    assert [e.step for e in val] == [r["epoch"] for r in epochs]
    assert [e.value for e in val] == pytest.approx([r["val_acc"] for r in epochs])
    assert len(events.Scalars("batch/loss")) == len(batches) > 0
    best = events.Scalars("hparams/best_val_acc")[-1].value
    assert best == pytest.approx(store.get_run(1).results["best_val_acc"])
    plugin = events.PluginTagToContent("hparams")  # the HParams plugin's experiment and session summaries
    assert "_hparams_/experiment" in plugin and "_hparams_/session_start_info" in plugin
    assert b"mobilenet_v3_small" in plugin["_hparams_/session_start_info"] and "epoch/lr" in tags["scalars"]


def test_mlflow_params_metrics_and_model(store, tmp_path):
    written = exporters.export_runs(store, [1], "mlflow", tmp_path)
    client = MlflowClient(tracking_uri=exporters.mlflow_uri(tmp_path))
    run = client.get_run(written[0])
    record = store.get_run(1)
    assert run.data.params["arch"] == "mobilenet_v3_small" and run.data.params["lr"] == "0.01"
    assert run.info.status == "FINISHED" and run.data.tags["caltech_studio.run_id"] == "1"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [r["epoch"] for r in store.epochs(1)]
    assert [m.value for m in history] == pytest.approx([r["val_acc"] for r in store.epochs(1)])
    assert run.data.metrics["test_acc"] == pytest.approx(record.results["test_acc"])
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "model")]
    assert artifacts == [f"model/{layout.BEST}"]


def test_zip_and_bad_input(store, capsys):
    with zipfile.ZipFile(io.BytesIO(exporters.export_zip(store, [1], "tensorboard"))) as archive:
        assert any(name.startswith("run-1/events.out.tfevents") for name in archive.namelist())
    assert main(["export", "1", "99", "--format", "mlflow", "--out", "x", "--store", str(store.home)]) == 1
    assert "run 99 does not exist" in capsys.readouterr().err
    assert main(["export", "1", "2", "--format", "onnx", "--out", "x", "--store", str(store.home)]) == 2
