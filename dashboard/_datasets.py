"""Datasets beside Caltech-101 on the pages: the Data page's picker, add-by-path and ZIP upload, a dataset's
classes, splits and samples, the health check with its duplicate thumbnails and exclude marks; the Train form's
dataset field; the Report page's best runs of other datasets. Not a page: importing it changes no state.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from caltech_core.config import Setting
from caltech_core.data import dataset, health, overrides, registry
from caltech_core.runs.store import RunRecord
from caltech_core.status import RunStatus
from caltech_core.study import charts
from dashboard._shared import background, data_root, get_store

ACTIVE = "active_dataset"  # session key: the dataset chosen on the Data page ("" = Caltech-101)
PICK = "pick_dataset"  # session key: a dataset the picker shows at its next drawing (one just added)
MAX_UPLOAD_MB = 200
HEALTH_ASKED = "health_asked"  # session key: {dataset id: when its check was asked for} (one task each)
SHOWN_PAIRS = 24  # duplicate pairs drawn with thumbnails (the table lists all)


def entries() -> dict[str, registry.DatasetEntry]:
    try:
        return registry.load_all(get_store().home)
    except ValueError as exc:  # a damaged registry file: say so, keep the pages usable for Caltech-101
        st.error(str(exc))
        return {}


def label_of(dataset_id: str) -> str:
    if not dataset_id:
        return f"{registry.CALTECH_NAME} (the study's dataset)"
    entry = entries().get(dataset_id)
    return f"{entry.name} ({entry.files} images, {len(entry.classes)} classes)" if entry else dataset_id


def picker() -> str:
    """The active dataset (Caltech-101 or a registered one); the Train form starts from it."""
    options = ["", *entries()]
    if PICK in st.session_state or "dataset_picker" not in st.session_state:  # just added, or back on the page
        current = st.session_state.pop(PICK, st.session_state.get(ACTIVE, ""))
        st.session_state["dataset_picker"] = current if current in options else ""
    chosen = st.selectbox("Dataset", options, format_func=label_of, key="dataset_picker",
                          help="The Train form uses the dataset chosen here; Caltech-101 is the default.")
    st.session_state[ACTIVE] = chosen
    return chosen


def add_form() -> None:
    """Add a folder by its path, or a small ZIP of one."""
    with st.expander("Add a dataset: a folder of class sub-folders", icon=":material/create_new_folder:",
                     expanded=not entries()):
        st.caption("`ROOT/<class>/**/*.jpg` (any depth, any image extension), `ROOT/{train,val,test}/<class>/…` "
                   "(its splits are used), or a CSV of `path,label[,split]`. Without given splits each class is "
                   "split 60/20/20 (seeded by the split seed). The folder is only read, never changed.")
        by_path, by_zip = st.tabs(["By path", "ZIP upload"])
        with by_path:
            path = st.text_input("Folder or CSV path", key="add_path")
            name = st.text_input("Name (default: the folder's name)", key="add_name")
            if st.button("Add dataset", key="add_dataset", icon=":material/add:", disabled=not path.strip()):
                _added(lambda: registry.add(get_store().home, path.strip(), name.strip() or None))
        with by_zip:
            upload = st.file_uploader(f"ZIP of class folders (up to {MAX_UPLOAD_MB} MB)", type=["zip"],
                                      key="add_zip")
            zip_name = st.text_input("Name", key="zip_name")
            if st.button("Unpack and add", key="add_zip_button", disabled=upload is None or not zip_name.strip()):
                if upload.size > MAX_UPLOAD_MB * 2**20:
                    st.error(f"The ZIP is over {MAX_UPLOAD_MB} MB: unpack it yourself and add the folder by path.")
                else:
                    _added(lambda: registry.add_zip(get_store().home, upload.getvalue(), zip_name.strip()))


def _added(adding: Any) -> None:
    try:
        entry, listing = adding()
    except ValueError as exc:  # FolderError, a taken name, a hostile ZIP: the message says what to do
        st.error(str(exc))
        return
    st.session_state[PICK] = entry.id
    st.session_state["dataset_added"] = (entry.name, len(listing.items), len(listing.skipped))
    st.rerun()


def added_message() -> None:
    if "dataset_added" in st.session_state:
        name, n, skipped = st.session_state.pop("dataset_added")
        st.success(f"Added {name}: {n} images" + (f"; {skipped} file(s) skipped (listed below)" if skipped else ""))


def overview(entry: registry.DatasetEntry) -> dataset.Splits | None:
    """Where it is, whether it changed, classes, split table, histogram; returns its default splits."""
    st.caption(f"`{entry.path}` · {entry.kind} · id `{entry.id}`")
    if change := registry.changes(entry):
        st.warning(f"The dataset changed since it was added: {change}. Runs record the files they trained on; "
                   "add the folder again to refresh its entry.")
    try:
        splits = dataset.load_folder_splits(entry.path)
    except (ValueError, FileNotFoundError) as exc:  # SplitError, FolderError: named class, what to do
        st.error(str(exc))
        return None
    left, right = st.columns([1, 2])
    with left:
        st.subheader("Splits")
        st.dataframe(pd.DataFrame({"split": ["train", "val", "test"],
                                   "images": [len(splits.train), len(splits.val), len(splits.test)]}),
                     hide_index=True, width="stretch")
        st.caption({"random": "No splits given: each class split 60/20/20 with the split seed (42 here).",
                    "split": "Splits from the folder's train/val/test (validation drawn from train if missing).",
                    }.get(splits.protocol, splits.protocol))
        st.metric("Classes", splits.num_classes)
    with right:
        counts = Counter(splits.classes[s.label] for s in (*splits.train, *splits.val, *splits.test))
        st.plotly_chart(charts.class_counts_figure({c: counts[c] for c in splits.classes}), key="ds_counts")
    if splits.skipped:
        with st.expander(f"{len(splits.skipped)} file(s) skipped while reading the folder"):
            st.dataframe(pd.DataFrame([s.to_dict() for s in splits.skipped]), hide_index=True, width="stretch")
    return splits


def samples(splits: dataset.Splits) -> None:
    """Twelve images of a chosen class and split."""
    st.subheader("Sample images")
    col_class, col_split = st.columns([2, 1])
    chosen = col_class.selectbox("Class", splits.classes, key="ds_class")
    split_name = col_split.radio("Split", ["train", "val", "test"], horizontal=True, key="ds_split")
    paths = dataset.sample_paths(splits, chosen, 12, split=split_name)
    if not paths:
        st.info(f"No {split_name} images of {chosen}.")
    for start in range(0, len(paths), 6):
        for col, path in zip(st.columns(6), paths[start:start + 6], strict=False):
            col.image(str(path), caption=path.name, width="stretch")


# -- health check -----------------------------------------------------------------------------------------


def health_check(dataset_id: str) -> None:
    """The check's button (or its stored result), its numbers, the duplicate pairs and the exclude marks."""
    st.subheader("Health check")
    store = get_store()
    key = dataset_id or registry.CALTECH_ID
    report = health.last_report(store.home, key)
    asked: dict[str, float] = st.session_state.setdefault(HEALTH_ASKED, {})
    if st.button("Check again" if report else "Run the health check", key="health_run",
                 icon=":material/health_and_safety:"):
        asked[key] = time.time()  # a new background task: a check again reads the files as they are now
    if key in asked:
        home, cache = store.home, store.cache_dir
        done = background(f"health:{home}:{key}:{asked[key]}", lambda progress: health.check_dataset(
            home, key, cache, refresh=True, progress=progress), "Checking images (3 passes)")
        if done is None:
            return
        report = done
    if report is None:
        st.caption("Finds unreadable, tiny and duplicate images, train/test leakage and label conflicts. Nothing "
                   "in the folder is changed.")
        marks_table(key)  # marks made on the Errors page exist without a health check
        return
    _numbers(report)
    _duplicates(report, key)
    marks_table(key)


