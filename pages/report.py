"""Report: the study's tables and figures rebuilt from the run store, with a zip export.

Every table shows how many runs and seeds stand behind each number and the study's own value beside it.
Experiments without runs say so and offer a button that queues their preset.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from caltech_core.experiments import PRESETS, submit_preset
from caltech_core.report import build_report, export_zip
from pages._auth import require_password
from pages._shared import data_root, get_manager, get_store

require_password()  # also when Streamlit runs this page without the entry point (AppTest, first visit)
st.title("Study report")
st.caption(
    "Rebuilt from every run in the store. A run counts for an experiment when its configuration matches "
    "(or it belongs to the experiment's preset group). Numbers are mean ± standard deviation over finished "
    "runs; '—' means no value — nothing is filled in."
)

store = get_store()
report = build_report(store, data_root())

missing = report.missing_presets
if missing:
    st.info(f"{len(missing)} experiment(s) have no runs yet: {', '.join(missing)}.")

col_export, _ = st.columns([1, 3])
with col_export:
    if st.button("Prepare download (report.md + figures, zip)", help="PNG figures need kaleido and Chrome"):
        with st.spinner("Exporting figures…"):
            st.session_state["report_zip"] = export_zip(report)
    if "report_zip" in st.session_state:
        st.download_button(
            "Download report.zip", st.session_state["report_zip"], file_name="caltech101-report.zip",
            mime="application/zip",
        )

for section in report.sections:
    st.header(f"{section.item}: {section.title}")
    if section.missing:
        st.warning(section.message)
        if section.preset:
            preset = PRESETS[section.preset]
            st.caption(f"{preset.title}: {preset.description} ({len(preset.configs)} run(s))")
            if st.button(f"Queue preset '{section.preset}'", key=f"queue-{section.key}"):
                ids = submit_preset(get_manager(), section.preset)
                st.success(f"Queued runs {', '.join(f'#{i}' for i in ids)}; follow them on the Runs page.")
    if section.rows:
        st.dataframe(pd.DataFrame(section.rows, columns=section.columns), hide_index=True, width="stretch")
    for key, fig in section.figures.items():
        st.plotly_chart(fig, key=f"{section.key}-{key}")
    for note in section.notes:
        st.caption(note)
