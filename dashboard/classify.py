"""Classify: upload images (or take a webcam snapshot), see each one's top-5 classes and a Grad-CAM heatmap of the
top class; classify a whole folder or ZIP into a CSV (dashboard/_batch.py)."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from caltech_core.config import ARCH_LABELS
from caltech_core.nets import models
from caltech_core.status import RunStatus
from caltech_core.study import charts
from caltech_core.use import inference
from dashboard._auth import require_password
from dashboard._batch import batch_section, camera_snapshot
from dashboard._shared import get_store, run_label

IMAGENET = "imagenet:"  # + the architecture, so a newly installed stronger model is not served from cache


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _classifier(choice: str | tuple[int, str], home: str) -> inference.Classifier:
    # `home` is part of the key: two stores may both have a run #1.
    if isinstance(choice, str) and choice.startswith(IMAGENET):
        return inference.Classifier.imagenet(choice.removeprefix(IMAGENET)).warm()  # onnxruntime ready
    run_id, weights = choice
    return inference.Classifier.from_run(get_store(), run_id, weights=weights).warm()


def model_choices() -> dict[str | tuple[int, str], str]:
    """The models to classify with: the strongest installed ImageNet model, then every finished run's weights."""
    imagenet_arch = models.strongest_installed_imagenet()
    labels: dict[str | tuple[int, str], str] = {}
    if imagenet_arch is not None:  # the strongest ImageNet model whose weights are on this machine
        labels[IMAGENET + imagenet_arch] = (f"{ARCH_LABELS[imagenet_arch]} pretrained on ImageNet "
                                            "(1000 classes, no training needed)")
    for r in store.list_runs(status=RunStatus.FINISHED):
        for weights, what in inference.RUN_WEIGHTS.items():  # best.pt, and the train+val model when there is one
            if (store.run_dir(r.id) / weights).is_file():
                labels[(r.id, weights)] = f"{run_label(r)} · {len(r.results.get('classes') or [])} classes{what}"
    return labels


def model_picker() -> str | tuple[int, str]:
    """The chosen model (stops the page when there is none)."""
    labels = model_choices()
    if not labels:
        st.info("No model to classify with: train a run on the Train page, or install ImageNet weights.")
        st.stop()
    return st.selectbox("Model", list(labels), format_func=labels.get)


def load_model(choice: str | tuple[int, str]) -> inference.Classifier:
    """The chosen model, loaded and warm (stops the page with the reason when it cannot be loaded)."""
    try:
        return _classifier(choice, str(store.home))
    except (inference.CheckpointError, RuntimeError, OSError) as exc:
        st.error(f"This model cannot be loaded: {exc}")
        st.stop()


def show_results(uploads: list[tuple[str, bytes]], show_cam: bool) -> None:
    """Each upload's row, drawn as soon as it is predicted: the first at once, the others after."""
    with st.spinner(f"Classifying {len(uploads)} image(s)…"):
        for outcome in inference.iter_classify_uploads(classifier, uploads, max_bytes=max_bytes):
            outcome_row(outcome, show_cam)


def outcome_row(outcome: inference.Outcome, show_cam: bool) -> None:
    """One image: its top class, the picture, the top-5 bars and the Grad-CAM of the top class."""
    st.divider()
    if outcome.error:
        st.error(outcome.error, icon=":material/broken_image:")
        return
    top_class, top_prob = outcome.predictions[0]
    st.markdown(f"**{outcome.name}** → **{top_class}** ({top_prob:.1%})")
    image_col, chart_col, cam_col = st.columns([1, 1.3, 1])
    image_col.image(outcome.image, caption=f"{outcome.image.width}×{outcome.image.height}", width="stretch")
    chart_col.plotly_chart(charts.topk_figure(outcome.predictions, title="Top-5"),
                           key=f"top5-{outcome.name}-{id(outcome)}")
    if show_cam:
        heat = classifier.gradcam(outcome.image, classifier.class_index(top_class))
        cam_col.image(inference.overlay(classifier.model_view(outcome.image), heat),
                      caption=f"Grad-CAM: where '{top_class}' was seen", width="stretch")


require_password()  # also when Streamlit runs this page without the entry point (AppTest)
st.title("Classify images")
store = get_store()
choice = model_picker()
# The browser already refuses files over server.maxUploadSize; checking again here covers any other client.
max_bytes = int(st.get_option("server.maxUploadSize")) * 2**20
upload_col, camera_col = st.columns([3, 2])
files: list[UploadedFile] = upload_col.file_uploader(
    "Images (JPEG, PNG, WebP, BMP or GIF; the first frame of an animation)",
    type=list(inference.UPLOAD_TYPES), accept_multiple_files=True,
)
with camera_col:
    uploads = camera_snapshot() + [(f.name, f.getvalue()) for f in files or []]
# Loaded after the upload box is drawn: the first load exports the model for onnxruntime (seconds on a CPU).
classifier = load_model(choice)
show_cam = st.toggle("Grad-CAM heatmap of the top class", value=True)
if classifier.temperature != 1.0:
    st.caption(f"Probabilities are calibrated: logits divided by the temperature {classifier.temperature:.3f} "
               "fitted on the run's validation split.")
if not uploads:
    st.caption("Upload one or more images, or take a webcam snapshot, to see the classes the model gives them.")
if uploads:
    show_results(uploads, show_cam)
st.divider()
batch_section(classifier, max_bytes)
