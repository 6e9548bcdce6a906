"""Suspected label errors of a run's split, found by cleanlab from out-of-sample predicted probabilities.

Validation and test: the run's own softmax, from its per-image results (the run never trained on them).
Training: the run saw those labels, so its own probabilities would only repeat them; instead a logistic
regression (scikit-learn) on frozen ImageNet features of the run's architecture (the fast path's feature cache,
`training/features.py`, computed once and reused) is cross-validated over K folds, and each image's
probabilities come from the fold that did not train on it. `cleanlab.filter.find_label_issues` then flags the
images whose given label the probabilities disagree with beyond each class's usual confusion, ranked by
self-confidence (the probability of the given label, lowest first).

Each report lists file paths with their given and suggested labels, so a caller can exclude or relabel them
(the dataset overrides of `data/overrides.py` once they exist). Reports are cached beside the run
(`layout.suspects`) and reused while their source is unchanged.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caltech_core import layout
from caltech_core.files import write_json_atomic
from caltech_core.status import ProgressFn
from caltech_core.training import predictions
from caltech_core.use import calibration

SPLITS = ("train", "val", "test")
FOLDS = 5  # cross-validation folds of the training split's linear model
MAX_ITER = 100  # lbfgs iterations of each fold's logistic regression


class SuspectsError(RuntimeError):
    """Suspects cannot be computed; the message says why and what to do."""


@dataclass(frozen=True)
class Suspect:
    """One image whose given label looks wrong: `suggested` is the most likely class, `confidence` its
    probability; `given_prob` is the probability of the given label (lower = more suspect)."""

    path: str
    given: str
    suggested: str
    confidence: float
    given_prob: float


@dataclass(frozen=True)
class SuspectReport:
    """A split's suspects, most suspect first; `method` says where the probabilities came from."""

    run_id: int
    split: str
    images: int
    method: str
    stamp: float | None = None  # the source's modification time, to know when the cache is stale
    suspects: list[Suspect] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuspectReport:
        return cls(**{**data, "suspects": [Suspect(**s) for s in data["suspects"]]})


def rank_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Rows cleanlab flags as label issues, most suspect first."""
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about classes with few examples; small splits have them
        return np.asarray(find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1),
                          dtype=np.int64)


def cross_validated_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int = FOLDS,
                          seed: int = 0, progress: ProgressFn | None = None) -> np.ndarray:
    """(N, num_classes) probabilities of a standardised logistic regression, each row predicted by the model
    of the fold that did not train on it (stratified K-fold; K is lowered for classes with fewer images)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    present, counts = np.unique(labels, return_counts=True)
    if len(present) < 2:
        raise SuspectsError("the training split needs at least two classes to look for label errors")
    k = int(max(2, min(folds, counts.min())))
    probs = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (fit_rows, held_rows) in enumerate(splitter.split(features, labels)):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER, C=0.5))
        with warnings.catch_warnings():
            # MAX_ITER bounds the time on a CPU (102 classes x 1280 features); a fold stopped there is a slightly
            # more regularised model, enough to rank label issues. The warning would only say it stopped.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(features[fit_rows], labels[fit_rows])
        probs[np.ix_(held_rows, model.classes_)] = model.predict_proba(features[held_rows])
        if progress is not None:
            progress(i + 1, k)
    return probs


def _split_probs(store: Any, run_id: int, split: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str], str]:
    """(paths, labels, probabilities, classes, method) of the run's validation or test images."""
    results = calibration.with_logits(store, run_id, split)
    return ([str(p) for p in results.paths], results.labels, calibration.probabilities(results.logits),
            results.classes, "the run's own predictions, out of sample: it never trained on this split")


