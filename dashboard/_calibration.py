"""Errors page view: can the run's confidence be believed? Reliability diagram before and after temperature
scaling, ECE, NLL and the coverage curve. Importing this module changes no Streamlit state."""

from __future__ import annotations

from typing import Any

import streamlit as st

from caltech_core.study import charts
from caltech_core.training import predictions
from caltech_core.use import calibration, recompute


def recompute_button(store: Any, run_id: int, data_root: Any, why: str, key: str) -> None:
    """Explain why per-image results must be recomputed and offer to do it (validation and test)."""
    st.info(f"{why} Recompute them from the run's best weights (it takes as long as evaluating the run once).")
    if st.button("Recompute per-image results", key=key, icon=":material/calculate:"):
        with st.spinner(f"Evaluating run #{run_id} on the validation and test splits…"):
            try:
                for split in predictions.SPLITS:
                    recompute.ensure_logits(store, run_id, split, data_root=data_root)
                calibration.calibrate_run(store, run_id)
            except (predictions.ResultsError, calibration.CalibrationError, FileNotFoundError) as exc:
                st.error(str(exc))
                return
        st.rerun()


def _fitted(store: Any, run_id: int, split: str) -> dict[str, Any]:
    """The run's recorded calibration, refitted (and recorded) when it does not score `split` yet."""
    found = calibration.recorded(store.get_run(run_id))
    if found is None or split not in found["splits"]:
        found = calibration.calibrate_run(store, run_id)
    return found


def calibration_view(store: Any, run_id: int, split: str, results: predictions.ImageResults, data_root: Any) -> None:
    """Temperature, ECE and NLL before/after, the reliability diagram and the coverage curve of this split."""
    if results.logits is None:
        recompute_button(store, run_id, data_root, "These per-image results were saved before logits were "
                         "recorded, and calibration needs every class's logit.", "cal_recompute")
        return
    try:
        fitted = _fitted(store, run_id, split)
    except calibration.CalibrationError as exc:
        recompute_button(store, run_id, data_root, f"The temperature is fitted on the validation split: {exc}.",
                         "cal_recompute_val")
        return
    temperature = fitted["temperature"]
    raw = calibration.probabilities(results.logits)
    scaled = calibration.probabilities(results.logits, temperature)
    before, after = fitted["splits"][split]["before"], fitted["splits"][split]["after"]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Temperature", f"{temperature:.3f}", help="Logits are divided by it before the softmax; fitted on "
              "the validation split only (NLL minimised). Above 1: the raw model was overconfident.")
    m2.metric(f"ECE ({calibration.BINS} bins)", f"{after['ece']:.2%}", f"{after['ece'] - before['ece']:+.2%}",
              delta_color="inverse", help=f"Expected calibration error; {before['ece']:.2%} before scaling.")
    m3.metric("NLL", f"{after['nll']:.3f}", f"{after['nll'] - before['nll']:+.3f}", delta_color="inverse",
              help=f"Mean negative log-likelihood of the true class; {before['nll']:.3f} before scaling.")
    m4.metric("Accuracy", f"{after['acc']:.1%}", help="Unchanged by the temperature (it keeps every argmax).")
    if split == "val":
        st.caption("This is the split the temperature was fitted on, so its 'after' numbers are optimistic; the "
                   "test split tells how well the calibration carries over.")
    left, right = st.columns(2)
    left.plotly_chart(charts.reliability_figure({
        "raw softmax": calibration.reliability(raw, results.labels),
        f"temperature {temperature:.2f}": calibration.reliability(scaled, results.labels),
    }), key="cal_reliability")
    right.plotly_chart(charts.coverage_figure(*calibration.coverage_curve(scaled, results.labels)),
                       key="cal_coverage")
    st.caption("Left: within each confidence bin, how often the top class was right (on the diagonal = "
               "confidence means what it says). Right: the accuracy obtained by answering only for the most "
               "confident images, e.g. to pass the rest to a person.")


ECE_COLUMNS = ("test ECE", "test ECE calibrated")


def ece_columns(store: Any, record: Any) -> dict[str, float | None]:
    """Compare's columns: the run's test ECE before and after temperature scaling, and its temperature (fitted
    now from the stored validation logits when the run has none recorded yet; blank when it cannot be)."""
    found = calibration.recorded(record)
    if found is None and record.status == "finished" and calibration.temperature_of(store, record.id) is not None:
        found = calibration.recorded(store.get_run(record.id))
    test = (found or {}).get("splits", {}).get("test")
    return {ECE_COLUMNS[0]: test["before"]["ece"] if test else None,
            ECE_COLUMNS[1]: test["after"]["ece"] if test else None,
            "temperature": found["temperature"] if found else None}
