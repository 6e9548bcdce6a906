"""Classify page helpers: a webcam snapshot beside the upload box, and a whole folder or ZIP classified into a
CSV. Importing this module changes no Streamlit state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from caltech_core.use import batch, inference


def camera_snapshot() -> list[tuple[str, bytes]]:
    """A webcam picture taken in the browser, as an upload (empty until one is taken)."""
    on = st.toggle("Use the webcam", key="cls_camera_on", help="Take a picture with this computer's camera "
                   "and classify it (the browser asks for permission first).")
    if not on:
        return []
    shot = st.camera_input("Webcam snapshot", key="cls_camera")
    return [("webcam snapshot", shot.getvalue())] if shot is not None else []


def _progress(bar: Any) -> Callable[[int, int], None]:
    """A ProgressFn drawing on a st.progress bar."""
    def update(done: int, total: int) -> None:
        bar.progress(min(done / total, 1.0) if total else 0.0, text=f"Classified {done} of {total} images")
    return update


def batch_section(classifier: inference.Classifier, max_bytes: int) -> None:
    """Classify every image of an uploaded folder or ZIP archive; a table and a CSV download of the top-5."""
    if not st.toggle("Classify a whole folder or ZIP archive", key="cls_batch_on"):
        return
    calibrated = f"calibrated (temperature {classifier.temperature:.2f})" if classifier.temperature != 1.0 \
        else "softmax"
    st.caption(f"Every image's top-5 classes with {calibrated} probabilities, as a table and a CSV file. "
               "Nested folders are fine; files that are not images are skipped and counted.")
    kind = st.radio("Source", ("Folder", "ZIP archive"), horizontal=True, key="cls_batch_kind")
    files, archive = None, None
    if kind == "Folder":
        files = st.file_uploader("A folder of images", accept_multiple_files="directory", key="cls_folder")
    else:
        archive = st.file_uploader("A ZIP archive of images", type=["zip"], key="cls_zip")
    source = "zip" if archive is not None else "folder" if files else None
    if source is None:
        return
    if not st.button("Classify them all", key="cls_batch_go", icon=":material/playlist_play:"):
        return
    bar = st.progress(0.0, text="Starting…")
    try:
        if source == "zip":
            result = batch.classify_zip(classifier, archive.getvalue(), max_bytes=max_bytes, progress=_progress(bar))
        else:
            items = [(f.name, f.getvalue()) for f in files]
            result = batch.classify_files(classifier, items, total=sum(batch.is_image_name(n) for n, _ in items),
                                          max_bytes=max_bytes, progress=_progress(bar))
    except batch.BatchError as exc:
        bar.empty()
        st.error(f"{archive.name}: {exc}")
        return
    bar.empty()
    (st.success if result.rows else st.warning)(result.summary())
    if result.rows:
        st.dataframe(result.rows, hide_index=True, width="stretch", key="cls_batch_table")
        st.download_button("Download CSV", batch.to_csv(result), file_name="predictions.csv", mime="text/csv",
                           key="cls_batch_csv", icon=":material/download:")
