"""Calibration: ECE and temperature scaling against hand-computed examples, then on the finished tiny run (fitted on
validation, applied by Classify, `evaluate --json` and the export's JSON)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caltech_core.cli import main
from caltech_core.runs.store import RunStore
from caltech_core.training import predictions
from caltech_core.use import calibration, export, recompute
from caltech_core.use.inference import Classifier


def test_ece_by_hand() -> None:
    # Confidences 0.9 and 0.88 share the bin (13/15, 14/15]; 0.85, 0.7 and 0.55 have a bin each.
    probs = np.array([[0.9, 0.1], [0.88, 0.12], [0.15, 0.85], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 1, 0])  # right, right, wrong, right, wrong
    # (2 * |1 - 0.89| + |0 - 0.85| + |1 - 0.7| + |0 - 0.55|) / 5
    assert calibration.ece(probs, labels) == pytest.approx((0.22 + 0.85 + 0.3 + 0.55) / 5)
    bins = calibration.reliability(probs, labels)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 5
    assert bins[13] == pytest.approx({"lower": 13 / 15, "upper": 14 / 15, "count": 2, "accuracy": 1.0,
                                      "confidence": 0.89})
    coverage, accuracy, threshold = calibration.coverage_curve(probs, labels)
    assert coverage.tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert accuracy.tolist() == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5])
    assert threshold[0] == pytest.approx(0.9)


def test_temperature_by_hand() -> None:
    # Logits (4, 0) and 3 of 4 labels class 0: the NLL is least where sigmoid(4 / T) = 3/4, so T = 4 / ln 3.
    logits = np.array([[4.0, 0.0]] * 4)
    labels = np.array([0, 0, 0, 1])
    temperature = calibration.fit_temperature(logits, labels)
    assert temperature == pytest.approx(4 / math.log(3), rel=1e-3)
    assert calibration.probabilities(logits, temperature)[0, 0] == pytest.approx(0.75, abs=1e-4)
    assert calibration.nll(logits, labels, temperature) < calibration.nll(logits, labels)
    with pytest.raises(calibration.CalibrationError):
        calibration.fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int))


def test_a_run_is_calibrated_on_validation_and_classify_applies_it(finished_home: Path, mini_root: Path,
                                                                   tmp_path: Path) -> None:
    store = RunStore(finished_home)
    val = predictions.load_run(store, 1, "val")
    assert val.logits is not None and val.logits.shape == (len(val), len(val.classes))
    assert calibration.temperature_of(store, 1) is not None  # fitted on first use, from the stored logits
    recorded = calibration.recorded(store.get_run(1))
    temperature = recorded["temperature"]
    before, after = recorded["splits"]["val"]["before"], recorded["splits"]["val"]["after"]
    print(f"tiny run: T = {temperature:.3f}; validation NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
          f"ECE {before['ece']:.4f} -> {after['ece']:.4f}")
    assert after["nll"] < before["nll"]  # fitted on validation: its NLL can only go down
    assert after["acc"] == before["acc"]  # the argmax does not move
    assert set(recorded["splits"]) == {"val", "test"}
    assert store.get_run(1).results["test_acc"] is not None  # the other results are kept

    # Classify's probabilities are softmax(logits / T) of best.pt.
    classifier = Classifier.from_run(store, 1)
    assert classifier.temperature == pytest.approx(temperature)
    image = Image.open(val.paths[0]).convert("RGB")
    [top] = classifier.predict([image], top=3)
    raw = Classifier.from_run(store, 1, calibrated=False)
    assert raw.temperature == 1.0
    [raw_top] = raw.predict([image], top=3)
    assert [c for c, _ in top] == [c for c, _ in raw_top]
    assert top[0][1] != pytest.approx(raw_top[0][1], abs=1e-6)

    # The export's JSON says how to get the same probabilities.
    meta = export.metadata(classifier, "onnx", store.get_run(1))
    assert meta["temperature"] == pytest.approx(temperature) and "temperature" in meta["output"]["meaning"]

    # `evaluate --json`: ECE and NLL with the temperature, and without it.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["evaluate", "1", "--split", "test", "--store", str(finished_home), "--root", str(mini_root),
                     "--json"]) == 0
    summary = json.loads(out.getvalue())
    assert summary["temperature"] == pytest.approx(temperature, rel=1e-6)
    test = predictions.load_run(store, 1, "test")
    assert summary["nll"] == pytest.approx(calibration.nll(test.logits, test.labels, temperature), rel=1e-5)
    assert summary["uncalibrated"]["nll"] == pytest.approx(calibration.nll(test.logits, test.labels), rel=1e-5)
    assert 0 <= summary["ece"] <= 1


def test_results_without_logits_ask_for_a_recompute(finished_home: Path, mini_root: Path) -> None:
    store = RunStore(finished_home)
    run = store.create_run(store.get_run(1).config.replace(name="old"))
    run_dir = Path(store.run_dir(run))
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt",):
        (run_dir / name).write_bytes((Path(store.run_dir(1)) / name).read_bytes())
    old = predictions.load_run(store, 1, "val")
    predictions.save(predictions.ImageResults(old.split, old.classes, old.paths, old.labels, old.top_classes,
                                              old.top_probs, old.losses), predictions.results_path(run_dir, "val"))
    assert calibration.temperature_of(store, run) is None  # Classify then shows the raw softmax
    with pytest.raises(calibration.CalibrationError, match="recompute"):
        calibration.calibrate_run(store, run)
    recompute.ensure_logits(store, run, "val", data_root=mini_root)
    fitted = calibration.calibrate_run(store, run)
    assert fitted["temperature"] == pytest.approx(calibration.recorded(store.get_run(1))["temperature"], rel=1e-3)
