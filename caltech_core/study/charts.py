"""Plotly figure builders shared by the dashboard pages and the report.

Every function is pure: plain rows (the store's dicts) in, a `go.Figure` out, so they are testable
without a browser and never import Streamlit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from caltech_core.config import TrainConfig

TRAIN_COLOR = "#1f6feb"
VAL_COLOR = "#d1242f"
STUDY_COLOR = "#6e7781"  # the study's own numbers: grey, dashed
_LAYOUT = {"template": "plotly_white", "margin": {"l": 50, "r": 20, "t": 50, "b": 45}, "height": 340}


def _figure(title: str, x: str, y: str, **extra: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, **{**_LAYOUT, **extra})
    return fig


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    return [row.get(key) for row in rows]


def _whole_epochs(fig: go.Figure) -> go.Figure:
    """Tick every whole epoch on short runs (Plotly would otherwise label half epochs)."""
    xs = [x for trace in fig.data for x in (trace.x or ()) if x is not None]
    if xs and max(xs) <= 15:
        fig.update_xaxes(tick0=1, dtick=1)
    return fig


def class_counts_figure(images_per_class: Mapping[str, int]) -> go.Figure:
    """Images per class, most populous first (the study's Figure 2)."""
    ordered = sorted(images_per_class.items(), key=lambda item: (-item[1], item[0]))
    fig = _figure("Images per class", "class", "images", height=420)
    fig.add_bar(x=[c for c, _ in ordered], y=[n for _, n in ordered], marker_color=TRAIN_COLOR,
                hovertemplate="%{x}: %{y} images<extra></extra>")
    fig.update_xaxes(tickangle=-60, tickfont={"size": 9})
    return fig


def lr_schedule_figure(cfg: TrainConfig) -> go.Figure:
    """The learning rate of every epoch of `cfg` (StepLR or cosine), before launching it."""
    epochs = list(range(1, cfg.epochs + 1))
    kind = "StepLR" if cfg.lr_schedule == "step" else f"cosine, warm-up {cfg.warmup_epochs} epochs"
    fig = _figure(f"Learning-rate schedule ({kind})", "epoch", "learning rate", height=260)
    fig.add_scatter(x=epochs, y=[cfg.lr_at(e - 1) for e in epochs], mode="lines+markers",
                    line_shape="hv", line_color=TRAIN_COLOR, name="lr")
    fig.update_yaxes(type="log", exponentformat="e")
    return _whole_epochs(fig)


def _train_val_figure(epochs: Sequence[Mapping[str, Any]], metric: str, title: str, y_title: str) -> go.Figure:
    """`train_<metric>` and `val_<metric>` per epoch on one chart."""
    fig = _figure(title, "epoch", y_title)
    x = _column(epochs, "epoch")
    for split, name, color in (("train", "train", TRAIN_COLOR), ("val", "validation", VAL_COLOR)):
        fig.add_scatter(x=x, y=_column(epochs, f"{split}_{metric}"), mode="lines+markers", name=name,
                        line_color=color)
    return _whole_epochs(fig)


def loss_figure(epochs: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Train and validation loss per epoch."""
    return _train_val_figure(epochs, "loss", "Loss", "cross-entropy")


def accuracy_figure(epochs: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Train and validation accuracy per epoch (0-1 shown as percent)."""
    fig = _train_val_figure(epochs, "acc", "Accuracy", "accuracy")
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return fig


def lr_figure(epochs: Sequence[Mapping[str, Any]]) -> go.Figure:
    """The learning rate actually used in each finished epoch."""
    fig = _figure("Learning rate", "epoch", "lr", height=260)
    fig.add_scatter(x=_column(epochs, "epoch"), y=_column(epochs, "lr"), mode="lines+markers",
                    line_shape="hv", line_color=TRAIN_COLOR, name="lr")
    fig.update_yaxes(type="log", exponentformat="e")
    return _whole_epochs(fig)


def batch_loss_figure(batches: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Training loss of every recorded batch on the epoch axis (batch b of n in epoch e at e - 1 + b / n)."""
    per_epoch: dict[int, int] = {}
    for row in batches:
        per_epoch[row["epoch"]] = max(per_epoch.get(row["epoch"], 0), row["batch"])
    finished = [n for e, n in per_epoch.items() if e < max(per_epoch, default=0)]
    # The epoch in progress has only some of its batches: size it like the finished ones.
    full = max(finished, default=0)
    x = [row["epoch"] - 1 + row["batch"] / max(full, per_epoch[row["epoch"]]) for row in batches]
    fig = _figure("Per-batch training loss", "epoch", "loss", height=260)
    fig.add_scatter(x=x, y=_column(batches, "loss"), mode="lines", line_color=TRAIN_COLOR, name="batch loss")
    return _whole_epochs(fig)


def val_curves_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]], metric: str = "val_acc") -> go.Figure:
    """Overlay one metric (default validation accuracy) of several runs; keys are the legend labels."""
    titles = {"val_acc": "Validation accuracy", "val_loss": "Validation loss",
              "train_acc": "Training accuracy", "train_loss": "Training loss"}
    fig = _figure(titles.get(metric, metric), "epoch", metric, height=400)
    for label, rows in curves.items():
        fig.add_scatter(x=_column(rows, "epoch"), y=_column(rows, metric), mode="lines+markers", name=label)
    if metric.endswith("_acc"):
        fig.update_yaxes(tickformat=".0%")
    return _whole_epochs(fig)


def accuracy_bar_figure(labels: Sequence[str], values: Sequence[float | None],
                        title: str = "Test accuracy", study: Sequence[float | None] | None = None) -> go.Figure:
    """One bar per run (e.g. test accuracy); missing values are left out. `study` (fractions, None where
    the study has no number) adds the study's value beside each bar."""
    pairs = [(lab, v) for lab, v in zip(labels, values, strict=True) if v is not None]
    fig = _figure(title, "run", "accuracy", height=380)
    fig.add_bar(x=[p[0] for p in pairs], y=[p[1] for p in pairs], marker_color=TRAIN_COLOR, name="ours",
                text=[f"{p[1]:.1%}" for p in pairs], textposition="outside",
                hovertemplate="%{x}: %{y:.2%}<extra></extra>")
    if study is not None:
        theirs = [(lab, v) for lab, v in zip(labels, study, strict=True) if v is not None]
        fig.add_bar(x=[p[0] for p in theirs], y=[p[1] for p in theirs], marker_color=STUDY_COLOR, name="study",
                    text=[f"{p[1]:.1%}" for p in theirs], textposition="outside",
                    hovertemplate="study %{x}: %{y:.2%}<extra></extra>")
        fig.update_layout(barmode="group")
        fig.update_xaxes(categoryorder="array", categoryarray=list(labels))  # members in order, even without ours
    fig.update_yaxes(tickformat=".0%", range=[0, 1.08])
    return fig


def with_reference_lines(fig: go.Figure, references: Mapping[str, float]) -> go.Figure:
    """Dashed horizontal lines at the study's final values (label -> value on the figure's y axis)."""
    for i, (label, value) in enumerate(references.items()):
        # Labels alternate sides so that close values (82.54 / 82.34) stay readable.
        fig.add_hline(y=value, line_dash="dash", line_color=STUDY_COLOR, line_width=1.5,
                      annotation_text=label, annotation_position="top left" if i % 2 == 0 else "bottom right",
                      annotation_font={"color": STUDY_COLOR, "size": 11})
    return fig


def per_class_accuracy_figure(per_class_acc: Mapping[str, float] | Sequence[float],
                              classes: Sequence[str] | None = None) -> go.Figure:
    """Per-class accuracy, worst first, so the hard classes are on the left."""
    if isinstance(per_class_acc, Mapping):
        items = list(per_class_acc.items())
    else:
        names = list(classes) if classes is not None else [str(i) for i in range(len(per_class_acc))]
        items = list(zip(names, per_class_acc, strict=True))
    items.sort(key=lambda item: (item[1], item[0]))
    fig = _figure("Per-class test accuracy", "class", "accuracy", height=420)
    fig.add_bar(x=[c for c, _ in items], y=[a for _, a in items], marker_color=TRAIN_COLOR,
                hovertemplate="%{x}: %{y:.1%}<extra></extra>")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    fig.update_xaxes(tickangle=-60, tickfont={"size": 9})
    return fig


def confusion_figure(confusion: Sequence[Sequence[float]], classes: Sequence[str],
                     normalize: bool = True, clickable: bool = False) -> go.Figure:
    """Interactive confusion matrix (rows = true class); row-normalised by default.

    `clickable` lays one marker over every non-empty cell (heatmaps cannot be selected in Plotly), so a click
    selects the cell: its point carries `customdata = [true index, predicted index, images]`.
    """
    counts = [list(map(float, r)) for r in confusion]
    rows = _row_normalised(confusion) if normalize else counts
    labels = list(classes)
    fig = go.Figure(go.Heatmap(
        z=rows, x=labels, y=labels, colorscale="Blues", zmin=0,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.2f}<extra></extra>",
        hoverinfo="skip" if clickable else None,
    ))
    side = max(420, min(1100, 12 * len(labels) + 200))
    if clickable:
        cells = [(t, p) for t, row in enumerate(counts) for p, n in enumerate(row) if n]
        fig.add_scatter(
            x=[labels[p] for _, p in cells], y=[labels[t] for t, _ in cells], mode="markers", name="cells",
            customdata=[[t, p, int(counts[t][p])] for t, p in cells], showlegend=False,
            marker={"symbol": "square", "size": max(6, min(40, (side - 170) / max(len(labels), 1))), "opacity": 0.01,
                    "color": "#000"},
            hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[2]} image(s) · click to see them"
                          "<extra></extra>",
        )
    fig.update_layout(title="Confusion matrix" + (" (row-normalised)" if normalize else ""),
                      xaxis_title="predicted", yaxis_title="true", template="plotly_white",
                      height=side, margin={"l": 120, "r": 20, "t": 50, "b": 120})
    fig.update_yaxes(autorange="reversed")
    return fig


def _row_normalised(confusion: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[v / s for v in r] if (s := sum(r)) else list(r) for r in ([float(v) for v in row] for row in confusion)]


def confusion_difference_figure(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]],
                                classes: Sequence[str], titles: tuple[str, str] = ("A", "B")) -> go.Figure:
    """Row-normalised confusion of `second` minus that of `first` (same classes): red where B puts more images."""
    a, b = _row_normalised(first), _row_normalised(second)
    diff = [[y - x for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)]
    labels = list(classes)
    fig = go.Figure(go.Heatmap(
        z=diff, x=labels, y=labels, colorscale="RdBu", reversescale=True, zmid=0, zmin=-1, zmax=1,
        hovertemplate=f"true %{{y}}<br>predicted %{{x}}<br>{titles[1]} − {titles[0]}: %{{z:+.2f}}<extra></extra>",
    ))
    side = max(420, min(1100, 12 * len(labels) + 200))
    fig.update_layout(title=f"Confusion difference (row-normalised): {titles[1]} − {titles[0]}",
                      xaxis_title="predicted", yaxis_title="true", template="plotly_white",
                      height=side, margin={"l": 120, "r": 20, "t": 50, "b": 120})
    fig.update_yaxes(autorange="reversed")
    return fig


