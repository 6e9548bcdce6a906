"""Errors page view: the embedding map of a run's split (penultimate features in 2-D), coloured by class with
mistakes marked; a click on a point shows its picture. Importing this module changes no Streamlit state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image, ImageOps

from caltech_core import layout
from caltech_core.background import tasks
from caltech_core.study import charts
from caltech_core.use import embedding
from dashboard._shared import background

THUMB = 220


def _compute(store: Any, run_id: int, split: str, method: str, data_root: Any) -> embedding.EmbeddingMap | None:
    """The cached map, else one computed in the background once asked for with a button."""
    found = embedding.cached_map(store, run_id, split, method)
    if found is not None:
        return found
    weights = layout.best(store.run_dir(run_id))
    stamp = weights.stat().st_mtime if weights.is_file() else 0  # new weights, new map
    key = f"embedding:{store.home}:{run_id}:{split}:{method}:{stamp}"
    if tasks().state(key).status == "missing":
        st.info(f"The map runs the run's model over the {split} split once to read its penultimate features "
                f"({'then t-SNE, a few seconds more' if method == 'tsne' else 'PCA is instant after that'}); it is "
                "cached for later visits.")
        if not st.button("Compute the embedding map", key="emb_go", icon=":material/scatter_plot:"):
            return None
    return background(key, lambda progress: embedding.embedding_map(store, run_id, split, method,
                                                                    data_root=data_root, progress=progress),
                      f"Reading the {split} split's features (batches)", wait=1.0)


def embedding_view(store: Any, run_id: int, split: str, data_root: Any) -> None:
    """Method picker, the scatter, and the clicked image."""
    method = st.radio("Reduction to 2-D", list(embedding.METHODS), format_func=embedding.METHODS.get,
                      horizontal=True, key="emb_method")
    found = _compute(store, run_id, split, method, data_root)
    if found is None:
        return
    names = [found.classes[i] for i in found.labels]
    mistakes = found.mistakes
    st.caption(f"{len(names)} {split} images, {int(mistakes.sum())} mistakes (crosses). Hover for the file; click "
               "a point to see the image. Click a class in the legend to hide it, double-click to show only it.")
    event = st.plotly_chart(
        charts.embedding_figure(found.xy.tolist(), names, mistakes.tolist(), found.hover(),
                                title=f"Penultimate features, {embedding.METHODS[method]}"),
        key="emb_chart", on_select="rerun", selection_mode="points")
    points = (event or {}).get("selection", {}).get("points", [])
    rows = [p["customdata"] for p in points if p.get("customdata") is not None][:8]
    if rows:
        columns = st.columns(min(len(rows), 4))
        for i, row in enumerate(rows):
            row = int(row[0] if isinstance(row, list) else row)
            path = Path(str(found.paths[row]))
            with columns[i % 4]:
                try:
                    with Image.open(path) as img:
                        st.image(ImageOps.fit(img.convert("RGB"), (THUMB, THUMB)), width="stretch")
                except OSError:
                    st.warning(f"{path.name}: image not available")
                st.caption(found.hover()[row])