def _train_probs(store: Any, run_id: int, *, data_root: str | Path | None, folds: int,
                 progress: ProgressFn | None) -> tuple[list[str], np.ndarray, np.ndarray, list[str], str]:
    """(paths, labels, probabilities, classes, method) of the run's training images, from K-fold logistic
    regression on frozen features."""
    import torch

    from caltech_core.data.dataset import Splits
    from caltech_core.data.imagecache import ImageCache
    from caltech_core.nets import models, weights
    from caltech_core.nets.device import resolve_device
    from caltech_core.training import int8, speed
    from caltech_core.training.features import cached_features

    cfg = store.get_run(run_id).config
    splits = Splits.from_config(cfg, root=data_root, home=store.home)
    own_weights = cfg.weights_path if cfg.pretrained else None  # the fast path's very features when it used them
    try:
        if own_weights is None:
            weights.fetch(cfg.arch)
        model = models.build_model(cfg.arch, splits.num_classes, pretrained=True, weights_path=own_weights)
    except models.WeightsUnavailableError as exc:
        raise SuspectsError(f"the training split's suspects need {cfg.arch}'s ImageNet weights: {exc}") from exc
    backbone, head = models.split_for_features(model, cfg.arch)
    # Over every split's images, as training caches them, so a fast-path run's feature file is found again.
    cache = ImageCache.build(splits.all_paths(), store.cache_dir, resize_size=cfg.resize_size)
    device = resolve_device(cfg.device)
    # The run's own kind of features (int8 or bf16 when it computed them so): its feature file is found again.
    mode = speed.choose(cfg, device)
    calibration = int8.calibration_images(splits.train) if mode.int8_features else None
    with torch.inference_mode():
        features, _ = cached_features(cfg, backbone, head, cache, store.cache_dir, device,
                                      calibration=calibration, openvino=mode.openvino_precision)
    train = [s for s in splits.train if cache.index_of(s.path) is not None]
    rows = features[torch.tensor([cache.index_of(s.path) for s in train], dtype=torch.long)]
    labels = np.array([s.label for s in train], dtype=np.int64)
    probs = cross_validated_probs(rows.float().cpu().numpy(), labels, splits.num_classes, folds=folds,
                                  seed=cfg.split_seed or 0, progress=progress)
    method = f"{folds}-fold logistic regression on frozen ImageNet {cfg.arch} features"
    return [str(s.path) for s in train], labels, probs, list(splits.classes), method


def _stamp(store: Any, run_id: int, split: str) -> float | None:
    """What the cached report depends on: the results file's time (val, test); none for train (features)."""
    if split == "train":
        return None
    path = predictions.results_path(store.run_dir(run_id), split)
    return path.stat().st_mtime if path.is_file() else None


def find_suspects(store: Any, run_id: int, split: str, *, data_root: str | Path | None = None,
                  folds: int = FOLDS, refresh: bool = False, progress: ProgressFn | None = None) -> SuspectReport:
    """The run's suspected label errors of `split` ("train", "val" or "test"), from the cache when current."""
    if split not in SPLITS:
        raise SuspectsError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    if store.get_run(run_id) is None:
        raise SuspectsError(f"run {run_id} does not exist")
    path = layout.suspects(store.run_dir(run_id), split)
    stamp = _stamp(store, run_id, split)
    if path.is_file() and not refresh:
        cached = SuspectReport.from_dict(json.loads(path.read_text()))
        if cached.stamp == stamp:
            return cached
    try:
        if split == "train":
            paths, labels, probs, classes, method = _train_probs(store, run_id, data_root=data_root, folds=folds,
                                                                 progress=progress)
        else:
            paths, labels, probs, classes, method = _split_probs(store, run_id, split)
    except (calibration.CalibrationError, predictions.ResultsError) as exc:
        raise SuspectsError(str(exc)) from exc
    suggested = probs.argmax(axis=1)
    suspects = [Suspect(path=paths[i], given=classes[labels[i]], suggested=classes[suggested[i]],
                        confidence=float(probs[i, suggested[i]]), given_prob=float(probs[i, labels[i]]))
                for i in rank_issues(labels, probs)]
    report = SuspectReport(run_id, split, len(labels), method, stamp, suspects)
    write_json_atomic(path, report.to_dict())
    return report
