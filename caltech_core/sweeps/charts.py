"""Plotly builders of the Sweeps view (pure: rows in, a figure out): trials' curves overlaid and coloured by a
parameter, parameters against the metric as parallel coordinates, parameter importances."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.colors import sample_colorscale

_LAYOUT = {"template": "plotly_white", "margin": {"l": 50, "r": 20, "t": 50, "b": 45}, "height": 360}
SCALE = "Viridis"


def _position(value: Any, values: Sequence[Any]) -> float:
    """Where `value` sits among `values` (0..1): by size for numbers, by order of appearance otherwise."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values) and numbers:
        low, high = min(numbers), max(numbers)
        return 0.5 if high == low else (value - low) / (high - low)
    distinct = list(dict.fromkeys(map(str, values)))
    return distinct.index(str(value)) / max(1, len(distinct) - 1)


def trial_curves_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]], colour_by: Mapping[str, Any],
                        metric: str, parameter: str) -> go.Figure:
    """Each trial's per-epoch `metric` (label -> epoch rows), coloured by its value of `parameter`."""
    fig = go.Figure()
    fig.update_layout(title=f"{metric} of every trial, coloured by {parameter}", xaxis_title="epoch",
                      yaxis_title=metric, **_LAYOUT)
    values = [colour_by[label] for label in curves]
    for label, rows in curves.items():
        colour = sample_colorscale(SCALE, [_position(colour_by[label], values)])[0]
        fig.add_scatter(x=[r["epoch"] for r in rows], y=[r.get(metric) for r in rows], mode="lines+markers",
                        name=f"{label} ({parameter}={colour_by[label]})", line={"color": colour})
    return fig


def parcoords_figure(rows: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str) -> go.Figure:
    """One line per scored trial through its parameters and its value (`rows`: {"params": {...}, "value"})."""
    scored = [r for r in rows if r.get("value") is not None]
    dimensions = []
    for name in params:
        values = [r["params"].get(name) for r in scored]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            dimensions.append({"label": name, "values": values})
        else:  # categorical: ticks at the distinct values
            distinct = list(dict.fromkeys(map(str, values)))
            dimensions.append({"label": name, "values": [distinct.index(str(v)) for v in values],
                               "tickvals": list(range(len(distinct))), "ticktext": distinct})
    dimensions.append({"label": metric, "values": [r["value"] for r in scored]})
    fig = go.Figure(go.Parcoords(line={"color": [r["value"] for r in scored], "colorscale": SCALE,
                                       "showscale": True}, dimensions=dimensions))
    fig.update_layout(title=f"Parameters against {metric} ({len(scored)} scored trials)",
                      **{**_LAYOUT, "margin": {"l": 60, "r": 60, "t": 80, "b": 30}})
    return fig


def importance_figure(importances: Mapping[str, float]) -> go.Figure:
    """Optuna's parameter importances as horizontal bars, the most important on top."""
    ordered = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in ordered], y=[k for k, _ in ordered], orientation="h"))
    fig.update_layout(title="Parameter importance (fANOVA)", xaxis_title="share of the metric's variance",
                      **{**_LAYOUT, "height": 120 + 40 * len(ordered)})
    return fig
