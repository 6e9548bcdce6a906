"""Download runs as TensorBoard event files or an MLflow store (a ZIP), for Monitor and Compare."""

from __future__ import annotations

import streamlit as st

from caltech_core.runs import exporters
from caltech_core.runs.store import RunStore


def tracking_downloads(store: RunStore, run_ids: list[int], key: str) -> None:
    """An expander: pick TensorBoard or MLflow, prepare the ZIP of `run_ids`, download it."""
    if not run_ids:
        return
    with st.expander("Export to TensorBoard / MLflow"):
        fmt = st.radio("Format", list(exporters.FORMATS), horizontal=True, key=f"{key}_tracking_format",
                       format_func={"tensorboard": "TensorBoard event files", "mlflow": "MLflow store"}.get)
        view = "tensorboard --logdir DIR" if fmt == "tensorboard" else \
            "mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db"
        st.caption(f"{len(run_ids)} run(s): curves per epoch and batch, settings and results. Unzip into DIR, "
                   f"then run `{view}`.")
        if st.button("Prepare download", key=f"{key}_tracking_prepare", icon=":material/package_2:"):
            with st.spinner(f"Writing {len(run_ids)} run(s) for {fmt}…"):
                st.session_state[f"{key}_tracking"] = (tuple(run_ids), fmt,
                                                       exporters.export_zip(store, run_ids, fmt))
        ready = st.session_state.get(f"{key}_tracking")
        if ready and ready[:2] == (tuple(run_ids), fmt):
            st.download_button(f"Download {fmt}.zip", ready[2], file_name=f"runs-{fmt}.zip",
                               mime="application/zip", key=f"{key}_tracking_download", icon=":material/download:")
