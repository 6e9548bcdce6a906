"""How far a run's confidence can be believed: ECE, NLL, reliability bins, coverage, and temperature scaling.

Temperature scaling (Guo et al., 2017) divides the logits by one number T fitted on the validation split only,
by minimising its negative log-likelihood with SciPy's bounded 1-D search (`minimize_scalar`, Brent) over log T:
the NLL is convex in 1/T, so it has one minimum along log T too. T leaves every argmax (accuracy) unchanged.
The inputs are the full logits a run's per-image results file holds (`training/predictions.py`); files written
before logits were recorded must be recomputed first (`CalibrationError` says so).

A run's calibration is recorded in its results (`results["calibration"]`: temperature, the scores before and
after on each split) by `calibrate_run`, through `RunStore.set_results`; `temperature_of` returns the recorded
temperature, fitting it on first use when the validation logits are there. Classify, `evaluate`, the export's
JSON and Compare read it from there.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from caltech_core.training import predictions
from caltech_core.training.predictions import ImageResults

BINS = 15  # equal-width confidence bins of the ECE and the reliability diagram
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))  # temperatures searched: 0.05 to 20


class CalibrationError(RuntimeError):
    """A run cannot be calibrated (no validation split, or results without logits); the message says what to do."""


# -- the measures ------------------------------------------------------------------------------------------
def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of `logits / temperature`, row by row (float64)."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under `softmax(logits / temperature)`."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict[str, float]]:
    """The reliability diagram's bins: confidence (top probability) in (lower, upper]; each bin's image count,
    accuracy and mean confidence (NaN for an empty bin)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "accuracy": float(correct[inside].mean()) if count else math.nan,
                     "confidence": float(confidence[inside].mean()) if count else math.nan})
    return rows


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the bins' |accuracy - confidence| weighted by their share of the images."""
    total = len(labels)
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"])
                     for r in reliability(probs, labels, bins) if r["count"]))


def coverage_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, accuracy, threshold): keeping only the images whose confidence is at least `threshold[i]`
    covers `coverage[i]` of them with accuracy `accuracy[i]`; most confident first."""
    confidence = probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    correct = (probs.argmax(axis=1) == labels)[order]
    kept = np.arange(1, len(labels) + 1)
    return kept / len(labels), np.cumsum(correct) / kept, confidence[order]


def scores(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """ECE, NLL and accuracy of `softmax(logits / temperature)` (JSON-able)."""
    probs = probabilities(logits, temperature)
    return {"ece": ece(probs, labels), "nll": nll(logits, labels, temperature),
            "acc": float((probs.argmax(axis=1) == labels).mean())}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of `softmax(logits / T)` on these (validation) images."""
    if len(labels) == 0:
        raise CalibrationError("no images to fit a temperature on")
    found = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=LOG_T_BOUNDS,
                            method="bounded", options={"xatol": 1e-5})
    return float(math.exp(found.x))


# -- a stored run -------------------------------------------------------------------------------------------
def with_logits(store: Any, run_id: int, split: str) -> ImageResults:
    """The run's per-image results of `split` holding logits, else CalibrationError saying how to get them
    (`use.recompute.ensure_logits` recomputes them)."""
    results = predictions.load_run(store, run_id, split)
    if results is not None and results.logits is not None:
        return results
    what = "no per-image results" if results is None else "per-image results without logits (an older run)"
    raise CalibrationError(f"run {run_id} has {what} for the {split} split; recompute them with "
                           f"`python -m caltech_core evaluate {run_id} --split {split}`")


def calibrate_run(store: Any, run_id: int) -> dict[str, Any]:
    """Fit the run's temperature on its validation split, score every split with logits before and after, and
    record it all in the run's results (`results["calibration"]`); returns that record."""
    record = store.get_run(run_id)
    if record is None:
        raise CalibrationError(f"run {run_id} does not exist")
    try:
        val = with_logits(store, run_id, "val")
    except predictions.ResultsError as exc:
        raise CalibrationError(f"run {run_id}: {exc}") from exc
    if len(val) == 0:
        raise CalibrationError(f"run {run_id} has no validation images to fit a temperature on")
    temperature = fit_temperature(val.logits, val.labels)
    splits = {}
    for split in predictions.SPLITS:
        try:
            results = val if split == "val" else with_logits(store, run_id, split)
        except (CalibrationError, predictions.ResultsError):
            continue  # scored once its results are recomputed
        splits[split] = {"images": len(results), "before": scores(results.logits, results.labels),
                         "after": scores(results.logits, results.labels, temperature)}
    calibration = {"temperature": temperature, "fitted_on": "val", "bins": BINS, "splits": splits}
    store.set_results(run_id, {**store.get_run(run_id).results, "calibration": calibration})
    return calibration


def recorded(record: Any) -> dict[str, Any] | None:
    """The calibration recorded in a run's results, or None."""
    calibration = (record.results or {}).get("calibration")
    return calibration if isinstance(calibration, dict) and "temperature" in calibration else None


def temperature_of(store: Any, run_id: int) -> float | None:
    """The run's recorded temperature; fitted and recorded now when its validation logits are stored; None when
    it cannot be calibrated without recomputing (the caller then uses the raw softmax)."""
    record = store.get_run(run_id)
    if record is None:
        return None
    calibration = recorded(record)
    if calibration is None:
        try:
            calibration = calibrate_run(store, run_id)
        except CalibrationError:
            return None
    return float(calibration["temperature"])