def _numbers(report: dict[str, Any]) -> None:
    ex, near, imb = report["exact"], report["near"], report["imbalance"]
    cols = st.columns(5)
    cols[0].metric("Unreadable", len(report["unreadable"]))
    cols[1].metric(f"Under {health.MIN_SIDE} px", len(report["small"]))
    cols[2].metric("Exact duplicate pairs", ex["pairs"], help="Same bytes (SHA-1).")
    cols[3].metric("Near duplicate pairs", near["pairs"], help=f"pHash within {near['max_distance']} bits.")
    cols[4].metric("Largest / smallest class", imb["max_min_ratio"])
    rows = [{"pairs": k, "within a class": d["within_class"], "label conflicts": d["label_conflict"],
             "across splits (leakage)": d["leakage"], "train/val vs test": d["train_test"]}
            for k, d in (("exact", ex), ("near", near))]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption(" · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in report["shares"].items())
               + f" · classes under {imb['few_images']} images: {', '.join(imb['small_classes']) or 'none'}"
               + f" · checked in {report['seconds']} s")
    if report["unreadable"]:
        with st.expander(f"{len(report['unreadable'])} unreadable file(s) (left out of training)"):
            st.dataframe(pd.DataFrame(report["unreadable"]), hide_index=True, width="stretch")
    if report["small"]:
        with st.expander(f"{len(report['small'])} image(s) under {health.MIN_SIDE} px"):
            st.dataframe(pd.DataFrame(report["small"]), hide_index=True, width="stretch")


