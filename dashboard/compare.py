"""Compare: filter runs, tabulate their accuracies and hyperparameters (CSV), overlay curves, compare confusion
matrices."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from caltech_core import status as run_status
from caltech_core.config import ARCH_LABELS, ARCHITECTURES, AUGMENTATIONS, TRAIN_MODES
from caltech_core.runs.store import RunRecord
from caltech_core.study import charts, experiments, report
from dashboard._auth import require_password
from dashboard._calibration import ECE_COLUMNS, ece_columns
from dashboard._datasets import dataset_of, mixed_datasets_warning
from dashboard._fixes import before_after
from dashboard._manage import tag_filter
from dashboard._shared import format_seconds, get_store
from dashboard._tracking import tracking_downloads

ACCURACIES = ("best val acc", "test acc", "mean class acc", "retrain test acc")

def filters(runs: list[RunRecord]) -> list[RunRecord]:
    """Architecture, layers trained, augmentation, status, group and tag filters; the runs passing all of them."""
    c1, c2, c3, c4, c5 = st.columns(5)
    archs = c1.multiselect("Architecture", ARCHITECTURES, format_func=ARCH_LABELS.get)
    modes = c2.multiselect("Layers trained", TRAIN_MODES)
    augs = c3.multiselect("Augmentation (has all)", [*AUGMENTATIONS, "none"])
    statuses = c4.multiselect("Status", run_status.names(run_status.ALL),
                              default=[run_status.RunStatus.FINISHED.value])
    groups = c5.multiselect("Group", store.groups())

    def keep(rec: RunRecord) -> bool:
        cfg = rec.config
        if archs and cfg.arch not in archs:
            return False
        if modes and cfg.train not in modes:
            return False
        if "none" in augs and cfg.augment:
            return False
        if any(a not in cfg.augment for a in augs if a != "none"):
            return False
        if statuses and rec.status not in statuses:
            return False
        return not (groups and rec.group not in groups)

    return [r for r in tag_filter(store, runs, key="compare-tags") if keep(r)]


def _row(rec: RunRecord) -> dict[str, Any]:
    """Accuracies first, then every hyperparameter of the run's configuration under its own name."""
    cfg, res = rec.config, rec.results
    row = {
        "run": rec.id, "name": rec.name, "group": rec.group, "status": rec.status,
        "architecture": ARCH_LABELS.get(cfg.arch, cfg.arch), "dataset": dataset_of(rec),
        "best val acc": rec.best_val_acc if rec.best_val_acc is not None else res.get("best_val_acc"),
        "test acc": rec.test_acc if rec.test_acc is not None else res.get("test_acc"),
        "mean class acc": res.get("mean_class_acc"),
        "retrain test acc": res.get("retrain_test_acc"),
        **ece_columns(store, rec),
        "duration": format_seconds(rec.duration),
    }
    for key, value in cfg.to_dict().items():
        if key not in ("arch", "name", "group", "dataset"):
            row[key] = "+".join(value) or "none" if isinstance(value, (list, tuple)) else value
    return row


def results_table(shown: list[RunRecord]) -> pd.DataFrame:
    """One row per run (accuracies, then settings), with a CSV download; returns the table."""
    table = pd.DataFrame([_row(r) for r in shown])
    percent = st.column_config.NumberColumn(format="percent")
    columns = {**dict.fromkeys(ACCURACIES + ECE_COLUMNS, percent), "lr": st.column_config.NumberColumn(format="%.5f")}
    st.subheader("Results")
    st.dataframe(table, hide_index=True, width="stretch", column_config=columns)
    st.download_button("Download CSV", table.to_csv(index=False).encode(), file_name="caltech101-runs.csv",
                       mime="text/csv", icon=":material/download:")
    return table


def repeats(shown: list[RunRecord]) -> None:
    """Mean ± standard deviation of experiments run more than once."""
    repeated = report.repeat_summary(shown)
    if not any(row["runs"] > 1 for row in repeated):
        return
    st.subheader("Repeats: mean ± standard deviation")
    st.caption("Finished runs of the same experiment (same group, name and settings) with different seeds and "
               "train/validation splits.")
    st.dataframe(pd.DataFrame(repeated, columns=["experiment", "group", "runs", "seeds", "val_acc", "test_acc"]),
                 hide_index=True, width="stretch", key="repeats",
                 column_config={"val_acc": "validation accuracy", "test_acc": "test accuracy"})


