"""Monitor: the queue, the running job's progress and live curves, and the results of finished runs."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from caltech_core import layout
from caltech_core import status as run_status
from caltech_core.runs.store import RunRecord
from caltech_core.status import RunStatus
from caltech_core.study import charts
from dashboard._auth import require_password
from dashboard._datasets import dataset_note, dataset_of
from dashboard._manage import delete_many, manage_run, tag_filter
from dashboard._shared import format_seconds, get_manager, get_store, progress_bar, run_label
from dashboard._tracking import tracking_downloads

REFRESH_SECONDS = 2.0


def queue() -> int | None:
    """The queued and running runs as a table; returns the (first) running one."""
    running = manager.running()  # one on the local backend, several side by side on a Ray cluster
    queued = manager.queued()
    if not running and not queued:
        st.info("Nothing is training. Queue a run on the Train page.")
        return None
    rows = []
    for run_id in running + queued:
        rec = store.get_run(run_id)
        if rec is not None:
            rows.append({"run": run_id, "name": rec.name, "architecture": rec.arch, "dataset": dataset_of(rec),
                         "status": rec.status, "epochs": rec.config.epochs, "where": rec.node or rec.device or ""})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    return running[0] if running else None


def runs_with_chosen_tags() -> list[RunRecord]:
    """Every stored run carrying the tags picked in the filter; stops the page when there is none."""
    runs = store.list_runs()
    if not runs:
        st.stop()
    runs = tag_filter(store, runs, key="monitor-tags")
    if not runs:
        st.info("No run has all of these tags.")
        st.stop()
    return runs


def run_picker(runs: list[RunRecord], current: int | None) -> RunRecord:
    """The run to show: the one in the address (?run=), else the running one, else the newest."""
    ids = [r.id for r in runs]
    labels = {r.id: run_label(r) for r in runs}
    wanted = st.query_params.get("run")
    if wanted is not None and wanted.isdigit() and int(wanted) in labels:
        default = int(wanted)
    elif current is not None and current in labels:
        default = current
    else:
        default = ids[0]
    run_id = st.selectbox("Run", ids, index=ids.index(default), format_func=labels.get)
    st.query_params["run"] = str(run_id)
    return store.get_run(run_id)


def live_progress(record: RunRecord) -> None:
    """The job's phase, epoch, batch and ETA (nothing once it is no longer queued or running)."""
    prog = manager.progress(record.id)
    if prog is None:
        return
    epochs = f"epoch {min(prog.epoch + 1, prog.epochs)} of {prog.epochs}" if prog.epochs else ""
    batch = f", batch {prog.batch} of {prog.batches}" if prog.batches else ""
    eta = f" · ETA {format_seconds(prog.eta_seconds)}" if prog.eta_seconds is not None else ""
    progress_bar(prog.phase, prog.phase_done, prog.phase_total, fraction=prog.fraction, detail=f"{epochs}{batch}{eta}")


def actions(record: RunRecord) -> None:
    """Cancel for queued/running runs, resume for cancelled/interrupted ones."""
    if record.status in run_status.ACTIVE:
        if st.button("Cancel run", key=f"cancel-{record.id}", icon=":material/stop_circle:"):
            manager.cancel(record.id)
            st.toast(f"Cancelling run #{record.id}…")
            st.rerun()
    elif record.status in run_status.RESUMABLE and st.button("Resume run", key=f"resume-{record.id}",
                                                            icon=":material/play_circle:"):
        try:
            manager.resume(record.id)
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.rerun()


def curves(record: RunRecord) -> None:
    """Loss, accuracy, learning rate per epoch and the loss of every batch, as stored so far."""
    epochs = store.epochs(record.id)
    batches = store.batches(record.id)
    if not epochs and not batches:
        st.caption("No metrics yet.")
        return
    left, right = st.columns(2)
    left.plotly_chart(charts.loss_figure(epochs), key="loss")
    right.plotly_chart(charts.accuracy_figure(epochs), key="accuracy")
    left, right = st.columns(2)
    left.plotly_chart(charts.lr_figure(epochs), key="lr")
    right.plotly_chart(charts.batch_loss_figure(batches), key="batch_loss")


def live_view(run_id: int) -> None:
    """The run as it stands now: where it trains, progress, buttons, error, curves (redrawn while it is active)."""
    record = store.get_run(run_id)
    st.markdown(f"**{run_label(record)}**")
    if record.node:
        verb = "Trains" if record.status in run_status.ACTIVE else "Trained"
        st.caption(f"{verb} on {record.node}",
                   help="A run of the Ray backend: the node, its GPU and the worker process.")
    live_progress(record)
    actions(record)
    if record.error:
        st.error(record.error)
    curves(record)
    if record.status not in run_status.ACTIVE and st.session_state.get("live_run") == record.id:
        # The run just ended: redraw the whole page once to show its results and stop refreshing.
        st.session_state.pop("live_run", None)
        st.rerun(scope="app")


