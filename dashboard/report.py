"""Report: the study's tables and figures rebuilt from the run store, a verdict per study number, a zip export.

Every row shows our mean ± standard deviation over repeats beside the study's number, the difference and a
verdict; the summary on top counts the verdicts. Any preset can be queued (with repeats) from its section.
"""

from __future__ import annotations

import hashlib
from functools import partial

import pandas as pd
import streamlit as st

from caltech_core.study.experiments import PRESETS, submit_preset
from caltech_core.study.export import export_zip
from caltech_core.study.report import Report, Section, build_report, compact_rows, summary_lines
from caltech_core.study.verdicts import rule_text
from dashboard._auth import require_password
from dashboard._datasets import other_datasets_summary
from dashboard._reproduce import reproduce_panel
from dashboard._shared import background, data_root, format_seconds, get_manager, get_store


def build() -> Report | None:
    """The report of the store as it is now, built in the background (a full study's runs take seconds); None
    while it builds (its bar is shown). A store whose runs changed (a new epoch, a finished or edited run) gets a
    new report; an unchanged one is shown at once."""
    store, root = get_store(), data_root()
    runs = store.list_runs()
    stamp = hashlib.sha1(repr([(r.id, r.status, r.epochs_done, r.finished, r.name, r.group, r.tags, r.results)
                               for r in runs]).encode()).hexdigest()[:16]
    return background(f"report:{store.home}:{root}:{stamp}", partial(build_report, store, root),
                      "Building the report", wait=1.0)


def summary(report: Report) -> None:
    """How many of the study's numbers are reproduced, higher, lower, at other settings or not run, and the
    compute time."""
    counts = report.summary
    st.subheader(f"Summary: the study's {counts['numbers_total']} experiment numbers")
    cols = st.columns(len(counts["numbers"]) + 1)
    for col, (word, n) in zip(cols, counts["numbers"].items(), strict=False):
        col.metric(word.capitalize(), n)
    cols[-1].metric("Compute time", format_seconds(counts["compute_seconds"]),
                   help=f"{counts['runs']} run(s) in the store")
    st.caption(" ".join(summary_lines(report)[1:]))
    missing = report.missing_presets
    if missing:
        st.info(f"{len(missing)} experiment(s) have no runs yet: {', '.join(missing)}.")


def download_and_repeats(report: Report) -> int:
    """The zip export (report.md and figures) and the repeats box; returns the repeats per queued preset."""
    col_export, col_repeats, _ = st.columns([1, 1, 2])
    repeats = col_repeats.number_input(
        "Repeats per queued preset", min_value=1, max_value=100, value=1, step=1, key="report_repeats",
        help="Each repeat trains with a new seed and a new train/validation split, as the study's 3 runs did.")
    with col_export:
        if st.button("Prepare download (report.md + figures, zip)", help="PNG figures need kaleido and Chrome"):
            st.session_state["report_zip"] = f"report-zip:{report.store_home}:{report.generated}"
        key = st.session_state.get("report_zip")
        if key and (zipped := background(key, lambda progress: export_zip(report), "Exporting figures")):
            st.download_button("Download report.zip", zipped, file_name="caltech101-report.zip",
                               mime="application/zip")
    return repeats


def section(part: Section, repeats: int) -> None:
    """One table or figure of the study: our numbers beside the study's, and a button queueing its preset."""
    st.header(f"{part.item}: {part.title}")
    if part.missing:
        st.warning(part.message)
    if part.preset:
        preset = PRESETS[part.preset]
        st.caption(f"{preset.description} ({len(preset.configs)} run(s))")
        if st.button(f"Queue preset '{part.preset}' × {repeats}", key=f"queue-{part.key}"):
            ids = submit_preset(get_manager(), part.preset, repeats)
            st.success(f"Queued runs {', '.join(f'#{i}' for i in ids)}; follow them on the Monitor page.")
    if part.rows:
        columns, rows = compact_rows(part)
        st.dataframe(pd.DataFrame(rows, columns=columns), hide_index=True, width="stretch")
        if columns != part.columns:
            with st.expander("Details"):
                st.dataframe(pd.DataFrame(part.rows, columns=part.columns), hide_index=True, width="stretch")
    for key, fig in part.figures.items():
        st.plotly_chart(fig, key=f"{part.key}-{key}")
    for note in part.notes:
        st.caption(note)


require_password()  # also when Streamlit runs this page without the entry point (AppTest)
st.title("Study report")
st.caption(
    "Rebuilt from every run in the store. A run counts for an experiment when its configuration matches "
    "(or it belongs to the experiment's preset group). Numbers are mean ± standard deviation over finished "
    f"runs; '—' means no value — nothing is filled in. Verdict: {rule_text()}; not run without runs."
)
report = build()
if report is None:
    st.stop()
summary(report)
reproduce_panel()
repeats = download_and_repeats(report)
for part in report.sections:
    section(part, repeats)
other_datasets_summary(get_store().list_runs())
