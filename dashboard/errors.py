"""Errors: what a finished run gets wrong, image by image (its stored per-image results).

Click a confusion-matrix cell to see its images with their top-5 and Grad-CAM; browse the most confident
mistakes, the per-class accuracy (worst classes' mistakes) and the class pairs confused most, each picture with a
"Fix label" control and the page ending with "Retrain with these fixes" (_fixes.py); whether its
confidence can be believed (dashboard/_calibration.py), which labels look wrong (_suspects.py) and the embedding
map (_embedding.py). Thumbnails come
from the decoded-image cache and galleries are paged, so the full test split (2893 images) stays quick.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from caltech_core.status import RunStatus
from caltech_core.study import charts
from caltech_core.training import predictions
from caltech_core.use import recompute
from dashboard._auth import require_password
from dashboard._calibration import calibration_view
from dashboard._embedding import embedding_view
from dashboard._fixes import mark_control, retrain_panel
from dashboard._shared import background, data_root, get_store, run_label
from dashboard._suspects import suspects_view

VIEWS = ("Confusion matrix", "Most confident mistakes", "Per-class accuracy", "Confused pairs", "Calibration",
         "Suspected label errors", "Embedding map")
COLUMNS = 4
THUMB = 176  # pixels per side of a gallery picture


@st.cache_data(max_entries=8, show_spinner=False)
def _results(file: str, stamp: float) -> predictions.ImageResults:
    return predictions.load(file)


def _decoded_images():
    """The decoded-image cache over this split's images: instant when the run trained here; built in the
    background (with a bar, None meanwhile) when every image must be decoded (a run trained on another machine,
    or its cache pruned)."""
    from caltech_core.data.imagecache import ImageCache

    resize = store.get_run(run_id).config.resize_size
    build = functools.partial(ImageCache.build, list(results.paths), store.cache_dir, resize)
    return background(f"images:{store.cache_dir}:{resize}:{path}:{stamp}", build, "Decoding the split's images",
                      wait=1.0)


@st.cache_resource(max_entries=2, show_spinner=False)
def _classifier(home: str, run: int, stamp: float):
    from caltech_core.use.inference import Classifier

    return Classifier.from_run(store, run)


def run_and_split() -> tuple[int, str]:
    """The finished run (the one in the address, ?run=, else the newest) and the split to analyse."""
    runs = store.list_runs(status=RunStatus.FINISHED)
    if not runs:
        st.info("No finished run yet. Train one on the Train page, then see here which images it gets wrong.")
        st.stop()
    labels = {r.id: run_label(r) for r in runs}
    ids = list(labels)
    wanted = st.query_params.get("run")
    default = int(wanted) if wanted is not None and wanted.isdigit() and int(wanted) in labels else ids[0]
    c1, c2 = st.columns([3, 1])
    run_id = c1.selectbox("Run", ids, index=ids.index(default), format_func=labels.get, key="err_run")
    split = c2.radio("Split", predictions.SPLITS, horizontal=True, key="err_split",
                     format_func={"test": "test", "val": "validation"}.get)
    st.query_params["run"] = str(run_id)
    return run_id, split


def offer_to_compute() -> None:
    """A run without stored per-image results (trained before they were recorded): compute them, then stop."""
    st.info(f"Run #{run_id} has no stored per-image results for the {split} split (runs trained before they were "
            "recorded). Compute them from its best weights:")
    if st.button("Compute per-image results", key="err_compute", icon=":material/calculate:"):
        with st.spinner(f"Evaluating run #{run_id} on the {split} split…"):
            try:
                recompute.recompute(store, run_id, split, data_root=data_root())
            except (predictions.ResultsError, FileNotFoundError) as exc:
                st.error(str(exc))
                st.stop()
        st.rerun()
    st.stop()


def load_results() -> predictions.ImageResults:
    """The stored per-image results (a broken file stops the page with the command that rebuilds it)."""
    try:
        return _results(str(path), stamp)
    except predictions.ResultsError as exc:
        st.error(f"{exc}. Recompute it with `python -m caltech_core evaluate {run_id} --split {split}`.")
        st.stop()


def summary_metrics() -> None:
    """Images, accuracy, mean per-class accuracy and mistakes of this split."""
    summary = results.summary()
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Images", summary["images"])
    m2.metric("Accuracy", f"{summary['acc']:.1%}")
    m3.metric("Mean per-class accuracy", f"{summary['mean_class_acc']:.1%}")
    m4.metric("Mistakes", int((~results.correct).sum()))
    st.caption(f"Per-image results: `{path}`")


def view_options() -> tuple[str, int, bool]:
    """Which view, how many pictures per page, whether to draw Grad-CAM over them."""
    o1, o2, o3 = st.columns([4, 1, 1])
    view = o1.radio("Show", VIEWS, horizontal=True, key="err_view")
    per_page = o2.selectbox("Per page", (12, 24, 48), key="err_per_page")
    show_cam = o3.toggle("Grad-CAM", value=True, key="err_cam", help="Heatmap of where the network looked for the "
                         "class it predicted")
    return view, per_page, show_cam


# -- the gallery -----------------------------------------------------------------------------------------------
@st.cache_data(max_entries=2000, show_spinner=False)
def _picture(home: str, run: int, file: str, stamp: float, image_path: str, class_index: int,
             cam: bool, _cache) -> np.ndarray | None:
    """The image as the network saw it (centre crop), with Grad-CAM of `class_index` over it; None if unreadable.
    (`_cache`, the decoded images, is not part of the cache key: `file` and `stamp` name it.)"""
    from caltech_core.use.inference import overlay

    index = _cache.index_of(image_path)
    if index is None:
        return None
    classifier = _classifier(home, run, stamp)
    image = Image.fromarray(np.ascontiguousarray(_cache[index]))
    view_image = classifier.model_view(image)
    if cam:
        view_image = overlay(view_image, classifier.gradcam(image, class_index))
    return np.asarray(view_image.resize((THUMB, THUMB), Image.Resampling.BILINEAR))


def _gallery(rows: np.ndarray, key: str, what: str) -> None:
    """Pictures of `rows` (results rows), a page at a time, each with its true class and top-5."""
    if not len(rows):
        st.caption(f"No images {what}.")
        return
    pages = math.ceil(len(rows) / per_page)
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, key=f"{key}_page"))
    start = (page - 1) * per_page
    shown = rows[start: start + per_page]
    st.caption(f"{len(rows)} image(s) {what}; showing {start + 1}–{start + len(shown)}, most confident first.")
    decoded = _decoded_images()
    if decoded is None:
        return
    record = store.get_run(run_id)
    columns = st.columns(COLUMNS)
    for i, row in enumerate(shown):
        top = results.top_of(int(row))
        true = classes[int(results.labels[row])]
        with columns[i % COLUMNS]:
            picture = _picture(str(store.home), run_id, str(path), stamp, str(results.paths[row]),
                               int(results.top_classes[row, 0]), show_cam, decoded)
            if picture is None:
                st.warning(f"{Path(str(results.paths[row])).name}: image not available")
            else:
                st.image(picture, width="stretch")
            mark = ":green-badge[right]" if top[0][0] == true else ":red-badge[wrong]"
            st.markdown(f"{mark} true **{true}**", help=f"{results.paths[row]} · loss {results.losses[row]:.3f}")
            st.caption("  \n".join(f"{p:.1%} {name}" for name, p in top))
            mark_control(store, record, str(results.paths[row]), true, top[0][0], f"{key}_{int(row)}", split)


# -- the views -----------------------------------------------------------------------------------------------
def _cell_clicked(class_names: list[str]) -> None:
    """A click on a confusion cell selects that (true, predicted) pair in the two boxes below the chart."""
    points = st.session_state["err_cm"]["selection"]["points"]
    if points and points[0].get("customdata"):
        true, pred = points[0]["customdata"][:2]
        st.session_state["err_true"], st.session_state["err_pred"] = class_names[true], class_names[pred]


def confusion_view() -> None:
    """The clickable confusion matrix and the images of the chosen (true, predicted) cell."""
    pairs = results.confused_pairs(1)
    if "err_true" not in st.session_state or st.session_state["err_true"] not in classes:
        st.session_state["err_true"] = pairs[0]["true"] if pairs else classes[0]
        st.session_state["err_pred"] = pairs[0]["predicted"] if pairs else classes[0]
    normalize = st.toggle("Row-normalise", value=True, key="err_normalize")
    st.plotly_chart(charts.confusion_figure(results.confusion(), classes, normalize=normalize, clickable=True),
                    key="err_cm", on_select=functools.partial(_cell_clicked, classes), selection_mode="points")
    st.caption("Click a cell to see its images.")
    b1, b2 = st.columns(2)
    true_name = b1.selectbox("True class", classes, key="err_true")
    pred_name = b2.selectbox("Predicted class", classes, key="err_pred")
    t, p = classes.index(true_name), classes.index(pred_name)
    st.subheader(f"{true_name} predicted as {pred_name}")
    _gallery(results.cell(t, p), f"cell_{t}_{p}", f"of {true_name} predicted as {pred_name}")


def per_class_view() -> None:
    """Accuracy per class, worst first, and the mistakes of a chosen class."""
    table = pd.DataFrame(results.per_class()).sort_values(["accuracy", "class"]).drop(columns="index")
    st.dataframe(table, hide_index=True, width="stretch", key="err_per_class",
                 column_config={"accuracy": st.column_config.NumberColumn(format="percent")})
    worst = list(table["class"])
    name = st.selectbox("Mistakes of class (worst first)", worst, key="err_class")
    _gallery(results.mistakes_of(classes.index(name)), f"class_{name}", f"of {name} classified wrongly")


def confused_pairs_view() -> None:
    """The 30 class pairs confused most, and the images of a chosen pair."""
    pairs = results.confused_pairs(30)
    if not pairs:
        st.success("No image of this split is confused with another class.")
        return
    table = pd.DataFrame(pairs).drop(columns=["true index", "predicted index"])
    st.dataframe(table, hide_index=True, width="stretch", key="err_pairs",
                 column_config={"share of true class": st.column_config.NumberColumn(format="percent")})
    chosen = st.selectbox("Pair", range(len(pairs)), key="err_pair",
                          format_func=lambda i: f"{pairs[i]['true']} → {pairs[i]['predicted']} "
                                                f"({pairs[i]['images']})")
    pair = pairs[chosen]
    _gallery(results.cell(pair["true index"], pair["predicted index"]), f"pair_{chosen}",
             f"of {pair['true']} predicted as {pair['predicted']}")


require_password()  # also when Streamlit runs this page without the entry point (AppTest)
st.title("Errors")
store = get_store()
run_id, split = run_and_split()
path = predictions.results_path(store.run_dir(run_id), split)
if not path.is_file():
    offer_to_compute()
stamp = path.stat().st_mtime
results = load_results()
classes = results.classes
summary_metrics()
view, per_page, show_cam = view_options()
if view == "Confusion matrix":
    confusion_view()
elif view == "Most confident mistakes":
    _gallery(results.confident_mistakes(), "confident", "classified wrongly")
elif view == "Per-class accuracy":
    per_class_view()
elif view == "Confused pairs":
    confused_pairs_view()
elif view == "Calibration":
    calibration_view(store, run_id, split, results, data_root())
elif view == "Suspected label errors":
    suspects_view(store, run_id, split, show_cam, per_page, data_root())
else:
    embedding_view(store, run_id, split, data_root())
retrain_panel(store, store.get_run(run_id))