def watch(record: RunRecord) -> None:
    """`live_view`, refreshed every REFRESH_SECONDS while the run is queued or running."""
    if record.status in run_status.ACTIVE:
        st.session_state["live_run"] = record.id
        st.fragment(run_every=REFRESH_SECONDS)(live_view)(record.id)
    else:
        live_view(record.id)


def results(record: RunRecord) -> None:
    """Test, validation and per-class accuracy, the confusion matrix and a link to the error analysis."""
    res = record.results
    if record.status != RunStatus.FINISHED and res.get("test_acc") is None:
        return
    st.subheader("Results")
    cols = st.columns(4)
    test_acc = res.get("test_acc")
    cols[0].metric("Test accuracy", f"{test_acc:.1%}" if test_acc is not None else "—")
    best = res.get("best_val_acc")
    cols[1].metric("Best validation accuracy", f"{best:.1%}" if best is not None else "—",
                   help=f"epoch {res.get('best_epoch')}" if res.get("best_epoch") else None)
    mean_class = res.get("mean_class_acc")
    cols[2].metric("Mean per-class accuracy", f"{mean_class:.1%}" if mean_class is not None else "—")
    retrain = res.get("retrain_test_acc")
    cols[3].metric("Test after retraining on train+val", f"{retrain:.1%}" if retrain is not None else "—")
    classes = res.get("classes") or []
    per_class = res.get("per_class_acc")
    if per_class:
        st.plotly_chart(charts.per_class_accuracy_figure(per_class, classes or None), key="per_class")
    confusion = res.get("confusion")
    if confusion and classes and len(confusion) == len(classes):
        normalize = st.toggle("Row-normalise the confusion matrix", value=True)
        st.plotly_chart(charts.confusion_figure(confusion, classes, normalize=normalize), key="confusion")
    if record.status == RunStatus.FINISHED:
        st.page_link("dashboard/errors.py", label="Which images does it get wrong? Open the error analysis",
                     icon=":material/error_med:", query_params={"run": str(record.id)})


def export(record: RunRecord) -> None:
    """The best weights as an ONNX or TorchScript zip, checked against PyTorch before the download is offered."""
    if not layout.best(store.run_dir(record.id)).is_file():
        return
    with st.expander("Export the model (ONNX / TorchScript)"):
        from caltech_core.use import export as exporting  # torch and onnx: only when a run has weights

        fmt = st.radio("Format", list(exporting.FORMATS), horizontal=True, key="export_format",
                       format_func={"onnx": "ONNX (onnxruntime, CPU)", "torchscript": "TorchScript"}.get)
        st.caption("A zip with the best weights' model and a JSON of its class names and preprocessing (resize, "
                   "centre crop, normalisation). The export is checked against the PyTorch model before download.")
        if st.button("Prepare download", key="export_prepare", icon=":material/package_2:"):
            with st.spinner(f"Exporting run #{record.id} to {fmt}…"):
                try:
                    st.session_state["export_ready"] = (record.id, fmt, *exporting.export_zip(store, record.id, fmt))
                except exporting.ExportError as exc:
                    st.error(str(exc))
        ready = st.session_state.get("export_ready")
        if ready and ready[:2] == (record.id, fmt):
            st.download_button(f"Download {ready[2]}", ready[3], file_name=ready[2], mime="application/zip",
                               key="export_download", icon=":material/download:")


def files_left_out(record: RunRecord) -> None:
    """The dataset files the run could not use (missing, not images, unreadable)."""
    skipped = record.results.get("skipped") or []
    if not skipped:
        return
    st.warning(f"{len(skipped)} file(s) were left out of this run (missing, not images, or unreadable); "
               "it trained on the rest.", icon=":material/warning:")
    with st.expander("Files left out"):
        st.dataframe(pd.DataFrame(skipped, columns=["path", "reason"]), hide_index=True, width="stretch")


def configuration(record: RunRecord) -> None:
    """The run's settings as JSON, its device and duration."""
    with st.expander("Configuration"):
        st.code(json.dumps(record.config.to_dict(), indent=2), language="json")
        if record.device:
            st.caption(f"Device: {record.device} · duration {format_seconds(record.duration)}")


require_password()  # also when Streamlit runs this page without the entry point (AppTest)
st.title("Monitor")
store = get_store()
manager = get_manager()
current = queue()
runs = runs_with_chosen_tags()
record = run_picker(runs, current)
manage_run(store, record)
delete_many(store, runs)
watch(record)
results(record)
export(record)
tracking_downloads(store, [record.id], "monitor")
files_left_out(record)
dataset_note(record)
configuration(record)
