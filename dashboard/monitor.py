"""Monitor: the queue, the running job's progress and live curves, and the results of finished runs."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from caltech_core import layout
from caltech_core import status as run_status
from caltech_core.status import RunStatus
from caltech_core.study import charts
from dashboard._auth import require_password
from dashboard._manage import delete_many, manage_run, tag_filter
from dashboard._shared import format_seconds, get_manager, get_store, run_label

REFRESH_SECONDS = 2.0

require_password()  # also when Streamlit runs this page without the entry point (AppTest)
st.title("Monitor")
store = get_store()
manager = get_manager()

# -- the queue -------------------------------------------------------------------------------------------
running = manager.running()  # one on the local backend, several side by side on a Ray cluster
current = running[0] if running else None
queued = manager.queued()
if current is None and not queued:
    st.info("Nothing is training. Queue a run on the Train page.")
else:
    rows = []
    for run_id in running + queued:
        rec = store.get_run(run_id)
        if rec is not None:
            rows.append({"run": run_id, "name": rec.name, "architecture": rec.arch, "status": rec.status,
                         "epochs": rec.config.epochs, "where": rec.node or rec.device or ""})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

runs = store.list_runs()
if not runs:
    st.stop()
runs = tag_filter(store, runs, key="monitor-tags")
if not runs:
    st.info("No run has all of these tags.")
    st.stop()

# -- which run -------------------------------------------------------------------------------------------
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


def _buttons(rec) -> None:
    """Cancel for queued/running runs, resume for cancelled/interrupted ones."""
    if rec.status in run_status.ACTIVE:
        if st.button("Cancel run", key=f"cancel-{rec.id}", icon=":material/stop_circle:"):
            manager.cancel(rec.id)
            st.toast(f"Cancelling run #{rec.id}…")
            st.rerun()
    elif rec.status in run_status.RESUMABLE and st.button("Resume run", key=f"resume-{rec.id}", icon=":material/play_circle:"):
        try:
            manager.resume(rec.id)
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.rerun()


def _progress(rec) -> None:
    prog = manager.progress(rec.id)
    if prog is None:
        return
    done_epochs = f"epoch {min(prog.epoch + 1, prog.epochs)} of {prog.epochs}" if prog.epochs else ""
    batch = f", batch {prog.batch} of {prog.batches}" if prog.batches else ""
    eta = f" · ETA {format_seconds(prog.eta_seconds)}" if prog.eta_seconds is not None else ""
    if prog.phase == run_status.Phase.DOWNLOADING:  # bytes of the ImageNet weights file, before any epoch
        total = f" of {prog.phase_total / 2**20:.1f} MB" if prog.phase_total else " MB"
        fraction = prog.phase_done / prog.phase_total if prog.phase_total else 0.0
        st.progress(min(fraction, 1.0), text=f"downloading weights: {prog.phase_done / 2**20:.1f}{total}")
        return
    st.progress(min(max(prog.fraction, 0.0), 1.0), text=f"{prog.phase.label}: {done_epochs}{batch}{eta}")


def _curves(rec) -> None:
    epochs = store.epochs(rec.id)
    batches = store.batches(rec.id)
    if not epochs and not batches:
        st.caption("No metrics yet.")
        return
    left, right = st.columns(2)
    left.plotly_chart(charts.loss_figure(epochs), key="loss")
    right.plotly_chart(charts.accuracy_figure(epochs), key="accuracy")
    left, right = st.columns(2)
    left.plotly_chart(charts.lr_figure(epochs), key="lr")
    right.plotly_chart(charts.batch_loss_figure(batches), key="batch_loss")


def _live_view() -> None:
    rec = store.get_run(run_id)
    st.markdown(f"**{run_label(rec)}**")
    if rec.node:
        verb = "Trains" if rec.status in run_status.ACTIVE else "Trained"
        st.caption(f"{verb} on {rec.node}", help="A run of the Ray backend: the node, its GPU and the worker process.")
    _progress(rec)
    _buttons(rec)
    if rec.error:
        st.error(rec.error)
    _curves(rec)
    if rec.status not in run_status.ACTIVE and st.session_state.get("live_run") == rec.id:
        # The run just ended: redraw the whole page once to show its results and stop refreshing.
        st.session_state.pop("live_run", None)
        st.rerun(scope="app")


record = store.get_run(run_id)
manage_run(store, record)
delete_many(store, runs)
if record.status in run_status.ACTIVE:
    st.session_state["live_run"] = record.id
    st.fragment(run_every=REFRESH_SECONDS)(_live_view)()
else:
    _live_view()

# -- results -------------------------------------------------------------------------------------------
results = record.results
if record.status == RunStatus.FINISHED or results.get("test_acc") is not None:
    st.subheader("Results")
    cols = st.columns(4)
    test_acc = results.get("test_acc")
    cols[0].metric("Test accuracy", f"{test_acc:.1%}" if test_acc is not None else "—")
    best = results.get("best_val_acc")
    cols[1].metric("Best validation accuracy", f"{best:.1%}" if best is not None else "—",
                   help=f"epoch {results.get('best_epoch')}" if results.get("best_epoch") else None)
    mean_class = results.get("mean_class_acc")
    cols[2].metric("Mean per-class accuracy", f"{mean_class:.1%}" if mean_class is not None else "—")
    retrain = results.get("retrain_test_acc")
    cols[3].metric("Test after retraining on train+val", f"{retrain:.1%}" if retrain is not None else "—")
    classes = results.get("classes") or []
    per_class = results.get("per_class_acc")
    if per_class:
        st.plotly_chart(charts.per_class_accuracy_figure(per_class, classes or None), key="per_class")
    confusion = results.get("confusion")
    if confusion and classes and len(confusion) == len(classes):
        normalize = st.toggle("Row-normalise the confusion matrix", value=True)
        st.plotly_chart(charts.confusion_figure(confusion, classes, normalize=normalize), key="confusion")
    if record.status == RunStatus.FINISHED:
        st.page_link("dashboard/errors.py", label="Which images does it get wrong? Open the error analysis",
                     icon=":material/error_med:", query_params={"run": str(record.id)})

# -- export ----------------------------------------------------------------------------------------------------
if layout.best(store.run_dir(record.id)).is_file():
    with st.expander("Export the model (ONNX / TorchScript)"):
        from caltech_core.use import export

        fmt = st.radio("Format", list(export.FORMATS), horizontal=True, key="export_format",
                       format_func={"onnx": "ONNX (onnxruntime, CPU)", "torchscript": "TorchScript"}.get)
        st.caption("A zip with the best weights' model and a JSON of its class names and preprocessing (resize, "
                   "centre crop, normalisation). The export is checked against the PyTorch model before download.")
        if st.button("Prepare download", key="export_prepare", icon=":material/package_2:"):
            with st.spinner(f"Exporting run #{record.id} to {fmt}…"):
                try:
                    st.session_state["export_ready"] = (record.id, fmt, *export.export_zip(store, record.id, fmt))
                except export.ExportError as exc:
                    st.error(str(exc))
        ready = st.session_state.get("export_ready")
        if ready and ready[:2] == (record.id, fmt):
            st.download_button(f"Download {ready[2]}", ready[3], file_name=ready[2], mime="application/zip",
                               key="export_download", icon=":material/download:")

skipped = results.get("skipped") or []
if skipped:
    st.warning(f"{len(skipped)} file(s) were left out of this run (missing, not images, or unreadable); "
               "it trained on the rest.", icon=":material/warning:")
    with st.expander("Files left out"):
        st.dataframe(pd.DataFrame(skipped, columns=["path", "reason"]), hide_index=True, width="stretch")

with st.expander("Configuration"):
    st.code(json.dumps(record.config.to_dict(), indent=2), language="json")
    if record.device:
        st.caption(f"Device: {record.device} · duration {format_seconds(record.duration)}")
