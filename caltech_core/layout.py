"""Where everything lives on disk: the store's folders, a run's files and the caches' folders.

Under the store's home: `runs.sqlite`, `runs/<id>/` (a run's files), `sweeps/<id>/` (a sweep's spec, state
and Optuna journal), `cache/` (the image caches, `images-<resize>/`, the frozen-feature cache, `features/`, and the
dataset scan cache) and `datasets/` (the registry of image folders, each one's overrides and health report). Every
module that names one of these paths asks this module, so the layout is written once.
"""

from __future__ import annotations

from pathlib import Path

DATABASE = "runs.sqlite"
RUNS = "runs"
CACHE = "cache"
SWEEPS = "sweeps"

BEST = "best.pt"  # best-validation weights (what Classify, export and the report use)
LAST = "last.pt"  # the resume point: weights, optimizer, RNG states; deleted when a run ends
RETRAINED = "retrain.pt"  # the model retrained on train+val (same layout as best.pt)
FEATURES = "features"
IMAGES_PREFIX = "images-"
REPORT = "report"  # where `report` and `reproduce` write report.md and figures/ by default


def database(home: Path) -> Path:
    return Path(home) / DATABASE


def runs_dir(home: Path) -> Path:
    return Path(home) / RUNS


def run_dir(home: Path, run_id: int) -> Path:
    """`<home>/runs/<id>` (not created here)."""
    return runs_dir(home) / str(int(run_id))


def sweeps_dir(home: Path) -> Path:
    return Path(home) / SWEEPS


def sweep_dir(home: Path, sweep_id: int) -> Path:
    """`<home>/sweeps/<id>`: the sweep's spec (`sweep_spec`), state and Optuna journal (`sweep_journal`)."""
    return sweeps_dir(home) / str(int(sweep_id))


def sweep_spec(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "spec.json"


def sweep_state(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "state.json"


def sweep_journal(sweep_dir: Path) -> Path:
    """Optuna's JournalStorage file: every trial, its parameters, reports and end (appended, so kill -9 safe)."""
    return Path(sweep_dir) / "optuna.journal"


def cache_dir(home: Path) -> Path:
    return Path(home) / CACHE


def report_dir(home: Path) -> Path:
    return Path(home) / REPORT


def best(run_dir: Path) -> Path:
    return Path(run_dir) / BEST


def last(run_dir: Path) -> Path:
    return Path(run_dir) / LAST


def retrained(run_dir: Path) -> Path:
    return Path(run_dir) / RETRAINED


def retrain_scratch(run_dir: Path) -> Path:
    """The retrain on train+val's own run folder inside the run's (its best.pt becomes retrain.pt; removed)."""
    return Path(run_dir) / "retrain"


def predictions(run_dir: Path, split: str) -> Path:
    """A run's per-image results of `split` ("test" or "val")."""
    return Path(run_dir) / f"predictions-{split}.npz"


def suspects(run_dir: Path, split: str) -> Path:
    """A run's cached suspected label errors of `split` ("train", "val" or "test")."""
    return Path(run_dir) / f"suspects-{split}.json"


def embedding(run_dir: Path, split: str, method: str) -> Path:
    """A run's cached 2-D embedding map of `split` made with `method` ("pca" or "tsne"), or with "features" the
    penultimate features both start from."""
    return Path(run_dir) / f"embedding-{split}-{method}.npz"


def images_dir(cache_dir: Path, resize_size: int) -> Path:
    """The decoded-image cache of one resize size."""
    return Path(cache_dir) / f"{IMAGES_PREFIX}{int(resize_size)}"


def features_dir(cache_dir: Path) -> Path:
    """The frozen-backbone feature cache."""
    return Path(cache_dir) / FEATURES


# -- datasets beside Caltech-101 ---------------------------------------------------------------------------
DATASETS = "datasets"


def datasets_dir(home: Path) -> Path:
    """`<home>/datasets`: the registry of datasets and each one's overrides and health report."""
    return Path(home) / DATASETS


def dataset_registry(home: Path) -> Path:
    return datasets_dir(home) / "registry.json"


def dataset_overrides(home: Path, dataset_id: str) -> Path:
    """A dataset's marks (exclude a file, relabel a file), applied when a run's splits are built."""
    return datasets_dir(home) / dataset_id / "overrides.json"


def dataset_health(home: Path, dataset_id: str) -> Path:
    """A dataset's last health check (reused while the file list is unchanged)."""
    return datasets_dir(home) / dataset_id / "health.json"


def dataset_uploads(home: Path) -> Path:
    """Where ZIP files uploaded on the Data page are unpacked (one folder each)."""
    return datasets_dir(home) / "uploads"
