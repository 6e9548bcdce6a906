"""Stored runs written where people keep their experiments: TensorBoard event files and an MLflow file store.

TensorBoard (`tensorboard --logdir DIR`): one folder per run, `run-<id>`, with the scalars of every epoch
(`epoch/train_loss`, `epoch/val_acc`, `epoch/lr`, ...; step = epoch) and of every batch (`batch/loss`; step =
the batch's number counted over the whole run), and the HParams plugin's session (the config's settings as
hyperparameters, `hparams/best_val_acc` and `hparams/test_acc` as its metrics).
MLflow (`mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db`): a local store, `DIR/mlflow.db` with the
artifacts in `DIR/artifacts` (MLflow 3 keeps its plain-folder store in maintenance mode and refuses it unless
told otherwise, so the local store is its SQLite one); experiment "caltech-studio", one MLflow run per run with
the config as params, the epoch metrics per step, the final results, the status, and best.pt as an artifact.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from caltech_core import layout
from caltech_core.runs.records import RunRecord
from caltech_core.runs.store import RunStore
from caltech_core.status import RunStatus

FORMATS = ("tensorboard", "mlflow")
EXPERIMENT = "caltech-studio"
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
RESULTS = ("best_val_acc", "test_acc", "mean_class_acc", "retrain_test_acc")


def export_runs(store: RunStore, run_ids: Iterable[int], fmt: str, out: str | Path) -> list[str]:
    """Write each run in `fmt` under `out` (created); returns what was written per run (folder or MLflow id).
    Unknown runs are refused before anything is written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    records = [store.require_run(i) for i in run_ids]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write = _tensorboard if fmt == "tensorboard" else _mlflow
    return [write(store, record, out) for record in records]


def export_zip(store: RunStore, run_ids: Iterable[int], fmt: str) -> bytes:
    """The same export as one ZIP (the pages' download button)."""
    with tempfile.TemporaryDirectory() as tmp:
        export_runs(store, run_ids, fmt, tmp)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(tmp).as_posix())
        return buffer.getvalue()


def hyperparameters(record: RunRecord) -> dict[str, Any]:
    """The run's settings as plain scalars (lists joined with commas, None as "none")."""
    out: dict[str, Any] = {}
    for key, value in record.config.to_dict().items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value)) or "none"
        out[key] = "none" if value is None else value
    return out


def _results(record: RunRecord) -> dict[str, float]:
    results = record.results or {}
    return {k: float(results[k]) for k in RESULTS if results.get(k) is not None}


def _tensorboard(store: RunStore, record: RunRecord, out: Path) -> str:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    folder = out / f"run-{record.id}"
    results = _results(record)
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for row in store.epochs(record.id):
            for key in EPOCH_METRICS:
                if row.get(key) is not None:
                    writer.add_scalar(f"epoch/{key}", row[key], global_step=row["epoch"])
        per_epoch: dict[int, int] = {}
        for row in store.batches(record.id):
            per_epoch[row["epoch"]] = max(per_epoch.get(row["epoch"], 0), row["batch"])
        offsets, total = {}, 0
        for epoch in sorted(per_epoch):
            offsets[epoch], total = total, total + per_epoch[epoch]
        for row in store.batches(record.id):
            writer.add_scalar("batch/loss", row["loss"], global_step=offsets[row["epoch"]] + row["batch"])
        metrics = {f"hparams/{k}": v for k, v in results.items()}
        for summary in hparams(hyperparameters(record), metrics):  # experiment, session start, session end
            writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            writer.add_scalar(key, value)
    finally:
        writer.close()
    return str(folder)


def mlflow_uri(out: str | Path) -> str:
    """The tracking URI of the MLflow store exported to folder `out` (what `mlflow ui --backend-store-uri` takes)."""
    return f"sqlite:///{(Path(out).resolve() / 'mlflow.db').as_posix()}"


def _mlflow(store: RunStore, record: RunRecord, out: Path) -> str:
    from mlflow.entities import Metric, Param
    from mlflow.entities import RunStatus as MlflowStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(out))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        EXPERIMENT, artifact_location=(out.resolve() / "artifacts").as_uri())
    started = int((record.started or record.created) * 1000)
    run = client.create_run(experiment_id, start_time=started, run_name=record.label,
                            tags={"caltech_studio.run_id": str(record.id), "caltech_studio.status": str(record.status),
                                  "mlflow.note.content": record.note or ""})
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in hyperparameters(record).items()]
    metrics = [Metric(f"{key}", float(row[key]), started, int(row["epoch"]))
               for row in store.epochs(record.id) for key in EPOCH_METRICS if row.get(key) is not None]
    metrics += [Metric(key, value, started, 0) for key, value in _results(record).items()]
    for i in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[i:i + 1000], params=params if i == 0 else [])
    best = layout.best(store.run_dir(record.id))
    if best.is_file():
        client.log_artifact(run_id, str(best), artifact_path="model")
    status = {RunStatus.FINISHED: "FINISHED", RunStatus.FAILED: "FAILED", RunStatus.DIVERGED: "FAILED"}.get(
        record.status, "KILLED")
    ended = int((record.finished or record.started or record.created) * 1000)
    client.set_terminated(run_id, MlflowStatus.to_string(getattr(MlflowStatus, status)), end_time=ended)
    return run_id
