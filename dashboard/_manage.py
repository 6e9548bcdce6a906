"""Run management controls shared by Monitor and Compare: tag filter, rename / tags / note, load settings into
the Train form (clone, retry), delete one or several runs (always behind a confirmation, never while active)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from caltech_core import status as run_status
from caltech_core.config import ConfigError
from caltech_core.runs import editing
from caltech_core.runs.store import RunNotFoundError, RunRecord, RunStore

TRAIN_FROM = "train_from"  # session key: a config (dict) the Train page loads into its form once


def tag_filter(store: RunStore, runs: list[RunRecord], key: str) -> list[RunRecord]:
    """A tag multiselect (shown when any run has tags); the runs carrying every chosen tag."""
    tags = store.tags()
    if not tags:
        return runs
    chosen = st.multiselect("Tags (runs with all of them)", tags, key=key)
    return [r for r in runs if set(chosen) <= set(r.tags)]


def load_into_train_form(cfg_dict: dict[str, Any]) -> None:
    st.session_state[TRAIN_FROM] = cfg_dict
    st.switch_page("dashboard/train.py")


def manage_run(store: RunStore, rec: RunRecord) -> None:
    """Rename, tag, annotate, clone, retry and delete one run."""
    if rec.tags or rec.note:
        st.caption(" · ".join(filter(None, [f"Tags: {', '.join(rec.tags)}" if rec.tags else "",
                                            f"Note: {rec.note}" if rec.note else ""])))
    with st.expander("Manage this run", icon=":material/edit_note:"):
        _edit(store, rec)
        _clone_and_retry(rec)
        _delete_one(store, rec)


def _edit(store: RunStore, rec: RunRecord) -> None:
    left, right = st.columns(2)
    name = left.text_input("Name", value=rec.name, key=f"name-{rec.id}", max_chars=200)
    tags = right.multiselect("Tags", sorted({*store.tags(), *rec.tags}), default=list(rec.tags),
                             key=f"tags-{rec.id}", accept_new_options=True,
                             help="Pick a tag or type a new one; filter by tag on Monitor and Compare.")
    note = st.text_area("Note", value=rec.note, key=f"note-{rec.id}", height=80)
    if st.button("Save name, tags and note", key=f"save-{rec.id}", icon=":material/save:"):
        try:
            editing.edit_run(store, rec.id, name=name, tags=tags, note=note)
        except (ConfigError, ValueError) as exc:
            st.error(str(exc))
        else:
            st.toast(f"Saved run #{rec.id}")
            st.rerun()


def _clone_and_retry(rec: RunRecord) -> None:
    clone, retry = st.columns(2)
    if clone.button("Load settings into the Train form", key=f"clone-{rec.id}", icon=":material/content_copy:",
                    help="Opens the Train page with this run's settings, to change and queue."):
        load_into_train_form(rec.config.to_dict())
    if rec.status in run_status.RETRYABLE and retry.button(
        f"Retry this {rec.status} run with edited settings", key=f"retry-{rec.id}", icon=":material/replay:",
        help="Opens the Train page with its settings (named as a retry); edit them (e.g. a lower learning "
             "rate) and queue a new run.",
    ):
        load_into_train_form(rec.config.replace(name=f"retry of #{rec.id} {rec.name}".strip()[:200]).to_dict())


def _delete_one(store: RunStore, rec: RunRecord) -> None:
    active = rec.status in run_status.ACTIVE
    sure = st.checkbox(f"Yes, delete run #{rec.id} with its metrics and files", key=f"sure-{rec.id}",
                       disabled=active, help="Cancel it first." if active else None)
    if st.button("Delete run", key=f"delete-{rec.id}", icon=":material/delete:", type="primary",
                 disabled=active or not sure):
        _delete(store, [rec.id])


def delete_many(store: RunStore, runs: list[RunRecord]) -> None:
    """Pick several finished / stopped runs and delete them after a confirmation."""
    removable = [r for r in runs if r.status not in run_status.ACTIVE]
    if not removable:
        return
    with st.expander("Delete several runs", icon=":material/delete_sweep:"):
        labels = {r.id: r.label for r in removable}
        chosen = st.multiselect("Runs to delete (queued and running runs are not listed)", list(labels),
                                format_func=labels.get, key="delete-many")
        sure = st.checkbox(f"Yes, delete these {len(chosen)} run(s) with their metrics and files",
                           key="delete-many-sure", disabled=not chosen)
        if st.button("Delete selected runs", key="delete-many-go", icon=":material/delete:", type="primary",
                     disabled=not (chosen and sure)):
            _delete(store, chosen)


def _delete(store: RunStore, ids: list[int]) -> None:
    try:
        editing.delete_runs(store, ids)
    except (ValueError, RunNotFoundError) as exc:  # it started, or another session deleted it, meanwhile
        st.error(str(exc))
        return
    st.query_params.pop("run", None)
    for key in ("delete-many", "delete-many-sure"):
        st.session_state.pop(key, None)
    st.toast(f"Deleted {', '.join(f'#{i}' for i in ids)}")
    st.rerun()