def curves(shown: list[RunRecord], table: pd.DataFrame) -> None:
    """Chosen runs' curves of one metric overlaid, and every shown run's test accuracy as a bar."""
    st.subheader("Curves")
    labels = {r.id: r.label for r in shown}
    picked = st.multiselect("Runs to overlay", list(labels), default=list(labels)[:6], format_func=labels.get)
    metric = st.radio("Metric", ["val_acc", "val_loss", "train_acc", "train_loss"], horizontal=True,
                      format_func=lambda m: m.replace("_", " ").replace("acc", "accuracy"))
    st.plotly_chart(charts.val_curves_figure({labels[i]: store.epochs(i) for i in picked}, metric), key="curves")
    st.plotly_chart(charts.accuracy_bar_figure([labels[r.id] for r in shown], list(table["test acc"])),
                    key="test_bars")


def confusion_matrices(shown: list[RunRecord]) -> None:
    """Two runs' confusion matrices side by side, or their difference."""
    with_confusion = [r for r in shown if r.results.get("confusion") and r.results.get("classes")]
    st.subheader("Confusion matrices")
    if len(with_confusion) < 2:
        st.caption("Two finished runs with test results are needed to compare confusion matrices.")
        return
    by_id = {r.id: r for r in with_confusion}
    labels = {r.id: r.label for r in with_confusion}
    c1, c2, c3 = st.columns([2, 2, 3])
    first = c1.selectbox("Run A", list(by_id), index=1, format_func=labels.get, key="cm_a")
    second = c2.selectbox("Run B", list(by_id), index=0, format_func=labels.get, key="cm_b")
    view = c3.radio("Show", ["Side by side", "Difference (B − A)"], horizontal=True, key="cm_view")
    res_a, res_b = by_id[first].results, by_id[second].results
    if view == "Side by side":
        left, right = st.columns(2)
        for side, (col, run, res) in enumerate(((left, first, res_a), (right, second, res_b))):
            fig = charts.confusion_figure(res["confusion"], res["classes"])
            fig.update_layout(title=labels[run])
            col.plotly_chart(fig, key=f"cm_side_{side}")
    elif res_a["classes"] != res_b["classes"]:
        st.warning("These runs were trained on different classes, so their confusion matrices cannot be "
                   "subtracted; compare them side by side.")
    else:
        st.plotly_chart(charts.confusion_difference_figure(res_a["confusion"], res_b["confusion"], res_a["classes"],
                                                           (f"#{first}", f"#{second}")), key="cm_diff")


def sweep_groups(shown: list[RunRecord], table: pd.DataFrame) -> None:
    """Each group's runs as a table with its best member (by validation accuracy) highlighted."""
    shown_groups = sorted({r.group for r in shown if r.group})
    if shown_groups:
        st.subheader("Sweep groups")
    for group in shown_groups:
        members = table[table["group"] == group]
        best = experiments.best_member(store, group)
        note = ""
        if best is not None:
            val = f" (validation {best.best_val_acc:.1%})" if best.best_val_acc is not None else ""
            note = f" · best: #{best.id} {best.name}{val}"
        st.markdown(f"**{group}** · {len(members)} run(s){note}")
        best_id = best.id if best else None
        styled = members.style.apply(
            lambda row, b=best_id: ["background-color: #d6f5d6" if row["run"] == b else "" for _ in row], axis=1
        ).format(dict.fromkeys(ACCURACIES, "{:.1%}"), na_rep="—")
        st.dataframe(styled, hide_index=True, width="stretch", key=f"group-{group}")


require_password()  # also when Streamlit runs this page without the entry point (AppTest)
st.title("Compare runs")
store = get_store()
runs = store.list_runs()
if not runs:
    st.info("No runs yet. Queue one on the Train page.")
    st.stop()
shown = filters(runs)
if not shown:
    st.warning("No run matches these filters.")
    st.stop()
mixed_datasets_warning(shown)
table = results_table(shown)
before_after(store, shown)
repeats(shown)
curves(shown, table)
confusion_matrices(shown)
sweep_groups(shown, table)
tracking_downloads(store, [r.id for r in shown], "compare")
