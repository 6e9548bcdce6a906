"""Errors page view: suspected label errors (cleanlab), ranked, as a table with a CSV and a picture gallery.
Importing this module changes no Streamlit state.

Each picture has a "Fix label" control (dashboard/_fixes.py): exclude it, or relabel it as a class of the run
with the suggested one preselected; the marks go to the dataset's overrides (caltech_core/data/overrides.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageOps

from caltech_core import layout
from caltech_core.background import tasks
from caltech_core.use import suspects
from dashboard._calibration import recompute_button
from dashboard._fixes import mark_control
from dashboard._shared import background

SPLIT_LABELS = {"train": "training", "val": "validation", "test": "test"}
COLUMNS = 4
THUMB = 176


@st.cache_data(max_entries=500, show_spinner=False)
def _thumbnail(path: str, cam_of: str | None, home: str, run_id: int, stamp: float) -> np.ndarray | None:
    """The picture as the network sees it, with Grad-CAM of class `cam_of` over it when asked; None if unreadable."""
    from caltech_core.use.inference import overlay

    try:
        with Image.open(path) as img:
            image = img.convert("RGB")
    except OSError:
        return None
    if cam_of is None:
        return np.asarray(ImageOps.fit(image, (THUMB, THUMB)))
    classifier = _classifier(home, run_id, stamp)
    view = overlay(classifier.model_view(image), classifier.gradcam(image, classifier.class_index(cam_of)))
    return np.asarray(view.resize((THUMB, THUMB), Image.Resampling.BILINEAR))


@st.cache_resource(max_entries=2, show_spinner=False)
def _classifier(home: str, run_id: int, stamp: float) -> Any:
    from caltech_core.runs.store import RunStore
    from caltech_core.use.inference import Classifier

    return Classifier.from_run(RunStore(Path(home)), run_id)


def _report(store: Any, run_id: int, split: str, data_root: Any) -> suspects.SuspectReport | None:
    """The report: at once for validation/test; for training from the cache, else in the background (asked for
    with a button: it reads features of the whole split and fits 5 models)."""
    if split == "train":
        key = f"suspects:{store.home}:{run_id}:train"
        asked = layout.suspects(store.run_dir(run_id), "train").is_file() or tasks().state(key).status != "missing"
        if not asked:
            st.info("The training split's suspects come from a logistic regression cross-validated over 5 folds "
                    "on frozen ImageNet features of the run's architecture (the run itself saw these labels). The "
                    "features are computed once and cached; the work goes on if you leave the page.")
            if not st.button("Find suspects in the training split", key="sus_go", icon=":material/search:"):
                return None
        return background(key, lambda progress: suspects.find_suspects(store, run_id, "train", data_root=data_root,
                                                                        progress=progress),
                          "Cross-validating on the training split (folds)", wait=0.5)
    try:
        return suspects.find_suspects(store, run_id, split)
    except suspects.SuspectsError as exc:
        if "recompute" in str(exc):
            recompute_button(store, run_id, data_root, f"{exc}.", "sus_recompute")
        else:
            st.error(str(exc))
        return None


def suspects_view(store: Any, run_id: int, default_split: str, show_cam: bool, per_page: int,
                  data_root: Any) -> None:
    """Split picker, the count, the ranked table with a CSV download and a paged gallery."""
    split = st.radio("Split", list(SPLIT_LABELS), index=list(SPLIT_LABELS).index(default_split), horizontal=True,
                     format_func=SPLIT_LABELS.get, key="sus_split")
    report = _report(store, run_id, split, data_root)
    if report is None:
        return
    st.metric(f"Suspected label errors in the {SPLIT_LABELS[split]} split", len(report.suspects),
              help=f"Among {report.images} images; probabilities: {report.method}.")
    st.caption(f"cleanlab flags an image when the probabilities disagree with its label beyond its class's usual "
               f"confusion; most suspect first (lowest probability of the given label). Probabilities: "
               f"{report.method}.")
    if not report.suspects:
        st.success("No image of this split looks mislabelled.")
        return
    table = pd.DataFrame([{"rank": i, "file": s.path, "given label": s.given, "suggested label": s.suggested,
                           "confidence": s.confidence, "probability of given label": s.given_prob}
                          for i, s in enumerate(report.suspects, 1)])
    st.dataframe(table, hide_index=True, width="stretch", key="sus_table", column_config={
        "confidence": st.column_config.NumberColumn(format="percent"),
        "probability of given label": st.column_config.NumberColumn(format="percent")})
    st.download_button("Download suspects (CSV)", table.to_csv(index=False).encode(),
                       file_name=f"suspects-run{run_id}-{split}.csv", mime="text/csv", key="sus_csv",
                       icon=":material/download:")
    _gallery(store, run_id, report, show_cam, per_page)


def _gallery(store: Any, run_id: int, report: suspects.SuspectReport, show_cam: bool, per_page: int) -> None:
    pages = math.ceil(len(report.suspects) / per_page)
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, key="sus_page"))
    start = (page - 1) * per_page
    stamp = layout.best(store.run_dir(run_id)).stat().st_mtime
    record = store.get_run(run_id)
    columns = st.columns(COLUMNS)
    for i, s in enumerate(report.suspects[start: start + per_page]):
        with columns[i % COLUMNS]:
            picture = _thumbnail(s.path, s.suggested if show_cam else None, str(store.home), run_id, stamp)
            if picture is None:
                st.warning(f"{Path(s.path).name}: image not available")
            else:
                st.image(picture, width="stretch")
            st.markdown(f"**#{start + i + 1}** labelled **{s.given}** ({s.given_prob:.0%})  \n"
                        f"looks like **{s.suggested}** ({s.confidence:.0%})", help=s.path)
            mark_control(store, record, s.path, s.given, s.suggested, f"sus_{report.split}_{start + i}",
                         report.split)
