"""A run's embedding map: the penultimate features of a split's images (the input of the last linear layer),
reduced to 2-D with scikit-learn's PCA or t-SNE (t-SNE after PCA to 50 dimensions, the usual speed-up).

The map is cached beside the run (`layout.embedding`), keyed by the modification time of its best.pt, so the
page's second visit is instant; so are the features (float16), so the other method needs no second pass of the
model. Each point keeps its file, true and predicted class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caltech_core import layout
from caltech_core.files import atomic_write
from caltech_core.status import ProgressFn

METHODS = {"pca": "PCA", "tsne": "t-SNE"}
FEATURES = "features"  # the cache file of the features both methods start from
SPLITS = ("test", "val")


class EmbeddingError(RuntimeError):
    """No map can be made; the message says why."""


@dataclass(frozen=True)
class EmbeddingMap:
    """Row i: `paths[i]`, true class `labels[i]`, predicted class `preds[i]`, position `xy[i]`."""

    split: str
    method: str
    classes: list[str]
    paths: np.ndarray  # str (N,)
    labels: np.ndarray  # int64 (N,)
    preds: np.ndarray  # int64 (N,)
    xy: np.ndarray  # float32 (N, 2)

    @property
    def mistakes(self) -> np.ndarray:
        return self.preds != self.labels

    def hover(self) -> list[str]:
        """One line per point: file, true class and, for a mistake, the predicted one."""
        return [f"{Path(str(p)).parent.name}/{Path(str(p)).name}: {self.classes[t]}"
                + ("" if t == q else f" → predicted {self.classes[q]}")
                for p, t, q in zip(self.paths, self.labels, self.preds, strict=True)]


def penultimate(store: Any, run_id: int, split: str, *, data_root: str | Path | None = None,
                progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """(features, labels, preds, paths, classes) of the run's best.pt over `split`, in split order."""
    import torch

    from caltech_core.data import dataset
    from caltech_core.data.imagecache import ImageCache
    from caltech_core.data.transforms import BatchLoader
    from caltech_core.nets.checkpoints import CheckpointError
    from caltech_core.nets.device import resolve_device
    from caltech_core.nets.models import output_layer
    from caltech_core.use.inference import Classifier

    cfg = store.get_run(run_id).config
    try:
        classifier = Classifier.from_run(store, run_id, device=resolve_device(cfg.device), calibrated=False)
    except CheckpointError as exc:
        raise EmbeddingError(str(exc)) from exc
    splits = dataset.Splits.from_config(cfg, root=data_root)
    samples = splits.test if split == "test" else splits.val
    cache = ImageCache.build([s.path for s in samples], store.cache_dir, resize_size=cfg.resize_size)
    samples = [s for s in samples if cache.index_of(s.path) is not None]
    if len(samples) < 3:
        raise EmbeddingError(f"run {run_id} has {len(samples)} readable {split} images; a map needs at least 3")
    loader = BatchLoader(cache, [cache.index_of(s.path) for s in samples], [s.label for s in samples],
                         batch_size=max(cfg.batch_size, 32), train=False, cfg=cfg, device=classifier.device)
    captured: list[torch.Tensor] = []
    hook = output_layer(classifier.model, cfg.arch).register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0].detach().float().flatten(1).cpu()))
    preds = []
    try:
        with torch.inference_mode():
            for i, (x, _) in enumerate(loader):
                preds.append(classifier.model(x).argmax(dim=1).cpu())
                if progress is not None:
                    progress(i + 1, len(loader))
    finally:
        hook.remove()
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return (torch.cat(captured).numpy(), labels, torch.cat(preds).numpy().astype(np.int64),
            [str(s.path) for s in samples], list(classifier.classes))


def _features(store: Any, run_id: int, split: str, *, data_root: str | Path | None,
              progress: ProgressFn | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """`penultimate(...)`, kept on disk (float16, keyed by best.pt's time) so the other method needs no new pass."""
    run_dir = Path(store.run_dir(run_id))
    path, stamp = layout.embedding(run_dir, split, FEATURES), layout.best(run_dir).stat().st_mtime
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if float(z["stamp"]) == stamp:
                return (z["features"].astype(np.float32), z["labels"], z["preds"], [str(p) for p in z["paths"]],
                        [str(c) for c in z["classes"]])
    features, labels, preds, paths, classes = penultimate(store, run_id, split, data_root=data_root,
                                                          progress=progress)
    with atomic_write(path) as f:
        np.savez_compressed(f, stamp=np.array(stamp), features=features.astype(np.float16), labels=labels,
                            preds=preds, paths=np.array(paths, dtype=str), classes=np.array(classes, dtype=str))
    return features, labels, preds, paths, classes


def reduce(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, 2) positions of the rows of `features`."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in METHODS:
        raise EmbeddingError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    n, d = features.shape
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features).astype(np.float32)
    reduced = PCA(n_components=min(50, n, d), random_state=seed).fit_transform(features)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(reduced).astype(np.float32)


def cached_map(store: Any, run_id: int, split: str, method: str) -> EmbeddingMap | None:
    """The cached map when it was made from the run's current best.pt, else None."""
    run_dir = Path(store.run_dir(run_id))
    path, weights = layout.embedding(run_dir, split, method), layout.best(run_dir)
    if not (path.is_file() and weights.is_file()):
        return None
    with np.load(path, allow_pickle=False) as z:
        if float(z["stamp"]) != weights.stat().st_mtime:
            return None
        return EmbeddingMap(split, method, [str(c) for c in z["classes"]], z["paths"], z["labels"].astype(np.int64),
                            z["preds"].astype(np.int64), z["xy"])


def embedding_map(store: Any, run_id: int, split: str = "test", method: str = "pca", *,
                  data_root: str | Path | None = None, progress: ProgressFn | None = None) -> EmbeddingMap:
    """The run's map of `split` made with `method`, from the cache when its best.pt has not changed since."""
    if split not in SPLITS or method not in METHODS:
        raise EmbeddingError(f"a map needs a split in {SPLITS} and a method in {tuple(METHODS)}")
    record = store.get_run(run_id)
    if record is None:
        raise EmbeddingError(f"run {run_id} does not exist")
    run_dir = Path(store.run_dir(run_id))
    weights = layout.best(run_dir)
    if not weights.is_file():
        raise EmbeddingError(f"run {run_id} has no saved weights ({weights} is missing)")
    cached = cached_map(store, run_id, split, method)
    if cached is not None:
        return cached
    path, stamp = layout.embedding(run_dir, split, method), weights.stat().st_mtime
    features, labels, preds, paths, classes = _features(store, run_id, split, data_root=data_root,
                                                        progress=progress)
    result = EmbeddingMap(split, method, classes, np.array(paths, dtype=str), labels, preds,
                          reduce(features, method))
    with atomic_write(path) as f:
        np.savez_compressed(f, stamp=np.array(stamp), classes=np.array(classes, dtype=str), paths=result.paths,
                            labels=labels, preds=preds, xy=result.xy)
    return result