def _duplicates(report: dict[str, Any], dataset_id: str) -> None:
    """Duplicate pairs of one kind, with thumbnails, and a button excluding one file of each (the train/val copy
    of a pair that leaks into test)."""
    kinds = {"train_test": "train/val vs test (leakage into the test score)", "label_conflict":
             "label conflicts (same picture, two classes)", "leakage": "across splits", "within_class":
             "within a class"}
    kind = st.radio("Duplicates to show", list(kinds), format_func=kinds.get, horizontal=True, key="dup_kind")
    pairs = [p for sec in ("exact", "near") for p in report[sec]["list"] if kind in p["kinds"]]
    if not pairs:
        st.caption("None found.")
        return
    st.dataframe(pd.DataFrame([{"a": p["a"]["path"], "a class": p["a"]["label"], "a split": p["a"]["split"],
                                "b": p["b"]["path"], "b class": p["b"]["label"], "b split": p["b"]["split"],
                                "bits apart": p["distance"]} for p in pairs]), hide_index=True, width="stretch")
    for start in range(0, min(len(pairs), SHOWN_PAIRS), 3):
        for col, pair in zip(st.columns(3), pairs[start:start + 3], strict=False):
            left, right = col.columns(2)
            for side, slot in (("a", left), ("b", right)):
                item = pair[side]
                if Path(item["path"]).is_file():  # the folder may have changed since the check
                    slot.image(item["path"], caption=f"{item['label']} · {item['split']}", width="stretch")
                else:
                    slot.caption(f"{Path(item['path']).name}: gone since the check")
    victims = health.paths_of(report, kind)
    if st.button(f"Exclude one file of each pair ({len(victims)} files; the training copy where one is in test)",
                 key="exclude_dups",
                 icon=":material/block:"):
        overrides.mark(get_store().home, dataset_id, list(victims), overrides.EXCLUDE, reason=f"duplicate ({kind})")
        st.rerun()


def marks_table(dataset_id: str) -> None:
    """The dataset's exclude/relabel marks (from the health check and the Errors page): undo some, or change a
    relabel mark's class; marks of files that are gone are flagged (they are not applied)."""
    home = get_store().home
    marks = overrides.marks(home, dataset_id)
    if not marks:
        return
    st.markdown(f"**Marks in force: {len(marks)}** (runs queued from now on leave these files out or relabel them "
                "in training and validation; in test only when a run is asked to)")
    gone = set(overrides.missing(home, dataset_id))
    if gone:
        st.warning(f"{len(gone)} marked file(s) no longer exist: their marks are not applied (undo them).",
                   icon=":material/warning:")
    classes = sorted({m["label"] for m in marks if m.get("label")} | set(_classes(dataset_id)))
    table = pd.DataFrame([{"undo": False, "file": m["path"], "action": m["action"], "class": m.get("label") or "",
                           "file gone": m["path"] in gone, "reason": m.get("reason", "")} for m in marks])
    edited = st.data_editor(table, hide_index=True, width="stretch", key="marks_editor",
                            disabled=["file", "action", "file gone", "reason"],
                            column_config={"class": st.column_config.SelectboxColumn(
                                "class", options=["", *classes], help="A relabel mark's new class")})
    chosen = edited.loc[edited["undo"], "file"].tolist()
    changed = [(path, label) for path, action, label, old in zip(edited["file"], edited["action"], edited["class"],
                                                                  marks, strict=True)
               if action == overrides.RELABEL and label and label != old.get("label")]
    undo, save = st.columns(2)
    if undo.button(f"Undo {len(chosen)} mark(s)", key="undo_marks", disabled=not chosen):
        overrides.undo(home, dataset_id, chosen)
        st.rerun()
    if save.button(f"Save {len(changed)} new class(es)", key="save_marks", disabled=not changed):
        for path, label in changed:
            overrides.mark(home, dataset_id, [path], overrides.RELABEL, label=label, reason="changed on the Data page")
        st.rerun()


def _classes(dataset_id: str) -> list[str]:
    """The dataset's classes (Caltech-101's from its split files; none when it cannot be read)."""
    if dataset_id != registry.CALTECH_ID:
        return class_names(dataset_id)
    try:
        return dataset.load_splits(data_root()).classes
    except (ValueError, OSError):  # no Caltech-101 here: the marks' own classes only
        return []