def topk_figure(predictions: Iterable[tuple[str, float]], title: str = "Top-5") -> go.Figure:
    """Horizontal bars of (class, probability), most likely on top."""
    preds = list(predictions)
    fig = _figure(title, "probability", "", height=60 + 34 * max(len(preds), 1))
    fig.add_bar(x=[p for _, p in preds], y=[c for c, _ in preds], orientation="h",
                marker_color=TRAIN_COLOR, text=[f"{p:.1%}" for _, p in preds], textposition="auto",
                hovertemplate="%{y}: %{x:.2%}<extra></extra>")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_layout(margin={"l": 10, "r": 10, "t": 40, "b": 30})
    return fig


def reliability_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "Reliability diagram") -> go.Figure:
    """Accuracy against confidence per confidence bin (rows: `lower`, `upper`, `count`, `accuracy`,
    `confidence`), one line per curve (e.g. before / after temperature scaling); the diagonal is perfect."""
    fig = _figure(title, "confidence (top probability)", "accuracy", height=380)
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": STUDY_COLOR},
                    name="perfectly calibrated", hoverinfo="skip")
    for (name, rows), color in zip(curves.items(), (VAL_COLOR, TRAIN_COLOR, "#2da44e"), strict=False):
        kept = [r for r in rows if r["count"]]
        fig.add_scatter(x=_column(kept, "confidence"), y=_column(kept, "accuracy"), mode="lines+markers",
                        name=name, line_color=color, customdata=[[r["count"], r["lower"], r["upper"]] for r in kept],
                        hovertemplate="confidence %{x:.1%} (bin %{customdata[1]:.2f}–%{customdata[2]:.2f}): "
                                      "accuracy %{y:.1%} of %{customdata[0]} images<extra>%{fullData.name}</extra>")
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def coverage_figure(coverage: Sequence[float], accuracy: Sequence[float], threshold: Sequence[float]) -> go.Figure:
    """Accuracy of the most confident images against the share of images kept (the coverage curve)."""
    fig = _figure("Accuracy against coverage (most confident images kept)", "share of images kept",
                  "accuracy of the kept images", height=340)
    fig.add_scatter(x=list(coverage), y=list(accuracy), mode="lines", line_color=TRAIN_COLOR, name="accuracy",
                    customdata=list(threshold),
                    hovertemplate="keeping %{x:.1%} (confidence ≥ %{customdata:.1%}): accuracy %{y:.1%}"
                                  "<extra></extra>")
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(tickformat=".0%")
    return fig


