"""The fix-and-retrain loop on the pages (library: caltech_core/use/fixes.py): a "Fix label" control under each
picture of the suspects and Errors galleries (exclude, or relabel as a class of the run, the suggested one
preselected; undo), the Errors page's "Retrain with these fixes" panel and Compare's before/after table.
Importing this module changes no Streamlit state.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from caltech_core.data import overrides
from caltech_core.use import fixes
from dashboard._shared import get_manager

_QUEUED = "fixes_queued"  # session key: (source id, new id) of the last "retrain with these fixes"


def mark_control(store: Any, record: Any, path: str, given: str, suggested: str, key: str, split: str) -> None:
    """Under one picture: its mark with an Undo button, or a "Fix label" popover (relabel as X / exclude)."""
    current = fixes.run_marks(store.home, record).get(path)
    if current is not None:
        what = ("excluded" if current["action"] == overrides.EXCLUDE
                else f"relabelled as {current.get('label')}")
        st.markdown(f":orange-badge[{what}]")
        if st.button("Undo the mark", key=f"{key}_undo", icon=":material/undo:", type="tertiary"):
            fixes.undo(store.home, record, [path])
            st.rerun()
        return
    classes = list(record.results.get("classes") or [])
    with st.popover("Fix label", icon=":material/edit:", width="stretch", key=f"{key}_pop"):
        st.caption(f"Labelled **{given}**. The image file is not touched: the mark is kept in the store for "
                   "this dataset and applies to runs queued from now on."
                   + (" A test image's mark changes a run's test split only when it is asked to."
                      if split == "test" else ""))
        choices = [c for c in classes if c != given] or classes
        label = st.selectbox("Relabel as", choices, key=f"{key}_label",
                             index=choices.index(suggested) if suggested in choices else 0)
        relabel, exclude = st.columns(2)
        if relabel.button("Relabel", key=f"{key}_relabel", type="primary", disabled=not choices):
            fixes.mark(store.home, record, [path], overrides.RELABEL, label=label,
                       reason=f"run #{record.id}: looked like {suggested}")
            st.rerun()
        if exclude.button("Exclude", key=f"{key}_exclude", icon=":material/block:"):
            fixes.mark(store.home, record, [path], overrides.EXCLUDE, reason=f"run #{record.id}: mislabelled?")
            st.rerun()


def retrain_panel(store: Any, record: Any) -> None:
    """The marks in force for the run's dataset and the button queueing the run again with them."""
    marks = overrides.load(store.home, fixes.dataset_id(record.config))
    queued = st.session_state.get(_QUEUED)
    if queued and queued[0] == record.id:
        st.success(f"Queued run #{queued[1]}, run #{record.id} with these fixes. Watch it on Monitor; once it has "
                   "finished, Compare shows both side by side (before / after).", icon=":material/check:")
    if not len(marks):
        return
    st.subheader("Retrain with these fixes")
    gone = overrides.missing(store.home, fixes.dataset_id(record.config))
    st.caption(f"{len(marks.excluded)} file(s) excluded and {len(marks.relabelled or {})} relabelled in this "
               "dataset (see and undo them on the Data page)"
               + (f"; {len(gone)} marked file(s) no longer exist and are not applied" if gone else "") + ".")
    on_test = st.checkbox("Apply the marks to the test split too", key="fix_on_test",
                          help="Off: the test split keeps its original labels and files, so the two runs' test "
                               "accuracies measure the same thing.")
    if on_test:
        st.warning("Test accuracy will be measured on the marked test labels: it is not comparable with run "
                   f"#{record.id}'s.", icon=":material/warning:")
    else:
        st.caption("Test accuracy will be measured on the untouched test labels: the marks change the training "
                   "and validation splits only.")
    if st.button("Retrain with these fixes", key="fix_retrain", type="primary", icon=":material/replay:"):
        try:
            new_id = fixes.retrain_with_fixes(get_manager(), record.id, marks_on_test=on_test)
        except (fixes.FixError, ValueError) as exc:  # ConfigError is a ValueError too
            st.error(str(exc))
            return
        st.session_state[_QUEUED] = (record.id, new_id)
        st.rerun()


def before_after(store: Any, records: list[Any]) -> None:
    """Compare: each shown run retrained with fixes next to its source (accuracy, ECE, labels changed)."""
    pairs = [rows for r in records if (rows := fixes.before_after(store, r))]
    if not pairs:
        return
    st.subheader("Before / after fixes")
    st.caption("Runs retrained with their dataset's marks (Errors page), next to the run they fixed. With "
               "untouched test labels both test accuracies are measured on the same images and labels.")
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(pd.DataFrame([row for rows in pairs for row in rows]), hide_index=True, width="stretch",
                 key="before_after", column_config=dict.fromkeys(("best val acc", "test acc", "test ECE"), percent))
