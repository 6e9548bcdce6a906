"""Data: where the dataset is, how it is split, how many images each class has, and what they look like."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from caltech_core import settings
from caltech_core.data import dataset
from caltech_core.data.download import download_dataset
from caltech_core.data.scan import dataset_summary, unreadable_images
from caltech_core.runs import editing
from caltech_core.study import charts
from dashboard._auth import require_password
from dashboard._shared import (
    background,
    confined_download_dir,
    data_root,
    default_download_dir,
    get_store,
    missing_data_message,
)


def download() -> None:
    """Where the dataset was looked for, and a button downloading it into an allowed folder."""
    st.warning(missing_data_message())
    st.subheader("Download Caltech-101")
    dest = st.text_input("Download into", value=str(default_download_dir()),
                         help="The folder that will hold 101_ObjectCategories/, train.txt and test.txt.")
    if not st.button("Download dataset", icon=":material/download:"):
        return
    try:
        target = confined_download_dir(dest)
    except ValueError as exc:
        st.error(str(exc))
        return
    bar = st.progress(0.0, text="Connecting…")

    def _progress(done: int, total: int) -> None:
        mb = done / 1e6
        if total:
            bar.progress(min(done / total, 1.0), text=f"{mb:.0f} of {total / 1e6:.0f} MB")
        else:
            bar.progress(0.0, text=f"{mb:.0f} MB downloaded")

    try:
        with st.spinner("Downloading and unpacking…"):
            got = download_dataset(target, progress=_progress)
    except dataset.DatasetNotFoundError as exc:
        bar.empty()
        st.error(f"Download failed; this machine may be offline. {exc}")
    else:
        bar.progress(1.0, text="Done")
        st.success(f"Caltech-101 is ready at {got}. Set {settings.DATASET_ROOT.name}={got} if that is not the default "
                   "folder, then reload.")


def overview(root: Path) -> dict[str, Any]:
    """The dataset's summary without the image scan (splits, classes, split-file problems): quick."""
    try:
        return dataset_summary(root, scan=False)
    except (dataset.DatasetNotFoundError, dataset.SplitError) as exc:
        st.error(str(exc))
        st.stop()


def unreadable(root: Path) -> list[dataset.Skipped] | None:
    """The images that do not decode, from the background scan (None while it runs: its bar is shown).

    The first scan of a store decodes every listed image (about 20 s for Caltech-101 on 2 cores); it is cached
    per file, so later visits only stat the files. The key names the split files' versions, so an edited
    train.txt/test.txt is scanned again.
    """
    cache_dir = get_store().cache_dir
    stamps = [f.stat().st_mtime_ns for f in (root / "train.txt", root / "test.txt") if f.is_file()]
    return background(f"scan:{root}:{cache_dir}:{stamps}", partial(unreadable_images, root, cache_dir),
                      "Checking every image decodes")


def splits_and_classes(summary: dict[str, Any]) -> None:
    """Images per split and per class."""
    left, right = st.columns([1, 2])
    with left:
        st.subheader("Splits")
        splits = summary["splits"]
        st.dataframe(
            pd.DataFrame({"split": list(splits), "images": list(splits.values())}),
            hide_index=True, width="stretch",
        )
        st.caption(f"{summary['num_classes']} classes (BACKGROUND_Google excluded); the official train list is "
                   "halved per class into train and validation, as in the study.")
        st.metric("Images in classes", sum(summary["images_per_class"].values()))
    with right:
        st.plotly_chart(charts.class_counts_figure(summary["images_per_class"]), key="class_counts")


def samples(root: Path, classes: list[str]) -> None:
    """Twelve images of a chosen class and split."""
    st.subheader("Sample images")
    col_class, col_split = st.columns([2, 1])
    default = classes.index("dalmatian") if "dalmatian" in classes else 0
    chosen = col_class.selectbox("Class", classes, index=default)
    split_name = col_split.radio("Split", ["train", "val", "test"], horizontal=True)
    paths = dataset.sample_paths(dataset.load_splits(root), chosen, 12, split=split_name)
    if not paths:
        st.info(f"No {split_name} images of {chosen}.")
    for start in range(0, len(paths), 6):
        for col, path in zip(st.columns(6), paths[start:start + 6], strict=False):
            col.image(str(path), caption=path.name, width="stretch")


def problem_files(root: Path, summary: dict[str, Any]) -> None:
    """Images that cannot be decoded (a background scan) and split-file lines naming missing or non-image files."""
    st.subheader("Problem files")
    if summary["skipped"]:
        st.warning(f"{len(summary['skipped'])} line(s) of the split files name missing or non-image files.")
        st.dataframe(pd.DataFrame(summary["skipped"]), hide_index=True, width="stretch")
    bad = unreadable(root)
    if bad is None:
        return
    if bad:
        st.warning(f"{len(bad)} image(s) cannot be decoded and are left out of training.")
        st.dataframe(pd.DataFrame({"file": [str(s.path) for s in bad], "reason": [s.reason for s in bad]}),
                     hide_index=True, width="stretch")
    else:
        st.caption("Every listed image decodes.")


def disk_use() -> None:
    """The store's bytes by kind, and pruning the caches no stored run uses (after a confirmation)."""
    st.subheader("Disk use of the studio")
    store = get_store()
    usage = store.disk_usage()
    st.dataframe(pd.DataFrame({"kind": list(usage), "MB": [round(n / 2**20, 1) for n in usage.values()]}),
                 hide_index=True, width="content")
    st.caption(f"Store folder `{store.home}`. A finished run keeps its best weights (and the retrained model, if "
               "any); a cancelled or interrupted one also its last checkpoint, to resume.")
    unused = store.unused_caches()
    if not unused:
        st.caption("No unused caches.")
        return
    mb = sum(unused.values()) / 2**20
    st.write(f"{len(unused)} cache(s) no stored run uses ({mb:.1f} MB): "
             + ", ".join(f"`{p.relative_to(store.home)}`" for p in unused))
    sure = st.checkbox("Yes, delete the unused caches (a later run rebuilds what it needs)", key="prune_sure")
    if st.button("Prune unused caches", icon=":material/delete_sweep:", disabled=not sure):
        try:
            removed, freed = editing.prune_caches(store)
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.session_state.pop("prune_sure", None)
            st.toast(f"Deleted {len(removed)} cache(s), freed {freed / 2**20:.1f} MB")
            st.rerun()


require_password()  # also when Streamlit runs this page without the entry point (AppTest)
st.title("Data")
root = data_root()
if root is None:
    download()
    st.stop()
st.success(f"Dataset found at `{root}`", icon=":material/check_circle:")
summary = overview(root)
splits_and_classes(summary)
samples(root, summary["classes"])
problem_files(root, summary)
disk_use()