def embedding_figure(xy: Sequence[Sequence[float]], labels: Sequence[str], mistakes: Sequence[bool],
                     hover: Sequence[str], title: str = "Embedding map") -> go.Figure:
    """A 2-D scatter of images coloured by true class, mistakes drawn as black-edged crosses; each point's
    `customdata` is its row, so a click can show the image."""
    fig = _figure(title, "", "", height=620, showlegend=True)
    rows_of: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        rows_of.setdefault(label, []).append(i)
    for label, rows in sorted(rows_of.items()):
        fig.add_scattergl(
            x=[xy[i][0] for i in rows], y=[xy[i][1] for i in rows], mode="markers", name=label,
            legendgroup=label, customdata=rows, text=[hover[i] for i in rows], hovertemplate="%{text}<extra></extra>",
            marker={"size": [11 if mistakes[i] else 7 for i in rows],
                    "symbol": ["x" if mistakes[i] else "circle" for i in rows],
                    "line": {"width": [1.5 if mistakes[i] else 0 for i in rows], "color": "black"}})
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(legend={"font": {"size": 9}, "itemsizing": "constant"})
    return fig


def lr_finder_figure(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
                     suggestion: float | None) -> go.Figure:
    """The LR range test: raw and smoothed loss against the learning rate (log axis), the suggestion marked."""
    fig = _figure("Learning-rate range test", "learning rate", "training loss")
    fig.add_scatter(x=list(lrs), y=list(losses), mode="lines", name="batch loss", line={"color": "#c9d1d9"})
    fig.add_scatter(x=list(lrs[:len(smoothed)]), y=list(smoothed), mode="lines", name="smoothed",
                    line={"color": TRAIN_COLOR})
    if suggestion is not None:
        fig.add_vline(x=suggestion, line_dash="dash", line_color=VAL_COLOR,
                      annotation_text=f"suggested {suggestion:.2g}")
    fig.update_xaxes(type="log")
    if smoothed:  # the divergence at the end would flatten the interesting part
        top = max(smoothed[0], min(smoothed)) * 1.5
        fig.update_yaxes(range=[min(smoothed) * 0.9, top])
    return fig
