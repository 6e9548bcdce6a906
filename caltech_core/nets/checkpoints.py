"""Checkpoint files: written atomically, read only as tensors and plain types (never arbitrary pickles)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from caltech_core.files import atomic_write

STATE_KEYS = ("model", "state_dict", "model_state")  # where checkpoints commonly nest their state dict


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unsafe or does not fit the run's model."""


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written checkpoint."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A file's state dict, loaded with `weights_only=True`, and the checkpoint's other entries (e.g. 'classes').

    Accepts a raw state dict or one nested under 'model' / 'state_dict' / 'model_state'. A pickle holding code
    or objects is refused before anything in it runs.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refused to load {path.name}: it contains Python objects, not just weights "
            "(only weights-only checkpoints are loaded, so it cannot run code)."
        ) from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    extras: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        key = next((k for k in STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is not None:
            extras = {k: v for k, v in obj.items() if k != key}
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no model weights (a state dict of tensors).")
    return dict(obj), extras