def folder_page(dataset_id: str) -> None:
    """The Data page for a registered dataset (Caltech-101 keeps its own)."""
    entry = entries().get(dataset_id)
    if entry is None:
        st.error(f"Dataset {dataset_id!r} is not registered any more.")
        return
    splits = overview(entry)
    if splits is not None:
        samples(splits)
    health_check(dataset_id)


# -- other pages -------------------------------------------------------------------------------------------


def dataset_field(setting: Setting) -> None:
    """The Train form's dataset: a choice among the registered ones, starting from the Data page's active one."""
    key = "f_" + setting.name
    options = ["", *entries()]
    if ACTIVE in st.session_state and st.session_state.pop("active_applied", None) != st.session_state[ACTIVE]:
        st.session_state[key] = st.session_state[ACTIVE]
    st.session_state["active_applied"] = st.session_state.get(ACTIVE, "")
    if st.session_state.get(key) not in options:
        options.append(st.session_state.get(key, ""))  # a run's dataset that was removed: keep it visible
    st.selectbox(setting.label, options, key=key, format_func=label_of, help=setting.help_text)


def class_names(dataset_id: str) -> list[str]:
    """The classes of a registered dataset (for the Train form's class picker)."""
    entry = entries().get(dataset_id)
    return list(entry.classes) if entry else []


def dataset_of(record: RunRecord) -> str:
    """A run's dataset as a column says it."""
    return (record.results.get("dataset") or {}).get("name") or (
        registry.CALTECH_NAME if not record.config.dataset else record.config.dataset)


def mixed_datasets_warning(records: list[RunRecord]) -> None:
    """Compare: a warning when the runs trained on different datasets (their accuracies are not comparable)."""
    names = sorted({dataset_of(r) for r in records})
    if len(names) > 1:
        st.warning(f"These runs trained on different datasets ({', '.join(names)}): their accuracies are not "
                   "comparable.", icon=":material/warning:")


def other_datasets_summary(runs: list[RunRecord]) -> None:
    """The Report page for runs of other datasets: the best finished runs of each (no study to compare with);
    and how many Caltech-101 runs left files out by the dataset's marks."""
    marked = [r for r in runs if not r.config.dataset and marks_of(r)]
    if marked:
        listed = "; ".join(f"{r.label}: {marks_of(r)}" for r in marked[:10]) + ("; …" if len(marked) > 10 else "")
        st.caption(f"{len(marked)} Caltech-101 run(s) trained with the dataset's marks (Data and Errors pages), "
                   f"which the study did not have — {listed}.")
    done = [r for r in runs if r.config.dataset and r.status == RunStatus.FINISHED]
    if not done:
        return
    st.header("Other datasets: best runs")
    st.caption("The study's report above reads Caltech-101 runs only; these are the best finished runs of every "
               "other dataset, by validation accuracy.")
    rows = []
    for r in sorted(done, key=lambda r: (dataset_of(r), -(r.best_val_acc or 0))):
        ds = r.results.get("dataset") or {}
        rows.append({"dataset": dataset_of(r), "run": r.label, "arch": r.arch, "val acc": r.best_val_acc,
                     "test acc": r.test_acc, "excluded files": ds.get("excluded", 0),
                     "labels changed": ds.get("relabelled", 0), "epochs": r.epochs_done})
    table = pd.DataFrame(rows).groupby("dataset").head(5)
    st.dataframe(table, hide_index=True, width="stretch")


def marks_of(record: RunRecord) -> str:
    """What the dataset's marks changed in a run, in words ("3 labels changed, 1 file excluded"); "" if nothing."""
    source = record.results.get("dataset") or {}
    parts = [f"{n} label{'s' * (n != 1)} changed" for n in [source.get("relabelled", 0)] if n]
    parts += [f"{n} file{'s' * (n != 1)} excluded" for n in [source.get("excluded", 0)] if n]
    if parts and record.config.marks_on_test:
        parts.append("test split marked too")
    return ", ".join(parts)


def dataset_note(record: RunRecord) -> None:
    """Monitor: the run's dataset, its excluded files, and a warning when a folder changed since the run."""
    source = record.results.get("dataset") or {}
    marks = ", ".join(f"{source[k]} {k}" for k in ("excluded", "relabelled") if source.get(k))
    st.caption(f"Dataset: {dataset_of(record)}" + (f" ({marks} by the dataset's marks)" if marks else ""))
    if record.config.dataset and source.get("fingerprint") and (change := registry.changes(source)):
        st.warning(f"The dataset changed since this run trained: {change}. The run keeps its own classes.",
                   icon=":material/warning:")
