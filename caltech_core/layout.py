"""Where everything lives on disk: the store's folders, a run's files and the caches' folders.

Under the store's home: `runs.sqlite`, `runs/<id>/` (a run's files), `sweeps/<id>/` (a sweep's spec, state
and Optuna journal) and `cache/` (the image caches,
`images-<resize>/`, the frozen-feature cache, `features/`, and the dataset scan cache). Every module that
names one of these paths asks this module, so the layout is written once.
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


def images_dir(cache_dir: Path, resize_size: int) -> Path:
    """The decoded-image cache of one resize size."""
    return Path(cache_dir) / f"{IMAGES_PREFIX}{int(resize_size)}"


def features_dir(cache_dir: Path) -> Path:
    """The frozen-backbone feature cache."""
    return Path(cache_dir) / FEATURES
